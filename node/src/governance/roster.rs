//! Fellowship membership: the roster document, drafting its next serial,
//! and the rules for accepting it.
//!
//! A roster binds each member municipality to its node id, peer endpoint,
//! document-signing key and TLS certificate fingerprint, and states the
//! decision rule for changing the roster itself. Trust starts at a roster
//! the operator pins explicitly ([`accept_first`]: signed by the
//! secretariat key named in its own body) and moves forward only through
//! [`accept_next`]: the next serial, naming the digest of the accepted one,
//! signed as the *accepted* roster's rule demands, by the *accepted*
//! roster's keys. So a key rotated out in serial N no longer counts from
//! serial N+1 on, and nobody can add themselves to a roster to sign it.
//!
//! This module owns membership facts and their acceptance because every
//! other decision (agreements, access) is only as good as the roster it
//! looks keys and fingerprints up in.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{SigningKey, VerifyingKey};
use time::{Date, OffsetDateTime};
use toml::Table;
use uuid::Uuid;

use super::body::{self, FieldError, Reader};
use super::document::{DocumentDigest, DocumentError, DocumentType, SignedDocument};
use crate::identity::{Fingerprint, signing_key_text};

/// The `kind` of a roster body.
pub const ROSTER_KIND: &str = "samvirke-roster/v1";

/// Largest roster file, in bytes: room for [`MAX_MEMBERS`] members with
/// long names and endpoints, and nothing a member could use to stall
/// synchronisation.
pub const MAX_ROSTER_BYTES: usize = 512 * 1024;
/// Most members one roster may list (current and former).
pub const MAX_MEMBERS: usize = 1_000;

/// Problems with a roster file, its contents, or its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error("roster body is not valid TOML: {0}")]
    Toml(String),
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("the roster of `{fellowship}` has no member with code {code}")]
    NoSuchMember { fellowship: String, code: u32 },
    #[error(
        "this roster is for fellowship `{candidate}`, but it was offered as the next roster of \
         `{current}`; import it into the right fellowship"
    )]
    FellowshipMismatch { current: String, candidate: String },
    #[error("serial {candidate} is not newer than {current}")]
    NotNewer { candidate: u64, current: u64 },
    #[error(
        "serial {candidate} does not directly follow the accepted serial {current}; \
         import serial {} first", .current + 1
    )]
    SerialGap { candidate: u64, current: u64 },
    #[error(
        "serial {candidate} does not name its predecessor; it must say previous = \"{expected}\" \
         (the digest of the accepted serial {current})"
    )]
    MissingPrevious {
        candidate: u64,
        current: u64,
        expected: DocumentDigest,
    },
    #[error(
        "serial {candidate} names previous = \"{found}\", but the accepted serial {current} has \
         digest {expected}; this roster does not continue the chain this node trusts"
    )]
    BrokenChain {
        candidate: u64,
        current: u64,
        found: DocumentDigest,
        expected: DocumentDigest,
    },
    #[error("{0}")]
    RuleNotMet(Box<RuleShortfall>),
    #[error(
        "the roster to pin is not signed by its own secretariat key {key}; have the secretariat \
         sign it (samvirke roster sign) before importing it as the trust anchor"
    )]
    NotSignedBySecretariat { key: String },
    #[error("the roster file is {size} bytes; at most {MAX_ROSTER_BYTES} are accepted")]
    TooLarge { size: usize },
}

// ---- Staleness -------------------------------------------------------------

/// What a node does with a roster past its `review_by` date (a node that
/// missed newer serials, a revocation among them, must not go on trusting
/// an old one for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StalePolicy {
    /// Warn the operator, keep serving.
    #[default]
    Warn,
    /// Warn, and refuse data calls under the fellowship's agreements.
    Refuse,
}

impl StalePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            StalePolicy::Warn => "warn",
            StalePolicy::Refuse => "refuse",
        }
    }
}

impl FromStr for StalePolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "warn" => Ok(StalePolicy::Warn),
            "refuse" => Ok(StalePolicy::Refuse),
            _ => Err(format!("`{text}`: expected \"warn\" or \"refuse\"")),
        }
    }
}

// ---- Decision rule ---------------------------------------------------------

/// How a roster change must be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionRule {
    /// The secretariat key alone.
    Secretariat,
    /// The secretariat key plus at least this many distinct current members.
    Quorum(u32),
    /// Every current member (the secretariat may sign too; not required).
    Unanimous,
}

impl fmt::Display for DecisionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecisionRule::Secretariat => f.write_str("secretariat"),
            DecisionRule::Quorum(n) => write!(f, "quorum:{n}"),
            DecisionRule::Unanimous => f.write_str("unanimous"),
        }
    }
}

impl FromStr for DecisionRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = "expected \"secretariat\", \"quorum:N\" (N >= 1) or \"unanimous\"";
        match text {
            "secretariat" => Ok(DecisionRule::Secretariat),
            "unanimous" => Ok(DecisionRule::Unanimous),
            _ => {
                let n = text
                    .strip_prefix("quorum:")
                    .filter(|n| !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| format!("`{text}`: {expected}"))?;
                Ok(DecisionRule::Quorum(n))
            }
        }
    }
}

// ---- Members ---------------------------------------------------------------

/// One member municipality as the roster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Official municipality code (kommunekode).
    pub code: u32,
    pub name: String,
    pub node_id: Uuid,
    /// The member node's peer endpoint, an `https://` URL.
    pub endpoint: String,
    /// The key the member signs rosters and agreements with.
    pub signing_key: VerifyingKey,
    /// SHA-256 of the DER of the member node's TLS client/server certificate.
    pub tls_fingerprint: Fingerprint,
    pub joined: Date,
    /// From this date on (00:00 UTC) the member is refused.
    pub left: Option<Date>,
}

impl Member {
    /// Whether the member is current at `at`: from 00:00 UTC on `joined`,
    /// and, with `left` set, until 00:00 UTC on that date.
    pub fn is_current(&self, at: OffsetDateTime) -> bool {
        at >= body::start_of(self.joined) && self.left.is_none_or(|left| at < body::start_of(left))
    }

    /// The member as a party named in messages.
    pub fn party(&self) -> Party {
        Party {
            code: self.code,
            name: Some(self.name.clone()),
        }
    }
}

/// A municipality named in a message: `Vejle Kommune 630`, or just its
/// code when the roster does not know it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Party {
    pub code: u32,
    pub name: Option<String>,
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} {}", self.code),
            None => write!(f, "municipality {} (not in the roster)", self.code),
        }
    }
}

