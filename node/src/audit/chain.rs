//! The audit chain's format: entries, their hashes, signed checkpoints,
//! and the offline verification of an exported range. Pure: no store, no
//! clock, so the CLI verifies an export file with exactly this code.
//!
//! An entry is one line of JSON, written once and kept byte for byte. Its
//! hash is SHA-256 over `samvirke/audit/v1\0` and those bytes, and every
//! entry names the hash of the one before it (`prev`; zeros before the
//! first), so changing, removing or reordering any entry breaks every hash
//! after it. A checkpoint is the node's Ed25519 signature over
//! `samvirke/audit-checkpoint/v1\0 || node || seq || head hash || time`: it fixes
//! the chain up to `seq`, so even the last entries cannot be changed
//! unnoticed. An export is the entries of a range, one per line, followed
//! by a checkpoint line the node signs for the range's last entry.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

const ENTRY_DOMAIN: &[u8] = b"samvirke/audit/v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"samvirke/audit-checkpoint/v2\0";

/// Longest text kept in one field of an entry (a reason, a dataset id a
/// caller sent): entries must stay small whatever a caller sends.
pub const MAX_FIELD_CHARS: usize = 512;

/// What happened, in one entry. Fields that do not apply stay empty and
/// are left out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was recorded, RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `sha256:<hex>` of the previous entry (zeros before the first).
    pub prev: String,
    /// `peer_call`, `peer_answer`, `governance`, `federated_question`,
    /// `federated_source` (one per source asked), `federated_answer`,
    /// `admin`.
    pub event: String,
    /// `allowed`, `denied`, `completed`, `accepted`, `refused`, ...
    pub outcome: String,
    /// The partner's municipality code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<u32>,
    /// The partner's certificate fingerprint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// The local token that acted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agreement: String,
    /// The RPC or action.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dataset: String,
    /// Why a call or document was refused, or what an action did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// `sha256:<hex>` of the request message and of the answer sent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub response: String,
    /// The id of the receipt given (provider) or kept (consumer).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub receipt: String,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            seq: 0,
            at: OffsetDateTime::UNIX_EPOCH,
            prev: String::new(),
            event: String::new(),
            outcome: String::new(),
            caller: None,
            fingerprint: String::new(),
            token: String::new(),
            agreement: String::new(),
            operation: String::new(),
            dataset: String::new(),
            detail: String::new(),
            rows: None,
            bytes: None,
            request: String::new(),
            response: String::new(),
            receipt: String::new(),
        }
    }
}

/// An entry's text fields cut to [`MAX_FIELD_CHARS`].
pub fn bounded(text: &str) -> String {
    if text.chars().count() <= MAX_FIELD_CHARS {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(MAX_FIELD_CHARS).collect();
        cut.push_str("...");
        cut
    }
}

/// A SHA-256 as `sha256:<hex>`.
pub fn digest_text(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hash that zeroes `prev` of the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// The hash of an entry's bytes, as the next entry names it.
pub fn entry_hash(line: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(ENTRY_DOMAIN);
    hasher.update(line);
    hasher.finalize().into()
}

/// `sha256:<hex>` of a raw hash.
pub fn hash_text(hash: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(hash))
}

/// Encodes `entry` as its line (without the newline).
pub fn encode(entry: &Entry) -> Vec<u8> {
    // Serialising a struct of strings and numbers cannot fail.
    serde_json::to_vec(entry).unwrap_or_default()
}

/// A signed statement that the chain up to `seq` has head `head`, and
/// that the whole chain then held `chain` entries (more than `seq` when an
/// export stops before the end: an auditor sees that entries followed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    /// `sha256:<hex>` of entry `seq`.
    pub head: String,
    /// Entries in the chain when this was signed.
    pub chain: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The signing node's municipality code and key.
    pub node: u32,
    pub key: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// The line form of a checkpoint in an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint: Checkpoint,
}

fn checkpoint_message(
    node: u32,
    seq: u64,
    head: &[u8; 32],
    chain: u64,
    at: OffsetDateTime,
) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 4 + 8 + 32 + 8 + 16);
    message.extend_from_slice(CHECKPOINT_DOMAIN);
    message.extend_from_slice(&node.to_be_bytes());
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(head);
    message.extend_from_slice(&chain.to_be_bytes());
    message.extend_from_slice(&at.unix_timestamp_nanos().to_be_bytes());
    message
}

