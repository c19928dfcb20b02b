//! Storage backends side by side: the same synthetic readings ingested
//! durably into sled and into PostgreSQL, then read back whole, aggregated
//! hourly over all sensors, and asked the small question a dashboard asks.
//!
//! Run: `SAMVIRKE_BENCH_READINGS=10000000 cargo bench -p samvirke-node --bench backends`
//!
//! - `SAMVIRKE_BENCH_READINGS` (default 10,000,000): how many readings.
//! - `SAMVIRKE_BENCH_SENSORS` (default 2,000): over how many air-quality
//!   sensors; they report every 10 minutes from 2025-03-03, time-major (all
//!   sensors at one instant, then the next), as a fleet delivers them. The
//!   last instant is cut short so that exactly the asked count is made.
//!
//! The readings are never all in memory: each backend gets them from the
//! deterministic generator, one batch of 5,000 at a time, so both see the
//! same data. PostgreSQL is a throwaway server (`dev_postgres`, `fsync`
//! on, 128 MB shared buffers) whose data directory is under the same
//! temporary directory as the sled store, so both write to the same disk.
//!
//! A plain `main` rather than criterion: one ingest of ten million
//! readings is the measurement, and it cannot be sampled a hundred times.
//! Without `--bench` (`cargo test --benches`) it runs 20,000 readings and
//! only checks that the backends agree.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use samvirke_node::data::{
    AggregateSpec, Catalog, Generator, Group, Order, ReadingQuery, ReadingStore, generate,
    sensor_dataset,
};
use samvirke_node::dev_postgres::DevPostgres;
use samvirke_node::store::postgres::PostgresOptions;
use samvirke_node::store::{PostgresStore, SledStore, Store};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const START: OffsetDateTime = datetime!(2025-03-03 0:00 UTC);
const KIND: &str = "air-quality";
const AARHUS: u32 = 751;
/// The kind's reporting interval (sensors.toml).
const INTERVAL_S: i64 = 600;
const BATCH: usize = 5_000;
const CHUNK: usize = 4_096;
const RUNS: usize = 3;
const SMALL_RUNS: usize = 20;
const SEED: u64 = 1;

fn env_count(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("{name}={text:?} is not a whole number: {e}")),
        Err(_) => default,
    }
}

/// The size of the run and its time range.
#[derive(Clone, Copy)]
struct Shape {
    readings: u64,
    sensors: u32,
    until: OffsetDateTime,
}

impl Shape {
    fn new(readings: u64, sensors: u32) -> Shape {
        assert!(
            readings > 0 && sensors > 0,
            "readings and sensors must be > 0"
        );
        let instants = readings.div_ceil(u64::from(sensors));
        let span_s = i64::try_from(instants).expect("instants") * INTERVAL_S;
        Shape {
            readings,
            sensors,
            until: START + Duration::seconds(span_s),
        }
    }

    /// The readings, from the start, in time order.
    fn generator(&self) -> std::iter::Take<Generator> {
        generate(KIND, AARHUS, self.sensors, START, self.until, SEED)
            .expect("generate")
            .take(usize::try_from(self.readings).expect("readings fit in usize"))
    }

    /// Ingest checks readings against "now": just after the last one.
    fn now(&self) -> OffsetDateTime {
        self.until + Duration::hours(1)
    }

    fn all(&self, dataset: &str) -> ReadingQuery {
        ReadingQuery::new(dataset, START, self.until)
    }
}

/// What one backend measured.
#[derive(Default)]
struct Figures {
    ingest: StdDuration,
    ingest_wall: StdDuration,
    /// Work after ingest that the database would do by itself (vacuum and
    /// statistics), done here at once so queries see a settled table.
    settle: Option<StdDuration>,
    disk_bytes: u64,
    disk_detail: String,
    stream: Vec<StdDuration>,
    aggregate: Vec<StdDuration>,
    buckets: u64,
    bucket_counts: u64,
    bucket_sum: f64,
    last100: Vec<StdDuration>,
    rss_kib: Vec<(&'static str, u64)>,
}

fn median(runs: &[StdDuration]) -> StdDuration {
    let mut sorted = runs.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Peak resident set size of this process, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmHWM:")
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Starts a new peak RSS measurement (Linux: "5" to `clear_refs` resets
/// `VmHWM` to the current RSS), so each backend's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Bytes a directory tree takes on disk (allocated blocks, like `du`).
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| disk_usage(&e.path()))
                .sum::<u64>()
        })
        .unwrap_or(0)
}

