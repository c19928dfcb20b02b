//! Reading queries: a time range, optionally narrowed to sensors, an area
//! and measures, in time order, with a limit; returned as an iterator (or
//! in chunks) so the RPC layer can stream large results without holding
//! them.
//!
//! This module owns [`ReadingQuery`], its validation, the query plan (which
//! sensors' key ranges to scan) and [`ReadingIter`], the k-way merge over
//! one cursor per sensor. Each cursor reads its sensor's range of
//! [`Keyspace::Readings`] in small chunks (growing as the sensor keeps
//! producing results), and a binary heap picks the next reading across
//! sensors, so a query with `limit = 10` over a thousand sensors reads
//! about a chunk per sensor, not the period.
//!
//! The [`Store`] trait scans forwards only. A descending cursor therefore
//! scans time windows backwards from `until`: it keeps the last chunk of
//! each window, and doubles the window when it finds too little (halving
//! its effective size when it finds too much), so it too reads roughly
//! what it returns.
//!
//! Sensors are taken from the sensor index, and skipped when their first
//! to last reading cannot overlap the time range or the box around every
//! location they reported cannot meet the area. Each remaining reading is
//! filtered by its own location: readings without one never match an area.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use time::OffsetDateTime;

use super::catalog::{CatalogError, DatasetKind, show_time};
use super::geo::Area;
use super::keys::{self, CodecError};
use super::readings::{IndexError, Reading, ReadingStore, check_sensor_id, from_ms, to_ms};
use crate::governance::body::FieldError;
use crate::store::table::{AreaFilter, ScanPosition, TableRow, TableScan};
use crate::store::{Keyspace, Store, StoreError};

/// Smallest and largest number of entries a cursor reads per store call.
const FIRST_CHUNK: usize = 16;
const MAX_CHUNK: usize = 512;
/// Entries all cursors of one query may hold at once: a merge over many
/// sensors reads less per sensor, so one answer's memory stays bounded
/// (about 64 bytes an entry) however many sensors a dataset has.
const MERGE_BUFFER: usize = 64 * 1024;
/// The fewest entries a cursor reads per store call, whatever the budget.
const LEAST_CHUNK: usize = 4;
/// Stored readings one `next_chunk` call reads at most, however few pass
/// the filters: the caller gets control back (to stop a cancelled or
/// overdue answer) after about this much work.
pub const SCAN_PER_CHUNK: u64 = 200_000;

/// Time order of results; readings at the same time come in sensor id
/// order (ascending) either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    #[default]
    Ascending,
    Descending,
}

/// A question about one sensor dataset's readings.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingQuery {
    pub dataset: String,
    /// Half-open time range `[from, until)`.
    pub from: OffsetDateTime,
    pub until: OffsetDateTime,
    /// Only these sensors; empty means all.
    pub sensor_ids: Vec<String>,
    /// Only readings whose own location is inside.
    pub area: Option<Area>,
    /// Only these measures (others are left out of each reading, and
    /// readings with none of them are skipped); empty means all.
    pub measures: Vec<String>,
    pub order: Order,
    /// At most this many readings (aggregates: buckets); 0 means no limit.
    pub limit: u64,
}

impl ReadingQuery {
    /// All readings of `dataset` in `[from, until)`, ascending, no limit.
    pub fn new(dataset: impl Into<String>, from: OffsetDateTime, until: OffsetDateTime) -> Self {
        ReadingQuery {
            dataset: dataset.into(),
            from,
            until,
            sensor_ids: Vec::new(),
            area: None,
            measures: Vec::new(),
            order: Order::Ascending,
            limit: 0,
        }
    }
}

/// Why a query (or aggregate) could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("unknown dataset `{dataset}`")]
    UnknownDataset { dataset: String },
    #[error("dataset `{dataset}` is of kind {kind}; only sensor datasets have readings")]
    NotSensor { dataset: String, kind: DatasetKind },
    #[error("invalid query: {0}")]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("dataset `{dataset}`: stored data is unreadable: {source}")]
    Corrupt { dataset: String, source: CodecError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a validated query scans and keeps. Shared with aggregation.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub dataset: Arc<str>,
    pub number: u32,
    /// The dataset's measures, by stored position.
    pub measures: Arc<[String]>,
    /// Which positions to keep; `None` keeps all.
    pub selected: Option<Arc<[bool]>>,
    pub area: Option<Area>,
    /// Sensors to scan, sorted by id, with their clipped time span.
    pub sensors: Vec<SensorScan>,
    /// The dataset's update interval, to size backward windows.
    pub interval_ms: i64,
}

