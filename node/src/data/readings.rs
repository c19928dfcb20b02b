//! Sensor readings: what a reading is, how a batch is checked and stored,
//! and the per-sensor index. Queries and aggregation over the stored
//! readings are in [`super::query`] and [`super::aggregate`].
//!
//! Where they are stored depends on the backend. A store with a reading
//! table (PostgreSQL, see [`crate::store::table`]) keeps readings as rows:
//! a checked batch is handed to it whole, and it keeps the sensor index in
//! the same transaction. Otherwise (sled) readings are key-value entries
//! laid out as below, and this module keeps the index. Validation, the
//! summary and every rule above the storage are the same either way.
//!
//! # Key layout
//!
//! [`Keyspace::Readings`], one entry per reading:
//!
//! ```text
//! dataset number (u32 BE) | sensor id length (u8) | sensor id | time (i64 ms, BE, sign bit flipped)
//!   -> version | flags | n | presence bitmap | present values (f64) | [lat, lon]
//! ```
//!
//! Keys sort by dataset, then sensor, then time, so every question the data
//! plane asks is one contiguous range per sensor:
//! - one sensor, `[from, until)`: the single range `prefix|from .. prefix|until`;
//! - many sensors: one such range per sensor, merged in time order with a
//!   k-way merge (a binary heap over one cursor per sensor), which also
//!   means `limit` stops the scan after `limit` readings, not after the
//!   whole period;
//! - a whole dataset (counting, rebuilding the index): the prefix `number`.
//!
//! The dataset is named by its catalog number (4 bytes) rather than its id
//! (up to 64 bytes), which keeps keys short. The length byte in front of
//! the sensor id stops one sensor's range from running into another whose
//! id starts with the same characters (`s1` vs `s10`). The time is
//! big-endian so byte order is numeric order, with the sign bit flipped so
//! that it is also chronological across the epoch. Writing the same
//! (sensor, time) again lands on the same key: re-ingesting replaces,
//! never duplicates. Times are kept to the millisecond; finer parts are
//! dropped on ingest.
//!
//! Values are stored by position in the dataset's measure list
//! ([`Dataset::measures`]) with a presence bitmap, not by name: a reading
//! of three measures is about 30 bytes plus 16 for a location. That is why
//! the catalog only lets a sensor dataset's measure list grow.
//!
//! [`Keyspace::Sensors`] indexes `dataset number | sensor id length | sensor
//! id` -> reading count, first and last time, last known location and a box
//! around every location the sensor has reported. Queries enumerate a
//! dataset's sensors there instead of scanning readings, and skip sensors
//! whose time span or location box cannot match.
//!
//! # Durability and atomicity
//!
//! A batch is validated completely before anything is written; one bad
//! reading rejects the batch and nothing is stored. An accepted batch is
//! written as one atomic write of its readings and its index updates
//! ([`Store::write_all`]: after a crash both are there or neither), then
//! flushed once before [`ReadingStore::ingest_batch`] returns: acknowledged
//! readings are on disk, and batching is what keeps that cheap. Stores
//! written before the write was atomic may hold an index that counts
//! readings that are not there; [`ReadingStore::rebuild_sensor_index`]
//! recounts from the readings.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::catalog::{Catalog, CatalogEntry, CatalogError, DatasetKind, show_time};
use super::geo::{BoundingBox, check_lat, check_lon};
use super::keys::{self, CodecError, SensorEntry};
use crate::governance::body::FieldError;
use crate::store::table::{SensorSummary, TableRow};
use crate::store::{Keyspace, Store, StoreError, WriteBatch};

#[cfg(doc)]
use super::catalog::Dataset;

/// Longest sensor id, in characters (printable ASCII, so also bytes).
pub const MAX_SENSOR_ID: usize = 128;

/// The earliest reading time accepted: 2000-01-01T00:00:00Z.
pub const EARLIEST: OffsetDateTime = time::macros::datetime!(2000-01-01 0:00 UTC);

/// How far after "now" a reading may be stamped (clock skew allowance).
pub const FUTURE_ALLOWANCE: Duration = Duration::DAY;

/// Pseudo-field name that, in an exclusion list, removes a reading's location.
pub const LOCATION_FIELD: &str = "location";

/// One sensor reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// 1 to 128 printable ASCII characters, no leading or trailing space.
    pub sensor_id: String,
    /// When it was measured; stored to the millisecond.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Measure name -> value; at least one, each finite.
    pub values: BTreeMap<String, f64>,
    /// Where it was measured, as (latitude, longitude) in WGS84 degrees.
    #[serde(default)]
    pub location: Option<(f64, f64)>,
}

/// What an accepted batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Readings in the batch.
    pub received: usize,
    /// Readings stored under a (sensor, time) not seen before.
    pub new: u64,
    /// Readings that replaced a stored one with the same (sensor, time).
    pub replaced: u64,
    /// Readings superseded by a later one in the same batch with the same
    /// (sensor, time); the later one is stored.
    pub duplicates_in_batch: u64,
    /// Distinct sensors in the batch.
    pub sensors: usize,
}

