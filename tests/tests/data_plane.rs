//! The data plane, end to end: real nodes (devnet, real sled stores, real
//! mutual TLS on loopback) on one manual clock. Aarhus (751) publishes
//! datasets and ingests readings and records through its local API; Vejle
//! (630) and Albertslund (165) ask for them through the peer API under
//! signed agreements.
//!
//! Covered:
//! - local `QueryReadings`, raw and aggregated, against a brute-force answer
//!   over the same generated readings: time ranges on bucket boundaries,
//!   sensor subsets, boxes, radii (haversine), measures, both orders,
//!   limits, 15m / 1h / 1d buckets per sensor and over all sensors;
//! - an aggregate-only agreement: no raw readings, small groups suppressed
//!   and counted, no per-sensor buckets of a personal dataset;
//! - a read agreement: the local answer minus withheld fields;
//! - personal and excluded fields absent from every peer answer: catalog,
//!   readings, buckets, pilots and procurements;
//! - ingest: a batch with one bad reading is refused whole and named,
//!   earlier batches of the stream stay; re-ingesting does not duplicate;
//! - the codes and messages of bad publishes, ingests and record puts.

use std::collections::{BTreeMap, BTreeSet};

use samvirke_node::data::record_fixtures::{fixture_pilots, fixture_procurements};
use samvirke_node::data::{Reading, generate, sensor_dataset};
use samvirke_node::governance::{Agreement, Consumers, DecisionRule, Operation, Scope};
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_proto::v1::reading_query::Area;
use samvirke_tests::{
    Answer, GovernanceFixture, TokenLocalClient, assert_denied, assert_status, count_readings,
    ingest, ingest_batches, local_query, peer_query,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tonic::Code;

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const ALBERTSLUND: u32 = 165;

/// "Now" on every node: a week after the readings.
const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
/// The air-quality readings span [DATA_FROM, DATA_UNTIL).
const DATA_FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const DATA_UNTIL: OffsetDateTime = datetime!(2026-03-03 00:00 UTC);
const AIR_SENSORS: u32 = 12;
const INDOOR_SENSORS: u32 = 6;
const SEED: u64 = 0x5a_4d_76_69;

const AIR: &str = "aarhus-air-quality";
const INDOOR: &str = "aarhus-indoor-climate";
const NOISE: &str = "aarhus-noise";
const PILOTS: &str = "aarhus-pilots";
const PROCUREMENTS: &str = "aarhus-procurements";

/// The personal measure of the indoor-climate dataset.
const OCCUPANTS: &str = "occupants";
/// What the agreements exclude: a measure and record fields.
const READ_EXCLUDED: [&str; 4] = ["no2", "findings", "value_dkk", "suppliers"];
const AGGREGATE_EXCLUDED: [&str; 1] = ["no2"];
const MIN_GROUP: u32 = 5;

// ---- Setup -----------------------------------------------------------------

/// Aarhus's node (and any partners) with its datasets published, readings
/// ingested and records stored, all through the local API.
struct World {
    fx: GovernanceFixture,
    /// The air-quality readings as generated.
    air: Vec<Reading>,
    /// The indoor-climate readings as ingested (with occupants).
    indoor: Vec<Reading>,
}

impl World {
    async fn start(codes: &[u32]) -> World {
        let fx = GovernanceFixture::start(codes, NOW).await;
        let mut admin = fx.admin(AARHUS).await;
        for dataset in [
            air_dataset(),
            indoor_dataset(),
            noise_dataset(),
            pilot_dataset(PILOTS),
            procurement_dataset(),
        ] {
            let id = dataset.id.clone();
            let published = admin
                .publish_dataset(dataset.clone())
                .await
                .unwrap_or_else(|s| panic!("publish `{id}`: {s:?}"))
                .into_inner();
            assert_eq!(
                published, dataset,
                "PublishDataset answers the entry as stored"
            );
        }

        let air = air_readings();
        let indoor = indoor_readings();
        for (dataset, readings, size) in [(AIR, &air, 500), (INDOOR, &indoor, 300)] {
            let batches = ingest_batches(dataset, readings, size);
            let expected_batches = batches.len() as u64;
            let totals = ingest(&mut admin, batches)
                .await
                .unwrap_or_else(|s| panic!("ingest into `{dataset}`: {s:?}"));
            assert_eq!(totals.batches, expected_batches);
            assert_eq!(totals.readings, readings.len() as u64);
            assert_eq!(
                (totals.inserted, totals.replaced),
                (readings.len() as u64, 0)
            );
            assert_eq!(
                count_readings(&mut admin, dataset).await,
                readings.len() as u64
            );
        }

        for pilot in fixture_pilots(PILOTS) {
            let replaced = admin
                .put_pilot(pilot.clone())
                .await
                .unwrap_or_else(|s| panic!("PutPilot `{}`: {s:?}", pilot.id))
                .into_inner()
                .replaced;
            assert!(!replaced);
        }
        for procurement in fixture_procurements(PROCUREMENTS) {
            admin
                .put_procurement(procurement.clone())
                .await
                .unwrap_or_else(|s| panic!("PutProcurement `{}`: {s:?}", procurement.id));
        }
        World { fx, air, indoor }
    }

    async fn admin(&self) -> TokenLocalClient {
        self.fx.admin(AARHUS).await
    }

    async fn shutdown(self) {
        self.fx.shutdown().await;
    }
}

/// The three nodes, one roster of all three pinned everywhere, and at
/// Aarhus two agreements: `aggregate` (catalog + aggregate, min group 5,
/// for Vejle and Albertslund, no `no2`) and `read` (catalog + read, for
/// Vejle only, no `no2`, `findings`, `value_dkk`, `suppliers`).
struct Federation {
    world: World,
    aggregate: Agreement,
    read: Agreement,
}

impl Federation {
    async fn start() -> Federation {
        let world = World::start(&[AARHUS, VEJLE, ALBERTSLUND]).await;
        let fx = &world.fx;
        fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE, ALBERTSLUND]))
            .await;

        let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE, ALBERTSLUND]));
        terms.scope = Scope {
            datasets: vec![AIR.to_string(), INDOOR.to_string()],
            kinds: Vec::new(),
            keywords: Vec::new(),
        };
        terms.operations = vec![Operation::Catalog, Operation::Aggregate];
        terms.min_group_size = Some(MIN_GROUP);
        terms.excluded_fields = AGGREGATE_EXCLUDED.iter().map(|f| f.to_string()).collect();
        terms.valid_from = datetime!(2026-01-01 00:00 UTC);
        terms.valid_until = datetime!(2027-01-01 00:00 UTC);
        let aggregate = fx.agreement(&terms, &[AARHUS, VEJLE, ALBERTSLUND]);

        let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
        terms.scope = Scope {
            datasets: vec![
                AIR.to_string(),
                INDOOR.to_string(),
                PILOTS.to_string(),
                PROCUREMENTS.to_string(),
            ],
            kinds: Vec::new(),
            keywords: Vec::new(),
        };
        terms.operations = vec![Operation::Catalog, Operation::Read];
        terms.excluded_fields = READ_EXCLUDED.iter().map(|f| f.to_string()).collect();
        terms.valid_from = datetime!(2026-01-01 00:00 UTC);
        terms.valid_until = datetime!(2027-01-01 00:00 UTC);
        let read = fx.agreement(&terms, &[AARHUS, VEJLE]);

        for agreement in [&aggregate, &read] {
            let info = fx
                .import_agreement(AARHUS, &agreement.to_bytes())
                .await
                .expect("Aarhus imports the agreement")
                .agreement
                .expect("agreement info");
            assert_eq!(info.status, "active", "{info:?}");
        }
        Federation {
            world,
            aggregate,
            read,
        }
    }
}

