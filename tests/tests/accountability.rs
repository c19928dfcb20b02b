//! Accountability, attacked end to end on real nodes (devnet, real sled
//! stores, real mutual TLS on loopback, one manual clock):
//!
//! - server pinning: a consumer whose roster lists a partner's certificate
//!   fingerprint refuses a server on the partner's address that presents
//!   another certificate of the same trusted CA (another member's), and
//!   says which certificate it got; once the roster names the right
//!   address the same question is answered;
//! - signed requests: a replayed request (same signature, same nonce), one
//!   signed ten minutes ago, one signed as the caller with a key that is
//!   not the caller's, one signed for another provider, and one not signed
//!   at all are refused (UNAUTHENTICATED), each
//!   recorded in the provider's audit log with the reason;
//! - receipts: the receipt of a federated answer, kept by the consumer,
//!   verifies with the provider's key from the roster; every one-byte
//!   change of its file is refused;
//! - an outsider (a certificate of the trusted CA, no member) calling over
//!   and over is refused every time, but adds at most
//!   `DENIED_ENTRIES_PER_MINUTE` entries a minute to the audit log;
//! - the audit log records the operator's publishing of a dataset and
//!   every call made with an admin token, and
//!   holds exactly one `peer_call` entry for every allowed
//!   and every denied data call the test made (counted), the export
//!   verifies offline with the node's key, and flipping any single byte of
//!   the export makes verification fail naming an entry or line.

use std::time::Duration;

use prost::Message;
use samvirke_node::audit::chain::{Entry, verify_export};
use samvirke_node::clock::Clock;
use samvirke_node::data::{Reading, generate, sensor_dataset};
use samvirke_node::governance::{Consumers, DecisionRule, Roster, Scope};
use samvirke_node::proof::receipt;
use samvirke_node::proof::request::{RequestFacts, sign_now};
use samvirke_node::{peer, wire};
use samvirke_proto::v1 as pb;
use samvirke_tests::{
    GovernanceFixture, SignedPeer, TokenLocalClient, assert_status, ingest, ingest_batches,
    peer_query,
};
use time::OffsetDateTime;
use time::macros::datetime;
use tonic::{Code, Request};

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const SILKEBORG: u32 = 740;

const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
const FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const UNTIL: OffsetDateTime = datetime!(2026-03-02 00:00 UTC);
const AIR: &str = "aarhus-air-quality";

/// Aarhus publishes air quality (12 sensors, a day every 10 minutes).
async fn publish_air(fx: &GovernanceFixture) -> Vec<Reading> {
    let mut admin = fx.admin(AARHUS).await;
    admin
        .publish_dataset(wire::dataset_to_proto(
            &sensor_dataset("air-quality", AARHUS).expect("air-quality dataset"),
        ))
        .await
        .expect("publish the air-quality dataset");
    let readings: Vec<Reading> = generate("air-quality", AARHUS, 12, FROM, UNTIL, 0x6163_636f)
        .expect("generate air quality")
        .collect();
    ingest(&mut admin, ingest_batches(AIR, &readings, 500))
        .await
        .expect("ingest the air-quality readings");
    readings
}

/// A read agreement Aarhus -> Vejle over the air-quality dataset, signed
/// by both and imported at both; returns its id.
async fn air_agreement(fx: &GovernanceFixture) -> String {
    let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
    terms.scope = Scope {
        datasets: vec![AIR.to_string()],
        kinds: Vec::new(),
        keywords: Vec::new(),
    };
    terms.valid_from = datetime!(2026-01-01 00:00 UTC);
    terms.valid_until = datetime!(2027-01-01 00:00 UTC);
    let agreement = fx.agreement(&terms, &[AARHUS, VEJLE]);
    for code in [AARHUS, VEJLE] {
        fx.import_agreement(code, &agreement.to_bytes())
            .await
            .unwrap_or_else(|s| panic!("{code} imports the agreement: {s:?}"));
    }
    agreement.id().to_string()
}

