//! Data-sharing agreements: what one member (the provider) shares with
//! which others (the consumers), how, for what purpose, and for how long.
//!
//! An agreement is a signed document like a roster, with its own signature
//! domain. It takes effect only when the provider and every named consumer
//! have signed with the keys the fellowship's current roster lists for them
//! (for `consumers = "all"` the provider's signature suffices: it offers the
//! data to every current member), and only inside its validity window.
//!
//! This module owns the agreement's terms and their signature status; the
//! per-request decision that combines them with the caller's identity is in
//! [`super::authorize`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::SigningKey;
use time::{Duration, OffsetDateTime};
use toml::{Table, Value};
use uuid::Uuid;

use super::body::{self, FieldError, Reader};
use super::document::{DocumentDigest, DocumentError, DocumentType, SignedDocument};
use super::roster::{Party, Roster};
use crate::identity::signing_key_text;

/// The `kind` of an agreement body.
pub const AGREEMENT_KIND: &str = "samvirke-agreement/v1";

/// Largest agreement file, in bytes. An agreement travels to each of its
/// parties and is held in memory by each; its terms fit in a few kilobytes.
pub const MAX_AGREEMENT_BYTES: usize = 32 * 1024;

/// Default width of the fixed grid an aggregate-only answer is built from.
pub const DEFAULT_CELL: Duration = Duration::HOUR;
/// Default delay after a grid cell ends before it is answered.
pub const DEFAULT_SETTLE: Duration = Duration::HOUR;
/// Narrowest grid cell an agreement may set.
pub const MIN_CELL: Duration = Duration::MINUTE;
/// Longest settling delay an agreement may set.
pub const MAX_SETTLE: Duration = Duration::days(31);
/// Largest privacy-loss parameter one noisy answer may spend.
pub const MAX_EPSILON: f64 = 10.0;

/// Pseudo-field naming a reading's sensor id: excluded, consumers see a
/// stable per-agreement pseudonym instead.
pub const SENSOR_ID_FIELD: &str = "sensor_id";
/// Pseudo-field naming a reading's location: excluded, readings leave
/// without it and area filters are refused.
pub const LOCATION_FIELD: &str = "location";

/// The field an excluded name refers to: trimmed, lower case, and the
/// top-level part of a dotted path (`Location.lat` withholds `location`,
/// `kpis.value` withholds `kpis`). Withholding more than asked is the safe
/// side; every comparison of excluded names goes through this function.
pub fn field_root(name: &str) -> String {
    name.trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// Whether `name` is spelt like a field: `[a-z][a-z0-9_]*`, at most 64
/// characters (the rule dataset schemas follow).
pub fn is_field_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Why a named consumer cannot be a consumer of an agreement under the
/// fellowship's roster ([`AgreementBody::check_consumers`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumerProblem {
    #[error(
        "the roster is of fellowship `{roster}`, but the agreement is of `{agreement}`; give the \
         roster of `{agreement}`"
    )]
    OtherFellowship { agreement: String, roster: String },
    #[error(
        "consumer {code} is not a member of `{fellowship}` (roster serial {serial} does not list \
         it)"
    )]
    NotAMember {
        code: u32,
        fellowship: String,
        serial: u64,
    },
    #[error(
        "consumer {code} ({name}) left `{fellowship}` on {} (roster serial {serial}){}",
        body::ymd(*.left),
        if *.before_start { ", before the agreement is in force" } else { "" }
    )]
    Left {
        code: u32,
        name: String,
        fellowship: String,
        serial: u64,
        left: time::Date,
        /// Whether it left on or before the agreement's valid_from.
        before_start: bool,
    },
}

/// Problems with an agreement file or its contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgreementError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("agreement body is not valid TOML: {0}")]
    Toml(String),
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error(
        "the agreement file is {size} bytes; at most {MAX_AGREEMENT_BYTES} are accepted \
         (shorten the purpose or the lists)"
    )]
    TooLarge { size: usize },
}

/// What a consumer may do with covered datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    /// See the catalog entries.
    Catalog,
    /// Read raw rows (minus excluded fields).
    Read,
    /// Aggregates only, over groups of at least `min_group_size`.
    Aggregate,
}

impl Operation {
    pub const ALL: [Operation; 3] = [Operation::Catalog, Operation::Read, Operation::Aggregate];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Catalog => "catalog",
            Operation::Read => "read",
            Operation::Aggregate => "aggregate",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Operation::ALL
            .into_iter()
            .find(|op| op.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "`{text}` is not an operation; expected \"catalog\", \"read\" or \"aggregate\""
                )
            })
    }
}

/// Who may consume under an agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumers {
    /// Every current member of the fellowship other than the provider.
    All,
    /// These member codes.
    Named(Vec<u32>),
}

/// A dataset as the authorisation check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    pub id: String,
    /// `sensor`, `pilot`, `procurement`, ...
    pub kind: String,
    pub keywords: Vec<String>,
}

/// Which datasets an agreement covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub datasets: Vec<String>,
    pub kinds: Vec<String>,
    pub keywords: Vec<String>,
}

