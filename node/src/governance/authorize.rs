//! The one authorisation decision every peer RPC makes: may the caller
//! behind this TLS certificate do this operation on this dataset under this
//! agreement, right now?
//!
//! It lives in one function, [`authorize`], so that every RPC applies the
//! same checks in the same order and a denial always says which check
//! failed. The function is pure: it reads a [`GovernanceView`] (the
//! accepted rosters and the held agreements, whose signatures were checked
//! once when the view was built) and the time it is given.
//!
//! The checks, in order:
//! 1. the caller's certificate belongs to a member that is current (joined,
//!    not left) in some fellowship this node follows; otherwise the caller
//!    learns only that it is not a member;
//! 2. this node holds the agreement as its provider, and the caller is a
//!    current member of the agreement's fellowship and one of its consumers;
//!    otherwise the caller learns only that no such agreement names it (it
//!    cannot probe agreement ids, fellowships or memberships);
//! 3. the caller is the member it claims to be;
//! 4. the agreement's signatures verify, every party signed, none is by a key
//!    outside the roster, and this node's own signature is by the key this
//!    node actually holds (a roster cannot make someone else speak for it);
//! 5. the fellowship's roster is not stale under a `refuse` policy;
//! 6. the agreement is inside its validity window;
//! 7. the dataset is in scope (the same answer whether or not it exists);
//! 8. the operation is allowed.
//!
//! Every [`Denial`] has two texts: its `Display`, with everything the
//! operator of this node needs (logs, audit), and [`Denial::public`], what
//! the caller is told (PERMISSION_DENIED), which never reveals more than
//! the caller is entitled to know.

use std::collections::HashMap;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use time::{Date, OffsetDateTime};
use uuid::Uuid;

use super::agreement::{
    AggregateTerms, Agreement, Consumers, DatasetRef, Operation, Scope, SignatureStatus,
};
use super::body::{self, list};
use super::roster::{Member, Party, Roster, StalePolicy};
use crate::identity::{Fingerprint, signing_key_text};

/// How a held agreement is named: its provider and its id. Only the
/// provider can sign an agreement into existence, so nobody can squat an
/// id that another member's agreement uses, in any fellowship.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgreementKey {
    pub provider: u32,
    pub id: Uuid,
}

/// An agreement with its signatures judged against the fellowship's
/// current roster and this node's own key (judged once, when the roster or
/// the agreement changes, never per call).
#[derive(Debug, Clone)]
pub struct HeldAgreement {
    pub agreement: Agreement,
    pub signatures: SignatureStatus,
    /// This node is the provider, but the roster lists another signing key
    /// for it than the one it holds: its own consent cannot be shown.
    pub own_key_mismatch: bool,
}

/// What the node knows about governance: who it is (code and the signing
/// key it actually holds), the latest accepted roster of each fellowship,
/// and the agreements it holds.
///
/// Only put rosters here that passed [`super::accept_first`] or
/// [`super::accept_next`]. Documents are shared (`Arc`), so a copy of the
/// view (each import works on one) costs a pointer per document.
#[derive(Debug, Clone)]
pub struct GovernanceView {
    own_code: u32,
    own_key: VerifyingKey,
    rosters: HashMap<String, Arc<Roster>>,
    agreements: HashMap<AgreementKey, Arc<HeldAgreement>>,
}

impl GovernanceView {
    /// An empty view for the node of municipality `own_code` holding the
    /// signing key whose public half is `own_key`.
    pub fn new(own_code: u32, own_key: VerifyingKey) -> Self {
        GovernanceView {
            own_code,
            own_key,
            rosters: HashMap::new(),
            agreements: HashMap::new(),
        }
    }

    /// This node's municipality code.
    pub fn own_code(&self) -> u32 {
        self.own_code
    }

    /// The signing key this node holds.
    pub fn own_key(&self) -> &VerifyingKey {
        &self.own_key
    }

    /// Sets the accepted roster of its fellowship (re-judging the
    /// signatures of that fellowship's agreements), returning the one it
    /// replaces.
    pub fn insert_roster(&mut self, roster: Roster) -> Option<Arc<Roster>> {
        let fellowship = roster.fellowship().to_string();
        let replaced = self.rosters.insert(fellowship.clone(), Arc::new(roster));
        let keys: Vec<AgreementKey> = self
            .agreements
            .iter()
            .filter(|(_, held)| held.agreement.body().fellowship == fellowship)
            .map(|(key, _)| *key)
            .collect();
        for key in keys {
            if let Some(held) = self.agreements.remove(&key) {
                let judged = self.judge(held.agreement.clone());
                self.agreements.insert(key, Arc::new(judged));
            }
        }
        replaced
    }

    /// Adds or replaces an agreement.
    pub fn insert_agreement(&mut self, agreement: Agreement) {
        let key = key_of(&agreement);
        let held = self.judge(agreement);
        self.agreements.insert(key, Arc::new(held));
    }