/// New values for a member's node facts (key rotation, moved endpoint);
/// `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberUpdate {
    pub signing_key: Option<VerifyingKey>,
    pub tls_fingerprint: Option<Fingerprint>,
    pub endpoint: Option<String>,
}

// ---- Roster body (also the draft) -----------------------------------------

/// The facts of a roster body. Also the draft a CLI edits: build one with
/// [`RosterBody::first`] or [`Roster::next_draft`], change it, then
/// [`RosterBody::render`] it to the text that members sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterBody {
    /// Fellowship id slug, e.g. `digit`.
    pub fellowship: String,
    pub name: String,
    pub serial: u64,
    /// Digest of the previous serial's body; present exactly when serial > 1.
    pub previous: Option<DocumentDigest>,
    pub secretariat_key: VerifyingKey,
    pub rule: DecisionRule,
    pub issued: OffsetDateTime,
    /// The secretariat promises a newer serial by this date; past it the
    /// roster is stale (see [`StalePolicy`]).
    pub review_by: Option<Date>,
    pub on_stale: StalePolicy,
    pub members: Vec<Member>,
}

impl RosterBody {
    /// A draft of serial 1 of a new fellowship's roster.
    pub fn first(
        fellowship: impl Into<String>,
        name: impl Into<String>,
        secretariat_key: VerifyingKey,
        rule: DecisionRule,
        issued: OffsetDateTime,
        members: Vec<Member>,
    ) -> RosterBody {
        RosterBody {
            fellowship: fellowship.into(),
            name: name.into(),
            serial: 1,
            previous: None,
            secretariat_key,
            rule,
            issued,
            review_by: None,
            on_stale: StalePolicy::Warn,
            members,
        }
    }

    /// Parses and validates a roster body.
    pub fn parse(text: &str) -> Result<RosterBody, RosterError> {
        let table = body::parse_table(text).map_err(RosterError::Toml)?;
        let parsed = read_body(&table)?;
        parsed.validate()?;
        Ok(parsed)
    }

