//! The reading table: how a backend with a relational engine keeps sensor
//! readings in rows and columns and answers the data plane's questions
//! itself, so the work happens where the data is.
//!
//! The key-value [`Store`](super::Store) is enough for everything a node
//! keeps, and the sled backend keeps readings in it (see
//! `data::readings` for that layout). A backend that can do better
//! offers a [`ReadingTable`] through [`Store::reading_table`](super::Store::reading_table);
//! `data` then sends it whole questions: a batch to store with its sensor
//! index, a page of a time-ordered scan, the buckets of one time window of
//! an aggregation. Validation, the query plan, paging state, limits and
//! every disclosure decision stay in `data` and above; the table only
//! evaluates what it is told, which is why the types here are plain
//! numbers and strings rather than `data`'s own.
//!
//! Both backends answer the same questions with the same results; the
//! brute-force comparisons in `data` run against each.

use std::fmt::Debug;

use super::{Keyspace, StoreError, WriteBatch};

/// One reading as the table holds it: measure values by their position in
/// the dataset's measure list (`None` where the reading lacks one).
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub sensor_id: String,
    /// Milliseconds since the Unix epoch.
    pub ms: i64,
    pub values: Vec<Option<f64>>,
    /// (latitude, longitude) in WGS84 degrees.
    pub location: Option<(f64, f64)>,
}

/// What the sensor index knows of one sensor; the same facts the sled
/// layout keeps (`data::keys::SensorEntry`).
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSummary {
    pub sensor_id: String,
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    /// Location of the latest reading that had one, and that reading's time.
    pub last_location: Option<(f64, f64, i64)>,
    /// `[min_lat, min_lon, max_lat, max_lon]` around every location reported.
    pub bounds: Option<[f64; 4]>,
}

/// The area a scan keeps readings in; readings without a location never
/// match an area.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AreaFilter {
    /// Edges included; does not wrap around the antimeridian.
    Box {
        min_lat: f64,
        min_lon: f64,
        max_lat: f64,
        max_lon: f64,
    },
    /// Great-circle (haversine) distance at most `km` from the centre, on a
    /// sphere of radius [`EARTH_RADIUS_KM`](crate::data::geo::EARTH_RADIUS_KM).
    Circle { lat: f64, lon: f64, km: f64 },
}

/// Which readings of one dataset a scan or an aggregation reads.
#[derive(Debug, Clone, PartialEq)]
pub struct TableScan {
    /// The dataset's catalog number.
    pub dataset: u32,
    /// Only these sensors (the plan's, already narrowed by the index).
    pub sensors: Vec<String>,
    /// Half-open `[from_ms, until_ms)`.
    pub from_ms: i64,
    pub until_ms: i64,
    pub area: Option<AreaFilter>,
    /// Measure positions asked for: readings with none of them are
    /// skipped (the caller drops the other values). `None`: all.
    pub measures: Option<Vec<usize>>,
    /// Time descending (readings at one time still in sensor id order).
    pub descending: bool,
}

/// Where the previous page of a scan ended: its last reading's time and
/// sensor. The next page starts strictly after it in scan order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPosition {
    pub ms: i64,
    pub sensor_id: String,
}

/// An aggregation over a scan (see `data::aggregate` for the meaning of
/// every field; this is its evaluation order, not its policy).
#[derive(Debug, Clone, PartialEq)]
pub struct TableAggregation {
    pub scan: TableScan,
    /// Epoch-aligned bucket width, and the grid cell width (equal to the
    /// bucket when there is no grid); the bucket is a multiple of the cell.
    pub bucket_ms: i64,
    pub cell_ms: i64,
    /// A bucket of a (group, measure) is left out unless every cell of it
    /// that holds data has at least this many values (and, over all
    /// sensors, this many distinct sensors). 0: no grid.
    pub min_group: u64,
    /// One bucket per sensor (else one over all sensors).
    pub per_sensor: bool,
    /// Over all sensors, also hold each sensor's part of a cell to
    /// `min_group`.
    pub per_sensor_parts: bool,
    /// Per measure position: clamp values into this range before summing.
    pub clamp: Vec<Option<(f64, f64)>>,
}

/// One bucket of one (group, measure).
#[derive(Debug, Clone, PartialEq)]
pub struct TableBucket {
    pub start_ms: i64,
    /// The sensor, when per sensor.
    pub sensor_id: Option<String>,
    /// Position in the dataset's measure list.
    pub measure: usize,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub distinct_sensors: u32,
}

/// What storing a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableIngest {
    /// Rows under a (sensor, time) not stored before.
    pub new: u64,
    /// Rows that replaced a stored reading.
    pub replaced: u64,
}

/// Sensor readings kept by the backend itself (see the module docs).
pub trait ReadingTable: Send + Sync + Debug {
    /// Stores `rows` of dataset `dataset` (no two with the same sensor and
    /// time), updates the sensor index, and applies `also` to the key-value
    /// store, all in one transaction that is durable when this returns.
    fn ingest(
        &self,
        dataset: u32,
        rows: Vec<TableRow>,
        also: Vec<(Keyspace, WriteBatch)>,
    ) -> Result<TableIngest, StoreError>;

    /// The sensor index of a dataset, sorted by sensor id.
    fn sensors(&self, dataset: u32) -> Result<Vec<SensorSummary>, StoreError>;

    /// The index entry of one sensor, if it has readings.
    fn sensor(&self, dataset: u32, sensor_id: &str) -> Result<Option<SensorSummary>, StoreError>;

    /// The sensor index recounted from the stored readings, sorted by id.
    fn recount(&self, dataset: u32) -> Result<Vec<SensorSummary>, StoreError>;

    /// Replaces a dataset's sensor index with `sensors`.
    fn replace_index(&self, dataset: u32, sensors: Vec<SensorSummary>) -> Result<(), StoreError>;

    /// Up to `limit` readings of `scan` in scan order, starting after
    /// `after`.
    fn scan_page(
        &self,
        scan: &TableScan,
        after: Option<&ScanPosition>,
        limit: usize,
    ) -> Result<Vec<TableRow>, StoreError>;

    /// The time of the first reading of `scan` in scan order, if any
    /// (lets an aggregation skip time without data).
    fn first_time(&self, scan: &TableScan) -> Result<Option<i64>, StoreError>;

    /// Every bucket of `aggregation` that starts in `[from_ms, until_ms)`
    /// (bucket-aligned, within the scan's range), ordered by start (in the
    /// scan's direction), then sensor id, then measure position.
    fn aggregate_window(
        &self,
        aggregation: &TableAggregation,
        from_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<TableBucket>, StoreError>;

    /// Readings stored, over all datasets.
    fn total(&self) -> Result<u64, StoreError>;
}