impl Scope {
    /// A dataset is covered if its id is listed, or its kind is listed, or
    /// it has any listed keyword (keywords compare case-insensitively).
    pub fn covers(&self, dataset: &DatasetRef) -> bool {
        self.datasets.contains(&dataset.id)
            || self.kinds.contains(&dataset.kind)
            || dataset.keywords.iter().any(|k| {
                self.keywords
                    .iter()
                    .any(|listed| listed.to_lowercase() == k.to_lowercase())
            })
    }

    fn is_empty(&self) -> bool {
        self.datasets.is_empty() && self.kinds.is_empty() && self.keywords.is_empty()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, items) in [
            ("datasets", &self.datasets),
            ("kinds", &self.kinds),
            ("keywords", &self.keywords),
        ] {
            if !items.is_empty() {
                parts.push(format!("{what} {}", body::list(items)));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

/// How aggregate-only answers are made (see `plane::disclosure`): from a
/// fixed, epoch-aligned grid of cells `cell` wide, answered once a cell has
/// been over for `settle`, per sensor only where `per_sensor` grants it, and
/// with calibrated noise where `noise` asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateTerms {
    pub cell: Duration,
    pub settle: Duration,
    /// Whether buckets may be grouped per sensor (never for datasets
    /// classified personal, whatever this says).
    pub per_sensor: bool,
    /// Differential privacy for datasets classified personal.
    pub noise: Option<NoiseTerms>,
}

impl Default for AggregateTerms {
    fn default() -> Self {
        AggregateTerms {
            cell: DEFAULT_CELL,
            settle: DEFAULT_SETTLE,
            per_sensor: false,
            noise: None,
        }
    }
}

/// Calibrated noise on aggregates of personal datasets: each answer spends
/// `epsilon` per measure from a `budget` that each consumer has over the
/// agreement's life; sums are taken over values clamped to `bounds`.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseTerms {
    pub epsilon: f64,
    pub budget: f64,
    /// Measure name -> (lower, upper) clamp; a measure without bounds is
    /// not answered under noise.
    pub bounds: BTreeMap<String, (f64, f64)>,
}

/// The legal basis the parties cite for the sharing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegalBasis {
    /// E.g. `GDPR art. 6(1)(e)`.
    pub code: String,
    pub text: String,
}

/// The terms of an agreement. Also the draft a CLI builds: fill it in (or
/// start from [`AgreementBody::new_id`]), then [`AgreementBody::render`] it to
/// the text the parties sign.
#[derive(Debug, Clone, PartialEq)]
pub struct AgreementBody {
    /// A UUID v7.
    pub id: Uuid,
    pub fellowship: String,
    /// Member code of the municipality that shares.
    pub provider: u32,
    pub consumers: Consumers,
    pub scope: Scope,
    pub operations: Vec<Operation>,
    /// Required (>= 1) when `aggregate` is allowed.
    pub min_group_size: Option<u32>,
    /// How aggregates are made; meaningful only when `aggregate` is allowed
    /// (written to the file only then).
    pub aggregate: AggregateTerms,
    pub purpose: String,
    pub legal_basis: LegalBasis,
    /// Field names that must never leave the provider.
    pub excluded_fields: Vec<String>,
    pub valid_from: OffsetDateTime,
    pub valid_until: OffsetDateTime,
}

impl AgreementBody {
    /// A fresh agreement id (UUID v7).
    pub fn new_id() -> Uuid {
        Uuid::now_v7()
    }

    /// Parses and validates an agreement body.
    pub fn parse(text: &str) -> Result<AgreementBody, AgreementError> {
        let table = body::parse_table(text).map_err(AgreementError::Toml)?;
        let parsed = read_body(&table)?;
        parsed.validate()?;
        Ok(parsed)
    }

