//! The node's tamper-evident audit log: one hash-chained entry per peer
//! decision (allowed or denied) and answer, per governance import or
//! refusal, per federated question asked, per local admin action; and
//! signed checkpoints of the chain.
//!
//! Appends go through one writer task ([`AuditLog::start`]) that takes
//! every entry waiting, chains them, writes them in one batch and flushes
//! once, then tells each caller its entry is durable (group commit): a
//! caller awaits that before the answer the entry records leaves the node,
//! yet a hundred concurrent calls cost one fsync, not a hundred. The chain
//! format and offline verification are in [`chain`].
//!
//! Keys: [`Keyspace::Audit`] holds `seq (u64 BE)` -> entry line;
//! [`Keyspace::Checkpoints`] holds `seq (u64 BE)` -> checkpoint line.

pub mod chain;

use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use chain::{Checkpoint, Entry, VerifyError, verify_export};

use crate::clock::SharedClock;
use crate::identity::NodeIdentity;
use crate::store::{Keyspace, Store, StoreError, WriteBatch};

/// Entries written in one batch at most.
const MAX_BATCH: usize = 1_024;
/// Entries waiting for the writer at most; appenders wait beyond that.
const QUEUE: usize = 8_192;
/// Times one batch is chained again onto a head another process moved.
const MAX_APPEND_ATTEMPTS: u32 = 1_000;
/// Most entries one export or tail may hold.
pub const MAX_RANGE: u64 = 100_000;

/// Why an entry could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log is not running (the node is stopping)")]
    Stopped,
    #[error("audit log storage failed: {0}")]
    Store(#[from] StoreError),
    #[error("audit entry {seq} is unreadable: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("range: {0}")]
    Range(String),
}

struct Pending {
    entry: Entry,
    done: oneshot::Sender<Result<u64, String>>,
}

/// The last entry of the chain.
#[derive(Debug, Clone, Copy)]
struct Head {
    seq: u64,
    hash: [u8; 32],
}

/// The audit log of one node.
pub struct AuditLog {
    store: Arc<dyn Store>,
    identity: Arc<NodeIdentity>,
    clock: SharedClock,
    head: Mutex<Head>,
    queue: mpsc::Sender<Pending>,
    receiver: Mutex<Option<mpsc::Receiver<Pending>>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("head", &self.head())
            .finish_non_exhaustive()
    }
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

impl AuditLog {
    /// Opens the log kept in `store`, signing as `identity`.
    pub fn open(
        store: Arc<dyn Store>,
        identity: Arc<NodeIdentity>,
        clock: SharedClock,
    ) -> Result<AuditLog, AuditError> {
        let mut head = Head {
            seq: 0,
            hash: chain::GENESIS,
        };
        if let Some((key, line)) = store.last(Keyspace::Audit)? {
            let seq = <[u8; 8]>::try_from(key.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| AuditError::Corrupt {
                    seq: 0,
                    reason: "a key is not a sequence number".to_string(),
                })?;
            head = Head {
                seq,
                hash: chain::entry_hash(&line),
            };
        }
        let (queue, receiver) = mpsc::channel(QUEUE);
        Ok(AuditLog {
            store,
            identity,
            clock,
            head: Mutex::new(head),
            queue,
            receiver: Mutex::new(Some(receiver)),
        })
    }

    fn head(&self) -> Head {
        *self
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The number of the last entry (0 when empty).
    pub fn length(&self) -> u64 {
        self.head().seq
    }

    /// Runs the writer until `stop`, checkpointing every `interval` and
    /// once more when it stops. Call once.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let Some(mut receiver) = self
            .receiver
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        else {
            return;
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut checkpointed = self.head().seq;
        loop {
            tokio::select! {
                first = receiver.recv() => {
                    let Some(first) = first else { break };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match receiver.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let log = Arc::clone(&self);
                    let written = tokio::task::spawn_blocking(move || log.write(batch)).await;
                    if let Err(error) = written {
                        tracing::error!(%error, "audit writer failed");
                    }
                }
                _ = ticker.tick() => {
                    if self.head().seq != checkpointed {
                        checkpointed = self.checkpoint_logged();
                    }
                }
                () = stop.cancelled() => break,
            }
        }
        // Whatever is still queued is written before the last checkpoint.
        receiver.close();
        let mut rest = Vec::new();
        while let Ok(next) = receiver.try_recv() {
            rest.push(next);
        }
        if !rest.is_empty() {
            let log = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || log.write(rest)).await;
        }
        if self.head().seq != checkpointed {
            self.checkpoint_logged();
        }
    }