fn readings_question() -> pb::ReadingQuery {
    pb::ReadingQuery {
        dataset_id: AIR.to_string(),
        from: Some(wire::timestamp(FROM)),
        until: Some(wire::timestamp(UNTIL)),
        measures: vec!["pm2_5".to_string()],
        ..Default::default()
    }
}

/// Everything one `Local/Ask` answer carried.
#[derive(Debug, Default)]
struct Asked {
    readings: usize,
    partners: Vec<pb::PartnerStatus>,
    done: Option<pb::AskSummary>,
}

async fn ask(client: &mut TokenLocalClient, request: pb::AskRequest) -> Asked {
    let drain = async {
        let mut stream = client
            .ask(request)
            .await
            .expect("Ask is accepted")
            .into_inner();
        let mut asked = Asked::default();
        while let Some(event) = stream.message().await.expect("the Ask stream") {
            match event.event {
                Some(pb::ask_event::Event::Rows(rows)) => asked.readings += rows.readings.len(),
                Some(pb::ask_event::Event::Partner(status)) => asked.partners.push(status),
                Some(pb::ask_event::Event::Done(done)) => asked.done = Some(done),
                _ => {}
            }
        }
        asked
    };
    tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("an Ask answers within 30 s")
}

/// Vejle asks Aarhus for its raw PM2.5 readings.
fn ask_aarhus() -> pb::AskRequest {
    pb::AskRequest {
        question: Some(pb::ask_request::Question::Readings(readings_question())),
        target: Some(pb::AskTarget {
            partners: vec![AARHUS],
            ..Default::default()
        }),
        deadline_ms: 10_000,
        ..Default::default()
    }
}

fn status_of(asked: &Asked, code: u32) -> &pb::PartnerStatus {
    asked
        .partners
        .iter()
        .find(|p| p.municipality == code)
        .unwrap_or_else(|| panic!("no status for {code}: {asked:?}"))
}

/// The whole audit log of the node of `code`, as `samvirke audit export`
/// writes it.
async fn export(fx: &GovernanceFixture, code: u32) -> Vec<u8> {
    export_range(fx, code, 1, 0).await
}

/// Entries `from..=to` (0: to the end) of the node of `code`.
async fn export_range(fx: &GovernanceFixture, code: u32, from: u64, to: u64) -> Vec<u8> {
    let mut stream = fx
        .admin(code)
        .await
        .export_audit(pb::ExportAuditRequest { from, to })
        .await
        .expect("ExportAudit with the admin token")
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = stream.message().await.expect("the export stream") {
        file.extend_from_slice(&chunk.data);
    }
    file
}

/// The `peer_call` entries of data methods (leaving out the background
/// `SyncGovernance` and `Hello` calls nodes make on their own).
fn data_calls(entries: &[Entry]) -> Vec<&Entry> {
    entries
        .iter()
        .filter(|e| e.event == "peer_call")
        .filter(|e| {
            [
                peer::CATALOG,
                peer::QUERY_READINGS,
                peer::LIST_PILOTS,
                peer::LIST_PROCUREMENTS,
            ]
            .iter()
            .any(|method| e.operation.starts_with(method))
        })
        .collect()
}

