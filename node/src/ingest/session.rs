//! Resumable ingest sessions: how far a client's numbered batches are
//! stored, kept on the node so a client that lost its connection (or the
//! node that crashed) can ask and send only what is missing.
//!
//! A session is named by the client (`samvirke ingest` derives the name
//! from the file's digest, the dataset and the batch size) and belongs to
//! the token that opened it: another token can neither read nor advance
//! it. Batches are numbered from 1. The node stores batch `n` only when
//! the session has batches `1..n-1` stored (or `n` is 1 and the client
//! starts the session over), and records `n` in the **same atomic write**
//! as the batch's readings ([`crate::data::ReadingStore::ingest_batch_with`]):
//! after a crash the session says `n` exactly when batch `n` is on disk.
//!
//! The session also keeps a chain of digests of the batches stored
//! ([`chain_next`] over [`batch_digest`]), so a resuming client can check
//! that its first `n` batches are the ones the node stored, not merely as
//! many, before it skips them.
//!
//! Sessions are bounded: at most [`MAX_SESSIONS_PER_TOKEN`] per token; a
//! new one beyond that replaces the token's least recently used session.

use prost::Message;
use samvirke_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Keyspace, Store, StoreError, WriteBatch};

/// Longest session id, in bytes.
pub const MAX_SESSION_ID: usize = 128;

/// Sessions kept per token; a new one beyond this replaces the least
/// recently used.
pub const MAX_SESSIONS_PER_TOKEN: usize = 64;

/// Domain separation for the chain of batch digests.
const CHAIN_DOMAIN: &[u8] = b"samvirke-ingest-chain-v1";

/// A 32-byte digest.
pub type Digest32 = [u8; 32];

/// Why a batch was not accepted into its session. Nothing of such a
/// batch is stored.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("session_id: {0}; use 1 to {MAX_SESSION_ID} characters of A-Z a-z 0-9 and . _ : -")]
    BadId(String),
    #[error(
        "session `{session}` is for dataset `{expected}`; batch {sequence} is for `{given}` \
         (use another session id for another dataset)"
    )]
    WrongDataset {
        session: String,
        sequence: u64,
        expected: String,
        given: String,
    },
    #[error(
        "out of order in session `{session}`: the node has {} stored, so the next batch is \
         {}; ask the node (IngestSession) and resume from there, or send batch 1 with restart \
         to start the session over",
        stored_batches(*acked),
        acked + 1
    )]
    OutOfOrder {
        session: String,
        sequence: u64,
        acked: u64,
    },
    #[error("batch sequence 0: batches are numbered from 1")]
    ZeroSequence,
    #[error("session `{session}`: its stored state is unreadable: {reason}")]
    Corrupt { session: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn stored_batches(acked: u64) -> String {
    match acked {
        0 => "no batch of it".to_string(),
        1 => "batch 1 of it".to_string(),
        n => format!("batches 1..={n} of it"),
    }
}

/// What the node keeps for one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionState {
    /// The dataset the session's batches go to.
    pub dataset: String,
    /// Batches `1..=acked` are stored.
    pub acked: u64,
    /// Readings in those batches.
    pub readings: u64,
    /// [`chain_next`] over the digests of batches `1..=acked` (hex).
    pub chain: String,
    /// When a batch was last stored (Unix ms), for replacing the least
    /// recently used session.
    pub updated_ms: i64,
}

impl SessionState {
    /// The chain as bytes (all zero for an unreadable one, which then
    /// matches no client's chain).
    pub fn chain_bytes(&self) -> Digest32 {
        let mut out = [0u8; 32];
        if let Ok(bytes) = hex::decode(&self.chain)
            && bytes.len() == 32
        {
            out.copy_from_slice(&bytes);
        }
        out
    }
}

/// What a batch claims about its place in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The token the batch came with (sessions are per token).
    pub token: String,
    /// The client's name for the session (checked by [`check_id`]).
    pub session: String,
    /// The batch's number, from 1.
    pub sequence: u64,
    /// Batch 1 only: start the session over, whatever it holds.
    pub restart: bool,
    /// [`batch_digest`] of the batch's readings.
    pub digest: Digest32,
    /// Readings in the batch.
    pub readings: u64,
}