    /// Checks the terms hang together; errors name the field.
    pub fn validate(&self) -> Result<(), AgreementError> {
        if self.id.get_version_num() != 7 || self.id.get_variant() != uuid::Variant::RFC4122 {
            return Err(FieldError::new("id", format!("{} is not a UUID v7", self.id)).into());
        }
        body::check_slug(&self.fellowship).map_err(|r| FieldError::new("fellowship", r))?;
        if self.provider == 0 {
            return Err(FieldError::new("provider", "must be a member code (1 or more)").into());
        }
        if let Consumers::Named(codes) = &self.consumers {
            if codes.is_empty() {
                return Err(FieldError::new(
                    "consumers",
                    "names nobody; list member codes or write consumers = \"all\"",
                )
                .into());
            }
            if codes.len() > body::MAX_LIST_ITEMS {
                return Err(FieldError::new(
                    "consumers",
                    format!(
                        "names {} members; at most {}",
                        codes.len(),
                        body::MAX_LIST_ITEMS
                    ),
                )
                .into());
            }
            let mut seen = BTreeSet::new();
            for (i, code) in codes.iter().enumerate() {
                let field = format!("consumers[{i}]");
                if *code == 0 {
                    return Err(FieldError::new(field, "must be a member code (1 or more)").into());
                }
                if *code == self.provider {
                    return Err(FieldError::new(
                        field,
                        format!("{code} is the provider; a provider does not consume its own data"),
                    )
                    .into());
                }
                if !seen.insert(*code) {
                    return Err(FieldError::new(field, format!("{code} is listed twice")).into());
                }
            }
        }
        if self.scope.is_empty() {
            return Err(FieldError::new(
                "scope",
                "covers nothing; list datasets, kinds or keywords",
            )
            .into());
        }
        for (what, items) in [
            ("datasets", &self.scope.datasets),
            ("kinds", &self.scope.kinds),
            ("keywords", &self.scope.keywords),
        ] {
            check_list(&format!("scope.{what}"), items)?;
        }
        if self.operations.is_empty() {
            return Err(FieldError::new(
                "operations",
                "allows nothing; list some of \"catalog\", \"read\", \"aggregate\"",
            )
            .into());
        }
        if self.operations.len() != self.operations.iter().collect::<BTreeSet<_>>().len() {
            return Err(FieldError::new("operations", "lists an operation twice").into());
        }
        match self.min_group_size {
            Some(0) => {
                return Err(FieldError::new("min_group_size", "must be 1 or more").into());
            }
            None if self.allows(Operation::Aggregate) => {
                return Err(FieldError::new(
                    "min_group_size",
                    "missing; required when \"aggregate\" is allowed (smallest group an \
                     aggregate may describe)",
                )
                .into());
            }
            _ => {}
        }
        body::check_text_within(&self.purpose, body::MAX_LONG_TEXT)
            .map_err(|r| FieldError::new("purpose", r))?;
        body::check_text(&self.legal_basis.code)
            .map_err(|r| FieldError::new("legal_basis.code", r))?;
        body::check_text_within(&self.legal_basis.text, body::MAX_LONG_TEXT)
            .map_err(|r| FieldError::new("legal_basis.text", r))?;
        check_list("excluded_fields", &self.excluded_fields)?;
        for (i, name) in self.excluded_fields.iter().enumerate() {
            if !is_field_name(&field_root(name)) {
                return Err(FieldError::new(
                    format!("excluded_fields[{i}]"),
                    format!(
                        "`{}` is not a field name (lowercase letters, digits and _, e.g. \
                         `cpr`, `location`, `sensor_id`)",
                        name.escape_debug()
                    ),
                )
                .into());
            }
        }
        self.validate_aggregate()?;
        if self.valid_until <= self.valid_from {
            return Err(FieldError::new(
                "valid_until",
                format!(
                    "{} is not after valid_from = {}",
                    body::show_instant(self.valid_until),
                    body::show_instant(self.valid_from)
                ),
            )
            .into());
        }
        Ok(())
    }

    fn validate_aggregate(&self) -> Result<(), AgreementError> {
        let terms = &self.aggregate;
        if !self.allows(Operation::Aggregate) {
            if *terms != AggregateTerms::default() {
                return Err(FieldError::new(
                    "aggregate",
                    "aggregate terms (cell, settle, per_sensor, noise) need the \
                     \"aggregate\" operation",
                )
                .into());
            }
            return Ok(());
        }
        let whole_seconds = |d: Duration| Duration::seconds(d.whole_seconds()) == d;
        if terms.cell < MIN_CELL || terms.cell > Duration::days(366) || !whole_seconds(terms.cell) {
            return Err(FieldError::new(
                "aggregate.cell",
                format!("{} is outside 1m..=366d", body::show_span(terms.cell)),
            )
            .into());
        }
        if terms.settle < Duration::ZERO
            || terms.settle > MAX_SETTLE
            || !whole_seconds(terms.settle)
        {
            return Err(FieldError::new(
                "aggregate.settle",
                format!("{} is outside 0s..=31d", body::show_span(terms.settle)),
            )
            .into());
        }
        if let Some(noise) = &terms.noise {
            if !(noise.epsilon > 0.0 && noise.epsilon <= MAX_EPSILON) {
                return Err(FieldError::new(
                    "aggregate.noise.epsilon",
                    format!("{} is outside (0, {MAX_EPSILON}]", noise.epsilon),
                )
                .into());
            }
            if !(noise.budget.is_finite() && noise.budget >= noise.epsilon) {
                return Err(FieldError::new(
                    "aggregate.noise.budget",
                    format!(
                        "{} must be a finite number at least epsilon ({})",
                        noise.budget, noise.epsilon
                    ),
                )
                .into());
            }
            if noise.bounds.is_empty() {
                return Err(FieldError::new(
                    "aggregate.noise.bounds",
                    "names no measure; give each measure to answer a range, e.g. kwh = [0.0, 50.0]",
                )
                .into());
            }
            if noise.bounds.len() > body::MAX_LIST_ITEMS {
                return Err(FieldError::new("aggregate.noise.bounds", "too many measures").into());
            }
            for (name, (lower, upper)) in &noise.bounds {
                let field = format!("aggregate.noise.bounds.{name}");
                if !is_field_name(name) {
                    return Err(FieldError::new(field, "is not a measure name").into());
                }
                if !(lower.is_finite() && upper.is_finite() && lower < upper) {
                    return Err(FieldError::new(
                        field,
                        format!("[{lower}, {upper}] is not a finite range with lower < upper"),
                    )
                    .into());
                }
            }
        }
        Ok(())
    }