fn air_dataset() -> pb::Dataset {
    wire::dataset_to_proto(&sensor_dataset("air-quality", AARHUS).expect("air-quality dataset"))
}

fn noise_dataset() -> pb::Dataset {
    wire::dataset_to_proto(&sensor_dataset("noise", AARHUS).expect("noise dataset"))
}

/// Indoor climate with a personal measure, `occupants`; classified personal.
fn indoor_dataset() -> pb::Dataset {
    let mut dataset = wire::dataset_to_proto(
        &sensor_dataset("indoor-climate", AARHUS).expect("indoor-climate dataset"),
    );
    dataset.classification = "personal".to_string();
    dataset.schema.push(pb::SchemaField {
        name: OCCUPANTS.to_string(),
        r#type: "number".to_string(),
        unit: "count".to_string(),
        personal: true,
    });
    dataset
}

fn field(name: &str, kind: &str, unit: &str, personal: bool) -> pb::SchemaField {
    pb::SchemaField {
        name: name.to_string(),
        r#type: kind.to_string(),
        unit: unit.to_string(),
        personal,
    }
}

/// Pilot results; `owner` (who ran the pilot) is marked personal.
fn pilot_dataset(id: &str) -> pb::Dataset {
    pb::Dataset {
        id: id.to_string(),
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

/// 12 air-quality sensors every 10 minutes for two days: 3456 readings.
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
    assert_eq!(readings.len(), 12 * 288);
    readings
}

/// 6 indoor-climate sensors every 5 minutes for 12 hours, each reading
/// with a made-up `occupants` count: 864 readings.
fn indoor_readings() -> Vec<Reading> {
    generate(
        "indoor-climate",
        AARHUS,
        INDOOR_SENSORS,
        DATA_FROM,
        DATA_FROM + Duration::hours(12),
        SEED,
    )
    .expect("generate indoor climate")
    .map(|mut r| {
        let co2 = r.values.get("co2").copied().unwrap_or(420.0);
        r.values.insert(
            OCCUPANTS.to_string(),
            ((co2 - 420.0) / 60.0).round().max(0.0),
        );
        r
    })
    .collect()
}

// ---- Questions and brute-force answers ---------------------------------------

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

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Great-circle distance, as the node's contract states it: haversine on a
/// sphere of radius 6371.0088 km.
fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * 6371.0088 * h.sqrt().min(1.0).asin()
}

fn in_area(area: Option<&Area>, location: Option<(f64, f64)>) -> bool {
    match (area, location) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(Area::Bbox(b)), Some((lat, lon))) => {
            (b.min_lat..=b.max_lat).contains(&lat) && (b.min_lon..=b.max_lon).contains(&lon)
        }
        (Some(Area::Radius(r)), Some(point)) => haversine_km((r.lat, r.lon), point) <= r.km,
    }
}

/// The time of a protobuf timestamp field.
macro_rules! time_of {
    ($at:expr) => {
        wire::time_of("time", $at.as_ref().expect("a time")).expect("a valid time")
    };
}

/// The readings `q` selects from `data`, each narrowed to the asked
/// measures (readings left with none dropped), in time order (sensor id
/// order within an instant), before order and limit.
fn selected(data: &[Reading], q: &pb::ReadingQuery) -> Vec<Reading> {
    let from = time_of!(q.from);
    let until = time_of!(q.until);
    let mut rows: Vec<Reading> = data
        .iter()
        .filter(|r| r.at >= from && r.at < until)
        .filter(|r| q.sensor_ids.is_empty() || q.sensor_ids.contains(&r.sensor_id))
        .filter(|r| in_area(q.area.as_ref(), r.location))
        .filter_map(|r| {
            let mut r = r.clone();
            if !q.measures.is_empty() {
                r.values.retain(|name, _| q.measures.contains(name));
            }
            (!r.values.is_empty()).then_some(r)
        })
        .collect();
    rows.sort_by(|a, b| (a.at, &a.sensor_id).cmp(&(b.at, &b.sensor_id)));
    rows
}

fn descending(q: &pb::ReadingQuery) -> bool {
    q.order == pb::Order::Descending as i32
}

/// The raw answer to `q` over `data`, computed the obvious way.
fn expected_readings(data: &[Reading], q: &pb::ReadingQuery) -> Vec<pb::Reading> {
    let mut rows = selected(data, q);
    if descending(q) {
        // Latest first; within an instant still by sensor id.
        rows.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.sensor_id.cmp(&b.sensor_id)));
    }
    if q.limit > 0 {
        rows.truncate(q.limit as usize);
    }
    rows.into_iter().map(wire::reading_to_proto).collect()
}

fn bucket_seconds(bucket: &str) -> i64 {
    match bucket {
        "15m" => 900,
        "1h" => 3600,
        "1d" => 86_400,
        other => panic!("no brute-force size for bucket `{other}`"),
    }
}

