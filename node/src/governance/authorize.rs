//! The one authorisation decision every peer RPC makes: may the caller
//! behind this TLS certificate do this operation on this dataset under this
//! agreement, right now?
//!
//! It lives in one function, [`authorize`], so that every RPC applies the
//! same checks in the same order and a denial always says which check
//! failed and what a person can do about it. The function is pure: it reads
//! a [`GovernanceView`] (the accepted rosters and the agreements, which the
//! node keeps in memory behind a lock and rebuilds on import) and the time
//! it is given. Every [`Denial`] is meant to become `PERMISSION_DENIED`.
//!
//! The checks, in order: the agreement is known; its fellowship's roster is
//! known; this node is the agreement's provider; the caller's certificate
//! belongs to a roster member (and to the member it claims to be); that
//! membership is current; the agreement's signatures verify, every party
//! signed, and no signature is by a key outside the roster; the agreement is
//! inside its validity window; the caller is a consumer; the dataset is in
//! scope; the operation is allowed.

use std::collections::HashMap;

use time::{Date, OffsetDateTime};
use uuid::Uuid;

use super::agreement::{Agreement, Consumers, DatasetRef, Operation, Scope};
use super::body::{self, list};
use super::roster::{Party, Roster};
use crate::identity::Fingerprint;

/// What the node knows about governance: its own member code, the latest
/// accepted roster of each fellowship, and the agreements it holds.
///
/// Only put rosters here that passed [`super::accept_first`] or
/// [`super::accept_next`]; agreements are judged on every request.
#[derive(Debug, Clone)]
pub struct GovernanceView {
    own_code: u32,
    rosters: HashMap<String, Roster>,
    agreements: HashMap<Uuid, Agreement>,
}

impl GovernanceView {
    /// An empty view for the node of municipality `own_code`.
    pub fn new(own_code: u32) -> Self {
        GovernanceView {
            own_code,
            rosters: HashMap::new(),
            agreements: HashMap::new(),
        }
    }

    /// This node's municipality code.
    pub fn own_code(&self) -> u32 {
        self.own_code
    }

    /// Sets the accepted roster of its fellowship, returning the one it replaces.
    pub fn insert_roster(&mut self, roster: Roster) -> Option<Roster> {
        self.rosters.insert(roster.fellowship().to_string(), roster)
    }

    /// Adds or replaces an agreement (by id), returning the one it replaces.
    pub fn insert_agreement(&mut self, agreement: Agreement) -> Option<Agreement> {
        self.agreements.insert(agreement.id(), agreement)
    }

    /// The accepted roster of fellowship `fellowship`.
    pub fn roster(&self, fellowship: &str) -> Option<&Roster> {
        self.rosters.get(fellowship)
    }

    /// The agreement with id `id`.
    pub fn agreement(&self, id: Uuid) -> Option<&Agreement> {
        self.agreements.get(&id)
    }

    /// All accepted rosters.
    pub fn rosters(&self) -> impl Iterator<Item = &Roster> {
        self.rosters.values()
    }

