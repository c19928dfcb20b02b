//! Moving a node's data from one store to another
//! (`samvirke-node migrate-store --from sled:DIR --to postgres:URL`): every
//! keyspace copied as it is, readings re-laid as rows when the destination
//! keeps them in a table, and then checked: equal counts per keyspace,
//! equal readings per dataset, and the destination's audit chain read back
//! and verified link by link against the source's.
//!
//! The node must be stopped while its data moves (the source is opened as
//! the node would open it, which sled only allows one process to do). The
//! destination must be empty: a move never merges two nodes' data. The
//! destination is marked while the move is under way, so a node refuses a
//! database that a failed move left half-filled.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::audit::chain;
use crate::data::keys;
use crate::store::postgres::MOVE_IN_PROGRESS;
use crate::store::table::TableRow;
use crate::store::{Keyspace, Store, StoreError, WriteBatch};

/// Entries copied per write.
const COPY_BATCH: usize = 1_000;
/// Readings stored per table transaction.
const READINGS_BATCH: usize = 5_000;

/// Why a move failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the destination is not empty ({what}); a move never merges two stores: \
         use a new, empty database"
    )]
    NotEmpty { what: String },
    #[error("the source keeps readings in a table; moving out of PostgreSQL is done with pg_dump")]
    SourceIsTable,
    #[error("reading {key} in the source is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("after the move, {what}: the source has {source_count}, the destination {destination}")]
    Mismatch {
        what: String,
        source_count: u64,
        destination: u64,
    },
    #[error("the destination's audit chain does not verify at entry {seq}: {reason}")]
    Audit { seq: u64, reason: String },
}

/// What a move copied and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moved {
    /// Entries per keyspace (readings: rows).
    pub entries: BTreeMap<&'static str, u64>,
    /// Readings per dataset number.
    pub readings: BTreeMap<u32, u64>,
    /// Audit entries verified in the destination.
    pub audit_verified: u64,
}