impl Plan {
    /// Whether measure position `m` is asked for.
    pub fn keeps(&self, m: usize) -> bool {
        self.selected
            .as_ref()
            .is_none_or(|mask| mask.get(m).copied().unwrap_or(false))
    }

    /// Whether a reading at `location` passes the area filter.
    pub fn in_area(&self, location: Option<(f64, f64)>) -> bool {
        match (&self.area, location) {
            (None, _) => true,
            (Some(area), Some(point)) => area.contains(point),
            (Some(_), None) => false,
        }
    }
}

/// One sensor's part of a plan.
#[derive(Debug, Clone)]
pub(super) struct SensorScan {
    pub sensor_id: Arc<str>,
    pub lo_ms: i64,
    pub hi_ms: i64,
}

impl ReadingStore {
    /// The readings `query` asks for, as an iterator that reads the store
    /// as it goes (errors, if any, come as its items).
    pub fn query_iter(&self, query: &ReadingQuery) -> Result<ReadingIter, QueryError> {
        let plan = self.plan(query)?;
        Ok(ReadingIter::new(
            self.store.clone(),
            plan,
            query.order,
            query.limit,
        ))
    }

    /// The readings `query` asks for, collected.
    pub fn query(&self, query: &ReadingQuery) -> Result<Vec<Reading>, QueryError> {
        self.query_iter(query)?.collect()
    }

    /// Streams the answer to `query` in chunks of at most `chunk_size`
    /// readings to `sink`, which may stop early by returning `false`.
    /// Returns the number of readings passed on.
    pub fn query_chunks(
        &self,
        query: &ReadingQuery,
        chunk_size: usize,
        mut sink: impl FnMut(Vec<Reading>) -> bool,
    ) -> Result<u64, QueryError> {
        let mut iter = self.query_iter(query)?;
        let mut sent = 0;
        while !iter.is_finished() {
            let chunk = iter.next_chunk(chunk_size)?;
            if chunk.is_empty() {
                continue;
            }
            sent += chunk.len() as u64;
            if !sink(chunk) {
                return Ok(sent);
            }
        }
        Ok(sent)
    }

