//! Aggregate-only agreements against a partner trying to recover
//! individual readings, end to end: Aarhus (751) serves, Vejle (630) asks
//! through the peer API with its own certificate, all on real nodes sharing
//! one manual clock.
//!
//! Covered (each the way an attacker would try it):
//! - differencing by time: the same aggregate with `until` (and `from`)
//!   1 ms apart, at hundreds of points, over all sensors and per sensor,
//!   on an open and on a personal dataset: answers never differ by less
//!   than whole released buckets, so no subtraction isolates a reading;
//! - differencing by arrival: an aggregate asked before and after a new
//!   reading lands in the newest (still filling) hour is the same answer;
//!   once the hour has settled, it is answered, reading included;
//! - differencing by sensors and area: any sensor or area filter is refused;
//! - a bucket with one thin cell (three sensors in one hour) is withheld
//!   whole, at every bucket size that contains that hour, so the thin hour
//!   cannot be had as "the day minus the other hours";
//! - the grid: buckets finer than, or not a multiple of, the agreement's
//!   cell are refused; answers say which grid and range they come from;
//! - per-sensor aggregates only where granted, never for personal data;
//! - no min/max for personal data, no distinct-sensor or withheld-bucket
//!   counts at all;
//! - calibrated noise with a privacy budget on a personal dataset;
//! - and aggregate-only answers stay useful: grid buckets over enough
//!   sensors come back, equal to the exact local aggregate.

use std::collections::BTreeMap;

