//! The dataset catalog: what a municipality publishes (DCAT-AP fields where
//! they fit), validated, persisted, and numbered.
//!
//! This module owns the [`Dataset`] description, its validation (every
//! error names the field to fix, e.g. `schema[2].unit: ...`), and the
//! [`Catalog`] that stores entries in [`Keyspace::Datasets`]. Agreements
//! decide access by a dataset's id, kind and keywords
//! ([`Dataset::as_ref`]), and may exclude its personal fields
//! ([`Dataset::personal_fields`]); the readings module keys everything by
//! the dataset's internal number ([`CatalogEntry::number`]).
//!
//! Layout of [`Keyspace::Datasets`]:
//! - `d/` + dataset id -> JSON `{ "number": u32, "dataset": { ... } }`;
//! - `next` -> the next free internal number (u32 BE).
//!
//! The internal number is assigned once, on publish, and never changes or
//! gets reused: it is four bytes at the front of every reading key, where
//! an id of up to 64 bytes would bloat every key. A dataset id is never
//! renamed for the same reason: it is the stable public name.
//!
//! A sensor dataset's measures (its `number` fields, in schema order) are
//! stored *by position* in every reading, so [`Catalog::update`] only lets
//! that list grow at the end: dropping, renaming, reordering or re-uniting a
//! measure would orphan or misread readings already stored.
//!
//! Writes are serialised by a lock inside the catalog, so a node keeps one
//! [`Catalog`] per store (behind an `Arc`) and shares it.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::geo::BoundingBox;
use crate::governance::DatasetRef;
use crate::governance::body::FieldError;
use crate::store::{Keyspace, Store, StoreError};

const DATASET_PREFIX: &[u8] = b"d/";
const NEXT_NUMBER_KEY: &[u8] = b"next";

/// Longest description, in characters.
const MAX_DESCRIPTION: usize = 10_000;
/// Longest title, theme, license or keyword, in characters.
const MAX_SHORT_TEXT: usize = 200;
/// Most fields a schema may have (measures are indexed by a byte).
pub const MAX_SCHEMA_FIELDS: usize = 255;
/// Longest update interval: a year.
const MAX_UPDATE_INTERVAL_S: u64 = 366 * 24 * 3600;

/// What a dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// Time series of sensor readings.
    Sensor,
    /// Pilot project results.
    Pilot,
    /// Procurement outcomes.
    Procurement,
}

impl DatasetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetKind::Sensor => "sensor",
            DatasetKind::Pilot => "pilot",
            DatasetKind::Procurement => "procurement",
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How sensitive a dataset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Open,
    Internal,
    Confidential,
    /// Holds personal data (GDPR).
    Personal,
}

impl Classification {
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Open => "open",
            Classification::Internal => "internal",
            Classification::Confidential => "confidential",
            Classification::Personal => "personal",
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of a schema field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Number,
    Text,
    Bool,
    Timestamp,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Number => "number",
            FieldType::Text => "text",
            FieldType::Bool => "bool",
            FieldType::Timestamp => "timestamp",
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One field of a dataset's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaField {
    /// `[a-z][a-z0-9_]*`, at most 64 characters, unique in the schema.
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Unit of measurement (`ug/m3`, `percent`, `count`, `bool`, ...);
    /// required for `number` fields, may be empty for others.
    #[serde(default)]
    pub unit: String,
    /// Personal data: agreements may exclude it, and the dataset cannot be
    /// classified `open`.
    #[serde(default)]
    pub personal: bool,
}

impl SchemaField {
    /// A `number` field (a measure, in a sensor dataset).
    pub fn number(name: impl Into<String>, unit: impl Into<String>) -> SchemaField {
        SchemaField {
            name: name.into(),
            field_type: FieldType::Number,
            unit: unit.into(),
            personal: false,
        }
    }
}

/// The period a dataset covers; either end may be open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemporalExtent {
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
}