/// Why one reading of a batch was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReadingProblem {
    #[error("sensor_id: {0}")]
    SensorId(String),
    #[error(
        "at: {at} is before {}; readings that old are almost surely a clock error",
        show_time(EARLIEST)
    )]
    TooEarly { at: String },
    #[error("at: {at} is more than a day after now ({now}); check the sensor's clock")]
    TooLate { at: String, now: String },
    #[error("values: empty; a reading needs at least one measure")]
    NoValues,
    #[error("values.{measure}: unknown measure; dataset `{dataset}` has {known}")]
    UnknownMeasure {
        measure: String,
        dataset: String,
        known: String,
    },
    #[error("values.{measure}: {value} is not a finite number")]
    NotFinite { measure: String, value: f64 },
    #[error("{0}")]
    Location(FieldError),
}

/// Why a batch was refused or not stored. Nothing of a refused batch is stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("unknown dataset `{dataset}`; publish it in the catalog first")]
    UnknownDataset { dataset: String },
    #[error("dataset `{dataset}` is of kind {kind}; readings go only to sensor datasets")]
    NotSensor { dataset: String, kind: DatasetKind },
    #[error(
        "reading[{index}] (sensor `{sensor}`, at {at}): {problem}{}; nothing of the batch was stored",
        more_text(*more)
    )]
    BadReading {
        /// Position of the first bad reading in the batch (from 0).
        index: usize,
        sensor: String,
        at: String,
        problem: Box<ReadingProblem>,
        /// How many further readings of the batch are bad.
        more: usize,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("dataset `{dataset}`: stored data is unreadable: {source}")]
    Corrupt { dataset: String, source: CodecError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn more_text(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => " (and 1 more reading of the batch is invalid)".to_string(),
        n => format!(" (and {n} more readings of the batch are invalid)"),
    }
}

/// What the sensor index knows about one sensor of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorInfo {
    pub sensor_id: String,
    /// Readings stored.
    pub readings: u64,
    /// Earliest and latest reading.
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
    /// Location of the latest reading that had one.
    pub last_location: Option<(f64, f64)>,
    /// A box around every location the sensor has reported.
    pub bounds: Option<BoundingBox>,
}

/// Readings of the node's sensor datasets over a [`Store`].
///
/// Ingest is serialised by a lock inside (index updates are
/// read-modify-write), so a node keeps one `ReadingStore` per store behind
/// an `Arc`. Queries run concurrently with ingest and each other.
#[derive(Debug)]
pub struct ReadingStore {
    pub(super) store: Arc<dyn Store>,
    pub(super) catalog: Catalog,
    ingest_lock: Mutex<()>,
}

/// A checked batch, ready to be written.
struct PreparedBatch<'a> {
    /// The dataset's catalog number.
    number: u32,
    /// The batch's sensors, in order of first appearance.
    sensor_ids: Vec<&'a str>,
    /// The readings to write (the later of two with the same key only).
    prepared: Vec<Prepared>,
    summary: IngestSummary,
}

/// A reading prepared for writing.
struct Prepared {
    /// Position of its sensor in the batch's `sensor_ids`.
    sensor: usize,
    ms: i64,
    /// Values by measure position.
    values: Vec<Option<f64>>,
    location: Option<(f64, f64)>,
}

impl ReadingStore {
    /// The store the readings are kept in.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The catalog this store looks datasets up in. The node shares this one
    /// instance, so catalog writes and reading lookups go through one lock.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Readings over `store`; datasets are looked up in the catalog kept
    /// in the same store.
    pub fn new(store: Arc<dyn Store>) -> ReadingStore {
        ReadingStore {
            catalog: Catalog::new(store.clone()),
            store,
            ingest_lock: Mutex::new(()),
        }
    }

    /// Validates every reading, then stores all of them atomically and
    /// durably, or none. `now` bounds how far in the future a reading may
    /// be stamped.
    pub fn ingest_batch(
        &self,
        dataset_id: &str,
        readings: &[Reading],
        now: OffsetDateTime,
    ) -> Result<IngestSummary, IngestError> {
        self.ingest_batch_with(dataset_id, readings, now, |_| Ok::<_, IngestError>(None))
    }

