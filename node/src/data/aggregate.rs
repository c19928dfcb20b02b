//! Server-side aggregation of readings into time buckets, and suppression
//! of buckets too small to share.
//!
//! This module owns [`Bucket`], [`Group`], bucket sizes ([`parse_bucket`])
//! and [`suppress_small_groups`], the rule an `aggregate`-only agreement
//! applies before anything leaves the node.
//!
//! Buckets are aligned to the Unix epoch in UTC: a reading at time `t`
//! falls in the bucket starting at `t - t mod size`, so `1d` buckets start
//! at UTC midnight and `15m` buckets at :00, :15, :30 and :45. Only
//! readings inside the query's `[from, until)` count, so the first and last
//! bucket may cover part of their span. The query's sensor, area and
//! measure filters apply as for [`ReadingStore::query`]; its `order` and
//! `limit` apply to the buckets (ordered by start, then sensor id, then the
//! measure's position in the dataset).
//!
//! Aggregation reads each sensor's range in turn (the order of readings
//! does not matter for count, min, max and sum), which makes counting the
//! distinct sensors of a bucket a comparison with the last contributor
//! instead of a set per bucket. Memory is one accumulator per (bucket,
//! group, measure) that has data.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::catalog::show_time;
use super::keys;
use super::query::{Cursor, Order, QueryError, ReadingQuery};
use super::readings::{ReadingStore, from_ms};
use crate::governance::body::FieldError;

/// Longest bucket: a year.
const MAX_BUCKET: Duration = Duration::days(366);

/// How readings are grouped within a time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// One bucket per sensor (and measure).
    PerSensor,
    /// One bucket for all matching sensors together (per measure).
    AllSensors,
}

/// Summary statistics of one measure over one time bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Start of the bucket (aligned to the Unix epoch, UTC).
    pub start: OffsetDateTime,
    /// The sensor, for [`Group::PerSensor`]; `None` for all sensors.
    pub sensor_id: Option<String>,
    pub measure: String,
    /// Number of values (readings with this measure).
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub avg: f64,
    /// Sensors that contributed (1 for per-sensor buckets).
    pub distinct_sensors: u32,
}