// ---- Server pinning ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_address_answered_by_another_certificate_is_refused_by_the_consumer() {
    let fx = GovernanceFixture::start(&[AARHUS, VEJLE, SILKEBORG], NOW).await;
    publish_air(&fx).await;
    // Serial 1 lists Aarhus's key and fingerprint, but Silkeborg's address:
    // whoever answers there holds a certificate of the trusted CA (the
    // handshake would pass a CA-and-host-name check) but not Aarhus's.
    let mut aarhus = fx.member(AARHUS);
    aarhus.endpoint = fx.node(SILKEBORG).running.peer_endpoint();
    let first = fx.first_roster(
        DecisionRule::Quorum(1),
        vec![aarhus, fx.member(VEJLE), fx.member(SILKEBORG)],
    );
    let roster = fx.sign_roster(&first, &[&fx.secretariat]);
    fx.import_everywhere(&roster).await;
    air_agreement(&fx).await;
    let silkeborg_before = export(&fx, SILKEBORG).await;

    let mut vejle = fx.admin(VEJLE).await;
    let asked = ask(&mut vejle, ask_aarhus()).await;
    let status = status_of(&asked, AARHUS);
    assert_eq!(
        status.outcome,
        pb::PartnerOutcome::Unavailable as i32,
        "{status:?}"
    );
    let silkeborg_fingerprint = fx.node(SILKEBORG).running.identity.tls.fingerprint;
    let aarhus_fingerprint = fx.node(AARHUS).running.identity.tls.fingerprint;
    assert!(
        status.detail.contains(&silkeborg_fingerprint.to_string()),
        "the refusal names the certificate presented: {status:?}"
    );
    assert!(
        status.detail.contains(&aarhus_fingerprint.to_string()),
        "and the one the roster lists: {status:?}"
    );
    assert_eq!(asked.readings, 0, "nothing from the wrong server is used");
    // The impostor never saw a request: the handshake was refused before
    // any HTTP/2 frame (its audit log holds no new data call).
    let silkeborg_after = export(&fx, SILKEBORG).await;
    let before = verify_export(&silkeborg_before, &fx.key(SILKEBORG).verifying_key())
        .expect("Silkeborg's export verifies");
    let after = verify_export(&silkeborg_after, &fx.key(SILKEBORG).verifying_key())
        .expect("Silkeborg's export verifies");
    assert_eq!(
        data_calls(&before.entries).len(),
        data_calls(&after.entries).len()
    );

    // The roster corrected (the secretariat signs, and Aarhus, whose own
    // entry changes):
    // the same question is answered.
    let next = fx.next_roster(&roster, |body| {
        let aarhus = body
            .members
            .iter_mut()
            .find(|m| m.code == AARHUS)
            .expect("Aarhus in the roster");
        aarhus.endpoint = fx.node(AARHUS).running.peer_endpoint();
    });
    let corrected = fx.sign_roster(&next, &[&fx.secretariat, fx.key(AARHUS)]);
    for code in [AARHUS, VEJLE, SILKEBORG] {
        fx.import_roster(code, &corrected.to_bytes(), false)
            .await
            .unwrap_or_else(|s| panic!("{code} imports serial 2: {s:?}"));
    }
    let asked = ask(&mut vejle, ask_aarhus()).await;
    let status = status_of(&asked, AARHUS);
    assert_eq!(status.outcome, pb::PartnerOutcome::Ok as i32, "{status:?}");
    assert_eq!(asked.readings, 12 * 144);
    fx.shutdown().await;
}

// ---- Signed requests ----------------------------------------------------------------

