//! The sled implementation of [`Store`]: one directory, no server. Each
//! [`Keyspace`] is a sled tree; a [`WriteBatch`] of several writes is a sled
//! batch, applied atomically, and one write a plain insert or remove (atomic
//! by itself); [`Store::flush`] is sled's fsync.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use sled::Transactional;

use super::{
    Claim, Entry, EntryIter, Keyspace, SCHEMA_VERSION, Store, StoreError, WriteBatch, WriteOp,
    claim_directory,
};

/// Where sled keeps its files inside the store directory.
const SLED_SUBDIR: &str = "sled";
/// Meta key holding the schema version (big-endian u32).
const SCHEMA_KEY: &[u8] = b"schema_version";

/// The embedded sled store.
#[derive(Debug)]
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    /// Open tree handles, one per keyspace: opening a tree takes a lock
    /// and a lookup, too much to repeat on every read.
    trees: HashMap<Keyspace, sled::Tree>,
    schema: u32,
    /// Writers hold it shared, [`Store::snapshot`] exclusively: sled 0.34
    /// has no point-in-time snapshots across trees, so a consistent copy
    /// is taken by letting no write in while it is made.
    gate: std::sync::RwLock<()>,
}

impl SledStore {
    /// Opens the store in `dir`, creating it if `dir` is missing or empty,
    /// with a [`DEFAULT_CACHE_BYTES`] page cache.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store in `dir` with a page cache of `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        let claim = claim_directory(dir, "sled")?;
        let db = open_db(&dir.join(SLED_SUBDIR), cache_bytes).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let trees = Keyspace::ALL
            .into_iter()
            .map(|space| Ok((space, db.open_tree(space.name()).map_err(backend)?)))
            .collect::<Result<HashMap<_, _>, StoreError>>()?;
        let store = SledStore {
            path: dir.to_path_buf(),
            db,
            trees,
            schema: SCHEMA_VERSION,
            gate: std::sync::RwLock::new(()),
        };
        let stored = store
            .get(Keyspace::Meta, SCHEMA_KEY)?
            .and_then(|bytes| <[u8; 4]>::try_from(bytes.as_slice()).ok())
            .map(u32::from_be_bytes);
        match (claim, stored) {
            // A new store, or one whose first start stopped between writing
            // the marker and recording the schema (nothing else is in it yet).
            (Claim::Created, _) | (Claim::Existing { .. }, None) if store.is_empty_meta()? => {
                let mut batch = WriteBatch::default();
                batch.put(SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes().to_vec());
                store.write(Keyspace::Meta, batch)?;
                store.flush()?;
            }
            (Claim::Created, _) => {
                return Err(StoreError::Backend(
                    "a freshly claimed store already holds data".to_string(),
                ));
            }
            (Claim::Existing { schema }, stored) => {
                // The marker and the database must agree; if they do not,
                // someone replaced one of them and we should not guess.
                if stored != Some(schema) {
                    return Err(StoreError::BadMarker {
                        path: dir.join(super::MARKER_FILE),
                        reason: format!("marker says schema {schema}, database says {stored:?}"),
                    });
                }
            }
        }
        Ok(store)
    }

    fn is_empty_meta(&self) -> Result<bool, StoreError> {
        Ok(self.tree(Keyspace::Meta)?.is_empty())
    }

    /// The directory this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Holds off [`Store::snapshot`] while a write is applied. A poisoned
    /// lock (a writer panicked) guards no data of its own, so it is taken anyway.
    fn open_gate(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tree(&self, space: Keyspace) -> Result<sled::Tree, StoreError> {
        match self.trees.get(&space) {
            Some(tree) => Ok(tree.clone()),
            None => self.db.open_tree(space.name()).map_err(backend),
        }
    }
}

/// How long to wait for the previous holder of the store (a process that is
/// just exiting, or a handle just dropped whose flusher thread is finishing)
/// to release sled's file lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The page cache of a store opened without a size (tools and tests); a
/// node takes `[store] cache_mib` from its config.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Opens the sled database, waiting briefly for a lock its previous holder
/// is about to release; a store held by a running node still fails.
fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
        {
            // sled reports a held lock only in the message text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn entries(iter: sled::Iter) -> EntryIter<'static> {
    Box::new(iter.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend)))
}

impl Store for SledStore {
    fn schema_version(&self) -> u32 {
        self.schema
    }