    /// [`ReadingStore::ingest_batch`], with one more write decided by
    /// `also` and made in the same atomic write as the readings and their
    /// index: after a crash, the batch and that write are both there or
    /// neither. `also` runs under the ingest lock, after the batch passed
    /// validation, so what it reads cannot change before the write; an
    /// error from it stores nothing. This is how an ingest session's
    /// progress marker stays exactly in step with the readings it counts.
    pub fn ingest_batch_with<E>(
        &self,
        dataset_id: &str,
        readings: &[Reading],
        now: OffsetDateTime,
        also: impl FnOnce(&dyn Store) -> Result<Option<(Keyspace, WriteBatch)>, E>,
    ) -> Result<IngestSummary, E>
    where
        E: From<IngestError>,
    {
        let prepared = self.prepare(dataset_id, readings, now)?;
        let mut summary = prepared.summary;
        let _guard = self
            .ingest_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(table) = self.store.reading_table() {
            // The table keeps its own index, in the readings' transaction.
            let rows: Vec<TableRow> = prepared
                .prepared
                .into_iter()
                .map(|p| TableRow {
                    sensor_id: prepared.sensor_ids[p.sensor].to_string(),
                    ms: p.ms,
                    values: p.values,
                    location: p.location,
                })
                .collect();
            let extra: Vec<_> = also(self.store.as_ref())?.into_iter().collect();
            if rows.is_empty() && extra.is_empty() {
                return Ok(summary);
            }
            let stored = table
                .ingest(prepared.number, rows, extra)
                .map_err(|e| E::from(IngestError::Store(e)))?;
            summary.new = stored.new;
            summary.replaced = stored.replaced;
            return Ok(summary);
        }
        let mut writes = self.index_and_readings(dataset_id, prepared, &mut summary)?;
        if let Some(extra) = also(self.store.as_ref())? {
            writes.push(extra);
        }
        if writes.is_empty() {
            return Ok(summary);
        }
        // 4. Index, readings (and `also`'s write) in one atomic write, then
        // one flush.
        self.store
            .write_all(writes)
            .map_err(|e| E::from(IngestError::Store(e)))?;
        drop(_guard);
        self.store
            .flush()
            .map_err(|e| E::from(IngestError::Store(e)))?;
        Ok(summary)
    }

