//! Records: pilot results and procurement outcomes, validated, stored and
//! queried.
//!
//! # Storage form
//!
//! A record is stored as its own protobuf message ([`Pilot`],
//! [`Procurement`]), prost-encoded, in [`Keyspace::Records`]:
//!
//! - `b"pilot\0"` + pilot id (UTF-8) -> encoded [`Pilot`];
//! - `b"procurement\0"` + procurement id (UTF-8) -> encoded [`Procurement`].
//!
//! The NUL after the kind cannot occur in an id (ids are slugs of `a-z`,
//! `0-9` and `-`), so one prefix scan lists exactly one kind, in id order.
//! Ids are unique per kind across the whole node, not per dataset: a put
//! that would move an existing record to another dataset is refused
//! ([`RecordError::DatasetMismatch`]), because agreements grant access per
//! dataset and a silent move would change who may read the record.
//!
//! The protobuf message doubles as the storage form because it already is a
//! versioned, forward- and backward-compatible encoding of exactly these
//! facts: the local API receives records in it, the peer API sends them in
//! it, and protobuf's field-number rules (never reuse a number; unknown
//! fields are skipped; missing fields read as defaults) are the schema
//! evolution rules a store needs anyway. A second, hand-written storage
//! format would have to track every change to `data.proto` and could drift
//! from it; this way adding a field to the proto is the whole migration.
//!
//! Records are few (hundreds, not millions), so a filtered list is one
//! prefix scan that decodes every record of the kind; no secondary indexes.
//!
//! # Validation
//!
//! Every put is validated first; an invalid record stores nothing and the
//! error names the field to fix, with indices from 0 (e.g.
//! `kpis[1].value: NaN is not a number`, `awarded.month: 13 is outside
//! 1..=12`). Writes are serialised by a lock and flushed before a put
//! returns, so an acknowledged record survives a crash.
//!
//! # Field stripping
//!
//! [`strip_pilot_fields`] and [`strip_procurement_fields`] clear the fields
//! an agreement excludes before a record leaves the node (see their docs
//! for how names are matched).

use std::sync::{Arc, Mutex, PoisonError};

use prost::Message;
use samvirke_proto::v1::{
    PartialDate, Pilot, PilotFilter, PilotPhase, Procedure, Procurement, ProcurementFilter,
    ProcurementStatus,
};

use crate::governance::body::FieldError;
use crate::store::{Keyspace, Store, StoreError, WriteBatch};

/// Key prefix of pilot records.
pub const PILOT_PREFIX: &[u8] = b"pilot\0";
/// Key prefix of procurement records.
pub const PROCUREMENT_PREFIX: &[u8] = b"procurement\0";

/// Shortest and longest record id, in characters.
const ID_LENGTH: std::ops::RangeInclusive<usize> = 3..=64;
/// Years a [`PartialDate`] may name.
const YEARS: std::ops::RangeInclusive<i32> = 1900..=2100;
/// Official Danish municipality codes (kommunekode) are three digits.
const MUNICIPALITY_CODES: std::ops::RangeInclusive<u32> = 100..=999;

/// Record failures. [`RecordError::Invalid`] and
/// [`RecordError::InvalidFilter`] are the caller's to fix
/// (`INVALID_ARGUMENT`); [`RecordError::DatasetMismatch`] is a conflict with
/// what is stored (`FAILED_PRECONDITION`); the rest are the node's
/// (`INTERNAL`).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("invalid record: {0}")]
    Invalid(FieldError),
    #[error("invalid filter: {0}")]
    InvalidFilter(FieldError),
    #[error(
        "{kind} `{id}` belongs to dataset `{stored}`, not `{given}`; record ids are unique \
         per node, so delete it from `{stored}` first or choose another id"
    )]
    DatasetMismatch {
        kind: &'static str,
        id: String,
        stored: String,
        given: String,
    },
    #[error("stored record `{key}` is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RecordError {
    /// The field error, when the record or filter was invalid.
    pub fn field_error(&self) -> Option<&FieldError> {
        match self {
            RecordError::Invalid(e) | RecordError::InvalidFilter(e) => Some(e),
            _ => None,
        }
    }
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// No record had this id before.
    New,
    /// A record with this id was replaced.
    Replaced,
}

/// How many records the store holds, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCounts {
    pub pilots: usize,
    pub procurements: usize,
}

impl RecordCounts {
    /// Pilots and procurements together.
    pub fn total(&self) -> usize {
        self.pilots + self.procurements
    }
}

/// Pilot and procurement records over a [`Store`]. Keep one per store
/// (behind an `Arc`) and share it: the write lock is inside.
#[derive(Debug)]
pub struct RecordStore {
    store: Arc<dyn Store>,
    write_lock: Mutex<()>,
}