/// A catalog entry (DCAT-AP-ish).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Stable public name: 3 to 64 of `[a-z0-9-]`, no leading, trailing or
    /// double hyphen (e.g. `aarhus-air-quality`).
    pub id: String,
    pub title: String,
    pub description: String,
    pub kind: DatasetKind,
    /// Kommunekode of the owning municipality.
    pub owner: u32,
    pub theme: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    /// E.g. `CC-BY-4.0`.
    pub license: String,
    /// Where the data is about, if anywhere in particular.
    #[serde(default)]
    pub spatial: Option<BoundingBox>,
    #[serde(default)]
    pub temporal: TemporalExtent,
    pub classification: Classification,
    pub schema: Vec<SchemaField>,
    /// Expected seconds between updates; 0 means irregular (not allowed
    /// for sensor datasets).
    pub update_interval_s: u64,
}

impl Dataset {
    /// Checks every field; the error names the first one to fix.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_dataset_id("id", &self.id)?;
        check_short_text("title", &self.title)?;
        check_description(&self.description)?;
        if !(1..=999).contains(&self.owner) {
            return Err(FieldError::new(
                "owner",
                format!("{} is not a kommunekode (1..=999)", self.owner),
            ));
        }
        check_short_text("theme", &self.theme)?;
        let mut seen = BTreeSet::new();
        for (i, keyword) in self.keywords.iter().enumerate() {
            let field = format!("keywords[{i}]");
            check_short_text(&field, keyword)?;
            if !seen.insert(keyword.to_lowercase()) {
                return Err(FieldError::new(
                    field,
                    format!("`{keyword}` is listed twice (keywords compare case-insensitively)"),
                ));
            }
        }
        check_short_text("license", &self.license)?;
        if let Some(bbox) = &self.spatial {
            bbox.validate("spatial")?;
        }
        if let (Some(from), Some(until)) = (self.temporal.from, self.temporal.until)
            && until <= from
        {
            return Err(FieldError::new(
                "temporal.until",
                format!(
                    "{} is not after temporal.from {}",
                    show_time(until),
                    show_time(from)
                ),
            ));
        }
        self.validate_schema()?;
        if self.update_interval_s > MAX_UPDATE_INTERVAL_S {
            return Err(FieldError::new(
                "update_interval_s",
                format!(
                    "{} seconds is more than a year ({MAX_UPDATE_INTERVAL_S})",
                    self.update_interval_s
                ),
            ));
        }
        if self.kind == DatasetKind::Sensor && self.update_interval_s == 0 {
            return Err(FieldError::new(
                "update_interval_s",
                "a sensor dataset needs its reporting interval in seconds (1 or more)",
            ));
        }
        Ok(())
    }

    fn validate_schema(&self) -> Result<(), FieldError> {
        if self.schema.is_empty() {
            return Err(FieldError::new("schema", "has no fields"));
        }
        if self.schema.len() > MAX_SCHEMA_FIELDS {
            return Err(FieldError::new(
                "schema",
                format!(
                    "has {} fields; at most {MAX_SCHEMA_FIELDS}",
                    self.schema.len()
                ),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, field) in self.schema.iter().enumerate() {
            let at = |what: &str| format!("schema[{i}].{what}");
            check_field_name(&at("name"), &field.name)?;
            if !names.insert(field.name.as_str()) {
                return Err(FieldError::new(
                    at("name"),
                    format!("`{}` is already the name of an earlier field", field.name),
                ));
            }
            if field.unit.chars().count() > 32 || field.unit.chars().any(char::is_control) {
                return Err(FieldError::new(
                    at("unit"),
                    "must be at most 32 characters on one line",
                ));
            }
            if field.field_type == FieldType::Number && field.unit.trim().is_empty() {
                return Err(FieldError::new(
                    at("unit"),
                    format!(
                        "number field `{}` needs a unit (e.g. \"ug/m3\", \"count\", \"percent\", \
                         or \"1\" if dimensionless)",
                        field.name
                    ),
                ));
            }
            if field.personal && self.classification == Classification::Open {
                return Err(FieldError::new(
                    "classification",
                    format!(
                        "is open, but schema[{i}] `{}` is personal data; classify the dataset \
                         personal (or at least internal)",
                        field.name
                    ),
                ));
            }
        }
        if self.kind == DatasetKind::Sensor && self.measures().is_empty() {
            return Err(FieldError::new(
                "schema",
                "a sensor dataset needs at least one field of type number (its measures)",
            ));
        }
        Ok(())
    }

    /// The dataset as agreement scopes see it.
    #[allow(clippy::should_implement_trait)]
    pub fn as_ref(&self) -> DatasetRef {
        DatasetRef {
            id: self.id.clone(),
            kind: self.kind.as_str().to_string(),
            keywords: self.keywords.clone(),
        }
    }

    /// A sensor dataset's measures: its `number` fields, in schema order.
    /// Readings store values by position in this list. Empty for other kinds.
    pub fn measures(&self) -> Vec<&SchemaField> {
        if self.kind != DatasetKind::Sensor {
            return Vec::new();
        }
        self.schema
            .iter()
            .filter(|f| f.field_type == FieldType::Number)
            .collect()
    }

    /// Names of the measures ([`Dataset::measures`]).
    pub fn measure_names(&self) -> Vec<String> {
        self.measures().iter().map(|f| f.name.clone()).collect()
    }

    /// Names of the fields marked personal.
    pub fn personal_fields(&self) -> Vec<String> {
        self.schema
            .iter()
            .filter(|f| f.personal)
            .map(|f| f.name.clone())
            .collect()
    }
}

/// A stored dataset with its internal number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Assigned on publish; the prefix of the dataset's reading keys.
    pub number: u32,
    pub dataset: Dataset,
}