    /// The body as TOML text, deterministically. Validates first.
    pub fn render(&self) -> Result<String, AgreementError> {
        self.validate()?;
        let from = body::rfc3339(self.valid_from).map_err(|r| FieldError::new("valid_from", r))?;
        let until =
            body::rfc3339(self.valid_until).map_err(|r| FieldError::new("valid_until", r))?;
        let operations: Vec<String> = self.operations.iter().map(|o| o.to_string()).collect();
        let mut out = String::new();
        out.push_str(&format!("kind = {}\n", body::quote(AGREEMENT_KIND)));
        out.push_str(&format!("id = \"{}\"\n", self.id.hyphenated()));
        out.push_str(&format!("fellowship = {}\n", body::quote(&self.fellowship)));
        out.push_str(&format!("provider = {}\n", self.provider));
        match &self.consumers {
            Consumers::All => out.push_str("consumers = \"all\"\n"),
            Consumers::Named(codes) => {
                let codes: Vec<String> = codes.iter().map(u32::to_string).collect();
                out.push_str(&format!("consumers = [{}]\n", codes.join(", ")));
            }
        }
        out.push_str(&format!("operations = {}\n", body::quote_all(&operations)));
        if let Some(n) = self.min_group_size {
            out.push_str(&format!("min_group_size = {n}\n"));
        }
        out.push_str(&format!("purpose = {}\n", body::quote(&self.purpose)));
        out.push_str(&format!(
            "excluded_fields = {}\n",
            body::quote_all(&self.excluded_fields)
        ));
        out.push_str(&format!("valid_from = {from}\n"));
        out.push_str(&format!("valid_until = {until}\n"));
        if self.allows(Operation::Aggregate) {
            let terms = &self.aggregate;
            out.push_str("\n[aggregate]\n");
            out.push_str(&format!("cell = \"{}\"\n", body::show_span(terms.cell)));
            out.push_str(&format!("settle = \"{}\"\n", show_settle(terms.settle)));
            out.push_str(&format!("per_sensor = {}\n", terms.per_sensor));
            if let Some(noise) = &terms.noise {
                out.push_str("\n[aggregate.noise]\n");
                out.push_str(&format!("epsilon = {:?}\n", noise.epsilon));
                out.push_str(&format!("budget = {:?}\n", noise.budget));
                out.push_str("\n[aggregate.noise.bounds]\n");
                for (name, (lower, upper)) in &noise.bounds {
                    out.push_str(&format!("{name} = [{lower:?}, {upper:?}]\n"));
                }
            }
        }
        out.push_str("\n[scope]\n");
        out.push_str(&format!(
            "datasets = {}\n",
            body::quote_all(&self.scope.datasets)
        ));
        out.push_str(&format!("kinds = {}\n", body::quote_all(&self.scope.kinds)));
        out.push_str(&format!(
            "keywords = {}\n",
            body::quote_all(&self.scope.keywords)
        ));
        out.push_str("\n[legal_basis]\n");
        out.push_str(&format!("code = {}\n", body::quote(&self.legal_basis.code)));
        out.push_str(&format!("text = {}\n", body::quote(&self.legal_basis.text)));
        Ok(out)
    }

    /// Renders and wraps the body as an unsigned agreement, ready to sign.
    pub fn to_draft(&self) -> Result<Agreement, AgreementError> {
        Agreement::from_document(SignedDocument::draft(self.render()?))
    }

    /// Whether the agreement allows `operation`.
    pub fn allows(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }

    /// Whether member `code` is a consumer (for `all`: anyone but the
    /// provider; whether they are a current member is checked separately).
    pub fn has_consumer(&self, code: u32) -> bool {
        match &self.consumers {
            Consumers::All => code != self.provider,
            Consumers::Named(codes) => codes.contains(&code),
        }
    }

    /// Checks that every named consumer can be one under `roster` (the
    /// agreement's fellowship) at `now`: listed in it, and not gone by the
    /// agreement's start or by now. A consumer that left could never use
    /// the agreement, and one the roster does not know is a typo or an
    /// outsider: both are refused when the agreement is drafted, verified
    /// and imported rather than discovered at the first refused call.
    /// Agreements for all members name nobody and always pass.
    pub fn check_consumers(
        &self,
        roster: &Roster,
        now: OffsetDateTime,
    ) -> Result<(), ConsumerProblem> {
        if roster.fellowship() != self.fellowship {
            return Err(ConsumerProblem::OtherFellowship {
                agreement: self.fellowship.clone(),
                roster: roster.fellowship().to_string(),
            });
        }
        let Consumers::Named(codes) = &self.consumers else {
            return Ok(());
        };
        for &code in codes {
            let Some(member) = roster.member(code) else {
                return Err(ConsumerProblem::NotAMember {
                    code,
                    fellowship: self.fellowship.clone(),
                    serial: roster.serial(),
                });
            };
            if let Some(left) = member.left {
                let gone = body::start_of(left);
                if gone <= self.valid_from || gone <= now {
                    return Err(ConsumerProblem::Left {
                        code,
                        name: member.name.clone(),
                        fellowship: self.fellowship.clone(),
                        serial: roster.serial(),
                        left,
                        before_start: gone <= self.valid_from,
                    });
                }
            }
        }
        Ok(())
    }

    /// The parties whose signatures the agreement needs: the provider and
    /// every named consumer (for `all`, the provider alone).
    pub fn required_signers(&self) -> Vec<u32> {
        let mut codes = vec![self.provider];
        if let Consumers::Named(named) = &self.consumers {
            codes.extend(named.iter().copied());
        }
        codes
    }
}