    /// Checks a batch completely, before anything is locked or written.
    fn prepare<'a>(
        &self,
        dataset_id: &str,
        readings: &'a [Reading],
        now: OffsetDateTime,
    ) -> Result<PreparedBatch<'a>, IngestError> {
        let entry = self
            .catalog
            .entry(dataset_id)?
            .ok_or_else(|| IngestError::UnknownDataset {
                dataset: dataset_id.to_string(),
            })?;
        if entry.dataset.kind != DatasetKind::Sensor {
            return Err(IngestError::NotSensor {
                dataset: dataset_id.to_string(),
                kind: entry.dataset.kind,
            });
        }
        let measures = entry.dataset.measure_names();
        let index: HashMap<&str, usize> = measures
            .iter()
            .enumerate()
            .map(|(i, m)| (m.as_str(), i))
            .collect();
        let latest = now.saturating_add(FUTURE_ALLOWANCE);

        // 1. Check everything before touching the store.
        let mut first_bad = None;
        let mut more = 0;
        let mut sensor_ids: Vec<&str> = Vec::new();
        let mut sensor_pos: HashMap<&str, usize> = HashMap::new();
        let mut prepared = Vec::with_capacity(readings.len());
        for (i, reading) in readings.iter().enumerate() {
            match check_reading(reading, &entry, &measures, &index, latest, now) {
                Ok(values) => {
                    if first_bad.is_some() {
                        continue;
                    }
                    let sensor =
                        *sensor_pos
                            .entry(reading.sensor_id.as_str())
                            .or_insert_with(|| {
                                sensor_ids.push(reading.sensor_id.as_str());
                                sensor_ids.len() - 1
                            });
                    prepared.push(Prepared {
                        sensor,
                        ms: to_ms(reading.at),
                        values,
                        location: reading.location,
                    });
                }
                Err(problem) => {
                    if first_bad.is_none() {
                        first_bad = Some((i, problem));
                    } else {
                        more += 1;
                    }
                }
            }
        }
        if let Some((index, problem)) = first_bad {
            let reading = &readings[index];
            return Err(IngestError::BadReading {
                index,
                sensor: shown_sensor(&reading.sensor_id),
                at: show_time(reading.at),
                problem: Box::new(problem),
                more,
            });
        }
        let mut summary = IngestSummary {
            received: readings.len(),
            sensors: sensor_ids.len(),
            ..IngestSummary::default()
        };

        // 2. The same (sensor, time) twice in one batch: the later one wins.
        let mut by_key: HashMap<(usize, i64), usize> = HashMap::with_capacity(prepared.len());
        let mut keep = vec![true; prepared.len()];
        for (i, p) in prepared.iter().enumerate() {
            if let Some(earlier) = by_key.insert((p.sensor, p.ms), i) {
                keep[earlier] = false;
                summary.duplicates_in_batch += 1;
            }
        }
        drop(by_key);
        let prepared = prepared
            .into_iter()
            .zip(keep)
            .filter_map(|(p, keep)| keep.then_some(p))
            .collect();
        Ok(PreparedBatch {
            number: entry.number,
            sensor_ids,
            prepared,
            summary,
        })
    }

    /// The writes of a checked batch: its readings and the updated index
    /// entries of its sensors. Runs under the ingest lock (index updates
    /// are read-modify-write).
    fn index_and_readings(
        &self,
        dataset_id: &str,
        batch: PreparedBatch<'_>,
        summary: &mut IngestSummary,
    ) -> Result<Vec<(Keyspace, WriteBatch)>, IngestError> {
        if batch.prepared.is_empty() {
            return Ok(Vec::new());
        }
        let corrupt = |source: CodecError| IngestError::Corrupt {
            dataset: dataset_id.to_string(),
            source,
        };
        let number = batch.number;
        // 3. Index entries of the sensors in the batch, updated in memory.
        let mut index_entries: Vec<Option<SensorEntry>> =
            Vec::with_capacity(batch.sensor_ids.len());
        let mut known_span: Vec<Option<(i64, i64)>> = Vec::with_capacity(batch.sensor_ids.len());
        for id in &batch.sensor_ids {
            let existing = self
                .store
                .get(Keyspace::Sensors, &keys::sensor_prefix(number, id))?
                .map(|bytes| keys::decode_sensor(&bytes))
                .transpose()
                .map_err(corrupt)?;
            known_span.push(existing.as_ref().map(|e| (e.first_ms, e.last_ms)));
            index_entries.push(existing);
        }
        let mut readings_batch = WriteBatch::default();
        readings_batch.ops.reserve(batch.prepared.len());
        for p in batch.prepared {
            // The index's span is never narrower than the stored readings,
            // so a reading outside it is new without a lookup (the usual
            // case: sensors report forward in time).
            let key = keys::reading_key(number, batch.sensor_ids[p.sensor], p.ms);
            let existed = match known_span[p.sensor] {
                Some((first, last)) if (first..=last).contains(&p.ms) => {
                    self.store.get(Keyspace::Readings, &key)?.is_some()
                }
                _ => false,
            };
            if existed {
                summary.replaced += 1;
            } else {
                summary.new += 1;
            }
            let slot = &mut index_entries[p.sensor];
            let e = slot.get_or_insert(SensorEntry {
                count: 0,
                first_ms: p.ms,
                last_ms: p.ms,
                last_location: None,
                bounds: None,
            });
            e.count += u64::from(!existed);
            e.first_ms = e.first_ms.min(p.ms);
            e.last_ms = e.last_ms.max(p.ms);
            if let Some(point) = p.location {
                if e.last_location.is_none_or(|(_, _, at)| at <= p.ms) {
                    e.last_location = Some((point.0, point.1, p.ms));
                }
                e.bounds = Some(match e.bounds {
                    Some(b) => b.extended(point),
                    None => BoundingBox::point(point),
                });
            }
            readings_batch.put(key, keys::encode_values(&p.values, p.location));
        }
        let mut index_batch = WriteBatch::default();
        for (id, e) in batch.sensor_ids.iter().zip(&index_entries) {
            if let Some(e) = e {
                index_batch.put(keys::sensor_prefix(number, id), keys::encode_sensor(e));
            }
        }
        Ok(vec![
            (Keyspace::Sensors, index_batch),
            (Keyspace::Readings, readings_batch),
        ])
    }

    /// Readings stored for dataset `dataset_id` (from the sensor index).
    pub fn count(&self, dataset_id: &str) -> Result<u64, IngestError> {
        Ok(self.sensors(dataset_id)?.iter().map(|s| s.readings).sum())
    }

    /// The sensors of a dataset, sorted by id, from the index.
    pub fn sensors(&self, dataset_id: &str) -> Result<Vec<SensorInfo>, IngestError> {
        let entry = self.sensor_dataset(dataset_id)?;
        let mut out = Vec::new();
        for (sensor_id, e) in self.index_entries(entry.number).map_err(|e| match e {
            IndexError::Store(e) => IngestError::Store(e),
            IndexError::Codec(source) => IngestError::Corrupt {
                dataset: dataset_id.to_string(),
                source,
            },
        })? {
            let time = |ms| {
                from_ms(ms).map_err(|source| IngestError::Corrupt {
                    dataset: dataset_id.to_string(),
                    source,
                })
            };
            out.push(SensorInfo {
                sensor_id,
                readings: e.count,
                first: time(e.first_ms)?,
                last: time(e.last_ms)?,
                last_location: e.last_location.map(|(lat, lon, _)| (lat, lon)),
                bounds: e.bounds,
            });
        }
        Ok(out)
    }

    /// Recounts a dataset's sensor index from its stored readings (after an
    /// interrupted write, see the module docs). Returns the reading count.
    pub fn rebuild_sensor_index(&self, dataset_id: &str) -> Result<u64, IngestError> {
        let entry = self.sensor_dataset(dataset_id)?;
        let _guard = self
            .ingest_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rebuilt = self.recount(dataset_id, entry.number)?;
        self.replace_index(entry.number, &rebuilt)?;
        drop(_guard);
        self.store.flush()?;
        Ok(rebuilt.values().map(|e| e.count).sum())
    }

    /// Checks a dataset's sensor index against its stored readings and, if
    /// they disagree, rebuilds the index from the readings (what a node
    /// does on start after an unclean stop). An index entry agrees when it
    /// counts exactly the sensor's readings and its time span and location
    /// box hold them all (they may be wider: replacing a reading never
    /// narrows them). Reads every reading of the dataset.
    pub fn check_sensor_index(&self, dataset_id: &str) -> Result<IndexCheck, IngestError> {
        let entry = self.sensor_dataset(dataset_id)?;
        let corrupt = |source: CodecError| IngestError::Corrupt {
            dataset: dataset_id.to_string(),
            source,
        };
        let _guard = self
            .ingest_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rebuilt = self.recount(dataset_id, entry.number)?;
        let indexed: BTreeMap<String, SensorEntry> = self
            .index_entries(entry.number)
            .map_err(|e| match e {
                IndexError::Store(e) => IngestError::Store(e),
                IndexError::Codec(source) => corrupt(source),
            })?
            .into_iter()
            .collect();
        let mut check = IndexCheck {
            readings: rebuilt.values().map(|e| e.count).sum(),
            indexed: indexed.values().map(|e| e.count).sum(),
            sensors_repaired: 0,
        };
        let sensors: std::collections::BTreeSet<&String> =
            rebuilt.keys().chain(indexed.keys()).collect();
        for sensor in sensors {
            let agrees = match (indexed.get(sensor), rebuilt.get(sensor)) {
                (Some(have), Some(truth)) => index_holds(have, truth),
                _ => false,
            };
            if !agrees {
                check.sensors_repaired += 1;
            }
        }
        if check.sensors_repaired > 0 {
            self.replace_index(entry.number, &rebuilt)?;
            drop(_guard);
            self.store.flush()?;
        }
        Ok(check)
    }

    /// Index entries recounted from the stored readings of dataset `number`.
    /// The caller holds the ingest lock.
    fn recount(
        &self,
        dataset_id: &str,
        number: u32,
    ) -> Result<BTreeMap<String, SensorEntry>, IngestError> {
        let corrupt = |source: CodecError| IngestError::Corrupt {
            dataset: dataset_id.to_string(),
            source,
        };
        if let Some(table) = self.store.reading_table() {
            return Ok(table
                .recount(number)?
                .into_iter()
                .map(from_summary)
                .collect());
        }
        let mut rebuilt: BTreeMap<String, SensorEntry> = BTreeMap::new();
        for item in self
            .store
            .scan_prefix(Keyspace::Readings, &keys::dataset_prefix(number))
        {
            let (key, value) = item?;
            let key = keys::decode_reading_key(&key).map_err(corrupt)?;
            let location = keys::decode_values(&value).map_err(corrupt)?.location;
            let e = rebuilt.entry(key.sensor_id).or_insert_with(|| SensorEntry {
                count: 0,
                first_ms: key.ms,
                last_ms: key.ms,
                last_location: None,
                bounds: None,
            });
            // Keys come in time order per sensor.
            e.count += 1;
            e.last_ms = key.ms;
            if let Some(point) = location {
                e.last_location = Some((point.0, point.1, key.ms));
                e.bounds = Some(
                    e.bounds
                        .map_or(BoundingBox::point(point), |b| b.extended(point)),
                );
            }
        }
        Ok(rebuilt)
    }

    /// Replaces dataset `number`'s whole index with `rebuilt` in one write
    /// (not yet durable). The caller holds the ingest lock.
    fn replace_index(
        &self,
        number: u32,
        rebuilt: &BTreeMap<String, SensorEntry>,
    ) -> Result<(), IngestError> {
        if let Some(table) = self.store.reading_table() {
            let sensors = rebuilt.iter().map(|(id, e)| to_summary(id, e)).collect();
            table.replace_index(number, sensors)?;
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for item in self
            .store
            .scan_prefix(Keyspace::Sensors, &keys::dataset_prefix(number))
        {
            batch.delete(item?.0);
        }
        for (sensor_id, e) in rebuilt {
            batch.put(
                keys::sensor_prefix(number, sensor_id),
                keys::encode_sensor(e),
            );
        }
        self.store.write(Keyspace::Sensors, batch)?;
        Ok(())
    }

    /// The catalog entry of a sensor dataset.
    fn sensor_dataset(&self, dataset_id: &str) -> Result<CatalogEntry, IngestError> {
        let entry = self
            .catalog
            .entry(dataset_id)?
            .ok_or_else(|| IngestError::UnknownDataset {
                dataset: dataset_id.to_string(),
            })?;
        if entry.dataset.kind != DatasetKind::Sensor {
            return Err(IngestError::NotSensor {
                dataset: dataset_id.to_string(),
                kind: entry.dataset.kind,
            });
        }
        Ok(entry)
    }

    /// Every sensor index entry of dataset `number`, sorted by sensor id.
    pub(super) fn index_entries(
        &self,
        number: u32,
    ) -> Result<Vec<(String, SensorEntry)>, IndexError> {
        if let Some(table) = self.store.reading_table() {
            return Ok(table
                .sensors(number)?
                .into_iter()
                .map(from_summary)
                .collect());
        }
        let mut out = Vec::new();
        for item in self
            .store
            .scan_prefix(Keyspace::Sensors, &keys::dataset_prefix(number))
        {
            let (key, value) = item?;
            let (_, sensor_id) = keys::decode_sensor_key(&key)?;
            out.push((sensor_id, keys::decode_sensor(&value)?));
        }
        // Keys sort by (length, id); callers want id order.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The index entry of one sensor, if it has readings.
    pub(super) fn index_entry(
        &self,
        number: u32,
        sensor_id: &str,
    ) -> Result<Option<SensorEntry>, IndexError> {
        if let Some(table) = self.store.reading_table() {
            return Ok(table.sensor(number, sensor_id)?.map(|s| from_summary(s).1));
        }
        Ok(self
            .store
            .get(Keyspace::Sensors, &keys::sensor_prefix(number, sensor_id))?
            .map(|bytes| keys::decode_sensor(&bytes))
            .transpose()?)
    }
}

/// An index entry as a reading table reports it.
fn from_summary(s: SensorSummary) -> (String, SensorEntry) {
    let entry = SensorEntry {
        count: s.count,
        first_ms: s.first_ms,
        last_ms: s.last_ms,
        last_location: s.last_location,
        bounds: s
            .bounds
            .map(|[min_lat, min_lon, max_lat, max_lon]| BoundingBox {
                min_lat,
                min_lon,
                max_lat,
                max_lon,
            }),
    };
    (s.sensor_id, entry)
}

/// An index entry as a reading table takes it.
fn to_summary(sensor_id: &str, e: &SensorEntry) -> SensorSummary {
    SensorSummary {
        sensor_id: sensor_id.to_string(),
        count: e.count,
        first_ms: e.first_ms,
        last_ms: e.last_ms,
        last_location: e.last_location,
        bounds: e
            .bounds
            .map(|b| [b.min_lat, b.min_lon, b.max_lat, b.max_lon]),
    }
}

/// What [`ReadingStore::check_sensor_index`] found in one dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexCheck {
    /// Readings stored (counted from the readings themselves).
    pub readings: u64,
    /// Readings the index counted before the check.
    pub indexed: u64,
    /// Sensors whose index entry was wrong or missing, or listed a sensor
    /// without readings; 0 when the index agreed and was left alone.
    pub sensors_repaired: u64,
}

