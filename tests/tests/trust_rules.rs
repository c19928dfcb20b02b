//! The trust rules, attacked end to end: real nodes (devnet, real sled
//! stores, real mutual TLS on loopback) on one manual clock, called through
//! their real APIs the way a hostile partner, an outsider or a local token
//! with too few roles would call them. Every attack is paired with the same
//! call by someone entitled to it (or the same document through the right
//! door), so each refusal is shown to come from the rule, not from a broken
//! document or a dead node.
//!
//! Covered:
//! - `Peer/SyncGovernance` refused (PERMISSION_DENIED) to an outsider (a
//!   node of the same CA outside the roster); a former member is only told
//!   it left (never an agreement, never a later serial); nothing either
//!   offered is imported;
//! - a member offering, through `SyncGovernance`, a roster serial and an
//!   agreement of a fellowship it is not in (but the server follows):
//!   nothing imported;
//! - forged documents offered by a member through `SyncGovernance` (a
//!   broken signature, a provider "signature" by a key outside the roster,
//!   a roster serial not signed as the rule demands): none imported, while
//!   a valid agreement in the same page is;
//! - a member offering the first roster of a fellowship the server does not
//!   follow (pinning a trust anchor): not imported;
//! - `Local/ImportAgreement` refusals: no provider signature (naming the
//!   provider), a signer that is a member but no party, the same id with
//!   other terms, an excluded field naming no field of a covered dataset;
//! - `Local/ImportRoster` and `Local/ImportAgreement` refused to `read` and
//!   `ingest` tokens, nothing imported;
//! - `joined` enforced: a member whose membership starts in the future is
//!   refused (`CheckAccess`, raw `QueryReadings`) until that instant;
//! - outsiders and former members learn only that they are not members
//!   (`CheckAccess`, `Hello`): no fellowship, member, agreement, key or
//!   other fingerprint in the message, and the same bytes for an agreement
//!   id that exists and one that does not; a member's `Hello` names the
//!   node;
//! - no existence oracle: a dataset published outside the agreement's scope
//!   and an id nobody published get the same denial (`CheckAccess`,
//!   `QueryReadings`, `ListPilots`);
//! - agreements reach only their parties through anti-entropy;
//! - an `ingest` token cannot widen a catalog entry (personal flag,
//!   classification, keywords), may make other changes; `admin` may widen;
//! - disclosure on the peer data path: withheld `location` (readings
//!   without it, area filters refused), excluded names in other case or
//!   dotted form, nothing disclosed, record filters on withheld fields, the
//!   same answer for a withheld and an unknown measure, aggregates of more
//!   than 1,000,000 buckets, `sensor_id` pseudonyms.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use samvirke_node::data::record_fixtures::{fixture_pilots, fixture_procurements};
use samvirke_node::data::{Reading, generate, sensor_dataset};
use samvirke_node::governance::files::IdentityCard;
use samvirke_node::governance::{
    Agreement, AgreementBody, Consumers, DecisionRule, DocumentType, LegalBasis, Operation, Roster,
    RosterBody, Scope,
};
use samvirke_node::identity::{generate_signing_key, signing_key_text};
use samvirke_node::pki::DevCa;
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_proto::v1::CheckAccessRequest;
use samvirke_proto::v1::reading_query::Area;
use samvirke_tests::{
    DATASET, FELLOWSHIP, GovernanceFixture, StartedNode, TokenLocalClient, assert_denied,
    assert_status, eventually, hello_request, ingest, ingest_batches, local_client, local_query,
    peer_query, start_node,
};
use time::OffsetDateTime;
use time::macros::{date, datetime};
use tonic::Code;

const GREVE: u32 = 253;
const HOLBAEK: u32 = 316;
const ROSKILDE: u32 = 265;
const NAESTVED: u32 = 370;
const AARHUS: u32 = 751;
const VEJLE: u32 = 630;

/// "Now" in the governance tests: inside the default agreement window.
const GOV_NOW: OffsetDateTime = datetime!(2025-02-01 09:00 UTC);

/// "Now" in the data tests: a week after the readings.
const DATA_NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
/// The air-quality readings span [DATA_FROM, DATA_UNTIL).
const DATA_FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const DATA_UNTIL: OffsetDateTime = datetime!(2026-03-02 00:00 UTC);
const AIR_SENSORS: u32 = 12;
const SEED: u64 = 0x7472_7573;

const AIR: &str = "aarhus-air-quality";
const NOISE: &str = "aarhus-noise";
const PILOTS: &str = "aarhus-pilots";
const PROCUREMENTS: &str = "aarhus-procurements";
/// An id nobody publishes.
const NOWHERE: &str = "aarhus-nowhere";

/// A second fellowship some tests need next to DIGIT.
const OTHER_FELLOWSHIP: &str = "fdd";

// ---- Governance helpers ---------------------------------------------------------

/// The fingerprint of the TLS certificate of the node of `code`, as text.
fn fingerprint(fx: &GovernanceFixture, code: u32) -> String {
    fx.node(code).running.identity.tls.fingerprint.to_string()
}

/// The signing key of the node of `code`, as text.
fn key_text(fx: &GovernanceFixture, code: u32) -> String {
    signing_key_text(&fx.key(code).verifying_key())
}

/// A `SyncGovernance` page offering these files, with no summary.
fn offer(rosters: Vec<Vec<u8>>, agreements: Vec<Vec<u8>>) -> pb::SyncGovernanceRequest {
    let documents = |files: Vec<Vec<u8>>| {
        files
            .into_iter()
            .map(|content| pb::SignedDocumentBytes { content })
            .collect()
    };
    pb::SyncGovernanceRequest {
        summary: None,
        rosters: documents(rosters),
        agreements: documents(agreements),
        after: String::new(),
        until: String::new(),
    }
}

/// Greve, Holbæk, Roskilde and Næstved; the DIGIT roster (quorum:1) lists
/// the first three, Roskilde having left on 2025-01-01, and is pinned on
/// all four nodes (Næstved knows the roster, but is in none).
async fn digit_with_a_former_member_and_an_outsider() -> (GovernanceFixture, Roster) {
    let fx = GovernanceFixture::start(&[GREVE, HOLBAEK, ROSKILDE, NAESTVED], GOV_NOW).await;
    let mut members = fx.members(&[GREVE, HOLBAEK, ROSKILDE]);
    members[2].left = Some(date!(2025 - 01 - 01));
    let roster = fx.sign_roster(
        &fx.first_roster(DecisionRule::Quorum(1), members),
        &[&fx.secretariat],
    );
    fx.import_everywhere(&roster).await;
    (fx, roster)
}

/// Greve, Holbæk and Roskilde, all in DIGIT (quorum:1), pinned everywhere.
async fn three_members() -> (GovernanceFixture, Roster) {
    let fx = GovernanceFixture::start(&[GREVE, HOLBAEK, ROSKILDE], GOV_NOW).await;
    let serial_1 = fx.anchor(DecisionRule::Quorum(1), &[GREVE, HOLBAEK, ROSKILDE]);
    fx.import_everywhere(&serial_1).await;
    (fx, serial_1)
}

/// Serial 1 of [`OTHER_FELLOWSHIP`] with the members `codes`, decided by
/// `secretariat` alone and signed by it.
fn other_roster(fx: &GovernanceFixture, secretariat: &SigningKey, codes: &[u32]) -> Roster {
    let body = RosterBody::first(
        OTHER_FELLOWSHIP,
        "Faellesskab for Dynamiske Data",
        secretariat.verifying_key(),
        DecisionRule::Secretariat,
        GOV_NOW,
        fx.members(codes),
    );
    fx.sign_roster(&body, &[secretariat])
}

/// `file` (a signed document) with one digit of its last signature value
/// changed: it still parses, but that signature no longer verifies.
fn with_last_signature_broken(file: &[u8]) -> Vec<u8> {
    let mut damaged = file.to_vec();
    // The last line: `sig ed25519:<64 hex key> <128 hex signature>\n`.
    let end = damaged.len() - 1;
    let position = (end - 128..end)
        .find(|&i| damaged[i].is_ascii_digit())
        .expect("a signature in hex has a digit");
    damaged[position] ^= 0x01;
    damaged
}

