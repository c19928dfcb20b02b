//! The start-up check after an unclean stop: the sensor index must agree
//! with the stored readings, since `CountReadings` and every query's choice
//! of sensors read the index.
//!
//! Batches are written atomically with their index updates, so a crash
//! alone cannot make them disagree; stores written by versions that wrote
//! them separately can, and a disk or backend fault might. Checking means
//! reading every reading, so it is done only when needed: a graceful stop
//! leaves a clean-stop marker in the store ([`mark_clean_stop`]), and
//! opening the store removes it ([`on_open`]). A start that finds no
//! marker (a crash, `kill -9`, power loss, a store copied from a running
//! node, or a store from a version without the marker) checks every
//! sensor dataset and repairs its index from the readings, logging what it
//! repaired at WARN, or at INFO that nothing needed repair.

use std::time::Instant;

use crate::data::catalog::DatasetKind;
use crate::data::{CatalogError, IndexCheck, IngestError, ReadingStore};
use crate::store::{Keyspace, Store, StoreError, WriteBatch};

/// The meta key whose presence says the node last stopped cleanly.
const CLEAN_STOP_KEY: &[u8] = b"clean_stop";

/// Why the start-up check could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the catalog could not be read: {0}")]
    Catalog(#[from] CatalogError),
    #[error("dataset `{dataset}`: {source}")]
    Dataset {
        dataset: String,
        source: IngestError,
    },
}

/// What [`on_open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Whether the node had stopped cleanly (then nothing was checked).
    pub clean: bool,
    /// Each sensor dataset checked, and what the check found.
    pub checked: Vec<(String, IndexCheck)>,
}

impl Recovery {
    /// Sensors repaired over all datasets.
    pub fn sensors_repaired(&self) -> u64 {
        self.checked.iter().map(|(_, c)| c.sensors_repaired).sum()
    }
}

