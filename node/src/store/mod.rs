//! Storage: the [`Store`] trait the rest of the node writes through, its
//! embedded sled implementation ([`SledStore`], the default) and the
//! PostgreSQL one ([`PostgresStore`], for large municipalities and for
//! several node processes serving one municipality from one database).
//!
//! The trait is an ordered key-value space split into named keyspaces, with
//! atomic batches, range scans and an explicit durability point
//! ([`Store::flush`]), plus the few atomic primitives that stay correct
//! when several processes share one store ([`Store::insert_new`],
//! [`Store::compare_and_swap`], [`Store::last`]) and a feed of changes
//! other processes made ([`Store::changes`]). A backend with a relational
//! engine also keeps readings in a real table ([`ReadingTable`], see
//! [`table`]). That is all `governance`, `data`, `peer` and `audit` need;
//! none of them knows which backend runs.
//!
//! A store directory is claimed by a small marker file, [`MARKER_FILE`],
//! that records the format and schema version. The marker is checked
//! *before* the backend opens anything, so pointing a node at the wrong
//! directory (a home directory, another program's data) fails with a clear
//! message and leaves that directory exactly as it was.

pub mod postgres;
mod sled_store;
pub mod table;

use std::fmt::Debug;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use postgres::PostgresStore;
pub use sled_store::SledStore;
pub use table::ReadingTable;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The marker file that makes a directory a Samvirke store.
pub const MARKER_FILE: &str = "SAMVIRKE-STORE";

const MARKER_FORMAT: &str = "samvirke-store";

/// Storage failures. Messages name the directory involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path} is not a Samvirke store: it is not empty and has no {MARKER_FILE} marker; \
         refusing to touch it (set node.data_dir to a new or empty directory)"
    )]
    NotAStore { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} holds a store of schema {found}, newer than this samvirke-node supports \
         ({supported}); upgrade samvirke-node (the store was left untouched)"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "database {database} holds a Samvirke store of schema {found}, newer than this \
         samvirke-node supports ({supported}); upgrade samvirke-node (the database was left untouched)"
    )]
    NewerDatabase {
        database: String,
        found: u32,
        supported: u32,
    },
    #[error(
        "database {database} is not a Samvirke store: it holds {tables} tables of something \
         else; refusing to touch it (name a new, empty database in store.url)"
    )]
    ForeignDatabase { database: String, tables: u64 },
    #[error("store marker {path} is unreadable: {reason}")]
    BadMarker { path: PathBuf, reason: String },
    #[error("store {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("store backend failed: {0}")]
    Backend(String),
}

/// The keyspaces a node keeps. Each is an independent ordered map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keyspace {
    /// Store metadata: schema version, node id, creation time.
    Meta,
    /// Accepted fellowship rosters, every serial: `fellowship \0 serial(u64 BE)`
    /// -> the signed file, so a partner that is several serials behind can
    /// be sent the whole chain it needs.
    Rosters,
    /// Data-sharing agreements: `provider code (u32 BE) | uuid (16 bytes)`
    /// -> the signed file with every valid signature collected so far.
    /// (Stores written before agreements were keyed by provider hold
    /// `uuid` keys; the registry re-keys them when it opens.)
    Agreements,
    /// Rosters this node refused to apply because they change its own
    /// entry without its signature: `fellowship \0 serial (u64 BE)` -> the
    /// signed file, kept for the operator to inspect and resolve.
    Quarantine,
    /// Privacy budget spent under noisy agreements: `consumer (u32 BE) \0
    /// dataset id` -> epsilon spent (f64 BE bits).
    Budgets,
    /// The audit chain: `seq (u64 BE)` -> entry line (JSON). See `audit`.
    Audit,
    /// Signed audit checkpoints: `seq (u64 BE)` -> checkpoint line.
    Checkpoints,
    /// Receipts partners signed for this node's questions: `receipt id
    /// (uuid)` -> the receipt (protobuf). See `federate`.
    Receipts,
    /// Signed-request nonces seen: `nonce (16 bytes)` -> expiry (unix ms,
    /// i64 BE). See `peer::signed`.
    Nonces,
    /// The dataset catalog: `d` + dataset id (UTF-8) -> the dataset as JSON
    /// with its internal number; `n` + number (u32 BE) -> dataset id; and
    /// `next` -> the next free number (u32 BE). See `data::catalog`.
    Datasets,
    /// Sensor index: dataset number (u32 BE) | sensor id length (u8) |
    /// sensor id -> last known location and reading count, so a query can
    /// list a dataset's sensors without scanning readings. See `data::readings`.
    Sensors,
    /// Sensor readings: dataset number (u32 BE) | sensor id length (u8) |
    /// sensor id | timestamp ms (i64 BE, sign bit flipped) -> compact binary
    /// values, so (dataset, sensor, time range) is one range scan. See
    /// `data::readings`.
    Readings,
    /// Pilot and procurement records, each the prost-encoded protobuf
    /// message itself: `pilot\0` + record id (UTF-8) -> `Pilot`;
    /// `procurement\0` + record id -> `Procurement`. The NUL after the kind
    /// cannot occur in an id, so one prefix scan lists exactly one kind in id
    /// order. See `data::records`.
    Records,
    /// Resumable ingest sessions: `token name length (u16 BE) | token name |
    /// session id` -> how far the session's numbered batches are stored
    /// (JSON), written in the same atomic write as each batch's readings.
    /// See `ingest::session`.
    IngestSessions,
}

