//! Server-side aggregation of readings into time buckets, as a stream.
//!
//! This module owns [`Bucket`], [`Group`], bucket sizes ([`parse_bucket`]),
//! [`BucketStream`] and the [`Grid`] check an aggregate-only agreement
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
//! The readings are read in time order, merged across sensors (the same
//! merge raw queries use), so buckets come out one by one as the scan
//! passes them: memory is one bucket's accumulators (one per sensor and
//! measure at most) whatever the range, and a caller that stops reading
//! stops the scan. Distinct sensors are counted with a per-sensor stamp of
//! the last bucket (and cell) each sensor was seen in, not with sets.
//!
//! # The grid
//!
//! With a [`Grid`], every bucket is also checked cell by cell: the grid's
//! cells are epoch-aligned and `cell` wide (the bucket a whole multiple of
//! it), and a bucket is released only if every cell in it that holds data
//! for the measure meets the minimum group size (that many readings, and
//! that many distinct sensors when grouped over all sensors). Since the
//! caller can only choose whole buckets of whole cells, two released
//! buckets always differ by whole cells, each of which met the threshold:
//! no answer can be subtracted from another to isolate fewer readings than
//! the minimum. See `plane::disclosure` for the rest of that argument.

use time::{Duration, OffsetDateTime};

use super::catalog::show_time;
use super::keys::{self, CodecError};
use std::collections::VecDeque;

use super::query::{Order, Plan, QueryError, RawMerge, ReadingQuery, SCAN_PER_CHUNK, table_scan};
use super::readings::{ReadingStore, from_ms};
use crate::governance::body::{FieldError, parse_span};
use crate::store::table::TableAggregation;

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
    /// Smallest and largest value; `None` where they are withheld.
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sum: f64,
    pub avg: f64,
    /// Sensors that contributed (1 for per-sensor buckets); `None` where
    /// withheld.
    pub distinct_sensors: Option<u32>,
}

/// Parses a bucket size: a positive whole number and a unit, `s`, `m`,
/// `h` or `d` (`30s`, `15m`, `1h`, `1d`), at most a year.
pub fn parse_bucket(text: &str) -> Result<Duration, FieldError> {
    parse_span(text).map_err(|reason| FieldError::new("bucket", reason))
}

/// The fixed grid of an aggregate-only answer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Cell width; the bucket must be a whole multiple of it.
    pub cell: Duration,
    /// Readings, and distinct sensors over all sensors, every cell with
    /// data needs for its bucket to be released.
    pub min_group: u32,
    /// Also hold each sensor's part of a cell to the minimum (no sensor
    /// with fewer readings than it) when buckets over all sensors are
    /// asked: where per-sensor buckets of the same data can be had too, an
    /// all-sensors bucket minus the per-sensor ones would otherwise give a
    /// thin sensor's readings.
    pub per_sensor_parts: bool,
}

/// What to aggregate: the bucket size, the grouping, the grid (if any),
/// and per measure position the range values are clamped to before they
/// are summed (for calibrated noise, whose sensitivity needs bounds).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSpec {
    pub bucket: Duration,
    pub group: Group,
    pub grid: Option<Grid>,
    pub clamp: Option<Vec<Option<(f64, f64)>>>,
}

impl AggregateSpec {
    /// Plain aggregation: no grid, no clamping.
    pub fn plain(bucket: Duration, group: Group) -> AggregateSpec {
        AggregateSpec {
            bucket,
            group,
            grid: None,
            clamp: None,
        }
    }
}

/// Running statistics of one (group, measure) in the current bucket.
#[derive(Debug, Clone, Copy)]
struct Acc {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    distinct: u32,
    /// A cell of this bucket missed the grid's minimum.
    tainted: bool,
}

const EMPTY: Acc = Acc {
    count: 0,
    min: f64::INFINITY,
    max: f64::NEG_INFINITY,
    sum: 0.0,
    distinct: 0,
    tainted: false,
};