// ---- 1. SyncGovernance is for members only ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_cannot_sync_governance_and_former_members_only_learn_they_left() {
    let (fx, serial_1) = digit_with_a_former_member_and_an_outsider().await;
    // What the callers offer is good: a serial 2 signed as quorum:1
    // demands, and an agreement Greve is a party to, fully signed.
    let serial_2 = fx.sign_roster(
        &fx.next_roster(&serial_1, |body| body.name = "DIGIT".to_string()),
        &[&fx.secretariat, fx.key(HOLBAEK)],
    );
    let agreement = fx.agreement(
        &fx.terms(HOLBAEK, Consumers::Named(vec![GREVE])),
        &[HOLBAEK, GREVE],
    );
    let page = || offer(vec![serial_2.to_bytes()], vec![agreement.to_bytes()]);
    let before = fx.list(GREVE).await;

    // The outsider is refused outright.
    let refusal = format!(
        "the client certificate {} is not that of a current member",
        fingerprint(&fx, NAESTVED)
    );
    let mut client = fx.peer(NAESTVED, GREVE).await;
    assert_denied(client.sync_governance(page()).await, &[&refusal]);
    // An empty page (asking what there is to learn) is refused as well.
    assert_denied(
        client
            .sync_governance(pb::SyncGovernanceRequest::default())
            .await,
        &[&refusal],
    );
    assert_eq!(
        fx.list(GREVE).await,
        before,
        "the outsider made Greve import"
    );

    // The former member is told it left (the serial it holds says so
    // already: nothing to send), learns no agreement, and what it offers
    // is not looked at.
    let mut former = fx.peer(ROSKILDE, GREVE).await;
    let mut with_heads = page();
    with_heads.summary = Some(pb::GovernanceSummary {
        rosters: vec![pb::RosterHead {
            fellowship: "digit".to_string(),
            serial: 1,
            digest: serial_1.digest().to_string(),
        }],
        agreements: Vec::new(),
    });
    let answer = former
        .sync_governance(with_heads.clone())
        .await
        .expect("a former member is answered")
        .into_inner();
    assert!(answer.rosters.is_empty() && answer.agreements.is_empty());
    assert!(!answer.more);
    assert_eq!(
        fx.list(GREVE).await,
        before,
        "the former member made Greve import"
    );

    // The same page from a current member is answered and imported: the
    // documents were good, only the callers were not entitled.
    fx.peer(HOLBAEK, GREVE)
        .await
        .sync_governance(page())
        .await
        .expect("a current member may sync");
    let listed = fx.list(GREVE).await;
    assert_eq!(listed.rosters[0].serial, 2);
    assert!(
        listed
            .agreements
            .iter()
            .any(|a| a.id == agreement.id().to_string())
    );

    // Serial 2 came later; the former member still learns nothing of it
    // (it already holds the serial that says it left) nor of agreements.
    let answer = former
        .sync_governance(with_heads)
        .await
        .expect("answered")
        .into_inner();
    assert!(answer.rosters.is_empty() && answer.agreements.is_empty());

    // Roskilde was a member until the start of its leaving date.
    fx.set_now(datetime!(2024-12-31 23:59:59 UTC));
    fx.peer(ROSKILDE, GREVE)
        .await
        .sync_governance(pb::SyncGovernanceRequest::default())
        .await
        .expect("Roskilde may sync the second before it leaves");
    fx.shutdown().await;
}

// ---- 2. Offers of a fellowship the partner is not in ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_offer_documents_of_a_fellowship_it_is_not_in() {
    let fx = GovernanceFixture::start(&[GREVE, HOLBAEK, ROSKILDE], GOV_NOW).await;
    // DIGIT: Greve and Holbæk.
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[GREVE, HOLBAEK]))
        .await;
    // FDD: Greve and Roskilde, pinned at both; Holbæk is not in it.
    let fdd_secretariat = generate_signing_key().expect("FDD secretariat key");
    let fdd_1 = other_roster(&fx, &fdd_secretariat, &[GREVE, ROSKILDE]);
    for code in [GREVE, ROSKILDE] {
        fx.import_roster(code, &fdd_1.to_bytes(), true)
            .await
            .expect("pin FDD");
    }
    // Valid FDD documents: serial 2 signed by FDD's secretariat (its rule),
    // and an agreement Roskilde -> Greve signed by both.
    let mut next = fdd_1.next_draft(GOV_NOW);
    next.name = "FDD (renamed by Holbaek)".to_string();
    let fdd_2 = fx.sign_roster(&next, &[&fdd_secretariat]);
    let mut terms = fx.terms(ROSKILDE, Consumers::Named(vec![GREVE]));
    terms.fellowship = OTHER_FELLOWSHIP.to_string();
    let fdd_agreement = fx.agreement(&terms, &[ROSKILDE, GREVE]);
    let before = fx.list(GREVE).await;
    assert_eq!(before.rosters.len(), 2);

    // Holbæk, a DIGIT member, offers them to Greve.
    let answer = fx
        .peer(HOLBAEK, GREVE)
        .await
        .sync_governance(offer(
            vec![fdd_2.to_bytes()],
            vec![fdd_agreement.to_bytes()],
        ))
        .await
        .expect("Holbæk is a member of DIGIT: its page is answered")
        .into_inner();
    assert_eq!(
        fx.list(GREVE).await,
        before,
        "Greve imported FDD documents from a partner outside FDD"
    );
    // Nor does the answer tell Holbæk anything of FDD.
    let summary = answer.summary.expect("a summary");
    assert!(
        summary
            .rosters
            .iter()
            .all(|r| r.fellowship != OTHER_FELLOWSHIP),
        "{summary:?}"
    );
    for file in &answer.rosters {
        let roster = Roster::parse(&file.content).expect("a roster");
        assert_ne!(roster.fellowship(), OTHER_FELLOWSHIP);
    }

    // From the operator, the same files are accepted: only the sender was
    // wrong.
    let accepted = fx
        .import_roster(GREVE, &fdd_2.to_bytes(), false)
        .await
        .expect("FDD serial 2 through the local API");
    assert!(accepted.changed);
    fx.import_agreement(GREVE, &fdd_agreement.to_bytes())
        .await
        .expect("the FDD agreement through the local API");
    fx.shutdown().await;
}

// ---- 3. Forged documents through sync ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_documents_offered_by_a_member_are_not_imported() {
    let (fx, serial_1) = three_members().await;

    // An agreement Holbæk -> Greve whose second signature (Greve's) is
    // broken: the file still parses, the signature does not verify.
    let signed = fx.agreement(
        &fx.terms(HOLBAEK, Consumers::Named(vec![GREVE])),
        &[HOLBAEK, GREVE],
    );
    let broken = with_last_signature_broken(&signed.to_bytes());
    let parsed = Agreement::parse(&broken).expect("the damaged file still parses");
    let checks = parsed.document().check_signatures(DocumentType::Agreement);
    assert_eq!(
        checks.iter().map(|c| c.valid).collect::<Vec<_>>(),
        [true, false]
    );

    // An agreement Roskilde -> Greve "signed by Roskilde" with a key the
    // roster does not list (Greve's own signature is genuine).
    let impostor = generate_signing_key().expect("an impostor key");
    let roskilde_terms = fx.terms(ROSKILDE, Consumers::Named(vec![GREVE]));
    let impersonated = fx.sign_agreement(&roskilde_terms, &[&impostor, fx.key(GREVE)]);

    // Serial 2 signed by a member but not the secretariat, and by the
    // secretariat but no member: quorum:1 needs both.
    let next = fx.next_roster(&serial_1, |body| body.name = "DIGIT (forged)".to_string());
    let members_only = fx.sign_roster(&next, &[fx.key(HOLBAEK), fx.key(ROSKILDE)]);
    let secretariat_only = fx.sign_roster(&next, &[&fx.secretariat]);

    // A valid agreement in the same page: the channel itself works.
    let genuine = fx.agreement(
        &fx.terms(HOLBAEK, Consumers::Named(vec![GREVE])),
        &[HOLBAEK, GREVE],
    );

    fx.peer(HOLBAEK, GREVE)
        .await
        .sync_governance(offer(
            vec![members_only.to_bytes(), secretariat_only.to_bytes()],
            vec![broken, impersonated.to_bytes(), genuine.to_bytes()],
        ))
        .await
        .expect("a member's page is answered");

    let listed = fx.list(GREVE).await;
    assert_eq!(listed.rosters.len(), 1);
    assert_eq!(
        listed.rosters[0].serial, 1,
        "a forged serial 2 was accepted"
    );
    assert_eq!(listed.rosters[0].digest, serial_1.digest().to_string());
    let ids: Vec<&str> = listed.agreements.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(
        ids,
        [genuine.id().to_string()],
        "only the genuine agreement may be imported (broken {}, impersonated {})",
        signed.id(),
        impersonated.id()
    );
    assert_eq!(listed.agreements[0].status, "active");

    // The undamaged, rightly signed versions are accepted: the refusals
    // were about the forgeries.
    fx.import_agreement(GREVE, &signed.to_bytes())
        .await
        .expect("the undamaged agreement");
    let rightly = fx.agreement(&roskilde_terms, &[ROSKILDE, GREVE]);
    fx.import_agreement(GREVE, &rightly.to_bytes())
        .await
        .expect("signed by Roskilde's roster key");
    fx.import_roster(
        GREVE,
        &fx.sign_roster(&next, &[&fx.secretariat, fx.key(HOLBAEK)])
            .to_bytes(),
        false,
    )
    .await
    .expect("serial 2 signed as quorum:1 demands");
    fx.shutdown().await;
}