impl Keyspace {
    /// The name the backend stores this keyspace under.
    /// Every keyspace, so a backend can open them all up front.
    pub const ALL: [Keyspace; 14] = [
        Keyspace::Meta,
        Keyspace::Rosters,
        Keyspace::Agreements,
        Keyspace::Quarantine,
        Keyspace::Budgets,
        Keyspace::Audit,
        Keyspace::Checkpoints,
        Keyspace::Receipts,
        Keyspace::Nonces,
        Keyspace::Datasets,
        Keyspace::Sensors,
        Keyspace::Readings,
        Keyspace::Records,
        Keyspace::IngestSessions,
    ];

    /// The keyspace stored under `name` ([`Keyspace::name`]), if any.
    pub fn from_name(name: &str) -> Option<Keyspace> {
        Keyspace::ALL.into_iter().find(|space| space.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Keyspace::Meta => "meta",
            Keyspace::Rosters => "rosters",
            Keyspace::Agreements => "agreements",
            Keyspace::Quarantine => "quarantine",
            Keyspace::Budgets => "budgets",
            Keyspace::Audit => "audit",
            Keyspace::Checkpoints => "checkpoints",
            Keyspace::Receipts => "receipts",
            Keyspace::Nonces => "nonces",
            Keyspace::Datasets => "datasets",
            Keyspace::Sensors => "sensors",
            Keyspace::Readings => "readings",
            Keyspace::Records => "records",
            Keyspace::IngestSessions => "ingest_sessions",
        }
    }
}

/// One write in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// Writes applied to one keyspace atomically: all or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put {
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete { key: key.into() });
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An iterator over entries in key order.
pub type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry, StoreError>> + Send + 'a>;