/// The aggregate answer to `q` over `data` (whose measures, in schema
/// order, are `measures`), computed the obvious way.
fn expected_buckets(
    data: &[Reading],
    measures: &[String],
    q: &pb::ReadingQuery,
) -> Vec<pb::Bucket> {
    let size = bucket_seconds(&q.bucket);
    let per_sensor = q.grouping == pb::Grouping::PerSensor as i32;
    type Key = (i64, Option<String>, usize);
    let mut groups: BTreeMap<Key, (Vec<f64>, BTreeSet<String>)> = BTreeMap::new();
    for r in selected(data, q) {
        let start = r.at.unix_timestamp().div_euclid(size) * size;
        for (name, value) in &r.values {
            let m = measures
                .iter()
                .position(|x| x == name)
                .expect("a measure of the dataset");
            let sensor = per_sensor.then(|| r.sensor_id.clone());
            let group = groups.entry((start, sensor, m)).or_default();
            group.0.push(*value);
            group.1.insert(r.sensor_id.clone());
        }
    }
    let mut buckets: Vec<pb::Bucket> = groups
        .into_iter()
        .map(|((start, sensor, m), (values, sensors))| {
            let sum: f64 = values.iter().sum();
            pb::Bucket {
                start: Some(wire::timestamp(
                    OffsetDateTime::from_unix_timestamp(start).expect("bucket start"),
                )),
                sensor_id: sensor.unwrap_or_default(),
                measure: measures[m].clone(),
                count: values.len() as u64,
                min: Some(values.iter().copied().fold(f64::INFINITY, f64::min)),
                max: Some(values.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
                sum,
                avg: sum / values.len() as f64,
                distinct_sensors: Some(sensors.len() as u32),
            }
        })
        .collect();
    if descending(q) {
        // Stable: within a bucket, the ascending order of sensor and measure.
        buckets.sort_by_key(|b| std::cmp::Reverse(b.start.map(|t| t.seconds)));
    }
    if q.limit > 0 {
        buckets.truncate(q.limit as usize);
    }
    buckets
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_same_readings(got: &[pb::Reading], expected: &[pb::Reading], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: reading counts differ");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(g, e, "{what}: reading {i} differs");
    }
}

fn assert_same_buckets(got: &[pb::Bucket], expected: &[pb::Bucket], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}: bucket counts differ");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        let same = g.start == e.start
            && g.sensor_id == e.sensor_id
            && g.measure == e.measure
            && g.count == e.count
            && g.min == e.min
            && g.max == e.max
            && g.distinct_sensors == e.distinct_sensors
            && close(g.sum, e.sum)
            && close(g.avg, e.avg);
        assert!(
            same,
            "{what}: bucket {i}:\n got      {g:?}\n expected {e:?}"
        );
    }
}

fn air_measures() -> Vec<String> {
    strings(&["pm2_5", "pm10", "no2"])
}

fn sensor_ids(data: &[Reading]) -> Vec<String> {
    data.iter()
        .map(|r| r.sensor_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Named query shapes over the air-quality data: every filter alone, on
/// bucket boundaries, and together.
fn shapes(air: &[Reading]) -> Vec<(&'static str, pb::ReadingQuery)> {
    let sensors = sensor_ids(air);
    let mut located: Vec<(f64, f64)> = sensors
        .iter()
        .map(|id| {
            air.iter()
                .find(|r| &r.sensor_id == id)
                .and_then(|r| r.location)
                .expect("generated readings have a location")
        })
        .collect();
    located.sort_by(|a, b| a.0.total_cmp(&b.0));
    // A box from the southernmost sensor up to exactly the median one's
    // latitude: edges are inclusive, so the median sensor is inside.
    let median = located[located.len() / 2];
    let bbox = Area::Bbox(pb::BoundingBox {
        min_lat: located[0].0 - 0.01,
        min_lon: located.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) - 0.01,
        max_lat: median.0,
        max_lon: located
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max)
            + 0.01,
    });
    let town = samvirke_node::fixtures::municipality(AARHUS).expect("Aarhus");
    let radius = Area::Radius(pb::Radius {
        lat: town.lat,
        lon: town.lon,
        km: 3.0,
    });

    let all = question(AIR, DATA_FROM, DATA_UNTIL);
    // Wider than the data on both sides.
    let wide = question(
        AIR,
        DATA_FROM - Duration::days(3),
        DATA_UNTIL + Duration::days(3),
    );
    // On hour and quarter-hour boundaries, with readings at both ends.
    let boundaries = question(
        AIR,
        datetime!(2026-03-01 06:00 UTC),
        datetime!(2026-03-02 06:00 UTC),
    );
    let mut subset = all.clone();
    subset.sensor_ids = vec![
        sensors[1].clone(),
        sensors[4].clone(),
        sensors[10].clone(),
        "aarhus-air-quality-999".to_string(),
    ];
    let mut in_box = all.clone();
    in_box.area = Some(bbox);
    let mut in_radius = all.clone();
    in_radius.area = Some(radius);
    let mut some_measures = all.clone();
    some_measures.measures = strings(&["no2", "pm2_5"]);
    let mut everything = boundaries.clone();
    everything.sensor_ids = sensors[..8].to_vec();
    everything.area = Some(radius);
    everything.measures = strings(&["pm10"]);
    vec![
        ("all", all),
        ("wide", wide),
        ("boundaries", boundaries),
        ("subset", subset),
        ("bbox", in_box),
        ("radius", in_radius),
        ("measures", some_measures),
        ("combined", everything),
    ]
}