/// A settling delay as the file spells it (`0s` is allowed here).
fn show_settle(settle: Duration) -> String {
    if settle == Duration::ZERO {
        "0s".to_string()
    } else {
        body::show_span(settle)
    }
}

fn parse_settle(text: &str) -> Result<Duration, String> {
    if text == "0s" {
        Ok(Duration::ZERO)
    } else {
        body::parse_span(text)
    }
}

fn check_list(field: &str, items: &[String]) -> Result<(), FieldError> {
    if items.len() > body::MAX_LIST_ITEMS {
        return Err(FieldError::new(
            field,
            format!(
                "lists {} items; at most {}",
                items.len(),
                body::MAX_LIST_ITEMS
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, item) in items.iter().enumerate() {
        body::check_text(item).map_err(|r| FieldError::new(format!("{field}[{i}]"), r))?;
        if !seen.insert(item) {
            return Err(FieldError::new(
                format!("{field}[{i}]"),
                format!("`{item}` is listed twice"),
            ));
        }
    }
    Ok(())
}

fn read_body(table: &Table) -> Result<AgreementBody, FieldError> {
    let top = Reader::new(table, "");
    top.only(&[
        "kind",
        "id",
        "fellowship",
        "provider",
        "consumers",
        "scope",
        "operations",
        "min_group_size",
        "purpose",
        "legal_basis",
        "excluded_fields",
        "valid_from",
        "valid_until",
        "aggregate",
    ])?;
    let kind = top.string("kind")?;
    if kind != AGREEMENT_KIND {
        return Err(top.error(
            "kind",
            format!("expected \"{AGREEMENT_KIND}\", found \"{kind}\""),
        ));
    }
    let consumers = match top.value("consumers")? {
        Value::String(s) if s == "all" => Consumers::All,
        Value::Array(items) => Consumers::Named(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_integer()
                        .and_then(|c| u32::try_from(c).ok())
                        .ok_or_else(|| {
                            FieldError::new(
                                format!("consumers[{i}]"),
                                format!("`{item}` is not a member code"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
        ),
        other => {
            return Err(top.error(
                "consumers",
                format!("`{other}`: expected \"all\" or an array of member codes"),
            ));
        }
    };
    let scope = top.table("scope")?;
    scope.only(&["datasets", "kinds", "keywords"])?;
    let legal = top.table("legal_basis")?;
    legal.only(&["code", "text"])?;
    let operations = top
        .string_array("operations")?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Operation::from_str(s).map_err(|r| FieldError::new(format!("operations[{i}]"), r))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !top.has("operations") {
        return Err(top.error("operations", "missing"));
    }
    Ok(AgreementBody {
        id: top.parsed("id", body::parse_uuid)?,
        fellowship: top.parsed("fellowship", |s| {
            body::check_slug(s).map(|()| s.to_string())
        })?,
        provider: top.u32_at_least("provider", 1)?,
        consumers,
        scope: Scope {
            datasets: scope.string_array("datasets")?,
            kinds: scope.string_array("kinds")?,
            keywords: scope.string_array("keywords")?,
        },
        operations,
        min_group_size: if top.has("min_group_size") {
            Some(top.u32_at_least("min_group_size", 1)?)
        } else {
            None
        },
        purpose: top.long_text("purpose")?,
        legal_basis: LegalBasis {
            code: legal.text("code")?,
            text: legal.long_text("text")?,
        },
        excluded_fields: top.string_array("excluded_fields")?,
        valid_from: top.timestamp("valid_from")?,
        valid_until: top.timestamp("valid_until")?,
        aggregate: if top.has("aggregate") {
            read_aggregate(&top.table("aggregate")?)?
        } else {
            AggregateTerms::default()
        },
    })
}

fn read_aggregate(table: &Reader<'_>) -> Result<AggregateTerms, FieldError> {
    table.only(&["cell", "settle", "per_sensor", "noise"])?;
    let defaults = AggregateTerms::default();
    Ok(AggregateTerms {
        cell: table
            .opt_parsed("cell", body::parse_span)?
            .unwrap_or(defaults.cell),
        settle: table
            .opt_parsed("settle", parse_settle)?
            .unwrap_or(defaults.settle),
        per_sensor: table.opt_bool("per_sensor")?.unwrap_or(false),
        noise: if table.has("noise") {
            let noise = table.table("noise")?;
            noise.only(&["epsilon", "budget", "bounds"])?;
            let bounds_table = noise.table("bounds")?;
            let mut bounds = BTreeMap::new();
            for name in bounds_table.keys() {
                bounds.insert(name.clone(), bounds_table.number_pair(&name)?);
            }
            Some(NoiseTerms {
                epsilon: noise.number("epsilon")?,
                budget: noise.number("budget")?,
                bounds,
            })
        } else {
            None
        },
    })
}

// ---- The agreement document -------------------------------------------------

/// Who has signed an agreement, judged against a roster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureStatus {
    /// Required parties (provider, named consumers) with a valid signature.
    pub signed_by: Vec<u32>,
    /// Required parties without one (including parties not in the roster).
    pub missing: Vec<u32>,
    /// Keys with valid signatures that are neither a member's current key
    /// nor the secretariat's (e.g. a key rotated out), in text form.
    pub unknown_signers: Vec<String>,
    /// Keys whose signatures do not verify over this body, in text form.
    pub bad: Vec<String>,
}

impl SignatureStatus {
    /// Every required party signed, and no signature is bad or unknown.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unknown_signers.is_empty() && self.bad.is_empty()
    }
}

/// Where an agreement stands at a given instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgreementStatus {
    /// At least one signature does not verify: the file was changed.
    Damaged { bad: Vec<String> },
    /// Waiting for these parties to sign.
    Draft { missing: Vec<Party> },
    /// Signed by a key the roster does not list (rotated out, or outsider).
    UnknownSigners { keys: Vec<String> },
    /// Fully signed, not yet in force.
    NotYetValid { from: OffsetDateTime },
    /// In force.
    Active { until: OffsetDateTime },
    /// No longer in force.
    Expired { at: OffsetDateTime },
}

impl AgreementStatus {
    pub fn is_active(&self) -> bool {
        matches!(self, AgreementStatus::Active { .. })
    }
}

impl fmt::Display for AgreementStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgreementStatus::Damaged { bad } => write!(
                f,
                "damaged: bad signature by {}; the file was changed after signing, import the \
                 original",
                body::list(bad)
            ),
            AgreementStatus::Draft { missing } => write!(
                f,
                "draft: waiting for signatures from {}",
                body::list(missing)
            ),
            AgreementStatus::UnknownSigners { keys } => write!(
                f,
                "not in force: signed by {}, which the fellowship roster does not list; \
                 re-sign with the member's current key",
                body::list(keys)
            ),
            AgreementStatus::NotYetValid { from } => {
                write!(f, "signed; in force from {}", body::show_instant(*from))
            }
            AgreementStatus::Active { until } => {
                write!(f, "active until {}", body::show_instant(*until))
            }
            AgreementStatus::Expired { at } => {
                write!(f, "expired at {}", body::show_instant(*at))
            }
        }
    }
}

/// A parsed agreement: its validated terms and the signed file.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    body: AgreementBody,
    document: SignedDocument,
    /// The body's digest, computed once (the body never changes).
    digest: DocumentDigest,
}