    fn checkpoint_logged(&self) -> u64 {
        match self.checkpoint() {
            Ok(checkpoint) => checkpoint.seq,
            Err(error) => {
                tracing::error!(%error, "audit checkpoint failed");
                0
            }
        }
    }

    /// Chains, writes and flushes `batch`, then answers every appender.
    ///
    /// The entries are inserted under sequence numbers that must still be
    /// free: when another node process sharing the store appended first,
    /// the insert is refused as a whole, the head is read back from the
    /// store, and the batch is chained onto it again. The store's key, not
    /// this process's memory, serialises the chain.
    fn write(&self, mut batch: Vec<Pending>) {
        let mut head = self.head();
        let mut attempts = 0;
        let outcome = loop {
            let now = self.clock.now();
            let mut entries = Vec::with_capacity(batch.len());
            let mut next = head;
            for Pending { entry, .. } in &mut batch {
                entry.seq = next.seq + 1;
                entry.at = now;
                entry.prev = chain::hash_text(&next.hash);
                let line = chain::encode(entry);
                next = Head {
                    seq: entry.seq,
                    hash: chain::entry_hash(&line),
                };
                entries.push((seq_key(entry.seq).to_vec(), line));
            }
            match self.store.insert_new(Keyspace::Audit, entries) {
                Ok(true) => break self.store.flush().map(|()| next),
                Ok(false) if attempts < MAX_APPEND_ATTEMPTS => {
                    attempts += 1;
                    match self.stored_head() {
                        Ok(stored) => head = stored,
                        Err(error) => break Err(error),
                    }
                }
                Ok(false) => {
                    break Err(StoreError::Backend(format!(
                        "the audit chain kept moving under {MAX_APPEND_ATTEMPTS} attempts to append"
                    )));
                }
                Err(error) => break Err(error),
            }
        };
        match outcome {
            Ok(head) => {
                *self
                    .head
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = head;
                for Pending { entry, done } in batch {
                    let _ = done.send(Ok(entry.seq));
                }
            }
            Err(error) => {
                tracing::error!(%error, "audit entries could not be made durable");
                for Pending { done, .. } in batch {
                    let _ = done.send(Err(error.to_string()));
                }
            }
        }
    }

    /// The last entry of the chain as the store holds it.
    fn stored_head(&self) -> Result<Head, StoreError> {
        Ok(match self.store.last(Keyspace::Audit)? {
            None => Head {
                seq: 0,
                hash: chain::GENESIS,
            },
            Some((key, line)) => Head {
                seq: <[u8; 8]>::try_from(key.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| {
                        StoreError::Backend("an audit key is not a sequence number".to_string())
                    })?,
                hash: chain::entry_hash(&line),
            },
        })
    }

    /// Records `entry` (its `seq`, `at` and `prev` are filled in) and
    /// returns once it is durable, with its sequence number.
    pub async fn append(&self, entry: Entry) -> Result<u64, AuditError> {
        let (done, durable) = oneshot::channel();
        self.queue
            .send(Pending { entry, done })
            .await
            .map_err(|_| AuditError::Stopped)?;
        durable
            .await
            .map_err(|_| AuditError::Stopped)?
            .map_err(|reason| AuditError::Store(StoreError::Backend(reason)))
    }

    /// [`AuditLog::append`] from blocking code (governance imports).
    pub fn append_blocking(&self, entry: Entry) -> Result<u64, AuditError> {
        let (done, durable) = oneshot::channel();
        self.queue
            .blocking_send(Pending { entry, done })
            .map_err(|_| AuditError::Stopped)?;
        durable
            .blocking_recv()
            .map_err(|_| AuditError::Stopped)?
            .map_err(|reason| AuditError::Store(StoreError::Backend(reason)))
    }