/// Whether an index entry `have` serves queries over the readings whose
/// recount is `truth`: the same count, and a span and box holding them.
fn index_holds(have: &SensorEntry, truth: &SensorEntry) -> bool {
    let holds_box = match (have.bounds, truth.bounds) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(have), Some(truth)) => {
            have.contains((truth.min_lat, truth.min_lon))
                && have.contains((truth.max_lat, truth.max_lon))
        }
    };
    have.count == truth.count
        && have.first_ms <= truth.first_ms
        && have.last_ms >= truth.last_ms
        && holds_box
}

/// Failures reading the sensor index.
#[derive(Debug, thiserror::Error)]
pub(super) enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Checks one reading; returns its values by measure position.
fn check_reading(
    reading: &Reading,
    entry: &CatalogEntry,
    measures: &[String],
    index: &HashMap<&str, usize>,
    latest: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<Option<f64>>, ReadingProblem> {
    check_sensor_id(&reading.sensor_id).map_err(ReadingProblem::SensorId)?;
    if reading.at < EARLIEST {
        return Err(ReadingProblem::TooEarly {
            at: show_time(reading.at),
        });
    }
    if reading.at > latest {
        return Err(ReadingProblem::TooLate {
            at: show_time(reading.at),
            now: show_time(now),
        });
    }
    if reading.values.is_empty() {
        return Err(ReadingProblem::NoValues);
    }
    let mut values = vec![None; measures.len()];
    for (name, value) in &reading.values {
        let Some(&i) = index.get(name.as_str()) else {
            return Err(ReadingProblem::UnknownMeasure {
                measure: name.escape_debug().to_string(),
                dataset: entry.dataset.id.clone(),
                known: measures.join(", "),
            });
        };
        if !value.is_finite() {
            return Err(ReadingProblem::NotFinite {
                measure: name.clone(),
                value: *value,
            });
        }
        values[i] = Some(*value);
    }
    if let Some((lat, lon)) = reading.location {
        check_lat("location.lat", lat).map_err(ReadingProblem::Location)?;
        check_lon("location.lon", lon).map_err(ReadingProblem::Location)?;
    }
    Ok(values)
}

/// A sensor id: 1..=128 printable ASCII characters (space allowed inside).
pub fn check_sensor_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty".to_string());
    }
    if id.len() > MAX_SENSOR_ID {
        return Err(format!(
            "is {} characters long; at most {MAX_SENSOR_ID}",
            id.chars().count()
        ));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        return Err(format!(
            "contains {:?}; use printable ASCII (letters, digits, punctuation)",
            c
        ));
    }
    if id.starts_with(' ') || id.ends_with(' ') {
        return Err("starts or ends with a space".to_string());
    }
    Ok(())
}