/// Catalog failures.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("invalid dataset: {0}")]
    Invalid(#[from] FieldError),
    #[error("dataset `{id}` is already published; use update to change it")]
    AlreadyExists { id: String },
    #[error("dataset `{id}` is not in the catalog")]
    NotFound { id: String },
    #[error("dataset `{id}`: {field}: {reason}")]
    IncompatibleChange {
        id: String,
        field: String,
        reason: String,
    },
    #[error(
        "dataset `{id}`: this change widens what partners may see ({changes}); it needs a token \
         with the admin role, and token `{token}` has not"
    )]
    Widening {
        id: String,
        token: String,
        changes: String,
    },
    #[error("catalog entry `{key}` is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the catalog has run out of dataset numbers")]
    Exhausted,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The node's dataset catalog over a [`Store`].
///
/// Every peer call looks datasets up; decoding them from the store each
/// time would cost more than the call itself. So the catalog keeps a
/// decoded snapshot ([`Catalog::snapshot`]), built on first use and
/// dropped whenever a dataset is published or updated (writes are rare).
#[derive(Debug)]
pub struct Catalog {
    store: Arc<dyn Store>,
    write_lock: Mutex<()>,
    snapshot: std::sync::RwLock<Option<Arc<CatalogSnapshot>>>,
    /// Counts writes, so a snapshot read before a write is never kept
    /// after it.
    generation: std::sync::atomic::AtomicU64,
}

/// Every dataset, decoded, sorted by id.
#[derive(Debug, Default)]
pub struct CatalogSnapshot {
    pub datasets: Vec<Dataset>,
    by_id: std::collections::HashMap<String, usize>,
}

impl CatalogSnapshot {
    /// The dataset `id`, if published.
    pub fn get(&self, id: &str) -> Option<&Dataset> {
        self.by_id.get(id).map(|&i| &self.datasets[i])
    }
}