/// Counts of one (group, measure) in the current grid cell.
#[derive(Debug, Clone, Copy, Default)]
struct CellAcc {
    count: u64,
    distinct: u32,
}

/// Buckets of one aggregate question, produced as the readings are read
/// (key-value readings) or as the reading table computes them.
#[derive(Debug)]
pub struct BucketStream(Buckets);

#[derive(Debug)]
enum Buckets {
    Merged(Box<MergedBuckets>),
    Table(Box<TableBuckets>),
}

/// Buckets accumulated here from the merged key-value readings.
#[derive(Debug)]
struct MergedBuckets {
    merge: RawMerge,
    bucket_ms: i64,
    cell_ms: i64,
    min_group: u64,
    per_sensor: bool,
    per_sensor_parts: bool,
    clamp: Option<Vec<Option<(f64, f64)>>>,
    /// Buckets still allowed by the limit; `None` = no limit.
    remaining: Option<u64>,
    /// Start of the bucket being filled, and of its cell.
    bucket: Option<i64>,
    cell: Option<i64>,
    /// Sequence numbers of the current bucket and cell (stamps compare
    /// against them).
    bucket_seq: u32,
    cell_seq: u32,
    /// Accumulators by `group * measures + measure`, and which are in use.
    accs: Vec<Acc>,
    touched: Vec<usize>,
    cells: Vec<CellAcc>,
    cells_touched: Vec<usize>,
    /// Per (measure, sensor): the bucket and cell sequence last seen.
    bucket_stamp: Vec<u32>,
    cell_stamp: Vec<u32>,
    /// Per (measure, sensor): readings in the current cell, when each
    /// sensor's part is held to the minimum; and which are in use.
    sensor_parts: Vec<u64>,
    parts_touched: Vec<usize>,
    /// Present (measure position, value) pairs of one reading, reused.
    present: Vec<(usize, f64)>,
    finished: bool,
}

impl ReadingStore {
    /// The buckets `spec` asks for over the readings `query` selects, as a
    /// stream (see the module docs for alignment, order and the grid).
    pub fn aggregate_stream(
        &self,
        query: &ReadingQuery,
        spec: &AggregateSpec,
    ) -> Result<BucketStream, QueryError> {
        let bucket_ms = span_ms(spec.bucket)
            .filter(|_| spec.bucket <= MAX_BUCKET)
            .ok_or_else(|| {
                FieldError::new(
                    "bucket",
                    format!(
                        "{} is not a bucket size; use whole milliseconds, up to 366 days",
                        spec.bucket
                    ),
                )
            })?;
        let (cell_ms, min_group, per_sensor_parts) = match &spec.grid {
            None => (bucket_ms, 0, false),
            Some(grid) => {
                let cell_ms = span_ms(grid.cell)
                    .filter(|cell| bucket_ms % cell == 0)
                    .ok_or_else(|| {
                        FieldError::new(
                            "bucket",
                            format!(
                                "must be a whole multiple of the grid cell ({})",
                                crate::governance::body::show_span(grid.cell)
                            ),
                        )
                    })?;
                (
                    cell_ms,
                    u64::from(grid.min_group),
                    grid.per_sensor_parts && spec.group == Group::AllSensors,
                )
            }
        };
        let plan = self.plan(query)?;
        let measures = plan.measures.len();
        let sensors = plan.sensors.len();
        let per_sensor = spec.group == Group::PerSensor;
        let groups = if per_sensor { sensors.max(1) } else { 1 };
        if self.store.reading_table().is_some() {
            let kept = (0..measures).filter(|m| plan.keeps(*m)).count().max(1);
            let per_window = (WINDOW_BUCKETS / (groups * kept)).max(1) as i64;
            let aggregation = TableAggregation {
                scan: table_scan(&plan, query.order),
                bucket_ms,
                cell_ms,
                min_group,
                per_sensor,
                per_sensor_parts,
                clamp: spec.clamp.clone().unwrap_or_default(),
            };
            let (from, until) = (aggregation.scan.from_ms, aggregation.scan.until_ms);
            return Ok(BucketStream(Buckets::Table(Box::new(TableBuckets {
                store: self.store.clone(),
                finished: plan.sensors.is_empty(),
                plan,
                window_ms: bucket_ms.saturating_mul(per_window),
                next: if query.order == Order::Descending {
                    // The end of the bucket holding the last millisecond.
                    align(until - 1, bucket_ms).saturating_add(bucket_ms)
                } else {
                    align(from, bucket_ms)
                },
                aggregation,
                remaining: (query.limit > 0).then_some(query.limit),
                buffer: VecDeque::new(),
            }))));
        }
        Ok(BucketStream(Buckets::Merged(Box::new(MergedBuckets {
            merge: RawMerge::new(self.store.clone(), plan, query.order),
            bucket_ms,
            cell_ms,
            min_group,
            per_sensor,
            per_sensor_parts,
            clamp: spec.clamp.clone(),
            remaining: (query.limit > 0).then_some(query.limit),
            bucket: None,
            cell: None,
            bucket_seq: 0,
            cell_seq: 0,
            accs: vec![EMPTY; groups * measures],
            touched: Vec::new(),
            cells: vec![CellAcc::default(); groups * measures],
            cells_touched: Vec::new(),
            bucket_stamp: vec![u32::MAX; measures * sensors],
            cell_stamp: vec![u32::MAX; measures * sensors],
            sensor_parts: if per_sensor_parts {
                vec![0; measures * sensors]
            } else {
                Vec::new()
            },
            parts_touched: Vec::new(),
            present: Vec::with_capacity(measures),
            finished: false,
        }))))
    }