    /// Validates `query` and works out which sensor ranges to scan.
    pub(super) fn plan(&self, query: &ReadingQuery) -> Result<Plan, QueryError> {
        let entry =
            self.catalog
                .entry(&query.dataset)?
                .ok_or_else(|| QueryError::UnknownDataset {
                    dataset: query.dataset.clone(),
                })?;
        if entry.dataset.kind != DatasetKind::Sensor {
            return Err(QueryError::NotSensor {
                dataset: query.dataset.clone(),
                kind: entry.dataset.kind,
            });
        }
        if query.until < query.from {
            return Err(FieldError::new(
                "until",
                format!(
                    "{} is before from = {}",
                    show_time(query.until),
                    show_time(query.from)
                ),
            )
            .into());
        }
        let measures: Arc<[String]> = entry.dataset.measure_names().into();
        let selected = if query.measures.is_empty() {
            None
        } else {
            let mut mask = vec![false; measures.len()];
            for (i, name) in query.measures.iter().enumerate() {
                let Some(pos) = measures.iter().position(|m| m == name) else {
                    return Err(FieldError::new(
                        format!("measures[{i}]"),
                        format!(
                            "unknown measure `{}`; dataset `{}` has {}",
                            name.escape_debug(),
                            query.dataset,
                            measures.join(", ")
                        ),
                    )
                    .into());
                };
                mask[pos] = true;
            }
            Some(mask.into())
        };
        if let Some(area) = &query.area {
            area.validate("area")?;
        }
        for (i, id) in query.sensor_ids.iter().enumerate() {
            check_sensor_id(id).map_err(|r| FieldError::new(format!("sensor_ids[{i}]"), r))?;
        }
        // Ceiling for both ends: stored times are whole milliseconds.
        let ceil_ms = |t: OffsetDateTime| -> i64 {
            let ms = to_ms(t);
            if t.unix_timestamp_nanos().rem_euclid(1_000_000) == 0 {
                ms
            } else {
                ms.saturating_add(1)
            }
        };
        let (lo_ms, hi_ms) = (ceil_ms(query.from), ceil_ms(query.until));
        let corrupt = |e: IndexError| match e {
            IndexError::Store(e) => QueryError::Store(e),
            IndexError::Codec(source) => QueryError::Corrupt {
                dataset: query.dataset.clone(),
                source,
            },
        };
        let candidates = if query.sensor_ids.is_empty() {
            self.index_entries(entry.number).map_err(corrupt)?
        } else {
            let wanted: BTreeSet<&String> = query.sensor_ids.iter().collect();
            let mut found = Vec::with_capacity(wanted.len());
            for id in wanted {
                if let Some(e) = self.index_entry(entry.number, id).map_err(corrupt)? {
                    found.push((id.clone(), e));
                }
            }
            found
        };
        let area_bounds = query.area.map(|a| a.bounds());
        let mut sensors = Vec::with_capacity(candidates.len());
        if lo_ms < hi_ms {
            for (sensor_id, e) in candidates {
                let lo = lo_ms.max(e.first_ms);
                let hi = hi_ms.min(e.last_ms.saturating_add(1));
                if lo >= hi {
                    continue;
                }
                if let Some(bounds) = &area_bounds {
                    match &e.bounds {
                        Some(b) if b.intersects(bounds) => {}
                        _ => continue,
                    }
                }
                sensors.push(SensorScan {
                    sensor_id: sensor_id.into(),
                    lo_ms: lo,
                    hi_ms: hi,
                });
            }
        }
        Ok(Plan {
            dataset: query.dataset.as_str().into(),
            number: entry.number,
            measures,
            selected,
            area: query.area,
            sensors,
            interval_ms: i64::try_from(entry.dataset.update_interval_s)
                .unwrap_or(i64::MAX / 1000)
                .max(1)
                .saturating_mul(1000),
        })
    }
}

/// One sensor's range, read in chunks in either direction.
#[derive(Debug)]
pub(super) struct Cursor {
    pub sensor_id: Arc<str>,
    dataset: Arc<str>,
    prefix: Vec<u8>,
    /// What is left to read: `[lo_ms, hi_ms)`.
    lo_ms: i64,
    hi_ms: i64,
    order: Order,
    /// Entries read but not yet taken, in output order.
    buffer: VecDeque<(i64, Vec<u8>)>,
    chunk: usize,
    /// The largest `chunk` may grow: the merge's buffer budget shared out.
    max_chunk: usize,
    /// Descending only: the width of the next backward window.
    window_ms: i64,
}

impl Cursor {
    pub(super) fn new(plan: &Plan, scan: &SensorScan, order: Order) -> Cursor {
        let max_chunk = (MERGE_BUFFER / plan.sensors.len().max(1)).clamp(LEAST_CHUNK, MAX_CHUNK);
        let chunk = FIRST_CHUNK.min(max_chunk);
        Cursor {
            prefix: keys::sensor_prefix(plan.number, &scan.sensor_id),
            sensor_id: scan.sensor_id.clone(),
            dataset: plan.dataset.clone(),
            lo_ms: scan.lo_ms,
            hi_ms: scan.hi_ms,
            order,
            buffer: VecDeque::new(),
            chunk,
            max_chunk,
            window_ms: plan.interval_ms.saturating_mul(chunk as i64),
        }
    }

    /// The next stored (time, value) of this sensor, in cursor order.
    pub(super) fn next_raw(
        &mut self,
        store: &dyn Store,
    ) -> Result<Option<(i64, Vec<u8>)>, QueryError> {
        while self.buffer.is_empty() && self.lo_ms < self.hi_ms {
            match self.order {
                Order::Ascending => self.fill_forward(store)?,
                Order::Descending => self.fill_backward(store)?,
            }
        }
        Ok(self.buffer.pop_front())
    }