/// Run once when the node opens its store, before it serves: checks (and
/// repairs) the sensor index unless the last stop was clean, then removes
/// the clean-stop marker, durably, so a crash from now on is noticed.
pub fn on_open(store: &dyn Store, readings: &ReadingStore) -> Result<Recovery, RecoveryError> {
    if store.reading_table().is_some() {
        // The table's index is written in the readings' own transaction:
        // it cannot disagree with them, and a stop marker would mean
        // nothing with several node processes on one database.
        tracing::info!("the sensor index is kept transactionally by the database; no check needed");
        return Ok(Recovery {
            clean: true,
            checked: Vec::new(),
        });
    }
    let clean = store.get(Keyspace::Meta, CLEAN_STOP_KEY)?.is_some();
    let mut recovery = Recovery {
        clean,
        checked: Vec::new(),
    };
    if clean {
        tracing::info!("the node stopped cleanly last time; the sensor index needs no check");
    } else {
        let started = Instant::now();
        for dataset in readings.catalog().list()? {
            if dataset.kind != DatasetKind::Sensor {
                continue;
            }
            let check = readings.check_sensor_index(&dataset.id).map_err(|source| {
                RecoveryError::Dataset {
                    dataset: dataset.id.clone(),
                    source,
                }
            })?;
            if check.sensors_repaired > 0 {
                tracing::warn!(
                    dataset = %dataset.id,
                    sensors_repaired = check.sensors_repaired,
                    index_counted = check.indexed,
                    readings_stored = check.readings,
                    "the sensor index disagreed with the stored readings and was rebuilt from them"
                );
            }
            recovery.checked.push((dataset.id, check));
        }
        if recovery.sensors_repaired() == 0 {
            tracing::info!(
                datasets = recovery.checked.len(),
                readings = recovery
                    .checked
                    .iter()
                    .map(|(_, c)| c.readings)
                    .sum::<u64>(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "no record of a clean stop (first start, a crash, or an older version): the \
                 sensor index was checked against the readings and agrees"
            );
        }
    }
    let mut clear = WriteBatch::default();
    clear.delete(CLEAN_STOP_KEY.to_vec());
    store.write(Keyspace::Meta, clear)?;
    store.flush()?;
    Ok(recovery)
}

/// Records, durably, that the node stopped cleanly: every write it made is
/// complete, so the next start need not check the index. Call after the
/// last write of a graceful stop.
pub fn mark_clean_stop(store: &dyn Store) -> Result<(), StoreError> {
    let mut mark = WriteBatch::default();
    mark.put(CLEAN_STOP_KEY.to_vec(), b"1".to_vec());
    store.write(Keyspace::Meta, mark)?;
    store.flush()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::data::generate::{generate, sensor_dataset};
    use crate::data::keys;
    use crate::data::{Catalog, Reading};
    use crate::store::SledStore;
    use time::macros::datetime;

    const NOW: time::OffsetDateTime = datetime!(2025-04-01 0:00 UTC);

    /// A store with one dataset of `sensors` x 20 readings.
    fn loaded(path: &std::path::Path, sensors: u32) -> (String, u64) {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(path).expect("store"));
        let dataset = sensor_dataset("air-quality", 751).expect("dataset");
        let id = dataset.id.clone();
        Catalog::new(store.clone())
            .publish(dataset)
            .expect("publish");
        let start = datetime!(2025-03-03 0:00 UTC);
        let data: Vec<Reading> = generate(
            "air-quality",
            751,
            sensors,
            start,
            start + time::Duration::minutes(200),
            1,
        )
        .expect("generate")
        .collect();
        let readings = ReadingStore::new(store.clone());
        readings.ingest_batch(&id, &data, NOW).expect("ingest");
        (id, data.len() as u64)
    }

    fn open(path: &std::path::Path) -> (Arc<dyn Store>, ReadingStore) {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(path).expect("reopen"));
        let readings = ReadingStore::new(store.clone());
        (store, readings)
    }

    #[test]
    fn a_wrong_index_is_repaired_on_open_after_an_unclean_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let (id, stored) = loaded(&path, 4);
        {
            // What the old two-write ingest could leave after a crash: an
            // index counting a batch whose readings never landed, a sensor
            // indexed without readings, and one sensor's entry gone.
            let (store, readings) = open(&path);
            let number = readings
                .catalog()
                .entry(&id)
                .expect("entry")
                .expect("has")
                .number;
            let sensors = readings.sensors(&id).expect("sensors");
            let first = &sensors[0].sensor_id;
            let second = &sensors[1].sensor_id;
            let mut index = WriteBatch::default();
            let mut wrong = keys::decode_sensor(
                &store
                    .get(Keyspace::Sensors, &keys::sensor_prefix(number, first))
                    .expect("get")
                    .expect("indexed"),
            )
            .expect("decode");
            wrong.count += 5000;
            index.put(
                keys::sensor_prefix(number, first),
                keys::encode_sensor(&wrong),
            );
            index.put(
                keys::sensor_prefix(number, "ghost"),
                keys::encode_sensor(&wrong),
            );
            index.delete(keys::sensor_prefix(number, second));
            store
                .write(Keyspace::Sensors, index)
                .expect("corrupt the index");
            store.flush().expect("flush");
            assert_ne!(readings.count(&id).expect("count"), stored);
        }
        let (store, readings) = open(&path);
        let recovery = on_open(store.as_ref(), &readings).expect("check");
        assert!(!recovery.clean);
        assert_eq!(recovery.checked.len(), 1);
        let check = recovery.checked[0].1;
        assert_eq!(check.sensors_repaired, 3, "{check:?}");
        assert_eq!(check.readings, stored);
        assert_eq!(readings.count(&id).expect("count"), stored);
        assert_eq!(readings.sensors(&id).expect("sensors").len(), 4);

        // Checked again, it agrees and is left alone.
        assert_eq!(
            readings
                .check_sensor_index(&id)
                .expect("check")
                .sensors_repaired,
            0
        );
    }

    #[test]
    fn after_a_clean_stop_the_check_is_skipped_and_the_marker_is_used_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let (id, stored) = loaded(&path, 2);
        {
            let (store, readings) = open(&path);
            let first = on_open(store.as_ref(), &readings).expect("first open");
            assert!(!first.clean, "a new store has no record of a clean stop");
            assert_eq!(first.sensors_repaired(), 0);
            mark_clean_stop(store.as_ref()).expect("mark");
        }
        {
            let (store, readings) = open(&path);
            let second = on_open(store.as_ref(), &readings).expect("second open");
            assert!(second.clean);
            assert!(second.checked.is_empty(), "nothing read after a clean stop");
            assert_eq!(readings.count(&id).expect("count"), stored);
            // This run "crashes": no mark.
        }
        let (store, readings) = open(&path);
        let third = on_open(store.as_ref(), &readings).expect("third open");
        assert!(!third.clean, "the marker is consumed by the open after it");
        assert_eq!(third.checked.len(), 1);
    }
}
