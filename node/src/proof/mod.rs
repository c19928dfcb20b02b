//! What either side of a peer call can later prove: the caller's signed
//! request and the provider's signed receipt.
//!
//! - [`batch`]: Ed25519 signatures over Merkle trees of the messages a
//!   signer signs at the same moment, so one signature (and, for a
//!   verifier that remembers checked roots, one verification) covers many
//!   requests or receipts under load;
//! - [`request`]: every peer data request carries the caller's Ed25519
//!   signature over a domain-separated encoding of the method, the digest
//!   of the request message, the agreement, the caller's code, a timestamp
//!   and a nonce; the provider checks it against the caller's key in the
//!   roster, refuses timestamps outside its skew window, and refuses a
//!   nonce it has seen within the window (a replay).
//! - [`receipt`]: the provider answers with a receipt it signs: the
//!   request digest, the digest of everything it sent (over the streamed
//!   chunks in order), rows, bytes, time and agreement. The consumer
//!   verifies and keeps every receipt; either can be checked offline with
//!   the roster.
//!
//! Digests are SHA-256 over the protobuf encoding of the messages, which
//! is canonical here: messages with maps are generated with ordered maps,
//! and both sides encode with the same generated code.

pub mod batch;
pub mod receipt;
pub mod request;

use prost::Message;
use sha2::{Digest, Sha256};

/// SHA-256 of a message's protobuf encoding.
pub fn message_digest<M: Message>(message: &M) -> [u8; 32] {
    Sha256::digest(message.encode_to_vec()).into()
}

/// A digest as text: `sha256:<hex>`.
pub fn digest_text(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(digest))
}

/// Accumulates the digest of a streamed answer: each message's encoding,
/// length-prefixed, in order.
#[derive(Debug, Clone, Default)]
pub struct StreamDigest {
    hasher: Sha256,
    /// Messages and encoded bytes so far.
    pub messages: u64,
    pub bytes: u64,
    /// Rows (readings, buckets, records, datasets) so far, kept by the
    /// caller that knows what a row is.
    pub rows: u64,
}

impl StreamDigest {
    /// Adds one message of the stream.
    pub fn add<M: Message>(&mut self, message: &M) {
        let encoded = message.encode_to_vec();
        self.hasher.update((encoded.len() as u64).to_be_bytes());
        self.hasher.update(&encoded);
        self.messages += 1;
        self.bytes += encoded.len() as u64;
    }

    /// The digest of the stream so far.
    pub fn finish(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}