impl Checkpoint {
    /// Signs that the chain up to `seq` has head `head`, and held `chain`
    /// entries, at `at`.
    pub fn sign(
        key: &SigningKey,
        node: u32,
        seq: u64,
        head: &[u8; 32],
        chain: u64,
        at: OffsetDateTime,
    ) -> Checkpoint {
        let signature = key.sign(&checkpoint_message(node, seq, head, chain, at));
        Checkpoint {
            seq,
            head: hash_text(head),
            chain,
            at,
            node,
            key: crate::identity::signing_key_text(&key.verifying_key()),
            signature: hex::encode(signature.to_bytes()),
        }
    }

    /// Whether `key` signed this checkpoint (and it names that key).
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        if self.key != crate::identity::signing_key_text(key) {
            return false;
        }
        let Some(head) = parse_hash(&self.head) else {
            return false;
        };
        let Ok(bytes) = hex::decode(&self.signature) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        key.verify_strict(
            &checkpoint_message(self.node, self.seq, &head, self.chain, self.at),
            &Signature::from_bytes(&bytes),
        )
        .is_ok()
    }

    /// The checkpoint as an export line (without the newline).
    pub fn line(&self) -> Vec<u8> {
        serde_json::to_vec(&CheckpointLine {
            checkpoint: self.clone(),
        })
        .unwrap_or_default()
    }
}

/// Parses `sha256:<64 lowercase hex>`.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:")?;
    if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Why an export does not verify; names the entry (or line) at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the export is empty")]
    Empty,
    #[error("line {line}: not an audit entry or checkpoint ({reason})")]
    Unreadable { line: usize, reason: String },
    #[error(
        "entry {seq} (line {line}): its `prev` is not the hash of entry {before}; entry {before} \
         or entry {seq} was changed"
    )]
    BrokenChain { seq: u64, before: u64, line: usize },
    #[error(
        "entry {seq} (line {line}) does not follow entry {before} (entries missing or out of order)"
    )]
    Gap { seq: u64, before: u64, line: usize },
    #[error("the export ends without the node's signed checkpoint; it may have been cut short")]
    NoCheckpoint,
    #[error(
        "the checkpoint covers entry {checkpoint_seq}, but the export ends at entry {last}; the \
         export was changed"
    )]
    CheckpointMismatch { checkpoint_seq: u64, last: u64 },
    #[error(
        "entry {seq} (line {line}) is not the entry the node's checkpoint signed (its hash \
         differs); entry {seq} was changed"
    )]
    HeadMismatch { seq: u64, line: usize },
    #[error(
        "the checkpoint's signature does not verify with {key}; the export was changed, or was \
         made by another node"
    )]
    BadSignature { key: String },
    #[error("text after the checkpoint (line {line}); the export was changed")]
    Trailing { line: usize },
}

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub first: u64,
    pub last: u64,
    pub entries: Vec<Entry>,
    pub checkpoint: Checkpoint,
}