impl Agreement {
    /// Parses an agreement file (signed or draft) and validates its terms.
    /// Files larger than [`MAX_AGREEMENT_BYTES`] are refused unread.
    pub fn parse(bytes: &[u8]) -> Result<Agreement, AgreementError> {
        if bytes.len() > MAX_AGREEMENT_BYTES {
            return Err(AgreementError::TooLarge { size: bytes.len() });
        }
        Agreement::from_document(SignedDocument::parse(bytes)?)
    }

    /// Wraps an already-parsed document, validating its terms.
    pub fn from_document(document: SignedDocument) -> Result<Agreement, AgreementError> {
        let body = AgreementBody::parse(&document.body)?;
        let digest = document.digest();
        Ok(Agreement {
            body,
            document,
            digest,
        })
    }

    /// The validated terms.
    pub fn body(&self) -> &AgreementBody {
        &self.body
    }

    pub fn id(&self) -> Uuid {
        self.body.id
    }

    /// The signed file.
    pub fn document(&self) -> &SignedDocument {
        &self.document
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.document.to_bytes()
    }

    /// `sha256:` digest of the body (for audit entries and receipts).
    pub fn digest(&self) -> DocumentDigest {
        self.digest
    }

    /// Appends a signature by `key` (see [`SignedDocument::sign`]).
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), AgreementError> {
        Ok(self.document.sign(DocumentType::Agreement, key)?)
    }

    /// Who has signed, looking keys up in `roster` (the fellowship's current
    /// roster). Signatures count by the member's key in that roster, so after
    /// a member rotates its key, agreements it signed with the old key must
    /// be signed again. The secretariat's signature is allowed and ignored.
    pub fn signature_status(&self, roster: &Roster) -> SignatureStatus {
        let mut status = SignatureStatus::default();
        let mut signed = BTreeSet::new();
        for check in self.document.check_signatures(DocumentType::Agreement) {
            let key_text = signing_key_text(&check.signer);
            if !check.valid {
                status.bad.push(key_text);
            } else if let Some(member) = roster.member_by_key(&check.signer) {
                signed.insert(member.code);
            } else if &check.signer != roster.secretariat_key() {
                status.unknown_signers.push(key_text);
            }
        }
        for code in self.body.required_signers() {
            if signed.contains(&code) {
                status.signed_by.push(code);
            } else {
                status.missing.push(code);
            }
        }
        status
    }

    /// Every required party has signed, and no signature is bad or unknown.
    pub fn is_fully_signed(&self, roster: &Roster) -> bool {
        self.signature_status(roster).is_complete()
    }

    /// Where the agreement stands at `now`, judged against `roster`.
    pub fn status_at(&self, roster: &Roster, now: OffsetDateTime) -> AgreementStatus {
        self.status_with(self.signature_status(roster), roster, now)
    }

    /// Where the agreement stands at `now`, given its signatures as judged
    /// against `roster` (so a caller holding that judgement need not verify
    /// every signature again).
    pub fn status_with(
        &self,
        status: SignatureStatus,
        roster: &Roster,
        now: OffsetDateTime,
    ) -> AgreementStatus {
        if !status.bad.is_empty() {
            AgreementStatus::Damaged { bad: status.bad }
        } else if !status.missing.is_empty() {
            AgreementStatus::Draft {
                missing: status.missing.iter().map(|c| roster.party(*c)).collect(),
            }
        } else if !status.unknown_signers.is_empty() {
            AgreementStatus::UnknownSigners {
                keys: status.unknown_signers,
            }
        } else if now < self.body.valid_from {
            AgreementStatus::NotYetValid {
                from: self.body.valid_from,
            }
        } else if now >= self.body.valid_until {
            AgreementStatus::Expired {
                at: self.body.valid_until,
            }
        } else {
            AgreementStatus::Active {
                until: self.body.valid_until,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::governance::document::tests::key;
    use crate::governance::roster::DecisionRule;
    use crate::governance::roster::tests::{NOW, SECRETARIAT_SEED, digit_roster, member_seed};
    use time::macros::datetime;

    pub(crate) const AGREEMENT_ID: Uuid =
        Uuid::from_u128(0x0194_0000_0000_7000_8000_0000_0000_0001);

    /// Greve (253) shares air-quality sensor data with Guldborgsund (376)
    /// and Vejle (630) for 2025.
    pub(crate) fn greve_air_quality() -> AgreementBody {
        AgreementBody {
            id: AGREEMENT_ID,
            fellowship: "digit".to_string(),
            provider: 253,
            consumers: Consumers::Named(vec![376, 630]),
            scope: Scope {
                datasets: vec!["greve-luftkvalitet".to_string()],
                kinds: vec!["pilot".to_string()],
                keywords: vec!["luftkvalitet".to_string()],
            },
            operations: vec![Operation::Catalog, Operation::Aggregate],
            min_group_size: Some(5),
            purpose: "Compare air quality near schools across DIGIT members".to_string(),
            legal_basis: LegalBasis {
                code: "GDPR art. 6(1)(e)".to_string(),
                text: "Task in the public interest (miljøtilsyn)".to_string(),
            },
            excluded_fields: vec!["cpr".to_string(), "address".to_string()],
            valid_from: datetime!(2025-01-01 00:00 UTC),
            valid_until: datetime!(2026-01-01 00:00 UTC),
            aggregate: AggregateTerms::default(),
        }
    }

    pub(crate) fn signed_by(body: &AgreementBody, codes: &[u32]) -> Agreement {
        let mut agreement = body.to_draft().expect("draft");
        for code in codes {
            agreement.sign(&key(member_seed(*code))).expect("sign");
        }
        agreement
    }

    #[test]
    fn a_rendered_agreement_parses_back_to_the_same_terms_and_bytes() {
        let body = greve_air_quality();
        let text = body.render().expect("render");
        assert_eq!(AgreementBody::parse(&text).expect("parse"), body);
        let agreement = signed_by(&body, &[253, 376, 630]);
        let bytes = agreement.to_bytes();
        let parsed = Agreement::parse(&bytes).expect("parse file");
        assert_eq!(parsed, agreement);
        assert_eq!(parsed.to_bytes(), bytes);
        let mut all = body.clone();
        all.consumers = Consumers::All;
        let text = all.render().expect("render");
        assert!(text.contains("consumers = \"all\"\n"), "{text}");
        assert_eq!(
            AgreementBody::parse(&text).expect("parse").consumers,
            Consumers::All
        );
    }

    #[test]
    fn flipping_any_byte_of_a_signed_agreement_is_detected() {
        let roster = digit_roster(DecisionRule::Secretariat);
        // Two parties keep this loop quick in debug builds.
        let mut terms = greve_air_quality();
        terms.consumers = Consumers::Named(vec![376]);
        let agreement = signed_by(&terms, &[253, 376]);
        assert!(agreement.is_fully_signed(&roster));
        let bytes = agreement.to_bytes();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            let accepted = Agreement::parse(&damaged)
                .map(|a| a.is_fully_signed(&roster))
                .unwrap_or(false);
            assert!(!accepted, "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let good = greve_air_quality();
        type Change = Box<dyn Fn(&mut AgreementBody)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|b| b.id = Uuid::from_u128(1)), "id: "),
            (
                Box::new(|b| b.consumers = Consumers::Named(vec![376, 253])),
                "consumers[1]: 253 is the provider",
            ),
            (
                Box::new(|b| b.consumers = Consumers::Named(vec![376, 376])),
                "consumers[1]: 376 is listed twice",
            ),
            (
                Box::new(|b| b.consumers = Consumers::Named(vec![])),
                "consumers: ",
            ),
            (
                Box::new(|b| b.scope = Scope::default()),
                "scope: covers nothing",
            ),
            (Box::new(|b| b.operations.clear()), "operations: "),
            (
                Box::new(|b| b.min_group_size = None),
                "min_group_size: missing",
            ),
            (Box::new(|b| b.min_group_size = Some(0)), "min_group_size: "),
            (Box::new(|b| b.valid_until = b.valid_from), "valid_until: "),
            (Box::new(|b| b.purpose = " ".to_string()), "purpose: "),
            (
                Box::new(|b| b.excluded_fields.push("cpr".to_string())),
                "excluded_fields[2]: ",
            ),
        ];
        for (change, expected) in cases {
            let mut body = good.clone();
            change(&mut body);
            let err = body.render().expect_err(expected);
            assert!(
                err.to_string().starts_with(expected),
                "expected `{expected}...`, got `{err}`"
            );
        }
        // Without aggregate, no group size is needed.
        let mut read_only = good.clone();
        read_only.operations = vec![Operation::Read];
        read_only.min_group_size = None;
        assert!(read_only.render().is_ok());

        let text = good.render().expect("render");
        let text_cases = [
            (
                text.replacen("\"aggregate\"", "\"delete\"", 1),
                "operations[1]: ",
            ),
            (
                text.replacen("consumers = [376, 630]", "consumers = \"some\"", 1),
                "consumers: ",
            ),
            (
                text.replacen("kinds = ", "kindz = ", 1),
                "scope.kindz: unknown field",
            ),
            (
                text.replacen("[legal_basis]\n", "[legal_basis]\nurl = \"x\"\n", 1),
                "legal_basis.url: unknown field",
            ),
            (
                text.replacen(
                    "valid_from = 2025-01-01T00:00:00Z",
                    "valid_from = \"1 January\"",
                    1,
                ),
                "valid_from: ",
            ),
        ];
        for (text, expected) in text_cases {
            let err = AgreementBody::parse(&text).expect_err(expected);
            assert!(
                err.to_string().starts_with(expected),
                "expected `{expected}...`, got `{err}`"
            );
        }
    }

    #[test]
    fn scope_covers_by_id_kind_or_keyword() {
        let scope = greve_air_quality().scope;
        let dataset = |id: &str, kind: &str, keywords: &[&str]| DatasetRef {
            id: id.to_string(),
            kind: kind.to_string(),
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
        };
        assert!(scope.covers(&dataset("greve-luftkvalitet", "sensor", &[])));
        assert!(scope.covers(&dataset("greve-cykelpilot", "pilot", &[])));
        assert!(scope.covers(&dataset("greve-no2", "sensor", &["trafik", "Luftkvalitet"])));
        assert!(!scope.covers(&dataset("greve-vandstand", "sensor", &["vand"])));
    }

    #[test]
    fn signature_status_names_signed_missing_unknown_and_bad() {
        let roster = digit_roster(DecisionRule::Secretariat);
        let body = greve_air_quality();

        let draft = signed_by(&body, &[253]);
        let status = draft.signature_status(&roster);
        assert_eq!(status.signed_by, vec![253]);
        assert_eq!(status.missing, vec![376, 630]);
        assert!(!draft.is_fully_signed(&roster));

        let mut extra = signed_by(&body, &[253, 376, 630]);
        extra
            .sign(&key(SECRETARIAT_SEED))
            .expect("secretariat may sign");
        assert!(extra.is_fully_signed(&roster));
        extra.sign(&key(77)).expect("outsider");
        let status = extra.signature_status(&roster);
        assert_eq!(status.missing, Vec::<u32>::new());
        assert_eq!(
            status.unknown_signers,
            vec![signing_key_text(&key(77).verifying_key())]
        );
        assert!(!extra.is_fully_signed(&roster));

        // For "all", the provider's signature is enough.
        let mut all = body.clone();
        all.consumers = Consumers::All;
        assert!(signed_by(&all, &[253]).is_fully_signed(&roster));
    }

    #[test]
    fn status_moves_from_draft_to_active_to_expired() {
        let roster = digit_roster(DecisionRule::Secretariat);
        let body = greve_air_quality();
        let mut agreement = signed_by(&body, &[253, 376]);
        let status = agreement.status_at(&roster, NOW);
        assert_eq!(
            status.to_string(),
            "draft: waiting for signatures from Vejle Kommune 630"
        );
        agreement.sign(&key(member_seed(630))).expect("sign");
        let before = datetime!(2024-12-31 23:59:59 UTC);
        assert_eq!(
            agreement.status_at(&roster, before),
            AgreementStatus::NotYetValid {
                from: body.valid_from
            }
        );
        assert_eq!(
            agreement.status_at(&roster, before).to_string(),
            "signed; in force from 2025-01-01T00:00:00Z"
        );
        assert!(agreement.status_at(&roster, body.valid_from).is_active());
        assert_eq!(
            agreement.status_at(&roster, NOW).to_string(),
            "active until 2026-01-01T00:00:00Z"
        );
        let expired = agreement.status_at(&roster, body.valid_until);
        assert_eq!(expired.to_string(), "expired at 2026-01-01T00:00:00Z");

        // A signature made over other terms shows up as damage.
        let mut other = body.clone();
        other.purpose = "Something else".to_string();
        let mut document = agreement.document().clone();
        document.signatures[0] = signed_by(&other, &[253]).document().signatures[0].clone();
        let damaged = Agreement::from_document(document).expect("parse");
        assert!(matches!(
            damaged.status_at(&roster, NOW),
            AgreementStatus::Damaged { .. }
        ));
        assert!(
            damaged
                .status_at(&roster, NOW)
                .to_string()
                .starts_with("damaged: bad signature by ed25519:")
        );
    }
}