    /// Every bucket of an aggregate question, collected (tests, benches).
    pub fn aggregate(
        &self,
        query: &ReadingQuery,
        bucket: Duration,
        group: Group,
    ) -> Result<Vec<Bucket>, QueryError> {
        let mut stream = self.aggregate_stream(query, &AggregateSpec::plain(bucket, group))?;
        let mut out = Vec::new();
        while !stream.is_finished() {
            out.extend(stream.next_chunk(4096)?);
        }
        Ok(out)
    }
}

/// A span in whole milliseconds, if it is positive and whole.
fn span_ms(span: Duration) -> Option<i64> {
    let ms = i64::try_from(span.whole_milliseconds()).ok()?;
    (ms > 0 && Duration::milliseconds(ms) == span).then_some(ms)
}

impl BucketStream {
    /// Whether every bucket of the answer has been returned.
    pub fn is_finished(&self) -> bool {
        match &self.0 {
            Buckets::Merged(merged) => merged.finished,
            Buckets::Table(table) => table.finished && table.buffer.is_empty(),
        }
    }

    /// Up to `max` further buckets, after a bounded amount of work; empty
    /// with [`BucketStream::is_finished`] false means "nothing yet, ask
    /// again".
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<Bucket>, QueryError> {
        match &mut self.0 {
            Buckets::Merged(merged) => merged.next_chunk(max),
            Buckets::Table(table) => table.next_chunk(max),
        }
    }
}

/// Buckets a reading table may return for one window: windows are sized
/// so that one holds at most about this many (whole buckets each).
const WINDOW_BUCKETS: usize = 4096;

/// The start of the epoch-aligned span of `width` holding `ms`.
fn align(ms: i64, width: i64) -> i64 {
    ms - ms.rem_euclid(width)
}

/// Buckets computed by a reading table, one time window at a time (see
/// `store::table`).
#[derive(Debug)]
struct TableBuckets {
    store: std::sync::Arc<dyn crate::store::Store>,
    plan: Plan,
    aggregation: TableAggregation,
    window_ms: i64,
    /// Ascending: the start of the next window; descending: its end.
    next: i64,
    remaining: Option<u64>,
    buffer: VecDeque<Bucket>,
    finished: bool,
}