// ---- 4. No trust anchor from a partner ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_pin_a_trust_anchor() {
    let fx = GovernanceFixture::start(&[GREVE, HOLBAEK], GOV_NOW).await;
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[GREVE, HOLBAEK]))
        .await;
    // Serial 1 of FDD listing Greve and Holbæk, validly signed by its own
    // secretariat (whoever holds that key), and an FDD agreement naming
    // Greve, fully signed.
    let fdd_secretariat = generate_signing_key().expect("FDD secretariat key");
    let fdd_1 = other_roster(&fx, &fdd_secretariat, &[GREVE, HOLBAEK]);
    let mut terms = fx.terms(HOLBAEK, Consumers::Named(vec![GREVE]));
    terms.fellowship = OTHER_FELLOWSHIP.to_string();
    let fdd_agreement = fx.agreement(&terms, &[HOLBAEK, GREVE]);
    let before = fx.list(GREVE).await;

    fx.peer(HOLBAEK, GREVE)
        .await
        .sync_governance(offer(
            vec![fdd_1.to_bytes()],
            vec![fdd_agreement.to_bytes()],
        ))
        .await
        .expect("a member's page is answered");
    let listed = fx.list(GREVE).await;
    assert_eq!(listed, before);
    let fellowships: Vec<&str> = listed
        .rosters
        .iter()
        .map(|r| r.fellowship.as_str())
        .collect();
    assert_eq!(fellowships, [FELLOWSHIP], "a partner pinned a trust anchor");

    // Only the operator pins: the same file with --trust-anchor is accepted.
    fx.import_roster(GREVE, &fdd_1.to_bytes(), true)
        .await
        .expect("the operator pins FDD");
    fx.shutdown().await;
}

// ---- 5. Local/ImportAgreement refusals -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agreement_the_provider_has_not_signed_is_refused_naming_the_provider() {
    let (fx, _) = three_members().await;
    let terms = fx.terms(GREVE, Consumers::Named(vec![HOLBAEK]));
    let consumer_only = fx.agreement(&terms, &[HOLBAEK]);
    assert_status(
        fx.import_agreement(HOLBAEK, &consumer_only.to_bytes())
            .await,
        &[Code::FailedPrecondition],
        &[
            &format!("agreement {} rejected", consumer_only.id()),
            "its provider (Greve Kommune 253) has not signed it",
        ],
    );
    // For all members, signed by two consumers but not the provider.
    let for_all = fx.agreement(&fx.terms(GREVE, Consumers::All), &[HOLBAEK, ROSKILDE]);
    assert_status(
        fx.import_agreement(ROSKILDE, &for_all.to_bytes()).await,
        &[Code::FailedPrecondition],
        &["its provider (Greve Kommune 253) has not signed it"],
    );
    for code in [HOLBAEK, ROSKILDE] {
        assert!(fx.list(code).await.agreements.is_empty(), "node {code}");
    }

    // With the provider's signature it is accepted.
    let info = fx
        .import_agreement(HOLBAEK, &fx.agreement(&terms, &[GREVE, HOLBAEK]).to_bytes())
        .await
        .expect("the provider's copy")
        .agreement
        .expect("agreement info");
    assert_eq!(info.status, "active", "{info:?}");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_by_a_member_that_is_no_party_is_refused() {
    let (fx, _) = three_members().await;
    let terms = fx.terms(GREVE, Consumers::Named(vec![HOLBAEK]));
    // Roskilde is a current member, but neither provider nor consumer.
    let with_stranger = fx.agreement(&terms, &[GREVE, HOLBAEK, ROSKILDE]);
    for code in [GREVE, HOLBAEK] {
        assert_status(
            fx.import_agreement(code, &with_stranger.to_bytes()).await,
            &[Code::FailedPrecondition],
            &[
                &format!(
                    "signature by {}, which is not the current key of the provider or a consumer",
                    key_text(&fx, ROSKILDE)
                ),
                &format!("in the roster of `{FELLOWSHIP}`"),
            ],
        );
        assert!(fx.list(code).await.agreements.is_empty(), "node {code}");
    }
    fx.import_agreement(GREVE, &fx.agreement(&terms, &[GREVE, HOLBAEK]).to_bytes())
        .await
        .expect("signed by the parties only");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_agreement_id_with_other_terms_is_a_conflict() {
    let (fx, _) = three_members().await;
    let terms = fx.terms(GREVE, Consumers::Named(vec![HOLBAEK]));
    let original = fx.agreement(&terms, &[GREVE, HOLBAEK]);
    fx.import_agreement(GREVE, &original.to_bytes())
        .await
        .expect("the original");
    // The same provider and id, wider terms, signed by both parties.
    let mut wider = terms.clone();
    wider.purpose = "Anything at all".to_string();
    wider.operations = vec![Operation::Catalog, Operation::Read];
    wider.valid_until = datetime!(2030-01-01 00:00 UTC);
    let rival = fx.agreement(&wider, &[GREVE, HOLBAEK]);
    assert_eq!(rival.id(), original.id());
    assert_ne!(rival.digest(), original.digest());
    assert_status(
        fx.import_agreement(GREVE, &rival.to_bytes()).await,
        &[Code::FailedPrecondition],
        &[
            &format!("agreement {} rejected", original.id()),
            "same provider with the same id and different terms",
        ],
    );
    // Offered by the consumer through sync, the rival is not taken either.
    fx.peer(HOLBAEK, GREVE)
        .await
        .sync_governance(offer(Vec::new(), vec![rival.to_bytes()]))
        .await
        .expect("a member's page is answered");
    let listed = fx.list(GREVE).await.agreements;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].purpose, terms.purpose);
    assert_eq!(listed[0].valid_until, "2026-01-01T00:00:00Z");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_field_must_name_a_field_of_a_covered_dataset() {
    let (fx, _) = three_members().await;
    let dataset = wire::dataset_to_proto(
        &sensor_dataset("air-quality", GREVE).expect("Greve's air-quality dataset"),
    );
    let mut terms = fx.terms(GREVE, Consumers::Named(vec![HOLBAEK]));
    terms.scope.datasets = vec![dataset.id.clone()];

    // Before the dataset is published, even a right name names nothing.
    terms.excluded_fields = vec!["no2".to_string()];
    assert_status(
        fx.import_agreement(GREVE, &fx.agreement(&terms, &[GREVE, HOLBAEK]).to_bytes())
            .await,
        &[Code::FailedPrecondition],
        &["excluded field `no2` names no field", "none published yet"],
    );
    fx.admin(GREVE)
        .await
        .publish_dataset(dataset.clone())
        .await
        .expect("publish the dataset");

    // A misspelt name (the dataset has no `cprnr`) would withhold nothing.
    let mut misspelt = terms.clone();
    misspelt.id = AgreementBody::new_id();
    misspelt.excluded_fields = vec!["no2".to_string(), "cprnr".to_string()];
    assert_status(
        fx.import_agreement(
            GREVE,
            &fx.agreement(&misspelt, &[GREVE, HOLBAEK]).to_bytes(),
        )
        .await,
        &[Code::FailedPrecondition],
        &[
            "excluded field `cprnr` names no field of the datasets it covers on this node",
            &dataset.id,
        ],
    );
    assert!(fx.list(GREVE).await.agreements.is_empty());

    let mut right = terms.clone();
    right.id = AgreementBody::new_id();
    let info = fx
        .import_agreement(GREVE, &fx.agreement(&right, &[GREVE, HOLBAEK]).to_bytes())
        .await
        .expect("`no2` is a field of the covered dataset")
        .agreement
        .expect("agreement info");
    assert_eq!(info.status, "active", "{info:?}");
    fx.shutdown().await;
}

