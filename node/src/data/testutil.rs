//! Shared fixtures for the data module's tests: a temporary store with a
//! published air-quality dataset and synthetic readings (some without a
//! location, some moved, some with measures missing), ingested in
//! shuffled batches; and random query generation for brute-force checks.

use std::sync::Arc;

use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::catalog::Catalog;
use super::generate::{SplitMix64, generate, sensor_dataset};
use super::geo::{Area, BoundingBox};
use super::query::{Order, ReadingQuery};
use super::readings::{Reading, ReadingStore};
use crate::store::postgres::PostgresOptions;
use crate::store::{PostgresStore, SledStore, Store};

pub use super::generate::SplitMix64 as Rng;

/// Start of the generated data (a Monday, UTC midnight).
pub const START: OffsetDateTime = datetime!(2025-03-03 0:00 UTC);
/// The "now" ingest is checked against.
pub const NOW: OffsetDateTime = datetime!(2025-04-01 0:00 UTC);

/// A store with one sensor dataset and its readings.
pub struct Fixture {
    /// The backend's name, for assertion messages.
    pub backend: &'static str,
    _dir: tempfile::TempDir,
    pub catalog: Catalog,
    pub readings: ReadingStore,
    pub dataset: String,
    /// Exactly what was stored.
    pub data: Vec<Reading>,
    pub sensor_ids: Vec<String>,
    pub days: i64,
}

impl Fixture {
    pub fn measures(&self) -> Vec<String> {
        self.catalog
            .get(&self.dataset)
            .expect("get")
            .expect("published")
            .measure_names()
    }
}

/// `sensors` air-quality sensors in Aarhus over `days` days from [`START`],
/// in a sled store.
pub fn fixture(sensors: u32, days: i64) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SledStore::open(&dir.path().join("store")).expect("store"));
    fixture_in("sled", dir, store, sensors, days)
}

/// The same fixture in each backend: sled, and a fresh database on the
/// development PostgreSQL server (started on first use; see
/// `dev_postgres`). Tests that compare answers with a brute-force one run
/// over both, so the two backends are held to the same answers.
pub fn fixtures(sensors: u32, days: i64) -> Vec<Fixture> {
    let server = crate::dev_postgres::DevPostgres::shared().expect("development PostgreSQL");
    let url = server.create_database("data").expect("database");
    let store: Arc<dyn Store> = Arc::new(
        PostgresStore::open(&PostgresOptions {
            url,
            password: None,
            pool_size: 4,
            ca_file: None,
        })
        .expect("PostgreSQL store"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    vec![
        fixture(sensors, days),
        fixture_in("postgres", dir, store, sensors, days),
    ]
}

fn fixture_in(
    backend: &'static str,
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    sensors: u32,
    days: i64,
) -> Fixture {
    let catalog = Catalog::new(store.clone());
    let dataset = sensor_dataset("air-quality", 751).expect("dataset");
    let id = dataset.id.clone();
    catalog.publish(dataset).expect("publish");
    let readings = ReadingStore::new(store);
    let generator = generate(
        "air-quality",
        751,
        sensors,
        START,
        START + Duration::days(days),
        42,
    )
    .expect("gen");
    let sensor_ids = generator.sensor_ids();
    let mut rng = SplitMix64(7);
    let mut data: Vec<Reading> = generator
        .map(|mut r| {
            match rng.below(20) {
                0 => r.location = None,
                1 => {
                    // A mobile moment: about a kilometre off.
                    if let Some((lat, lon)) = r.location {
                        r.location = Some((
                            lat + (rng.unit() - 0.5) * 0.02,
                            lon + (rng.unit() - 0.5) * 0.03,
                        ));
                    }
                }
                2 => {
                    r.values.remove("no2");
                }
                3 => r.values.retain(|k, _| k == "pm10"),
                _ => {}
            }
            r
        })
        .collect();
    // Ingest out of order, in uneven batches.
    let mut order: Vec<usize> = (0..data.len()).collect();
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let shuffled: Vec<Reading> = order.iter().map(|&i| data[i].clone()).collect();
    let mut rest = shuffled.as_slice();
    while !rest.is_empty() {
        let n = (1 + rng.below(2500) as usize).min(rest.len());
        let (batch, tail) = rest.split_at(n);
        let summary = readings.ingest_batch(&id, batch, NOW).expect("ingest");
        assert_eq!(summary.new, n as u64);
        rest = tail;
    }
    data.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.sensor_id.cmp(&b.sensor_id)));
    Fixture {
        backend,
        _dir: dir,
        catalog,
        readings,
        dataset: id,
        data,
        sensor_ids,
        days,
    }
}