use samvirke_node::data::{Reading, generate, sensor_dataset};
use samvirke_node::governance::agreement::{AggregateTerms, NoiseTerms};
use samvirke_node::governance::{Agreement, Consumers, DecisionRule, Operation, Scope};
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_tests::{
    Answer, GovernanceFixture, assert_denied, assert_status, ingest, ingest_batches, local_query,
    peer_query,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tonic::Code;

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;

/// "Now": the readings run on past it (sensors report ahead of the
/// clock by less than the day a node accepts).
const NOW: OffsetDateTime = datetime!(2026-03-02 12:30 UTC);
const DATA_FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const DATA_UNTIL: OffsetDateTime = datetime!(2026-03-02 18:00 UTC);
const SEED: u64 = 0x0a99;

const AIR: &str = "aarhus-air-quality";
const INDOOR: &str = "aarhus-indoor-climate";
const BINS: &str = "aarhus-bins";
const OCCUPANTS: &str = "occupants";
const MIN_GROUP: u32 = 5;

fn dataset(kind: &str) -> pb::Dataset {
    wire::dataset_to_proto(&sensor_dataset(kind, AARHUS).expect("dataset"))
}

/// Indoor climate with a personal measure; classified personal.
fn indoor_dataset() -> pb::Dataset {
    let mut d = dataset("indoor-climate");
    d.classification = "personal".to_string();
    d.schema.push(pb::SchemaField {
        name: OCCUPANTS.to_string(),
        r#type: "number".to_string(),
        unit: "count".to_string(),
        personal: true,
    });
    d
}

/// Waste bins reporting once an hour, so one hour can be made thin.
fn bins_dataset() -> pb::Dataset {
    let mut d = dataset("waste-bin-fill");
    d.id = BINS.to_string();
    d.update_interval_seconds = 3600;
    d
}

/// Six bins at :05 every hour of 2026-03-01 and -02, except that at 03:05
/// on the first day only three of them report.
fn bin_readings() -> Vec<Reading> {
    let mut out = Vec::new();
    let mut hour = DATA_FROM;
    while hour < datetime!(2026-03-03 00:00 UTC) {
        for bin in 0..6 {
            if hour == datetime!(2026-03-01 03:00 UTC) && bin >= 3 {
                continue;
            }
            let mut values = BTreeMap::new();
            values.insert("fill_level".to_string(), 10.0 + f64::from(bin));
            out.push(Reading {
                sensor_id: format!("bin-{bin}"),
                at: hour + Duration::minutes(5),
                values,
                location: Some((56.15, 10.2)),
            });
        }
        hour += Duration::HOUR;
    }
    out
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

fn start_of(bucket: &pb::Bucket) -> OffsetDateTime {
    wire::time_of("start", bucket.start.as_ref().expect("start")).expect("time")
}

type Key = (OffsetDateTime, String, String);

fn key(b: &pb::Bucket) -> Key {
    (start_of(b), b.sensor_id.clone(), b.measure.clone())
}

/// The differencing check between two answers to questions that differ by
/// a millisecond: every bucket both have is identical, and a bucket only
/// one has is a whole released bucket (it describes at least the minimum
/// group). So subtracting one answer from the other yields whole buckets
/// or nothing, never a part smaller than the minimum group.
fn assert_no_partial_difference(a: &Answer, b: &Answer, what: &str) {
    let a_by: BTreeMap<Key, &pb::Bucket> = a.buckets.iter().map(|x| (key(x), x)).collect();
    let b_by: BTreeMap<Key, &pb::Bucket> = b.buckets.iter().map(|x| (key(x), x)).collect();
    for (k, x) in &a_by {
        match b_by.get(k) {
            Some(y) => assert_eq!(x, y, "{what}: the same bucket differs between answers"),
            None => assert!(x.count >= u64::from(MIN_GROUP), "{what}: {x:?}"),
        }
    }
    for (k, y) in &b_by {
        if !a_by.contains_key(k) {
            assert!(y.count >= u64::from(MIN_GROUP), "{what}: {y:?}");
        }
    }
}

/// Aarhus with its three datasets and readings; Vejle; one roster.
struct World {
    fx: GovernanceFixture,
    air: Vec<Reading>,
    indoor: Vec<Reading>,
}

impl World {
    async fn start() -> World {
        let fx = GovernanceFixture::start(&[AARHUS, VEJLE], NOW).await;
        fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE]))
            .await;
        let mut admin = fx.admin(AARHUS).await;
        for d in [dataset("air-quality"), indoor_dataset(), bins_dataset()] {
            admin.publish_dataset(d).await.expect("publish");
        }
        let air: Vec<Reading> = generate("air-quality", AARHUS, 12, DATA_FROM, DATA_UNTIL, SEED)
            .expect("air")
            .collect();
        let indoor: Vec<Reading> =
            generate("indoor-climate", AARHUS, 8, DATA_FROM, DATA_UNTIL, SEED)
                .expect("indoor")
                .map(|mut r| {
                    let co2 = r.values.get("co2").copied().unwrap_or(420.0);
                    r.values.insert(
                        OCCUPANTS.to_string(),
                        ((co2 - 420.0) / 60.0).round().max(0.0),
                    );
                    r
                })
                .collect();
        for (id, readings) in [(AIR, &air), (INDOOR, &indoor), (BINS, &bin_readings())] {
            ingest(&mut admin, ingest_batches(id, readings, 1_000))
                .await
                .unwrap_or_else(|s| panic!("ingest {id}: {s:?}"));
        }
        World { fx, air, indoor }
    }

    /// Aarhus shares `datasets` with Vejle, aggregate-only, on `grid`.
    async fn agreement(&self, datasets: &[&str], grid: AggregateTerms) -> Agreement {
        let mut terms = self.fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
        terms.scope = Scope {
            datasets: datasets.iter().map(|d| d.to_string()).collect(),
            kinds: Vec::new(),
            keywords: Vec::new(),
        };
        terms.operations = vec![Operation::Catalog, Operation::Aggregate];
        terms.min_group_size = Some(MIN_GROUP);
        terms.valid_from = datetime!(2026-01-01 00:00 UTC);
        terms.valid_until = datetime!(2027-01-01 00:00 UTC);
        terms.aggregate = grid;
        let agreement = self.fx.agreement(&terms, &[AARHUS, VEJLE]);
        self.fx
            .import_agreement(AARHUS, &agreement.to_bytes())
            .await
            .expect("Aarhus imports the agreement");
        agreement
    }
}