// ---- 6. Governance imports need the admin role ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_ingest_tokens_cannot_import_rosters_or_agreements() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("Test CA").expect("CA");
    let node: StartedNode = start_node(
        &dir.path().join("751"),
        &ca,
        AARHUS,
        &[("dashboard", &["read"]), ("sensors", &["ingest"])],
    )
    .await;
    let endpoint = node.running.local_endpoint();
    let mut admin = local_client(&endpoint, Some(&node.admin_token)).await;
    let limited = [
        ("dashboard", node.extra_tokens[0].clone()),
        ("sensors", node.extra_tokens[1].clone()),
    ];

    // The node alone in DIGIT, decided by a secretariat; an agreement it
    // provides to every member, signed with its own key.
    let secretariat = generate_signing_key().expect("secretariat key");
    let member = IdentityCard::of_node(&node.running.identity, &node.running.peer_endpoint())
        .to_member(date!(2016 - 01 - 01))
        .expect("a member entry");
    let mut serial_1 = RosterBody::first(
        FELLOWSHIP,
        "DIGIT",
        secretariat.verifying_key(),
        DecisionRule::Secretariat,
        OffsetDateTime::now_utc(),
        vec![member],
    )
    .to_draft()
    .expect("roster draft");
    serial_1.sign(&secretariat).expect("sign");
    let mut serial_2 = serial_1
        .next_draft(OffsetDateTime::now_utc())
        .to_draft()
        .expect("serial 2 draft");
    serial_2.sign(&secretariat).expect("sign");
    let mut agreement = AgreementBody {
        id: AgreementBody::new_id(),
        fellowship: FELLOWSHIP.to_string(),
        provider: AARHUS,
        consumers: Consumers::All,
        scope: Scope {
            datasets: vec![AIR.to_string()],
            kinds: Vec::new(),
            keywords: Vec::new(),
        },
        operations: vec![Operation::Catalog, Operation::Read],
        min_group_size: None,
        purpose: "Shared air quality monitoring".to_string(),
        legal_basis: LegalBasis {
            code: "GDPR art. 6(1)(e)".to_string(),
            text: "Task carried out in the public interest".to_string(),
        },
        excluded_fields: Vec::new(),
        valid_from: datetime!(2024-01-01 00:00 UTC),
        valid_until: datetime!(2030-01-01 00:00 UTC),
        aggregate: Default::default(),
    }
    .to_draft()
    .expect("agreement draft");
    agreement
        .sign(node.running.identity.signing_key())
        .expect("sign the agreement");

    let import_roster = |roster: &Roster, trust_anchor: bool| pb::ImportRosterRequest {
        document: Some(pb::SignedDocumentBytes {
            content: roster.to_bytes(),
        }),
        trust_anchor,
        ..Default::default()
    };
    let import_agreement = pb::ImportAgreementRequest {
        document: Some(pb::SignedDocumentBytes {
            content: agreement.to_bytes(),
        }),
    };
    let nothing = pb::ListGovernanceResponse::default();
    let listed = |admin: &mut TokenLocalClient| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_governance(pb::ListGovernanceRequest::default())
                .await
                .expect("ListGovernance")
                .into_inner()
        }
    };

    // Nothing pinned yet: neither may pin the trust anchor.
    for (name, token) in &limited {
        let mut client = local_client(&endpoint, Some(token)).await;
        assert_denied(
            client.import_roster(import_roster(&serial_1, true)).await,
            &[&format!(
                "token `{name}` lacks role `admin`, which samvirke.v1.Local/ImportRoster requires"
            )],
        );
        assert_eq!(listed(&mut admin).await, nothing, "token {name}");
    }
    admin
        .import_roster(import_roster(&serial_1, true))
        .await
        .expect("the admin pins serial 1");
    let pinned = listed(&mut admin).await;

    // Serial 1 held: neither may import serial 2 nor the agreement.
    for (name, token) in &limited {
        let mut client = local_client(&endpoint, Some(token)).await;
        assert_denied(
            client.import_roster(import_roster(&serial_2, false)).await,
            &[&format!("token `{name}` lacks role `admin`")],
        );
        assert_denied(
            client.import_agreement(import_agreement.clone()).await,
            &[&format!(
                "token `{name}` lacks role `admin`, which samvirke.v1.Local/ImportAgreement \
                 requires"
            )],
        );
        assert_eq!(listed(&mut admin).await, pinned, "token {name}");
    }

    // The admin token may, so the documents were good.
    admin
        .import_roster(import_roster(&serial_2, false))
        .await
        .expect("the admin imports serial 2");
    admin
        .import_agreement(import_agreement)
        .await
        .expect("the admin imports the agreement");
    let now = listed(&mut admin).await;
    assert_eq!(now.rosters[0].serial, 2);
    assert_eq!(now.agreements.len(), 1);
    node.running.shutdown().await.expect("shutdown");
}

// ---- Data helpers ------------------------------------------------------------------

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn field(name: &str, kind: &str, unit: &str, personal: bool) -> pb::SchemaField {
    pb::SchemaField {
        name: name.to_string(),
        r#type: kind.to_string(),
        unit: unit.to_string(),
        personal,
    }
}

fn air_dataset() -> pb::Dataset {
    wire::dataset_to_proto(&sensor_dataset("air-quality", AARHUS).expect("air-quality dataset"))
}

fn noise_dataset() -> pb::Dataset {
    wire::dataset_to_proto(&sensor_dataset("noise", AARHUS).expect("noise dataset"))
}

/// Pilot results; `owner` (who ran the pilot) is marked personal.
fn pilot_dataset() -> pb::Dataset {
    pb::Dataset {
        id: PILOTS.to_string(),
        title: "Pilot results shared in the fellowships".to_string(),
        description: "Digitalisation and IoT pilots, their phase, KPIs and findings.".to_string(),
        kind: "pilot".to_string(),
        owner: AARHUS,
        theme: "digitalisation".to_string(),
        keywords: vec!["pilots".to_string(), "iot".to_string()],
        license: "CC-BY-4.0".to_string(),
        spatial: None,
        temporal: None,
        classification: "internal".to_string(),
        schema: vec![
            field("title", "text", "", false),
            field("owner", "text", "", true),
            field("phase", "text", "", false),
            field("started", "timestamp", "", false),
            field("budget_dkk", "number", "DKK", false),
            field("findings", "text", "", false),
        ],
        update_interval_seconds: 0,
    }
}

fn procurement_dataset() -> pb::Dataset {
    pb::Dataset {
        id: PROCUREMENTS.to_string(),
        title: "Joint procurement outcomes".to_string(),
        description: "Joint tenders of municipal fellowships: buyers, procedure, suppliers, value."
            .to_string(),
        kind: "procurement".to_string(),
        owner: AARHUS,
        theme: "procurement".to_string(),
        keywords: vec!["procurement".to_string()],
        license: "CC-BY-4.0".to_string(),
        spatial: None,
        temporal: None,
        classification: "open".to_string(),
        schema: vec![
            field("title", "text", "", false),
            field("suppliers", "text", "", false),
            field("value_dkk", "number", "DKK", false),
            field("awarded", "timestamp", "", false),
            field("notes", "text", "", false),
        ],
        update_interval_seconds: 0,
    }
}

/// 12 air-quality sensors every 10 minutes for a day: 1728 readings.
fn air_readings() -> Vec<Reading> {
    let readings: Vec<Reading> = generate(
        "air-quality",
        AARHUS,
        AIR_SENSORS,
        DATA_FROM,
        DATA_UNTIL,
        SEED,
    )
    .expect("generate air quality")
    .collect();
    assert_eq!(readings.len(), 12 * 144);
    readings
}

fn question(dataset: &str, from: OffsetDateTime, until: OffsetDateTime) -> pb::ReadingQuery {
    pb::ReadingQuery {
        dataset_id: dataset.to_string(),
        from: Some(wire::timestamp(from)),
        until: Some(wire::timestamp(until)),
        ..Default::default()
    }
}