    fn range(&self, lo_ms: i64, hi_ms: i64) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        (
            Bound::Included(keys::with_time(&self.prefix, lo_ms)),
            Bound::Excluded(keys::with_time(&self.prefix, hi_ms)),
        )
    }

    fn time_of(&self, key: &[u8]) -> Result<i64, CodecError> {
        key.strip_prefix(self.prefix.as_slice())
            .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
            .map(keys::decode_time)
            .ok_or_else(|| {
                CodecError(format!(
                    "reading key {} does not belong to sensor `{}`",
                    hex::encode(key),
                    self.sensor_id
                ))
            })
    }

    fn fill_forward(&mut self, store: &dyn Store) -> Result<(), QueryError> {
        let mut read = 0;
        for item in store
            .range(Keyspace::Readings, self.range(self.lo_ms, self.hi_ms))
            .take(self.chunk)
        {
            let (key, value) = item?;
            let ms = self.time_of(&key).map_err(|e| self.corrupt(e))?;
            self.buffer.push_back((ms, value));
            self.lo_ms = ms.saturating_add(1);
            read += 1;
        }
        if read < self.chunk {
            self.lo_ms = self.hi_ms;
        }
        self.chunk = (self.chunk * 2).min(self.max_chunk);
        Ok(())
    }

    fn fill_backward(&mut self, store: &dyn Store) -> Result<(), QueryError> {
        let start = self
            .lo_ms
            .max(self.hi_ms.saturating_sub(self.window_ms.max(1)));
        let mut kept: VecDeque<(i64, Vec<u8>)> = VecDeque::with_capacity(self.chunk);
        let mut overflowed = false;
        for item in store.range(Keyspace::Readings, self.range(start, self.hi_ms)) {
            let (key, value) = item?;
            let ms = self.time_of(&key).map_err(|e| self.corrupt(e))?;
            if kept.len() == self.chunk {
                kept.pop_front();
                overflowed = true;
            }
            kept.push_back((ms, value));
        }
        let window = self.hi_ms - start;
        let next_chunk = (self.chunk * 2).min(self.max_chunk);
        match kept.front() {
            Some(&(first, _)) if overflowed => {
                // Too many in this window: the rest of it comes next time,
                // in a window sized from what this chunk covered.
                let covered = (self.hi_ms - first).max(1);
                self.window_ms = covered.saturating_mul((next_chunk / self.chunk) as i64);
                self.hi_ms = first;
            }
            _ => {
                // Aim the next window at about a chunk's worth, growing at
                // most eightfold per step (data may be bursty).
                self.hi_ms = start;
                if kept.len() < next_chunk {
                    let factor = next_chunk.div_ceil(kept.len().max(1)).clamp(1, 8);
                    self.window_ms = window.max(1).saturating_mul(factor as i64);
                }
            }
        }
        self.buffer.extend(kept.into_iter().rev());
        self.chunk = next_chunk;
        Ok(())
    }

    fn corrupt(&self, source: CodecError) -> QueryError {
        QueryError::Corrupt {
            dataset: self.dataset.to_string(),
            source,
        }
    }
}

/// Turns a stored reading into a [`Reading`] if it passes the plan's area
/// and measure filters.
pub(super) fn materialize(
    plan: &Plan,
    sensor_id: &str,
    ms: i64,
    value: &[u8],
) -> Result<Option<Reading>, CodecError> {
    let mut values = BTreeMap::new();
    let location = keys::visit_values(value, |i, v| {
        if let Some(name) = plan.measures.get(i)
            && plan.keeps(i)
        {
            values.insert(name.clone(), v);
        }
    })?;
    if values.is_empty() || !plan.in_area(location) {
        return Ok(None);
    }
    Ok(Some(Reading {
        sensor_id: sensor_id.to_string(),
        at: from_ms(ms)?,
        values,
        location,
    }))
}

/// The next reading of a cursor in the heap.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    ms: i64,
    /// Cursor index; cursors are in sensor id order.
    cursor: usize,
    descending: bool,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest, so "greatest" means "comes next".
        let by_time = if self.descending {
            self.ms.cmp(&other.ms)
        } else {
            other.ms.cmp(&self.ms)
        };
        by_time.then_with(|| other.cursor.cmp(&self.cursor))
    }
}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One stored reading as the merge yields it: its time, the position of
/// its sensor in the plan (sensor id order), and its encoded values.
#[derive(Debug)]
pub(super) struct RawReading {
    pub ms: i64,
    pub sensor: usize,
    pub value: Vec<u8>,
}