fn per_sensor_grid() -> AggregateTerms {
    AggregateTerms {
        per_sensor: true,
        ..AggregateTerms::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differencing_windows_a_millisecond_apart_recovers_no_reading() {
    let world = World::start().await;
    let agreement = world.agreement(&[AIR, INDOOR], per_sensor_grid()).await;
    let id = agreement.id().to_string();
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let ms = Duration::milliseconds(1);

    let mut compared = 0;
    let mut released = 0;
    let cases = [
        (AIR, "1h", pb::Grouping::AllSensors),
        (AIR, "1h", pb::Grouping::PerSensor),
        (AIR, "2h", pb::Grouping::AllSensors),
        (INDOOR, "1h", pb::Grouping::AllSensors),
    ];
    for (dataset, bucket, grouping) in cases {
        // Every 53 minutes over a day and a half: on, just before and just
        // after readings and hour boundaries alike.
        let mut t = DATA_FROM + Duration::minutes(61);
        while t < datetime!(2026-03-02 12:00 UTC) {
            let base = aggregated(question(dataset, DATA_FROM, t), bucket, grouping);
            let mut later = base.clone();
            later.until = Some(wire::timestamp(t + ms));
            let mut earlier_start = base.clone();
            earlier_start.from = Some(wire::timestamp(DATA_FROM - ms));
            let a = peer_query(&mut vejle, &id, base.clone()).await.expect("a");
            for (what, other) in [("until + 1 ms", later), ("from - 1 ms", earlier_start)] {
                let b = peer_query(&mut vejle, &id, other).await.expect("b");
                assert_no_partial_difference(
                    &a,
                    &b,
                    &format!("{dataset} {bucket} {grouping:?} at {t}: {what}"),
                );
                compared += 1;
            }
            released += a.buckets.len();
            t += Duration::minutes(53);
        }
    }
    assert!(compared > 250, "{compared}");
    // Still useful: plenty of buckets came back.
    assert!(released > 1_000, "{released}");

    // The same answer whatever millisecond the window ends on inside an
    // hour: both snap to whole buckets.
    let q = |until| {
        aggregated(
            question(AIR, DATA_FROM, until),
            "1h",
            pb::Grouping::AllSensors,
        )
    };
    let at_10_00 = peer_query(&mut vejle, &id, q(datetime!(2026-03-01 10:00 UTC)))
        .await
        .expect("10:00");
    let at_10_17 = peer_query(&mut vejle, &id, q(datetime!(2026-03-01 10:17 UTC)))
        .await
        .expect("10:17");
    // One more hour: its three measures.
    assert_eq!(at_10_17.buckets.len(), at_10_00.buckets.len() + 3);
    assert_eq!(
        at_10_00.buckets[..],
        at_10_17.buckets[..at_10_00.buckets.len()]
    );

    // Every aggregate answered is in the audit log with its parameters
    // (not only in a log line a partner could flood).
    let mut export = world
        .fx
        .admin(AARHUS)
        .await
        .export_audit(pb::ExportAuditRequest { from: 1, to: 0 })
        .await
        .expect("ExportAudit")
        .into_inner();
    let mut file = Vec::new();
    while let Some(chunk) = export.message().await.expect("the export") {
        file.extend_from_slice(&chunk.data);
    }
    let verified =
        samvirke_node::audit::chain::verify_export(&file, &world.fx.key(AARHUS).verifying_key())
            .expect("the audit export verifies");
    let answered: Vec<_> = verified
        .entries
        .iter()
        .filter(|e| {
            e.event == "peer_call"
                && e.outcome == "allowed"
                && e.operation.starts_with(samvirke_node::peer::QUERY_READINGS)
        })
        .collect();
    assert_eq!(answered.len(), compared + compared / 2 + 2);
    for entry in &answered {
        assert!(
            entry.detail.starts_with("aggregate-only: ")
                && entry.detail.contains(" grid, ")
                && entry.detail.contains("groups of at least 5"),
            "{entry:?}"
        );
    }
    world.fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_landing_in_the_newest_hour_changes_no_answer_until_the_hour_settles() {
    let world = World::start().await;
    let agreement = world.agreement(&[AIR], AggregateTerms::default()).await;
    let id = agreement.id().to_string();
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let mut admin = world.fx.admin(AARHUS).await;
    let q = aggregated(
        question(AIR, DATA_FROM, DATA_UNTIL),
        "1h",
        pb::Grouping::AllSensors,
    );

    let before = peer_query(&mut vejle, &id, q.clone())
        .await
        .expect("before");
    // 12:30 now, settle 1h: the last hour answered is 10:00-11:00.
    let last = before.buckets.last().expect("buckets");
    assert_eq!(start_of(last), datetime!(2026-03-02 10:00 UTC));
    let terms = before
        .terms
        .clone()
        .expect("aggregate-only answers carry their terms");
    assert_eq!(terms.cell, "1h");
    assert_eq!(
        wire::time_of("until", terms.until.as_ref().expect("until")).expect("t"),
        datetime!(2026-03-02 11:00 UTC)
    );
    assert_eq!(terms.min_group_size, MIN_GROUP);

    // One more reading lands in the hour still filling (12:20), and one in
    // the hour that ended but has not settled (11:20).
    let mut reading = world.air[0].clone();
    reading.sensor_id = "late-sensor".to_string();
    for at in [
        datetime!(2026-03-02 12:20 UTC),
        datetime!(2026-03-02 11:20 UTC),
    ] {
        reading.at = at;
        ingest(
            &mut admin,
            ingest_batches(AIR, std::slice::from_ref(&reading), 1),
        )
        .await
        .expect("ingest one reading");
        let after = peer_query(&mut vejle, &id, q.clone()).await.expect("after");
        assert_eq!(after.buckets, before.buckets, "a reading at {at} showed");
    }

    // Two hours on, both hours have settled and are answered, each from
    // every reading in it, the new one included.
    world.fx.set_now(datetime!(2026-03-02 14:30 UTC));
    let settled = peer_query(&mut vejle, &id, q.clone())
        .await
        .expect("settled");
    let starts: Vec<OffsetDateTime> = settled.buckets.iter().map(start_of).collect();
    assert!(starts.contains(&datetime!(2026-03-02 11:00 UTC)));
    assert!(starts.contains(&datetime!(2026-03-02 12:00 UTC)));
    let local = local_query(&mut admin, q_local(&q, datetime!(2026-03-02 13:00 UTC)))
        .await
        .expect("local");
    let hour_12 = |answer: &Answer| {
        answer
            .buckets
            .iter()
            .filter(|b| start_of(b) == datetime!(2026-03-02 12:00 UTC))
            .map(|b| (b.measure.clone(), b.count, b.sum))
            .collect::<Vec<_>>()
    };
    assert_eq!(hour_12(&settled), hour_12(&local));
    world.fx.shutdown().await;
}

/// `q` as the local API would be asked for the same buckets up to `until`.
fn q_local(q: &pb::ReadingQuery, until: OffsetDateTime) -> pb::ReadingQuery {
    let mut local = q.clone();
    local.until = Some(wire::timestamp(until));
    local.measures = vec!["pm2_5".to_string(), "pm10".to_string(), "no2".to_string()];
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thin_hour_withholds_every_bucket_that_contains_it() {
    let world = World::start().await;
    let agreement = world.agreement(&[BINS], AggregateTerms::default()).await;
    let id = agreement.id().to_string();
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let mut admin = world.fx.admin(AARHUS).await;
    let thin = datetime!(2026-03-01 03:00 UTC);
    let day = question(BINS, DATA_FROM, datetime!(2026-03-02 00:00 UTC));

    for bucket in ["1h", "2h", "6h", "1d"] {
        let q = aggregated(day.clone(), bucket, pb::Grouping::AllSensors);
        let got = peer_query(&mut vejle, &id, q.clone()).await.expect("bins");
        let local = local_query(&mut admin, q).await.expect("local");
        let size = Duration::seconds(match bucket {
            "1h" => 3600,
            "2h" => 7200,
            "6h" => 21600,
            _ => 86400,
        });
        // Exactly the local buckets, minus the one holding the thin hour.
        let expected: Vec<pb::Bucket> = local
            .buckets
            .iter()
            .filter(|b| !(start_of(b) <= thin && thin < start_of(b) + size))
            .map(|b| pb::Bucket {
                distinct_sensors: None,
                ..b.clone()
            })
            .collect();
        assert_eq!(got.buckets, expected, "{bucket}");
        assert_eq!(got.buckets.len() + 1, local.buckets.len(), "{bucket}");
        assert_eq!(got.suppressed, 0, "no count of withheld buckets");
        assert!(got.buckets.iter().all(|b| b.distinct_sensors.is_none()));
        // An open dataset: min and max are things' values, and are shown.
        assert!(
            got.buckets
                .iter()
                .all(|b| b.min.is_some() && b.max.is_some())
        );
    }
    // The second day has no thin hour: its day bucket is released.
    let q = aggregated(
        question(
            BINS,
            datetime!(2026-03-02 00:00 UTC),
            datetime!(2026-03-02 10:00 UTC),
        ),
        "1d",
        pb::Grouping::AllSensors,
    );
    world.fx.set_now(datetime!(2026-03-04 00:00 UTC));
    let got = peer_query(&mut vejle, &id, q).await.expect("day two");
    assert_eq!(got.buckets.len(), 1);
    assert_eq!(got.buckets[0].count, 24 * 6);
    world.fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_by_sensor_area_grouping_or_a_finer_bucket_is_refused() {
    let world = World::start().await;
    let plain = world
        .agreement(&[AIR, INDOOR], AggregateTerms::default())
        .await;
    let granted = world.agreement(&[AIR, INDOOR], per_sensor_grid()).await;
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let all = question(AIR, DATA_FROM, datetime!(2026-03-02 00:00 UTC));
    let id = plain.id().to_string();

    let mut one_sensor = aggregated(all.clone(), "1h", pb::Grouping::AllSensors);
    one_sensor.sensor_ids = vec![world.air[0].sensor_id.clone()];
    assert_denied(
        peer_query(&mut vejle, &id, one_sensor).await,
        &["allows only aggregates over all sensors"],
    );
    let mut area = aggregated(all.clone(), "1h", pb::Grouping::AllSensors);
    area.area = Some(pb::reading_query::Area::Radius(pb::Radius {
        lat: 56.15,
        lon: 10.2,
        km: 1.0,
    }));
    assert_denied(
        peer_query(&mut vejle, &id, area).await,
        &["allows only aggregates over all sensors"],
    );
    assert_denied(
        peer_query(
            &mut vejle,
            &id,
            aggregated(all.clone(), "1h", pb::Grouping::PerSensor),
        )
        .await,
        &["does not grant per-sensor aggregates"],
    );
    for bucket in ["15m", "90m"] {
        assert_denied(
            peer_query(
                &mut vejle,
                &id,
                aggregated(all.clone(), bucket, pb::Grouping::AllSensors),
            )
            .await,
            &["is not a whole multiple of the 1h grid cell"],
        );
    }
    assert_denied(
        peer_query(&mut vejle, &id, all.clone()).await,
        &["allows only aggregates", "ask with a bucket"],
    );

    // Granted per sensor: an open dataset's sensors come back one by one,
    // each hour from its own six readings; a personal dataset never.
    let id = granted.id().to_string();
    let per_sensor = peer_query(
        &mut vejle,
        &id,
        aggregated(all.clone(), "1h", pb::Grouping::PerSensor),
    )
    .await
    .expect("per sensor");
    assert!(!per_sensor.buckets.is_empty());
    assert!(
        per_sensor
            .buckets
            .iter()
            .all(|b| !b.sensor_id.is_empty() && b.count >= u64::from(MIN_GROUP))
    );
    assert_denied(
        peer_query(
            &mut vejle,
            &id,
            aggregated(
                question(INDOOR, DATA_FROM, datetime!(2026-03-02 00:00 UTC)),
                "1h",
                pb::Grouping::PerSensor,
            ),
        )
        .await,
        &["classified personal", "group over all sensors"],
    );
    world.fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_personal_dataset_gives_no_extremes_and_no_personal_measure() {
    let world = World::start().await;
    let agreement = world.agreement(&[INDOOR], AggregateTerms::default()).await;
    let id = agreement.id().to_string();
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let mut admin = world.fx.admin(AARHUS).await;
    let q = aggregated(
        question(INDOOR, DATA_FROM, datetime!(2026-03-02 00:00 UTC)),
        "1h",
        pb::Grouping::AllSensors,
    );
    let got = peer_query(&mut vejle, &id, q.clone())
        .await
        .expect("indoor");
    assert_eq!(
        got.buckets.len(),
        24 * 3,
        "co2, temperature, humidity each hour"
    );
    let mut local_q = q.clone();
    local_q.measures = vec!["co2".into(), "temperature".into(), "humidity".into()];
    let local = local_query(&mut admin, local_q).await.expect("local");
    for (peer, local) in got.buckets.iter().zip(&local.buckets) {
        assert_eq!(
            (peer.min, peer.max, peer.distinct_sensors),
            (None, None, None)
        );
        assert_eq!(
            (key(peer), peer.count, peer.sum, peer.avg),
            (key(local), local.count, local.sum, local.avg)
        );
    }
    assert!(got.buckets.iter().all(|b| b.measure != OCCUPANTS));
    assert_denied(
        peer_query(
            &mut vejle,
            &id,
            pb::ReadingQuery {
                measures: vec![OCCUPANTS.to_string()],
                ..q
            },
        )
        .await,
        &["measure `occupants` is not available"],
    );
    assert!(!world.indoor.is_empty());
    world.fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_perturbs_personal_aggregates_and_spends_a_budget() {
    let world = World::start().await;
    let mut bounds = BTreeMap::new();
    bounds.insert("co2".to_string(), (400.0, 2000.0));
    bounds.insert("temperature".to_string(), (10.0, 35.0));
    let agreement = world
        .agreement(
            &[INDOOR],
            AggregateTerms {
                noise: Some(NoiseTerms {
                    epsilon: 1.0,
                    budget: 3.0,
                    bounds,
                }),
                ..AggregateTerms::default()
            },
        )
        .await;
    let id = agreement.id().to_string();
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let mut admin = world.fx.admin(AARHUS).await;
    let q = pb::ReadingQuery {
        measures: vec!["co2".to_string()],
        ..aggregated(
            question(INDOOR, DATA_FROM, datetime!(2026-03-02 00:00 UTC)),
            "1h",
            pb::Grouping::AllSensors,
        )
    };
    // A measure without a noise range is not answered, and costs nothing.
    assert_denied(
        peer_query(
            &mut vejle,
            &id,
            pb::ReadingQuery {
                measures: vec!["humidity".to_string()],
                ..q.clone()
            },
        )
        .await,
        &[
            "measure `humidity` has no noise range",
            "gives ranges for: co2, temperature",
        ],
    );
    let exact = local_query(&mut admin, q.clone()).await.expect("local");
    let mut spent = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..3 {
        let mut stream = vejle
            .query_readings(pb::PeerReadingQuery {
                agreement_id: id.clone(),
                query: Some(q.clone()),
            })
            .await
            .expect("noisy answer")
            .into_inner();
        let mut buckets = Vec::new();
        while let Some(chunk) = stream.message().await.expect("chunk") {
            if let Some(terms) = chunk.terms {
                spent.push((terms.epsilon_spent, terms.budget_left));
            }
            buckets.extend(chunk.buckets);
        }
        assert_eq!(buckets.len(), exact.buckets.len());
        let perturbed = buckets
            .iter()
            .zip(&exact.buckets)
            .filter(|(noisy, exact)| noisy.count != exact.count || noisy.sum != exact.sum)
            .count();
        assert!(
            perturbed * 10 >= buckets.len() * 9,
            "{perturbed} of {}",
            buckets.len()
        );
        for (noisy, exact) in buckets.iter().zip(&exact.buckets) {
            assert_eq!(
                (noisy.min, noisy.max, noisy.distinct_sensors),
                (None, None, None)
            );
            errors.push((noisy.avg - exact.avg).abs());
        }
    }
    // Still useful: a typical hourly average (96 readings) is off by tens
    // of ppm CO2, not hundreds.
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    assert!(median < 100.0, "median error {median} ppm");
    assert_eq!(spent, vec![(1.0, 2.0), (1.0, 1.0), (1.0, 0.0)]);
    assert_status(
        peer_query(&mut vejle, &id, q).await,
        &[Code::ResourceExhausted],
        &["the privacy budget under agreement", "is spent"],
    );
    world.fx.shutdown().await;
}

/// Per-sensor aggregates granted: a sensor that reported only once in an
/// hour is withheld from the per-sensor answer, so the all-sensors bucket
/// of that hour minus the per-sensor buckets would be its reading. Every
/// all-sensors bucket released is therefore exactly the sum of released
/// per-sensor buckets, and the hour with the thin sensor is withheld.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sensors_minus_per_sensor_buckets_isolates_no_thin_sensor() {
    let world = World::start().await;
    let thin_hour = datetime!(2026-03-01 05:00 UTC);
    let mut values = BTreeMap::new();
    for measure in ["pm2_5", "pm10", "no2"] {
        values.insert(measure.to_string(), 77.0);
    }
    let lone = Reading {
        sensor_id: "air-lone".to_string(),
        at: thin_hour + Duration::minutes(20),
        values,
        location: Some((56.15, 10.2)),
    };
    let mut admin = world.fx.admin(AARHUS).await;
    ingest(&mut admin, ingest_batches(AIR, &[lone], 1))
        .await
        .expect("the lone reading");
    let agreement = world.agreement(&[AIR], per_sensor_grid()).await;
    let id = agreement.id().to_string();
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let day = question(AIR, DATA_FROM, datetime!(2026-03-02 00:00 UTC));

    let all = peer_query(
        &mut vejle,
        &id,
        aggregated(day.clone(), "1h", pb::Grouping::AllSensors),
    )
    .await
    .expect("all sensors");
    let per_sensor = peer_query(
        &mut vejle,
        &id,
        aggregated(day, "1h", pb::Grouping::PerSensor),
    )
    .await
    .expect("per sensor");
    let mut parts: BTreeMap<(OffsetDateTime, String), u64> = BTreeMap::new();
    for b in &per_sensor.buckets {
        *parts.entry((start_of(b), b.measure.clone())).or_default() += b.count;
    }
    assert!(all.buckets.len() > 60, "{}", all.buckets.len());
    for b in &all.buckets {
        assert_eq!(
            Some(&b.count),
            parts.get(&(start_of(b), b.measure.clone())),
            "nothing hides behind the released parts: {b:?}"
        );
    }
    assert!(
        all.buckets.iter().all(|b| start_of(b) != thin_hour),
        "the hour with a thin sensor is withheld over all sensors"
    );
    assert!(
        all.buckets
            .iter()
            .any(|b| start_of(b) == thin_hour + Duration::HOUR)
    );
    world.fx.shutdown().await;
}

/// Two aggregate-only agreements on the same data with different grid
/// cells (2 h and 3 h): their buckets overlap by single hours, so one
/// answer minus the other would isolate the thin 03:00 hour of the bins
/// that each cell alone hides. Both answers are held to the combined grid
/// (1 h cells, the larger minimum group): no bucket holding the thin hour
/// comes back from either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agreements_with_different_grids_cannot_be_subtracted() {
    let world = World::start().await;
    let grid = |hours: i64| AggregateTerms {
        cell: Duration::hours(hours),
        ..AggregateTerms::default()
    };
    let two = world.agreement(&[BINS], grid(2)).await;
    let three = world.agreement(&[BINS], grid(3)).await;
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let day = question(BINS, DATA_FROM, datetime!(2026-03-02 00:00 UTC));
    let thin = datetime!(2026-03-01 03:00 UTC);
    for (agreement, bucket, hours) in [(&two, "2h", 2), (&three, "3h", 3), (&two, "6h", 6)] {
        let got = peer_query(
            &mut vejle,
            &agreement.id().to_string(),
            aggregated(day.clone(), bucket, pb::Grouping::AllSensors),
        )
        .await
        .unwrap_or_else(|s| panic!("{bucket}: {s:?}"));
        let size = Duration::hours(hours);
        assert!(
            got.buckets
                .iter()
                .all(|b| !(start_of(b) <= thin && thin < start_of(b) + size)),
            "{bucket}: a bucket holding the thin hour came back"
        );
        // The rest of the day does.
        assert_eq!(
            got.buckets.len(),
            (24 / hours as usize - 1),
            "{bucket}: {:?}",
            got.buckets.iter().map(start_of).collect::<Vec<_>>()
        );
        assert!(got.buckets.iter().all(|b| b.count >= u64::from(MIN_GROUP)));
    }
    // The finer grid of one agreement is no way around the other's: a 1 h
    // bucket is refused under both.
    for agreement in [&two, &three] {
        assert_denied(
            peer_query(
                &mut vejle,
                &agreement.id().to_string(),
                aggregated(day.clone(), "1h", pb::Grouping::AllSensors),
            )
            .await,
            &["is not a whole multiple of the"],
        );
    }
    world.fx.shutdown().await;
}