    /// Judges `agreement`'s signatures against its fellowship's roster.
    fn judge(&self, agreement: Agreement) -> HeldAgreement {
        let terms = agreement.body();
        let (signatures, own_key_mismatch) = match self.rosters.get(&terms.fellowship) {
            Some(roster) => {
                let mut signatures = agreement.signature_status(roster);
                let mismatch = terms.provider == self.own_code
                    && roster
                        .member(self.own_code)
                        .is_some_and(|own| own.signing_key != self.own_key);
                if mismatch {
                    // The roster's key for this node signed, but this node
                    // does not hold that key: the signature is not its own.
                    signatures.signed_by.retain(|code| *code != self.own_code);
                    if !signatures.missing.contains(&self.own_code) {
                        signatures.missing.insert(0, self.own_code);
                    }
                }
                (signatures, mismatch)
            }
            None => (
                SignatureStatus {
                    missing: terms.required_signers(),
                    ..SignatureStatus::default()
                },
                false,
            ),
        };
        HeldAgreement {
            agreement,
            signatures,
            own_key_mismatch,
        }
    }

    /// The accepted roster of fellowship `fellowship`.
    pub fn roster(&self, fellowship: &str) -> Option<&Roster> {
        self.rosters.get(fellowship).map(|r| &**r)
    }

    /// The agreement `id` of `provider`, with its judged signatures.
    pub fn held(&self, provider: u32, id: Uuid) -> Option<&HeldAgreement> {
        self.agreements
            .get(&AgreementKey { provider, id })
            .map(|h| &**h)
    }

    /// The agreement `id` of `provider`.
    pub fn agreement(&self, provider: u32, id: Uuid) -> Option<&Agreement> {
        self.held(provider, id).map(|held| &held.agreement)
    }

    /// All accepted rosters.
    pub fn rosters(&self) -> impl Iterator<Item = &Roster> {
        self.rosters.values().map(|r| &**r)
    }

    /// All held agreements.
    pub fn agreements(&self) -> impl Iterator<Item = &Agreement> {
        self.agreements.values().map(|held| &held.agreement)
    }

    /// All held agreements with their judged signatures.
    pub fn held_agreements(&self) -> impl Iterator<Item = &HeldAgreement> {
        self.agreements.values().map(|h| &**h)
    }

    /// How many agreements `provider` has in `fellowship` here.
    pub fn agreements_of(&self, fellowship: &str, provider: u32) -> usize {
        self.agreements
            .values()
            .filter(|held| {
                let terms = held.agreement.body();
                terms.provider == provider && terms.fellowship == fellowship
            })
            .count()
    }

    /// The member (and its roster) whose certificate has `fingerprint` and
    /// that is current at `now`, in any fellowship.
    pub fn current_member(
        &self,
        fingerprint: &Fingerprint,
        now: OffsetDateTime,
    ) -> Option<(&Roster, &Member)> {
        self.rosters.values().find_map(|roster| {
            roster
                .member_by_fingerprint(fingerprint)
                .filter(|member| member.is_current(now))
                .map(|member| (&**roster, member))
        })
    }
}

/// What every aggregate-only agreement this node provides says about one
/// dataset, taken together: a consumer may hold several agreements on the
/// same data (or consumers may pool their answers), so each answer is held
/// to the finest grid, the largest minimum group and the per-sensor parts
/// of all of them, or the difference between answers under two agreements
/// would isolate what either alone withholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridPolicy {
    /// The greatest common divisor of the agreements' cells.
    pub cell: time::Duration,
    pub min_group: u32,
    /// Some agreement grants per-sensor aggregates of the dataset.
    pub per_sensor: bool,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

impl GovernanceView {
    /// The combined grid of the aggregate-only agreements this node
    /// provides that cover `dataset` and are signed and not expired at
    /// `now` (see [`GridPolicy`]).
    pub fn grid_policy(&self, dataset: &DatasetRef, now: OffsetDateTime) -> Option<GridPolicy> {
        let mut policy: Option<GridPolicy> = None;
        for held in self.held_agreements() {
            let terms = held.agreement.body();
            let aggregate_only =
                terms.allows(Operation::Aggregate) && !terms.allows(Operation::Read);
            if terms.provider != self.own_code
                || !aggregate_only
                || now >= terms.valid_until
                || !held.signatures.bad.is_empty()
                || !held.signatures.missing.is_empty()
                || !terms.scope.covers(dataset)
            {
                continue;
            }
            let cell_ms = terms.aggregate.cell.whole_milliseconds() as i64;
            let min_group = terms.min_group_size.unwrap_or(1);
            policy = Some(match policy {
                None => GridPolicy {
                    cell: terms.aggregate.cell,
                    min_group,
                    per_sensor: terms.aggregate.per_sensor,
                },
                Some(p) => GridPolicy {
                    cell: time::Duration::milliseconds(gcd(
                        p.cell.whole_milliseconds() as i64,
                        cell_ms,
                    )),
                    min_group: p.min_group.max(min_group),
                    per_sensor: p.per_sensor || terms.aggregate.per_sensor,
                },
            });
        }
        policy
    }
}