impl TableBuckets {
    fn next_chunk(&mut self, max: usize) -> Result<Vec<Bucket>, QueryError> {
        if self.buffer.is_empty() && !self.finished {
            self.read_window()?;
        }
        let take = max.max(1).min(self.buffer.len());
        Ok(self.buffer.drain(..take).collect())
    }

    /// Reads the next window's buckets into the buffer, or skips to where
    /// the data resumes.
    fn read_window(&mut self) -> Result<(), QueryError> {
        let Some(table) = self.store.reading_table() else {
            return Err(QueryError::Store(crate::store::StoreError::Backend(
                "the store has no reading table".to_string(),
            )));
        };
        let scan = &self.aggregation.scan;
        let bucket_ms = self.aggregation.bucket_ms;
        let (from, until) = if scan.descending {
            (self.next.saturating_sub(self.window_ms), self.next)
        } else {
            (self.next, self.next.saturating_add(self.window_ms))
        };
        if until <= scan.from_ms || from >= scan.until_ms || self.remaining == Some(0) {
            self.finished = true;
            return Ok(());
        }
        let buckets = table.aggregate_window(&self.aggregation, from, until)?;
        if buckets.is_empty() {
            // Jump to the bucket of the next reading in scan order.
            let mut rest = scan.clone();
            if scan.descending {
                rest.until_ms = from.max(scan.from_ms);
            } else {
                rest.from_ms = until.min(scan.until_ms);
            }
            match table.first_time(&rest)? {
                None => self.finished = true,
                Some(ms) if scan.descending => self.next = align(ms, bucket_ms) + bucket_ms,
                Some(ms) => self.next = align(ms, bucket_ms),
            }
            return Ok(());
        }
        self.next = if scan.descending { from } else { until };
        for b in buckets {
            if self.remaining == Some(0) {
                break;
            }
            let Some(measure) = self.plan.measures.get(b.measure) else {
                continue;
            };
            let start = from_ms(b.start_ms).map_err(|source| QueryError::Corrupt {
                dataset: self.plan.dataset.to_string(),
                source,
            })?;
            self.buffer.push_back(Bucket {
                start,
                sensor_id: b.sensor_id,
                measure: measure.clone(),
                count: b.count,
                min: Some(b.min),
                max: Some(b.max),
                sum: b.sum,
                avg: b.sum / b.count.max(1) as f64,
                distinct_sensors: Some(b.distinct_sensors),
            });
            if let Some(n) = &mut self.remaining {
                *n -= 1;
            }
        }
        Ok(())
    }
}

impl MergedBuckets {
    fn corrupt(&self, source: CodecError) -> QueryError {
        QueryError::Corrupt {
            dataset: self.merge.plan.dataset.to_string(),
            source,
        }
    }

    /// Up to `max` further buckets, reading at most about
    /// [`SCAN_PER_CHUNK`] stored readings; empty with
    /// [`BucketStream::is_finished`] false means "nothing yet, ask again".
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<Bucket>, QueryError> {
        let mut out = Vec::new();
        let stop_at = self.merge.scanned + SCAN_PER_CHUNK;
        while out.len() < max.max(1) && !self.finished && self.merge.scanned < stop_at {
            if self.remaining == Some(0) {
                self.finished = true;
                break;
            }
            match self.merge.next_raw()? {
                Some(raw) => {
                    let bucket = raw.ms - raw.ms.rem_euclid(self.bucket_ms);
                    if self.bucket != Some(bucket) {
                        self.close_cell();
                        self.close_bucket(&mut out)?;
                        self.bucket = Some(bucket);
                        self.bucket_seq = self.bucket_seq.wrapping_add(1);
                    }
                    let cell = raw.ms - raw.ms.rem_euclid(self.cell_ms);
                    if self.cell != Some(cell) {
                        self.close_cell();
                        self.cell = Some(cell);
                        self.cell_seq = self.cell_seq.wrapping_add(1);
                    }
                    self.add(raw.sensor, &raw.value)?;
                }
                None => {
                    self.close_cell();
                    self.close_bucket(&mut out)?;
                    self.finished = true;
                }
            }
        }
        if let Some(remaining) = &mut self.remaining {
            let keep = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .min(out.len());
            out.truncate(keep);
            *remaining -= keep as u64;
        }
        Ok(out)
    }