fn aggregated(mut q: pb::ReadingQuery, bucket: &str, grouping: pb::Grouping) -> pb::ReadingQuery {
    q.bucket = bucket.to_string();
    q.grouping = grouping as i32;
    q
}

/// A box around every generated sensor of Aarhus, and a radius around the
/// town hall.
fn areas() -> [Area; 2] {
    let town = samvirke_node::fixtures::municipality(AARHUS).expect("Aarhus");
    [
        Area::Bbox(pb::BoundingBox {
            min_lat: town.lat - 0.5,
            min_lon: town.lon - 0.5,
            max_lat: town.lat + 0.5,
            max_lon: town.lon + 0.5,
        }),
        Area::Radius(pb::Radius {
            lat: town.lat,
            lon: town.lon,
            km: 50.0,
        }),
    ]
}

/// Publishes Aarhus's air-quality, noise, pilot and procurement datasets,
/// ingests the air-quality readings and stores the fixture records, all
/// through Aarhus's local API; returns the readings.
async fn publish_aarhus(fx: &GovernanceFixture) -> Vec<Reading> {
    let mut admin = fx.admin(AARHUS).await;
    for dataset in [
        air_dataset(),
        noise_dataset(),
        pilot_dataset(),
        procurement_dataset(),
    ] {
        let id = dataset.id.clone();
        admin
            .publish_dataset(dataset)
            .await
            .unwrap_or_else(|s| panic!("publish `{id}`: {s:?}"));
    }
    let air = air_readings();
    let totals = ingest(&mut admin, ingest_batches(AIR, &air, 500))
        .await
        .expect("ingest the air-quality readings");
    assert_eq!(totals.inserted, air.len() as u64);
    for pilot in fixture_pilots(PILOTS) {
        admin.put_pilot(pilot).await.expect("PutPilot");
    }
    for procurement in fixture_procurements(PROCUREMENTS) {
        admin
            .put_procurement(procurement)
            .await
            .expect("PutProcurement");
    }
    air
}

/// Read terms from Aarhus to Vejle over `datasets`, withholding `excluded`,
/// valid through 2026.
fn read_terms(fx: &GovernanceFixture, datasets: &[&str], excluded: &[&str]) -> AgreementBody {
    let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
    terms.scope = Scope {
        datasets: strings(datasets),
        kinds: Vec::new(),
        keywords: Vec::new(),
    };
    terms.excluded_fields = strings(excluded);
    terms.valid_from = datetime!(2026-01-01 00:00 UTC);
    terms.valid_until = datetime!(2027-01-01 00:00 UTC);
    terms
}

/// Aarhus (provider, data published) and Vejle, both in DIGIT.
struct DataWorld {
    fx: GovernanceFixture,
    air: Vec<Reading>,
}

impl DataWorld {
    async fn start() -> DataWorld {
        let fx = GovernanceFixture::start(&[AARHUS, VEJLE], DATA_NOW).await;
        let air = publish_aarhus(&fx).await;
        fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE]))
            .await;
        DataWorld { fx, air }
    }

    /// A read agreement Aarhus -> Vejle over `datasets` withholding
    /// `excluded`, signed by both and in force at Aarhus; returns its id.
    async fn agreement(&self, datasets: &[&str], excluded: &[&str]) -> String {
        let agreement = self
            .fx
            .agreement(&read_terms(&self.fx, datasets, excluded), &[AARHUS, VEJLE]);
        let info = self
            .fx
            .import_agreement(AARHUS, &agreement.to_bytes())
            .await
            .unwrap_or_else(|s| {
                panic!("Aarhus imports the agreement excluding {excluded:?}: {s:?}")
            })
            .agreement
            .expect("agreement info");
        assert_eq!(info.status, "active", "{info:?}");
        agreement.id().to_string()
    }

    /// Every dataset Aarhus publishes, in one agreement.
    async fn all_datasets(&self, excluded: &[&str]) -> String {
        self.agreement(&[AIR, NOISE, PILOTS, PROCUREMENTS], excluded)
            .await
    }

    async fn admin(&self) -> TokenLocalClient {
        self.fx.admin(AARHUS).await
    }

    async fn vejle(&self) -> samvirke_tests::SignedPeer {
        self.fx.peer(VEJLE, AARHUS).await
    }

    async fn shutdown(self) {
        self.fx.shutdown().await;
    }
}

// ---- 7. Membership starts on `joined` -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_is_refused_until_its_joined_date() {
    let fx = GovernanceFixture::start(&[AARHUS, VEJLE], DATA_NOW).await;
    publish_aarhus(&fx).await;
    // Vejle joins DIGIT on 2026-04-01, three weeks after "now".
    let mut members = fx.members(&[AARHUS, VEJLE]);
    members[1].joined = date!(2026 - 04 - 01);
    let roster = fx.sign_roster(
        &fx.first_roster(DecisionRule::Quorum(1), members),
        &[&fx.secretariat],
    );
    fx.import_everywhere(&roster).await;
    let agreement = fx.agreement(&read_terms(&fx, &[AIR], &[]), &[AARHUS, VEJLE]);
    let info = fx
        .import_agreement(AARHUS, &agreement.to_bytes())
        .await
        .expect("import at Aarhus")
        .agreement
        .expect("agreement info");
    assert_eq!(info.status, "active", "{info:?}");
    let id = agreement.id().to_string();
    let refusal = format!(
        "the client certificate {} is not that of a current member",
        fingerprint(&fx, VEJLE)
    );
    let q = question(AIR, DATA_FROM, DATA_UNTIL);

    for now in [DATA_NOW, datetime!(2026-03-31 23:59:59 UTC)] {
        fx.set_now(now);
        assert_denied(
            fx.check(VEJLE, AARHUS, &agreement, Operation::Read, AIR)
                .await,
            &[&refusal],
        );
        let mut vejle = fx.peer(VEJLE, AARHUS).await;
        assert_denied(peer_query(&mut vejle, &id, q.clone()).await, &[&refusal]);
    }

    fx.set_now(datetime!(2026-04-01 00:00 UTC));
    let grant = fx
        .check(VEJLE, AARHUS, &agreement, Operation::Read, AIR)
        .await
        .expect("Vejle is a member from 2026-04-01 00:00 UTC");
    assert_eq!(grant.caller_member_code, VEJLE);
    let mut vejle = fx.peer(VEJLE, AARHUS).await;
    let answer = peer_query(&mut vejle, &id, q.clone())
        .await
        .expect("a raw read once a member");
    let local = local_query(&mut fx.admin(AARHUS).await, q)
        .await
        .expect("local");
    assert!(!answer.readings.is_empty());
    assert_eq!(answer.readings, local.readings);
    fx.shutdown().await;
}