/// Every reading of `dataset` (a window well around the fixture's data).
pub fn everything(dataset: &str) -> ReadingQuery {
    ReadingQuery::new(dataset, START - Duration::days(365), NOW)
}

/// A random query over the fixture: aligned and unaligned time ranges
/// (including exact reading times and bucket boundaries), sensor subsets,
/// boxes, circles, measure subsets, both orders and assorted limits.
pub fn random_query(fx: &Fixture, rng: &mut Rng) -> ReadingQuery {
    let span_s = fx.days * 86_400;
    let pick_time = |rng: &mut Rng| -> OffsetDateTime {
        match rng.below(4) {
            // On an hour boundary (also a bucket boundary for most sizes).
            0 => START + Duration::hours(rng.below((span_s / 3600 + 2) as u64) as i64 - 1),
            // Exactly at some reading.
            1 => fx.data[rng.below(fx.data.len() as u64) as usize].at,
            // Anywhere, to the millisecond.
            2 => START + Duration::milliseconds(rng.below(span_s as u64 * 1000) as i64),
            // Outside the data.
            _ => START + Duration::seconds(rng.below(2 * span_s as u64) as i64 - span_s / 2),
        }
    };
    let (mut from, mut until) = (pick_time(rng), pick_time(rng));
    if until < from {
        std::mem::swap(&mut from, &mut until);
    }
    if rng.below(8) == 0 {
        (from, until) = (
            START - Duration::days(1),
            START + Duration::days(fx.days + 1),
        );
    }
    let mut q = ReadingQuery::new(fx.dataset.clone(), from, until);
    if rng.below(2) == 0 {
        for _ in 0..1 + rng.below(5) {
            let id = fx.sensor_ids[rng.below(fx.sensor_ids.len() as u64) as usize].clone();
            q.sensor_ids.push(id);
        }
        if rng.below(4) == 0 {
            q.sensor_ids.push("no-such-sensor".to_string());
        }
    }
    let (lat, lon) = (56.1572, 10.2107);
    q.area = match rng.below(3) {
        0 => None,
        1 => {
            let (clat, clon) = (
                lat + (rng.unit() - 0.5) * 0.08,
                lon + (rng.unit() - 0.5) * 0.12,
            );
            let (h, w) = (rng.unit() * 0.05, rng.unit() * 0.08);
            Some(Area::BoundingBox(BoundingBox {
                min_lat: clat - h,
                min_lon: clon - w,
                max_lat: clat + h,
                max_lon: clon + w,
            }))
        }
        _ => Some(Area::Radius {
            lat: lat + (rng.unit() - 0.5) * 0.08,
            lon: lon + (rng.unit() - 0.5) * 0.12,
            km: 0.3 + rng.unit() * 4.0,
        }),
    };
    if rng.below(2) == 0 {
        let all = ["pm2_5", "pm10", "no2"];
        for m in all {
            if rng.below(2) == 0 {
                q.measures.push(m.to_string());
            }
        }
        if q.measures.is_empty() {
            q.measures.push("no2".to_string());
        }
    }
    q.order = if rng.below(2) == 0 {
        Order::Ascending
    } else {
        Order::Descending
    };
    q.limit = [0, 0, 1, 2, 10, 100, 1000, 1_000_000][rng.below(8) as usize];
    q
}
