//! Two node processes serving one municipality from one PostgreSQL
//! database, as an operator runs them behind a load balancer:
//!
//! - readings ingested through one process are queried through the other
//!   (and a dataset published through one is in the other's catalog);
//! - a governance document imported through one process is applied by
//!   the other at once (`LISTEN`/`NOTIFY`), without waiting for a sync;
//! - a signed request answered by one process, replayed byte for byte to
//!   the other, is refused as a replay: the nonce is the database's, not a
//!   process's;
//! - concurrent calls to both processes leave one audit chain, with every
//!   entry of both, that verifies against the node's key.
//!
//! Aarhus runs in this test's process and in a child process started on
//! the same node directory and config; Vejle is the partner.

use std::time::{Duration, Instant};

use samvirke_node::audit::chain::verify_export;
use samvirke_node::data::{Reading, generate, sensor_dataset};
use samvirke_node::devnet::DevStore;
use samvirke_node::governance::{Consumers, DecisionRule, Scope};
use samvirke_node::{peer, wire};
use samvirke_proto::v1 as pb;
use samvirke_tests::node_process::NodeProcess;
use samvirke_tests::{
    GovernanceFixture, SignedPeer, TokenLocalClient, assert_status, ingest, ingest_batches,
    local_client,
};
use time::{Duration as TimeDuration, OffsetDateTime};
use tonic::{Code, Request};

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const AIR: &str = "aarhus-air-quality";

/// How long a change made through one process may take to be seen by the
/// other (it is a notification away; this bounds a slow machine).
const PROPAGATION: Duration = Duration::from_secs(15);

/// Not a test: the entry point of the second Aarhus process.
#[test]
#[ignore = "the node process the shared-database test starts; not a test by itself"]
fn child_node_process() {
    samvirke_tests::node_process::serve_child_node();
}

/// Polls `check` until it holds or [`PROPAGATION`] has passed.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < PROPAGATION,
            "{what} within {PROPAGATION:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(client: &mut TokenLocalClient) -> u64 {
    client
        .count_readings(pb::CountReadingsRequest {
            dataset_id: AIR.to_string(),
        })
        .await
        .map(|r| r.into_inner().count)
        .unwrap_or(0)
}