// ---- 8. Outsiders learn only that they are not members ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_and_former_members_learn_only_that_they_are_not_members() {
    let (fx, roster) = digit_with_a_former_member_and_an_outsider().await;
    let agreement = fx.agreement(&fx.terms(GREVE, Consumers::All), &[GREVE]);
    fx.import_agreement(GREVE, &agreement.to_bytes())
        .await
        .expect("import");
    let known = agreement.id().to_string();
    let unknown = AgreementBody::new_id().to_string();
    let holbaek = fx.node(HOLBAEK).running.identity.clone();

    for caller in [NAESTVED, ROSKILDE] {
        let own = fingerprint(&fx, caller);
        let mut secrets: Vec<String> = vec![
            FELLOWSHIP.to_string(),
            roster.name().to_string(),
            known.clone(),
            unknown.clone(),
            DATASET.to_string(),
            "127.0.0.1".to_string(),
            "Kommune".to_string(),
            signing_key_text(&fx.secretariat.verifying_key()),
        ];
        for member in roster.members() {
            secrets.push(member.name.clone());
            secrets.push(member.endpoint.clone());
            secrets.push(signing_key_text(&member.signing_key));
        }
        for code in [GREVE, HOLBAEK, ROSKILDE, NAESTVED] {
            if code != caller {
                secrets.push(fingerprint(&fx, code));
            }
            secrets.push(key_text(&fx, code));
        }
        let tls = fx.node(caller).running.identity.tls.clone();
        let ask = |agreement_id: &str, claimed: u32| CheckAccessRequest {
            agreement_id: agreement_id.to_string(),
            operation: pb::Operation::Read as i32,
            dataset_id: DATASET.to_string(),
            claimed_member_code: claimed,
        };
        let expected = format!(
            "the client certificate {own} is not that of a current member of any fellowship \
             this node follows"
        );
        let mut messages = Vec::new();
        // About the agreement that exists and one that does not, claiming
        // to be Holbæk, itself, or nobody.
        for claimed in [HOLBAEK, caller, 0] {
            let about_known = assert_denied(
                fx.check_as(&tls, GREVE, ask(&known, claimed)).await,
                &[&expected],
            );
            let about_unknown = assert_denied(
                fx.check_as(&tls, GREVE, ask(&unknown, claimed)).await,
                &[&expected],
            );
            assert_eq!(
                about_known, about_unknown,
                "node {caller} can tell an existing agreement id from an unknown one"
            );
            messages.push(about_known);
        }
        // Hello, introducing itself as Holbæk.
        let mut client = fx.peer(caller, GREVE).await;
        messages.push(assert_denied(
            client.hello(hello_request(Some(holbaek.as_ref()))).await,
            &[&expected],
        ));
        for message in &messages {
            for secret in &secrets {
                assert!(
                    !message.to_lowercase().contains(&secret.to_lowercase()),
                    "`{secret}` leaked to node {caller}: {message}"
                );
            }
            let without_own = message.replace(&own, "");
            for marker in ["sha256:", "ed25519:"] {
                assert!(
                    !without_own.contains(marker),
                    "a key or fingerprint other than the caller's leaked: {message}"
                );
            }
        }
    }

    // A member's hello is answered, naming the node.
    let answer = fx
        .peer(HOLBAEK, GREVE)
        .await
        .hello(hello_request(Some(holbaek.as_ref())))
        .await
        .expect("a member's hello")
        .into_inner();
    let node = answer.node.expect("the node's identity");
    assert_eq!(node.municipality_code, GREVE);
    assert_eq!(node.municipality_name, "Greve Kommune");
    assert_eq!(node.tls_certificate_fingerprint, fingerprint(&fx, GREVE));
    assert_eq!(
        answer.caller_certificate_fingerprint,
        fingerprint(&fx, HOLBAEK)
    );
    fx.shutdown().await;
}

// ---- 9. No existence oracle for datasets -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_outside_the_scope_and_unpublished_ids_get_the_same_denial() {
    let world = DataWorld::start().await;
    let fx = &world.fx;
    let agreement = fx.agreement(&read_terms(fx, &[AIR], &[]), &[AARHUS, VEJLE]);
    fx.import_agreement(AARHUS, &agreement.to_bytes())
        .await
        .expect("import");
    let id = agreement.id().to_string();
    let mut vejle = world.vejle().await;

    // Published outside the scope (a sensor and a pilot dataset), and an id
    // nobody published.
    let probes = [NOISE, PILOTS, NOWHERE];
    let normalised = |message: String, dataset: &str| message.replace(dataset, "<dataset>");
    let mut by_rpc: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for dataset in probes {
        let check = assert_denied(
            fx.check(VEJLE, AARHUS, &agreement, Operation::Read, dataset)
                .await,
            &[&format!(
                "dataset `{dataset}` is not available under agreement {id}"
            )],
        );
        by_rpc
            .entry("CheckAccess")
            .or_default()
            .push(normalised(check, dataset));
        let readings = assert_denied(
            peer_query(&mut vejle, &id, question(dataset, DATA_FROM, DATA_UNTIL)).await,
            &[&format!("dataset `{dataset}` is not available")],
        );
        by_rpc
            .entry("QueryReadings")
            .or_default()
            .push(normalised(readings, dataset));
        let pilots = assert_denied(
            vejle
                .list_pilots(pb::PeerPilotQuery {
                    agreement_id: id.clone(),
                    filter: Some(pb::PilotFilter {
                        dataset_id: dataset.to_string(),
                        ..Default::default()
                    }),
                })
                .await,
            &[&format!("dataset `{dataset}` is not available")],
        );
        by_rpc
            .entry("ListPilots")
            .or_default()
            .push(normalised(pilots, dataset));
    }
    for (rpc, messages) in &by_rpc {
        assert_eq!(messages.len(), probes.len());
        for (dataset, message) in probes.iter().zip(messages) {
            assert_eq!(
                message, &messages[2],
                "{rpc}: `{dataset}` (published) and `{NOWHERE}` (not) are told apart"
            );
        }
        for word in ["sensor", "pilot", "kind", "publish", "exist", "found"] {
            assert!(
                !messages[0].contains(word),
                "{rpc}: `{word}` in {}",
                messages[0]
            );
        }
    }
    // The dataset in scope is answered.
    let answer = peer_query(&mut vejle, &id, question(AIR, DATA_FROM, DATA_UNTIL))
        .await
        .expect("the dataset in scope");
    assert_eq!(answer.readings.len(), world.air.len());
    world.shutdown().await;
}

// ---- 10. Agreements reach only their parties ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreements_spread_only_to_their_parties() {
    let (fx, _) = three_members().await;
    let active_at = |code: u32, id: String| {
        let fx = &fx;
        async move {
            fx.list(code)
                .await
                .agreements
                .into_iter()
                .find(|a| a.id == id && a.status == "active")
        }
    };
    // Greve -> Holbæk, imported at Greve only.
    let to_holbaek = fx.agreement(
        &fx.terms(GREVE, Consumers::Named(vec![HOLBAEK])),
        &[GREVE, HOLBAEK],
    );
    let secret_id = to_holbaek.id().to_string();
    fx.import_agreement(GREVE, &to_holbaek.to_bytes())
        .await
        .expect("import at Greve");
    eventually("Greve -> Holbæk active at Holbæk", || {
        active_at(HOLBAEK, secret_id.clone())
    })
    .await;

    // Roskilde syncs with both: Greve -> Roskilde imported at Greve, and
    // Holbæk -> Roskilde imported at Holbæk (which holds Greve -> Holbæk
    // by now), both reach it.
    let from_greve = fx.agreement(
        &fx.terms(GREVE, Consumers::Named(vec![ROSKILDE])),
        &[GREVE, ROSKILDE],
    );
    let from_holbaek = fx.agreement(
        &fx.terms(HOLBAEK, Consumers::Named(vec![ROSKILDE])),
        &[HOLBAEK, ROSKILDE],
    );
    fx.import_agreement(GREVE, &from_greve.to_bytes())
        .await
        .expect("import at Greve");
    fx.import_agreement(HOLBAEK, &from_holbaek.to_bytes())
        .await
        .expect("import at Holbæk");
    for agreement in [&from_greve, &from_holbaek] {
        let id = agreement.id().to_string();
        eventually(&format!("{id} active at Roskilde"), || {
            active_at(ROSKILDE, id.clone())
        })
        .await;
    }

    let at_roskilde: Vec<String> = fx
        .list(ROSKILDE)
        .await
        .agreements
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert!(
        !at_roskilde.contains(&secret_id),
        "Roskilde received Greve -> Holbæk, to which it is no party: {at_roskilde:?}"
    );
    assert_eq!(at_roskilde.len(), 2, "{at_roskilde:?}");

    // Asking Greve and Holbæk directly, with nothing held, Roskilde is sent
    // and told of its own agreements only: not even the id of the other.
    for (server, own) in [(GREVE, &from_greve), (HOLBAEK, &from_holbaek)] {
        let page = fx
            .peer(ROSKILDE, server)
            .await
            .sync_governance(pb::SyncGovernanceRequest::default())
            .await
            .expect("a member's page")
            .into_inner();
        let sent: Vec<String> = page
            .agreements
            .iter()
            .map(|d| {
                Agreement::parse(&d.content)
                    .expect("an agreement file")
                    .id()
                    .to_string()
            })
            .collect();
        let heads: Vec<String> = page
            .summary
            .expect("a summary")
            .agreements
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(sent, [own.id().to_string()], "node {server}");
        assert_eq!(heads, [own.id().to_string()], "node {server}");
    }
    fx.shutdown().await;
}

