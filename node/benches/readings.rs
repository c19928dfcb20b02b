//! Readings: ingest throughput and range query / aggregation latency over
//! the sled store.
//!
//! Run: `cargo bench -p samvirke-node --bench readings -- --warm-up-time 1 --measurement-time 3`
//!
//! - `ingest/{1000,10000}`: one batch of synthetic air-quality readings into
//!   a fresh store in a temporary directory (validate, one atomic write,
//!   one flush). The store is made outside the measurement.
//! - `query/*`, `aggregate/*`: over a store pre-loaded with
//!   `SAMVIRKE_BENCH_SENSORS` (default 1000) air-quality sensors x 7 days at
//!   10-minute intervals (1000 x 1008 = 1,008,000 readings).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use samvirke_node::data::{
    Catalog, Group, Order, Reading, ReadingQuery, ReadingStore, generate, sensor_dataset,
};
use samvirke_node::store::SledStore;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const START: OffsetDateTime = datetime!(2025-03-03 0:00 UTC);
const NOW: OffsetDateTime = datetime!(2025-04-01 0:00 UTC);
const DAYS: i64 = 7;
const KIND: &str = "air-quality";
const AARHUS: u32 = 751;

fn fresh() -> (tempfile::TempDir, ReadingStore, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    let dataset = sensor_dataset(KIND, AARHUS).expect("dataset");
    let id = dataset.id.clone();
    Catalog::new(store.clone())
        .publish(dataset)
        .expect("publish");
    (dir, ReadingStore::new(store), id)
}

fn readings(sensors: u32, days: i64) -> Vec<Reading> {
    generate(
        KIND,
        AARHUS,
        sensors,
        START,
        START + Duration::days(days),
        1,
    )
    .expect("generate")
    .collect()
}

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    group.sample_size(20);
    for size in [1_000usize, 10_000] {
        // 100 sensors, as many 10-minute instants as the batch needs.
        let batch: Vec<Reading> = readings(100, 7).into_iter().take(size).collect();
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(size.to_string(), |b| {
            b.iter_batched(
                fresh,
                |(dir, store, id)| {
                    let summary = store.ingest_batch(&id, &batch, NOW).expect("ingest");
                    assert_eq!(summary.new, size as u64);
                    (dir, store)
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn queries(c: &mut Criterion) {
    let sensors: u32 = std::env::var("SAMVIRKE_BENCH_SENSORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let (_dir, store, id) = fresh();
    let started = Instant::now();
    let mut total = 0;
    let mut batch = Vec::with_capacity(10_000);
    for reading in generate(
        KIND,
        AARHUS,
        sensors,
        START,
        START + Duration::days(DAYS),
        1,
    )
    .expect("generate")
    {
        batch.push(reading);
        if batch.len() == 10_000 {
            total += store.ingest_batch(&id, &batch, NOW).expect("ingest").new;
            batch.clear();
        }
    }
    total += store.ingest_batch(&id, &batch, NOW).expect("ingest").new;
    eprintln!(
        "pre-loaded {total} readings ({sensors} sensors x {DAYS} days) in {:.1?}",
        started.elapsed()
    );
    assert_eq!(store.count(&id).expect("count"), total);

    let day = |q: &mut ReadingQuery| {
        q.from = START + Duration::days(3);
        q.until = START + Duration::days(4);
    };
    let mut one = ReadingQuery::new(id.clone(), START, START);
    day(&mut one);
    one.sensor_ids = vec![format!("aarhus-{KIND}-0042")];
    if sensors < 1000 {
        one.sensor_ids = vec![format!("aarhus-{KIND}-042")];
    }
    let mut all = ReadingQuery::new(id.clone(), START, START);
    day(&mut all);
    let mut all_desc_10 = all.clone();
    all_desc_10.order = Order::Descending;
    all_desc_10.limit = 10;

    let mut group = c.benchmark_group("query");
    group.sample_size(10);
    for (name, q) in [
        ("one_sensor_1d", &one),
        ("all_sensors_1d", &all),
        ("all_sensors_1d_desc_limit10", &all_desc_10),
    ] {
        let n = store.query(q).expect("query").len();
        eprintln!("query/{name} returns {n} readings");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(name, |b| {
            b.iter(|| black_box(store.query(q).expect("query").len()));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("aggregate");
    group.sample_size(10);
    for (name, grouping) in [
        ("1h_all_sensors_1d", Group::AllSensors),
        ("1h_per_sensor_1d", Group::PerSensor),
    ] {
        let n = store
            .aggregate(&all, Duration::HOUR, grouping)
            .expect("aggregate")
            .len();
        eprintln!("aggregate/{name} returns {n} buckets");
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    store
                        .aggregate(&all, Duration::HOUR, grouping)
                        .expect("aggregate")
                        .len(),
                )
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(StdDuration::from_secs(1));
    targets = ingest, queries
}
criterion_main!(benches);
