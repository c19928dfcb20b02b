//! Signed peer requests and replay protection.
//!
//! The caller puts four metadata entries on every peer data request:
//! `samvirke-caller` (its municipality code), `samvirke-time` (Unix
//! milliseconds), `samvirke-nonce` (16 random bytes, hex) and
//! `samvirke-signature` (Ed25519, hex) over
//!
//! ```text
//! "samvirke/request/v1\0" || method || "\0" || SHA-256(request message)
//!   || agreement id (16 bytes) || caller code (u32 BE) || time (i64 BE) || nonce
//! ```
//!
//! The provider recomputes the message digest from the message it decoded,
//! checks the signature with the key the roster lists for the caller's
//! certificate, refuses a time more than the skew window away from its own
//! clock, and refuses a nonce it has seen within the window. Nonces are
//! kept in memory and in the store (so a restart does not reopen the
//! window), at most [`MAX_NONCES`] at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use time::{Duration, OffsetDateTime};
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use crate::store::{Keyspace, Store, StoreError, WriteBatch};

const DOMAIN: &[u8] = b"samvirke/request/v1\0";
pub const CALLER_HEADER: &str = "samvirke-caller";
pub const TIME_HEADER: &str = "samvirke-time";
pub const NONCE_HEADER: &str = "samvirke-nonce";
pub const SIGNATURE_HEADER: &str = "samvirke-signature";
/// Nonces remembered at most: a bound on what many signed requests cost.
pub const MAX_NONCES: usize = 1_000_000;

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is not signed: metadata `{0}` is missing")]
    Missing(&'static str),
    #[error("metadata `{0}` is malformed")]
    Malformed(&'static str),
    #[error(
        "the request's time is {off_by_secs} s away from this node's clock, more than the \
         {window_secs} s allowed; check the calling node's clock"
    )]
    Stale { off_by_secs: i64, window_secs: i64 },
    #[error("the request was seen before (same nonce): a replay")]
    Replayed,
    #[error("the request's signature does not verify with the key the roster lists for the caller")]
    BadSignature,
    #[error("this node is remembering too many recent requests; retry shortly")]
    TooMany,
}

/// The signature parts of a request, as read from its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedParts {
    pub caller: u32,
    pub at_ms: i64,
    pub nonce: [u8; 16],
    pub signature: [u8; 64],
}

/// The bytes a request signature covers.
pub fn signed_message(
    method: &str,
    digest: &[u8; 32],
    agreement: Uuid,
    caller: u32,
    at_ms: i64,
    nonce: &[u8; 16],
) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + method.len() + 1 + 32 + 16 + 4 + 8 + 16);
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(method.as_bytes());
    message.push(0);
    message.extend_from_slice(digest);
    message.extend_from_slice(agreement.as_bytes());
    message.extend_from_slice(&caller.to_be_bytes());
    message.extend_from_slice(&at_ms.to_be_bytes());
    message.extend_from_slice(nonce);
    message
}

/// Signs a request to `method` under `agreement` (the message digest
/// `digest`) as `caller` with `key`, at `now`, putting the parts in
/// `metadata`.
pub fn sign(
    metadata: &mut MetadataMap,
    key: &SigningKey,
    caller: u32,
    method: &str,
    digest: &[u8; 32],
    agreement: Uuid,
    now: OffsetDateTime,
) -> Result<(), getrandom::Error> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)?;
    let at_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let signature = key.sign(&signed_message(
        method, digest, agreement, caller, at_ms, &nonce,
    ));
    let put = |metadata: &mut MetadataMap, name: &'static str, value: String| {
        if let Ok(value) = value.parse() {
            metadata.insert(name, value);
        }
    };
    put(metadata, CALLER_HEADER, caller.to_string());
    put(metadata, TIME_HEADER, at_ms.to_string());
    put(metadata, NONCE_HEADER, hex::encode(nonce));
    put(
        metadata,
        SIGNATURE_HEADER,
        hex::encode(signature.to_bytes()),
    );
    Ok(())
}