/// The key an agreement is held under.
pub fn key_of(agreement: &Agreement) -> AgreementKey {
    AgreementKey {
        provider: agreement.body().provider,
        id: agreement.id(),
    }
}

/// One peer request, as the authorisation check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    /// Fingerprint of the TLS client certificate the caller presented.
    pub caller_fingerprint: Fingerprint,
    /// The member code the caller says it is, if it says.
    pub claimed_code: Option<u32>,
    pub agreement_id: Uuid,
    pub operation: Operation,
    /// The dataset asked about; may be absent only for `Catalog`.
    pub dataset: Option<DatasetRef>,
}

/// What an allowed request may do: the agreement's terms that the serving
/// code must still enforce (excluded fields, group size, grid, scope).
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub agreement_id: Uuid,
    pub fellowship: String,
    /// The caller's municipality code, from the roster.
    pub caller_code: u32,
    /// The key the roster lists for the caller: its signed requests must
    /// verify with it.
    pub caller_key: VerifyingKey,
    pub operations: Vec<Operation>,
    /// Smallest group an aggregate may describe (when aggregate is allowed).
    pub min_group_size: Option<u32>,
    /// How aggregate-only answers are made.
    pub aggregate: AggregateTerms,
    /// Fields that must never leave this node.
    pub excluded_fields: Vec<String>,
    /// What the agreement covers (to filter a catalog listing).
    pub scope: Scope,
    pub valid_until: OffsetDateTime,
}

/// Why a request was refused. `Display` is the full reason, for this
/// node's operator; [`Denial::public`] is what the caller is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error(
        "the client certificate {presented} is not that of a current member of any fellowship \
         this node follows ({why})"
    )]
    NotAMember {
        presented: Fingerprint,
        /// Why, for this node's operator: unknown certificate, membership
        /// ended or not yet begun.
        why: String,
    },
    #[error("{caller} asked under agreement {agreement}, which {why}")]
    NoSuchAgreement {
        agreement: Uuid,
        caller: Party,
        /// Which of the hidden reasons it was, for this node's operator.
        why: String,
    },
    #[error(
        "agreement {agreement} has {provider} as provider, but this node is {this_node}; send \
         the request to the provider's node"
    )]
    NotProvider {
        agreement: Uuid,
        provider: Party,
        this_node: Party,
    },
    #[error(
        "the caller claims to be {claimed}, but its certificate {presented} is {actual}'s in \
         `{fellowship}`; fix the calling node's configured municipality code or certificate"
    )]
    ClaimMismatch {
        claimed: Party,
        actual: Party,
        presented: Fingerprint,
        fellowship: String,
    },
    #[error(
        "agreement {agreement} has a bad signature by {}; the file was changed after signing, \
         import the original", list(.signers)
    )]
    BadAgreementSignature {
        agreement: Uuid,
        signers: Vec<String>,
    },
    #[error(
        "agreement {agreement} is not in force: this node holds signing key {held}, but roster \
         serial {serial} of `{fellowship}` lists another key for it, so no signature on the \
         agreement is this node's own; check the roster (samvirke governance list) and the \
         node's signing key"
    )]
    OwnKeyMismatch {
        agreement: Uuid,
        held: String,
        fellowship: String,
        serial: u64,
    },
    #[error(
        "agreement {agreement} is not in force: missing signatures from {}; collect them and \
         import the signed file", list(.missing)
    )]
    NotFullySigned {
        agreement: Uuid,
        missing: Vec<Party>,
    },
    #[error(
        "agreement {agreement} carries a signature by {}, which is not in roster serial {serial} \
         of `{fellowship}` (a rotated-out key?); re-sign with the member's current key", list(.keys)
    )]
    UnknownSigner {
        agreement: Uuid,
        keys: Vec<String>,
        fellowship: String,
        serial: u64,
    },
    #[error(
        "the roster of `{fellowship}` held here (serial {serial}) was due for review on {}, and \
         the fellowship refuses data calls under a stale roster; this node must receive a newer \
         serial first", body::ymd(*.review_by)
    )]
    RosterStale {
        fellowship: String,
        serial: u64,
        review_by: Date,
    },
    #[error("agreement {agreement} is in force from {}; ask again then", body::show_instant(*.from))]
    NotYetValid {
        agreement: Uuid,
        from: OffsetDateTime,
    },
    #[error(
        "agreement {agreement} expired at {}; the parties must sign a renewed agreement",
        body::show_instant(*.until)
    )]
    Expired {
        agreement: Uuid,
        until: OffsetDateTime,
    },
    #[error("operation `{operation}` must name a dataset (agreement {agreement})")]
    DatasetRequired {
        agreement: Uuid,
        operation: Operation,
    },
    #[error(
        "dataset `{dataset}` is not available under agreement {agreement} (it covers {covers})"
    )]
    OutsideScope {
        agreement: Uuid,
        dataset: String,
        /// What the agreement covers, as text.
        covers: String,
    },
    #[error(
        "operation `{operation}` is not allowed by agreement {agreement}; allowed: {}",
        list(.allowed)
    )]
    OperationNotAllowed {
        agreement: Uuid,
        operation: Operation,
        allowed: Vec<Operation>,
    },
}