/// The storage the node writes through.
///
/// Writes become durable at [`Store::flush`]; callers that acknowledge a
/// write to someone flush first. Flushing once per batch rather than per
/// write is what keeps durability cheap.
pub trait Store: Send + Sync + Debug + 'static {
    /// The schema version of the open store.
    fn schema_version(&self) -> u32;
    /// The value under `key`, if any.
    fn get(&self, space: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies `batch` to `space` atomically (not yet durable).
    fn write(&self, space: Keyspace, batch: WriteBatch) -> Result<(), StoreError>;
    /// Applies every batch to its keyspace as one atomic write: after a
    /// crash, all of them are there or none (not yet durable). For data
    /// kept in two keyspaces that must agree, such as readings and their
    /// sensor index.
    fn write_all(&self, batches: Vec<(Keyspace, WriteBatch)>) -> Result<(), StoreError>;
    /// Entries with keys in `range`, in ascending key order.
    fn range(&self, space: Keyspace, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> EntryIter<'_>;
    /// Entries whose keys start with `prefix`, in ascending key order.
    fn scan_prefix(&self, space: Keyspace, prefix: &[u8]) -> EntryIter<'_>;
    /// Makes every write so far durable on disk.
    fn flush(&self) -> Result<(), StoreError>;
    /// Calls `visit` for every entry of every keyspace (in [`Keyspace::ALL`]
    /// order, keys ascending) as the store stands at one instant: writes
    /// wait until it returns, so the snapshot never holds half of a
    /// [`Store::write_all`] or an audit entry without the batch it records.
    /// Reads go on. Keep `visit` fast (write to a local file, not a
    /// network): every writer waits for it. See `backup`.
    fn snapshot(&self, visit: &mut SnapshotVisitor<'_>) -> Result<(), StoreError>;

    /// Puts every entry of `entries` into `space` if none of their keys is
    /// there yet, atomically; `false` (and nothing written) if one is
    /// (not yet durable, like [`Store::write`]). This is what keeps one audit chain and one
    /// replay memory when several processes share a store: the store, not
    /// a process's memory, decides who was first.
    fn insert_new(&self, space: Keyspace, entries: Vec<Entry>) -> Result<bool, StoreError>;

    /// Replaces the value under `key` with `new` if it is `expected` now
    /// (`None`: absent), atomically; `false` (nothing written) otherwise
    /// (not yet durable).
    fn compare_and_swap(
        &self,
        space: Keyspace,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError>;

    /// The entry with the greatest key in `space`, if any.
    fn last(&self, space: Keyspace) -> Result<Option<Entry>, StoreError>;

    /// The readings table, for a backend that keeps readings in one (see
    /// [`table`]); `None`: readings are key-value entries in
    /// [`Keyspace::Readings`] and [`Keyspace::Sensors`].
    fn reading_table(&self) -> Option<&dyn ReadingTable> {
        None
    }

    /// Keyspaces changed by other processes sharing this store, as they
    /// are committed, for a backend that can be shared; `None` when only
    /// this process writes the store.
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Keyspace>> {
        None
    }

    /// Holds `section` for this process until the returned guard drops,
    /// for a read-check-write sequence (a governance import) that must not
    /// interleave with the same sequence in another process sharing the
    /// store. `None`: only this process writes the store, so the caller's
    /// own lock is enough. With a guard, re-read what the check depends on
    /// after taking it: another process may have written since.
    fn exclusive(&self, section: ExclusiveSection) -> Result<Option<ExclusiveGuard>, StoreError> {
        let _ = section;
        Ok(None)
    }

    /// The backend's name for logs and status: `sled` or `postgres`.
    fn backend_name(&self) -> &'static str;

    /// Bytes the store takes on disk (sled: its files; PostgreSQL: the
    /// database), if the backend can tell.
    fn size_on_disk(&self) -> Option<u64> {
        None
    }
}

/// Sequences that [`Store::exclusive`] serialises across processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExclusiveSection {
    /// Importing rosters and agreements: each is judged against the ones
    /// already held (serial order, co-signatures), so two processes must
    /// not judge against the same stale set.
    GovernanceImport,
}

impl ExclusiveSection {
    /// A stable number for the section (a PostgreSQL advisory lock key).
    pub fn id(self) -> i64 {
        match self {
            // "samvirke governance import", distinct from the schema lock.
            ExclusiveSection::GovernanceImport => 0x5356_474f_5649_4d50,
        }
    }
}

/// A backend's hold on an [`ExclusiveSection`]; released when dropped.
pub trait SectionHold: Send {
    /// `Ok` if the section is still held. A hold can be lost under the
    /// holder (a database connection dropped, and with it the lock):
    /// check right before writing what the section protects.
    fn confirm(&self) -> Result<(), StoreError>;
}

/// Held while an [`ExclusiveSection`] is held; releases it on drop.
pub struct ExclusiveGuard {
    hold: Box<dyn SectionHold>,
}

impl ExclusiveGuard {
    /// A guard over a backend's `hold`.
    pub fn new(hold: impl SectionHold + 'static) -> ExclusiveGuard {
        ExclusiveGuard {
            hold: Box::new(hold),
        }
    }

    /// See [`SectionHold::confirm`].
    pub fn confirm(&self) -> Result<(), StoreError> {
        self.hold.confirm()
    }
}

impl Debug for ExclusiveGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExclusiveGuard")
    }
}