/// Parses a bucket size: a positive whole number and a unit, `s`, `m`,
/// `h` or `d` (`30s`, `15m`, `1h`, `1d`), at most a year.
pub fn parse_bucket(text: &str) -> Result<Duration, FieldError> {
    let bad = || {
        FieldError::new(
            "bucket",
            format!(
                "`{}` is not a bucket size; use a whole number and s, m, h or d \
                 (e.g. 30s, 15m, 1h, 1d), at most 366d",
                text.escape_debug()
            ),
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().map_err(|_| bad())?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let size = Duration::seconds(n.checked_mul(unit_seconds).ok_or_else(bad)?);
    if n == 0 || size > MAX_BUCKET {
        return Err(bad());
    }
    Ok(size)
}

/// Running statistics of one (bucket, group, measure).
#[derive(Debug)]
struct Acc {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    distinct: u32,
    last_sensor: usize,
}

impl ReadingStore {
    /// Buckets of `bucket` size over the readings `query` selects, per
    /// sensor or over all sensors. See the module docs for alignment and
    /// ordering.
    pub fn aggregate(
        &self,
        query: &ReadingQuery,
        bucket: Duration,
        group: Group,
    ) -> Result<Vec<Bucket>, QueryError> {
        let size_ms = i64::try_from(bucket.whole_milliseconds()).unwrap_or(0);
        if size_ms <= 0 || Duration::milliseconds(size_ms) != bucket || bucket > MAX_BUCKET {
            return Err(FieldError::new(
                "bucket",
                format!("{bucket} is not a bucket size; use whole milliseconds, up to 366 days"),
            )
            .into());
        }
        let plan = self.plan(query)?;
        let corrupt = |source| QueryError::Corrupt {
            dataset: query.dataset.clone(),
            source,
        };
        // (bucket start, sensor position if per sensor, measure position)
        let mut accs: BTreeMap<(i64, Option<usize>, usize), Acc> = BTreeMap::new();
        // Present (measure position, value) pairs of one reading, reused.
        let mut present: Vec<(usize, f64)> = Vec::new();
        for (s, scan) in plan.sensors.iter().enumerate() {
            let mut cursor = Cursor::new(&plan, scan, Order::Ascending);
            while let Some((ms, value)) = cursor.next_raw(self.store.as_ref())? {
                present.clear();
                let location =
                    keys::visit_values(&value, |m, v| present.push((m, v))).map_err(corrupt)?;
                if !plan.in_area(location) {
                    continue;
                }
                let start = ms - ms.rem_euclid(size_ms);
                let sensor = (group == Group::PerSensor).then_some(s);
                for &(m, v) in &present {
                    if m >= plan.measures.len() || !plan.keeps(m) {
                        continue;
                    }
                    let acc = accs.entry((start, sensor, m)).or_insert(Acc {
                        count: 0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                        sum: 0.0,
                        distinct: 0,
                        last_sensor: usize::MAX,
                    });
                    acc.count += 1;
                    acc.min = acc.min.min(v);
                    acc.max = acc.max.max(v);
                    acc.sum += v;
                    if acc.last_sensor != s {
                        acc.last_sensor = s;
                        acc.distinct += 1;
                    }
                }
            }
        }
        let mut keyed: Vec<_> = accs.into_iter().collect();
        if query.order == Order::Descending {
            // Latest bucket first; within a bucket, the same order as ascending.
            keyed.sort_by(|(a, _), (b, _)| b.0.cmp(&a.0).then_with(|| (a.1, a.2).cmp(&(b.1, b.2))));
        }
        if query.limit > 0 {
            keyed.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
        }
        let mut out = Vec::with_capacity(keyed.len());
        for ((start, sensor, m), acc) in keyed {
            out.push(Bucket {
                start: from_ms(start).map_err(corrupt)?,
                sensor_id: sensor.map(|s| plan.sensors[s].sensor_id.to_string()),
                measure: plan.measures[m].clone(),
                count: acc.count,
                min: acc.min,
                max: acc.max,
                sum: acc.sum,
                avg: acc.sum / acc.count as f64,
                distinct_sensors: acc.distinct,
            });
        }
        Ok(out)
    }
}

/// Drops buckets too small to share under an agreement's minimum group
/// size; returns the kept buckets and how many were suppressed.
///
/// - An all-sensors bucket is suppressed if it summarises fewer than
///   `min_group_size` values *or* fewer than `min_group_size` distinct
///   sensors: an average over many readings of one or two sensors still
///   describes those sensors.
/// - A per-sensor bucket names its sensor by design, so the distinct-sensor
///   rule would suppress every one of them; it is suppressed only if it
///   summarises fewer than `min_group_size` values. Per-sensor aggregates
///   therefore fit datasets whose sensors are things (bins, parking bays,
///   street lamps). Where a sensor stands for a person or a household, the
///   data plane should refuse [`Group::PerSensor`] altogether (e.g. for
///   datasets classified `personal`); this function cannot know that.
///
/// A `min_group_size` of 0 or 1 keeps everything.
pub fn suppress_small_groups(buckets: Vec<Bucket>, min_group_size: u32) -> (Vec<Bucket>, usize) {
    let before = buckets.len();
    let min = u64::from(min_group_size);
    let kept: Vec<Bucket> = buckets
        .into_iter()
        .filter(|b| {
            let enough_values = b.count >= min;
            match b.sensor_id {
                Some(_) => enough_values,
                None => enough_values && u64::from(b.distinct_sensors) >= min,
            }
        })
        .collect();
    let suppressed = before - kept.len();
    (kept, suppressed)
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}: n={} min={} max={} avg={} sensors={}",
            show_time(self.start),
            self.sensor_id.as_deref().unwrap_or("*"),
            self.measure,
            self.count,
            self.min,
            self.max,
            self.avg,
            self.distinct_sensors
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::readings::{Reading, to_ms};
    use super::super::testutil::{self, Rng};
    use super::*;

    /// The buckets computed the obvious way, over the in-memory readings.
    fn naive(
        data: &[Reading],
        measures: &[String],
        q: &ReadingQuery,
        size: Duration,
        group: Group,
    ) -> Vec<Bucket> {
        let size_ms = size.whole_milliseconds() as i64;
        type Key = (i64, Option<String>, usize);
        let mut map: BTreeMap<Key, (Vec<f64>, BTreeSet<String>)> = BTreeMap::new();
        for r in data {
            if r.at < q.from || r.at >= q.until {
                continue;
            }
            if !q.sensor_ids.is_empty() && !q.sensor_ids.contains(&r.sensor_id) {
                continue;
            }
            if let Some(area) = &q.area
                && !r.location.is_some_and(|p| area.contains(p))
            {
                continue;
            }
            let ms = to_ms(r.at);
            let start = ms.div_euclid(size_ms) * size_ms;
            for (name, v) in &r.values {
                if !q.measures.is_empty() && !q.measures.contains(name) {
                    continue;
                }
                let m = measures.iter().position(|x| x == name).expect("known");
                let sensor = (group == Group::PerSensor).then(|| r.sensor_id.clone());
                let e = map.entry((start, sensor, m)).or_default();
                e.0.push(*v);
                e.1.insert(r.sensor_id.clone());
            }
        }
        let mut out: Vec<Bucket> = map
            .into_iter()
            .map(|((start, sensor_id, m), (values, sensors))| {
                let sum: f64 = values.iter().sum();
                Bucket {
                    start: from_ms(start).expect("time"),
                    sensor_id,
                    measure: measures[m].clone(),
                    count: values.len() as u64,
                    min: values.iter().copied().fold(f64::INFINITY, f64::min),
                    max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    sum,
                    avg: sum / values.len() as f64,
                    distinct_sensors: sensors.len() as u32,
                }
            })
            .collect();
        if q.order == Order::Descending {
            // Stable: keeps the sensor and measure order within a bucket.
            out.sort_by_key(|b| std::cmp::Reverse(b.start));
        }
        if q.limit > 0 {
            out.truncate(q.limit as usize);
        }
        out
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    fn assert_same(got: &[Bucket], expected: &[Bucket], what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}: bucket counts differ");
        for (g, e) in got.iter().zip(expected) {
            let same = g.start == e.start
                && g.sensor_id == e.sensor_id
                && g.measure == e.measure
                && g.count == e.count
                && g.min == e.min
                && g.max == e.max
                && g.distinct_sensors == e.distinct_sensors
                && close(g.sum, e.sum)
                && close(g.avg, e.avg);
            assert!(same, "{what}:\n got      {g}\n expected {e}");
        }
    }

    #[test]
    fn aggregates_match_a_brute_force_answer() {
        let fx = testutil::fixture(20, 3);
        let measures = fx.measures();
        let mut rng = Rng(0xa66);
        let sizes = ["30s", "10m", "15m", "1h", "6h", "1d"];
        for round in 0..120 {
            let mut q = testutil::random_query(&fx, &mut rng);
            // Limits on buckets, not readings: keep them modest but varied.
            q.limit = [0, 0, 1, 5, 100_000][rng.below(5) as usize];
            let size = parse_bucket(sizes[rng.below(sizes.len() as u64) as usize]).expect("size");
            for group in [Group::AllSensors, Group::PerSensor] {
                let expected = naive(&fx.data, &measures, &q, size, group);
                let got = fx.readings.aggregate(&q, size, group).expect("aggregate");
                assert_same(
                    &got,
                    &expected,
                    &format!("round {round} {group:?} {size} {q:?}"),
                );
            }
        }
    }

    #[test]
    fn buckets_align_to_the_epoch_and_respect_the_range() {
        let fx = testutil::fixture(3, 2);
        let mut q = testutil::everything(&fx.dataset);
        // Start mid-bucket: the first bucket still starts on the hour.
        q.from = testutil::START + Duration::minutes(25);
        q.until = testutil::START + Duration::hours(5);
        let got = fx
            .readings
            .aggregate(&q, Duration::HOUR, Group::AllSensors)
            .expect("agg");
        assert_eq!(got[0].start, testutil::START);
        assert!(got.iter().all(|b| to_ms(b.start) % 3_600_000 == 0));
        assert_eq!(
            got.last().expect("last").start,
            testutil::START + Duration::hours(4)
        );
        // 3 sensors, 10-minute interval: the partial first hour has 4 slots.
        let first_pm10 = got.iter().find(|b| b.measure == "pm10").expect("pm10");
        assert_eq!(first_pm10.distinct_sensors, 3);
        assert!(first_pm10.count <= 12);
        let err = fx
            .readings
            .aggregate(&q, Duration::ZERO, Group::AllSensors)
            .expect_err("zero");
        assert!(err.to_string().contains("bucket: "), "{err}");
    }

    #[test]
    fn parse_bucket_sizes() {
        assert_eq!(parse_bucket("15m").expect("15m"), Duration::minutes(15));
        assert_eq!(parse_bucket("1h").expect("1h"), Duration::HOUR);
        assert_eq!(parse_bucket("1d").expect("1d"), Duration::DAY);
        assert_eq!(parse_bucket("30s").expect("30s"), Duration::seconds(30));
        for bad in [
            "",
            "m",
            "0m",
            "15",
            "15x",
            "1.5h",
            "-1h",
            "400d",
            "99999999999999999999d",
        ] {
            let err = parse_bucket(bad).expect_err(bad);
            assert_eq!(err.field, "bucket", "{bad}");
        }
    }

    #[test]
    fn small_groups_are_suppressed() {
        let bucket = |sensor: Option<&str>, count: u64, distinct: u32| Bucket {
            start: super::super::readings::EARLIEST,
            sensor_id: sensor.map(str::to_string),
            measure: "pm10".to_string(),
            count,
            min: 0.0,
            max: 1.0,
            sum: 1.0,
            avg: 0.5,
            distinct_sensors: distinct,
        };
        let buckets = vec![
            bucket(None, 100, 2),      // many values, too few sensors
            bucket(None, 4, 4),        // too few values
            bucket(None, 5, 5),        // kept
            bucket(Some("s"), 100, 1), // per sensor: enough values, kept
            bucket(Some("s"), 4, 1),   // per sensor: too few values
        ];
        let (kept, suppressed) = suppress_small_groups(buckets.clone(), 5);
        assert_eq!(suppressed, 3);
        assert_eq!(kept, vec![buckets[2].clone(), buckets[3].clone()]);
        let (kept, suppressed) = suppress_small_groups(buckets.clone(), 1);
        assert_eq!((kept.len(), suppressed), (5, 0));
    }
}