// ---- 1. Local answers against brute force ------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_raw_queries_match_a_brute_force_answer() {
    let world = World::start(&[AARHUS]).await;
    let mut admin = world.admin().await;
    let total = world.air.len();

    for (name, base) in shapes(&world.air) {
        let full = expected_readings(&world.air, &base);
        assert!(!full.is_empty(), "{name}: the shape selects something");
        match name {
            "all" | "wide" => assert_eq!(full.len(), total),
            "subset" | "bbox" | "radius" | "combined" => {
                assert!(full.len() < total, "{name}: the filter leaves some out")
            }
            _ => {}
        }
        let mid = u32::try_from(full.len() / 2).expect("fits");
        let beyond = u32::try_from(full.len() + 1000).expect("fits");
        for order in [pb::Order::Ascending, pb::Order::Descending] {
            for limit in [0, 1, mid, beyond] {
                let mut q = base.clone();
                q.order = order as i32;
                q.limit = limit;
                let what = format!("{name} {order:?} limit {limit}");
                let got = local_query(&mut admin, q.clone())
                    .await
                    .unwrap_or_else(|s| panic!("{what}: {s:?}"));
                assert_same_readings(&got.readings, &expected_readings(&world.air, &q), &what);
                assert!(got.buckets.is_empty() && got.suppressed == 0, "{what}");
                if got.readings.len() > 1000 {
                    assert!(got.chunks > 1, "{what}: large answers come in chunks");
                }
            }
        }
    }

    // The boundaries in detail: `from` is included, `until` is not.
    let boundaries = question(
        AIR,
        datetime!(2026-03-01 06:00 UTC),
        datetime!(2026-03-02 06:00 UTC),
    );
    let got = local_query(&mut admin, boundaries.clone())
        .await
        .expect("boundaries")
        .readings;
    let first = time_of!(got[0].at);
    let last = time_of!(got[got.len() - 1].at);
    assert_eq!(first, datetime!(2026-03-01 06:00 UTC));
    assert_eq!(last, datetime!(2026-03-02 05:50 UTC));
    assert_eq!(got.len(), 144 * AIR_SENSORS as usize);
    let mut newest_first = boundaries;
    newest_first.order = pb::Order::Descending as i32;
    newest_first.limit = 1;
    let got = local_query(&mut admin, newest_first).await.expect("newest");
    assert_eq!(got.readings.len(), 1);
    assert_eq!(
        time_of!(got.readings[0].at),
        datetime!(2026-03-02 05:50 UTC)
    );

    // An empty range is an empty answer, not an error.
    let empty = question(AIR, DATA_UNTIL, DATA_UNTIL + Duration::days(1));
    let got = local_query(&mut admin, empty).await.expect("empty range");
    assert!(got.readings.is_empty());
    world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_aggregates_match_a_brute_force_answer() {
    let world = World::start(&[AARHUS]).await;
    let mut admin = world.admin().await;
    let measures = air_measures();

    let mut compared = 0;
    for (name, base) in shapes(&world.air) {
        if name == "wide" {
            continue;
        }
        for bucket in ["15m", "1h", "1d"] {
            for grouping in [pb::Grouping::AllSensors, pb::Grouping::PerSensor] {
                let full = expected_buckets(
                    &world.air,
                    &measures,
                    &aggregated(base.clone(), bucket, grouping),
                );
                assert!(!full.is_empty(), "{name} {bucket}");
                let mid = u32::try_from(full.len() / 2).expect("fits").max(1);
                for (order, limit) in [
                    (pb::Order::Ascending, 0),
                    (pb::Order::Descending, 0),
                    (pb::Order::Ascending, 1),
                    (pb::Order::Descending, mid),
                    (
                        pb::Order::Ascending,
                        u32::try_from(full.len() + 7).expect("fits"),
                    ),
                ] {
                    let mut q = aggregated(base.clone(), bucket, grouping);
                    q.order = order as i32;
                    q.limit = limit;
                    let what = format!("{name} {bucket} {grouping:?} {order:?} limit {limit}");
                    let got = local_query(&mut admin, q.clone())
                        .await
                        .unwrap_or_else(|s| panic!("{what}: {s:?}"));
                    assert!(got.readings.is_empty(), "{what}: buckets only");
                    assert_eq!(got.suppressed, 0, "{what}: nothing suppressed locally");
                    assert_same_buckets(
                        &got.buckets,
                        &expected_buckets(&world.air, &measures, &q),
                        &what,
                    );
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 7 * 3 * 2 * 5);

    // Spot checks the brute force itself relies on: over all 12 sensors a
    // whole hour holds 6 readings each, and the first 1h bucket of a range
    // starting on the hour starts exactly there.
    let q = aggregated(
        question(
            AIR,
            datetime!(2026-03-01 06:00 UTC),
            datetime!(2026-03-02 06:00 UTC),
        ),
        "1h",
        pb::Grouping::AllSensors,
    );
    let got = local_query(&mut admin, q).await.expect("hourly");
    assert_eq!(got.buckets.len(), 24 * 3);
    assert_eq!(
        time_of!(got.buckets[0].start),
        datetime!(2026-03-01 06:00 UTC)
    );
    for b in &got.buckets {
        assert_eq!(
            (b.count, b.distinct_sensors),
            (72, Some(AIR_SENSORS)),
            "{b:?}"
        );
        assert!(b.sensor_id.is_empty());
    }
    world.shutdown().await;
}

// ---- 2. Aggregate-only and read agreements over the peer API -----------------

/// The local answer to `q` as a read agreement withholding `withheld`
/// should give it: the same question with the measures narrowed.
async fn local_minus(
    admin: &mut TokenLocalClient,
    q: &pb::ReadingQuery,
    all_measures: &[String],
    withheld: &[&str],
) -> Answer {
    let mut narrowed = q.clone();
    if narrowed.measures.is_empty() {
        narrowed.measures = all_measures.to_vec();
    }
    narrowed
        .measures
        .retain(|m| !withheld.contains(&m.as_str()));
    assert!(!narrowed.measures.is_empty(), "the test asks for something");
    local_query(admin, narrowed).await.expect("local answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_agreement_returns_the_local_answer_minus_withheld_fields() {
    let fed = Federation::start().await;
    let world = &fed.world;
    let mut admin = world.admin().await;
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let agreement = fed.read.id().to_string();
    let air_measures = air_measures();
    let indoor_measures = strings(&["co2", "temperature", "humidity", OCCUPANTS]);

    let mut raw: Vec<(String, pb::ReadingQuery)> = shapes(&world.air)
        .into_iter()
        .map(|(name, q)| (name.to_string(), q))
        .collect();
    let mut newest = question(AIR, DATA_FROM, DATA_UNTIL);
    newest.order = pb::Order::Descending as i32;
    newest.limit = 250;
    raw.push(("newest 250".to_string(), newest));
    let mut only_pm10 = question(AIR, DATA_FROM, DATA_UNTIL);
    only_pm10.measures = strings(&["pm10"]);
    only_pm10.limit = 1;
    raw.push(("pm10, limit 1".to_string(), only_pm10));
    // Naming a withheld measure is refused, naming it, rather than silently
    // answering with the rest.
    let mut with_no2 = question(AIR, DATA_FROM, DATA_UNTIL);
    with_no2.measures = strings(&["no2", "pm10"]);
    assert_denied(
        peer_query(&mut vejle, &agreement, with_no2).await,
        &["measure `no2` is not available", "available: pm2_5, pm10"],
    );
    for (what, mut q) in raw {
        // An analyst leaves withheld measures out (naming one is refused, above).
        q.measures.retain(|m| !READ_EXCLUDED.contains(&m.as_str()));
        let expected = local_minus(&mut admin, &q, &air_measures, &READ_EXCLUDED).await;
        let got = peer_query(&mut vejle, &agreement, q.clone())
            .await
            .unwrap_or_else(|s| panic!("{what}: {s:?}"));
        assert!(!got.readings.is_empty(), "{what}");
        assert_same_readings(&got.readings, &expected.readings, &what);
        for r in &got.readings {
            assert!(!r.values.contains_key("no2"), "{what}: {r:?}");
            assert!(r.location.is_some(), "{what}: location is not withheld");
        }
        // And the same as stripping the excluded measure from the local
        // answer to the question as asked (every reading has every measure).
        let mut stripped = local_query(&mut admin, q.clone()).await.expect("local");
        for r in &mut stripped.readings {
            r.values.remove("no2");
        }
        stripped.readings.retain(|r| !r.values.is_empty());
        assert_same_readings(&got.readings, &stripped.readings, &what);
    }

    // The personal dataset: raw readings without the personal measure.
    let indoor = question(INDOOR, DATA_FROM, DATA_UNTIL);
    let expected = local_minus(&mut admin, &indoor, &indoor_measures, &[OCCUPANTS]).await;
    let got = peer_query(&mut vejle, &agreement, indoor.clone())
        .await
        .expect("indoor raw");
    assert_eq!(got.readings.len(), world.indoor.len());
    assert_same_readings(&got.readings, &expected.readings, "indoor");
    assert!(
        got.readings
            .iter()
            .all(|r| !r.values.contains_key(OCCUPANTS) && r.values.len() == 3)
    );

    // Aggregates under a read agreement: nothing suppressed (even per
    // sensor, even of the personal dataset), withheld measures absent.
    for (q, withheld) in [
        (
            aggregated(
                question(AIR, DATA_FROM, DATA_UNTIL),
                "15m",
                pb::Grouping::PerSensor,
            ),
            vec!["no2"],
        ),
        (
            aggregated(
                question(AIR, DATA_FROM, DATA_UNTIL),
                "1h",
                pb::Grouping::AllSensors,
            ),
            vec!["no2"],
        ),
        (
            aggregated(indoor.clone(), "15m", pb::Grouping::PerSensor),
            vec![OCCUPANTS],
        ),
    ] {
        let local = local_query(&mut admin, q.clone()).await.expect("local");
        let got = peer_query(&mut vejle, &agreement, q.clone())
            .await
            .unwrap_or_else(|s| panic!("{q:?}: {s:?}"));
        let expected: Vec<pb::Bucket> = local
            .buckets
            .into_iter()
            .filter(|b| !withheld.contains(&b.measure.as_str()))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(got.buckets, expected, "{q:?}");
        assert_eq!(got.suppressed, 0);
    }

    // Albertslund is not a consumer of this agreement.
    let mut albertslund = world.fx.peer(ALBERTSLUND, AARHUS).await;
    assert_denied(
        peer_query(
            &mut albertslund,
            &agreement,
            question(AIR, DATA_FROM, DATA_UNTIL),
        )
        .await,
        &[],
    );
    // A dataset outside the scope is refused, not answered.
    assert_denied(
        peer_query(
            &mut vejle,
            &agreement,
            question(NOISE, DATA_FROM, DATA_UNTIL),
        )
        .await,
        &[],
    );
    fed.world.shutdown().await;
}

// ---- 3. Withheld fields in catalog and records -------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_catalog_lists_covered_datasets_without_withheld_fields() {
    let fed = Federation::start().await;
    let world = &fed.world;
    let mut admin = world.admin().await;
    let local: BTreeMap<String, pb::Dataset> = admin
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .expect("ListDatasets")
        .into_inner()
        .datasets
        .into_iter()
        .map(|d| (d.id.clone(), d))
        .collect();
    assert_eq!(local.len(), 5);

    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    for (agreement, excluded, covered) in [
        (
            &fed.read,
            &READ_EXCLUDED[..],
            vec![AIR, INDOOR, PILOTS, PROCUREMENTS],
        ),
        (&fed.aggregate, &AGGREGATE_EXCLUDED[..], vec![AIR, INDOOR]),
    ] {
        let listed = vejle
            .catalog(pb::PeerCatalogRequest {
                agreement_id: agreement.id().to_string(),
            })
            .await
            .expect("Catalog")
            .into_inner()
            .datasets;
        let ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, covered, "only what the scope covers, sorted by id");
        for dataset in &listed {
            let mut expected = local[&dataset.id].clone();
            expected
                .schema
                .retain(|f| !f.personal && !excluded.contains(&f.name.as_str()));
            assert_eq!(dataset, &expected);
            for f in &dataset.schema {
                assert!(!f.personal, "{}: {f:?}", dataset.id);
                assert!(
                    !excluded.contains(&f.name.as_str()),
                    "{}: {f:?}",
                    dataset.id
                );
            }
        }
        let indoor = listed
            .iter()
            .find(|d| d.id == INDOOR)
            .expect("indoor listed");
        let names: Vec<&str> = indoor.schema.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["co2", "temperature", "humidity"]);
        let air = listed.iter().find(|d| d.id == AIR).expect("air listed");
        let names: Vec<&str> = air.schema.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["pm2_5", "pm10"]);
    }
    fed.world.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_records_lack_withheld_fields_and_need_a_dataset() {
    let fed = Federation::start().await;
    let world = &fed.world;
    let mut admin = world.admin().await;
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;
    let agreement = fed.read.id().to_string();

    // Pilots: `findings` is excluded, `owner` is personal in the schema.
    for filter in [
        pb::PilotFilter {
            dataset_id: PILOTS.to_string(),
            ..Default::default()
        },
        pb::PilotFilter {
            dataset_id: PILOTS.to_string(),
            technology: "sensor".to_string(),
            ..Default::default()
        },
    ] {
        let local = admin
            .list_pilots(filter.clone())
            .await
            .expect("local pilots")
            .into_inner()
            .pilots;
        assert!(!local.is_empty(), "{filter:?}");
        let got = vejle
            .list_pilots(pb::PeerPilotQuery {
                agreement_id: agreement.clone(),
                filter: Some(filter.clone()),
            })
            .await
            .expect("peer pilots")
            .into_inner()
            .pilots;
        let expected: Vec<pb::Pilot> = local
            .iter()
            .cloned()
            .map(|mut p| {
                p.findings.clear();
                p.owner.clear();
                p
            })
            .collect();
        assert_eq!(got, expected, "{filter:?}");
        assert!(
            got.iter()
                .all(|p| p.findings.is_empty() && p.owner.is_empty())
        );
        assert!(
            got.iter()
                .all(|p| !p.title.is_empty() && p.dataset_id == PILOTS)
        );
    }
    let local_pilots = fixture_pilots(PILOTS);
    assert!(local_pilots.iter().any(|p| !p.findings.is_empty()));
    assert!(local_pilots.iter().any(|p| !p.owner.is_empty()));

    // Procurements: `value_dkk` and `suppliers` are excluded.
    let filter = pb::ProcurementFilter {
        dataset_id: PROCUREMENTS.to_string(),
        ..Default::default()
    };
    let local = admin
        .list_procurements(filter.clone())
        .await
        .expect("local procurements")
        .into_inner()
        .procurements;
    assert_eq!(local.len(), fixture_procurements(PROCUREMENTS).len());
    assert!(local.iter().any(|p| p.value_dkk != 0));
    assert!(local.iter().any(|p| !p.suppliers.is_empty()));
    let got = vejle
        .list_procurements(pb::PeerProcurementQuery {
            agreement_id: agreement.clone(),
            filter: Some(filter),
        })
        .await
        .expect("peer procurements")
        .into_inner()
        .procurements;
    let expected: Vec<pb::Procurement> = local
        .into_iter()
        .map(|mut p| {
            p.value_dkk = 0;
            p.suppliers.clear();
            p
        })
        .collect();
    assert_eq!(got, expected);
    assert!(
        got.iter()
            .all(|p| p.value_dkk == 0 && p.suppliers.is_empty())
    );

    // Filtering on a withheld field is refused: which records match would
    // reveal it (a value range halved call by call finds the exact value).
    for filter in [
        pb::ProcurementFilter {
            dataset_id: PROCUREMENTS.to_string(),
            supplier: "kmd".to_string(),
            ..Default::default()
        },
        pb::ProcurementFilter {
            dataset_id: PROCUREMENTS.to_string(),
            min_value_dkk: 100_000_000,
            ..Default::default()
        },
    ] {
        assert_denied(
            vejle
                .list_procurements(pb::PeerProcurementQuery {
                    agreement_id: agreement.clone(),
                    filter: Some(filter),
                })
                .await
                .map(|_| ()),
            &["never leaves this node"],
        );
    }

    // The dataset is required, must be of the right kind, and covered.
    assert_status(
        vejle
            .list_pilots(pb::PeerPilotQuery {
                agreement_id: agreement.clone(),
                filter: Some(pb::PilotFilter::default()),
            })
            .await,
        &[Code::InvalidArgument],
        &["filter.dataset_id", "required"],
    );
    assert_status(
        vejle
            .list_procurements(pb::PeerProcurementQuery {
                agreement_id: agreement.clone(),
                filter: None,
            })
            .await,
        &[Code::InvalidArgument],
        &["filter.dataset_id", "required"],
    );
    assert_status(
        vejle
            .list_pilots(pb::PeerPilotQuery {
                agreement_id: agreement.clone(),
                filter: Some(pb::PilotFilter {
                    dataset_id: AIR.to_string(),
                    ..Default::default()
                }),
            })
            .await,
        &[Code::InvalidArgument],
        &["filter.dataset_id", "sensor"],
    );
    // The aggregate-only agreement neither covers nor reads records.
    assert_denied(
        vejle
            .list_pilots(pb::PeerPilotQuery {
                agreement_id: fed.aggregate.id().to_string(),
                filter: Some(pb::PilotFilter {
                    dataset_id: PILOTS.to_string(),
                    ..Default::default()
                }),
            })
            .await,
        &[],
    );
    fed.world.shutdown().await;
}

/// A raw question under an aggregate-only agreement is refused with the
/// data plane's own explanation (`DisclosureError::RawNotAllowed`): only
/// aggregates, ask with a bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_reads_under_an_aggregate_only_agreement_say_to_ask_for_a_bucket() {
    let fed = Federation::start().await;
    let mut vejle = fed.world.fx.peer(VEJLE, AARHUS).await;
    assert_denied(
        peer_query(
            &mut vejle,
            &fed.aggregate.id().to_string(),
            question(AIR, DATA_FROM, DATA_UNTIL),
        )
        .await,
        &["allows only aggregates", AIR, "ask with a bucket"],
    );
    fed.world.shutdown().await;
}