/// What [`Store::snapshot`] calls for each entry: keyspace, key, value.
pub type SnapshotVisitor<'a> = dyn FnMut(Keyspace, &[u8], &[u8]) -> Result<(), StoreError> + 'a;

/// What the marker file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    format: String,
    schema: u32,
    backend: String,
}

/// What [`claim_directory`] found.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// A new or empty directory, now claimed with a fresh marker.
    Created,
    /// An existing store of schema `schema` (not newer than ours).
    Existing { schema: u32 },
}

/// Checks that `dir` is ours (or new) before any backend touches it.
fn claim_directory(dir: &Path, backend: &str) -> Result<Claim, StoreError> {
    let io = |e: std::io::Error| StoreError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let marker_path = dir.join(MARKER_FILE);
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            return Err(StoreError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Ok(_) => {
            if marker_path.exists() {
                return read_marker(dir, &marker_path).map(|schema| Claim::Existing { schema });
            }
            // A leftover temporary marker means an earlier first start was
            // cut off before claiming the directory: it is still ours, and empty.
            let foreign = std::fs::read_dir(dir)
                .map_err(io)?
                .filter_map(Result::ok)
                .any(|entry| {
                    entry.file_name() != std::ffi::OsStr::new(&format!("{MARKER_FILE}.tmp"))
                });
            if foreign {
                return Err(StoreError::NotAStore {
                    path: dir.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        Err(e) => return Err(io(e)),
    }
    // Only the node should read its data: personal data may end up here.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    let marker = Marker {
        format: MARKER_FORMAT.to_string(),
        schema: SCHEMA_VERSION,
        backend: backend.to_string(),
    };
    let text = format!(
        "# This directory is a Samvirke node store. Do not edit or delete.\n{}",
        toml::to_string(&marker).map_err(|e| StoreError::Backend(e.to_string()))?
    );
    // Write-then-rename so a crash never leaves a half-written marker.
    let temporary = dir.join(format!("{MARKER_FILE}.tmp"));
    std::fs::write(&temporary, text).map_err(io)?;
    std::fs::rename(&temporary, &marker_path).map_err(io)?;
    Ok(Claim::Created)
}

fn read_marker(dir: &Path, marker_path: &Path) -> Result<u32, StoreError> {
    let bad = |reason: String| StoreError::BadMarker {
        path: marker_path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(marker_path).map_err(|e| bad(e.to_string()))?;
    let marker: Marker = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if marker.format != MARKER_FORMAT {
        return Err(StoreError::NotAStore {
            path: dir.to_path_buf(),
        });
    }
    if marker.schema > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: dir.to_path_buf(),
            found: marker.schema,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(marker.schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        entries.sort();
        entries
    }

    #[test]
    fn a_foreign_directory_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("thesis.docx"), b"not ours").expect("write");
        let before = listing(dir.path());
        let err = SledStore::open(dir.path()).expect_err("foreign");
        assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
        assert!(err.to_string().contains("not a Samvirke store"));
        assert_eq!(listing(dir.path()), before);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        drop(SledStore::open(&path).expect("create"));
        let marker = path.join(MARKER_FILE);
        let text = std::fs::read_to_string(&marker).expect("marker");
        std::fs::write(&marker, text.replace("schema = 1", "schema = 99")).expect("write");
        let before = listing(&path);
        let err = SledStore::open(&path).expect_err("newer");
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, .. }),
            "{err}"
        );
        assert_eq!(listing(&path), before);
    }

    #[test]
    fn a_write_to_several_keyspaces_lands_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open");
        let mut readings = WriteBatch::default();
        readings.put(b"r1".to_vec(), b"v1".to_vec());
        readings.put(b"r2".to_vec(), b"v2".to_vec());
        let mut sensors = WriteBatch::default();
        sensors.put(b"s1".to_vec(), b"2".to_vec());
        let mut more = WriteBatch::default();
        more.delete(b"r1".to_vec());
        store
            .write_all(vec![
                (Keyspace::Readings, readings),
                (Keyspace::Sensors, sensors),
                (Keyspace::Readings, more),
            ])
            .expect("write_all");
        store.flush().expect("flush");
        drop(store);
        let store = SledStore::open(dir.path()).expect("reopen");
        // Batches for one keyspace apply in order: r1 put, then deleted.
        assert_eq!(store.get(Keyspace::Readings, b"r1").expect("get"), None);
        assert_eq!(
            store.get(Keyspace::Readings, b"r2").expect("get"),
            Some(b"v2".to_vec())
        );
        assert_eq!(
            store.get(Keyspace::Sensors, b"s1").expect("get"),
            Some(b"2".to_vec())
        );
        store.write_all(Vec::new()).expect("an empty write is fine");
    }

    #[test]
    fn writes_survive_reopening_and_scan_in_key_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        {
            let store = SledStore::open(&path).expect("create");
            assert_eq!(store.schema_version(), SCHEMA_VERSION);
            let mut batch = WriteBatch::default();
            batch.put(b"k/2".to_vec(), b"two".to_vec());
            batch.put(b"k/1".to_vec(), b"one".to_vec());
            batch.put(b"other".to_vec(), b"x".to_vec());
            store.write(Keyspace::Meta, batch).expect("write");
            store.flush().expect("flush");
        }
        let store = SledStore::open(&path).expect("reopen");
        assert_eq!(
            store.get(Keyspace::Meta, b"k/1").expect("get"),
            Some(b"one".to_vec())
        );
        let keys: Vec<Vec<u8>> = store
            .scan_prefix(Keyspace::Meta, b"k/")
            .map(|entry| entry.expect("entry").0)
            .collect();
        assert_eq!(keys, vec![b"k/1".to_vec(), b"k/2".to_vec()]);
        let bounded: Vec<Vec<u8>> = store
            .range(
                Keyspace::Meta,
                (
                    Bound::Excluded(b"k/1".to_vec()),
                    Bound::Excluded(b"p".to_vec()),
                ),
            )
            .map(|entry| entry.expect("entry").0)
            .collect();
        assert_eq!(bounded, vec![b"k/2".to_vec(), b"other".to_vec()]);
    }

    #[test]
    fn single_writes_and_deletes_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        let one = |op: WriteOp| WriteBatch { ops: vec![op] };
        {
            let store = SledStore::open(&path).expect("create");
            for key in [b"a".to_vec(), b"b".to_vec()] {
                store
                    .write(
                        Keyspace::Nonces,
                        one(WriteOp::Put {
                            key,
                            value: b"v".to_vec(),
                        }),
                    )
                    .expect("put");
            }
            store
                .write(
                    Keyspace::Nonces,
                    one(WriteOp::Delete { key: b"a".to_vec() }),
                )
                .expect("delete");
            store.flush().expect("flush");
        }
        let store = SledStore::open(&path).expect("reopen");
        assert_eq!(store.get(Keyspace::Nonces, b"a").expect("get"), None);
        assert_eq!(
            store.get(Keyspace::Nonces, b"b").expect("get"),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn a_first_start_cut_off_after_the_marker_is_completed_on_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        std::fs::create_dir(&path).expect("mkdir");
        claim_directory(&path, "sled").expect("claim");
        // Crash here: marker written, database never opened.
        let store = SledStore::open(&path).expect("finishes initialising");
        assert_eq!(store.schema_version(), SCHEMA_VERSION);
        drop(store);
        SledStore::open(&path).expect("and opens normally afterwards");
    }

    #[test]
    fn a_leftover_temporary_marker_does_not_make_the_directory_foreign() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(format!("{MARKER_FILE}.tmp")), b"partial").expect("write");
        SledStore::open(dir.path()).expect("claims the directory");
    }

    #[test]
    fn an_empty_existing_directory_becomes_a_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("open empty dir");
        assert_eq!(store.schema_version(), SCHEMA_VERSION);
        assert!(dir.path().join(MARKER_FILE).exists());
    }
}