impl Denial {
    /// What the caller is told: the full reason where the caller is a party
    /// entitled to it, and nothing that tells an outsider, a former member
    /// or a non-party whether an agreement, a fellowship or a membership
    /// exists.
    pub fn public(&self) -> String {
        match self {
            Denial::NotAMember { presented, .. } => format!(
                "the client certificate {presented} is not that of a current member of any \
                 fellowship this node follows"
            ),
            Denial::NoSuchAgreement { agreement, .. } => format!(
                "agreement {agreement} is not known here, or does not name you as a consumer"
            ),
            Denial::OwnKeyMismatch { agreement, .. } => format!(
                "agreement {agreement} is not in force at its provider: the provider's node does \
                 not hold the signing key its roster entry lists"
            ),
            other => other.to_string(),
        }
    }

    /// Who the denial is about, as a key for limiting how many lines one
    /// caller can make this node log: the certificate before the caller is
    /// known, its member code after, the agreement once it is a party.
    pub fn caller_key(&self) -> String {
        match self {
            Denial::NotAMember { presented, .. } | Denial::ClaimMismatch { presented, .. } => {
                presented.to_string()
            }
            Denial::NoSuchAgreement { caller, .. } => format!("member {}", caller.code),
            Denial::NotProvider { agreement, .. }
            | Denial::BadAgreementSignature { agreement, .. }
            | Denial::OwnKeyMismatch { agreement, .. }
            | Denial::NotFullySigned { agreement, .. }
            | Denial::UnknownSigner { agreement, .. }
            | Denial::NotYetValid { agreement, .. }
            | Denial::Expired { agreement, .. }
            | Denial::DatasetRequired { agreement, .. }
            | Denial::OutsideScope { agreement, .. }
            | Denial::OperationNotAllowed { agreement, .. } => format!("agreement {agreement}"),
            Denial::RosterStale { fellowship, .. } => format!("fellowship {fellowship}"),
        }
    }
}

/// Why `fingerprint` is not a current member, for this node's operator.
fn why_not_a_member(
    view: &GovernanceView,
    fingerprint: &Fingerprint,
    now: OffsetDateTime,
) -> String {
    for roster in view.rosters() {
        if let Some(member) = roster.member_by_fingerprint(fingerprint) {
            return match member.left {
                Some(left) if now >= body::start_of(left) => format!(
                    "{} left `{}` on {}",
                    member.party(),
                    roster.fellowship(),
                    body::ymd(left)
                ),
                _ => format!(
                    "{} joins `{}` on {}",
                    member.party(),
                    roster.fellowship(),
                    body::ymd(member.joined)
                ),
            };
        }
    }
    "the certificate is in no roster held here; a renewed certificate needs a roster update"
        .to_string()
}