// ---- 11. An ingest token cannot widen a catalog entry ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_token_cannot_widen_what_partners_may_see() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("Test CA").expect("CA");
    let node = start_node(
        &dir.path().join("751"),
        &ca,
        AARHUS,
        &[("sensors", &["ingest"])],
    )
    .await;
    let endpoint = node.running.local_endpoint();
    let mut admin = local_client(&endpoint, Some(&node.admin_token)).await;
    let mut sensors = local_client(&endpoint, Some(&node.extra_tokens[0])).await;

    // Indoor climate with a personal measure, classified personal.
    let mut dataset = wire::dataset_to_proto(
        &sensor_dataset("indoor-climate", AARHUS).expect("indoor-climate dataset"),
    );
    dataset.classification = "personal".to_string();
    dataset.keywords = vec!["air".to_string()];
    dataset
        .schema
        .push(field("occupants", "number", "count", true));
    let published = admin
        .publish_dataset(dataset.clone())
        .await
        .expect("the admin publishes")
        .into_inner();
    // The catalog as listed, spatial extents left out: the catalog's store
    // (JSON) does not give them back bit for bit (a last-digit drift that
    // has nothing to do with what partners may see).
    let listed = |mut admin: TokenLocalClient| async move {
        admin
            .list_datasets(pb::ListDatasetsRequest {})
            .await
            .expect("ListDatasets")
            .into_inner()
            .datasets
            .into_iter()
            .map(without_spatial)
            .collect::<Vec<_>>()
    };

    type Widen = fn(&mut pb::Dataset);
    let widenings: [(Widen, &str); 3] = [
        (
            |d| {
                d.schema
                    .iter_mut()
                    .filter(|f| f.name == "occupants")
                    .for_each(|f| f.personal = false);
            },
            "field `occupants` would no longer be personal",
        ),
        (
            |d| d.classification = "internal".to_string(),
            "classification would go from personal to internal",
        ),
        (
            |d| d.keywords.push("shared".to_string()),
            "keyword `shared` would be added",
        ),
    ];
    for (widen, change) in widenings {
        let mut wider = published.clone();
        widen(&mut wider);
        assert_denied(
            sensors.update_dataset(wider).await,
            &[
                &format!("dataset `{}`", published.id),
                "this change widens what partners may see",
                change,
                "needs a token with the admin role, and token `sensors` has not",
            ],
        );
        assert_eq!(
            listed(admin.clone()).await,
            vec![without_spatial(published.clone())],
            "the catalog entry changed: {change}"
        );
    }

    // A change that widens nothing is the ingest token's to make.
    let mut described = published.clone();
    described.description = "Indoor climate in the town hall, with head counts.".to_string();
    sensors
        .update_dataset(described.clone())
        .await
        .expect("a new description widens nothing");
    assert_eq!(
        listed(admin.clone()).await,
        vec![without_spatial(described.clone())]
    );

    // The admin may widen.
    let mut shared = described.clone();
    shared.keywords.push("shared".to_string());
    admin
        .update_dataset(shared.clone())
        .await
        .expect("the admin may add a keyword");
    assert_eq!(listed(admin.clone()).await, vec![without_spatial(shared)]);
    node.running.shutdown().await.expect("shutdown");
}

fn without_spatial(mut dataset: pb::Dataset) -> pb::Dataset {
    dataset.spatial = None;
    dataset
}