impl RecordStore {
    /// Records in `store`'s [`Keyspace::Records`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        RecordStore {
            store,
            write_lock: Mutex::new(()),
        }
    }

    /// Validates and stores `pilot`, replacing any pilot with the same id
    /// in the same dataset. Durable when it returns.
    pub fn put_pilot(&self, pilot: Pilot) -> Result<Stored, RecordError> {
        validate_pilot(&pilot).map_err(RecordError::Invalid)?;
        let key = pilot_key(&pilot.id);
        let value = pilot.encode_to_vec();
        self.put(
            ("pilot", &pilot.id, &pilot.dataset_id),
            key,
            value,
            |key, bytes| decode_pilot(key, bytes).map(|stored| stored.dataset_id),
        )
    }

    /// The pilot with `id`, if stored.
    pub fn get_pilot(&self, id: &str) -> Result<Option<Pilot>, RecordError> {
        let key = pilot_key(id);
        match self.store.get(Keyspace::Records, &key)? {
            Some(bytes) => decode_pilot(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the pilot with `id`; whether there was one. Durable when it
    /// returns.
    pub fn delete_pilot(&self, id: &str) -> Result<bool, RecordError> {
        self.delete(pilot_key(id))
    }

    /// The pilots `filter` matches (see [`pilot_matches`]), sorted by id.
    pub fn list_pilots(&self, filter: &PilotFilter) -> Result<Vec<Pilot>, RecordError> {
        validate_pilot_filter(filter).map_err(RecordError::InvalidFilter)?;
        let mut out = Vec::new();
        for entry in self.store.scan_prefix(Keyspace::Records, PILOT_PREFIX) {
            let (key, bytes) = entry?;
            let pilot = decode_pilot(&key, &bytes)?;
            if pilot_matches(&pilot, filter) {
                out.push(pilot);
            }
        }
        Ok(out)
    }

    /// Validates and stores `procurement`, replacing any procurement with the
    /// same id in the same dataset. Durable when it returns.
    pub fn put_procurement(&self, procurement: Procurement) -> Result<Stored, RecordError> {
        validate_procurement(&procurement).map_err(RecordError::Invalid)?;
        let key = procurement_key(&procurement.id);
        let value = procurement.encode_to_vec();
        self.put(
            ("procurement", &procurement.id, &procurement.dataset_id),
            key,
            value,
            |key, bytes| decode_procurement(key, bytes).map(|stored| stored.dataset_id),
        )
    }

    /// The procurement with `id`, if stored.
    pub fn get_procurement(&self, id: &str) -> Result<Option<Procurement>, RecordError> {
        let key = procurement_key(id);
        match self.store.get(Keyspace::Records, &key)? {
            Some(bytes) => decode_procurement(&key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Removes the procurement with `id`; whether there was one. Durable
    /// when it returns.
    pub fn delete_procurement(&self, id: &str) -> Result<bool, RecordError> {
        self.delete(procurement_key(id))
    }

    /// The procurements `filter` matches (see [`procurement_matches`]),
    /// sorted by id.
    pub fn list_procurements(
        &self,
        filter: &ProcurementFilter,
    ) -> Result<Vec<Procurement>, RecordError> {
        validate_procurement_filter(filter).map_err(RecordError::InvalidFilter)?;
        let mut out = Vec::new();
        for entry in self
            .store
            .scan_prefix(Keyspace::Records, PROCUREMENT_PREFIX)
        {
            let (key, bytes) = entry?;
            let procurement = decode_procurement(&key, &bytes)?;
            if procurement_matches(&procurement, filter) {
                out.push(procurement);
            }
        }
        Ok(out)
    }

    /// How many records are stored, by kind (keys only; nothing is decoded).
    pub fn count(&self) -> Result<RecordCounts, RecordError> {
        let count = |prefix: &[u8]| -> Result<usize, RecordError> {
            let mut n = 0;
            for entry in self.store.scan_prefix(Keyspace::Records, prefix) {
                entry?;
                n += 1;
            }
            Ok(n)
        };
        Ok(RecordCounts {
            pilots: count(PILOT_PREFIX)?,
            procurements: count(PROCUREMENT_PREFIX)?,
        })
    }

    /// Writes one validated record under the write lock, refusing to move
    /// it between datasets, and flushes.
    fn put(
        &self,
        (kind, id, dataset_id): (&'static str, &str, &str),
        key: Vec<u8>,
        value: Vec<u8>,
        stored_dataset: fn(&[u8], &[u8]) -> Result<String, RecordError>,
    ) -> Result<Stored, RecordError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let outcome = match self.store.get(Keyspace::Records, &key)? {
            Some(bytes) => {
                let stored = stored_dataset(&key, &bytes)?;
                if stored != dataset_id {
                    return Err(RecordError::DatasetMismatch {
                        kind,
                        id: id.to_string(),
                        stored,
                        given: dataset_id.to_string(),
                    });
                }
                Stored::Replaced
            }
            None => Stored::New,
        };
        let mut batch = WriteBatch::default();
        batch.put(key, value);
        self.store.write(Keyspace::Records, batch)?;
        self.store.flush()?;
        Ok(outcome)
    }

    fn delete(&self, key: Vec<u8>) -> Result<bool, RecordError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.store.get(Keyspace::Records, &key)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete(key);
        self.store.write(Keyspace::Records, batch)?;
        self.store.flush()?;
        Ok(true)
    }
}

/// `pilot\0` + id.
pub fn pilot_key(id: &str) -> Vec<u8> {
    [PILOT_PREFIX, id.as_bytes()].concat()
}

/// `procurement\0` + id.
pub fn procurement_key(id: &str) -> Vec<u8> {
    [PROCUREMENT_PREFIX, id.as_bytes()].concat()
}

fn show_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).replace('\0', "/")
}

fn decode_pilot(key: &[u8], bytes: &[u8]) -> Result<Pilot, RecordError> {
    let pilot = Pilot::decode(bytes).map_err(|e| RecordError::Corrupt {
        key: show_key(key),
        reason: e.to_string(),
    })?;
    if pilot_key(&pilot.id) != key {
        return Err(RecordError::Corrupt {
            key: show_key(key),
            reason: format!("holds pilot `{}`", pilot.id),
        });
    }
    Ok(pilot)
}

fn decode_procurement(key: &[u8], bytes: &[u8]) -> Result<Procurement, RecordError> {
    let procurement = Procurement::decode(bytes).map_err(|e| RecordError::Corrupt {
        key: show_key(key),
        reason: e.to_string(),
    })?;
    if procurement_key(&procurement.id) != key {
        return Err(RecordError::Corrupt {
            key: show_key(key),
            reason: format!("holds procurement `{}`", procurement.id),
        });
    }
    Ok(procurement)
}

// ---- Filters -------------------------------------------------------------------

/// Whether `pilot` passes `filter`. Every set criterion must hold:
/// `dataset_id` exact (empty: any); `phase` exact (UNSPECIFIED: any);
/// `technology` a case-insensitive substring of any listed technology;
/// `municipality` one of the pilot's municipalities (0: any); `year` the
/// year the pilot started (0: any; a pilot with no start date never
/// matches a year).
pub fn pilot_matches(pilot: &Pilot, filter: &PilotFilter) -> bool {
    if !filter.dataset_id.is_empty() && pilot.dataset_id != filter.dataset_id {
        return false;
    }
    if filter.phase != PilotPhase::Unspecified as i32 && pilot.phase != filter.phase {
        return false;
    }
    if !filter.technology.is_empty() {
        let needle = filter.technology.to_lowercase();
        if !pilot
            .technology
            .iter()
            .any(|t| t.to_lowercase().contains(&needle))
        {
            return false;
        }
    }
    if filter.municipality != 0 && !pilot.municipalities.contains(&filter.municipality) {
        return false;
    }
    if filter.year != 0 && pilot.started.map(|d| d.year) != Some(filter.year) {
        return false;
    }
    true
}

/// Whether `procurement` passes `filter`. Every set criterion must hold:
/// `dataset_id` exact (empty: any); `supplier` a case-insensitive substring
/// of any supplier; `buyer_municipality` one of the buying municipalities
/// (0: any); `buyer_fellowship` exact; `procedure` exact (UNSPECIFIED:
/// any); `year` the award year (0: any; no award date never matches);
/// `min_value_dkk`/`max_value_dkk` an inclusive range with 0 for an open
/// end, where a record of unknown value (0) never matches once either bound
/// is set; `cpv_code` a prefix of any CPV code; `has_complaint` whether
/// any complaint is recorded (unset: any).
pub fn procurement_matches(procurement: &Procurement, filter: &ProcurementFilter) -> bool {
    let p = procurement;
    if !filter.dataset_id.is_empty() && p.dataset_id != filter.dataset_id {
        return false;
    }
    if !filter.supplier.is_empty() {
        let needle = filter.supplier.to_lowercase();
        if !p
            .suppliers
            .iter()
            .any(|s| s.to_lowercase().contains(&needle))
        {
            return false;
        }
    }
    if filter.buyer_municipality != 0
        && !p.buyer_municipalities.contains(&filter.buyer_municipality)
    {
        return false;
    }
    if !filter.buyer_fellowship.is_empty() && p.buyer_fellowship != filter.buyer_fellowship {
        return false;
    }
    if filter.procedure != Procedure::Unspecified as i32 && p.procedure != filter.procedure {
        return false;
    }
    if filter.year != 0 && p.awarded.map(|d| d.year) != Some(filter.year) {
        return false;
    }
    if filter.min_value_dkk != 0 || filter.max_value_dkk != 0 {
        if p.value_dkk == 0 {
            return false;
        }
        if filter.min_value_dkk != 0 && p.value_dkk < filter.min_value_dkk {
            return false;
        }
        if filter.max_value_dkk != 0 && p.value_dkk > filter.max_value_dkk {
            return false;
        }
    }
    if !filter.cpv_code.is_empty() && !p.cpv_codes.iter().any(|c| c.starts_with(&filter.cpv_code)) {
        return false;
    }
    if let Some(wanted) = filter.has_complaint
        && wanted == p.complaints.is_empty()
    {
        return false;
    }
    true
}

fn validate_pilot_filter(filter: &PilotFilter) -> Result<(), FieldError> {
    if PilotPhase::try_from(filter.phase).is_err() {
        return Err(FieldError::new(
            "phase",
            format!("{} is not a known pilot phase", filter.phase),
        ));
    }
    Ok(())
}

fn validate_procurement_filter(filter: &ProcurementFilter) -> Result<(), FieldError> {
    if Procedure::try_from(filter.procedure).is_err() {
        return Err(FieldError::new(
            "procedure",
            format!("{} is not a known procedure", filter.procedure),
        ));
    }
    for (field, value) in [
        ("min_value_dkk", filter.min_value_dkk),
        ("max_value_dkk", filter.max_value_dkk),
    ] {
        if value < 0 {
            return Err(FieldError::new(
                field,
                format!("{value} is negative (0 for an open end)"),
            ));
        }
    }
    if filter.min_value_dkk != 0
        && filter.max_value_dkk != 0
        && filter.max_value_dkk < filter.min_value_dkk
    {
        return Err(FieldError::new(
            "max_value_dkk",
            format!(
                "{} is below min_value_dkk ({})",
                filter.max_value_dkk, filter.min_value_dkk
            ),
        ));
    }
    Ok(())
}

// ---- Validation ----------------------------------------------------------------

/// Checks a pilot before it is stored; the error names the first bad field.
pub fn validate_pilot(pilot: &Pilot) -> Result<(), FieldError> {
    check_id("id", &pilot.id)?;
    check_required("dataset_id", &pilot.dataset_id)?;
    check_required("title", &pilot.title)?;
    check_municipalities("municipalities", &pilot.municipalities)?;
    match PilotPhase::try_from(pilot.phase) {
        Ok(PilotPhase::Unspecified) => {
            return Err(FieldError::new(
                "phase",
                "missing; expected idea, test, demonstration, scaling, operation or stopped",
            ));
        }
        Ok(_) => {}
        Err(_) => {
            return Err(FieldError::new(
                "phase",
                format!("{} is not a known pilot phase", pilot.phase),
            ));
        }
    }
    check_entries("technology", &pilot.technology)?;
    check_date("started", pilot.started.as_ref())?;
    check_date("ended", pilot.ended.as_ref())?;
    check_order(("started", pilot.started), ("ended", pilot.ended))?;
    check_amount("budget_dkk", pilot.budget_dkk)?;
    for (i, kpi) in pilot.kpis.iter().enumerate() {
        check_required(&format!("kpis[{i}].name"), &kpi.name)?;
        if kpi.value.is_nan() {
            return Err(FieldError::new(
                format!("kpis[{i}].value"),
                "NaN is not a number",
            ));
        }
        if kpi.value.is_infinite() {
            return Err(FieldError::new(
                format!("kpis[{i}].value"),
                format!("{} is not finite", kpi.value),
            ));
        }
    }
    for (i, attachment) in pilot.attachments.iter().enumerate() {
        let hash = &attachment.sha256;
        let ok = hash.strip_prefix("sha256:").is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
        if !ok {
            return Err(FieldError::new(
                format!("attachments[{i}].sha256"),
                format!("`{hash}` is not of the form sha256:<64 lowercase hex digits>"),
            ));
        }
    }
    Ok(())
}

/// Checks a procurement before it is stored; the error names the first bad
/// field.
pub fn validate_procurement(procurement: &Procurement) -> Result<(), FieldError> {
    let p = procurement;
    check_id("id", &p.id)?;
    check_required("dataset_id", &p.dataset_id)?;
    check_required("title", &p.title)?;
    check_municipalities("buyer_municipalities", &p.buyer_municipalities)?;
    if Procedure::try_from(p.procedure).is_err() {
        return Err(FieldError::new(
            "procedure",
            format!("{} is not a known procedure", p.procedure),
        ));
    }
    for (i, code) in p.cpv_codes.iter().enumerate() {
        if !is_cpv_code(code) {
            return Err(FieldError::new(
                format!("cpv_codes[{i}]"),
                format!(
                    "`{code}` is not a CPV code (8 digits, optionally a dash and a check \
                     digit, e.g. 48000000-8)"
                ),
            ));
        }
    }
    check_entries("suppliers", &p.suppliers)?;
    check_amount("value_dkk", p.value_dkk)?;
    check_date("awarded", p.awarded.as_ref())?;
    check_date("contract_start", p.contract_start.as_ref())?;
    check_date("contract_end", p.contract_end.as_ref())?;
    check_order(
        ("contract_start", p.contract_start),
        ("contract_end", p.contract_end),
    )?;
    for (i, complaint) in p.complaints.iter().enumerate() {
        if complaint.body.trim().is_empty() && complaint.summary.trim().is_empty() {
            return Err(FieldError::new(
                format!("complaints[{i}]"),
                "empty; give at least the body complained to or a summary",
            ));
        }
    }
    if ProcurementStatus::try_from(p.status).is_err() {
        return Err(FieldError::new(
            "status",
            format!("{} is not a known procurement status", p.status),
        ));
    }
    Ok(())
}

fn check_id(field: &str, id: &str) -> Result<(), FieldError> {
    let expected = "expected 3 to 64 characters of a-z, 0-9 and -";
    if id.is_empty() {
        return Err(FieldError::new(field, format!("missing; {expected}")));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        return Err(FieldError::new(
            field,
            format!("`{id}` contains {bad:?}; {expected}"),
        ));
    }
    if !ID_LENGTH.contains(&id.len()) {
        return Err(FieldError::new(
            field,
            format!("`{id}` is {} characters; {expected}", id.len()),
        ));
    }
    Ok(())
}

fn check_required(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "missing"));
    }
    Ok(())
}