    /// Records every entry of `entries` in one group commit, from blocking
    /// code; returns the last sequence number.
    pub fn append_all_blocking(&self, entries: Vec<Entry>) -> Result<u64, AuditError> {
        let mut waiting = Vec::with_capacity(entries.len());
        for entry in entries {
            let (done, durable) = oneshot::channel();
            self.queue
                .blocking_send(Pending { entry, done })
                .map_err(|_| AuditError::Stopped)?;
            waiting.push(durable);
        }
        let mut last = 0;
        for durable in waiting {
            last = durable
                .blocking_recv()
                .map_err(|_| AuditError::Stopped)?
                .map_err(|reason| AuditError::Store(StoreError::Backend(reason)))?;
        }
        Ok(last)
    }

    /// Signs and stores a checkpoint of the chain as it stands.
    pub fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        let head = self.head();
        let checkpoint = Checkpoint::sign(
            self.identity.signing_key(),
            self.identity.municipality_code,
            head.seq,
            &head.hash,
            head.seq,
            self.clock.now(),
        );
        let mut batch = WriteBatch::default();
        batch.put(seq_key(head.seq).to_vec(), checkpoint.line());
        self.store.write(Keyspace::Checkpoints, batch)?;
        self.store.flush()?;
        Ok(checkpoint)
    }

    /// The entry lines `from..=to` (bounded to [`MAX_RANGE`]).
    pub fn lines(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, AuditError> {
        if from == 0 || to < from {
            return Err(AuditError::Range(format!(
                "{from}..{to} is not a range of entries (they are numbered from 1)"
            )));
        }
        if to - from >= MAX_RANGE {
            return Err(AuditError::Range(format!(
                "{from}..{to} holds more than {MAX_RANGE} entries; export it in parts"
            )));
        }
        let mut out = Vec::new();
        for item in self.store.range(
            Keyspace::Audit,
            (
                Bound::Included(seq_key(from).to_vec()),
                Bound::Included(seq_key(to).to_vec()),
            ),
        ) {
            out.push(item?.1);
        }
        Ok(out)
    }

    /// The last `count` entry lines, oldest first.
    pub fn tail_lines(&self, count: u64) -> Result<Vec<Vec<u8>>, AuditError> {
        let last = self.head().seq;
        if last == 0 || count == 0 {
            return Ok(Vec::new());
        }
        let from = last.saturating_sub(count.min(MAX_RANGE) - 1).max(1);
        self.lines(from, last)
    }

    /// The last `count` entries, oldest first.
    pub fn tail(&self, count: u64) -> Result<Vec<Entry>, AuditError> {
        let last = self.head().seq;
        if last == 0 || count == 0 {
            return Ok(Vec::new());
        }
        let from = last.saturating_sub(count.min(MAX_RANGE) - 1).max(1);
        self.lines(from, last)?
            .iter()
            .map(|line| {
                serde_json::from_slice::<Entry>(line).map_err(|e| AuditError::Corrupt {
                    seq: 0,
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// An export of entries `from..=to` (clamped to the chain), closed by
    /// a checkpoint the node signs now for its last entry.
    pub fn export(&self, from: u64, to: u64) -> Result<Vec<u8>, AuditError> {
        let length = self.head().seq;
        let to = to.min(length);
        let lines = self.lines(from, to)?;
        let Some(last) = lines.last() else {
            return Err(AuditError::Range(format!("no entries in {from}..{to}")));
        };
        let checkpoint = Checkpoint::sign(
            self.identity.signing_key(),
            self.identity.municipality_code,
            to,
            &chain::entry_hash(last),
            length,
            self.clock.now(),
        );
        let mut out = Vec::new();
        for line in &lines {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.extend_from_slice(&checkpoint.line());
        out.push(b'\n');
        Ok(out)
    }
}
