//! Batch signatures: one Ed25519 signature for every message a signer signs
//! at the same moment, without giving up a per-message proof.
//!
//! A [`BatchSigner`] takes the messages waiting for it, builds a Merkle
//! tree over them (RFC 6962 hashing: leaf `SHA-256(0x00 || message)`, node
//! `SHA-256(0x01 || left || right)`, a tree of `n` leaves split at the
//! largest power of two below `n`), signs the root once and gives each
//! message its [`pb::BatchSignature`]: the signature, its leaf index, the
//! tree size and its audit path. Anyone holding the message and the
//! signer's key can check it on its own ([`verify`], RFC 9162 §2.1.3.2):
//! the signature is as binding as one over the message itself. A lone
//! message is a tree of one leaf with an empty path.
//!
//! Why: a peer call costs a few tens of microseconds of CPU; signing each
//! request and each receipt, and verifying both, one Ed25519 operation
//! apiece, would cost several times that. Under load the signer forms
//! batches by itself (like a group commit: whatever queued while it signed
//! the last batch goes into the next), and a verifier that remembers the
//! roots it checked ([`VerifiedRoots`]) verifies a batch's signature once
//! for all its messages. When idle, a message is signed at once, alone.
//!
//! The signed bytes name a domain (`"request"`, `"receipt"`), so a
//! signature made for one kind of message never passes for another.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use samvirke_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::identity::signing_key_text;

const SIGNED_PREFIX: &[u8] = b"samvirke/batch/v1\0";
/// Most messages one signature covers (a path of at most 8 hashes).
pub const MAX_BATCH: usize = 256;
/// Longest audit path accepted (a tree of at most 2^32 leaves needs 32).
const MAX_PATH: usize = 32;
/// Messages waiting for a signer at most; callers wait beyond that.
const QUEUE: usize = 4_096;

pub type Hash = [u8; 32];

/// Why a batch signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("no signature")]
    Missing,
    #[error("signed by {signed}, not by the expected key {expected}")]
    WrongSigner { signed: String, expected: String },
    #[error("the signature is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature does not verify: the message was changed after signing")]
    BadSignature,
    #[error("the signer has stopped")]
    Stopped,
}

/// The leaf hash of `message`.
pub fn leaf_hash(message: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(message);
    hasher.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The largest power of two smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The root of the tree over `leaves`, filling `paths[offset..]` with each
/// leaf's audit path (leaf first).
fn build(leaves: &[Hash], offset: usize, paths: &mut [Vec<Hash>]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            let left = build(&leaves[..k], offset, paths);
            let right = build(&leaves[k..], offset + k, paths);
            for path in &mut paths[offset..offset + k] {
                path.push(right);
            }
            for path in &mut paths[offset + k..offset + n] {
                path.push(left);
            }
            node_hash(&left, &right)
        }
    }
}

/// The root of the tree over `leaves` and every leaf's audit path.
pub fn tree(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    let mut paths = vec![Vec::new(); leaves.len()];
    let root = build(leaves, 0, &mut paths);
    (root, paths)
}

/// The root a leaf at `index` of a tree of `size` leaves proves with
/// `path` (RFC 9162 §2.1.3.2), or `None` if the path cannot be one.
pub fn root_from_path(leaf: Hash, index: u64, size: u64, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut root = leaf;
    for sibling in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            root = node_hash(sibling, &root);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            root = node_hash(&root, sibling);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(root)
}

