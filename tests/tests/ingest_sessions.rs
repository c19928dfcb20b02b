//! `IngestBatches` and resumable sessions against a real node, as a client
//! trying to get round the rules would use them: batches out of order,
//! another token's session, a read-only token, a bad reading mid-session,
//! numbering gaps without a session. Each refusal has the right code,
//! names the batch, and stores nothing; what was acknowledged stays.

use samvirke_node::data::generate::sensor_dataset;
use samvirke_node::pki::DevCa;
use samvirke_proto::v1 as pb;
use samvirke_tests::{TokenLocalClient, local_client, start_node};
use tonic::Code;

const DATASET: &str = "aarhus-air-quality";

fn reading(sensor: &str, minute: i64, value: f64) -> pb::Reading {
    pb::Reading {
        sensor_id: sensor.to_string(),
        at: Some(samvirke_node::wire::timestamp(
            time::OffsetDateTime::from_unix_timestamp(1_767_225_600 + 60 * minute).expect("a time"),
        )),
        values: [("no2".to_string(), value)].into_iter().collect(),
        location: None,
    }
}

/// Batch `sequence` of ten readings, distinct per sequence.
fn batch(session: &str, sequence: u64) -> pb::IngestBatch {
    pb::IngestBatch {
        dataset_id: DATASET.to_string(),
        readings: (0..10)
            .map(|i| reading("s-1", sequence as i64 * 10 + i, i as f64))
            .collect(),
        sequence,
        session_id: session.to_string(),
        restart: false,
    }
}

/// Sends `batches` in one call; the acknowledgements, and the error that
/// ended the call if one did.
async fn call(
    client: &mut TokenLocalClient,
    batches: Vec<pb::IngestBatch>,
) -> (Vec<pb::IngestAck>, Option<tonic::Status>) {
    let mut acks = match client.ingest_batches(tokio_stream::iter(batches)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut got = Vec::new();
    loop {
        match acks.message().await {
            Ok(Some(ack)) => got.push(ack),
            Ok(None) => return (got, None),
            Err(status) => return (got, Some(status)),
        }
    }
}

async fn count(client: &mut TokenLocalClient) -> u64 {
    client
        .count_readings(pb::CountReadingsRequest {
            dataset_id: DATASET.to_string(),
        })
        .await
        .expect("CountReadings")
        .into_inner()
        .count
}

async fn session(client: &mut TokenLocalClient, id: &str) -> pb::IngestSessionResponse {
    client
        .ingest_session(pb::IngestSessionRequest {
            session_id: id.to_string(),
        })
        .await
        .expect("IngestSession")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refuse_what_would_make_resuming_lie() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("Test CA").expect("CA");
    let node = start_node(
        &dir.path().join("751"),
        &ca,
        751,
        &[
            ("sensors", &["ingest"]),
            ("loader", &["ingest"]),
            ("dashboard", &["read"]),
        ],
    )
    .await;
    let endpoint = node.running.local_endpoint();
    let mut admin = local_client(&endpoint, Some(&node.admin_token)).await;
    admin
        .publish_dataset(samvirke_node::wire::dataset_to_proto(
            &sensor_dataset("air-quality", 751).expect("dataset"),
        ))
        .await
        .expect("publish");
    let mut sensors = local_client(&endpoint, Some(&node.extra_tokens[0])).await;
    let mut loader = local_client(&endpoint, Some(&node.extra_tokens[1])).await;
    let mut dashboard = local_client(&endpoint, Some(&node.extra_tokens[2])).await;

    // Batches 1 and 2 of session S, each acknowledged once durable.
    let (acks, error) = call(&mut sensors, vec![batch("S", 1), batch("S", 2)]).await;
    assert!(error.is_none(), "{error:?}");
    let acked: Vec<(u64, u64, u64)> = acks
        .iter()
        .map(|a| (a.sequence, a.inserted, a.session_acked))
        .collect();
    assert_eq!(acked, vec![(1, 10, 1), (2, 10, 2)]);
    assert_eq!(count(&mut admin).await, 20);

    // Skipping batch 3 would let a resuming client skip it for good.
    let (acks, error) = call(&mut sensors, vec![batch("S", 4)]).await;
    let error = error.expect("a gap is refused");
    assert!(acks.is_empty());
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(
        error.message().starts_with(
            "batch 4: out of order in session `S`: the node has batches 1..=2 of it stored, so \
             the next batch is 3"
        ),
        "{error:?}"
    );
    // Resending a stored batch under the session would count it twice.
    let (_, error) = call(&mut sensors, vec![batch("S", 2)]).await;
    assert_eq!(error.expect("a repeat").code(), Code::FailedPrecondition);
    assert_eq!(count(&mut admin).await, 20, "nothing of either stored");

    // Another token neither sees nor advances this token's session.
    let theirs = session(&mut loader, "S").await;
    assert!(!theirs.found, "{theirs:?}");
    let (_, error) = call(&mut loader, vec![batch("S", 3)]).await;
    let error = error.expect("not its session");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains("next batch is 1"), "{error:?}");
    assert_eq!(session(&mut sensors, "S").await.acked, 2);

    // A read-only token can do neither.
    let (_, error) = call(&mut dashboard, vec![batch("D", 1)]).await;
    assert_eq!(error.expect("read only").code(), Code::PermissionDenied);
    let denied = dashboard
        .ingest_session(pb::IngestSessionRequest {
            session_id: "S".to_string(),
        })
        .await
        .expect_err("read only");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A bad reading in batch 4 after a good batch 3: batch 3 stays
    // acknowledged and stored, nothing of batch 4 is stored, and the
    // session stops at 3.
    let mut bad = batch("S", 4);
    bad.readings[7].values.insert("no2".to_string(), f64::NAN);
    let (acks, error) = call(&mut sensors, vec![batch("S", 3), bad, batch("S", 5)]).await;
    assert_eq!(acks.iter().map(|a| a.sequence).collect::<Vec<_>>(), vec![3]);
    let error = error.expect("a bad reading");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(
        error.message().starts_with("batch 4: reading[7]"),
        "{error:?}"
    );
    assert!(
        error
            .message()
            .contains("the 1 batches acknowledged before it (the last was batch 3"),
        "{error:?}"
    );
    assert_eq!(count(&mut admin).await, 30);
    let state = session(&mut sensors, "S").await;
    assert_eq!((state.found, state.acked, state.readings), (true, 3, 30));
    assert_eq!(state.chain.len(), 32);

    // Bad session ids are named.
    let (_, error) = call(&mut sensors, vec![batch("../etc", 1)]).await;
    let error = error.expect("bad id");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("session_id: contains '/'"),
        "{error:?}"
    );

    // Without a session the call's own numbering must run 1, 2, ...
    let mut unnumbered = batch("", 0);
    unnumbered.readings = vec![reading("s-2", 0, 1.0)];
    let mut gap = batch("", 3);
    gap.readings = vec![reading("s-2", 1, 1.0)];
    let (acks, error) = call(&mut sensors, vec![unnumbered, gap]).await;
    assert_eq!(acks.iter().map(|a| a.sequence).collect::<Vec<_>>(), vec![1]);
    let error = error.expect("a numbering gap");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error
            .message()
            .contains("sequence: batch 3 follows batch 1"),
        "{error:?}"
    );
    assert_eq!(count(&mut admin).await, 31);

    node.running.shutdown().await.expect("shutdown");
}