/// The stored readings of a plan in time order across sensors (a k-way
/// merge over one cursor per sensor), read from the store as needed.
/// Readings outside the plan's area are skipped; measure selection is left
/// to the consumer (raw readings and aggregation decode differently).
#[derive(Debug)]
pub(super) struct RawMerge {
    store: Arc<dyn Store>,
    pub plan: Plan,
    cursors: Vec<Cursor>,
    pending: Vec<Option<Vec<u8>>>,
    heap: BinaryHeap<Head>,
    descending: bool,
    started: bool,
    /// Stored readings read so far.
    pub scanned: u64,
}

impl RawMerge {
    pub(super) fn new(store: Arc<dyn Store>, plan: Plan, order: Order) -> RawMerge {
        let cursors: Vec<Cursor> = plan
            .sensors
            .iter()
            .map(|scan| Cursor::new(&plan, scan, order))
            .collect();
        RawMerge {
            store,
            pending: (0..cursors.len()).map(|_| None).collect(),
            cursors,
            plan,
            heap: BinaryHeap::new(),
            descending: order == Order::Descending,
            started: false,
            scanned: 0,
        }
    }

    fn corrupt(&self, source: CodecError) -> QueryError {
        QueryError::Corrupt {
            dataset: self.plan.dataset.to_string(),
            source,
        }
    }

    /// Moves cursor `i` to its next reading inside the area and queues it.
    fn advance(&mut self, i: usize) -> Result<(), QueryError> {
        while let Some((ms, value)) = self.cursors[i].next_raw(self.store.as_ref())? {
            if self.plan.area.is_some() {
                let location =
                    keys::visit_values(&value, |_, _| {}).map_err(|source| self.corrupt(source))?;
                if !self.plan.in_area(location) {
                    continue;
                }
            }
            self.pending[i] = Some(value);
            self.heap.push(Head {
                ms,
                cursor: i,
                descending: self.descending,
            });
            return Ok(());
        }
        Ok(())
    }

    /// The next reading in order, or `None` when the plan is exhausted.
    pub(super) fn next_raw(&mut self) -> Result<Option<RawReading>, QueryError> {
        if !self.started {
            self.started = true;
            for i in 0..self.cursors.len() {
                self.advance(i)?;
            }
        }
        let Some(head) = self.heap.pop() else {
            return Ok(None);
        };
        let value = self.pending[head.cursor].take().unwrap_or_default();
        self.advance(head.cursor)?;
        self.scanned += 1;
        Ok(Some(RawReading {
            ms: head.ms,
            sensor: head.cursor,
            value,
        }))
    }
}

/// The readings of a query, in order, read from the store as needed.
/// Owns its store handle, so it can be moved to a blocking task and
/// drained chunk by chunk ([`ReadingIter::next_chunk`]).
#[derive(Debug)]
pub struct ReadingIter {
    source: Source,
    /// Readings still allowed by the limit; `None` = no limit.
    remaining: Option<u64>,
    finished: bool,
}

/// Where a query's readings come from.
#[derive(Debug)]
enum Source {
    /// Key-value readings, merged across sensors here.
    Merge(RawMerge),
    /// A reading table, read a page at a time.
    Table(TablePages),
}

/// Pages of a reading table scan (see `store::table`).
#[derive(Debug)]
struct TablePages {
    store: Arc<dyn Store>,
    plan: Plan,
    scan: TableScan,
    after: Option<ScanPosition>,
    buffer: VecDeque<TableRow>,
    exhausted: bool,
    scanned: u64,
}

/// Rows one page of a table scan holds.
const TABLE_PAGE: usize = 2048;