/// Moves everything in `from` into the empty `to`, then checks it (see the
/// module docs). `progress` hears each keyspace as it is done.
pub fn move_store(
    from: &dyn Store,
    to: &dyn Store,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<Moved, MoveError> {
    if from.reading_table().is_some() {
        return Err(MoveError::SourceIsTable);
    }
    for space in Keyspace::ALL {
        if to.scan_prefix(space, b"").next().is_some() {
            return Err(MoveError::NotEmpty {
                what: format!("keyspace {} holds entries", space.name()),
            });
        }
    }
    if let Some(table) = to.reading_table()
        && table.total()? > 0
    {
        return Err(MoveError::NotEmpty {
            what: "it holds readings".to_string(),
        });
    }
    // Marked first, unmarked last: a node refuses a database a move left
    // half-filled (see `postgres::MOVE_IN_PROGRESS`).
    let mut mark = WriteBatch::default();
    mark.put(MOVE_IN_PROGRESS.to_vec(), b"1".to_vec());
    to.write(Keyspace::Meta, mark)?;
    to.flush()?;
    let mut moved = Moved::default();
    for space in Keyspace::ALL {
        let as_rows =
            to.reading_table().is_some() && matches!(space, Keyspace::Readings | Keyspace::Sensors);
        if as_rows {
            continue;
        }
        let mut batch = WriteBatch::default();
        let mut count = 0;
        for item in from.scan_prefix(space, b"") {
            let (key, value) = item?;
            batch.put(key, value);
            count += 1;
            if batch.ops.len() >= COPY_BATCH {
                to.write(space, std::mem::take(&mut batch))?;
            }
        }
        to.write(space, batch)?;
        moved.entries.insert(space.name(), count);
        progress(space.name(), count);
    }
    if let Some(table) = to.reading_table() {
        // Keys come in (dataset, sensor, time) order: one dataset at a time.
        let mut rows: Vec<TableRow> = Vec::with_capacity(READINGS_BATCH);
        let mut dataset = None;
        let mut total = 0;
        for item in from.scan_prefix(Keyspace::Readings, b"") {
            let (key, value) = item?;
            let corrupt = |reason: String| MoveError::Corrupt {
                key: hex::encode(&key),
                reason,
            };
            let decoded = keys::decode_reading_key(&key).map_err(|e| corrupt(e.to_string()))?;
            let stored = keys::decode_values(&value).map_err(|e| corrupt(e.to_string()))?;
            if let Some(number) = dataset
                && (number != decoded.number || rows.len() >= READINGS_BATCH)
            {
                table.ingest(number, std::mem::take(&mut rows), Vec::new())?;
            }
            dataset = Some(decoded.number);
            *moved.readings.entry(decoded.number).or_default() += 1;
            total += 1;
            rows.push(TableRow {
                sensor_id: decoded.sensor_id,
                ms: decoded.ms,
                values: stored.values,
                location: stored.location,
            });
        }
        if let Some(number) = dataset
            && !rows.is_empty()
        {
            table.ingest(number, rows, Vec::new())?;
        }
        moved.entries.insert(Keyspace::Readings.name(), total);
        progress(Keyspace::Readings.name(), total);
    }
    to.flush()?;
    check(from, to, &moved)?;
    moved.audit_verified = verify_chain(from, to)?;
    let mut unmark = WriteBatch::default();
    unmark.delete(MOVE_IN_PROGRESS.to_vec());
    to.write(Keyspace::Meta, unmark)?;
    to.flush()?;
    Ok(moved)
}

/// Counts every keyspace (and every dataset's readings) on both sides.
fn check(from: &dyn Store, to: &dyn Store, moved: &Moved) -> Result<(), MoveError> {
    for (&name, &expected) in &moved.entries {
        let Some(space) = Keyspace::from_name(name) else {
            continue;
        };
        if space == Keyspace::Readings && to.reading_table().is_some() {
            continue;
        }
        let found = to
            .scan_prefix(space, b"")
            .filter(|e| !matches!(e, Ok((key, _)) if key == MOVE_IN_PROGRESS))
            .count() as u64;
        let source_count = from.scan_prefix(space, b"").count() as u64;
        if found != expected || source_count != expected {
            return Err(MoveError::Mismatch {
                what: format!("entries in keyspace {name}"),
                source_count,
                destination: found,
            });
        }
    }
    if let Some(table) = to.reading_table() {
        for (&number, &expected) in &moved.readings {
            let indexed: u64 = table.sensors(number)?.iter().map(|s| s.count).sum();
            let counted: u64 = table.recount(number)?.iter().map(|s| s.count).sum();
            if indexed != expected || counted != expected {
                return Err(MoveError::Mismatch {
                    what: format!("readings of dataset number {number} (index {indexed})"),
                    source_count: expected,
                    destination: counted,
                });
            }
        }
        let total: u64 = moved.readings.values().sum();
        let stored = table.total()?;
        if stored != total {
            return Err(MoveError::Mismatch {
                what: "readings".to_string(),
                source_count: total,
                destination: stored,
            });
        }
    }
    Ok(())
}

/// Reads the destination's audit chain back and checks every link (each
/// entry numbered one after the last and naming its hash) and that every
/// line is the source's, byte for byte. Returns the entries verified.
fn verify_chain(from: &dyn Store, to: &dyn Store) -> Result<u64, MoveError> {
    let all = (Bound::Unbounded, Bound::Unbounded);
    let mut source = from.range(Keyspace::Audit, all.clone());
    let mut previous = chain::GENESIS;
    let mut seq = 0;
    for item in to.range(Keyspace::Audit, all) {
        let (key, line) = item?;
        seq += 1;
        let bad = |reason: String| MoveError::Audit { seq, reason };
        let entry: chain::Entry =
            serde_json::from_slice(&line).map_err(|e| bad(format!("unreadable: {e}")))?;
        if key != seq.to_be_bytes() || entry.seq != seq {
            return Err(bad(format!("numbered {}, expected {seq}", entry.seq)));
        }
        if entry.prev != chain::hash_text(&previous) {
            return Err(bad("does not name the previous entry's hash".to_string()));
        }
        match source.next() {
            Some(Ok((_, original))) if original == line => {}
            Some(Err(e)) => return Err(e.into()),
            _ => return Err(bad("differs from the source's entry".to_string())),
        }
        previous = chain::entry_hash(&line);
    }
    if source.next().is_some() {
        return Err(MoveError::Audit {
            seq: seq + 1,
            reason: "missing from the destination".to_string(),
        });
    }
    Ok(seq)
}