impl Catalog {
    pub fn new(store: Arc<dyn Store>) -> Catalog {
        Catalog {
            store,
            write_lock: Mutex::new(()),
            snapshot: std::sync::RwLock::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The decoded catalog as it stands, if already built (no store I/O).
    pub fn cached(&self) -> Option<Arc<CatalogSnapshot>> {
        self.snapshot
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The decoded catalog, building it from the store if needed.
    pub fn snapshot(&self) -> Result<Arc<CatalogSnapshot>, CatalogError> {
        if let Some(snapshot) = self.cached() {
            return Ok(snapshot);
        }
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::Acquire);
        let datasets = self.list()?;
        let by_id = datasets
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        let snapshot = Arc::new(CatalogSnapshot { datasets, by_id });
        let mut kept = self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A write since the read above makes this snapshot old: use it for
        // this call, keep it for none.
        if self.generation.load(Ordering::Acquire) == generation {
            *kept = Some(Arc::clone(&snapshot));
        }
        Ok(snapshot)
    }

    /// Drops the decoded catalog so the next read builds it from the
    /// store: another node process sharing the store changed a dataset.
    pub fn refresh(&self) {
        self.forget_snapshot();
    }

    fn forget_snapshot(&self) {
        let mut kept = self
            .snapshot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        *kept = None;
    }

    /// Adds a new dataset, assigning its internal number; durable on `Ok`.
    pub fn publish(&self, dataset: Dataset) -> Result<(), CatalogError> {
        dataset.validate()?;
        let _guard = self.lock();
        if self.entry(&dataset.id)?.is_some() {
            return Err(CatalogError::AlreadyExists { id: dataset.id });
        }
        // Node processes sharing one store each hold their own lock, so
        // the store decides: the number is claimed with a compare-and-swap
        // (never handed out twice), and the entry is inserted only if no
        // dataset of that id appeared meanwhile (a claimed number that ends
        // up unused is only a gap).
        let number = loop {
            let stored = self.store.get(Keyspace::Datasets, NEXT_NUMBER_KEY)?;
            let number = match &stored {
                None => 1,
                Some(bytes) => <[u8; 4]>::try_from(bytes.as_slice())
                    .map(u32::from_be_bytes)
                    .map_err(|_| CatalogError::Corrupt {
                        key: "next".to_string(),
                        reason: format!("expected 4 bytes, found {}", bytes.len()),
                    })?,
            };
            let next = number.checked_add(1).ok_or(CatalogError::Exhausted)?;
            if self.store.compare_and_swap(
                Keyspace::Datasets,
                NEXT_NUMBER_KEY,
                stored.as_deref(),
                next.to_be_bytes().to_vec(),
            )? {
                break number;
            }
        };
        let id = dataset.id.clone();
        let entry = encode_entry(&CatalogEntry { number, dataset })?;
        let inserted = self
            .store
            .insert_new(Keyspace::Datasets, vec![(dataset_key(&id), entry)])?;
        self.forget_snapshot();
        self.store.flush()?;
        if !inserted {
            return Err(CatalogError::AlreadyExists { id });
        }
        Ok(())
    }

    /// Replaces an existing dataset's description, keeping its number;
    /// durable on `Ok`. The kind cannot change, and a sensor dataset's
    /// measures may only be added to (at the end, same units).
    pub fn update(&self, dataset: Dataset) -> Result<(), CatalogError> {
        dataset.validate()?;
        let _guard = self.lock();
        // Compare-and-swap against the entry the change was checked
        // against: if another node process changed it meanwhile, check
        // again against what it wrote.
        loop {
            let Some(stored) = self
                .store
                .get(Keyspace::Datasets, &dataset_key(&dataset.id))?
            else {
                return Err(CatalogError::NotFound { id: dataset.id });
            };
            let current = decode_entry(&dataset.id, &stored)?;
            check_compatible(&current.dataset, &dataset)?;
            let updated = encode_entry(&CatalogEntry {
                number: current.number,
                dataset: dataset.clone(),
            })?;
            if self.store.compare_and_swap(
                Keyspace::Datasets,
                &dataset_key(&dataset.id),
                Some(&stored),
                updated,
            )? {
                break;
            }
        }
        self.forget_snapshot();
        self.store.flush()?;
        Ok(())
    }

    /// The dataset `id`, if published.
    pub fn get(&self, id: &str) -> Result<Option<Dataset>, CatalogError> {
        Ok(self.entry(id)?.map(|e| e.dataset))
    }

    /// The dataset `id` with its internal number, if published.
    pub fn entry(&self, id: &str) -> Result<Option<CatalogEntry>, CatalogError> {
        self.store
            .get(Keyspace::Datasets, &dataset_key(id))?
            .map(|bytes| decode_entry(id, &bytes))
            .transpose()
    }

    /// Every dataset, sorted by id.
    pub fn list(&self) -> Result<Vec<Dataset>, CatalogError> {
        Ok(self.entries()?.into_iter().map(|e| e.dataset).collect())
    }

    /// Every entry with its number, sorted by id.
    pub fn entries(&self) -> Result<Vec<CatalogEntry>, CatalogError> {
        let mut out = Vec::new();
        for item in self.store.scan_prefix(Keyspace::Datasets, DATASET_PREFIX) {
            let (key, value) = item?;
            let id = String::from_utf8_lossy(&key[DATASET_PREFIX.len()..]).into_owned();
            out.push(decode_entry(&id, &value)?);
        }
        // Keys are ASCII ids, so key order is id order; sort anyway so the
        // promise does not depend on a backend detail.
        out.sort_by(|a, b| a.dataset.id.cmp(&b.dataset.id));
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The lock guards no data, only ordering; a panic elsewhere while
        // holding it leaves nothing half-done in memory.
        self.write_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How `new` would let partners see more of a dataset than `old`: a field
/// no longer marked personal, a lower classification, or a keyword that
/// was not there (keyword-scoped agreements would cover the dataset).
/// Empty when the change widens nothing.
pub fn widening_changes(old: &Dataset, new: &Dataset) -> Vec<String> {
    let mut changes = Vec::new();
    for field in old.schema.iter().filter(|f| f.personal) {
        match new.schema.iter().find(|f| f.name == field.name) {
            Some(kept) if !kept.personal => changes.push(format!(
                "field `{}` would no longer be personal",
                field.name
            )),
            Some(_) => {}
            // A personal field dropped from the schema would no longer be
            // withheld (a reading's `location`, a record field).
            None => changes.push(format!(
                "personal field `{}` would be removed from the schema",
                field.name
            )),
        }
    }
    if new.classification < old.classification {
        changes.push(format!(
            "classification would go from {} to {}",
            old.classification, new.classification
        ));
    }
    for keyword in &new.keywords {
        if !old
            .keywords
            .iter()
            .any(|k| k.to_lowercase() == keyword.to_lowercase())
        {
            changes.push(format!("keyword `{keyword}` would be added"));
        }
    }
    changes
}

fn check_compatible(old: &Dataset, new: &Dataset) -> Result<(), CatalogError> {
    let incompatible = |field: &str, reason: String| CatalogError::IncompatibleChange {
        id: new.id.clone(),
        field: field.to_string(),
        reason,
    };
    if old.owner != new.owner {
        return Err(incompatible(
            "owner",
            format!(
                "cannot change from {} to {}; a dataset belongs to the municipality that \
                 published it",
                old.owner, new.owner
            ),
        ));
    }
    if old.kind != new.kind {
        return Err(incompatible(
            "kind",
            format!(
                "cannot change from {} to {}; publish a new dataset instead",
                old.kind, new.kind
            ),
        ));
    }
    let old_measures = old.measures();
    let new_measures = new.measures();
    for (i, was) in old_measures.iter().enumerate() {
        match new_measures.get(i) {
            Some(now) if now.name == was.name => {
                if now.unit != was.unit {
                    return Err(incompatible(
                        "schema",
                        format!(
                            "measure `{}` changes unit from `{}` to `{}`, which would misread \
                             readings already stored; add a new measure instead",
                            was.name, was.unit, now.unit
                        ),
                    ));
                }
            }
            _ => {
                let gone = !new_measures.iter().any(|m| m.name == was.name);
                let what = if gone { "removes" } else { "moves" };
                return Err(incompatible(
                    "schema",
                    format!(
                        "{what} measure `{}`; readings already stored under it would be \
                         orphaned. A sensor dataset's measures may only grow: keep [{}] in \
                         this order and add new number fields after them",
                        was.name,
                        old_measures
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn dataset_key(id: &str) -> Vec<u8> {
    let mut key = DATASET_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

fn encode_entry(entry: &CatalogEntry) -> Result<Vec<u8>, CatalogError> {
    serde_json::to_vec(entry).map_err(|e| CatalogError::Corrupt {
        key: format!("d/{}", entry.dataset.id),
        reason: format!("cannot encode: {e}"),
    })
}

fn decode_entry(id: &str, bytes: &[u8]) -> Result<CatalogEntry, CatalogError> {
    serde_json::from_slice(bytes).map_err(|e| CatalogError::Corrupt {
        key: format!("d/{id}"),
        reason: e.to_string(),
    })
}

/// A dataset id: 3..=64 of `[a-z0-9-]`, hyphens only between other characters.
pub fn check_dataset_id(field: &str, id: &str) -> Result<(), FieldError> {
    let ok = (3..=64).contains(&id.len())
        && id.split('-').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "`{id}` is not a dataset id: use 3 to 64 lowercase letters, digits and single \
                 hyphens (e.g. `aarhus-air-quality`)"
            ),
        ))
    }
}

fn check_field_name(field: &str, name: &str) -> Result<(), FieldError> {
    let mut bytes = name.bytes();
    let ok = name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "`{name}` is not a field name: use up to 64 lowercase letters, digits and \
                 underscores, starting with a letter (e.g. `pm2_5`)"
            ),
        ))
    }
}

fn check_short_text(field: &str, text: &str) -> Result<(), FieldError> {
    if text.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must be a single line without control characters",
        ));
    }
    let n = text.chars().count();
    if n > MAX_SHORT_TEXT {
        return Err(FieldError::new(
            field,
            format!("is {n} characters long; at most {MAX_SHORT_TEXT}"),
        ));
    }
    Ok(())
}

fn check_description(text: &str) -> Result<(), FieldError> {
    if text.trim().is_empty() {
        return Err(FieldError::new("description", "must not be empty"));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(FieldError::new(
            "description",
            "must not contain control characters other than newlines and tabs",
        ));
    }
    let n = text.chars().count();
    if n > MAX_DESCRIPTION {
        return Err(FieldError::new(
            "description",
            format!("is {n} characters long; at most {MAX_DESCRIPTION}"),
        ));
    }
    Ok(())
}

/// An instant as RFC 3339 for messages (falls back to the debug form).
pub(crate) fn show_time(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{at:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn open() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&dir.path().join("store")).expect("store");
        (dir, Catalog::new(Arc::new(store)))
    }