    fn get(&self, space: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(space)?
            .get(key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn write(&self, space: Keyspace, mut batch: WriteBatch) -> Result<(), StoreError> {
        let tree = self.tree(space)?;
        let _gate = self.open_gate();
        // One write is atomic by itself. sled's batches seal and write out
        // the current log buffer (a disk write and a range sync) to make
        // several writes atomic, far too dear for the one write a peer
        // call's replay memory makes; that write becomes durable with the
        // next flush, like any other.
        if batch.ops.len() == 1
            && let Some(op) = batch.ops.pop()
        {
            return match op {
                WriteOp::Put { key, value } => tree.insert(key, value).map(|_| ()),
                WriteOp::Delete { key } => tree.remove(key).map(|_| ()),
            }
            .map_err(backend);
        }
        let mut sled_batch = sled::Batch::default();
        for op in batch.ops {
            match op {
                WriteOp::Put { key, value } => sled_batch.insert(key, value),
                WriteOp::Delete { key } => sled_batch.remove(key),
            }
        }
        tree.apply_batch(sled_batch).map_err(backend)
    }

    fn write_all(&self, batches: Vec<(Keyspace, WriteBatch)>) -> Result<(), StoreError> {
        // One sled batch per tree (a keyspace named twice gets one batch,
        // in order), applied in one multi-tree transaction: sled makes it
        // atomic across trees and crashes.
        let mut trees: Vec<sled::Tree> = Vec::new();
        let mut spaces: Vec<Keyspace> = Vec::new();
        let mut sled_batches: Vec<sled::Batch> = Vec::new();
        let _gate = self.open_gate();
        for (space, batch) in batches {
            let at = match spaces.iter().position(|s| *s == space) {
                Some(at) => at,
                None => {
                    spaces.push(space);
                    trees.push(self.tree(space)?);
                    sled_batches.push(sled::Batch::default());
                    spaces.len() - 1
                }
            };
            for op in batch.ops {
                match op {
                    WriteOp::Put { key, value } => sled_batches[at].insert(key, value),
                    WriteOp::Delete { key } => sled_batches[at].remove(key),
                }
            }
        }
        match trees.len() {
            0 => Ok(()),
            1 => trees[0]
                .apply_batch(sled_batches.remove(0))
                .map_err(backend),
            _ => trees[..]
                .transaction(|transactional| {
                    for (tree, batch) in transactional.iter().zip(&sled_batches) {
                        tree.apply_batch(batch)?;
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|error| match error {
                    sled::transaction::TransactionError::Storage(e) => backend(e),
                    sled::transaction::TransactionError::Abort(()) => {
                        StoreError::Backend("a multi-keyspace write was aborted".to_string())
                    }
                }),
        }
    }

    fn range(&self, space: Keyspace, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> EntryIter<'_> {
        match self.tree(space) {
            Ok(tree) => entries(tree.range::<Vec<u8>, _>(range)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn scan_prefix(&self, space: Keyspace, prefix: &[u8]) -> EntryIter<'_> {
        match self.tree(space) {
            Ok(tree) => entries(tree.scan_prefix(prefix)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    fn insert_new(&self, space: Keyspace, entries: Vec<Entry>) -> Result<bool, StoreError> {
        let tree = self.tree(space)?;
        let _gate = self.open_gate();
        let inserted = tree
            .transaction(|tree| {
                for (key, _) in &entries {
                    if tree.get(key)?.is_some() {
                        return Ok(false);
                    }
                }
                for (key, value) in &entries {
                    tree.insert(key.as_slice(), value.as_slice())?;
                }
                Ok::<bool, sled::transaction::ConflictableTransactionError<()>>(true)
            })
            .map_err(|error| match error {
                sled::transaction::TransactionError::Storage(e) => backend(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Backend("an insert was aborted".to_string())
                }
            })?;
        Ok(inserted)
    }

    fn compare_and_swap(
        &self,
        space: Keyspace,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let tree = self.tree(space)?;
        let _gate = self.open_gate();
        let swapped = tree
            .compare_and_swap(key, expected, Some(new))
            .map_err(backend)?
            .is_ok();
        Ok(swapped)
    }

    fn last(&self, space: Keyspace) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .tree(space)?
            .last()
            .map_err(backend)?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn backend_name(&self) -> &'static str {
        "sled"
    }

    fn size_on_disk(&self) -> Option<u64> {
        self.db.size_on_disk().ok()
    }

    fn snapshot(&self, visit: &mut super::SnapshotVisitor<'_>) -> Result<(), StoreError> {
        let _closed = self
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for space in Keyspace::ALL {
            for item in self.tree(space)?.iter() {
                let (key, value) = item.map_err(backend)?;
                visit(space, &key, &value)?;
            }
        }
        Ok(())
    }
}