fn run_backend(
    name: &'static str,
    store: Arc<dyn Store>,
    shape: Shape,
    settle: impl FnOnce() -> StdDuration,
    measure_disk: impl FnOnce() -> (u64, String),
) -> Figures {
    let mut figures = Figures::default();
    let dataset = sensor_dataset(KIND, AARHUS).expect("dataset");
    let id = dataset.id.clone();
    Catalog::new(store.clone())
        .publish(dataset)
        .expect("publish");
    let readings = ReadingStore::new(store);

    // 1. Durable ingest, batch by batch; the time is that of the ingest
    // calls (validation, write, flush or commit), not the generator's.
    let mut generator = shape.generator();
    let mut batch = Vec::with_capacity(BATCH);
    let mut stored = 0u64;
    let wall = Instant::now();
    loop {
        batch.clear();
        batch.extend(generator.by_ref().take(BATCH));
        if batch.is_empty() {
            break;
        }
        let started = Instant::now();
        let summary = readings
            .ingest_batch(&id, &batch, shape.now())
            .expect("ingest");
        figures.ingest += started.elapsed();
        stored += summary.new;
    }
    figures.ingest_wall = wall.elapsed();
    assert_eq!(stored, shape.readings, "{name}: every reading is new");
    figures.rss_kib.push(("ingest", peak_rss_kib()));
    eprintln!(
        "{name}: ingested {stored} readings in {:.1?} ({:.0}/s)",
        figures.ingest,
        stored as f64 / figures.ingest.as_secs_f64()
    );
    let settled = settle();
    figures.settle = (!settled.is_zero()).then_some(settled);
    (figures.disk_bytes, figures.disk_detail) = measure_disk();
    eprintln!("{name}: {} on disk", figures.disk_detail);

    // 2. Every reading, in time order.
    let all = shape.all(&id);
    for run in 0..RUNS {
        let started = Instant::now();
        let mut iter = readings.query_iter(&all).expect("query");
        let mut count = 0u64;
        while !iter.is_finished() {
            count += iter.next_chunk(CHUNK).expect("chunk").len() as u64;
        }
        let took = started.elapsed();
        assert_eq!(
            count, shape.readings,
            "{name}: the stream returns every reading"
        );
        eprintln!("{name}: stream run {} took {took:.2?}", run + 1);
        figures.stream.push(took);
    }
    figures.rss_kib.push(("stream", peak_rss_kib()));

    // 3. Hourly buckets over all sensors.
    let spec = AggregateSpec::plain(Duration::HOUR, Group::AllSensors);
    for run in 0..RUNS {
        let started = Instant::now();
        let mut stream = readings.aggregate_stream(&all, &spec).expect("aggregate");
        let (mut buckets, mut counts, mut sum) = (0u64, 0u64, 0.0f64);
        while !stream.is_finished() {
            for bucket in stream.next_chunk(1024).expect("buckets") {
                buckets += 1;
                counts += bucket.count;
                sum += bucket.sum;
            }
        }
        let took = started.elapsed();
        eprintln!("{name}: aggregate run {} took {took:.2?}", run + 1);
        figures.aggregate.push(took);
        if run > 0 {
            assert_eq!(
                (buckets, counts),
                (figures.buckets, figures.bucket_counts),
                "{name}: aggregates agree between runs"
            );
        }
        (figures.buckets, figures.bucket_counts, figures.bucket_sum) = (buckets, counts, sum);
    }
    figures.rss_kib.push(("aggregate", peak_rss_kib()));

    // 4. A dashboard's question: one sensor's last 100 readings.
    let mut last = all.clone();
    last.sensor_ids = vec![format!(
        "aarhus-{KIND}-{:0width$}",
        shape.sensors / 2,
        width = shape.sensors.to_string().len().max(3)
    )];
    last.order = Order::Descending;
    last.limit = 100;
    let expected = shape
        .readings
        .div_ceil(u64::from(shape.sensors))
        .saturating_sub(1)
        .min(100);
    for _ in 0..SMALL_RUNS {
        let started = Instant::now();
        let answer = readings.query(&last).expect("last 100");
        figures.last100.push(started.elapsed());
        assert!(
            answer.len() as u64 >= expected,
            "{name}: {} readings of one sensor, expected at least {expected}",
            answer.len()
        );
        assert!(
            answer.windows(2).all(|w| w[0].at > w[1].at),
            "{name}: newest first"
        );
    }
    figures.rss_kib.push(("small query", peak_rss_kib()));
    figures
}