    fn sample(id: &str) -> Dataset {
        Dataset {
            id: id.to_string(),
            title: "Air quality, Aarhus".to_string(),
            description: "Particulates and NO2 from street sensors.\nSynthetic.".to_string(),
            kind: DatasetKind::Sensor,
            owner: 751,
            theme: "environment".to_string(),
            keywords: vec!["air-quality".to_string(), "luft".to_string()],
            license: "CC-BY-4.0".to_string(),
            spatial: Some(BoundingBox {
                min_lat: 56.1,
                min_lon: 10.1,
                max_lat: 56.2,
                max_lon: 10.3,
            }),
            temporal: TemporalExtent::default(),
            classification: Classification::Open,
            schema: vec![
                SchemaField::number("pm2_5", "ug/m3"),
                SchemaField::number("pm10", "ug/m3"),
                SchemaField {
                    name: "street".to_string(),
                    field_type: FieldType::Text,
                    unit: String::new(),
                    personal: false,
                },
                SchemaField::number("no2", "ug/m3"),
            ],
            update_interval_s: 600,
        }
    }

    #[test]
    fn validation_errors_name_the_field() {
        let mut d = sample("aarhus-air-quality");
        d.schema[3].unit = String::new();
        let err = d.validate().expect_err("no unit");
        assert_eq!(err.field, "schema[3].unit");
        assert!(err.to_string().contains("`no2` needs a unit"), "{err}");

        let mut d = sample("aarhus-air-quality");
        d.spatial = Some(BoundingBox {
            min_lat: 91.0,
            min_lon: 10.0,
            max_lat: 91.0,
            max_lon: 11.0,
        });
        assert_eq!(
            d.validate().expect_err("lat").to_string(),
            "spatial.min_lat: 91 is outside -90..=90"
        );

        for bad in [
            "ab",
            "Aarhus",
            "a--b",
            "-ab",
            "ab-",
            "æble",
            &"x".repeat(65),
        ] {
            let d = sample(bad);
            assert_eq!(d.validate().expect_err(bad).field, "id", "{bad}");
        }
        sample(&"x".repeat(64)).validate().expect("64 is fine");

        let mut d = sample("aarhus-air-quality");
        d.schema[1].name = "pm2_5".to_string();
        assert_eq!(d.validate().expect_err("dup").field, "schema[1].name");

        let mut d = sample("aarhus-air-quality");
        d.schema[2].personal = true;
        let err = d.validate().expect_err("personal in open");
        assert_eq!(err.field, "classification");
        d.classification = Classification::Personal;
        d.validate().expect("personal dataset");
        assert_eq!(d.personal_fields(), vec!["street".to_string()]);

        let mut d = sample("aarhus-air-quality");
        d.schema.retain(|f| f.field_type != FieldType::Number);
        assert_eq!(d.validate().expect_err("no measures").field, "schema");

        let mut d = sample("aarhus-air-quality");
        d.keywords.push("LUFT".to_string());
        assert_eq!(d.validate().expect_err("dup kw").field, "keywords[2]");

        let mut d = sample("aarhus-air-quality");
        d.temporal = TemporalExtent {
            from: Some(time::macros::datetime!(2025-01-01 0:00 UTC)),
            until: Some(time::macros::datetime!(2024-01-01 0:00 UTC)),
        };
        assert_eq!(d.validate().expect_err("until").field, "temporal.until");
    }