// ---- 12. What the peer data path discloses ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_location_leaves_readings_bare_and_refuses_area_filters() {
    let world = DataWorld::start().await;
    let withheld = world.all_datasets(&["location"]).await;
    let open = world.all_datasets(&[]).await;
    let mut admin = world.admin().await;
    let mut vejle = world.vejle().await;

    let q = question(AIR, DATA_FROM, DATA_UNTIL);
    let local = local_query(&mut admin, q.clone()).await.expect("local");
    assert_eq!(local.readings.len(), world.air.len());
    assert!(local.readings.iter().all(|r| r.location.is_some()));
    let got = peer_query(&mut vejle, &withheld, q.clone())
        .await
        .expect("raw readings without location");
    let expected: Vec<pb::Reading> = local
        .readings
        .into_iter()
        .map(|mut r| {
            r.location = None;
            r
        })
        .collect();
    assert_eq!(got.readings, expected);

    for area in areas() {
        let mut in_area = q.clone();
        in_area.area = Some(area);
        for (what, asked) in [
            ("raw", in_area.clone()),
            (
                "aggregate",
                aggregated(in_area.clone(), "1h", pb::Grouping::AllSensors),
            ),
        ] {
            let message = assert_denied(
                peer_query(&mut vejle, &withheld, asked.clone()).await,
                &[&format!(
                    "`location` never leaves this node under agreement {withheld}"
                )],
            );
            // Under an agreement that discloses location, the same question
            // is answered: the refusal is the withholding's.
            let answered = peer_query(&mut vejle, &open, asked)
                .await
                .unwrap_or_else(|s| panic!("{what} {area:?} under the open agreement: {s:?}"));
            assert!(
                !answered.readings.is_empty() || !answered.buckets.is_empty(),
                "{what}: {message}"
            );
        }
    }
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_names_in_other_case_or_dotted_form_withhold_the_field() {
    let world = DataWorld::start().await;
    let agreement = world.all_datasets(&["NO2", "location.lat"]).await;
    let mut admin = world.admin().await;
    let mut vejle = world.vejle().await;

    let q = question(AIR, DATA_FROM, DATA_UNTIL);
    let local = local_query(&mut admin, q.clone()).await.expect("local");
    assert!(local.readings.iter().all(|r| r.values.contains_key("no2")));
    let got = peer_query(&mut vejle, &agreement, q.clone())
        .await
        .expect("peer");
    let expected: Vec<pb::Reading> = local
        .readings
        .into_iter()
        .map(|mut r| {
            r.values.remove("no2");
            r.location = None;
            r
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(got.readings, expected, "`NO2` and `location.lat` withhold");

    let mut no2 = q.clone();
    no2.measures = strings(&["no2"]);
    assert_denied(
        peer_query(&mut vejle, &agreement, no2).await,
        &["measure `no2` is not available", "available: pm2_5, pm10"],
    );
    let [bbox, _] = areas();
    let mut in_box = q.clone();
    in_box.area = Some(bbox);
    assert_denied(
        peer_query(&mut vejle, &agreement, in_box).await,
        &["`location` never leaves this node"],
    );
    let catalog = vejle
        .catalog(pb::PeerCatalogRequest {
            agreement_id: agreement.clone(),
        })
        .await
        .expect("Catalog")
        .into_inner()
        .datasets;
    let air = catalog
        .iter()
        .find(|d| d.id == AIR)
        .expect("air quality listed");
    let names: Vec<&str> = air.schema.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["pm2_5", "pm10"]);
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agreement_withholding_every_measure_answers_nothing() {
    let world = DataWorld::start().await;
    let agreement = world.all_datasets(&["pm2_5", "pm10", "no2"]).await;
    let mut vejle = world.vejle().await;
    let q = question(AIR, DATA_FROM, DATA_UNTIL);
    for asked in [
        q.clone(),
        aggregated(q.clone(), "1h", pb::Grouping::AllSensors),
        aggregated(q.clone(), "1h", pb::Grouping::PerSensor),
    ] {
        assert_denied(
            peer_query(&mut vejle, &agreement, asked).await,
            &[&format!(
                "agreement {agreement} discloses no measure of `{AIR}`"
            )],
        );
    }
    // Naming a measure gets nothing either, and lists nothing as available.
    let mut pm10 = q.clone();
    pm10.measures = strings(&["pm10"]);
    let message = assert_denied(
        peer_query(&mut vejle, &agreement, pm10).await,
        &["measure `pm10` is not available"],
    );
    assert!(message.ends_with("available: "), "{message}");
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_filters_on_withheld_fields_are_refused() {
    let world = DataWorld::start().await;
    let withheld = world
        .all_datasets(&["technology", "phase", "suppliers", "buyer_fellowship"])
        .await;
    let open = world.all_datasets(&[]).await;
    let mut vejle = world.vejle().await;

    let pilots = |filter: pb::PilotFilter, agreement: &str| pb::PeerPilotQuery {
        agreement_id: agreement.to_string(),
        filter: Some(pb::PilotFilter {
            dataset_id: PILOTS.to_string(),
            ..filter
        }),
    };
    let procurements = |filter: pb::ProcurementFilter, agreement: &str| pb::PeerProcurementQuery {
        agreement_id: agreement.to_string(),
        filter: Some(pb::ProcurementFilter {
            dataset_id: PROCUREMENTS.to_string(),
            ..filter
        }),
    };
    let pilot_filters = [
        (
            "technology",
            pb::PilotFilter {
                technology: "sensor".to_string(),
                ..Default::default()
            },
        ),
        (
            "phase",
            pb::PilotFilter {
                phase: pb::PilotPhase::Test as i32,
                ..Default::default()
            },
        ),
    ];
    for (field, filter) in pilot_filters {
        assert_denied(
            vejle.list_pilots(pilots(filter.clone(), &withheld)).await,
            &[&format!(
                "`{field}` never leaves this node under agreement {withheld}"
            )],
        );
        vejle
            .list_pilots(pilots(filter, &open))
            .await
            .unwrap_or_else(|s| panic!("a {field} filter where it is disclosed: {s:?}"));
    }
    let procurement_filters = [
        (
            "suppliers",
            pb::ProcurementFilter {
                supplier: "kmd".to_string(),
                ..Default::default()
            },
        ),
        (
            "buyer_fellowship",
            pb::ProcurementFilter {
                buyer_fellowship: "digit".to_string(),
                ..Default::default()
            },
        ),
    ];
    for (field, filter) in procurement_filters {
        assert_denied(
            vejle
                .list_procurements(procurements(filter.clone(), &withheld))
                .await,
            &[&format!(
                "`{field}` never leaves this node under agreement {withheld}"
            )],
        );
        vejle
            .list_procurements(procurements(filter, &open))
            .await
            .unwrap_or_else(|s| panic!("a {field} filter where it is disclosed: {s:?}"));
    }

    // Without such filters the records come, minus the withheld fields.
    let got = vejle
        .list_pilots(pilots(pb::PilotFilter::default(), &withheld))
        .await
        .expect("pilots")
        .into_inner()
        .pilots;
    assert_eq!(got.len(), fixture_pilots(PILOTS).len());
    assert!(
        fixture_pilots(PILOTS)
            .iter()
            .any(|p| !p.technology.is_empty())
    );
    assert!(
        got.iter()
            .all(|p| p.technology.is_empty() && p.phase == pb::PilotPhase::Unspecified as i32)
    );
    let got = vejle
        .list_procurements(procurements(pb::ProcurementFilter::default(), &withheld))
        .await
        .expect("procurements")
        .into_inner()
        .procurements;
    assert!(!got.is_empty());
    assert!(
        got.iter()
            .all(|p| p.suppliers.is_empty() && p.buyer_fellowship.is_empty())
    );
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_and_an_unknown_measure_get_the_same_answer() {
    let world = DataWorld::start().await;
    let agreement = world.all_datasets(&["no2"]).await;
    let mut vejle = world.vejle().await;
    for (what, base) in [
        ("raw", question(AIR, DATA_FROM, DATA_UNTIL)),
        (
            "aggregate",
            aggregated(
                question(AIR, DATA_FROM, DATA_UNTIL),
                "1h",
                pb::Grouping::AllSensors,
            ),
        ),
    ] {
        let mut answers = Vec::new();
        for measure in ["no2", "o3"] {
            let mut q = base.clone();
            q.measures = strings(&["pm10", measure]);
            let message = assert_denied(
                peer_query(&mut vejle, &agreement, q).await,
                &[
                    &format!("measure `{measure}` is not available under agreement {agreement}"),
                    "available: pm2_5, pm10",
                ],
            );
            answers.push(message.replace(&format!("`{measure}`"), "`<measure>`"));
        }
        assert_eq!(
            answers[0], answers[1],
            "{what}: a withheld measure reads differently from an unknown one"
        );
        assert!(!answers[0].contains("no2"), "{what}: {}", answers[0]);
    }
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_of_more_than_a_million_buckets_is_refused_on_the_peer_path() {
    let world = DataWorld::start().await;
    let agreement = world.all_datasets(&[]).await;
    let mut vejle = world.vejle().await;
    // A day of 1 s buckets per sensor: 86400 x 12 sensors x 3 measures.
    let huge = aggregated(
        question(AIR, DATA_FROM, DATA_UNTIL),
        "1s",
        pb::Grouping::PerSensor,
    );
    assert_status(
        peer_query(&mut vejle, &agreement, huge).await,
        &[Code::InvalidArgument],
        &["bucket:", "buckets, more than 1000000"],
    );
    let hourly = aggregated(
        question(AIR, DATA_FROM, DATA_UNTIL),
        "1h",
        pb::Grouping::PerSensor,
    );
    let answer = peer_query(&mut vejle, &agreement, hourly)
        .await
        .expect("hourly buckets per sensor");
    assert_eq!(answer.buckets.len(), 24 * 12 * 3);
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_sensor_id_is_replaced_by_stable_pseudonyms() {
    let world = DataWorld::start().await;
    let agreement = world.all_datasets(&["sensor_id"]).await;
    let other = world.all_datasets(&["sensor_id"]).await;
    let mut admin = world.admin().await;
    let mut vejle = world.vejle().await;

    let q = question(AIR, DATA_FROM, DATA_UNTIL);
    let local = local_query(&mut admin, q.clone()).await.expect("local");
    let first = peer_query(&mut vejle, &agreement, q.clone())
        .await
        .expect("first call");
    let second = peer_query(&mut vejle, &agreement, q.clone())
        .await
        .expect("second call");
    assert_eq!(
        first.readings, second.readings,
        "pseudonyms are stable between calls"
    );
    assert_eq!(first.readings.len(), local.readings.len());

    // Reading for reading, the same but for the sensor id; one pseudonym
    // per sensor, never the real id.
    let real_ids: Vec<&str> = local
        .readings
        .iter()
        .map(|r| r.sensor_id.as_str())
        .collect();
    let mut pseudonym_of: BTreeMap<String, String> = BTreeMap::new();
    for (mine, theirs) in local.readings.iter().zip(&first.readings) {
        assert!(theirs.sensor_id.starts_with("anon-"), "{theirs:?}");
        assert!(!real_ids.contains(&theirs.sensor_id.as_str()), "{theirs:?}");
        let mut unmasked = theirs.clone();
        unmasked.sensor_id = mine.sensor_id.clone();
        assert_eq!(&unmasked, mine);
        let known = pseudonym_of
            .entry(mine.sensor_id.clone())
            .or_insert_with(|| theirs.sensor_id.clone());
        assert_eq!(known, &theirs.sensor_id, "one pseudonym per sensor");
    }
    assert_eq!(pseudonym_of.len(), AIR_SENSORS as usize);
    let distinct: std::collections::BTreeSet<&String> = pseudonym_of.values().collect();
    assert_eq!(
        distinct.len(),
        AIR_SENSORS as usize,
        "one sensor per pseudonym"
    );

    // Filtering by a pseudonym returns that sensor's readings.
    let (real, pseudonym) = pseudonym_of.iter().nth(3).expect("a fourth sensor");
    let mut by_pseudonym = q.clone();
    by_pseudonym.sensor_ids = vec![pseudonym.clone()];
    let got = peer_query(&mut vejle, &agreement, by_pseudonym)
        .await
        .expect("filtered by pseudonym");
    let mut by_real = q.clone();
    by_real.sensor_ids = vec![real.clone()];
    let expected = local_query(&mut admin, by_real.clone())
        .await
        .expect("local, one sensor");
    assert_eq!(expected.readings.len(), 144);
    assert_eq!(got.readings.len(), expected.readings.len());
    for (theirs, mine) in got.readings.iter().zip(&expected.readings) {
        assert_eq!(&theirs.sensor_id, pseudonym);
        assert_eq!((&theirs.at, &theirs.values), (&mine.at, &mine.values));
    }
    // The real id finds nothing: it is not a name the consumer knows.
    let got = peer_query(&mut vejle, &agreement, by_real)
        .await
        .expect("filtered by the real id");
    assert!(got.readings.is_empty(), "{:?}", got.readings.first());

    // Another agreement gives the same sensor another pseudonym.
    let elsewhere = peer_query(&mut vejle, &other, q).await.expect("other");
    assert_eq!(elsewhere.readings.len(), first.readings.len());
    for (a, b) in first.readings.iter().zip(&elsewhere.readings) {
        assert!(b.sensor_id.starts_with("anon-"));
        assert_ne!(a.sensor_id, b.sensor_id);
    }
    world.shutdown().await;
}