fn header<'a>(metadata: &'a MetadataMap, name: &'static str) -> Result<&'a str, RequestError> {
    metadata
        .get(name)
        .ok_or(RequestError::Missing(name))?
        .to_str()
        .map_err(|_| RequestError::Malformed(name))
}

fn fixed_hex<const N: usize>(text: &str, name: &'static str) -> Result<[u8; N], RequestError> {
    let mut out = [0u8; N];
    if text.len() != 2 * N {
        return Err(RequestError::Malformed(name));
    }
    hex::decode_to_slice(text, &mut out).map_err(|_| RequestError::Malformed(name))?;
    Ok(out)
}

/// Reads the signature parts from a request's metadata.
pub fn read(metadata: &MetadataMap) -> Result<SignedParts, RequestError> {
    Ok(SignedParts {
        caller: header(metadata, CALLER_HEADER)?
            .parse()
            .map_err(|_| RequestError::Malformed(CALLER_HEADER))?,
        at_ms: header(metadata, TIME_HEADER)?
            .parse()
            .map_err(|_| RequestError::Malformed(TIME_HEADER))?,
        nonce: fixed_hex(header(metadata, NONCE_HEADER)?, NONCE_HEADER)?,
        signature: fixed_hex(header(metadata, SIGNATURE_HEADER)?, SIGNATURE_HEADER)?,
    })
}

/// Whether `parts` is a valid signature by `key` of a request to `method`
/// with message digest `digest` under `agreement`.
pub fn verify(
    parts: &SignedParts,
    key: &VerifyingKey,
    method: &str,
    digest: &[u8; 32],
    agreement: Uuid,
) -> bool {
    key.verify_strict(
        &signed_message(
            method,
            digest,
            agreement,
            parts.caller,
            parts.at_ms,
            &parts.nonce,
        ),
        &Signature::from_bytes(&parts.signature),
    )
    .is_ok()
}

/// The nonces seen within the skew window, and the window itself.
#[derive(Debug)]
pub struct Replays {
    store: Arc<dyn Store>,
    window: Duration,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// Nonce -> when it may be forgotten (Unix ms).
    expiry: HashMap<[u8; 16], i64>,
    /// When expired nonces were last dropped (Unix ms).
    pruned: i64,
}

impl Replays {
    /// Nonces kept in `store`, for a skew window of `window` either side.
    pub fn open(
        store: Arc<dyn Store>,
        window: Duration,
        now: OffsetDateTime,
    ) -> Result<Replays, StoreError> {
        let now_ms = ms(now);
        let mut seen = Seen::default();
        let mut stale = WriteBatch::default();
        for item in store.scan_prefix(Keyspace::Nonces, b"") {
            let (key, value) = item?;
            let expiry = <[u8; 8]>::try_from(value.as_slice())
                .map(i64::from_be_bytes)
                .unwrap_or(0);
            match <[u8; 16]>::try_from(key.as_slice()) {
                Ok(nonce) if expiry > now_ms => {
                    seen.expiry.insert(nonce, expiry);
                }
                _ => stale.delete(key),
            }
        }
        if !stale.ops.is_empty() {
            store.write(Keyspace::Nonces, stale)?;
        }
        Ok(Replays {
            store,
            window,
            seen: Mutex::new(seen),
        })
    }