/// A `Peer/Catalog` request under `agreement`, signed as Vejle at `at`
/// with `key`.
fn catalog_signed_with(
    peer: &SignedPeer,
    key: &ed25519_dalek::SigningKey,
    agreement: &str,
    at: OffsetDateTime,
) -> Request<pb::PeerCatalogRequest> {
    let message = pb::PeerCatalogRequest {
        agreement_id: agreement.to_string(),
    };
    let digest = samvirke_node::proof::message_digest(&message);
    let mut request = Request::new(message);
    sign_now(
        request.metadata_mut(),
        key,
        RequestFacts {
            caller: peer.code,
            provider: peer.provider,
            method: peer::CATALOG,
            digest: &digest,
            agreement: uuid::Uuid::parse_str(agreement).expect("agreement id"),
            at,
        },
    )
    .expect("sign");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_stale_forged_and_unsigned_requests_are_refused_and_audited() {
    let fx = GovernanceFixture::start(&[AARHUS, VEJLE], NOW).await;
    publish_air(&fx).await;
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE]))
        .await;
    let agreement = air_agreement(&fx).await;
    let mut vejle = fx.peer(VEJLE, AARHUS).await;

    // The genuine request is answered.
    let first = catalog_signed_with(&vejle, &vejle.key, &agreement, fx.clock.now());
    let mut replay = Request::new(first.get_ref().clone());
    *replay.metadata_mut() = first.metadata().clone();
    let answer = vejle
        .client
        .catalog(first)
        .await
        .expect("a signed catalog request is answered")
        .into_inner();
    assert!(answer.datasets.iter().any(|d| d.id == AIR), "{answer:?}");

    // The same bytes again: a replay.
    assert_status(
        vejle.client.catalog(replay).await,
        &[Code::Unauthenticated],
        &["replay"],
    );
    // Signed ten minutes ago (the window is five).
    let stale = catalog_signed_with(
        &vejle,
        &vejle.key,
        &agreement,
        fx.clock.now() - time::Duration::minutes(10),
    );
    assert_status(
        vejle.client.catalog(stale).await,
        &[Code::Unauthenticated],
        &["away from this node's clock"],
    );
    // Signed as Vejle by a key that is not Vejle's (a stolen certificate
    // without the signing key).
    let thief = samvirke_node::identity::generate_signing_key().expect("a key");
    let forged = catalog_signed_with(&vejle, &thief, &agreement, fx.clock.now());
    assert_status(
        vejle.client.catalog(forged).await,
        &[Code::Unauthenticated],
        &["not valid for the caller's key"],
    );
    // Signed by Vejle, but for another provider: not a request to Aarhus.
    let mut elsewhere = vejle.clone();
    elsewhere.provider = SILKEBORG;
    let redirected = catalog_signed_with(&elsewhere, &vejle.key, &agreement, fx.clock.now());
    assert_status(
        vejle.client.catalog(redirected).await,
        &[Code::Unauthenticated],
        &["not valid for the caller's key"],
    );
    // No signature at all.
    assert_status(
        vejle
            .client
            .catalog(pb::PeerCatalogRequest {
                agreement_id: agreement.clone(),
            })
            .await,
        &[Code::Unauthenticated],
        &["not signed"],
    );
    // A fresh signature still works: refusals did not poison the caller.
    vejle
        .catalog(pb::PeerCatalogRequest {
            agreement_id: agreement.clone(),
        })
        .await
        .expect("a fresh signed request is answered");

    let file = export(&fx, AARHUS).await;
    let verified = verify_export(&file, &fx.key(AARHUS).verifying_key())
        .expect("Aarhus's audit export verifies");
    let calls = data_calls(&verified.entries);
    let denied: Vec<&&Entry> = calls.iter().filter(|e| e.outcome == "denied").collect();
    let allowed = calls.iter().filter(|e| e.outcome == "allowed").count();
    assert_eq!(allowed, 2, "{calls:#?}");
    assert_eq!(denied.len(), 5, "{calls:#?}");
    for (entry, reason) in denied.iter().zip([
        "replay",
        "away from this node's clock",
        "not valid for the caller's key",
        "not valid for the caller's key",
        "not signed",
    ]) {
        assert!(entry.detail.contains(reason), "{entry:?} lacks {reason}");
        assert_eq!(entry.caller, Some(VEJLE), "{entry:?}");
        assert_eq!(
            entry.fingerprint,
            fx.node(VEJLE).running.identity.tls.fingerprint.to_string()
        );
        assert_eq!(entry.agreement, agreement);
    }
    fx.shutdown().await;
}