fn signed_catalog(vejle: &SignedPeer, agreement: &str) -> Request<pb::PeerCatalogRequest> {
    vejle.sign(
        peer::CATALOG,
        agreement,
        pb::PeerCatalogRequest {
            agreement_id: agreement.to_string(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_processes_share_one_database() {
    // Signed requests carry this process's clock; the child reads the
    // system clock, so "now" here is the real now.
    let now = OffsetDateTime::now_utc();
    let fx = GovernanceFixture::start_on(&[AARHUS, VEJLE], now, DevStore::Postgres).await;
    let aarhus = fx.node(AARHUS);
    let second = NodeProcess::spawn(&aarhus.config.source, &aarhus.admin_token).await;
    let mut first_api = fx.admin(AARHUS).await;
    let mut second_api = local_client(&second.api.endpoint, Some(&second.api.token)).await;

    // A dataset published and readings ingested through the second
    // process are there for the first.
    second_api
        .publish_dataset(wire::dataset_to_proto(
            &sensor_dataset("air-quality", AARHUS).expect("air-quality dataset"),
        ))
        .await
        .expect("publish through the second process");
    let (from, until) = (now - TimeDuration::days(2), now - TimeDuration::days(1));
    let readings: Vec<Reading> = generate("air-quality", AARHUS, 8, from, until, 0x5ea1)
        .expect("generate")
        .collect();
    ingest(&mut second_api, ingest_batches(AIR, &readings, 400))
        .await
        .expect("ingest through the second process");
    let expected = readings.len() as u64;
    assert_eq!(count(&mut second_api).await, expected);
    eventually(
        "the first process sees the dataset and its readings",
        || {
            let mut api = first_api.clone();
            async move { count(&mut api).await == expected }
        },
    )
    .await;
    let mut rows = 0;
    let mut stream = first_api
        .query_readings(pb::ReadingQuery {
            dataset_id: AIR.to_string(),
            from: Some(wire::timestamp(from)),
            until: Some(wire::timestamp(until)),
            ..Default::default()
        })
        .await
        .expect("query through the first process")
        .into_inner();
    while let Some(chunk) = stream.message().await.expect("the rows stream") {
        rows += chunk.readings.len();
    }
    assert_eq!(
        rows as u64, expected,
        "every reading, read through the other process"
    );

    // Governance imported through the first process is applied by the
    // second at once: Vejle's signed request is allowed there.
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE]))
        .await;
    let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
    terms.scope = Scope {
        datasets: vec![AIR.to_string()],
        kinds: Vec::new(),
        keywords: Vec::new(),
    };
    terms.valid_from = now - TimeDuration::days(30);
    terms.valid_until = now + TimeDuration::days(30);
    let agreement = fx.agreement(&terms, &[AARHUS, VEJLE]);
    for code in [AARHUS, VEJLE] {
        fx.import_agreement(code, &agreement.to_bytes())
            .await
            .unwrap_or_else(|s| panic!("{code} imports the agreement: {s:?}"));
    }
    let agreement = agreement.id().to_string();
    let vejle_to_first = fx.peer(VEJLE, AARHUS).await;
    let vejle_to_second = fx.peer_at(VEJLE, AARHUS, &second.peer_endpoint()).await;
    eventually("the second process applies the agreement", || {
        let mut peer = vejle_to_second.clone();
        let request = signed_catalog(&vejle_to_second, &agreement);
        async move { peer.client.catalog(request).await.is_ok() }
    })
    .await;

    // A request answered by the first process is refused by the second.
    let genuine = signed_catalog(&vejle_to_first, &agreement);
    let mut replay = Request::new(genuine.get_ref().clone());
    *replay.metadata_mut() = genuine.metadata().clone();
    let answer = vejle_to_first
        .client
        .clone()
        .catalog(genuine)
        .await
        .expect("the first process answers the signed request")
        .into_inner();
    assert!(answer.datasets.iter().any(|d| d.id == AIR), "{answer:?}");
    assert_status(
        vejle_to_second.client.clone().catalog(replay).await,
        &[Code::Unauthenticated],
        &["replay"],
    );

    // Concurrent calls to both processes: one chain.
    let before = first_api
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    // Twelve at once to each process: under the per-caller limit of 16
    // calls in progress, so every one is answered and audited.
    let calls = 24;
    let mut tasks = Vec::new();
    for i in 0..calls {
        let peer = if i % 2 == 0 {
            vejle_to_first.clone()
        } else {
            vejle_to_second.clone()
        };
        let request = signed_catalog(&peer, &agreement);
        tasks.push(tokio::spawn(async move {
            let mut client = peer.client.clone();
            client.catalog(request).await.map(|_| ())
        }));
    }
    for task in tasks {
        task.await
            .expect("the call task")
            .expect("every concurrent signed call is answered");
    }
    let mut export = Vec::new();
    let mut stream = second_api
        .export_audit(pb::ExportAuditRequest { from: 1, to: 0 })
        .await
        .expect("ExportAudit through the second process")
        .into_inner();
    while let Some(chunk) = stream.message().await.expect("the export stream") {
        export.extend_from_slice(&chunk.data);
    }
    let verified = verify_export(&export, &fx.key(AARHUS).verifying_key())
        .expect("one audit chain, written by both processes, verifies");
    assert_eq!(verified.first, 1);
    let answered = verified
        .entries
        .iter()
        .filter(|e| e.event == "peer_call" && e.operation.starts_with(peer::CATALOG))
        .count();
    // The concurrent calls, the genuine one, the refused replay and the
    // polls that waited for the agreement: at least the calls made here.
    assert!(
        answered >= calls + 2,
        "{answered} catalog calls in the chain, expected at least {}: {before:?}",
        calls + 2
    );
    let seqs: Vec<u64> = verified.entries.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the chain is numbered without gaps or repeats"
    );
}