    #[test]
    fn publish_get_list_and_numbers() {
        let (_dir, catalog) = open();
        catalog.publish(sample("vejle-noise")).expect("publish");
        catalog
            .publish(sample("aarhus-air-quality"))
            .expect("publish");
        let err = catalog
            .publish(sample("vejle-noise"))
            .expect_err("duplicate");
        assert!(matches!(err, CatalogError::AlreadyExists { .. }), "{err}");
        assert_eq!(
            catalog.get("vejle-noise").expect("get"),
            Some(sample("vejle-noise"))
        );
        assert_eq!(catalog.get("nope").expect("get"), None);
        let ids: Vec<String> = catalog
            .list()
            .expect("list")
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(ids, vec!["aarhus-air-quality", "vejle-noise"]);
        let a = catalog.entry("vejle-noise").expect("e").expect("some");
        let b = catalog
            .entry("aarhus-air-quality")
            .expect("e")
            .expect("some");
        assert_eq!((a.number, b.number), (1, 2));

        // Updating keeps the number.
        let mut changed = sample("vejle-noise");
        changed.title = "Noise, Vejle".to_string();
        catalog.update(changed.clone()).expect("update");
        let a2 = catalog.entry("vejle-noise").expect("e").expect("some");
        assert_eq!(a2.number, 1);
        assert_eq!(a2.dataset, changed);

        let err = catalog.update(sample("nope-nope")).expect_err("missing");
        assert!(matches!(err, CatalogError::NotFound { .. }), "{err}");

        let r = changed.as_ref();
        assert_eq!(r.kind, "sensor");
        assert_eq!(r.id, "vejle-noise");
        assert_eq!(
            changed.measure_names(),
            vec!["pm2_5".to_string(), "pm10".to_string(), "no2".to_string()]
        );
    }