impl TablePages {
    fn next_row(&mut self, want: Option<u64>) -> Result<Option<TableRow>, QueryError> {
        if self.buffer.is_empty() && !self.exhausted {
            let Some(table) = self.store.reading_table() else {
                return Err(QueryError::Store(StoreError::Backend(
                    "the store has no reading table".to_string(),
                )));
            };
            // A small limit reads a small page.
            let size = want.map_or(TABLE_PAGE, |n| {
                usize::try_from(n)
                    .unwrap_or(TABLE_PAGE)
                    .clamp(1, TABLE_PAGE)
            });
            let page = table.scan_page(&self.scan, self.after.as_ref(), size)?;
            self.exhausted = page.len() < size;
            if let Some(last) = page.last() {
                self.after = Some(ScanPosition {
                    ms: last.ms,
                    sensor_id: last.sensor_id.clone(),
                });
            }
            self.buffer.extend(page);
        }
        let row = self.buffer.pop_front();
        self.scanned += u64::from(row.is_some());
        Ok(row)
    }

    /// A table row as a reading, with only the measures asked for.
    fn materialize(&self, row: TableRow) -> Result<Option<Reading>, QueryError> {
        let mut values = BTreeMap::new();
        for (m, value) in row.values.iter().enumerate() {
            if let (Some(v), Some(name)) = (value, self.plan.measures.get(m))
                && self.plan.keeps(m)
            {
                values.insert(name.clone(), *v);
            }
        }
        if values.is_empty() {
            return Ok(None);
        }
        Ok(Some(Reading {
            sensor_id: row.sensor_id,
            at: from_ms(row.ms).map_err(|source| QueryError::Corrupt {
                dataset: self.plan.dataset.to_string(),
                source,
            })?,
            values,
            location: row.location,
        }))
    }
}

/// The table scan a plan asks for: the plan's sensors over the span that
/// covers all of theirs.
pub(super) fn table_scan(plan: &Plan, order: Order) -> TableScan {
    TableScan {
        dataset: plan.number,
        sensors: plan
            .sensors
            .iter()
            .map(|s| s.sensor_id.to_string())
            .collect(),
        from_ms: plan.sensors.iter().map(|s| s.lo_ms).min().unwrap_or(0),
        until_ms: plan.sensors.iter().map(|s| s.hi_ms).max().unwrap_or(0),
        area: plan.area.map(|area| match area {
            Area::BoundingBox(b) => AreaFilter::Box {
                min_lat: b.min_lat,
                min_lon: b.min_lon,
                max_lat: b.max_lat,
                max_lon: b.max_lon,
            },
            Area::Radius { lat, lon, km } => AreaFilter::Circle { lat, lon, km },
        }),
        measures: plan.selected.as_ref().map(|mask| {
            mask.iter()
                .enumerate()
                .filter_map(|(m, keep)| keep.then_some(m))
                .collect()
        }),
        descending: order == Order::Descending,
    }
}

impl ReadingIter {
    fn new(store: Arc<dyn Store>, plan: Plan, order: Order, limit: u64) -> ReadingIter {
        let source = if store.reading_table().is_some() {
            Source::Table(TablePages {
                scan: table_scan(&plan, order),
                exhausted: plan.sensors.is_empty(),
                store,
                plan,
                after: None,
                buffer: VecDeque::new(),
                scanned: 0,
            })
        } else {
            Source::Merge(RawMerge::new(store, plan, order))
        };
        ReadingIter {
            source,
            remaining: (limit > 0).then_some(limit),
            finished: false,
        }
    }

    fn scanned(&self) -> u64 {
        match &self.source {
            Source::Merge(merge) => merge.scanned,
            Source::Table(pages) => pages.scanned,
        }
    }

    fn step(&mut self) -> Result<Option<Reading>, QueryError> {
        while self.remaining != Some(0) {
            let reading = match &mut self.source {
                Source::Merge(merge) => {
                    let Some(raw) = merge.next_raw()? else {
                        return Ok(None);
                    };
                    let plan = &merge.plan;
                    materialize(
                        plan,
                        &plan.sensors[raw.sensor].sensor_id,
                        raw.ms,
                        &raw.value,
                    )
                    .map_err(|source| merge.corrupt(source))?
                }
                Source::Table(pages) => {
                    let Some(row) = pages.next_row(self.remaining)? else {
                        return Ok(None);
                    };
                    pages.materialize(row)?
                }
            };
            if let Some(reading) = reading {
                if let Some(n) = &mut self.remaining {
                    *n -= 1;
                }
                return Ok(Some(reading));
            }
        }
        Ok(None)
    }