    /// All agreements.
    pub fn agreements(&self) -> impl Iterator<Item = &Agreement> {
        self.agreements.values()
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
/// code must still enforce (excluded fields, group size, scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub agreement_id: Uuid,
    pub fellowship: String,
    /// The caller's municipality code, from the roster.
    pub caller_code: u32,
    pub operations: Vec<Operation>,
    /// Smallest group an aggregate may describe (when aggregate is allowed).
    pub min_group_size: Option<u32>,
    /// Fields that must never leave this node.
    pub excluded_fields: Vec<String>,
    /// What the agreement covers (to filter a catalog listing).
    pub scope: Scope,
    pub valid_until: OffsetDateTime,
}

/// Why a request was refused; each message says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error(
        "agreement {agreement} is not known to this node; check the id, or import the signed \
         agreement here"
    )]
    UnknownAgreement { agreement: Uuid },
    #[error(
        "agreement {agreement} belongs to fellowship `{fellowship}`, whose roster this node has \
         not imported; import that fellowship's roster first"
    )]
    UnknownFellowship { agreement: Uuid, fellowship: String },
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
        "the client certificate {presented} belongs to no member in roster serial {serial} of \
         `{fellowship}`; a new member or a rotated certificate needs a roster update from the \
         secretariat"
    )]
    UnknownCertificate {
        presented: Fingerprint,
        fellowship: String,
        serial: u64,
    },
    #[error(
        "the caller claims to be {member} but presented certificate {presented}; the roster of \
         `{fellowship}` expects {expected}. If the certificate was rotated, the secretariat must \
         publish a roster update with the new fingerprint"
    )]
    CertificateMismatch {
        member: Party,
        presented: Fingerprint,
        expected: Fingerprint,
        fellowship: String,
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
        "{member} left fellowship `{fellowship}` on {}; access to its shared data ended that \
         day, whatever agreements say", body::ymd(*.left)
    )]
    MembershipEnded {
        member: Party,
        fellowship: String,
        left: Date,
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
    #[error(
        "{caller} is not a consumer under agreement {agreement} (consumers: {consumers}); ask \
         the provider for an agreement that names you"
    )]
    NotConsumer {
        agreement: Uuid,
        caller: Party,
        consumers: String,
    },
    #[error("operation `{operation}` must name a dataset (agreement {agreement})")]
    DatasetRequired {
        agreement: Uuid,
        operation: Operation,
    },
    #[error(
        "dataset `{dataset}` (kind `{kind}`) is outside the scope of agreement {agreement} \
         (covers {covers})"
    )]
    OutsideScope {
        agreement: Uuid,
        dataset: String,
        kind: String,
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

/// Decides one peer request. See the module documentation for the order
/// of the checks; the first failing check is the denial.
pub fn authorize(
    ctx: &GovernanceView,
    request: &AccessRequest,
    now: OffsetDateTime,
) -> Result<Grant, Denial> {
    let id = request.agreement_id;
    let agreement = ctx
        .agreement(id)
        .ok_or(Denial::UnknownAgreement { agreement: id })?;
    let terms = agreement.body();
    let roster = ctx
        .roster(&terms.fellowship)
        .ok_or_else(|| Denial::UnknownFellowship {
            agreement: id,
            fellowship: terms.fellowship.clone(),
        })?;
    let fellowship = roster.fellowship().to_string();

    if terms.provider != ctx.own_code() {
        return Err(Denial::NotProvider {
            agreement: id,
            provider: roster.party(terms.provider),
            this_node: roster.party(ctx.own_code()),
        });
    }

    let presented = request.caller_fingerprint;
    let caller = match roster.member_by_fingerprint(&presented) {
        Some(member) => {
            if let Some(claimed) = request.claimed_code
                && claimed != member.code
            {
                return Err(Denial::ClaimMismatch {
                    claimed: roster.party(claimed),
                    actual: member.party(),
                    presented,
                    fellowship,
                });
            }
            member
        }
        None => {
            return Err(match request.claimed_code.and_then(|c| roster.member(c)) {
                Some(member) => Denial::CertificateMismatch {
                    member: member.party(),
                    presented,
                    expected: member.tls_fingerprint,
                    fellowship,
                },
                None => Denial::UnknownCertificate {
                    presented,
                    fellowship,
                    serial: roster.serial(),
                },
            });
        }
    };
    if let Some(left) = caller.left
        && !caller.is_current(now)
    {
        return Err(Denial::MembershipEnded {
            member: caller.party(),
            fellowship,
            left,
        });
    }

    let signatures = agreement.signature_status(roster);
    if !signatures.bad.is_empty() {
        return Err(Denial::BadAgreementSignature {
            agreement: id,
            signers: signatures.bad,
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
            keys: signatures.unknown_signers,
            fellowship,
            serial: roster.serial(),
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

    if !terms.has_consumer(caller.code) {
        let consumers = match &terms.consumers {
            Consumers::All => format!(
                "all current members except the provider {}",
                roster.party(terms.provider)
            ),
            Consumers::Named(codes) => {
                list(&codes.iter().map(|c| roster.party(*c)).collect::<Vec<_>>())
            }
        };
        return Err(Denial::NotConsumer {
            agreement: id,
            caller: caller.party(),
            consumers,
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
                kind: dataset.kind.clone(),
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
        operations: terms.operations.clone(),
        min_group_size: terms.min_group_size,
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
    use crate::governance::roster::DecisionRule;
    use crate::governance::roster::tests::{NOW, digit_roster, fingerprint};
    use time::macros::datetime;

    const GREVE: u32 = 253;
    const GULDBORGSUND: u32 = 376;
    const NAESTVED: u32 = 370;
    const VEJLE: u32 = 630;

    /// Greve's node, holding the DIGIT roster and the given agreements.
    fn greve_view(agreements: Vec<Agreement>) -> GovernanceView {
        let mut view = GovernanceView::new(GREVE);
        view.insert_roster(digit_roster(DecisionRule::Quorum(2)));
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
    fn unknown_agreement() {
        let view = greve_view(vec![fully_signed()]);
        let mut req = request(VEJLE, Operation::Aggregate);
        req.agreement_id = Uuid::from_u128(0x0194_0000_0000_7000_8000_0000_0000_0099);
        let denial = deny(&view, &req, NOW);
        assert!(
            matches!(denial, Denial::UnknownAgreement { .. }),
            "{denial}"
        );
        assert!(
            denial.to_string().contains("is not known to this node"),
            "{denial}"
        );
    }

    #[test]
    fn unknown_fellowship() {
        let mut terms = greve_air_quality();
        terms.fellowship = "sbsys".to_string();
        let view = greve_view(vec![signed_by(&terms, &[GREVE, GULDBORGSUND, VEJLE])]);
        let denial = deny(&view, &request(VEJLE, Operation::Aggregate), NOW);
        assert!(
            matches!(denial, Denial::UnknownFellowship { .. }),
            "{denial}"
        );
        assert!(
            denial
                .to_string()
                .contains("fellowship `sbsys`, whose roster"),
            "{denial}"
        );
    }

    #[test]
    fn not_provider() {
        let mut view = greve_view(vec![fully_signed()]);
        view.own_code = GULDBORGSUND;
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
    fn unknown_certificate() {
        let view = greve_view(vec![fully_signed()]);
        let mut req = request(VEJLE, Operation::Aggregate);
        req.caller_fingerprint = Fingerprint::of_der(b"some other certificate");
        req.claimed_code = None;
        let denial = deny(&view, &req, NOW);
        assert!(
            matches!(denial, Denial::UnknownCertificate { .. }),
            "{denial}"
        );
        // Claiming a code that is not a member changes nothing.
        req.claimed_code = Some(999);
        assert!(matches!(
            deny(&view, &req, NOW),
            Denial::UnknownCertificate { .. }
        ));
    }

    #[test]
    fn certificate_mismatch_names_expected_and_presented() {
        let view = greve_view(vec![fully_signed()]);
        let mut req = request(VEJLE, Operation::Aggregate);
        let rotated = Fingerprint::of_der(b"Vejle's new certificate");
        req.caller_fingerprint = rotated;
        let denial = deny(&view, &req, NOW);
        assert_eq!(
            denial,
            Denial::CertificateMismatch {
                member: Party {
                    code: VEJLE,
                    name: Some("Vejle Kommune".to_string())
                },
                presented: rotated,
                expected: fingerprint(VEJLE),
                fellowship: "digit".to_string(),
            }
        );
        let text = denial.to_string();
        assert!(text.contains(&rotated.to_string()), "{text}");
        assert!(text.contains(&fingerprint(VEJLE).to_string()), "{text}");
        assert!(text.contains("roster update"), "{text}");
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
    fn membership_ended_from_the_left_date() {
        let mut terms = greve_air_quality();
        terms.consumers = Consumers::All;
        terms.valid_from = datetime!(2024-01-01 00:00 UTC);
        let view = greve_view(vec![signed_by(&terms, &[GREVE])]);
        let req = request(NAESTVED, Operation::Aggregate);
        // The day before, Næstved is still a member and "all" includes it.
        assert!(authorize(&view, &req, datetime!(2024-12-31 23:59:59 UTC)).is_ok());
        let denial = deny(&view, &req, datetime!(2025-01-01 00:00 UTC));
        assert_eq!(
            denial.to_string(),
            "Næstved Kommune 370 left fellowship `digit` on 2025-01-01; access to its shared \
             data ended that day, whatever agreements say"
        );
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
    fn not_a_consumer() {
        let mut terms: AgreementBody = greve_air_quality();
        terms.consumers = Consumers::Named(vec![VEJLE]);
        let view = greve_view(vec![signed_by(&terms, &[GREVE, VEJLE])]);
        let denial = deny(&view, &request(GULDBORGSUND, Operation::Aggregate), NOW);
        assert_eq!(
            denial.to_string(),
            format!(
                "Guldborgsund Kommune 376 is not a consumer under agreement {AGREEMENT_ID} \
                 (consumers: Vejle Kommune 630); ask the provider for an agreement that names you"
            )
        );
        // Under "all", the provider itself is no consumer.
        terms.consumers = Consumers::All;
        let view = greve_view(vec![signed_by(&terms, &[GREVE])]);
        let denial = deny(&view, &request(GREVE, Operation::Aggregate), NOW);
        assert!(matches!(denial, Denial::NotConsumer { .. }), "{denial}");
    }

    #[test]
    fn dataset_required_and_outside_scope() {
        let view = greve_view(vec![fully_signed()]);
        let mut req = request(VEJLE, Operation::Aggregate);
        req.dataset = None;
        assert!(matches!(
            deny(&view, &req, NOW),
            Denial::DatasetRequired { .. }
        ));
        req.dataset = Some(DatasetRef {
            id: "greve-vandstand".to_string(),
            kind: "sensor".to_string(),
            keywords: vec!["vand".to_string()],
        });
        let denial = deny(&view, &req, NOW);
        assert_eq!(
            denial.to_string(),
            format!(
                "dataset `greve-vandstand` (kind `sensor`) is outside the scope of agreement \
                 {AGREEMENT_ID} (covers datasets greve-luftkvalitet; kinds pilot; keywords \
                 luftkvalitet)"
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