/// Asking a partner only for measures the agreement withholds must get
/// none of the others (an empty measure list means "all"), and must not
/// reveal that readings of only withheld measures exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_only_for_withheld_measures_gets_none_of_the_others() {
    let fed = Federation::start().await;
    let world = &fed.world;
    let mut admin = world.admin().await;
    let mut vejle = world.fx.peer(VEJLE, AARHUS).await;

    // A flat whose sensor reported only the personal measure.
    let flat = Reading {
        sensor_id: "flat-12".to_string(),
        at: DATA_FROM + Duration::hours(13),
        values: [(OCCUPANTS.to_string(), 2.0)].into(),
        location: Some((56.16, 10.2)),
    };
    ingest(&mut admin, ingest_batches(INDOOR, &[flat], 10))
        .await
        .expect("ingest the flat's reading");

    let mut air = question(AIR, DATA_FROM, DATA_UNTIL);
    air.measures = strings(&["no2"]);
    let mut indoor = question(INDOOR, DATA_FROM, DATA_UNTIL);
    indoor.measures = strings(&[OCCUPANTS]);
    let read = fed.read.id().to_string();
    let aggregate = fed.aggregate.id().to_string();
    let answers = [
        ("raw no2", peer_query(&mut vejle, &read, air.clone()).await),
        (
            "raw occupants",
            peer_query(&mut vejle, &read, indoor.clone()).await,
        ),
        (
            "aggregate no2",
            peer_query(
                &mut vejle,
                &aggregate,
                aggregated(air, "1h", pb::Grouping::AllSensors),
            )
            .await,
        ),
        (
            "aggregate occupants",
            peer_query(
                &mut vejle,
                &aggregate,
                aggregated(indoor, "1h", pb::Grouping::AllSensors),
            )
            .await,
        ),
    ];
    let mut problems = Vec::new();
    for (what, answer) in answers {
        match answer {
            Ok(answer) if answer.readings.is_empty() && answer.buckets.is_empty() => {}
            Ok(answer) => problems.push(format!(
                "{what}: asked only for a withheld measure, got {} readings (first {:?}; \
                 the flat's: {:?}) and {} buckets (first {:?})",
                answer.readings.len(),
                answer.readings.first(),
                answer.readings.iter().find(|r| r.sensor_id == "flat-12"),
                answer.buckets.len(),
                answer.buckets.first()
            )),
            Err(status)
                if matches!(
                    status.code(),
                    Code::PermissionDenied | Code::InvalidArgument
                ) => {}
            Err(status) => problems.push(format!("{what}: {status:?}")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    fed.world.shutdown().await;
}

// ---- 4 and 5. Ingest: bad batches, re-ingest ----------------------------------

/// A reading of the air-quality kind at `at` for sensor `sensor`.
fn air_reading(sensor: &str, at: OffsetDateTime, pm10: f64) -> Reading {
    Reading {
        sensor_id: sensor.to_string(),
        at,
        values: [
            ("pm2_5".to_string(), pm10 / 2.0),
            ("pm10".to_string(), pm10),
            ("no2".to_string(), 20.0),
        ]
        .into(),
        location: Some((56.15, 10.2)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_reading_is_refused_whole_and_earlier_batches_stay() {
    let fx = GovernanceFixture::start(&[AARHUS], NOW).await;
    let mut admin = fx.admin(AARHUS).await;
    admin
        .publish_dataset(air_dataset())
        .await
        .expect("publish air quality");
    let air = air_readings();
    let (stored, later) = air.split_at(1500);
    ingest(&mut admin, ingest_batches(AIR, stored, 500))
        .await
        .expect("the first 1500 readings");
    let everything = question(AIR, DATA_FROM - Duration::days(30), NOW);

    // Ten new readings with one bad one at index 3.
    let fresh = |k: usize| -> Vec<Reading> { later[k * 10..k * 10 + 10].to_vec() };
    type Spoil = fn(&mut Reading);
    let cases: [(&str, Spoil, &str); 4] = [
        (
            "NaN",
            |r| {
                r.values.insert("pm10".to_string(), f64::NAN);
            },
            "values.pm10: NaN is not a finite number",
        ),
        (
            "unknown measure",
            |r| {
                r.values.insert("o3".to_string(), 12.0);
            },
            "values.o3: unknown measure; dataset `aarhus-air-quality` has pm2_5, pm10, no2",
        ),
        (
            "latitude 91",
            |r| {
                r.location = Some((91.0, 10.2));
            },
            "location.lat: 91 is outside -90..=90",
        ),
        (
            "1999",
            |r| {
                r.at = datetime!(1999-12-31 23:59:59 UTC);
            },
            "at: 1999-12-31T23:59:59Z is before 2000-01-01T00:00:00Z",
        ),
    ];
    for (k, (what, spoil, problem)) in cases.into_iter().enumerate() {
        let before_count = count_readings(&mut admin, AIR).await;
        let before = local_query(&mut admin, everything.clone())
            .await
            .expect("before");
        let mut batch = fresh(2 * k);
        spoil(&mut batch[3]);
        let sensor = batch[3].sensor_id.clone();

        // Alone in its stream.
        let message = assert_status(
            ingest(&mut admin, ingest_batches(AIR, &batch, 100)).await,
            &[Code::InvalidArgument],
            &[
                "batch 1: reading[3] (sensor `",
                &sensor,
                problem,
                "nothing of the batch was stored",
            ],
        );
        assert_eq!(
            count_readings(&mut admin, AIR).await,
            before_count,
            "{what}: {message}"
        );
        assert_eq!(
            local_query(&mut admin, everything.clone())
                .await
                .expect("after"),
            before,
            "{what}"
        );

        // Second in a stream of three: the first stays, the third is not read.
        let first = fresh(2 * k + 1);
        let third = vec![air_reading("late-sensor", DATA_FROM, 1.0)];
        let mut batches = ingest_batches(AIR, &first, 100);
        batches.extend(ingest_batches(AIR, &batch, 100));
        batches.extend(ingest_batches(AIR, &third, 100));
        let message = assert_status(
            ingest(&mut admin, batches).await,
            &[Code::InvalidArgument],
            &[
                "batch 2: reading[3] (sensor `",
                &sensor,
                problem,
                "batch 1 (10 readings) before it is stored",
            ],
        );
        assert_eq!(
            count_readings(&mut admin, AIR).await,
            before_count + 10,
            "{what}: {message}"
        );
        let mut expected_data = before.readings.clone();
        expected_data.extend(first.iter().cloned().map(wire::reading_to_proto));
        let after = local_query(&mut admin, everything.clone())
            .await
            .expect("after");
        assert_eq!(after.readings.len(), expected_data.len(), "{what}");
        for r in &first {
            let proto = wire::reading_to_proto(r.clone());
            assert!(after.readings.contains(&proto), "{what}: {r:?} is stored");
        }
        assert!(
            after.readings.iter().all(|r| r.sensor_id != "late-sensor"),
            "{what}: the batch after the bad one is not stored"
        );
    }

    // What is stored equals the brute-force answer over what was accepted.
    let mut accepted: Vec<Reading> = stored.to_vec();
    for k in 0..4 {
        accepted.extend(fresh(2 * k + 1));
    }
    let got = local_query(&mut admin, everything.clone())
        .await
        .expect("final");
    assert_same_readings(
        &got.readings,
        &expected_readings(&accepted, &everything),
        "final",
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reingesting_the_same_readings_does_not_duplicate_them() {
    let fx = GovernanceFixture::start(&[AARHUS], NOW).await;
    let mut admin = fx.admin(AARHUS).await;
    admin
        .publish_dataset(air_dataset())
        .await
        .expect("publish air quality");
    let air = air_readings();
    let n = air.len() as u64;
    let first = ingest(&mut admin, ingest_batches(AIR, &air, 700))
        .await
        .expect("first ingest");
    assert_eq!(
        (
            first.batches,
            first.readings,
            first.inserted,
            first.replaced
        ),
        (5, n, n, 0)
    );
    let everything = question(AIR, DATA_FROM, DATA_UNTIL);
    let before = local_query(&mut admin, everything.clone())
        .await
        .expect("before");
    assert_eq!(count_readings(&mut admin, AIR).await, n);

    // Again, in different batches.
    let again = ingest(&mut admin, ingest_batches(AIR, &air, 1000))
        .await
        .expect("second ingest");
    assert_eq!(
        (
            again.batches,
            again.readings,
            again.inserted,
            again.replaced
        ),
        (4, n, 0, n)
    );
    assert_eq!(count_readings(&mut admin, AIR).await, n);
    assert_eq!(
        local_query(&mut admin, everything.clone())
            .await
            .expect("after"),
        before
    );
    assert_same_readings(
        &before.readings,
        &expected_readings(&air, &everything),
        "stored",
    );
    fx.shutdown().await;
}

// ---- 6. Bad input elsewhere ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_code_and_the_field_at_fault() {
    let fx = GovernanceFixture::start(&[AARHUS], NOW).await;
    let mut admin = fx.admin(AARHUS).await;

    // Datasets with one bad field: the message names it.
    type Spoil = fn(&mut pb::Dataset);
    let cases: [(Spoil, &[&str]); 6] = [
        (
            |d| d.schema[1].unit.clear(),
            &["schema[1].unit", "needs a unit"],
        ),
        (
            |d| d.kind = "video".to_string(),
            &["kind", "`video` is not one of"],
        ),
        (|d| d.id = "Aarhus Air".to_string(), &["id"]),
        (
            |d| d.schema[0].r#type = "float".to_string(),
            &["schema[0].type", "`float`"],
        ),
        (
            |d| d.schema[0].personal = true,
            &["classification", "personal"],
        ),
        (|d| d.update_interval_seconds = 0, &["update_interval_s"]),
    ];
    for (spoil, parts) in cases {
        let mut dataset = air_dataset();
        spoil(&mut dataset);
        assert_status(
            admin.publish_dataset(dataset).await,
            &[Code::InvalidArgument],
            parts,
        );
    }
    let listed = admin
        .list_datasets(pb::ListDatasetsRequest {})
        .await
        .expect("ListDatasets")
        .into_inner()
        .datasets;
    assert!(listed.is_empty(), "nothing bad was published: {listed:?}");

    admin.publish_dataset(air_dataset()).await.expect("publish");
    admin
        .publish_dataset(pilot_dataset(PILOTS))
        .await
        .expect("publish pilots");
    assert_status(
        admin.publish_dataset(air_dataset()).await,
        &[Code::AlreadyExists],
        &[AIR, "already published"],
    );

    // Readings into a dataset that does not exist, or is not a sensor one.
    let readings = vec![air_reading("s-1", DATA_FROM, 3.0)];
    assert_status(
        ingest(&mut admin, ingest_batches("aarhus-nowhere", &readings, 10)).await,
        &[Code::NotFound],
        &["aarhus-nowhere"],
    );
    assert_status(
        ingest(&mut admin, ingest_batches(PILOTS, &readings, 10)).await,
        &[Code::InvalidArgument],
        &[PILOTS, "kind pilot"],
    );
    assert_eq!(count_readings(&mut admin, AIR).await, 0);

    // Records into a dataset that does not exist, or of another kind.
    let pilot = fixture_pilots(PILOTS).remove(0);
    let mut nowhere = pilot.clone();
    nowhere.dataset_id = "aarhus-nowhere".to_string();
    assert_status(
        admin.put_pilot(nowhere).await,
        &[Code::NotFound],
        &["dataset_id", "aarhus-nowhere"],
    );
    let mut into_sensor = pilot.clone();
    into_sensor.dataset_id = AIR.to_string();
    assert_status(
        admin.put_pilot(into_sensor).await,
        &[Code::InvalidArgument],
        &["dataset_id", AIR, "sensor"],
    );
    let mut procurement = fixture_procurements(PILOTS).remove(0);
    procurement.dataset_id = PILOTS.to_string();
    assert_status(
        admin.put_procurement(procurement).await,
        &[Code::InvalidArgument],
        &["dataset_id", PILOTS, "pilot"],
    );
    let stored = admin
        .list_pilots(pb::PilotFilter::default())
        .await
        .expect("ListPilots")
        .into_inner()
        .pilots;
    assert!(stored.is_empty());
    admin
        .put_pilot(pilot)
        .await
        .expect("a pilot where it belongs");

    // Questions about nothing, or naming an unknown measure.
    assert_status(
        local_query(
            &mut admin,
            question("aarhus-nowhere", DATA_FROM, DATA_UNTIL),
        )
        .await,
        &[Code::NotFound],
        &["aarhus-nowhere"],
    );
    let mut q = question(AIR, DATA_FROM, DATA_UNTIL);
    q.measures = strings(&["pm10", "o3"]);
    assert_status(
        local_query(&mut admin, q).await,
        &[Code::InvalidArgument],
        &["measures[1]", "o3"],
    );
    fx.shutdown().await;
}

/// An aggregate that could produce more buckets than a node will hold in
/// memory for one request is refused up front, naming the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_with_too_many_buckets_is_refused() {
    let fed = Federation::start().await;
    let mut admin = fed.world.admin().await;
    // 2 days of 1 s buckets, per sensor, 12 sensors, 3 measures: ~6M buckets.
    let huge = aggregated(
        question(AIR, DATA_FROM, DATA_UNTIL),
        "1s",
        pb::Grouping::PerSensor,
    );
    assert_status(
        local_query(&mut admin, huge).await,
        &[Code::InvalidArgument],
        &["bucket:", "buckets, more than 1000000"],
    );
    fed.world.shutdown().await;
}