    /// Up to `max` further readings, reading at most about
    /// [`SCAN_PER_CHUNK`] stored ones; empty with [`ReadingIter::is_finished`]
    /// false means "nothing yet, ask again".
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<Reading>, QueryError> {
        let mut chunk = Vec::with_capacity(max.clamp(1, 4096));
        let stop_at = self.scanned() + SCAN_PER_CHUNK;
        while chunk.len() < max.max(1) && self.scanned() < stop_at {
            match self.next() {
                Some(item) => chunk.push(item?),
                None => break,
            }
        }
        Ok(chunk)
    }

    /// Whether every reading of the answer has been returned.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

impl Iterator for ReadingIter {
    type Item = Result<Reading, QueryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.step() {
            Ok(Some(reading)) => Some(Ok(reading)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::geo::BoundingBox;
    use super::super::testutil::{self, Rng};
    use super::*;

    /// The answer computed the obvious way, over the in-memory readings.
    fn naive(data: &[Reading], measures: &[String], q: &ReadingQuery) -> Vec<Reading> {
        let mut out: Vec<Reading> = data
            .iter()
            .filter(|r| r.at >= q.from && r.at < q.until)
            .filter(|r| q.sensor_ids.is_empty() || q.sensor_ids.contains(&r.sensor_id))
            .filter(|r| match (&q.area, r.location) {
                (None, _) => true,
                (Some(area), Some(p)) => area.contains(p),
                (Some(_), None) => false,
            })
            .filter_map(|r| {
                let mut r = r.clone();
                if !q.measures.is_empty() {
                    r.values.retain(|k, _| q.measures.contains(k));
                }
                debug_assert!(r.values.keys().all(|k| measures.contains(k)));
                (!r.values.is_empty()).then_some(r)
            })
            .collect();
        out.sort_by(|a, b| {
            let t = match q.order {
                Order::Ascending => a.at.cmp(&b.at),
                Order::Descending => b.at.cmp(&a.at),
            };
            t.then_with(|| a.sensor_id.cmp(&b.sensor_id))
        });
        if q.limit > 0 {
            out.truncate(q.limit as usize);
        }
        out
    }

    #[test]
    fn queries_match_a_brute_force_answer() {
        for fx in testutil::fixtures(20, 3) {
            let measures = fx.measures();
            let mut rng = Rng(0x5eed);
            let mut nonempty = 0;
            for round in 0..300 {
                let q = testutil::random_query(&fx, &mut rng);
                let expected = naive(&fx.data, &measures, &q);
                let got = fx.readings.query(&q).expect("query");
                assert_eq!(
                    got.len(),
                    expected.len(),
                    "{}, round {round}: lengths differ for {q:?}",
                    fx.backend
                );
                assert!(
                    got == expected,
                    "{}, round {round}: results differ for {q:?}",
                    fx.backend
                );
                nonempty += usize::from(!got.is_empty());

                // Chunked streaming yields the same readings.
                let mut streamed = Vec::new();
                let chunk_size = 1 + (round % 7) * 50;
                fx.readings
                    .query_chunks(&q, chunk_size, |chunk| {
                        assert!(!chunk.is_empty() && chunk.len() <= chunk_size);
                        streamed.extend(chunk);
                        true
                    })
                    .expect("chunks");
                assert!(streamed == expected, "round {round}: chunks differ");
            }
            assert!(nonempty > 150, "too few non-empty answers: {nonempty}");
        }
    }

    #[test]
    fn descending_and_limits_over_a_whole_dataset() {
        for fx in testutil::fixtures(20, 3) {
            let measures = fx.measures();
            for order in [Order::Ascending, Order::Descending] {
                for limit in [0, 1, 2, 19, 20, 21, 999, 1_000_000] {
                    let mut q = testutil::everything(&fx.dataset);
                    q.order = order;
                    q.limit = limit;
                    let expected = naive(&fx.data, &measures, &q);
                    let got = fx.readings.query(&q).expect("query");
                    assert!(got == expected, "{order:?} limit {limit}");
                }
            }
        }
    }

    #[test]
    fn exact_boundaries_are_half_open() {
        for fx in testutil::fixtures(2, 1) {
            let t = fx.data[10].at;
            let mut q = testutil::everything(&fx.dataset);
            q.from = t;
            q.until = t;
            assert!(fx.readings.query(&q).expect("empty").is_empty());
            q.until = t + time::Duration::milliseconds(1);
            let got = fx.readings.query(&q).expect("one instant");
            assert!(!got.is_empty() && got.iter().all(|r| r.at == t));
            q.from = t + time::Duration::milliseconds(1);
            q.until = t;
            let err = fx.readings.query(&q).expect_err("backwards");
            assert!(err.to_string().contains("until: "), "{err}");
        }
    }

    #[test]
    fn bad_queries_name_the_field() {
        for fx in testutil::fixtures(1, 1) {
            let mut q = testutil::everything(&fx.dataset);
            q.measures = vec!["pm10".to_string(), "o3".to_string()];
            let err = fx.readings.query(&q).expect_err("measure");
            assert_eq!(
                err.to_string(),
                "invalid query: measures[1]: unknown measure `o3`; dataset `aarhus-air-quality` \
             has pm2_5, pm10, no2"
            );
            let mut q = testutil::everything(&fx.dataset);
            q.area = Some(Area::Radius {
                lat: 56.0,
                lon: 10.0,
                km: -1.0,
            });
            let err = fx.readings.query(&q).expect_err("radius");
            assert!(err.to_string().contains("area.radius.km"), "{err}");
            let mut q = testutil::everything(&fx.dataset);
            q.area = Some(Area::BoundingBox(BoundingBox {
                min_lat: 56.0,
                min_lon: 10.0,
                max_lat: 55.0,
                max_lon: 11.0,
            }));
            let err = fx.readings.query(&q).expect_err("bbox");
            assert!(err.to_string().contains("area.bbox.max_lat"), "{err}");
            let q = testutil::everything("nope");
            assert!(matches!(
                fx.readings.query(&q).expect_err("unknown"),
                QueryError::UnknownDataset { .. }
            ));
        }
    }
    #[test]
    fn cursors_cope_with_bursts_and_gaps() {
        for fx in testutil::fixtures(2, 1) {
            let measures = fx.measures();
            let point = Some((56.16, 10.21));
            let mut extra = Vec::new();
            let at = |s: i64| testutil::START + time::Duration::seconds(s);
            // Hourly for four days, then a burst of 3000 one second apart, a
            // gap of 20 days, then 50 more at 10-minute intervals.
            for h in 0..96 {
                extra.push((at(h * 3600 - 4 * 86_400), f64::from(h as i32)));
            }
            for s in 0..3000 {
                extra.push((at(s), f64::from(s as i32)));
            }
            for k in 0..50 {
                extra.push((at(20 * 86_400 + k * 600), f64::from(k as i32)));
            }
            // And 40 one millisecond apart at each end, across chunk boundaries.
            for k in 0..40 {
                for base in [-10 * 86_400, 25 * 86_400] {
                    extra.push((
                        at(base) + time::Duration::milliseconds(k),
                        f64::from(k as i32),
                    ));
                }
            }
            let burst: Vec<Reading> = extra
                .into_iter()
                .map(|(at, v)| Reading {
                    sensor_id: "burst".to_string(),
                    at,
                    values: [("pm10".to_string(), v)].into(),
                    location: point,
                })
                .collect();
            fx.readings
                .ingest_batch(&fx.dataset, &burst, testutil::NOW)
                .expect("ingest");
            let mut data = fx.data.clone();
            data.extend(burst);
            for order in [Order::Descending, Order::Ascending] {
                for limit in [0, 1, 15, 16, 17, 100, 513, 3001, 3100] {
                    for only_burst in [true, false] {
                        let mut q = testutil::everything(&fx.dataset);
                        q.order = order;
                        q.limit = limit;
                        if only_burst {
                            q.sensor_ids = vec!["burst".to_string()];
                        }
                        let expected = naive(&data, &measures, &q);
                        let got = fx.readings.query(&q).expect("query");
                        assert!(
                            got == expected,
                            "{order:?} limit {limit} only_burst {only_burst}: {} vs {}",
                            got.len(),
                            expected.len()
                        );
                    }
                }
            }
        }
    }
}