/// Decides one peer request. See the module documentation for the order
/// of the checks; the first failing check is the denial.
pub fn authorize(
    view: &GovernanceView,
    request: &AccessRequest,
    now: OffsetDateTime,
) -> Result<Grant, Denial> {
    let id = request.agreement_id;
    let presented = request.caller_fingerprint;
    let Some((_, anywhere)) = view.current_member(&presented, now) else {
        return Err(Denial::NotAMember {
            presented,
            why: why_not_a_member(view, &presented, now),
        });
    };
    let anywhere = anywhere.party();
    let hidden = |why: String| Denial::NoSuchAgreement {
        agreement: id,
        caller: anywhere.clone(),
        why,
    };

    let Some(held) = view.held(view.own_code(), id) else {
        // Held with another provider, by a party: point at the provider.
        if let Some(elsewhere) = view.held_agreements().find(|held| {
            held.agreement.id() == id
                && view
                    .roster(&held.agreement.body().fellowship)
                    .and_then(|roster| roster.member_by_fingerprint(&presented))
                    .is_some_and(|member| held.agreement.body().has_consumer(member.code))
        }) {
            let terms = elsewhere.agreement.body();
            let roster = view.roster(&terms.fellowship);
            let party = |code| {
                roster
                    .map(|r| r.party(code))
                    .unwrap_or(Party { code, name: None })
            };
            return Err(Denial::NotProvider {
                agreement: id,
                provider: party(terms.provider),
                this_node: party(view.own_code()),
            });
        }
        return Err(hidden(
            "is not held here with this node as provider".to_string(),
        ));
    };
    let agreement = &held.agreement;
    let terms = agreement.body();
    let Some(roster) = view.roster(&terms.fellowship) else {
        return Err(hidden(format!(
            "belongs to fellowship `{}`, whose roster is not held here",
            terms.fellowship
        )));
    };
    let fellowship = roster.fellowship().to_string();
    let Some(caller) = roster.member_by_fingerprint(&presented) else {
        return Err(hidden(format!(
            "is of `{fellowship}`, where the caller is no member"
        )));
    };
    if !caller.is_current(now) {
        return Err(hidden(format!(
            "is of `{fellowship}`, where {} is not a member now (joined {}{})",
            caller.party(),
            body::ymd(caller.joined),
            caller
                .left
                .map(|left| format!(", left {}", body::ymd(left)))
                .unwrap_or_default()
        )));
    }
    if !terms.has_consumer(caller.code) {
        let consumers = match &terms.consumers {
            Consumers::All => "all current members but the provider".to_string(),
            Consumers::Named(codes) => {
                list(&codes.iter().map(|c| roster.party(*c)).collect::<Vec<_>>())
            }
        };
        return Err(hidden(format!(
            "does not name it as a consumer (consumers: {consumers})"
        )));
    }
    if let Some(claimed) = request.claimed_code
        && claimed != caller.code
    {
        return Err(Denial::ClaimMismatch {
            claimed: roster.party(claimed),
            actual: caller.party(),
            presented,
            fellowship,
        });
    }

    let signatures = &held.signatures;
    if !signatures.bad.is_empty() {
        return Err(Denial::BadAgreementSignature {
            agreement: id,
            signers: signatures.bad.clone(),
        });
    }
    if held.own_key_mismatch {
        return Err(Denial::OwnKeyMismatch {
            agreement: id,
            held: signing_key_text(view.own_key()),
            fellowship,
            serial: roster.serial(),
        });
    }
    if !signatures.missing.is_empty() {
        return Err(Denial::NotFullySigned {
            agreement: id,
            missing: signatures
                .missing
                .iter()
                .map(|c| roster.party(*c))
                .collect(),
        });
    }
    if !signatures.unknown_signers.is_empty() {
        return Err(Denial::UnknownSigner {
            agreement: id,
            keys: signatures.unknown_signers.clone(),
            fellowship,
            serial: roster.serial(),
        });
    }
    if roster.is_stale(now)
        && roster.body().on_stale == StalePolicy::Refuse
        && let Some(review_by) = roster.body().review_by
    {
        return Err(Denial::RosterStale {
            fellowship,
            serial: roster.serial(),
            review_by,
        });
    }

    if now < terms.valid_from {
        return Err(Denial::NotYetValid {
            agreement: id,
            from: terms.valid_from,
        });
    }
    if now >= terms.valid_until {
        return Err(Denial::Expired {
            agreement: id,
            until: terms.valid_until,
        });
    }

    match &request.dataset {
        None if request.operation != Operation::Catalog => {
            return Err(Denial::DatasetRequired {
                agreement: id,
                operation: request.operation,
            });
        }
        Some(dataset) if !terms.scope.covers(dataset) => {
            return Err(Denial::OutsideScope {
                agreement: id,
                dataset: dataset.id.clone(),
                covers: terms.scope.to_string(),
            });
        }
        _ => {}
    }

    if !terms.allows(request.operation) {
        return Err(Denial::OperationNotAllowed {
            agreement: id,
            operation: request.operation,
            allowed: terms.operations.clone(),
        });
    }

    Ok(Grant {
        agreement_id: id,
        fellowship,
        caller_code: caller.code,
        caller_key: caller.signing_key,
        operations: terms.operations.clone(),
        min_group_size: terms.min_group_size,
        aggregate: terms.aggregate.clone(),
        excluded_fields: terms.excluded_fields.clone(),
        scope: terms.scope.clone(),
        valid_until: terms.valid_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::agreement::AgreementBody;
    use crate::governance::agreement::tests::{AGREEMENT_ID, greve_air_quality, signed_by};
    use crate::governance::document::tests::key;
    use crate::governance::roster::tests::{NOW, digit_roster, fingerprint, member_seed};
    use crate::governance::roster::{DecisionRule, RosterBody};
    use time::macros::{date, datetime};

    const GREVE: u32 = 253;
    const GULDBORGSUND: u32 = 376;
    const NAESTVED: u32 = 370;
    const VEJLE: u32 = 630;

    /// Greve's node (holding Greve's real key), with the DIGIT roster and
    /// the given agreements.
    fn greve_view(agreements: Vec<Agreement>) -> GovernanceView {
        view_of(GREVE, digit_roster(DecisionRule::Quorum(2)), agreements)
    }

    fn view_of(own: u32, roster: Roster, agreements: Vec<Agreement>) -> GovernanceView {
        let mut view = GovernanceView::new(own, key(member_seed(own)).verifying_key());
        view.insert_roster(roster);
        for agreement in agreements {
            view.insert_agreement(agreement);
        }
        view
    }

    fn air_quality_dataset() -> DatasetRef {
        DatasetRef {
            id: "greve-luftkvalitet".to_string(),
            kind: "sensor".to_string(),
            keywords: vec!["luftkvalitet".to_string()],
        }
    }

    fn request(caller: u32, operation: Operation) -> AccessRequest {
        AccessRequest {
            caller_fingerprint: fingerprint(caller),
            claimed_code: Some(caller),
            agreement_id: AGREEMENT_ID,
            operation,
            dataset: Some(air_quality_dataset()),
        }
    }

    fn fully_signed() -> Agreement {
        signed_by(&greve_air_quality(), &[GREVE, GULDBORGSUND, VEJLE])
    }

    #[test]
    fn denials_are_small_enough_to_return_by_value() {
        // Callers propagate `Result<_, Denial>`; above 128 bytes clippy's
        // `result_large_err` would flag every one of those functions.
        assert!(
            std::mem::size_of::<Denial>() <= 128,
            "{}",
            std::mem::size_of::<Denial>()
        );
    }

    fn deny(view: &GovernanceView, request: &AccessRequest, now: OffsetDateTime) -> Denial {
        authorize(view, request, now).expect_err("should be denied")
    }

    #[test]
    fn a_consumer_in_scope_is_granted_the_agreement_terms() {
        let view = greve_view(vec![fully_signed()]);
        let grant = authorize(&view, &request(VEJLE, Operation::Aggregate), NOW).expect("grant");
        assert_eq!(grant.agreement_id, AGREEMENT_ID);
        assert_eq!(grant.caller_code, VEJLE);
        assert_eq!(grant.fellowship, "digit");
        assert_eq!(
            grant.operations,
            vec![Operation::Catalog, Operation::Aggregate]
        );
        assert_eq!(grant.min_group_size, Some(5));
        assert_eq!(grant.aggregate, AggregateTerms::default());
        assert_eq!(
            grant.excluded_fields,
            vec!["cpr".to_string(), "address".to_string()]
        );
        // A catalog call needs no dataset; without a claimed code the
        // certificate alone identifies the caller.
        let mut catalog = request(GULDBORGSUND, Operation::Catalog);
        catalog.dataset = None;
        catalog.claimed_code = None;
        let grant = authorize(&view, &catalog, NOW).expect("catalog");
        assert_eq!(grant.caller_code, GULDBORGSUND);
    }

    #[test]
    fn outsiders_and_former_members_learn_only_that_they_are_not_members() {
        let mut terms = greve_air_quality();
        terms.consumers = Consumers::All;
        terms.valid_from = datetime!(2024-01-01 00:00 UTC);
        let view = greve_view(vec![signed_by(&terms, &[GREVE])]);
        let mut outsider = request(VEJLE, Operation::Aggregate);
        outsider.caller_fingerprint = Fingerprint::of_der(b"an outsider's certificate");
        // Claiming a member's code changes nothing, and reveals nothing.
        for claimed in [None, Some(VEJLE), Some(999)] {
            outsider.claimed_code = claimed;
            let denial = deny(&view, &outsider, NOW);
            assert!(matches!(denial, Denial::NotAMember { .. }), "{denial}");
            let public = denial.public();
            assert!(
                public.contains("is not that of a current member"),
                "{public}"
            );
            for secret in [
                "digit",
                "Vejle",
                &fingerprint(VEJLE).to_string(),
                &AGREEMENT_ID.to_string(),
            ] {
                assert!(!public.contains(secret), "`{secret}` leaked: {public}");
            }
        }
        // Næstved left DIGIT on 2025-01-01: the day before it is a consumer
        // under "all"; from that day it is told only that it is no member.
        let naestved = request(NAESTVED, Operation::Aggregate);
        assert!(authorize(&view, &naestved, datetime!(2024-12-31 23:59:59 UTC)).is_ok());
        let denial = deny(&view, &naestved, datetime!(2025-01-01 00:00 UTC));
        assert!(matches!(denial, Denial::NotAMember { .. }), "{denial}");
        assert!(
            denial.to_string().contains("left `digit` on 2025-01-01"),
            "{denial}"
        );
        assert!(!denial.public().contains("digit"), "{}", denial.public());
    }

    #[test]
    fn membership_starts_on_the_joined_date() {
        let mut roster = digit_roster(DecisionRule::Quorum(2)).body().clone();
        roster
            .members
            .iter_mut()
            .filter(|m| m.code == VEJLE)
            .for_each(|m| m.joined = date!(2027 - 01 - 01));
        let roster = roster.to_draft().expect("draft");
        let mut terms = greve_air_quality();
        terms.valid_until = datetime!(2028-01-01 00:00 UTC);
        let view = view_of(
            GREVE,
            roster,
            vec![signed_by(&terms, &[GREVE, GULDBORGSUND, VEJLE])],
        );
        let denial = deny(&view, &request(VEJLE, Operation::Aggregate), NOW);
        assert!(matches!(denial, Denial::NotAMember { .. }), "{denial}");
        assert!(
            denial.to_string().contains("joins `digit` on 2027-01-01"),
            "{denial}"
        );
        assert!(
            authorize(
                &view,
                &request(VEJLE, Operation::Aggregate),
                datetime!(2027-01-01 00:00 UTC)
            )
            .is_ok()
        );
    }

    #[test]
    fn unknown_agreements_and_agreements_that_do_not_name_the_caller_read_the_same() {
        let mut terms: AgreementBody = greve_air_quality();
        terms.consumers = Consumers::Named(vec![VEJLE]);
        let view = greve_view(vec![signed_by(&terms, &[GREVE, VEJLE])]);
        let not_named = deny(&view, &request(GULDBORGSUND, Operation::Aggregate), NOW);
        let mut unknown_request = request(GULDBORGSUND, Operation::Aggregate);
        unknown_request.agreement_id = Uuid::from_u128(0x0194_0000_0000_7000_8000_0000_0000_0099);
        let unknown = deny(&view, &unknown_request, NOW);
        assert!(
            matches!(not_named, Denial::NoSuchAgreement { .. }),
            "{not_named}"
        );
        assert!(
            matches!(unknown, Denial::NoSuchAgreement { .. }),
            "{unknown}"
        );
        assert_eq!(
            not_named.public().replace(&AGREEMENT_ID.to_string(), "ID"),
            unknown
                .public()
                .replace(&unknown_request.agreement_id.to_string(), "ID")
        );
        assert!(
            not_named
                .to_string()
                .contains("consumers: Vejle Kommune 630"),
            "{not_named}"
        );
        assert!(
            !not_named.public().contains("Vejle"),
            "{}",
            not_named.public()
        );
    }

    #[test]
    fn an_agreement_of_another_provider_points_a_party_at_the_provider() {
        let view = view_of(
            GULDBORGSUND,
            digit_roster(DecisionRule::Quorum(2)),
            vec![fully_signed()],
        );
        let denial = deny(&view, &request(VEJLE, Operation::Aggregate), NOW);
        assert_eq!(
            denial.to_string(),
            format!(
                "agreement {AGREEMENT_ID} has Greve Kommune 253 as provider, but this node is \
                 Guldborgsund Kommune 376; send the request to the provider's node"
            )
        );
    }

    #[test]
    fn claim_mismatch() {
        let view = greve_view(vec![fully_signed()]);
        let mut req = request(VEJLE, Operation::Aggregate);
        req.claimed_code = Some(GULDBORGSUND);
        let denial = deny(&view, &req, NOW);
        assert!(matches!(denial, Denial::ClaimMismatch { .. }), "{denial}");
    }

    #[test]
    fn bad_agreement_signature() {
        let agreement = fully_signed();
        let mut other = greve_air_quality();
        other.purpose = "Different terms".to_string();
        let mut document = agreement.document().clone();
        document.signatures[1] =
            signed_by(&other, &[GULDBORGSUND]).document().signatures[0].clone();
        let view = greve_view(vec![Agreement::from_document(document).expect("parse")]);
        let denial = deny(&view, &request(VEJLE, Operation::Aggregate), NOW);
        assert!(
            matches!(denial, Denial::BadAgreementSignature { .. }),
            "{denial}"
        );
    }

    #[test]
    fn not_fully_signed_names_who_is_missing() {
        let view = greve_view(vec![signed_by(&greve_air_quality(), &[GREVE, VEJLE])]);
        let denial = deny(&view, &request(VEJLE, Operation::Aggregate), NOW);
        assert_eq!(
            denial.to_string(),
            format!(
                "agreement {AGREEMENT_ID} is not in force: missing signatures from Guldborgsund \
                 Kommune 376; collect them and import the signed file"
            )
        );
    }

    #[test]
    fn signature_by_a_key_not_in_the_roster() {
        let mut agreement = fully_signed();
        agreement.sign(&key(77)).expect("outsider signs");
        let view = greve_view(vec![agreement]);
        let denial = deny(&view, &request(VEJLE, Operation::Aggregate), NOW);
        assert!(matches!(denial, Denial::UnknownSigner { .. }), "{denial}");
        assert!(
            denial
                .to_string()
                .contains("which is not in roster serial 1 of `digit`"),
            "{denial}"
        );
    }

    #[test]
    fn a_provider_signature_counts_only_with_the_key_the_node_holds() {
        // The roster (as a forged serial would) lists an attacker's key for
        // Greve, and the attacker "signed as provider" with it.
        let attacker = key(66);
        let mut roster: RosterBody = digit_roster(DecisionRule::Quorum(2)).body().clone();
        roster
            .members
            .iter_mut()
            .filter(|m| m.code == GREVE)
            .for_each(|m| m.signing_key = attacker.verifying_key());
        let roster = roster.to_draft().expect("draft");
        let mut agreement = greve_air_quality().to_draft().expect("draft");
        agreement.sign(&attacker).expect("attacker signs");
        for code in [GULDBORGSUND, VEJLE] {
            agreement.sign(&key(member_seed(code))).expect("sign");
        }
        let view = view_of(GREVE, roster, vec![agreement]);
        let denial = deny(&view, &request(VEJLE, Operation::Aggregate), NOW);
        assert!(matches!(denial, Denial::OwnKeyMismatch { .. }), "{denial}");
        assert!(
            denial.public().contains("not in force at its provider"),
            "{}",
            denial.public()
        );
    }

    #[test]
    fn a_stale_roster_refuses_data_calls_only_when_the_fellowship_said_so() {
        let mut body: RosterBody = digit_roster(DecisionRule::Quorum(2)).body().clone();
        body.review_by = Some(date!(2025 - 06 - 01));
        let later = datetime!(2025-07-01 12:00 UTC);
        let warn = view_of(GREVE, body.to_draft().expect("draft"), vec![fully_signed()]);
        assert!(authorize(&warn, &request(VEJLE, Operation::Aggregate), later).is_ok());
        body.on_stale = crate::governance::roster::StalePolicy::Refuse;
        let refuse = view_of(GREVE, body.to_draft().expect("draft"), vec![fully_signed()]);
        assert!(
            authorize(
                &refuse,
                &request(VEJLE, Operation::Aggregate),
                datetime!(2025-05-31 12:00 UTC)
            )
            .is_ok()
        );
        let denial = deny(&refuse, &request(VEJLE, Operation::Aggregate), later);
        assert!(matches!(denial, Denial::RosterStale { .. }), "{denial}");
        assert!(
            denial
                .to_string()
                .contains("was due for review on 2025-06-01"),
            "{denial}"
        );
    }

    #[test]
    fn not_yet_valid_and_expired() {
        let view = greve_view(vec![fully_signed()]);
        let req = request(VEJLE, Operation::Aggregate);
        let denial = deny(&view, &req, datetime!(2024-06-01 00:00 UTC));
        assert_eq!(
            denial.to_string(),
            format!(
                "agreement {AGREEMENT_ID} is in force from 2025-01-01T00:00:00Z; ask again then"
            )
        );
        let denial = deny(&view, &req, datetime!(2026-01-01 00:00 UTC));
        assert_eq!(
            denial.to_string(),
            format!(
                "agreement {AGREEMENT_ID} expired at 2026-01-01T00:00:00Z; the parties must sign \
                 a renewed agreement"
            )
        );
    }

    #[test]
    fn dataset_required_and_outside_scope_whether_or_not_it_exists() {
        let view = greve_view(vec![fully_signed()]);
        let mut req = request(VEJLE, Operation::Aggregate);
        req.dataset = None;
        assert!(matches!(
            deny(&view, &req, NOW),
            Denial::DatasetRequired { .. }
        ));
        let mut answers = Vec::new();
        // A published sensor dataset out of scope, and an id nobody publishes.
        for kind in ["sensor", ""] {
            req.dataset = Some(DatasetRef {
                id: "greve-vandstand".to_string(),
                kind: kind.to_string(),
                keywords: Vec::new(),
            });
            answers.push(deny(&view, &req, NOW).public());
        }
        assert_eq!(answers[0], answers[1]);
        assert_eq!(
            answers[0],
            format!(
                "dataset `greve-vandstand` is not available under agreement {AGREEMENT_ID} (it \
                 covers datasets greve-luftkvalitet; kinds pilot; keywords luftkvalitet)"
            )
        );
    }

    #[test]
    fn operation_not_allowed_names_the_allowed_ones() {
        let view = greve_view(vec![fully_signed()]);
        let denial = deny(&view, &request(VEJLE, Operation::Read), NOW);
        assert_eq!(
            denial.to_string(),
            format!(
                "operation `read` is not allowed by agreement {AGREEMENT_ID}; allowed: catalog, \
                 aggregate"
            )
        );
    }

    #[test]
    fn a_rotated_signing_key_requires_re_signing() {
        // Vejle rotates its signing key in serial 2; its signature on the
        // agreement was made with the old key and no longer counts.
        let first = digit_roster(DecisionRule::Secretariat);
        let mut next = first.next_draft(datetime!(2025-02-20 09:00 UTC));
        next.update_member(
            VEJLE,
            crate::governance::roster::MemberUpdate {
                signing_key: Some(key(202).verifying_key()),
                ..Default::default()
            },
        )
        .expect("rotate");
        let mut second = next.to_draft().expect("draft");
        second
            .sign(&key(crate::governance::roster::tests::SECRETARIAT_SEED))
            .expect("sign");
        crate::governance::accept_next(&first, &second, NOW).expect("accept");
        let mut view = greve_view(vec![fully_signed()]);
        view.insert_roster(second);
        let denial = deny(&view, &request(VEJLE, Operation::Aggregate), NOW);
        assert!(matches!(denial, Denial::NotFullySigned { .. }), "{denial}");
    }
}