    /// Checks the facts hang together (ids, dates, no duplicates, chain
    /// fields); errors name the field.
    pub fn validate(&self) -> Result<(), RosterError> {
        body::check_slug(&self.fellowship).map_err(|r| FieldError::new("fellowship", r))?;
        body::check_text(&self.name).map_err(|r| FieldError::new("name", r))?;
        if self.serial == 0 {
            return Err(FieldError::new("serial", "must be 1 or more").into());
        }
        match (self.serial, &self.previous) {
            (1, Some(_)) => {
                return Err(FieldError::new(
                    "previous",
                    "serial 1 has no predecessor; remove this field",
                )
                .into());
            }
            (n, None) if n > 1 => {
                return Err(FieldError::new(
                    "previous",
                    format!(
                        "missing; serial {n} must name the digest (sha256:...) of serial {}'s body",
                        n - 1
                    ),
                )
                .into());
            }
            _ => {}
        }
        if self.rule == DecisionRule::Quorum(0) {
            return Err(
                FieldError::new("rule", "quorum:0 is not a quorum; use \"secretariat\"").into(),
            );
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(FieldError::new(
                "member",
                format!(
                    "lists {} members; at most {MAX_MEMBERS}",
                    self.members.len()
                ),
            )
            .into());
        }
        if let Some(review_by) = self.review_by
            && review_by <= self.issued.date()
        {
            return Err(FieldError::new(
                "review_by",
                format!(
                    "{} is not after the issue date {}",
                    body::ymd(review_by),
                    body::ymd(self.issued.date())
                ),
            )
            .into());
        }
        if self.review_by.is_none() && self.on_stale != StalePolicy::Warn {
            return Err(
                FieldError::new("on_stale", "needs a review_by date to be stale after").into(),
            );
        }
        let mut codes = BTreeSet::new();
        let mut keys = BTreeSet::new();
        let mut fingerprints = BTreeSet::new();
        let mut node_ids = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let field = |key: &str| format!("member[{i}].{key}");
            if m.code == 0 {
                return Err(FieldError::new(field("code"), "must be 1 or more").into());
            }
            body::check_text(&m.name).map_err(|r| FieldError::new(field("name"), r))?;
            check_endpoint(&m.endpoint).map_err(|r| FieldError::new(field("endpoint"), r))?;
            if let Some(left) = m.left
                && left < m.joined
            {
                return Err(FieldError::new(
                    field("left"),
                    format!(
                        "{} is before joined = {}",
                        body::ymd(left),
                        body::ymd(m.joined)
                    ),
                )
                .into());
            }
            let duplicate = |key: &str, what: String| {
                FieldError::new(
                    field(key),
                    format!("{what} is already used by another member"),
                )
            };
            if !codes.insert(m.code) {
                return Err(duplicate("code", format!("code {}", m.code)).into());
            }
            if m.signing_key == self.secretariat_key {
                return Err(FieldError::new(
                    field("signing_key"),
                    "is the secretariat key; the secretariat and each member need their own keys",
                )
                .into());
            }
            if !keys.insert(m.signing_key.to_bytes()) {
                return Err(duplicate("signing_key", signing_key_text(&m.signing_key)).into());
            }
            if !fingerprints.insert(m.tls_fingerprint) {
                return Err(duplicate("tls_fingerprint", m.tls_fingerprint.to_string()).into());
            }
            if !node_ids.insert(m.node_id) {
                return Err(duplicate("node_id", m.node_id.to_string()).into());
            }
        }
        Ok(())
    }

    /// The body as TOML text, deterministically: the same facts always give
    /// the same bytes. Validates first.
    pub fn render(&self) -> Result<String, RosterError> {
        self.validate()?;
        let issued = body::rfc3339(self.issued).map_err(|r| FieldError::new("issued", r))?;
        let mut out = String::new();
        out.push_str(&format!("kind = {}\n", body::quote(ROSTER_KIND)));
        out.push_str(&format!("fellowship = {}\n", body::quote(&self.fellowship)));
        out.push_str(&format!("name = {}\n", body::quote(&self.name)));
        out.push_str(&format!("serial = {}\n", self.serial));
        if let Some(previous) = &self.previous {
            out.push_str(&format!("previous = \"{previous}\"\n"));
        }
        out.push_str(&format!(
            "secretariat_key = \"{}\"\n",
            signing_key_text(&self.secretariat_key)
        ));
        out.push_str(&format!("rule = \"{}\"\n", self.rule));
        out.push_str(&format!("issued = {issued}\n"));
        if let Some(review_by) = self.review_by {
            out.push_str(&format!("review_by = {}\n", body::ymd(review_by)));
            out.push_str(&format!("on_stale = \"{}\"\n", self.on_stale.as_str()));
        }
        for m in &self.members {
            out.push_str("\n[[member]]\n");
            out.push_str(&format!("code = {}\n", m.code));
            out.push_str(&format!("name = {}\n", body::quote(&m.name)));
            out.push_str(&format!("node_id = \"{}\"\n", m.node_id.hyphenated()));
            out.push_str(&format!("endpoint = {}\n", body::quote(&m.endpoint)));
            out.push_str(&format!(
                "signing_key = \"{}\"\n",
                signing_key_text(&m.signing_key)
            ));
            out.push_str(&format!("tls_fingerprint = \"{}\"\n", m.tls_fingerprint));
            out.push_str(&format!("joined = {}\n", body::ymd(m.joined)));
            if let Some(left) = m.left {
                out.push_str(&format!("left = {}\n", body::ymd(left)));
            }
        }
        Ok(out)
    }

    /// Renders and wraps the body as an unsigned roster, ready to sign.
    pub fn to_draft(&self) -> Result<Roster, RosterError> {
        Roster::from_document(SignedDocument::draft(self.render()?))
    }

    /// The member with `code`.
    pub fn member(&self, code: u32) -> Option<&Member> {
        self.members.iter().find(|m| m.code == code)
    }

    fn member_mut(&mut self, code: u32) -> Result<&mut Member, RosterError> {
        let fellowship = self.fellowship.clone();
        self.members
            .iter_mut()
            .find(|m| m.code == code)
            .ok_or(RosterError::NoSuchMember { fellowship, code })
    }

    /// Adds a member at the end (refusing duplicates of code, key, fingerprint).
    pub fn add_member(&mut self, member: Member) -> Result<(), RosterError> {
        self.members.push(member);
        self.validate().inspect_err(|_| {
            self.members.pop();
        })
    }

    /// Records that member `code` leaves on `date` (refused from that date on).
    pub fn mark_left(&mut self, code: u32, date: Date) -> Result<(), RosterError> {
        let before = self.clone();
        self.member_mut(code)?.left = Some(date);
        self.validate().inspect_err(|_| *self = before)
    }

    /// Replaces a member's signing key, TLS fingerprint and/or endpoint.
    pub fn update_member(&mut self, code: u32, update: MemberUpdate) -> Result<(), RosterError> {
        let before = self.clone();
        let member = self.member_mut(code)?;
        if let Some(key) = update.signing_key {
            member.signing_key = key;
        }
        if let Some(fingerprint) = update.tls_fingerprint {
            member.tls_fingerprint = fingerprint;
        }
        if let Some(endpoint) = update.endpoint {
            member.endpoint = endpoint;
        }
        self.validate().inspect_err(|_| *self = before)
    }
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let host = endpoint
        .strip_prefix("https://")
        .map(|rest| rest.split(['/', ':']).next().unwrap_or_default())
        .unwrap_or_default();
    if host.is_empty()
        || endpoint.len() > body::MAX_SHORT_TEXT
        || endpoint
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{endpoint}` is not an https URL (e.g. https://node.greve.dk:7443)"
        ));
    }
    Ok(())
}

fn read_body(table: &Table) -> Result<RosterBody, FieldError> {
    let top = Reader::new(table, "");
    top.only(&[
        "kind",
        "fellowship",
        "name",
        "serial",
        "previous",
        "secretariat_key",
        "rule",
        "issued",
        "review_by",
        "on_stale",
        "member",
    ])?;
    let kind = top.string("kind")?;
    if kind != ROSTER_KIND {
        return Err(top.error(
            "kind",
            format!("expected \"{ROSTER_KIND}\", found \"{kind}\""),
        ));
    }
    let serial = top.integer("serial")?;
    let serial = u64::try_from(serial)
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| top.error("serial", format!("{serial} is not 1 or more")))?;
    let members = top
        .tables("member")?
        .iter()
        .map(read_member)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RosterBody {
        fellowship: top.parsed("fellowship", |s| {
            body::check_slug(s).map(|()| s.to_string())
        })?,
        name: top.text("name")?,
        serial,
        previous: top.opt_parsed("previous", DocumentDigest::from_str)?,
        secretariat_key: top.parsed("secretariat_key", super::document::parse_key_strict)?,
        rule: top.parsed("rule", DecisionRule::from_str)?,
        issued: top.timestamp("issued")?,
        review_by: top.opt_date("review_by")?,
        on_stale: top
            .opt_parsed("on_stale", StalePolicy::from_str)?
            .unwrap_or_default(),
        members,
    })
}

fn read_member(m: &Reader<'_>) -> Result<Member, FieldError> {
    m.only(&[
        "code",
        "name",
        "node_id",
        "endpoint",
        "signing_key",
        "tls_fingerprint",
        "joined",
        "left",
    ])?;
    Ok(Member {
        code: m.u32_at_least("code", 1)?,
        name: m.text("name")?,
        node_id: m.parsed("node_id", body::parse_uuid)?,
        endpoint: m.parsed("endpoint", |s| check_endpoint(s).map(|()| s.to_string()))?,
        signing_key: m.parsed("signing_key", super::document::parse_key_strict)?,
        tls_fingerprint: m.parsed("tls_fingerprint", parse_fingerprint_strict)?,
        joined: m.date("joined")?,
        left: m.opt_date("left")?,
    })
}

/// `sha256:<64 lowercase hex>`, refusing uppercase (one spelling per value).
fn parse_fingerprint_strict(text: &str) -> Result<Fingerprint, String> {
    DocumentDigest::from_str(text).map(|d| Fingerprint(d.0))
}

// ---- The roster document ---------------------------------------------------

/// A parsed roster: its validated body facts and the signed file they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    body: RosterBody,
    document: SignedDocument,
    /// The body's digest, computed once (the body never changes).
    digest: DocumentDigest,
}

impl Roster {
    /// Parses a roster file (signed or draft) and validates its body.
    /// Signatures are checked by [`accept_first`] / [`accept_next`].
    pub fn parse(bytes: &[u8]) -> Result<Roster, RosterError> {
        if bytes.len() > MAX_ROSTER_BYTES {
            return Err(RosterError::TooLarge { size: bytes.len() });
        }
        Roster::from_document(SignedDocument::parse(bytes)?)
    }

    /// Wraps an already-parsed document, validating its body.
    pub fn from_document(document: SignedDocument) -> Result<Roster, RosterError> {
        let body = RosterBody::parse(&document.body)?;
        let digest = document.digest();
        Ok(Roster {
            body,
            document,
            digest,
        })
    }

    /// The validated facts.
    pub fn body(&self) -> &RosterBody {
        &self.body
    }

    /// The signed file.
    pub fn document(&self) -> &SignedDocument {
        &self.document
    }

    /// The file bytes (exactly as parsed, plus any signatures added since).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.document.to_bytes()
    }

    /// `sha256:` digest of the body: what the next serial names as `previous`.
    pub fn digest(&self) -> DocumentDigest {
        self.digest
    }

    pub fn fellowship(&self) -> &str {
        &self.body.fellowship
    }

    pub fn name(&self) -> &str {
        &self.body.name
    }

    pub fn serial(&self) -> u64 {
        self.body.serial
    }

    pub fn rule(&self) -> DecisionRule {
        self.body.rule
    }

    pub fn secretariat_key(&self) -> &VerifyingKey {
        &self.body.secretariat_key
    }

    pub fn members(&self) -> &[Member] {
        &self.body.members
    }

    /// The member with municipality code `code`.
    pub fn member(&self, code: u32) -> Option<&Member> {
        self.body.member(code)
    }

    /// The member whose signing key is `key`.
    pub fn member_by_key(&self, key: &VerifyingKey) -> Option<&Member> {
        self.body.members.iter().find(|m| &m.signing_key == key)
    }

    /// The member whose TLS certificate has fingerprint `fingerprint`.
    pub fn member_by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<&Member> {
        self.body
            .members
            .iter()
            .find(|m| &m.tls_fingerprint == fingerprint)
    }

    /// Members that have not left as of `at`.
    pub fn current_members(&self, at: OffsetDateTime) -> impl Iterator<Item = &Member> {
        self.body.members.iter().filter(move |m| m.is_current(at))
    }

    /// `code` as a party for messages, with its name if it is a member.
    pub fn party(&self, code: u32) -> Party {
        self.member(code)
            .map(Member::party)
            .unwrap_or(Party { code, name: None })
    }

    /// Appends a signature by `key` (see [`SignedDocument::sign`]).
    pub fn sign(&mut self, key: &SigningKey) -> Result<(), RosterError> {
        Ok(self.document.sign(DocumentType::Roster, key)?)
    }

    /// Whether the roster is past its review date at `now`.
    pub fn is_stale(&self, now: OffsetDateTime) -> bool {
        self.body
            .review_by
            .is_some_and(|review_by| now >= body::start_of(review_by))
    }

    /// Whether a valid signature by `key` is on this roster.
    pub fn signed_by(&self, key: &VerifyingKey) -> bool {
        self.document
            .check_signatures(DocumentType::Roster)
            .iter()
            .any(|check| check.valid && &check.signer == key)
    }

    /// A draft of the next serial: same facts, serial + 1, `previous` set to
    /// this roster's digest, issued at `issued`. Change it, render, sign.
    pub fn next_draft(&self, issued: OffsetDateTime) -> RosterBody {
        RosterBody {
            serial: self.body.serial + 1,
            previous: Some(self.digest()),
            issued,
            ..self.body.clone()
        }
    }
}

// ---- What changed between two serials --------------------------------------

/// One difference between a roster and the next, as people read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RosterChange {
    /// The fellowship's name, rule, secretariat key or review terms.
    Fellowship {
        field: &'static str,
        before: String,
        after: String,
    },
    Added(Member),
    /// The member's entry is gone from the roster altogether.
    Removed(Member),
    /// One fact of a member's entry changed.
    Member {
        code: u32,
        name: String,
        field: &'static str,
        before: String,
        after: String,
    },
}

impl RosterChange {
    /// The member code the change is about, if any.
    pub fn member_code(&self) -> Option<u32> {
        match self {
            RosterChange::Fellowship { .. } => None,
            RosterChange::Added(m) | RosterChange::Removed(m) => Some(m.code),
            RosterChange::Member { code, .. } => Some(*code),
        }
    }

    /// Whether this change speaks for the member itself: its signing key,
    /// its certificate, its endpoint, its node, or its entry as a whole.
    /// Recording that a member joined or left, or its name, is the
    /// secretariat's to decide; these need the member's own consent.
    pub fn speaks_for_member(&self) -> bool {
        match self {
            RosterChange::Fellowship { .. } | RosterChange::Added(_) => false,
            RosterChange::Removed(_) => true,
            RosterChange::Member { field, .. } => {
                matches!(
                    *field,
                    "signing_key" | "tls_fingerprint" | "endpoint" | "node_id"
                )
            }
        }
    }
}

impl fmt::Display for RosterChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RosterChange::Fellowship {
                field,
                before,
                after,
            } => {
                write!(f, "{field}: {before} -> {after}")
            }
            RosterChange::Added(m) => write!(
                f,
                "added member {} {} (joined {}, endpoint {}, key {}, tls {})",
                m.name,
                m.code,
                body::ymd(m.joined),
                m.endpoint,
                signing_key_text(&m.signing_key),
                m.tls_fingerprint
            ),
            RosterChange::Removed(m) => {
                write!(
                    f,
                    "removed member {} {} from the roster entirely",
                    m.name, m.code
                )
            }
            RosterChange::Member {
                code,
                name,
                field,
                before,
                after,
            } => write!(f, "member {name} {code}: {field}: {before} -> {after}"),
        }
    }
}

/// Every difference between `before` and `after` (serial, previous and
/// issue time aside), members in the order of `before`, then additions.
pub fn diff(before: &RosterBody, after: &RosterBody) -> Vec<RosterChange> {
    let mut changes = Vec::new();
    let mut fellowship = |field: &'static str, a: String, b: String| {
        if a != b {
            changes.push(RosterChange::Fellowship {
                field,
                before: a,
                after: b,
            });
        }
    };
    fellowship("name", before.name.clone(), after.name.clone());
    fellowship("rule", before.rule.to_string(), after.rule.to_string());
    fellowship(
        "secretariat_key",
        signing_key_text(&before.secretariat_key),
        signing_key_text(&after.secretariat_key),
    );
    let date = |d: Option<Date>| d.map(body::ymd).unwrap_or_else(|| "none".to_string());
    fellowship("review_by", date(before.review_by), date(after.review_by));
    fellowship(
        "on_stale",
        before.on_stale.as_str().to_string(),
        after.on_stale.as_str().to_string(),
    );
    for old in &before.members {
        let Some(new) = after.member(old.code) else {
            changes.push(RosterChange::Removed(old.clone()));
            continue;
        };
        let mut field = |field: &'static str, a: String, b: String| {
            if a != b {
                changes.push(RosterChange::Member {
                    code: old.code,
                    name: old.name.clone(),
                    field,
                    before: a,
                    after: b,
                });
            }
        };
        field("name", old.name.clone(), new.name.clone());
        field("node_id", old.node_id.to_string(), new.node_id.to_string());
        field("endpoint", old.endpoint.clone(), new.endpoint.clone());
        field(
            "signing_key",
            signing_key_text(&old.signing_key),
            signing_key_text(&new.signing_key),
        );
        field(
            "tls_fingerprint",
            old.tls_fingerprint.to_string(),
            new.tls_fingerprint.to_string(),
        );
        field("joined", body::ymd(old.joined), body::ymd(new.joined));
        field("left", date(old.left), date(new.left));
    }
    for new in &after.members {
        if before.member(new.code).is_none() {
            changes.push(RosterChange::Added(new.clone()));
        }
    }
    changes
}

// ---- Acceptance --------------------------------------------------------------

/// Checks a roster to pin as a fellowship's trust anchor: every signature
/// must verify, and the secretariat key named in its own body must be among
/// them. The operator pins this roster explicitly (out of band); `now` is
/// taken for symmetry with [`accept_next`] and does not affect the outcome.
pub fn accept_first(roster: &Roster, _now: OffsetDateTime) -> Result<(), RosterError> {
    let signers = roster.document.valid_signers(DocumentType::Roster)?;
    if signers.contains(roster.secretariat_key()) {
        Ok(())
    } else {
        Err(RosterError::NotSignedBySecretariat {
            key: signing_key_text(roster.secretariat_key()),
        })
    }
}

/// Checks that `candidate` may replace `current` (the accepted roster of the
/// same fellowship): it is the next serial, names `current`'s digest as
/// `previous`, every signature verifies, and the signatures satisfy
/// `current`'s rule using `current`'s keys and its members current at `now`.
pub fn accept_next(
    current: &Roster,
    candidate: &Roster,
    now: OffsetDateTime,
) -> Result<(), RosterError> {
    if candidate.fellowship() != current.fellowship() {
        return Err(RosterError::FellowshipMismatch {
            current: current.fellowship().to_string(),
            candidate: candidate.fellowship().to_string(),
        });
    }
    let (c, n) = (current.serial(), candidate.serial());
    if n <= c {
        return Err(RosterError::NotNewer {
            candidate: n,
            current: c,
        });
    }
    if n != c + 1 {
        return Err(RosterError::SerialGap {
            candidate: n,
            current: c,
        });
    }
    let expected = current.digest();
    match candidate.body.previous {
        None => {
            return Err(RosterError::MissingPrevious {
                candidate: n,
                current: c,
                expected,
            });
        }
        Some(found) if found != expected => {
            return Err(RosterError::BrokenChain {
                candidate: n,
                current: c,
                found,
                expected,
            });
        }
        Some(_) => {}
    }
    let signers = candidate.document.valid_signers(DocumentType::Roster)?;
    check_rule(current, &signers, now)
}

/// Why a roster change was not signed as the rule demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleShortfall {
    pub rule: DecisionRule,
    /// The accepted roster's secretariat key, in text form.
    pub secretariat_key: String,
    pub secretariat_signed: bool,
    /// Current members whose signatures count.
    pub members_signed: Vec<Party>,
    /// Whether the rule needed the secretariat and it did not sign.
    pub missing_secretariat: bool,
    /// How many more current members must sign.
    pub missing_members: usize,
    /// For `unanimous`: exactly who has not signed.
    pub missing_named: Vec<Party>,
    pub current_member_count: usize,
    /// Valid signatures that do not count, each with the reason.
    pub ignored: Vec<String>,
}

impl fmt::Display for RuleShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            DecisionRule::Secretariat => write!(
                f,
                "rule secretariat needs the secretariat's signature ({})",
                self.secretariat_key
            )?,
            DecisionRule::Quorum(n) => write!(
                f,
                "rule quorum:{n} needs the secretariat and {n} current member{}",
                plural(n as usize)
            )?,
            DecisionRule::Unanimous if self.current_member_count == 0 => write!(
                f,
                "rule unanimous with no current members falls back to the secretariat's \
                 signature ({})",
                self.secretariat_key
            )?,
            DecisionRule::Unanimous => write!(
                f,
                "rule unanimous needs all {} current members",
                self.current_member_count
            )?,
        }
        let mut signed = Vec::new();
        if self.secretariat_signed {
            signed.push("secretariat".to_string());
        }
        if !self.members_signed.is_empty() {
            signed.push(format!(
                "{} member{} ({})",
                self.members_signed.len(),
                plural(self.members_signed.len()),
                body::list(&self.members_signed)
            ));
        }
        if signed.is_empty() {
            f.write_str("; signed by nobody whose signature counts")?;
        } else {
            write!(f, "; signed by {}", signed.join(" and "))?;
        }
        if !self.missing_named.is_empty() {
            write!(f, "; missing {}", body::list(&self.missing_named))?;
        } else {
            match (self.missing_secretariat, self.missing_members) {
                (true, 0) => f.write_str("; missing the secretariat")?,
                (true, k) => write!(
                    f,
                    "; missing the secretariat and {k} more member{}",
                    plural(k)
                )?,
                (false, k) => write!(f, "; missing {k} more")?,
            }
        }
        if let DecisionRule::Quorum(n) = self.rule
            && n as usize > self.current_member_count
        {
            write!(
                f,
                " (only {} current members exist, so this rule cannot be met)",
                self.current_member_count
            )?;
        }
        for reason in &self.ignored {
            write!(f, "; ignored: {reason}")?;
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Counts `signers` (all already verified) against `current`'s rule.
fn check_rule(
    current: &Roster,
    signers: &[VerifyingKey],
    now: OffsetDateTime,
) -> Result<(), RosterError> {
    let secretariat = current.secretariat_key();
    let current_members: Vec<&Member> = current.current_members(now).collect();
    let mut secretariat_signed = false;
    let mut members_signed: Vec<&Member> = Vec::new();
    let mut ignored = Vec::new();
    for key in signers {
        if key == secretariat {
            secretariat_signed = true;
        } else if let Some(m) = current_members.iter().find(|m| &m.signing_key == key) {
            members_signed.push(m);
        } else if let Some(m) = current.member_by_key(key) {
            ignored.push(format!(
                "signature by {} is from {}, whose membership ended on {}, and does not count",
                signing_key_text(key),
                m.party(),
                m.left.map(body::ymd).unwrap_or_default()
            ));
        } else {
            ignored.push(format!(
                "signature by {} is not from the secretariat or any current member",
                signing_key_text(key)
            ));
        }
    }
    let count = members_signed.len();
    let (needs_secretariat, needed_members, missing_named) = match current.rule() {
        DecisionRule::Secretariat => (true, 0, Vec::new()),
        DecisionRule::Quorum(n) => (true, n as usize, Vec::new()),
        DecisionRule::Unanimous if current_members.is_empty() => (true, 0, Vec::new()),
        DecisionRule::Unanimous => {
            let missing: Vec<Party> = current_members
                .iter()
                .filter(|m| !members_signed.iter().any(|s| s.code == m.code))
                .map(|m| m.party())
                .collect();
            (false, current_members.len(), missing)
        }
    };
    let missing_secretariat = needs_secretariat && !secretariat_signed;
    let missing_members = needed_members.saturating_sub(count);
    if !missing_secretariat && missing_members == 0 {
        return Ok(());
    }
    Err(RosterError::RuleNotMet(Box::new(RuleShortfall {
        rule: current.rule(),
        secretariat_key: signing_key_text(secretariat),
        secretariat_signed,
        members_signed: members_signed.iter().map(|m| m.party()).collect(),
        missing_secretariat,
        missing_members,
        missing_named,
        current_member_count: current_members.len(),
        ignored,
    })))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::governance::document::tests::key;
    use time::macros::{date, datetime};

    pub(crate) const SECRETARIAT_SEED: u8 = 100;

    /// Seed of a member's signing key, derived from its code.
    pub(crate) fn member_seed(code: u32) -> u8 {
        (code % 251) as u8 + 1
    }

    pub(crate) fn fingerprint(code: u32) -> Fingerprint {
        Fingerprint::of_der(format!("certificate of {code}").as_bytes())
    }

    pub(crate) fn member(code: u32, name: &str, left: Option<Date>) -> Member {
        Member {
            code,
            name: name.to_string(),
            node_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + u128::from(code)),
            endpoint: format!("https://node-{code}.samvirke.test:7443"),
            signing_key: key(member_seed(code)).verifying_key(),
            tls_fingerprint: fingerprint(code),
            joined: date!(2016 - 01 - 01),
            left,
        }
    }

    #[test]
    fn a_member_is_current_from_joined_until_left() {
        let mut m = member(265, "Roskilde Kommune", Some(date!(2025 - 01 - 01)));
        m.joined = date!(2016 - 03 - 01);
        assert!(!m.is_current(datetime!(2016-02-29 23:59:59 UTC)));
        assert!(m.is_current(datetime!(2016-03-01 00:00 UTC)));
        assert!(m.is_current(datetime!(2024-12-31 23:59:59 UTC)));
        assert!(!m.is_current(datetime!(2025-01-01 00:00 UTC)));
    }

    /// DIGIT-like members: two current, two who left on 2025-01-01, plus Vejle.
    pub(crate) fn digit_members() -> Vec<Member> {
        vec![
            member(253, "Greve Kommune", None),
            member(376, "Guldborgsund Kommune", None),
            member(370, "Næstved Kommune", Some(date!(2025 - 01 - 01))),
            member(265, "Roskilde Kommune", Some(date!(2025 - 01 - 01))),
            member(630, "Vejle Kommune", None),
        ]
    }

    pub(crate) const NOW: OffsetDateTime = datetime!(2025-03-01 12:00 UTC);

    /// Serial 1 of DIGIT with `rule`, signed by the secretariat.
    pub(crate) fn digit_roster(rule: DecisionRule) -> Roster {
        let mut roster = RosterBody::first(
            "digit",
            "DIGIT - Digitaliseringsforeningen (Midtsjaelland)",
            key(SECRETARIAT_SEED).verifying_key(),
            rule,
            datetime!(2025-02-01 09:00 UTC),
            digit_members(),
        )
        .to_draft()
        .expect("draft");
        roster.sign(&key(SECRETARIAT_SEED)).expect("sign");
        roster
    }

    fn signed_by(body: &RosterBody, seeds: &[u8]) -> Roster {
        let mut roster = body.to_draft().expect("draft");
        for seed in seeds {
            roster.sign(&key(*seed)).expect("sign");
        }
        roster
    }

    fn next_with_vejle_moved(current: &Roster) -> RosterBody {
        let mut next = current.next_draft(datetime!(2025-02-15 09:00 UTC));
        next.update_member(
            630,
            MemberUpdate {
                endpoint: Some("https://samvirke.vejle.dk".to_string()),
                ..MemberUpdate::default()
            },
        )
        .expect("update");
        next
    }

    const SEC: u8 = SECRETARIAT_SEED;

    fn seed(code: u32) -> u8 {
        member_seed(code)
    }

    #[test]
    fn a_rendered_roster_parses_back_to_the_same_facts_and_bytes() {
        let roster = digit_roster(DecisionRule::Quorum(2));
        let text = roster.body().render().expect("render");
        assert_eq!(text, roster.document().body);
        assert_eq!(RosterBody::parse(&text).expect("parse"), *roster.body());
        let reparsed = Roster::parse(&roster.to_bytes()).expect("parse file");
        assert_eq!(reparsed, roster);
        assert_eq!(reparsed.to_bytes(), roster.to_bytes());
        assert!(text.contains("rule = \"quorum:2\"\n"), "{text}");
        assert!(text.contains("left = 2025-01-01\n"), "{text}");
        assert!(text.contains("name = \"Næstved Kommune\"\n"), "{text}");
    }

    #[test]
    fn flipping_any_byte_of_a_signed_roster_is_detected() {
        // A short roster keeps this loop quick in debug builds; every kind of
        // line (header fields, a member with and without `left`, the
        // separator, two signature lines) is still there.
        let mut roster = RosterBody::first(
            "digit",
            "DIGIT",
            key(SECRETARIAT_SEED).verifying_key(),
            DecisionRule::Quorum(1),
            datetime!(2025-02-01 09:00 UTC),
            vec![
                member(253, "Greve Kommune", None),
                member(370, "Næstved Kommune", Some(date!(2025 - 01 - 01))),
            ],
        )
        .to_draft()
        .expect("draft");
        roster.sign(&key(SECRETARIAT_SEED)).expect("sign");
        roster.sign(&key(member_seed(253))).expect("sign");
        let bytes = roster.to_bytes();
        assert!(accept_first(&roster, NOW).is_ok());
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            let outcome = Roster::parse(&damaged).and_then(|r| accept_first(&r, NOW));
            assert!(outcome.is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn member_currency_ends_at_the_start_of_the_left_date() {
        let naestved = member(370, "Næstved Kommune", Some(date!(2025 - 01 - 01)));
        assert!(naestved.is_current(datetime!(2024-12-31 23:59:59 UTC)));
        assert!(!naestved.is_current(datetime!(2025-01-01 00:00 UTC)));
        assert!(!naestved.is_current(datetime!(2025-06-01 00:00 UTC)));
        // 00:30 in Copenhagen on Jan 1st is still Dec 31st in UTC.
        assert!(naestved.is_current(datetime!(2025-01-01 00:30 +01:00)));
        assert!(member(253, "Greve Kommune", None).is_current(NOW));
    }

    #[test]
    fn validation_names_the_field() {
        let good = digit_roster(DecisionRule::Secretariat)
            .body()
            .render()
            .expect("render");
        let fp = fingerprint(376).to_string();
        let cases: Vec<(String, &str)> = vec![
            (
                good.replacen(&fp, "sha256:00", 1),
                "member[1].tls_fingerprint: ",
            ),
            (
                good.replacen(&fp, &fp.to_uppercase().replace("SHA256", "sha256"), 1),
                "member[1].tls_fingerprint: ",
            ),
            (
                good.replacen(&fingerprint(630).to_string(), &fp, 1),
                "member[4].tls_fingerprint: sha256:",
            ),
            (
                good.replacen("code = 376", "code = 253", 1),
                "member[1].code: code 253 is already used",
            ),
            (good.replacen("serial = 1", "serial = 0", 1), "serial: "),
            (
                good.replacen("serial = 1", "serial = 2", 1),
                "previous: missing",
            ),
            (
                good.replacen("rule = \"secretariat\"", "rule = \"quorum:0\"", 1),
                "rule: ",
            ),
            (
                good.replacen("rule = \"secretariat\"", "rule = \"majority\"", 1),
                "rule: ",
            ),
            (
                good.replacen("fellowship = \"digit\"", "fellowship = \"DIGIT\"", 1),
                "fellowship: ",
            ),
            (
                good.replacen("https://node-253", "http://node-253", 1),
                "member[0].endpoint: ",
            ),
            (
                good.replacen("joined = 2016-01-01\nleft", "joined = 2026-01-01\nleft", 1),
                "member[2].left: ",
            ),
            (
                good.replacen(
                    "issued = 2025-02-01T09:00:00Z",
                    "issued = 2025-02-01T09:00:00",
                    1,
                ),
                "issued: ",
            ),
            (
                good.replacen(
                    "kind = \"samvirke-roster/v1\"",
                    "kind = \"samvirke-agreement/v1\"",
                    1,
                ),
                "kind: ",
            ),
            (
                format!("{good}colour = \"blue\"\n"),
                "member[4].colour: unknown field",
            ),
            (
                good.replacen("code = 253\n", "", 1),
                "member[0].code: missing",
            ),
        ];
        for (text, expected) in cases {
            let err = RosterBody::parse(&text).expect_err(expected);
            assert!(
                err.to_string().starts_with(expected),
                "expected `{expected}...`, got `{err}`"
            );
        }
        // The secretariat may not double as a member.
        let mut body = digit_roster(DecisionRule::Secretariat).body().clone();
        body.members[0].signing_key = body.secretariat_key;
        let err = body.render().expect_err("shared key");
        assert!(
            err.to_string()
                .starts_with("member[0].signing_key: is the secretariat key"),
            "{err}"
        );
    }

    #[test]
    fn timestamps_may_be_quoted_rfc3339_strings() {
        let good = digit_roster(DecisionRule::Secretariat)
            .body()
            .render()
            .expect("render");
        let quoted = good
            .replacen(
                "issued = 2025-02-01T09:00:00Z",
                "issued = \"2025-02-01T10:00:00+01:00\"",
                1,
            )
            .replacen("joined = 2016-01-01", "joined = \"2016-01-01\"", 1);
        let body = RosterBody::parse(&quoted).expect("parse");
        assert_eq!(body.issued, datetime!(2025-02-01 09:00 UTC));
    }

    #[test]
    fn the_first_roster_must_carry_its_secretariat_signature() {
        let roster = digit_roster(DecisionRule::Secretariat);
        assert_eq!(accept_first(&roster, NOW), Ok(()));
        let unsigned = signed_by(roster.body(), &[seed(253)]);
        let err = accept_first(&unsigned, NOW).expect_err("member only");
        assert!(
            matches!(err, RosterError::NotSignedBySecretariat { .. }),
            "{err}"
        );
        let draft = signed_by(roster.body(), &[]);
        assert!(accept_first(&draft, NOW).is_err());
    }

    #[test]
    fn secretariat_rule() {
        let current = digit_roster(DecisionRule::Secretariat);
        let next = next_with_vejle_moved(&current);
        assert_eq!(
            accept_next(&current, &signed_by(&next, &[SEC]), NOW),
            Ok(())
        );
        let err = accept_next(&current, &signed_by(&next, &[seed(253), seed(376)]), NOW)
            .expect_err("members only");
        let text = err.to_string();
        assert!(
            text.starts_with("rule secretariat needs the secretariat's signature"),
            "{text}"
        );
        assert!(
            text.contains("signed by 2 members (Greve Kommune 253, Guldborgsund Kommune 376)"),
            "{text}"
        );
        assert!(text.contains("missing the secretariat"), "{text}");
    }

    #[test]
    fn quorum_rule_counts_distinct_current_members() {
        let current = digit_roster(DecisionRule::Quorum(2));
        let next = next_with_vejle_moved(&current);
        // Enough: secretariat and two current members.
        assert_eq!(
            accept_next(
                &current,
                &signed_by(&next, &[SEC, seed(630), seed(253)]),
                NOW
            ),
            Ok(())
        );
        // Too few: a member who left and an outsider do not count.
        let outsider = 77;
        let err = accept_next(
            &current,
            &signed_by(&next, &[SEC, seed(630), seed(370), outsider]),
            NOW,
        )
        .expect_err("too few");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "rule quorum:2 needs the secretariat and 2 current members; signed by secretariat \
                 and 1 member (Vejle Kommune 630); missing 1 more"
            ),
            "{text}"
        );
        assert!(
            text.contains("is from Næstved Kommune 370, whose membership ended on 2025-01-01"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "signature by {} is not from the secretariat or any current member",
                signing_key_text(&key(outsider).verifying_key())
            )),
            "{text}"
        );
        // Members without the secretariat are not enough either.
        let err = accept_next(
            &current,
            &signed_by(&next, &[seed(630), seed(253), seed(376)]),
            NOW,
        )
        .expect_err("no secretariat");
        assert!(
            err.to_string().contains("; missing the secretariat"),
            "{err}"
        );
        // Before the leaving date Næstved was current and counted.
        assert_eq!(
            accept_next(
                &current,
                &signed_by(&next, &[SEC, seed(630), seed(370)]),
                datetime!(2024-12-31 12:00 UTC)
            ),
            Ok(())
        );
    }

    #[test]
    fn unanimous_rule_needs_every_current_member() {
        let current = digit_roster(DecisionRule::Unanimous);
        let next = next_with_vejle_moved(&current);
        assert_eq!(
            accept_next(
                &current,
                &signed_by(&next, &[seed(253), seed(376), seed(630)]),
                NOW
            ),
            Ok(())
        );
        // The secretariat may sign too.
        assert_eq!(
            accept_next(
                &current,
                &signed_by(&next, &[seed(253), SEC, seed(376), seed(630)]),
                NOW
            ),
            Ok(())
        );
        let err = accept_next(
            &current,
            &signed_by(&next, &[SEC, seed(253), seed(630)]),
            NOW,
        )
        .expect_err("Guldborgsund missing");
        let text = err.to_string();
        assert!(
            text.starts_with("rule unanimous needs all 3 current members"),
            "{text}"
        );
        assert!(
            text.contains("; missing Guldborgsund Kommune 376"),
            "{text}"
        );
    }

    #[test]
    fn serials_must_move_forward_one_step_along_the_chain() {
        let current = digit_roster(DecisionRule::Secretariat);
        let same = current.clone();
        let err = accept_next(&current, &same, NOW).expect_err("same serial");
        assert_eq!(err.to_string(), "serial 1 is not newer than 1");

        let second = signed_by(&next_with_vejle_moved(&current), &[SEC]);
        assert_eq!(accept_next(&current, &second, NOW), Ok(()));
        let err = accept_next(&second, &current, NOW).expect_err("older");
        assert_eq!(err.to_string(), "serial 1 is not newer than 2");

        let mut third = second.next_draft(datetime!(2025-02-20 09:00 UTC));
        third.name = "DIGIT".to_string();
        let third = signed_by(&third, &[SEC]);
        let err = accept_next(&current, &third, NOW).expect_err("gap");
        assert!(matches!(err, RosterError::SerialGap { .. }), "{err}");
        assert!(err.to_string().contains("import serial 2 first"), "{err}");

        // A serial 2 that names some other predecessor breaks the chain.
        let mut forked = next_with_vejle_moved(&current);
        forked.previous = Some(DocumentDigest::of(b"another serial 1"));
        let err = accept_next(&current, &signed_by(&forked, &[SEC]), NOW).expect_err("fork");
        assert!(matches!(err, RosterError::BrokenChain { .. }), "{err}");
        assert!(
            err.to_string().contains("does not continue the chain"),
            "{err}"
        );

        // Another fellowship's roster is not a successor.
        let mut other = next_with_vejle_moved(&current);
        other.fellowship = "sbsys".to_string();
        let err = accept_next(&current, &signed_by(&other, &[SEC]), NOW).expect_err("other");
        assert!(
            matches!(err, RosterError::FellowshipMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_bad_signature_is_named() {
        let current = digit_roster(DecisionRule::Secretariat);
        let next = signed_by(&next_with_vejle_moved(&current), &[SEC]);
        // Graft the secretariat's signature over serial 1 onto serial 2.
        let mut document = next.document().clone();
        document.signatures = current.document().signatures.clone();
        let grafted = Roster::from_document(document).expect("parse");
        let err = accept_next(&current, &grafted, NOW).expect_err("bad signature");
        assert_eq!(
            err.to_string().split(" (").next(),
            Some(
                format!(
                    "bad signature by {}",
                    signing_key_text(&key(SEC).verifying_key())
                )
                .as_str()
            )
        );
    }

    #[test]
    fn a_rotated_key_stops_counting_from_the_next_serial() {
        let first = digit_roster(DecisionRule::Quorum(1));
        let new_key = key(201).verifying_key();
        let mut rotate = first.next_draft(datetime!(2025-02-10 09:00 UTC));
        rotate
            .update_member(
                253,
                MemberUpdate {
                    signing_key: Some(new_key),
                    tls_fingerprint: Some(Fingerprint::of_der(b"new certificate of 253")),
                    ..MemberUpdate::default()
                },
            )
            .expect("rotate");
        // Greve signs its own rotation with its old key, as serial 1 knows it.
        let second = signed_by(&rotate, &[SEC, seed(253)]);
        assert_eq!(accept_next(&first, &second, NOW), Ok(()));

        let third = second.next_draft(datetime!(2025-02-20 09:00 UTC));
        let old_signed = signed_by(&third, &[SEC, seed(253)]);
        let err = accept_next(&second, &old_signed, NOW).expect_err("old key");
        assert!(
            err.to_string()
                .contains("is not from the secretariat or any current member"),
            "{err}"
        );
        assert_eq!(
            accept_next(&second, &signed_by(&third, &[SEC, 201]), NOW),
            Ok(())
        );
    }

    #[test]
    fn draft_helpers_add_members_and_record_leaving() {
        let current = digit_roster(DecisionRule::Secretariat);
        let mut next = current.next_draft(datetime!(2025-02-15 09:00 UTC));
        next.add_member(member(316, "Holbæk Kommune", None))
            .expect("add");
        let err = next
            .add_member(member(316, "Holbæk Kommune", None))
            .expect_err("duplicate");
        assert!(err.to_string().contains("already used"), "{err}");
        assert_eq!(next.members.len(), 6);
        next.mark_left(630, date!(2025 - 06 - 01)).expect("leave");
        assert!(matches!(
            next.mark_left(999, date!(2025 - 06 - 01)),
            Err(RosterError::NoSuchMember { code: 999, .. })
        ));
        let text = next.render().expect("render");
        assert_eq!(text, next.render().expect("render again"), "deterministic");
        assert!(text.contains(&format!("previous = \"{}\"\n", current.digest())));
        let next = signed_by(&next, &[SEC]);
        assert_eq!(accept_next(&current, &next, NOW), Ok(()));
        let vejle = next.member(630).expect("Vejle");
        assert!(vejle.is_current(datetime!(2025-05-31 23:00 UTC)));
        assert!(!vejle.is_current(datetime!(2025-06-01 00:00 UTC)));
    }
}