fn check_entries(field: &str, values: &[String]) -> Result<(), FieldError> {
    for (i, value) in values.iter().enumerate() {
        if value.trim().is_empty() {
            return Err(FieldError::new(format!("{field}[{i}]"), "empty"));
        }
    }
    Ok(())
}

fn check_amount(field: &str, dkk: i64) -> Result<(), FieldError> {
    if dkk < 0 {
        return Err(FieldError::new(
            field,
            format!("{dkk} is negative (0 if unknown)"),
        ));
    }
    Ok(())
}

fn check_municipalities(field: &str, codes: &[u32]) -> Result<(), FieldError> {
    for (i, code) in codes.iter().enumerate() {
        if !MUNICIPALITY_CODES.contains(code) {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{code} is not a municipality code (kommunekode, 100..=999)"),
            ));
        }
        if codes[..i].contains(code) {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("{code} is listed twice"),
            ));
        }
    }
    Ok(())
}

fn check_date(field: &str, date: Option<&PartialDate>) -> Result<(), FieldError> {
    let Some(date) = date else {
        return Ok(());
    };
    if !YEARS.contains(&date.year) {
        return Err(FieldError::new(
            format!("{field}.year"),
            format!("{} is outside 1900..=2100", date.year),
        ));
    }
    if date.month > 12 {
        return Err(FieldError::new(
            format!("{field}.month"),
            format!("{} is outside 1..=12 (0 if unknown)", date.month),
        ));
    }
    if date.day > 31 {
        return Err(FieldError::new(
            format!("{field}.day"),
            format!("{} is outside 1..=31 (0 if unknown)", date.day),
        ));
    }
    if date.day != 0 && date.month == 0 {
        return Err(FieldError::new(
            format!("{field}.day"),
            format!(
                "{} is set but the month is not; a day needs a month",
                date.day
            ),
        ));
    }
    if date.day != 0 {
        let last = days_in_month(date.year, date.month);
        if date.day > last {
            return Err(FieldError::new(
                format!("{field}.day"),
                format!(
                    "{} is outside 1..={last} for {}-{:02}",
                    date.day, date.year, date.month
                ),
            ));
        }
    }
    Ok(())
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Refuses an end before a start, comparing only as precisely as both
/// dates are known (2023 vs 2023-05 is not a conflict).
fn check_order(
    (start_field, start): (&str, Option<PartialDate>),
    (end_field, end): (&str, Option<PartialDate>),
) -> Result<(), FieldError> {
    let (Some(start), Some(end)) = (start, end) else {
        return Ok(());
    };
    let mut a = vec![i64::from(start.year)];
    let mut b = vec![i64::from(end.year)];
    if start.month != 0 && end.month != 0 {
        a.push(i64::from(start.month));
        b.push(i64::from(end.month));
        if start.day != 0 && end.day != 0 {
            a.push(i64::from(start.day));
            b.push(i64::from(end.day));
        }
    }
    if b < a {
        return Err(FieldError::new(
            end_field,
            format!(
                "{} is before {start_field} ({})",
                show_date(&end),
                show_date(&start)
            ),
        ));
    }
    Ok(())
}

/// A partial date as `2023`, `2023-05` or `2023-05-17`.
pub fn show_date(date: &PartialDate) -> String {
    match (date.month, date.day) {
        (0, _) => format!("{}", date.year),
        (m, 0) => format!("{}-{m:02}", date.year),
        (m, d) => format!("{}-{m:02}-{d:02}", date.year),
    }
}

fn is_cpv_code(code: &str) -> bool {
    let bytes = code.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    match bytes.len() {
        8 => digits(bytes),
        10 => digits(&bytes[..8]) && bytes[8] == b'-' && bytes[9].is_ascii_digit(),
        _ => false,
    }
}

// ---- Field stripping --------------------------------------------------------------

/// The field an excluded name refers to: names are protobuf field names,
/// compared ignoring ASCII case; a dotted path (`kpis.value`) refers to its
/// top-level field, which is cleared whole.
pub fn top_level(name: &str) -> String {
    crate::governance::agreement::field_root(name)
}

/// The fields of a pilot record an agreement may exclude (the protobuf
/// field names of [`Pilot`]).
pub const PILOT_FIELDS: &[&str] = &[
    "id",
    "dataset_id",
    "title",
    "owner",
    "municipalities",
    "phase",
    "technology",
    "started",
    "ended",
    "budget_dkk",
    "kpis",
    "findings",
    "attachments",
];

/// The fields of a procurement record an agreement may exclude (the
/// protobuf field names of [`Procurement`]).
pub const PROCUREMENT_FIELDS: &[&str] = &[
    "id",
    "dataset_id",
    "title",
    "buyer_municipalities",
    "buyer_fellowship",
    "buyer_organisation",
    "buyer_count",
    "procedure",
    "procedure_detail",
    "cpv_codes",
    "suppliers",
    "value_dkk",
    "awarded",
    "contract_start",
    "contract_end",
    "bids",
    "complaints",
    "status",
    "notes",
];

/// Clears the fields of `pilot` that `excluded` names, so fields an
/// agreement excludes never leave the node.
///
/// Names are the protobuf field names of [`Pilot`] (`findings`,
/// `budget_dkk`, `kpis`, `attachments`, `municipalities`, ... including
/// `id`, `dataset_id` and `title`), compared ignoring ASCII case. A dotted
/// path such as `kpis.value` clears the whole top-level field (`kpis`):
/// sub-fields are not stripped one by one, and clearing more is the safe
/// side. Names that are not fields of [`Pilot`] are ignored, since an
/// agreement may cover datasets of several kinds.
pub fn strip_pilot_fields(pilot: &mut Pilot, excluded: &[String]) {
    for name in excluded {
        match top_level(name).as_str() {
            "id" => pilot.id.clear(),
            "dataset_id" => pilot.dataset_id.clear(),
            "title" => pilot.title.clear(),
            "owner" => pilot.owner.clear(),
            "municipalities" => pilot.municipalities.clear(),
            "phase" => pilot.phase = PilotPhase::Unspecified as i32,
            "technology" => pilot.technology.clear(),
            "started" => pilot.started = None,
            "ended" => pilot.ended = None,
            "budget_dkk" => pilot.budget_dkk = 0,
            "kpis" => pilot.kpis.clear(),
            "findings" => pilot.findings.clear(),
            "attachments" => pilot.attachments.clear(),
            _ => {}
        }
    }
}

/// Clears the fields of `procurement` that `excluded` names, so fields an
/// agreement excludes never leave the node.
///
/// Names are the protobuf field names of [`Procurement`] (`value_dkk`,
/// `suppliers`, `complaints`, `notes`, `buyer_municipalities`, ...
/// including `id`, `dataset_id` and `title`), compared ignoring ASCII case.
/// A dotted path such as `complaints.summary` clears the whole top-level
/// field (`complaints`). Names that are not fields of [`Procurement`] are
/// ignored.
pub fn strip_procurement_fields(procurement: &mut Procurement, excluded: &[String]) {
    let p = procurement;
    for name in excluded {
        match top_level(name).as_str() {
            "id" => p.id.clear(),
            "dataset_id" => p.dataset_id.clear(),
            "title" => p.title.clear(),
            "buyer_municipalities" => p.buyer_municipalities.clear(),
            "buyer_fellowship" => p.buyer_fellowship.clear(),
            "buyer_organisation" => p.buyer_organisation.clear(),
            "buyer_count" => p.buyer_count = 0,
            "procedure" => p.procedure = Procedure::Unspecified as i32,
            "procedure_detail" => p.procedure_detail.clear(),
            "cpv_codes" => p.cpv_codes.clear(),
            "suppliers" => p.suppliers.clear(),
            "value_dkk" => p.value_dkk = 0,
            "awarded" => p.awarded = None,
            "contract_start" => p.contract_start = None,
            "contract_end" => p.contract_end = None,
            "bids" => p.bids = 0,
            "complaints" => p.complaints.clear(),
            "status" => p.status = ProcurementStatus::Unspecified as i32,
            "notes" => p.notes.clear(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::record_fixtures::{fixture_pilots, fixture_procurements};
    use crate::store::SledStore;
    use samvirke_proto::v1::{Attachment, Complaint, Kpi};

    const PILOTS: &str = "pilots";
    const PROCUREMENTS: &str = "procurements";

    struct Fixture {
        _dir: tempfile::TempDir,
        records: RecordStore,
    }

    fn empty() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SledStore::open(dir.path()).expect("open"));
        Fixture {
            _dir: dir,
            records: RecordStore::new(store),
        }
    }

    /// The fixture records, with CPV codes and buyer municipalities added
    /// where the sources give none, so every filter has something to find.
    fn loaded() -> Fixture {
        let fx = empty();
        for pilot in fixture_pilots(PILOTS) {
            fx.records.put_pilot(pilot).expect("put pilot");
        }
        for mut p in fixture_procurements(PROCUREMENTS) {
            match p.id.as_str() {
                "digit-2022-payroll-finance" => p.cpv_codes = vec!["48450000-7".into()],
                "digit-2020-care-system" => {
                    p.cpv_codes = vec!["48180000-3".into(), "72000000-5".into()]
                }
                "kombit-library-system" => p.buyer_municipalities = vec![751, 326],
                _ => {}
            }
            fx.records.put_procurement(p).expect("put procurement");
        }
        fx
    }

    fn pilot_ids(fx: &Fixture, filter: PilotFilter) -> Vec<String> {
        fx.records
            .list_pilots(&filter)
            .expect("list")
            .into_iter()
            .map(|p| p.id)
            .collect()
    }

    fn procurement_ids(fx: &Fixture, filter: ProcurementFilter) -> Vec<String> {
        fx.records
            .list_procurements(&filter)
            .expect("list")
            .into_iter()
            .map(|p| p.id)
            .collect()
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn date(year: i32, month: u32, day: u32) -> Option<PartialDate> {
        Some(PartialDate { year, month, day })
    }

    fn full_pilot() -> Pilot {
        Pilot {
            id: "aarhus-street-lights".into(),
            dataset_id: PILOTS.into(),
            title: "Adaptive street lights".into(),
            owner: "Teknik og Miljoe".into(),
            municipalities: vec![751, 630],
            phase: PilotPhase::Demonstration as i32,
            technology: vec!["LoRaWAN".into(), "motion sensors".into()],
            started: date(2024, 3, 1),
            ended: date(2024, 12, 0),
            budget_dkk: 1_200_000,
            kpis: vec![
                Kpi {
                    name: "energy saved".into(),
                    value: 31.5,
                    unit: "percent".into(),
                },
                Kpi {
                    name: "lamps".into(),
                    value: 420.0,
                    unit: "count".into(),
                },
            ],
            findings: "Works; residents did not notice dimming.".into(),
            attachments: vec![Attachment {
                name: "report.pdf".into(),
                sha256: format!("sha256:{}", "ab".repeat(32)),
                media_type: "application/pdf".into(),
            }],
        }
    }

    fn full_procurement() -> Procurement {
        Procurement {
            id: "vejle-2023-iot-platform".into(),
            dataset_id: PROCUREMENTS.into(),
            title: "IoT platform".into(),
            buyer_municipalities: vec![630],
            buyer_fellowship: "govtech-midtjylland".into(),
            buyer_organisation: String::new(),
            buyer_count: 1,
            procedure: Procedure::Open as i32,
            procedure_detail: "open EU tender".into(),
            cpv_codes: vec!["48000000-8".into()],
            suppliers: vec!["Acme A/S".into()],
            value_dkk: 4_000_000,
            awarded: date(2023, 6, 15),
            contract_start: date(2023, 8, 1),
            contract_end: date(2027, 7, 31),
            bids: 4,
            complaints: vec![Complaint {
                body: "Klagenaevnet for Udbud".into(),
                summary: "Award criteria unclear".into(),
                outcome: "dismissed".into(),
            }],
            status: ProcurementStatus::Awarded as i32,
            notes: "Renewal option of 2 years.".into(),
        }
    }

    #[test]
    fn put_get_and_replace() {
        let fx = empty();
        let pilot = full_pilot();
        assert_eq!(fx.records.get_pilot(&pilot.id).expect("get"), None);
        assert_eq!(
            fx.records.put_pilot(pilot.clone()).expect("put"),
            Stored::New
        );
        assert_eq!(
            fx.records.get_pilot(&pilot.id).expect("get"),
            Some(pilot.clone())
        );
        let mut changed = pilot.clone();
        changed.phase = PilotPhase::Scaling as i32;
        changed.findings = "Scaling to the whole city.".into();
        assert_eq!(
            fx.records.put_pilot(changed.clone()).expect("replace"),
            Stored::Replaced
        );
        assert_eq!(fx.records.get_pilot(&pilot.id).expect("get"), Some(changed));

        let procurement = full_procurement();
        assert_eq!(
            fx.records
                .put_procurement(procurement.clone())
                .expect("put"),
            Stored::New
        );
        assert_eq!(
            fx.records
                .put_procurement(procurement.clone())
                .expect("again"),
            Stored::Replaced
        );
        assert_eq!(
            fx.records.get_procurement(&procurement.id).expect("get"),
            Some(procurement.clone())
        );
        // Kinds are separate: a pilot id is not a procurement id.
        assert_eq!(fx.records.get_procurement(&pilot.id).expect("get"), None);
        assert_eq!(
            fx.records.count().expect("count"),
            RecordCounts {
                pilots: 1,
                procurements: 1
            }
        );
        assert!(fx.records.delete_pilot(&pilot.id).expect("delete"));
        assert!(!fx.records.delete_pilot(&pilot.id).expect("delete again"));
        assert_eq!(fx.records.count().expect("count").total(), 1);
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Arc::new(SledStore::open(dir.path()).expect("open"));
            RecordStore::new(store)
                .put_procurement(full_procurement())
                .expect("put");
        }
        let store = Arc::new(SledStore::open(dir.path()).expect("reopen"));
        let records = RecordStore::new(store);
        assert_eq!(
            records
                .get_procurement("vejle-2023-iot-platform")
                .expect("get"),
            Some(full_procurement())
        );
    }

    #[test]
    fn a_record_does_not_move_between_datasets() {
        let fx = empty();
        fx.records.put_pilot(full_pilot()).expect("put");
        let mut moved = full_pilot();
        moved.dataset_id = "other-pilots".into();
        let err = fx.records.put_pilot(moved).expect_err("moved");
        assert!(
            matches!(&err, RecordError::DatasetMismatch { stored, given, .. }
                if stored == PILOTS && given == "other-pilots"),
            "{err}"
        );
        assert_eq!(
            fx.records
                .get_pilot("aarhus-street-lights")
                .expect("get")
                .map(|p| p.dataset_id),
            Some(PILOTS.to_string())
        );
    }

    #[test]
    fn pilots_are_listed_in_id_order() {
        let fx = loaded();
        assert_eq!(
            pilot_ids(&fx, PilotFilter::default()),
            ids(&[
                "gladsaxe-green-it",
                "kalundborg-digitalisation",
                "kl-iot-adoption",
                "no-smart-parking",
            ])
        );
    }

    #[test]
    fn each_pilot_filter() {
        let fx = loaded();
        let f = PilotFilter::default;
        let cases: Vec<(PilotFilter, Vec<String>)> = vec![
            (
                PilotFilter {
                    phase: PilotPhase::Operation as i32,
                    ..f()
                },
                ids(&["gladsaxe-green-it", "kalundborg-digitalisation"]),
            ),
            (
                PilotFilter {
                    phase: PilotPhase::Stopped as i32,
                    ..f()
                },
                ids(&[]),
            ),
            (
                PilotFilter {
                    technology: "SIGN".into(),
                    ..f()
                },
                ids(&["no-smart-parking"]),
            ),
            (
                PilotFilter {
                    technology: "real-time".into(),
                    ..f()
                },
                ids(&["no-smart-parking"]),
            ),
            (
                PilotFilter {
                    technology: "blockchain".into(),
                    ..f()
                },
                ids(&[]),
            ),
            (
                PilotFilter {
                    municipality: 326,
                    ..f()
                },
                ids(&["kalundborg-digitalisation"]),
            ),
            (
                PilotFilter { year: 2019, ..f() },
                ids(&["gladsaxe-green-it"]),
            ),
            (
                PilotFilter {
                    dataset_id: PILOTS.into(),
                    ..f()
                },
                pilot_ids(&fx, f()),
            ),
            (
                PilotFilter {
                    dataset_id: "someone-elses".into(),
                    ..f()
                },
                ids(&[]),
            ),
            // Combinations: every criterion must hold.
            (
                PilotFilter {
                    phase: PilotPhase::Operation as i32,
                    year: 2023,
                    ..f()
                },
                ids(&["kalundborg-digitalisation"]),
            ),
            (
                PilotFilter {
                    phase: PilotPhase::Operation as i32,
                    municipality: 159,
                    year: 2023,
                    ..f()
                },
                ids(&[]),
            ),
            (
                PilotFilter {
                    dataset_id: PILOTS.into(),
                    phase: PilotPhase::Test as i32,
                    technology: "parking".into(),
                    ..f()
                },
                ids(&["no-smart-parking"]),
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(pilot_ids(&fx, filter.clone()), expected, "{filter:?}");
        }
    }

    #[test]
    fn each_procurement_filter() {
        let fx = loaded();
        let f = ProcurementFilter::default;
        let cases: Vec<(ProcurementFilter, Vec<String>)> = vec![
            (
                f(),
                ids(&[
                    "ddh-2024-ai-chatbot",
                    "digit-2020-care-system",
                    "digit-2020-esdh",
                    "digit-2022-payroll-finance",
                    "kombit-library-system",
                    "sbsys-2020-esdh-framework",
                    "sbsys-2020-integration-framework",
                    "sbsys-2024-frameworks",
                ]),
            ),
            (
                ProcurementFilter {
                    supplier: "kmd".into(),
                    ..f()
                },
                ids(&["digit-2020-care-system", "digit-2022-payroll-finance"]),
            ),
            (
                ProcurementFilter {
                    supplier: "E-DOC".into(),
                    ..f()
                },
                ids(&["digit-2020-esdh"]),
            ),
            (
                ProcurementFilter {
                    buyer_municipality: 326,
                    ..f()
                },
                ids(&["kombit-library-system"]),
            ),
            (
                ProcurementFilter {
                    buyer_fellowship: "digit".into(),
                    ..f()
                },
                ids(&[
                    "digit-2020-care-system",
                    "digit-2020-esdh",
                    "digit-2022-payroll-finance",
                ]),
            ),
            // Exact, not substring.
            (
                ProcurementFilter {
                    buyer_fellowship: "dig".into(),
                    ..f()
                },
                ids(&[]),
            ),
            (
                ProcurementFilter {
                    procedure: Procedure::Negotiation as i32,
                    ..f()
                },
                ids(&["digit-2020-care-system"]),
            ),
            (
                ProcurementFilter {
                    procedure: Procedure::FrameworkAgreement as i32,
                    ..f()
                },
                ids(&[
                    "sbsys-2020-esdh-framework",
                    "sbsys-2020-integration-framework",
                ]),
            ),
            (
                ProcurementFilter { year: 2020, ..f() },
                ids(&[
                    "digit-2020-esdh",
                    "sbsys-2020-esdh-framework",
                    "sbsys-2020-integration-framework",
                ]),
            ),
            (
                ProcurementFilter {
                    min_value_dkk: 100_000_000,
                    ..f()
                },
                ids(&["digit-2020-care-system", "digit-2022-payroll-finance"]),
            ),
            // Unknown values (0) are excluded once a bound is set.
            (
                ProcurementFilter {
                    max_value_dkk: 200_000_000,
                    ..f()
                },
                ids(&["digit-2020-care-system"]),
            ),
            // Inclusive at both ends.
            (
                ProcurementFilter {
                    min_value_dkk: 137_000_000,
                    max_value_dkk: 137_000_000,
                    ..f()
                },
                ids(&["digit-2020-care-system"]),
            ),
            (
                ProcurementFilter {
                    min_value_dkk: 137_000_001,
                    max_value_dkk: 876_500_000,
                    ..f()
                },
                ids(&["digit-2022-payroll-finance"]),
            ),
            (
                ProcurementFilter {
                    cpv_code: "48".into(),
                    ..f()
                },
                ids(&["digit-2020-care-system", "digit-2022-payroll-finance"]),
            ),
            (
                ProcurementFilter {
                    cpv_code: "72".into(),
                    ..f()
                },
                ids(&["digit-2020-care-system"]),
            ),
            (
                ProcurementFilter {
                    cpv_code: "4845".into(),
                    ..f()
                },
                ids(&["digit-2022-payroll-finance"]),
            ),
            (
                ProcurementFilter {
                    has_complaint: Some(true),
                    ..f()
                },
                ids(&["digit-2020-care-system"]),
            ),
            (
                ProcurementFilter {
                    has_complaint: Some(false),
                    ..f()
                },
                ids(&[
                    "ddh-2024-ai-chatbot",
                    "digit-2020-esdh",
                    "digit-2022-payroll-finance",
                    "kombit-library-system",
                    "sbsys-2020-esdh-framework",
                    "sbsys-2020-integration-framework",
                    "sbsys-2024-frameworks",
                ]),
            ),
            (
                ProcurementFilter {
                    dataset_id: "someone-elses".into(),
                    ..f()
                },
                ids(&[]),
            ),
            // Combinations.
            (
                ProcurementFilter {
                    supplier: "kmd".into(),
                    year: 2022,
                    ..f()
                },
                ids(&["digit-2022-payroll-finance"]),
            ),
            (
                ProcurementFilter {
                    buyer_fellowship: "digit".into(),
                    has_complaint: Some(false),
                    ..f()
                },
                ids(&["digit-2020-esdh", "digit-2022-payroll-finance"]),
            ),
            (
                ProcurementFilter {
                    dataset_id: PROCUREMENTS.into(),
                    buyer_fellowship: "sbsys".into(),
                    year: 2020,
                    procedure: Procedure::FrameworkAgreement as i32,
                    supplier: "net".into(),
                    ..f()
                },
                ids(&["sbsys-2020-esdh-framework"]),
            ),
            (
                ProcurementFilter {
                    cpv_code: "48".into(),
                    has_complaint: Some(true),
                    min_value_dkk: 200_000_000,
                    ..f()
                },
                ids(&[]),
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(procurement_ids(&fx, filter.clone()), expected, "{filter:?}");
        }
    }

    #[test]
    fn bad_filters_name_the_field() {
        let fx = loaded();
        let cases = [
            (
                ProcurementFilter {
                    min_value_dkk: -1,
                    ..Default::default()
                },
                "min_value_dkk: -1 is negative",
            ),
            (
                ProcurementFilter {
                    min_value_dkk: 10,
                    max_value_dkk: 5,
                    ..Default::default()
                },
                "max_value_dkk: 5 is below min_value_dkk (10)",
            ),
            (
                ProcurementFilter {
                    procedure: 42,
                    ..Default::default()
                },
                "procedure: 42 is not a known procedure",
            ),
        ];
        for (filter, expected) in cases {
            let err = fx
                .records
                .list_procurements(&filter)
                .expect_err("bad filter");
            assert!(matches!(err, RecordError::InvalidFilter(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
        let err = fx
            .records
            .list_pilots(&PilotFilter {
                phase: 9,
                ..Default::default()
            })
            .expect_err("bad phase");
        assert!(err.to_string().contains("phase: 9 is not a known"), "{err}");
    }

    #[test]
    fn invalid_pilots_name_the_field_and_store_nothing() {
        let fx = empty();
        let stored = full_pilot();
        fx.records.put_pilot(stored.clone()).expect("put");
        type Edit = Box<dyn Fn(&mut Pilot)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|p| p.id = "ab".into()), "id: `ab` is 2 characters"),
            (Box::new(|p| p.id = "a".repeat(65)), "is 65 characters"),
            (
                Box::new(|p| p.id = "Street_Lights".into()),
                "id: `Street_Lights` contains 'S'",
            ),
            (Box::new(|p| p.id = String::new()), "id: missing"),
            (Box::new(|p| p.title = "  ".into()), "title: missing"),
            (Box::new(|p| p.dataset_id.clear()), "dataset_id: missing"),
            (
                Box::new(|p| p.phase = PilotPhase::Unspecified as i32),
                "phase: missing",
            ),
            (
                Box::new(|p| p.phase = 17),
                "phase: 17 is not a known pilot phase",
            ),
            (
                Box::new(|p| p.started = date(2024, 13, 0)),
                "started.month: 13 is outside 1..=12",
            ),
            (
                Box::new(|p| p.started = date(2024, 1, 32)),
                "started.day: 32 is outside 1..=31",
            ),
            (
                Box::new(|p| p.started = date(2023, 2, 29)),
                "started.day: 29 is outside 1..=28 for 2023-02",
            ),
            (
                Box::new(|p| p.ended = date(2024, 0, 5)),
                "ended.day: 5 is set but the month is not",
            ),
            (
                Box::new(|p| p.started = date(1899, 0, 0)),
                "started.year: 1899 is outside 1900..=2100",
            ),
            (
                Box::new(|p| p.started = Some(PartialDate::default())),
                "started.year: 0 is outside 1900..=2100",
            ),
            (
                Box::new(|p| p.ended = date(2024, 2, 0)),
                "ended: 2024-02 is before started (2024-03-01)",
            ),
            (
                Box::new(|p| p.kpis[1].value = f64::NAN),
                "kpis[1].value: NaN is not a number",
            ),
            (
                Box::new(|p| p.kpis[0].value = f64::INFINITY),
                "kpis[0].value: inf is not finite",
            ),
            (
                Box::new(|p| p.kpis[1].name = String::new()),
                "kpis[1].name: missing",
            ),
            (
                Box::new(|p| p.budget_dkk = -1),
                "budget_dkk: -1 is negative",
            ),
            (
                Box::new(|p| p.attachments[0].sha256 = format!("sha256:{}", "AB".repeat(32))),
                "attachments[0].sha256: `sha256:ABAB",
            ),
            (
                Box::new(|p| p.attachments[0].sha256 = "ab".repeat(32)),
                "attachments[0].sha256",
            ),
            (
                Box::new(|p| p.attachments[0].sha256 = "sha256:abc".into()),
                "not of the form sha256:<64 lowercase hex digits>",
            ),
            (
                Box::new(|p| p.municipalities = vec![751, 99]),
                "municipalities[1]: 99 is not a municipality code",
            ),
            (
                Box::new(|p| p.municipalities = vec![1000]),
                "municipalities[0]: 1000 is not a municipality code",
            ),
            (
                Box::new(|p| p.municipalities = vec![751, 630, 751]),
                "municipalities[2]: 751 is listed twice",
            ),
            (
                Box::new(|p| p.technology.push(" ".into())),
                "technology[2]: empty",
            ),
        ];
        for (edit, expected) in cases {
            let mut bad = stored.clone();
            bad.id = "new-pilot".into();
            edit(&mut bad);
            let err = fx.records.put_pilot(bad.clone()).expect_err(expected);
            assert!(matches!(err, RecordError::Invalid(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err} vs {expected}");
            assert_eq!(fx.records.count().expect("count").pilots, 1, "{expected}");
            // Nor does a bad replacement touch the stored record.
            bad.id = stored.id.clone();
            if validate_pilot(&bad).is_err() {
                fx.records.put_pilot(bad).expect_err("bad replacement");
                assert_eq!(
                    fx.records.get_pilot(&stored.id).expect("get"),
                    Some(stored.clone())
                );
            }
        }
    }

    #[test]
    fn invalid_procurements_name_the_field_and_store_nothing() {
        let fx = empty();
        type Edit = Box<dyn Fn(&mut Procurement)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|p| p.id = "x".into()), "id: `x` is 1 characters"),
            (Box::new(|p| p.title.clear()), "title: missing"),
            (Box::new(|p| p.dataset_id.clear()), "dataset_id: missing"),
            (
                Box::new(|p| p.awarded = date(2022, 13, 0)),
                "awarded.month: 13 is outside 1..=12",
            ),
            (
                Box::new(|p| p.contract_end = date(2023, 7, 31)),
                "contract_end: 2023-07-31 is before contract_start (2023-08-01)",
            ),
            (
                Box::new(|p| p.contract_start = date(2101, 0, 0)),
                "contract_start.year: 2101 is outside 1900..=2100",
            ),
            (Box::new(|p| p.value_dkk = -5), "value_dkk: -5 is negative"),
            (
                Box::new(|p| p.procedure = 99),
                "procedure: 99 is not a known procedure",
            ),
            (
                Box::new(|p| p.status = 99),
                "status: 99 is not a known procurement status",
            ),
            (
                Box::new(|p| p.cpv_codes = vec!["48".into()]),
                "cpv_codes[0]: `48` is not a CPV code",
            ),
            (
                Box::new(|p| p.cpv_codes.push("4800000x-8".into())),
                "cpv_codes[1]: `4800000x-8`",
            ),
            (
                Box::new(|p| p.suppliers.push(String::new())),
                "suppliers[1]: empty",
            ),
            (
                Box::new(|p| p.buyer_municipalities = vec![42]),
                "buyer_municipalities[0]: 42 is not a municipality code",
            ),
            (
                Box::new(|p| p.complaints.push(Complaint::default())),
                "complaints[1]: empty",
            ),
        ];
        for (edit, expected) in cases {
            let mut bad = full_procurement();
            edit(&mut bad);
            let err = fx.records.put_procurement(bad).expect_err(expected);
            assert!(matches!(err, RecordError::Invalid(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err} vs {expected}");
            assert_eq!(fx.records.count().expect("count").total(), 0, "{expected}");
        }
        // The valid base and edge values pass.
        let mut ok = full_procurement();
        ok.cpv_codes = vec!["48000000".into(), "72000000-5".into()];
        ok.awarded = date(2024, 2, 29);
        ok.contract_start = date(2024, 0, 0);
        ok.contract_end = date(2024, 3, 0);
        fx.records.put_procurement(ok).expect("valid");
    }

    #[test]
    fn a_damaged_record_fails_the_listing_not_the_node() {
        let fx = loaded();
        let mut batch = WriteBatch::default();
        batch.put(pilot_key("zz-damaged"), vec![0xff, 0xff, 0xff]);
        fx.records
            .store
            .write(Keyspace::Records, batch)
            .expect("write");
        let err = fx
            .records
            .list_pilots(&PilotFilter::default())
            .expect_err("damaged");
        assert!(
            matches!(&err, RecordError::Corrupt { key, .. } if key == "pilot/zz-damaged"),
            "{err}"
        );
        // Procurements are a different prefix and still list.
        assert_eq!(
            fx.records
                .list_procurements(&ProcurementFilter::default())
                .expect("list")
                .len(),
            8
        );
    }

    #[test]
    fn strip_pilot_fields_clears_exactly_the_named_fields() {
        let original = full_pilot();
        let mut pilot = original.clone();
        strip_pilot_fields(
            &mut pilot,
            &[
                "findings".into(),
                "budget_dkk".into(),
                "attachments".into(),
                "no_such_field".into(),
                "value_dkk".into(),
            ],
        );
        let expected = Pilot {
            findings: String::new(),
            budget_dkk: 0,
            attachments: Vec::new(),
            ..original.clone()
        };
        assert_eq!(pilot, expected);

        let mut pilot = original.clone();
        strip_pilot_fields(&mut pilot, &["KPIs".into(), "started.day".into()]);
        assert_eq!(
            pilot,
            Pilot {
                kpis: Vec::new(),
                started: None,
                ..original.clone()
            }
        );

        let mut pilot = original.clone();
        strip_pilot_fields(&mut pilot, &[]);
        assert_eq!(pilot, original);

        let every = [
            "id",
            "dataset_id",
            "title",
            "owner",
            "municipalities",
            "phase",
            "technology",
            "started",
            "ended",
            "budget_dkk",
            "kpis",
            "findings",
            "attachments",
        ];
        let mut pilot = original;
        strip_pilot_fields(&mut pilot, &every.map(String::from));
        assert_eq!(pilot, Pilot::default());
    }

    #[test]
    fn strip_procurement_fields_clears_exactly_the_named_fields() {
        let original = full_procurement();
        let mut p = original.clone();
        strip_procurement_fields(
            &mut p,
            &[
                "value_dkk".into(),
                "suppliers".into(),
                "complaints".into(),
                "notes".into(),
                "findings".into(),
            ],
        );
        assert_eq!(
            p,
            Procurement {
                value_dkk: 0,
                suppliers: Vec::new(),
                complaints: Vec::new(),
                notes: String::new(),
                ..original.clone()
            }
        );

        let every = [
            "id",
            "dataset_id",
            "title",
            "buyer_municipalities",
            "buyer_fellowship",
            "buyer_organisation",
            "buyer_count",
            "procedure",
            "procedure_detail",
            "cpv_codes",
            "suppliers",
            "value_dkk",
            "awarded",
            "contract_start",
            "contract_end",
            "bids",
            "complaints",
            "status",
            "notes",
        ];
        let mut p = original;
        strip_procurement_fields(&mut p, &every.map(String::from));
        assert_eq!(p, Procurement::default());
    }
}