fn sled(shape: Shape, root: &Path) -> Figures {
    let dir = root.join("sled");
    let store = Arc::new(SledStore::open(&dir).expect("sled store"));
    let figures = run_backend(
        "sled",
        store,
        shape,
        || StdDuration::ZERO,
        || {
            let bytes = disk_usage(&dir);
            (bytes, format!("store directory {}", mib(bytes)))
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

fn postgres(shape: Shape, server: &DevPostgres) -> Figures {
    let url = server.create_database("bench").expect("database");
    let store = Arc::new(
        PostgresStore::open(&PostgresOptions {
            url: url.clone(),
            password: None,
            pool_size: 4,
            ca_file: None,
        })
        .expect("PostgreSQL store"),
    );
    let sql = |text: &str| -> String {
        server
            .psql(&url, text)
            .unwrap_or_else(|e| panic!("psql {text}: {e}"))
            .trim()
            .to_string()
    };
    let number = |text: &str| -> u64 {
        let answer = sql(text);
        answer
            .parse()
            .unwrap_or_else(|e| panic!("{text} answered {answer:?}: {e}"))
    };
    run_backend(
        "postgres",
        store,
        shape,
        || {
            let started = Instant::now();
            sql("VACUUM (ANALYZE) samvirke_readings");
            sql("VACUUM (ANALYZE) samvirke_sensors");
            started.elapsed()
        },
        || {
            let readings = number(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) \
                 FROM pg_inherits WHERE inhparent = 'samvirke_readings'::regclass",
            );
            let sensors = number("SELECT pg_total_relation_size('samvirke_sensors')");
            let database = number("SELECT pg_database_size(current_database())");
            let wal = disk_usage(&server.dir().join("data").join("pg_wal"));
            (
                readings + sensors,
                format!(
                    "readings partitions and sensor index {} (whole database {}, server WAL directory {})",
                    mib(readings + sensors),
                    mib(database),
                    mib(wal)
                ),
            )
        },
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn secs(d: StdDuration) -> String {
    if d.as_secs_f64() >= 10.0 {
        format!("{:.0} s", d.as_secs_f64())
    } else if d.as_secs_f64() >= 1.0 {
        format!("{:.1} s", d.as_secs_f64())
    } else if d.as_secs_f64() >= 0.01 {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}

fn rate(n: u64, d: StdDuration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn machine_facts() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|m| m.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or_else(String::new, |kib| {
            format!(", {:.0} GiB memory", kib as f64 / 1048576.0)
        });
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "{cores} cores (nproc), {cpu}{memory}, load average {load} at the end, {} UTC",
        {
            let t = OffsetDateTime::now_utc();
            format!("{} {:02}:{:02}", t.date(), t.hour(), t.minute())
        }
    )
}

fn table(shape: Shape, s: &Figures, p: &Figures, pg_version: &str) -> String {
    let n = shape.readings;
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut row = |op: &str, sv: String, pv: String, ratio: f64| {
        rows.push((op.to_string(), sv, pv, format!("{ratio:.2}")));
    };
    row(
        &format!("durable ingest, batches of {BATCH}: total"),
        secs(s.ingest),
        secs(p.ingest),
        p.ingest.as_secs_f64() / s.ingest.as_secs_f64(),
    );
    row(
        "durable ingest: readings/s",
        thousands(rate(n, s.ingest)),
        thousands(rate(n, p.ingest)),
        rate(n, p.ingest) / rate(n, s.ingest),
    );
    row(
        "size on disk after ingest",
        mib(s.disk_bytes),
        mib(p.disk_bytes),
        p.disk_bytes as f64 / s.disk_bytes as f64,
    );
    row(
        "bytes per reading on disk",
        format!("{:.0}", s.disk_bytes as f64 / n as f64),
        format!("{:.0}", p.disk_bytes as f64 / n as f64),
        p.disk_bytes as f64 / s.disk_bytes as f64,
    );
    let (ss, ps) = (median(&s.stream), median(&p.stream));
    row(
        &format!("full-range stream, chunks of {CHUNK} (median of {RUNS})"),
        secs(ss),
        secs(ps),
        ps.as_secs_f64() / ss.as_secs_f64(),
    );
    row(
        "full-range stream: readings/s",
        thousands(rate(n, ss)),
        thousands(rate(n, ps)),
        rate(n, ps) / rate(n, ss),
    );
    let (sa, pa) = (median(&s.aggregate), median(&p.aggregate));
    row(
        &format!(
            "hourly aggregate, all sensors, whole range ({} buckets, median of {RUNS})",
            s.buckets
        ),
        secs(sa),
        secs(pa),
        pa.as_secs_f64() / sa.as_secs_f64(),
    );
    let (sl, pl) = (median(&s.last100), median(&p.last100));
    row(
        &format!("last 100 readings of one sensor, newest first (median of {SMALL_RUNS})"),
        secs(sl),
        secs(pl),
        pl.as_secs_f64() / sl.as_secs_f64(),
    );
    for ((phase, skib), (_, pkib)) in s.rss_kib.iter().zip(&p.rss_kib) {
        row(
            &format!("peak RSS of the process, through {phase}"),
            mib(skib * 1024),
            mib(pkib * 1024),
            *pkib as f64 / *skib as f64,
        );
    }
    let widths = rows.iter().fold([9usize, 4, 10, 17], |w, r| {
        [
            w[0].max(r.0.len()),
            w[1].max(r.1.len()),
            w[2].max(r.2.len()),
            w[3].max(r.3.len()),
        ]
    });
    let mut out = format!(
        "{} readings: {} air-quality sensors every 10 minutes, {} {:02}:{:02} to {} {:02}:{:02} UTC; sled vs PostgreSQL {pg_version}\n\n",
        thousands(n as f64),
        shape.sensors,
        START.date(),
        START.hour(),
        START.minute(),
        shape.until.date(),
        shape.until.hour(),
        shape.until.minute()
    );
    out.push_str(&format!(
        "| {:<a$} | {:>b$} | {:>c$} | {:>d$} |\n|{}|{}:|{}:|{}:|\n",
        "operation",
        "sled",
        "PostgreSQL",
        "ratio (pg/sled)",
        "-".repeat(widths[0] + 2),
        "-".repeat(widths[1] + 1),
        "-".repeat(widths[2] + 1),
        "-".repeat(widths[3] + 1),
        a = widths[0],
        b = widths[1],
        c = widths[2],
        d = widths[3],
    ));
    for (op, sv, pv, ratio) in rows {
        out.push_str(&format!(
            "| {op:<a$} | {sv:>b$} | {pv:>c$} | {ratio:>d$} |\n",
            a = widths[0],
            b = widths[1],
            c = widths[2],
            d = widths[3],
        ));
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then a small run only checks that the backends agree.
    let benching = std::env::args().any(|a| a == "--bench");
    let readings = env_count(
        "SAMVIRKE_BENCH_READINGS",
        if benching { 10_000_000 } else { 20_000 },
    );
    let sensors = u32::try_from(env_count("SAMVIRKE_BENCH_SENSORS", 2_000))
        .expect("SAMVIRKE_BENCH_SENSORS fits in 32 bits");
    let shape = Shape::new(readings, sensors);

    // Time to make the readings alone, so the ingest figures can be read
    // without it (they exclude it already).
    let started = Instant::now();
    let made = shape.generator().count() as u64;
    assert_eq!(made, readings);
    eprintln!(
        "generating {made} readings takes {:.1?} (not in the ingest figures)",
        started.elapsed()
    );

    let server = DevPostgres::start().expect("development PostgreSQL server");
    // The sled store goes beside the server's directory: same disk.
    let root = tempfile::Builder::new()
        .prefix("samvirke-bench-backends-")
        .tempdir_in(server.dir().parent().unwrap_or(Path::new("/tmp")))
        .expect("temporary directory");
    let pg_version = server
        .psql(&server.url("postgres"), "SHOW server_version")
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_default();

    reset_peak_rss();
    let s = sled(shape, root.path());
    reset_peak_rss();
    let p = postgres(shape, &server);

    assert_eq!(s.buckets, p.buckets, "both backends give the same buckets");
    assert_eq!(
        s.bucket_counts, p.bucket_counts,
        "both backends count the same values in the buckets"
    );
    assert!(
        (s.bucket_sum - p.bucket_sum).abs() <= 1e-6 * s.bucket_sum.abs().max(1.0),
        "both backends sum to the same: {} vs {}",
        s.bucket_sum,
        p.bucket_sum
    );
    if let Some(settle) = p.settle {
        eprintln!(
            "postgres: VACUUM (ANALYZE) after ingest took {} (not in the ingest figures)",
            secs(settle)
        );
    }
    eprintln!(
        "wall time of the ingest loops (with generation): sled {}, postgres {}",
        secs(s.ingest_wall),
        secs(p.ingest_wall)
    );
    println!("{}", table(shape, &s, &p, &pg_version));
    println!("Machine: {}", machine_facts());
    drop(root);
    drop(server);
}