    /// The skew window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Checks the request's time against `now` and records its nonce;
    /// refuses a stale time or a nonce seen before. The nonce is written
    /// to the store (made durable with the audit entry of the same call).
    pub fn admit(&self, parts: &SignedParts, now: OffsetDateTime) -> Result<(), RequestError> {
        let now_ms = ms(now);
        let window_ms = self.window.whole_milliseconds() as i64;
        let off_by = parts.at_ms - now_ms;
        if off_by.abs() > window_ms {
            return Err(RequestError::Stale {
                off_by_secs: off_by / 1000,
                window_secs: window_ms / 1000,
            });
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if now_ms - seen.pruned > 10_000 || seen.expiry.len() >= MAX_NONCES {
            let mut expired = WriteBatch::default();
            seen.expiry.retain(|nonce, expiry| {
                let keep = *expiry > now_ms;
                if !keep {
                    expired.delete(nonce.to_vec());
                }
                keep
            });
            seen.pruned = now_ms;
            if !expired.ops.is_empty() {
                let _ = self.store.write(Keyspace::Nonces, expired);
            }
        }
        if seen.expiry.contains_key(&parts.nonce) {
            return Err(RequestError::Replayed);
        }
        if seen.expiry.len() >= MAX_NONCES {
            return Err(RequestError::TooMany);
        }
        // A nonce need only be remembered while its time is acceptable.
        let expiry = parts.at_ms.saturating_add(window_ms);
        seen.expiry.insert(parts.nonce, expiry);
        let mut batch = WriteBatch::default();
        batch.put(parts.nonce.to_vec(), expiry.to_be_bytes().to_vec());
        if let Err(error) = self.store.write(Keyspace::Nonces, batch) {
            tracing::error!(%error, "a request nonce could not be stored");
        }
        Ok(())
    }
}

fn ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use time::macros::datetime;

    #[test]
    fn a_signed_request_verifies_and_any_change_does_not() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut metadata = MetadataMap::new();
        let agreement = Uuid::from_u128(7);
        let digest = [9u8; 32];
        let now = datetime!(2026-03-01 12:00 UTC);
        sign(
            &mut metadata,
            &key,
            630,
            "/samvirke.v1.Peer/Catalog",
            &digest,
            agreement,
            now,
        )
        .expect("sign");
        let parts = read(&metadata).expect("parts");
        assert_eq!(parts.caller, 630);
        let method = "/samvirke.v1.Peer/Catalog";
        assert!(verify(
            &parts,
            &key.verifying_key(),
            method,
            &digest,
            agreement
        ));
        assert!(!verify(
            &parts,
            &key.verifying_key(),
            "/samvirke.v1.Peer/ListPilots",
            &digest,
            agreement
        ));
        assert!(!verify(
            &parts,
            &key.verifying_key(),
            method,
            &[8u8; 32],
            agreement
        ));
        assert!(!verify(
            &parts,
            &key.verifying_key(),
            method,
            &digest,
            Uuid::from_u128(8)
        ));
        let mut other = parts;
        other.caller = 751;
        assert!(!verify(
            &other,
            &key.verifying_key(),
            method,
            &digest,
            agreement
        ));
        let stranger = SigningKey::from_bytes(&[6; 32]);
        assert!(!verify(
            &parts,
            &stranger.verifying_key(),
            method,
            &digest,
            agreement
        ));
        assert_eq!(
            read(&MetadataMap::new()),
            Err(RequestError::Missing(CALLER_HEADER))
        );
    }

    #[test]
    fn replays_and_stale_times_are_refused_also_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let now = datetime!(2026-03-01 12:00 UTC);
        let replays = Replays::open(Arc::clone(&store), Duration::minutes(5), now).expect("open");
        let parts = SignedParts {
            caller: 630,
            at_ms: ms(now),
            nonce: [1; 16],
            signature: [0; 64],
        };
        assert_eq!(replays.admit(&parts, now), Ok(()));
        assert_eq!(replays.admit(&parts, now), Err(RequestError::Replayed));
        let stale = SignedParts {
            at_ms: ms(now - Duration::minutes(6)),
            nonce: [2; 16],
            ..parts
        };
        assert!(matches!(
            replays.admit(&stale, now),
            Err(RequestError::Stale { .. })
        ));
        let early = SignedParts {
            at_ms: ms(now + Duration::minutes(6)),
            nonce: [3; 16],
            ..parts
        };
        assert!(matches!(
            replays.admit(&early, now),
            Err(RequestError::Stale { .. })
        ));
        drop(replays);
        let reopened =
            Replays::open(store, Duration::minutes(5), now + Duration::minutes(1)).expect("open");
        assert_eq!(
            reopened.admit(&parts, now + Duration::minutes(1)),
            Err(RequestError::Replayed)
        );
    }
}