    /// Adds one reading of sensor position `sensor` to the accumulators.
    fn add(&mut self, sensor: usize, value: &[u8]) -> Result<(), QueryError> {
        let mut present = std::mem::take(&mut self.present);
        present.clear();
        let visited = keys::visit_values(value, |m, v| present.push((m, v)));
        let measures = self.merge.plan.measures.len();
        let sensors = self.merge.plan.sensors.len();
        if let Err(source) = visited {
            self.present = present;
            return Err(self.corrupt(source));
        }
        let group = if self.per_sensor { sensor } else { 0 };
        for &(m, v) in &present {
            if m >= measures || !self.merge.plan.keeps(m) {
                continue;
            }
            let v = match self
                .clamp
                .as_ref()
                .and_then(|c| c.get(m).copied().flatten())
            {
                Some((lower, upper)) => v.clamp(lower, upper),
                None => v,
            };
            let index = group * measures + m;
            let stamp = m * sensors + sensor;
            let acc = &mut self.accs[index];
            if acc.count == 0 && !acc.tainted {
                self.touched.push(index);
            }
            acc.count += 1;
            acc.min = acc.min.min(v);
            acc.max = acc.max.max(v);
            acc.sum += v;
            if self.bucket_stamp[stamp] != self.bucket_seq {
                self.bucket_stamp[stamp] = self.bucket_seq;
                acc.distinct += 1;
            }
            if self.min_group > 0 {
                let cell = &mut self.cells[index];
                if cell.count == 0 {
                    self.cells_touched.push(index);
                }
                cell.count += 1;
                if self.cell_stamp[stamp] != self.cell_seq {
                    self.cell_stamp[stamp] = self.cell_seq;
                    cell.distinct += 1;
                }
                if self.per_sensor_parts {
                    if self.sensor_parts[stamp] == 0 {
                        self.parts_touched.push(stamp);
                    }
                    self.sensor_parts[stamp] += 1;
                }
            }
        }
        self.present = present;
        Ok(())
    }

    /// Checks the cell just passed against the grid: a (group, measure)
    /// whose cell holds too few readings (or, over all sensors, too few
    /// sensors) taints its bucket.
    fn close_cell(&mut self) {
        let min = self.min_group;
        for index in self.cells_touched.drain(..) {
            let cell = std::mem::take(&mut self.cells[index]);
            let too_few = cell.count < min || (!self.per_sensor && u64::from(cell.distinct) < min);
            if too_few {
                self.accs[index].tainted = true;
            }
        }
        let sensors = self.merge.plan.sensors.len().max(1);
        for stamp in self.parts_touched.drain(..) {
            let part = std::mem::take(&mut self.sensor_parts[stamp]);
            if part < min {
                // Over all sensors the group is 0; the measure is stamp / sensors.
                self.accs[stamp / sensors].tainted = true;
            }
        }
    }