/// Verifies an export (entries then the signed checkpoint) against the
/// node's signing key `key`, offline.
pub fn verify_export(text: &[u8], key: &VerifyingKey) -> Result<Verified, VerifyError> {
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if lines.is_empty() {
        return Err(VerifyError::Empty);
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut previous: Option<(u64, [u8; 32])> = None;
    let mut checkpoint = None;
    for (i, line) in lines.iter().enumerate() {
        let number = i + 1;
        if let Some(()) = checkpoint.as_ref().map(|_: &Checkpoint| ()) {
            return Err(VerifyError::Trailing { line: number });
        }
        if line.starts_with(b"{\"checkpoint\"") {
            let parsed: CheckpointLine =
                serde_json::from_slice(line).map_err(|e| VerifyError::Unreadable {
                    line: number,
                    reason: e.to_string(),
                })?;
            // The line must be exactly what the node wrote.
            if parsed.checkpoint.line() != *line {
                return Err(VerifyError::Unreadable {
                    line: number,
                    reason: "not in the node's exact form".to_string(),
                });
            }
            checkpoint = Some(parsed.checkpoint);
            continue;
        }
        let entry: Entry = serde_json::from_slice(line).map_err(|e| VerifyError::Unreadable {
            line: number,
            reason: e.to_string(),
        })?;
        if encode(&entry) != *line {
            return Err(VerifyError::Unreadable {
                line: number,
                reason: format!("entry {} is not in the node's exact form", entry.seq),
            });
        }
        if let Some((before, hash)) = previous {
            if entry.seq != before + 1 {
                return Err(VerifyError::Gap {
                    seq: entry.seq,
                    before,
                    line: number,
                });
            }
            if parse_hash(&entry.prev) != Some(hash) {
                return Err(VerifyError::BrokenChain {
                    seq: entry.seq,
                    before,
                    line: number,
                });
            }
        } else if entry.seq == 1 && parse_hash(&entry.prev) != Some(GENESIS) {
            return Err(VerifyError::BrokenChain {
                seq: 1,
                before: 0,
                line: number,
            });
        }
        previous = Some((entry.seq, entry_hash(line)));
        entries.push(entry);
    }
    let checkpoint = checkpoint.ok_or(VerifyError::NoCheckpoint)?;
    let (last, head) = previous.ok_or(VerifyError::Empty)?;
    if checkpoint.chain < checkpoint.seq {
        return Err(VerifyError::Unreadable {
            line: lines.len(),
            reason: format!(
                "the checkpoint says the chain held {} entries, fewer than entry {} it covers",
                checkpoint.chain, checkpoint.seq
            ),
        });
    }
    if checkpoint.seq != last {
        return Err(VerifyError::CheckpointMismatch {
            checkpoint_seq: checkpoint.seq,
            last,
        });
    }
    if parse_hash(&checkpoint.head) != Some(head) {
        return Err(VerifyError::HeadMismatch {
            seq: last,
            line: lines.len() - 1,
        });
    }
    if !checkpoint.verify(key) {
        return Err(VerifyError::BadSignature {
            key: crate::identity::signing_key_text(key),
        });
    }
    Ok(Verified {
        first: entries.first().map(|e| e.seq).unwrap_or_default(),
        last,
        entries,
        checkpoint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(key: &SigningKey, count: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = GENESIS;
        for seq in 1..=count {
            let entry = Entry {
                seq,
                at: time::macros::datetime!(2026-03-01 12:00 UTC),
                prev: hash_text(&prev),
                event: "peer_call".to_string(),
                outcome: if seq % 2 == 0 { "denied" } else { "allowed" }.to_string(),
                caller: Some(630),
                agreement: "01a230ea-2ff1-7433-b121-ad558238af69".to_string(),
                detail: "a \"quoted\"\nline".to_string(),
                ..Entry::default()
            };
            let line = encode(&entry);
            prev = entry_hash(&line);
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        let checkpoint = Checkpoint::sign(
            key,
            751,
            count,
            &prev,
            count,
            time::macros::datetime!(2026-03-01 12:01 UTC),
        );
        out.extend_from_slice(&checkpoint.line());
        out.push(b'\n');
        out
    }

    #[test]
    fn an_export_verifies_and_any_flipped_byte_is_found_and_named() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let text = export(&key, 6);
        let verified = verify_export(&text, &key.verifying_key()).expect("verifies");
        assert_eq!((verified.first, verified.last), (1, 6));
        for i in 0..text.len() {
            let mut damaged = text.clone();
            damaged[i] ^= 0x01;
            let err = verify_export(&damaged, &key.verifying_key())
                .expect_err(&format!("flipping byte {i} went unnoticed"));
            let message = err.to_string();
            assert!(
                message.contains("entry")
                    || message.contains("line")
                    || message.contains("checkpoint"),
                "byte {i}: {message}"
            );
        }
        // Another node's key does not verify it.
        let other = SigningKey::from_bytes(&[4; 32]);
        assert!(matches!(
            verify_export(&text, &other.verifying_key()),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn a_changed_entry_is_named_by_its_sequence_number() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let text = String::from_utf8(export(&key, 4)).expect("utf8");
        let changed = text.replacen("\"outcome\":\"denied\"", "\"outcome\":\"allowed\"", 1);
        let err = verify_export(changed.as_bytes(), &key.verifying_key()).expect_err("changed");
        assert_eq!(
            err,
            VerifyError::BrokenChain {
                seq: 3,
                before: 2,
                line: 3
            }
        );
        // Dropping the last entry and the checkpoint stays detectable too.
        let cut: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            verify_export(cut.as_bytes(), &key.verifying_key()),
            Err(VerifyError::NoCheckpoint)
        );
    }
}