    #[test]
    fn sensor_measures_may_only_grow() {
        let (_dir, catalog) = open();
        catalog.publish(sample("aarhus-air-quality")).expect("pub");

        let mut grown = sample("aarhus-air-quality");
        grown.schema.push(SchemaField::number("o3", "ug/m3"));
        grown.schema.insert(
            0,
            SchemaField {
                name: "note".to_string(),
                field_type: FieldType::Text,
                unit: String::new(),
                personal: false,
            },
        );
        catalog.update(grown.clone()).expect("growing is fine");

        let mut removed = grown.clone();
        removed.schema.retain(|f| f.name != "pm10");
        let err = catalog.update(removed).expect_err("removal");
        let text = err.to_string();
        assert!(text.contains("removes measure `pm10`"), "{text}");
        assert!(text.contains("orphaned"), "{text}");

        let mut moved = grown.clone();
        moved.schema.retain(|f| f.name != "o3");
        moved.schema.insert(1, SchemaField::number("o3", "ug/m3"));
        let err = catalog.update(moved).expect_err("reorder");
        assert!(err.to_string().contains("measure `pm2_5`"), "{err}");

        let mut reunit = grown.clone();
        reunit.schema[1].unit = "mg/m3".to_string();
        let err = catalog.update(reunit).expect_err("unit");
        assert!(err.to_string().contains("changes unit"), "{err}");

        let mut rekind = grown;
        rekind.kind = DatasetKind::Pilot;
        let err = catalog.update(rekind).expect_err("kind");
        assert!(err.to_string().contains("kind: cannot change"), "{err}");
    }