    /// Emits the bucket just passed (its untainted accumulators, in group
    /// then measure order) and clears it.
    fn close_bucket(&mut self, out: &mut Vec<Bucket>) -> Result<(), QueryError> {
        let Some(start_ms) = self.bucket else {
            return Ok(());
        };
        let start = from_ms(start_ms).map_err(|source| self.corrupt(source))?;
        let measures = self.merge.plan.measures.len();
        self.touched.sort_unstable();
        for index in self.touched.drain(..) {
            let acc = std::mem::replace(&mut self.accs[index], EMPTY);
            if acc.tainted || acc.count == 0 {
                continue;
            }
            let (group, m) = (index / measures, index % measures);
            out.push(Bucket {
                start,
                sensor_id: self
                    .per_sensor
                    .then(|| self.merge.plan.sensors[group].sensor_id.to_string()),
                measure: self.merge.plan.measures[m].clone(),
                count: acc.count,
                min: Some(acc.min),
                max: Some(acc.max),
                sum: acc.sum,
                avg: acc.sum / acc.count as f64,
                distinct_sensors: Some(acc.distinct),
            });
        }
        self.bucket = None;
        self.cell = None;
        Ok(())
    }
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string());
        write!(
            f,
            "{} {} {}: n={} min={} max={} avg={} sensors={}",
            show_time(self.start),
            self.sensor_id.as_deref().unwrap_or("*"),
            self.measure,
            self.count,
            shown(self.min),
            shown(self.max),
            self.avg,
            self.distinct_sensors
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".to_string())
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::super::query::Order;
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
                    min: Some(values.iter().copied().fold(f64::INFINITY, f64::min)),
                    max: Some(values.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
                    sum,
                    avg: sum / values.len() as f64,
                    distinct_sensors: Some(sensors.len() as u32),
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
        for fx in testutil::fixtures(20, 3) {
            let measures = fx.measures();
            let mut rng = Rng(0xa66);
            let sizes = ["30s", "10m", "15m", "1h", "6h", "1d"];
            for round in 0..120 {
                let mut q = testutil::random_query(&fx, &mut rng);
                // Limits on buckets, not readings: keep them modest but varied.
                q.limit = [0, 0, 1, 5, 100_000][rng.below(5) as usize];
                let size =
                    parse_bucket(sizes[rng.below(sizes.len() as u64) as usize]).expect("size");
                for group in [Group::AllSensors, Group::PerSensor] {
                    let expected = naive(&fx.data, &measures, &q, size, group);
                    let got = fx.readings.aggregate(&q, size, group).expect("aggregate");
                    assert_same(
                        &got,
                        &expected,
                        &format!("{}, round {round} {group:?} {size} {q:?}", fx.backend),
                    );
                }
            }
        }
    }

    #[test]
    fn buckets_align_to_the_epoch_and_respect_the_range() {
        for fx in testutil::fixtures(3, 2) {
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
            assert_eq!(first_pm10.distinct_sensors, Some(3));
            assert!(first_pm10.count <= 12);
            let err = fx
                .readings
                .aggregate(&q, Duration::ZERO, Group::AllSensors)
                .expect_err("zero");
            assert!(err.to_string().contains("bucket: "), "{err}");
        }
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

    /// The buckets a grid releases, computed the obvious way: every cell
    /// with data of a released bucket meets the minimum.
    #[allow(clippy::too_many_arguments)]
    fn naive_grid(
        data: &[Reading],
        measures: &[String],
        q: &ReadingQuery,
        size: Duration,
        cell: Duration,
        group: Group,
        min: u32,
        parts: bool,
    ) -> Vec<Bucket> {
        let cell_ms = cell.whole_milliseconds() as i64;
        let size_ms = size.whole_milliseconds() as i64;
        // (bucket, sensor, measure) -> cell -> (count, readings per sensor)
        type Cells = BTreeMap<i64, (u64, BTreeMap<String, u64>)>;
        let mut cells: BTreeMap<(i64, Option<String>, String), Cells> = BTreeMap::new();
        for r in data.iter().filter(|r| r.at >= q.from && r.at < q.until) {
            let ms = to_ms(r.at);
            for name in r.values.keys() {
                let sensor = (group == Group::PerSensor).then(|| r.sensor_id.clone());
                let e = cells
                    .entry((ms.div_euclid(size_ms) * size_ms, sensor, name.clone()))
                    .or_default()
                    .entry(ms.div_euclid(cell_ms) * cell_ms)
                    .or_default();
                e.0 += 1;
                *e.1.entry(r.sensor_id.clone()).or_default() += 1;
            }
        }
        let bad: BTreeSet<(i64, Option<String>, String)> = cells
            .into_iter()
            .filter(|(key, cells)| {
                cells.values().any(|(count, sensors)| {
                    *count < u64::from(min)
                        || (key.1.is_none() && (sensors.len() as u64) < u64::from(min))
                        || (key.1.is_none()
                            && parts
                            && sensors.values().any(|n| *n < u64::from(min)))
                })
            })
            .map(|(key, _)| key)
            .collect();
        naive(data, measures, q, size, group)
            .into_iter()
            .filter(|b| {
                let key = (to_ms(b.start), b.sensor_id.clone(), b.measure.clone());
                !bad.contains(&key)
            })
            .collect()
    }

    #[test]
    fn a_grid_releases_exactly_the_buckets_whose_cells_all_meet_the_minimum() {
        for fx in testutil::fixtures(12, 2) {
            let measures = fx.measures();
            let mut rng = Rng(0x6e1d);
            let mut released = 0;
            let mut withheld = 0;
            for round in 0..60 {
                let mut q = testutil::random_query(&fx, &mut rng);
                q.sensor_ids.clear();
                q.area = None;
                q.limit = 0;
                let cell = [Duration::minutes(10), Duration::minutes(30), Duration::HOUR]
                    [rng.below(3) as usize];
                let size = cell * [1, 2, 6][rng.below(3) as usize];
                let min = [2, 3, 5, 8][rng.below(4) as usize];
                for (group, parts) in [
                    (Group::AllSensors, false),
                    (Group::AllSensors, true),
                    (Group::PerSensor, false),
                ] {
                    let expected =
                        naive_grid(&fx.data, &measures, &q, size, cell, group, min, parts);
                    let spec = AggregateSpec {
                        bucket: size,
                        group,
                        grid: Some(Grid {
                            cell,
                            min_group: min,
                            per_sensor_parts: parts,
                        }),
                        clamp: None,
                    };
                    let mut stream = fx.readings.aggregate_stream(&q, &spec).expect("stream");
                    let mut got = Vec::new();
                    while !stream.is_finished() {
                        got.extend(stream.next_chunk(7).expect("chunk"));
                    }
                    let all = naive(&fx.data, &measures, &q, size, group).len();
                    released += got.len();
                    withheld += all - got.len();
                    assert_same(
                        &got,
                        &expected,
                        &format!("round {round} {group:?} {size} cell {cell} min {min}"),
                    );
                }
            }
            assert!(
                released > 0 && withheld > 0,
                "{released} released, {withheld} withheld"
            );
        }
    }

    #[test]
    fn a_bucket_must_be_a_whole_number_of_cells() {
        for fx in testutil::fixtures(3, 1) {
            let q = testutil::everything(&fx.dataset);
            let spec = AggregateSpec {
                bucket: Duration::minutes(90),
                group: Group::AllSensors,
                grid: Some(Grid {
                    cell: Duration::HOUR,
                    min_group: 1,
                    per_sensor_parts: false,
                }),
                clamp: None,
            };
            let err = fx
                .readings
                .aggregate_stream(&q, &spec)
                .expect_err("90m of 1h cells");
            assert!(
                err.to_string()
                    .contains("whole multiple of the grid cell (1h)"),
                "{err}"
            );
        }
    }

    #[test]
    fn clamped_values_are_summed_within_their_bounds() {
        for fx in testutil::fixtures(4, 1) {
            let q = testutil::everything(&fx.dataset);
            let measures = fx.measures();
            let spec = AggregateSpec {
                bucket: Duration::DAY,
                group: Group::AllSensors,
                grid: None,
                clamp: Some(measures.iter().map(|_| Some((0.0, 1.0))).collect()),
            };
            let mut stream = fx.readings.aggregate_stream(&q, &spec).expect("stream");
            let buckets = stream.next_chunk(1000).expect("chunk");
            assert!(!buckets.is_empty());
            for b in buckets {
                assert!(b.sum <= b.count as f64 && b.sum >= 0.0, "{b}");
                assert!(b.max.expect("max") <= 1.0, "{b}");
            }
        }
    }
}