/// The bytes a batch signature covers.
fn signed_bytes(domain: &str, root: &Hash, size: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(SIGNED_PREFIX.len() + domain.len() + 1 + 32 + 4);
    bytes.extend_from_slice(SIGNED_PREFIX);
    bytes.extend_from_slice(domain.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(root);
    bytes.extend_from_slice(&size.to_be_bytes());
    bytes
}

/// Signs the messages whose leaf hashes are `leaves` with one signature.
pub fn sign_leaves(key: &SigningKey, domain: &str, leaves: &[Hash]) -> Vec<pb::BatchSignature> {
    let (root, paths) = tree(leaves);
    let size = u32::try_from(leaves.len()).unwrap_or(u32::MAX);
    let signature = key
        .sign(&signed_bytes(domain, &root, size))
        .to_bytes()
        .to_vec();
    let signer = signing_key_text(&key.verifying_key());
    paths
        .into_iter()
        .enumerate()
        .map(|(index, path)| pb::BatchSignature {
            signer: signer.clone(),
            signature: signature.clone(),
            index: u32::try_from(index).unwrap_or(u32::MAX),
            size,
            path: path.into_iter().map(|h| h.to_vec()).collect(),
        })
        .collect()
}

/// Signs one message alone (a tree of one leaf).
pub fn sign_one(key: &SigningKey, domain: &str, message: &[u8]) -> pb::BatchSignature {
    sign_leaves(key, domain, &[leaf_hash(message)])
        .pop()
        .unwrap_or_default()
}

/// Roots whose signature was checked, so the other messages of a batch
/// cost a few hashes. Bounded: the oldest are forgotten first.
#[derive(Debug)]
pub struct VerifiedRoots {
    capacity: usize,
    inner: Mutex<(HashSet<Hash>, VecDeque<Hash>)>,
}

impl VerifiedRoots {
    pub fn new(capacity: usize) -> VerifiedRoots {
        VerifiedRoots {
            capacity,
            inner: Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    fn key(signed: &[u8], signature: &[u8], signer: &VerifyingKey) -> Hash {
        let mut hasher = Sha256::new();
        hasher.update(signer.as_bytes());
        hasher.update(signature);
        hasher.update(signed);
        hasher.finalize().into()
    }

    fn contains(&self, key: &Hash) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
            .contains(key)
    }

    fn insert(&self, key: Hash) {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if inner.0.insert(key) {
            inner.1.push_back(key);
            while inner.1.len() > self.capacity {
                if let Some(old) = inner.1.pop_front() {
                    inner.0.remove(&old);
                }
            }
        }
    }
}

/// Checks that `expected` signed `message` in `domain` with `signature`.
/// With `roots`, a root already checked is not checked again.
pub fn verify(
    signature: &pb::BatchSignature,
    domain: &str,
    message: &[u8],
    expected: &VerifyingKey,
    roots: Option<&VerifiedRoots>,
) -> Result<(), BatchError> {
    verify_leaf(signature, domain, leaf_hash(message), expected, roots)
}

/// [`verify`] for a message given by its leaf hash.
pub fn verify_leaf(
    signature: &pb::BatchSignature,
    domain: &str,
    leaf: Hash,
    expected: &VerifyingKey,
    roots: Option<&VerifiedRoots>,
) -> Result<(), BatchError> {
    let expected_text = signing_key_text(expected);
    if signature.signer != expected_text {
        return Err(BatchError::WrongSigner {
            signed: crate::telemetry::untrusted(&signature.signer),
            expected: expected_text,
        });
    }
    let bytes: [u8; 64] = signature
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| BatchError::Malformed("the signature is not 64 bytes"))?;
    if signature.path.len() > MAX_PATH {
        return Err(BatchError::Malformed("the path is too long"));
    }
    let mut path = Vec::with_capacity(signature.path.len());
    for sibling in &signature.path {
        path.push(
            <Hash>::try_from(sibling.as_slice())
                .map_err(|_| BatchError::Malformed("a path hash is not 32 bytes"))?,
        );
    }
    let root = root_from_path(
        leaf,
        u64::from(signature.index),
        u64::from(signature.size),
        &path,
    )
    .ok_or(BatchError::Malformed(
        "the path does not fit the index and size",
    ))?;
    let signed = signed_bytes(domain, &root, signature.size);
    let key = roots.map(|_| VerifiedRoots::key(&signed, &bytes, expected));
    if let (Some(roots), Some(key)) = (roots, key.as_ref())
        && roots.contains(key)
    {
        return Ok(());
    }
    expected
        .verify_strict(&signed, &Signature::from_bytes(&bytes))
        .map_err(|_| BatchError::BadSignature)?;
    if let (Some(roots), Some(key)) = (roots, key) {
        roots.insert(key);
    }
    Ok(())
}

struct Pending {
    leaf: Hash,
    done: oneshot::Sender<pb::BatchSignature>,
}

/// Signs messages in batches on a task of its own (see the module doc).
#[derive(Debug, Clone)]
pub struct BatchSigner {
    queue: mpsc::Sender<Pending>,
}

impl BatchSigner {
    /// Starts a signer for `domain` with `key` on the current runtime. It
    /// stops when the last clone is dropped.
    pub fn start(key: Arc<SigningKey>, domain: &'static str) -> BatchSigner {
        let (queue, mut receiver) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while let Some(first) = receiver.recv().await {
                batch.push(first);
                // Callers woken together (say, by one audit group commit)
                // queue their messages within a moment of each other: let
                // them, so they share this signature.
                tokio::task::yield_now().await;
                while batch.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let leaves: Vec<Hash> = batch.iter().map(|p| p.leaf).collect();
                let signatures = sign_leaves(&key, domain, &leaves);
                for (pending, signature) in batch.drain(..).zip(signatures) {
                    let _ = pending.done.send(signature);
                }
            }
        });
        BatchSigner { queue }
    }

    /// Signs `message`, in a batch with whatever else is waiting.
    pub async fn sign(&self, message: &[u8]) -> Result<pb::BatchSignature, BatchError> {
        self.sign_leaf(leaf_hash(message)).await
    }

    /// [`BatchSigner::sign`] for a message given by its leaf hash.
    pub async fn sign_leaf(&self, leaf: Hash) -> Result<pb::BatchSignature, BatchError> {
        let (done, signed) = oneshot::channel();
        self.queue
            .send(Pending { leaf, done })
            .await
            .map_err(|_| BatchError::Stopped)?;
        signed.await.map_err(|_| BatchError::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("message {i}").as_bytes()))
            .collect()
    }

    /// RFC 6962's MTH, written the obvious (slow) way.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            1 => leaves[0],
            n => {
                let k = split(n);
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    #[test]
    fn every_leaf_of_every_tree_size_proves_the_root() {
        for n in 1..=70 {
            let leaves = leaves(n);
            let (root, paths) = tree(&leaves);
            assert_eq!(root, reference_root(&leaves), "n = {n}");
            for (i, path) in paths.iter().enumerate() {
                assert_eq!(
                    root_from_path(leaves[i], i as u64, n as u64, path),
                    Some(root),
                    "n = {n}, i = {i}"
                );
                // Another leaf, index or size does not.
                let other = leaf_hash(b"another message");
                assert_ne!(root_from_path(other, i as u64, n as u64, path), Some(root));
                if n > 1 {
                    let j = (i + 1) % n;
                    assert_ne!(
                        root_from_path(leaves[i], j as u64, n as u64, path),
                        Some(root),
                        "n = {n}, i = {i} at {j}"
                    );
                }
                assert_eq!(root_from_path(leaves[i], n as u64, n as u64, path), None);
            }
        }
    }

    #[test]
    fn a_batch_signature_binds_message_signer_and_domain() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let messages: Vec<Vec<u8>> = (0..9).map(|i| vec![i; 40]).collect();
        let hashes: Vec<Hash> = messages.iter().map(|m| leaf_hash(m)).collect();
        let signatures = sign_leaves(&key, "receipt", &hashes);
        let roots = VerifiedRoots::new(8);
        for (message, signature) in messages.iter().zip(&signatures) {
            assert_eq!(
                verify(
                    signature,
                    "receipt",
                    message,
                    &key.verifying_key(),
                    Some(&roots)
                ),
                Ok(())
            );
            assert_eq!(
                verify(signature, "request", message, &key.verifying_key(), None),
                Err(BatchError::BadSignature)
            );
            let mut changed = message.clone();
            changed[3] ^= 1;
            assert!(
                verify(
                    signature,
                    "receipt",
                    &changed,
                    &key.verifying_key(),
                    Some(&roots)
                )
                .is_err()
            );
        }
        let stranger = SigningKey::from_bytes(&[5; 32]);
        assert!(matches!(
            verify(
                &signatures[0],
                "receipt",
                &messages[0],
                &stranger.verifying_key(),
                None
            ),
            Err(BatchError::WrongSigner { .. })
        ));
        // A remembered root does not excuse a forged signature.
        let mut forged = signatures[1].clone();
        forged.signature[0] ^= 1;
        assert_eq!(
            verify(
                &forged,
                "receipt",
                &messages[1],
                &key.verifying_key(),
                Some(&roots)
            ),
            Err(BatchError::BadSignature)
        );
        let lone = sign_one(&key, "request", b"alone");
        assert!(lone.path.is_empty());
        assert_eq!(
            verify(&lone, "request", b"alone", &key.verifying_key(), None),
            Ok(())
        );
    }

    #[tokio::test]
    async fn a_signer_under_load_signs_many_messages_at_once() {
        let key = Arc::new(SigningKey::from_bytes(&[6; 32]));
        let signer = BatchSigner::start(Arc::clone(&key), "request");
        let calls: Vec<_> = (0..100u32)
            .map(|i| {
                let signer = signer.clone();
                tokio::spawn(async move {
                    let message = i.to_be_bytes();
                    (message, signer.sign(&message).await.expect("signed"))
                })
            })
            .collect();
        let mut largest = 0;
        for call in calls {
            let (message, signature) = call.await.expect("task");
            assert_eq!(
                verify(&signature, "request", &message, &key.verifying_key(), None),
                Ok(())
            );
            largest = largest.max(signature.size);
        }
        assert!(largest > 1, "no batch formed");
    }
}