// ---- Receipts and the audit log -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_verify_with_the_roster_and_the_audit_counts_every_call() {
    let fx = GovernanceFixture::start(&[AARHUS, VEJLE], NOW).await;
    let readings = publish_air(&fx).await;
    let roster: Roster = fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE]);
    fx.import_everywhere(&roster).await;
    let agreement = air_agreement(&fx).await;
    let audit_start = {
        let file = export(&fx, AARHUS).await;
        verify_export(&file, &fx.key(AARHUS).verifying_key())
            .expect("verifies")
            .last
    };

    // Through the analyst's path: Vejle asks, keeps the receipt.
    let mut vejle_local = fx.admin(VEJLE).await;
    let asked = ask(&mut vejle_local, ask_aarhus()).await;
    let status = status_of(&asked, AARHUS);
    assert_eq!(status.outcome, pb::PartnerOutcome::Ok as i32, "{status:?}");
    let pm25 = readings
        .iter()
        .filter(|r| r.values.contains_key("pm2_5"))
        .count();
    assert_eq!(asked.readings, pm25);
    let kept = vejle_local
        .get_receipt(pb::GetReceiptRequest {
            id: status.receipt_id.clone(),
        })
        .await
        .expect("Vejle kept the receipt")
        .into_inner();
    let body = kept.body.clone().expect("receipt body");
    assert_eq!(
        (body.provider, body.consumer, body.rows),
        (AARHUS, VEJLE, pm25 as u64)
    );
    assert_eq!(body.agreement_id, agreement);

    // The consumer's own audit log records that source with the receipt
    // it kept.
    let vejle_log = export(&fx, VEJLE).await;
    let vejle_verified =
        verify_export(&vejle_log, &fx.key(VEJLE).verifying_key()).expect("Vejle's export");
    let source = vejle_verified
        .entries
        .iter()
        .find(|e| e.event == "federated_source" && e.caller == Some(AARHUS))
        .expect("a federated_source entry for Aarhus");
    assert_eq!(source.receipt, body.id);
    assert_eq!(source.rows, Some(pm25 as u64));
    assert_eq!(source.outcome, "ok");

    // Offline, with the provider's key as the roster lists it.
    let provider_key = roster.member(AARHUS).expect("Aarhus listed").signing_key;
    let file = receipt::to_file(&kept);
    let parsed = receipt::from_file(&file).expect("the receipt file parses");
    receipt::verify(&parsed, &provider_key, None).expect("the receipt verifies");
    // Another member's key does not verify it.
    let vejle_key = roster.member(VEJLE).expect("Vejle listed").signing_key;
    assert!(receipt::verify(&parsed, &vejle_key, None).is_err());
    // Any one byte changed: not valid.
    let bytes = file.as_bytes();
    for position in 0..bytes.len() {
        let mut damaged = bytes.to_vec();
        damaged[position] ^= 0x01;
        let verdict = std::str::from_utf8(&damaged)
            .map_err(|e| e.to_string())
            .and_then(|text| receipt::from_file(text).map_err(|e| e.to_string()))
            .and_then(|r| receipt::verify(&r, &provider_key, None).map_err(|e| e.to_string()));
        assert!(
            verdict.is_err(),
            "byte {position} ({:?}) changed, yet the receipt verifies",
            bytes[position] as char
        );
    }
    // The receipt is about the answer Vejle got: its encoded body names
    // the request digest the provider recorded.
    assert!(!body.encode_to_vec().is_empty());

    // Direct peer calls, allowed and denied, to count in the audit log.
    let mut vejle = fx.peer(VEJLE, AARHUS).await;
    // The federated question above: the partner's catalog (to find what
    // to ask), then its readings.
    let mut allowed = 2;
    for _ in 0..3 {
        vejle
            .catalog(pb::PeerCatalogRequest {
                agreement_id: agreement.clone(),
            })
            .await
            .expect("catalog under the agreement");
        allowed += 1;
    }
    let answer = peer_query(&mut vejle, &agreement, readings_question())
        .await
        .expect("raw readings under the agreement");
    assert!(answer.receipt.is_some());
    allowed += 1;
    let mut denied = 0;
    // Outside the scope, under an unknown agreement, and an operation the
    // agreement does not grant.
    let mut outside = readings_question();
    outside.dataset_id = "aarhus-noise".to_string();
    assert!(peer_query(&mut vejle, &agreement, outside).await.is_err());
    denied += 1;
    assert!(
        vejle
            .catalog(pb::PeerCatalogRequest {
                agreement_id: uuid::Uuid::now_v7().to_string(),
            })
            .await
            .is_err()
    );
    denied += 1;
    assert!(
        vejle
            .list_pilots(pb::PeerPilotQuery {
                agreement_id: agreement.clone(),
                ..Default::default()
            })
            .await
            .is_err()
    );
    denied += 1;

    let file = export(&fx, AARHUS).await;
    let key = fx.key(AARHUS).verifying_key();
    let verified = verify_export(&file, &key).expect("Aarhus's audit export verifies");
    let ours: Vec<Entry> = verified
        .entries
        .iter()
        .filter(|e| e.seq > audit_start)
        .cloned()
        .collect();
    let calls = data_calls(&ours);
    assert_eq!(
        calls.iter().filter(|e| e.outcome == "allowed").count(),
        allowed,
        "{calls:#?}"
    );
    assert_eq!(
        calls.iter().filter(|e| e.outcome == "denied").count(),
        denied,
        "{calls:#?}"
    );
    // Operator actions are in the same chain: publishing the dataset.
    assert!(
        verified.entries.iter().any(|e| e.event == "admin"
            && e.operation.ends_with("Local/PublishDataset")
            && e.outcome == "accepted"
            && e.detail.contains(AIR)
            && !e.token.is_empty()),
        "{:#?}",
        verified.entries
    );
    // And any call made with an admin token: the ingest.
    assert!(
        verified.entries.iter().any(|e| e.event == "admin"
            && e.operation.ends_with("Local/IngestReadings")
            && e.detail == "admin token used"),
        "{:#?}",
        verified.entries
    );
    // The provider's record of the federated answer names the receipt the
    // consumer kept, with the same digests.
    let recorded = ours
        .iter()
        .find(|e| e.receipt == body.id)
        .expect("the provider recorded the receipt it gave");
    assert_eq!(recorded.request, body.request_digest);
    assert_eq!(recorded.response, body.response_digest);

    // A part of the log says, signed, that the chain went on.
    let part = export_range(&fx, AARHUS, 1, audit_start).await;
    let partial = verify_export(&part, &key).expect("a partial export verifies");
    assert_eq!(partial.last, audit_start);
    assert!(
        partial.checkpoint.chain > audit_start,
        "{:?}",
        partial.checkpoint
    );
    assert_eq!(verified.checkpoint.chain, verified.last);

    // Every single byte flipped: verification fails and names where.
    for position in 0..file.len() {
        let mut damaged = file.clone();
        damaged[position] ^= 0x01;
        let error = verify_export(&damaged, &key)
            .err()
            .unwrap_or_else(|| panic!("byte {position} flipped, yet the export verifies"));
        let text = error.to_string();
        assert!(
            text.contains("entry ")
                || text.contains("line ")
                || text.contains("checkpoint")
                || text.contains("signature"),
            "byte {position}: {text}"
        );
    }
    fx.shutdown().await;
}

// ---- The audit log cannot be flooded ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_calling_over_and_over_adds_a_bounded_number_of_entries() {
    let fx = GovernanceFixture::start(&[AARHUS, VEJLE, SILKEBORG], NOW).await;
    // Silkeborg holds a certificate of the same CA but is in no roster.
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE]))
        .await;
    let limit = samvirke_node::peer::call::DENIED_ENTRIES_PER_MINUTE as usize;
    let mut outsider = fx.peer(SILKEBORG, AARHUS).await;
    let calls = limit + 50;
    for _ in 0..calls {
        let refused = outsider
            .client
            .hello(samvirke_tests::hello_request(None))
            .await
            .expect_err("an outsider is refused");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let file = export(&fx, AARHUS).await;
    let verified = verify_export(&file, &fx.key(AARHUS).verifying_key()).expect("verifies");
    let outsider_fingerprint = fx
        .node(SILKEBORG)
        .running
        .identity
        .tls
        .fingerprint
        .to_string();
    let recorded = verified
        .entries
        .iter()
        .filter(|e| e.fingerprint == outsider_fingerprint && e.outcome == "denied")
        .count();
    assert_eq!(recorded, limit, "{calls} refusals, {recorded} entries");
    fx.shutdown().await;
}