    #[test]
    fn widening_names_every_way_a_change_shows_partners_more() {
        let mut old = sample("aarhus-air-quality");
        old.classification = Classification::Personal;
        old.schema[2].personal = true;
        assert!(widening_changes(&old, &old).is_empty());

        let mut unmarked = old.clone();
        unmarked.schema[2].personal = false;
        let mut dropped = old.clone();
        dropped.schema.retain(|f| f.name != "street");
        let mut lowered = old.clone();
        lowered.classification = Classification::Open;
        let mut keyword = old.clone();
        keyword.keywords.push("traffic".to_string());
        let mut recased = old.clone();
        recased.keywords[0] = "AIR-QUALITY".to_string();
        for (changed, expected) in [
            (unmarked, "field `street` would no longer be personal"),
            (
                dropped,
                "personal field `street` would be removed from the schema",
            ),
            (lowered, "classification would go from"),
            (keyword, "keyword `traffic` would be added"),
        ] {
            let changes = widening_changes(&old, &changed);
            assert_eq!(changes.len(), 1, "{changes:?}");
            assert!(changes[0].contains(expected), "{changes:?}");
        }
        assert!(widening_changes(&old, &recased).is_empty());
    }

    #[test]
    fn a_dataset_cannot_change_owner() {
        let (_dir, catalog) = open();
        catalog.publish(sample("aarhus-air-quality")).expect("pub");
        let mut moved = sample("aarhus-air-quality");
        moved.owner = 630;
        let err = catalog.update(moved).expect_err("owner");
        assert!(
            err.to_string()
                .contains("owner: cannot change from 751 to 630"),
            "{err}"
        );
        assert_eq!(
            catalog
                .get("aarhus-air-quality")
                .expect("get")
                .map(|d| d.owner),
            Some(751)
        );
    }

    #[test]
    fn entries_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        {
            let store = SledStore::open(&path).expect("store");
            Catalog::new(Arc::new(store))
                .publish(sample("aarhus-air-quality"))
                .expect("publish");
        }
        let catalog = Catalog::new(Arc::new(SledStore::open(&path).expect("reopen")));
        assert_eq!(catalog.list().expect("list").len(), 1);
        catalog.publish(sample("vejle-noise")).expect("publish");
        assert_eq!(
            catalog
                .entry("vejle-noise")
                .expect("e")
                .expect("some")
                .number,
            2
        );
    }
}