/// Checks a client's session id.
pub fn check_id(id: &str) -> Result<(), SessionError> {
    if id.is_empty() {
        return Err(SessionError::BadId("is empty".to_string()));
    }
    if id.len() > MAX_SESSION_ID {
        return Err(SessionError::BadId(format!(
            "is {} bytes long; at most {MAX_SESSION_ID}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(SessionError::BadId(format!("contains {c:?}")));
    }
    Ok(())
}

/// The digest of one batch's readings: SHA-256 over each reading's
/// length-delimited protobuf encoding, in order. Maps encode in key order
/// (`samvirke-proto` builds them as ordered maps), so the client and the
/// node compute it alike.
pub fn batch_digest(dataset: &str, readings: &[pb::Reading]) -> Digest32 {
    let mut hasher = Sha256::new();
    hasher.update((dataset.len() as u64).to_be_bytes());
    hasher.update(dataset.as_bytes());
    let mut buffer = Vec::new();
    for reading in readings {
        buffer.clear();
        // Encoding into a Vec cannot fail (it grows as needed).
        let _ = reading.encode_length_delimited(&mut buffer);
        hasher.update(&buffer);
    }
    hasher.finalize().into()
}

/// The chain after one more batch: SHA-256 of a domain tag, the chain so
/// far and the batch's digest. The chain of no batches is all zero.
pub fn chain_next(chain: &Digest32, batch: &Digest32) -> Digest32 {
    let mut hasher = Sha256::new();
    hasher.update(CHAIN_DOMAIN);
    hasher.update(chain);
    hasher.update(batch);
    hasher.finalize().into()
}

/// The session id `samvirke ingest` uses for a file: `file-` and 32 hex
/// digits of a digest of the file's bytes, its format, the dataset and
/// the batch size, so the same file ingested the same way is the same
/// session, and anything that changes how it is cut into batches is
/// another.
pub fn file_session_id(
    format: &str,
    dataset: &str,
    batch_size: u32,
    mut file: impl std::io::Read,
) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    for part in [
        b"samvirke-ingest-file-v1".as_slice(),
        format.as_bytes(),
        dataset.as_bytes(),
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.update(batch_size.to_be_bytes());
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let digest = hasher.finalize();
    Ok(format!("file-{}", hex::encode(&digest[..16])))
}

fn token_prefix(token: &str) -> Vec<u8> {
    // Token names are short (config keys); the length makes one token's
    // prefix never the start of another's.
    let bytes = token.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    let mut key = Vec::with_capacity(2 + bytes.len());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&bytes[..usize::from(len)]);
    key
}

fn key(token: &str, session: &str) -> Vec<u8> {
    let mut key = token_prefix(token);
    key.extend_from_slice(session.as_bytes());
    key
}

fn decode(session: &str, bytes: &[u8]) -> Result<SessionState, SessionError> {
    serde_json::from_slice(bytes).map_err(|e| SessionError::Corrupt {
        session: session.to_string(),
        reason: e.to_string(),
    })
}

/// The session `session` of `token`, if the node has it.
pub fn get(
    store: &dyn Store,
    token: &str,
    session: &str,
) -> Result<Option<SessionState>, SessionError> {
    check_id(session)?;
    store
        .get(Keyspace::IngestSessions, &key(token, session))?
        .map(|bytes| decode(session, &bytes))
        .transpose()
}

/// Decides a batch's place in its session: the write recording it (to be
/// made in the same atomic write as the batch), and the session as it
/// will then be. Refuses a batch out of order or for another dataset.
/// Runs under the ingest lock, so the session cannot change meanwhile.
pub fn advance(
    store: &dyn Store,
    progress: &Progress,
    dataset: &str,
    now_ms: i64,
) -> Result<(WriteBatch, SessionState), SessionError> {
    check_id(&progress.session)?;
    if progress.sequence == 0 {
        return Err(SessionError::ZeroSequence);
    }
    let current = get(store, &progress.token, &progress.session)?;
    let restart = progress.restart && progress.sequence == 1;
    let mut batch = WriteBatch::default();
    let base = match current {
        Some(state) if !restart => {
            if state.dataset != dataset {
                return Err(SessionError::WrongDataset {
                    session: progress.session.clone(),
                    sequence: progress.sequence,
                    expected: state.dataset,
                    given: dataset.to_string(),
                });
            }
            state
        }
        existing => {
            if existing.is_none() {
                // A new session: make room under the token's bound.
                evict_beyond_bound(store, &progress.token, &mut batch)?;
            }
            SessionState {
                dataset: dataset.to_string(),
                acked: 0,
                readings: 0,
                chain: hex::encode([0u8; 32]),
                updated_ms: now_ms,
            }
        }
    };
    if progress.sequence != base.acked + 1 {
        return Err(SessionError::OutOfOrder {
            session: progress.session.clone(),
            sequence: progress.sequence,
            acked: base.acked,
        });
    }
    let next = SessionState {
        dataset: dataset.to_string(),
        acked: progress.sequence,
        readings: base.readings + progress.readings,
        chain: hex::encode(chain_next(&base.chain_bytes(), &progress.digest)),
        updated_ms: now_ms,
    };
    let value = serde_json::to_vec(&next).map_err(|e| SessionError::Corrupt {
        session: progress.session.clone(),
        reason: e.to_string(),
    })?;
    batch.put(key(&progress.token, &progress.session), value);
    Ok((batch, next))
}

/// Adds to `batch` the deletion of `token`'s least recently used sessions
/// so that one more fits under [`MAX_SESSIONS_PER_TOKEN`].
fn evict_beyond_bound(
    store: &dyn Store,
    token: &str,
    batch: &mut WriteBatch,
) -> Result<(), SessionError> {
    let mut held: Vec<(i64, Vec<u8>)> = Vec::new();
    for item in store.scan_prefix(Keyspace::IngestSessions, &token_prefix(token)) {
        let (key, value) = item?;
        // An unreadable entry counts as oldest: it goes first.
        let updated = serde_json::from_slice::<SessionState>(&value)
            .map(|s| s.updated_ms)
            .unwrap_or(i64::MIN);
        held.push((updated, key));
    }
    if held.len() < MAX_SESSIONS_PER_TOKEN {
        return Ok(());
    }
    held.sort();
    let excess = held.len() + 1 - MAX_SESSIONS_PER_TOKEN;
    for (_, key) in held.into_iter().take(excess) {
        batch.delete(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::SledStore;

    fn progress(session: &str, sequence: u64) -> Progress {
        Progress {
            token: "loader".to_string(),
            session: session.to_string(),
            sequence,
            restart: false,
            digest: [sequence as u8; 32],
            readings: 10,
        }
    }

    fn apply(store: &dyn Store, p: &Progress, dataset: &str, now: i64) -> SessionState {
        let (batch, state) = advance(store, p, dataset, now).expect("advance");
        store.write(Keyspace::IngestSessions, batch).expect("write");
        state
    }

    #[test]
    fn batches_advance_in_order_only_and_per_dataset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let store = store.as_ref();
        assert_eq!(get(store, "loader", "s1").expect("get"), None);
        let one = apply(store, &progress("s1", 1), "air", 1);
        assert_eq!((one.acked, one.readings), (1, 10));
        let two = apply(store, &progress("s1", 2), "air", 2);
        assert_eq!(two.acked, 2);
        assert_eq!(
            two.chain_bytes(),
            chain_next(&chain_next(&[0; 32], &[1; 32]), &[2; 32])
        );

        // A gap, a repeat and batch 0 are refused and change nothing.
        for (sequence, text) in [
            (4, "out of order in session `s1`"),
            (2, "batches 1..=2 of it stored, so the next batch is 3"),
        ] {
            let err = advance(store, &progress("s1", sequence), "air", 3).expect_err("order");
            assert!(err.to_string().contains(text), "{err}");
        }
        assert!(matches!(
            advance(store, &progress("s1", 0), "air", 3),
            Err(SessionError::ZeroSequence)
        ));
        // Another dataset under the same session id is refused.
        let err = advance(store, &progress("s1", 3), "noise", 3).expect_err("dataset");
        assert!(
            err.to_string()
                .contains("session `s1` is for dataset `air`; batch 3 is for `noise`"),
            "{err}"
        );
        assert_eq!(get(store, "loader", "s1").expect("get"), Some(two.clone()));

        // Another token does not see or advance this token's session.
        let mut other = progress("s1", 3);
        other.token = "intruder".to_string();
        assert_eq!(get(store, "intruder", "s1").expect("get"), None);
        let err = advance(store, &other, "air", 3).expect_err("not theirs");
        assert!(
            err.to_string()
                .contains("the node has no batch of it stored, so the next batch is 1"),
            "{err}"
        );
        // A token whose name starts like another's has its own sessions.
        assert_eq!(get(store, "loade", "rs1").expect("get"), None);

        // Batch 1 with restart starts the session over.
        let mut again = progress("s1", 1);
        again.restart = true;
        let restarted = apply(store, &again, "noise", 4);
        assert_eq!((restarted.acked, restarted.dataset.as_str()), (1, "noise"));
        // Restart on a later batch is not a restart.
        let mut late = progress("s1", 5);
        late.restart = true;
        assert!(advance(store, &late, "noise", 5).is_err());
    }

    #[test]
    fn file_session_ids_are_valid_and_name_what_cuts_the_batches() {
        let id = file_session_id("csv", "air", 5000, b"a,b\n".as_slice()).expect("id");
        check_id(&id).expect("a valid session id");
        assert_eq!(id.len(), 5 + 32);
        assert_eq!(
            id,
            file_session_id("csv", "air", 5000, b"a,b\n".as_slice()).expect("id")
        );
        for other in [
            file_session_id("json", "air", 5000, b"a,b\n".as_slice()),
            file_session_id("csv", "noise", 5000, b"a,b\n".as_slice()),
            file_session_id("csv", "air", 5001, b"a,b\n".as_slice()),
            file_session_id("csv", "air", 5000, b"a,c\n".as_slice()),
        ] {
            assert_ne!(id, other.expect("id"));
        }
    }

    #[test]
    fn bad_session_ids_are_refused() {
        for bad in ["", "a b", "a/b", "ø", &"x".repeat(MAX_SESSION_ID + 1)] {
            let err = check_id(bad).expect_err("bad id");
            assert!(err.to_string().starts_with("session_id: "), "{err}");
        }
        check_id("sha256:0123abcd-air_quality.v1").expect("good id");
    }

    #[test]
    fn a_token_keeps_a_bounded_number_of_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(dir.path()).expect("store");
        for i in 0..MAX_SESSIONS_PER_TOKEN as i64 + 5 {
            apply(&store, &progress(&format!("s{i}"), 1), "air", i);
        }
        let held = store
            .scan_prefix(Keyspace::IngestSessions, &token_prefix("loader"))
            .count();
        assert_eq!(held, MAX_SESSIONS_PER_TOKEN);
        // The least recently used went first; the newest are kept.
        for i in 0..5 {
            assert_eq!(get(&store, "loader", &format!("s{i}")).expect("get"), None);
        }
        let last = format!("s{}", MAX_SESSIONS_PER_TOKEN + 4);
        assert!(get(&store, "loader", &last).expect("get").is_some());
        // Advancing an existing session evicts nothing.
        apply(&store, &progress(&last, 2), "air", 1000);
        assert_eq!(
            store
                .scan_prefix(Keyspace::IngestSessions, &token_prefix("loader"))
                .count(),
            MAX_SESSIONS_PER_TOKEN
        );
    }

    #[test]
    fn the_batch_digest_depends_on_every_reading_and_the_dataset() {
        let reading = |v: f64| pb::Reading {
            sensor_id: "s".to_string(),
            at: None,
            values: [("no2".to_string(), v)].into_iter().collect(),
            location: None,
        };
        let base = batch_digest("air", &[reading(1.0), reading(2.0)]);
        assert_eq!(base, batch_digest("air", &[reading(1.0), reading(2.0)]));
        assert_ne!(base, batch_digest("air", &[reading(2.0), reading(1.0)]));
        assert_ne!(base, batch_digest("air", &[reading(1.0)]));
        assert_ne!(base, batch_digest("noise", &[reading(1.0), reading(2.0)]));
    }
}