/// A sensor id as shown in messages: escaped, and cut if very long.
fn shown_sensor(id: &str) -> String {
    let escaped: String = id.escape_debug().collect();
    if escaped.chars().count() > 140 {
        format!("{}...", escaped.chars().take(140).collect::<String>())
    } else {
        escaped
    }
}

/// Milliseconds since the Unix epoch (sub-millisecond parts dropped,
/// rounding towards the past).
pub fn to_ms(at: OffsetDateTime) -> i64 {
    // Every OffsetDateTime (years -9999..=9999) fits in i64 milliseconds.
    at.unix_timestamp_nanos().div_euclid(1_000_000) as i64
}

/// The instant `ms` milliseconds after the Unix epoch, in UTC.
pub fn from_ms(ms: i64) -> Result<OffsetDateTime, CodecError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| CodecError(format!("time {ms} ms is out of range")))
}

/// Removes the named measures from a reading (and its location, if
/// [`LOCATION_FIELD`] is named), as an agreement's excluded fields demand.
/// Returns how many fields were removed.
pub fn strip_fields(reading: &mut Reading, excluded: &[String]) -> usize {
    let mut removed = 0;
    for name in excluded {
        if reading.values.remove(name).is_some() {
            removed += 1;
        }
        if name == LOCATION_FIELD && reading.location.take().is_some() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{self, NOW};
    use super::*;

    fn reading(sensor: &str, at: OffsetDateTime, values: &[(&str, f64)]) -> Reading {
        Reading {
            sensor_id: sensor.to_string(),
            at,
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            location: Some((56.15, 10.2)),
        }
    }

    #[test]
    fn one_bad_reading_rejects_the_whole_batch_and_names_it() {
        let fx = testutil::fixture(5, 1);
        let before_count = fx.readings.count(&fx.dataset).expect("count");
        let q = testutil::everything(&fx.dataset);
        let before = fx.readings.query(&q).expect("query");
        assert_eq!(before_count, before.len() as u64);

        let t = time::macros::datetime!(2025-03-01 12:00 UTC);
        let good = || reading("new-sensor", t, &[("pm10", 3.0)]);
        let cases: Vec<(Reading, &str)> = vec![
            (
                reading("s", t, &[("pm25", 1.0)]),
                "values.pm25: unknown measure; dataset `aarhus-air-quality` has pm2_5, pm10, no2",
            ),
            (
                reading("s", t, &[("pm10", f64::NAN)]),
                "values.pm10: NaN is not a finite number",
            ),
            (
                reading("s", t, &[("pm10", f64::INFINITY)]),
                "values.pm10: inf is not a finite number",
            ),
            (reading("s", t, &[]), "values: empty"),
            (
                reading(
                    "s",
                    time::macros::datetime!(1999-12-31 23:59:59 UTC),
                    &[("pm10", 1.0)],
                ),
                "is before 2000-01-01T00:00:00Z",
            ),
            (
                reading("s", NOW + Duration::hours(25), &[("pm10", 1.0)]),
                "more than a day after now",
            ),
            (
                Reading {
                    location: Some((91.0, 10.0)),
                    ..reading("s", t, &[("pm10", 1.0)])
                },
                "location.lat: 91 is outside -90..=90",
            ),
            (
                Reading {
                    location: Some((56.0, 181.0)),
                    ..reading("s", t, &[("pm10", 1.0)])
                },
                "location.lon: 181 is outside -180..=180",
            ),
            (reading("", t, &[("pm10", 1.0)]), "sensor_id: is empty"),
            (
                reading("a\nb", t, &[("pm10", 1.0)]),
                "sensor_id: contains '\\n'",
            ),
            (
                reading(&"x".repeat(129), t, &[("pm10", 1.0)]),
                "at most 128",
            ),
        ];
        for (bad, expected) in cases {
            let batch = vec![good(), good(), bad.clone(), good(), bad];
            let err = fx
                .readings
                .ingest_batch(&fx.dataset, &batch, NOW)
                .expect_err("must be rejected");
            let text = err.to_string();
            assert!(
                matches!(
                    err,
                    IngestError::BadReading {
                        index: 2,
                        more: 1,
                        ..
                    }
                ),
                "{text}"
            );
            assert!(text.starts_with("reading[2] (sensor `"), "{text}");
            assert!(text.contains(expected), "expected {expected:?} in {text}");
            assert!(text.contains("nothing of the batch was stored"), "{text}");
            assert_eq!(fx.readings.count(&fx.dataset).expect("count"), before_count);
            assert_eq!(fx.readings.query(&q).expect("query"), before);
        }
        // The timestamp is named too.
        let err = fx
            .readings
            .ingest_batch(&fx.dataset, &[reading("s-9", t, &[("x", 1.0)])], NOW)
            .expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("reading[0] (sensor `s-9`, at 2025-03-01T12:00:00Z): values.x"),
            "{err}"
        );

        let err = fx
            .readings
            .ingest_batch("nope", &[good()], NOW)
            .expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown dataset `nope`; publish it in the catalog first"
        );
    }

    #[test]
    fn reingesting_replaces_and_never_duplicates() {
        let fx = testutil::fixture(4, 1);
        let count = fx.readings.count(&fx.dataset).expect("count");
        assert_eq!(count, fx.data.len() as u64);
        let again = fx
            .readings
            .ingest_batch(&fx.dataset, &fx.data, NOW)
            .expect("again");
        assert_eq!(again.new, 0);
        assert_eq!(again.replaced, fx.data.len() as u64);
        assert_eq!(fx.readings.count(&fx.dataset).expect("count"), count);
        assert_eq!(
            fx.readings
                .rebuild_sensor_index(&fx.dataset)
                .expect("rebuild"),
            count
        );

        // A changed value replaces; within one batch the later one wins.
        let mut first = fx.data[0].clone();
        first.values.insert("no2".to_string(), 123.0);
        let mut second = first.clone();
        second.values.insert("no2".to_string(), 456.0);
        let summary = fx
            .readings
            .ingest_batch(&fx.dataset, &[first, second.clone()], NOW)
            .expect("replace");
        assert_eq!(
            (summary.new, summary.replaced, summary.duplicates_in_batch),
            (0, 1, 1)
        );
        assert_eq!(fx.readings.count(&fx.dataset).expect("count"), count);
        let mut q = testutil::everything(&fx.dataset);
        q.sensor_ids = vec![second.sensor_id.clone()];
        q.limit = 1;
        assert_eq!(fx.readings.query(&q).expect("q"), vec![second]);

        // Older readings arriving late are new, and counted.
        let late = reading(
            &fx.data[0].sensor_id,
            fx.data[0].at - Duration::days(30),
            &[("pm10", 1.0)],
        );
        let summary = fx
            .readings
            .ingest_batch(&fx.dataset, &[late], NOW)
            .expect("late");
        assert_eq!((summary.new, summary.replaced), (1, 0));
        assert_eq!(fx.readings.count(&fx.dataset).expect("count"), count + 1);
    }

    #[test]
    fn the_sensor_index_tracks_counts_and_locations() {
        let fx = testutil::fixture(3, 1);
        let sensors = fx.readings.sensors(&fx.dataset).expect("sensors");
        assert_eq!(sensors.len(), 3);
        for info in &sensors {
            let mine: Vec<&Reading> = fx
                .data
                .iter()
                .filter(|r| r.sensor_id == info.sensor_id)
                .collect();
            assert_eq!(info.readings, mine.len() as u64);
            assert_eq!(info.first, mine.iter().map(|r| r.at).min().expect("min"));
            assert_eq!(info.last, mine.iter().map(|r| r.at).max().expect("max"));
            let last_located = mine
                .iter()
                .filter(|r| r.location.is_some())
                .max_by_key(|r| r.at)
                .and_then(|r| r.location);
            assert_eq!(info.last_location, last_located);
        }
    }

    #[test]
    fn sub_millisecond_times_are_truncated() {
        let fx = testutil::fixture(1, 1);
        let at = time::macros::datetime!(2025-03-01 12:00:00.123_456 UTC);
        fx.readings
            .ingest_batch(
                &fx.dataset,
                &[reading("precise", at, &[("pm10", 1.0)])],
                NOW,
            )
            .expect("ingest");
        let mut q = testutil::everything(&fx.dataset);
        q.sensor_ids = vec!["precise".to_string()];
        let got = fx.readings.query(&q).expect("query");
        assert_eq!(
            got[0].at,
            time::macros::datetime!(2025-03-01 12:00:00.123 UTC)
        );
    }

    #[test]
    fn strip_fields_removes_measures_and_location() {
        let mut r = reading("s", EARLIEST, &[("pm10", 1.0), ("no2", 2.0)]);
        let removed = strip_fields(&mut r, &["no2".to_string(), "other".to_string()]);
        assert_eq!(removed, 1);
        assert_eq!(r.values.keys().collect::<Vec<_>>(), vec!["pm10"]);
        assert!(r.location.is_some());
        assert_eq!(strip_fields(&mut r, &[LOCATION_FIELD.to_string()]), 1);
        assert!(r.location.is_none());
    }

    #[test]
    fn kind_must_be_sensor() {
        let fx = testutil::fixture(1, 1);
        let mut pilot = crate::data::generate::sensor_dataset("noise", 751).expect("ds");
        pilot.id = "aarhus-pilot".to_string();
        pilot.kind = DatasetKind::Pilot;
        pilot.update_interval_s = 0;
        fx.catalog.publish(pilot).expect("publish");
        let err = fx
            .readings
            .ingest_batch("aarhus-pilot", &[], NOW)
            .expect_err("pilot");
        assert!(err.to_string().contains("is of kind pilot"), "{err}");
    }
}
