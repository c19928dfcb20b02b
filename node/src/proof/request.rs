//! Signed peer requests and replay protection.
//!
//! The caller puts four metadata entries on every peer data request:
//! `samvirke-caller` (its municipality code), `samvirke-time` (Unix
//! milliseconds), `samvirke-nonce` (16 random bytes, hex) and
//! `samvirke-signature-bin` (a [`pb::BatchSignature`] in the domain
//! `request`, see [`super::batch`]) over the leaf
//!
//! ```text
//! "samvirke/request/v2\0" || method || "\0" || SHA-256(request message)
//!   || agreement id (16 bytes) || caller code (u32 BE) || provider code (u32 BE)
//!   || time (i64 BE) || nonce
//! ```
//!
//! The provider recomputes the message digest from the message it decoded,
//! checks the signature with the key the roster lists for the caller's
//! certificate, and then ([`Replays::admit`]):
//!
//! - refuses a time more than the skew window (default 5 minutes) away
//!   from its own clock: a captured request is worthless after that;
//! - within the window, refuses a nonce it has seen. Remembering every
//!   nonce of the window would cost memory in proportion to a partner's
//!   call rate times ten minutes; instead each caller has a high-water mark
//!   (its latest request time seen) and nonces are remembered only for the
//!   last [`REORDER_SLACK`] before it. A request older than that is refused
//!   as out of order: concurrent requests of one caller are signed moments
//!   apart and never arrive half a minute out of order, so an honest
//!   caller never sees this, while a replay of anything older is refused
//!   without a nonce to look up. One caller's flood fills only its own
//!   memory (at most [`MAX_NONCES_PER_CALLER`]).
//!
//! Nonces are written to the store with each admission (made durable by
//! the audit entry of the same call), so a restart does not reopen the
//! window.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prost::Message;
use samvirke_proto::v1 as pb;
use time::{Duration, OffsetDateTime};
use tonic::metadata::{BinaryMetadataValue, MetadataMap};
use uuid::Uuid;

use super::batch::{self, BatchError, BatchSigner, VerifiedRoots};
use crate::store::{Keyspace, Store, StoreError, WriteBatch};

const DOMAIN: &[u8] = b"samvirke/request/v2\0";
/// The batch-signature domain of requests.
pub const BATCH_DOMAIN: &str = "request";
pub const CALLER_HEADER: &str = "samvirke-caller";
pub const TIME_HEADER: &str = "samvirke-time";
pub const NONCE_HEADER: &str = "samvirke-nonce";
pub const SIGNATURE_HEADER: &str = "samvirke-signature-bin";
/// How far behind a caller's latest request another of its requests may
/// be (see the module doc).
pub const REORDER_SLACK: Duration = Duration::seconds(30);
/// Nonces remembered per caller at most.
pub const MAX_NONCES_PER_CALLER: usize = 200_000;

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
    #[error(
        "the request was signed {behind_ms} ms before the caller's latest request seen here \
         (more than {slack_secs} s): refused as a possible replay; sign requests when sending \
         them"
    )]
    OutOfOrder { behind_ms: i64, slack_secs: i64 },
    #[error("the request was seen before (same nonce): a replay")]
    Replayed,
    #[error("the signature names caller {signed}, but the certificate is that of member {actual}")]
    CallerMismatch { signed: u32, actual: u32 },
    #[error("the request's signature is not valid for the caller's key in the roster: {0}")]
    BadSignature(BatchError),
    #[error("this node is remembering too many recent requests of this caller; retry shortly")]
    TooMany,
    #[error("this node could not record the request's nonce; retry shortly")]
    Unrecorded,
}

/// The signature parts of a request, as read from its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedParts {
    pub caller: u32,
    pub at_ms: i64,
    pub nonce: [u8; 16],
    pub signature: pb::BatchSignature,
}

/// The leaf a request signature covers: also the provider it is sent to,
/// so a signed request proves whom it was for.
pub fn signed_message(
    method: &str,
    digest: &[u8; 32],
    agreement: Uuid,
    caller: u32,
    provider: u32,
    at_ms: i64,
    nonce: &[u8; 16],
) -> Vec<u8> {
    let mut message =
        Vec::with_capacity(DOMAIN.len() + method.len() + 1 + 32 + 16 + 4 + 4 + 8 + 16);
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(method.as_bytes());
    message.push(0);
    message.extend_from_slice(digest);
    message.extend_from_slice(agreement.as_bytes());
    message.extend_from_slice(&caller.to_be_bytes());
    message.extend_from_slice(&provider.to_be_bytes());
    message.extend_from_slice(&at_ms.to_be_bytes());
    message.extend_from_slice(nonce);
    message
}

/// What a signed request states, before it is signed.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub caller: u32,
    /// The node the request is sent to.
    pub provider: u32,
    pub method: &'a str,
    pub digest: &'a [u8; 32],
    pub agreement: Uuid,
    pub at: OffsetDateTime,
}

/// Signs a request with `signer` (in a batch with the requests signed at
/// the same moment) and puts the parts in `metadata`. Returns the nonce.
pub async fn sign(
    metadata: &mut MetadataMap,
    signer: &BatchSigner,
    facts: RequestFacts<'_>,
) -> Result<[u8; 16], SignError> {
    let (unsigned, message) = Unsigned::of(&facts)?;
    let signature = signer
        .sign(&message)
        .await
        .map_err(|e| SignError(e.to_string()))?;
    Ok(unsigned.put(metadata, signature))
}

/// Signs a request on its own (a batch of one) with `key`: for tools and
/// tests that call partners without a [`BatchSigner`].
pub fn sign_now(
    metadata: &mut MetadataMap,
    key: &ed25519_dalek::SigningKey,
    facts: RequestFacts<'_>,
) -> Result<[u8; 16], SignError> {
    let (unsigned, message) = Unsigned::of(&facts)?;
    let signature = batch::sign_one(key, BATCH_DOMAIN, &message);
    Ok(unsigned.put(metadata, signature))
}

/// A request's parts before its signature: a fresh nonce and the time.
struct Unsigned {
    caller: u32,
    at_ms: i64,
    nonce: [u8; 16],
}

impl Unsigned {
    /// Fresh parts for `facts`, and the message to sign.
    fn of(facts: &RequestFacts<'_>) -> Result<(Unsigned, Vec<u8>), SignError> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| SignError(e.to_string()))?;
        let at_ms = ms(facts.at);
        let message = signed_message(
            facts.method,
            facts.digest,
            facts.agreement,
            facts.caller,
            facts.provider,
            at_ms,
            &nonce,
        );
        let unsigned = Unsigned {
            caller: facts.caller,
            at_ms,
            nonce,
        };
        Ok((unsigned, message))
    }

    /// Puts the parts with `signature` in `metadata`; returns the nonce.
    fn put(self, metadata: &mut MetadataMap, signature: pb::BatchSignature) -> [u8; 16] {
        put_parts(
            metadata,
            &SignedParts {
                caller: self.caller,
                at_ms: self.at_ms,
                nonce: self.nonce,
                signature,
            },
        );
        self.nonce
    }
}

/// Why a request could not be signed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the request could not be signed: {0}")]
pub struct SignError(String);

/// Puts signed parts in `metadata` (also how tests build odd requests).
pub fn put_parts(metadata: &mut MetadataMap, parts: &SignedParts) {
    let put = |metadata: &mut MetadataMap, name: &'static str, value: String| {
        if let Ok(value) = value.parse() {
            metadata.insert(name, value);
        }
    };
    put(metadata, CALLER_HEADER, parts.caller.to_string());
    put(metadata, TIME_HEADER, parts.at_ms.to_string());
    put(metadata, NONCE_HEADER, hex::encode(parts.nonce));
    metadata.insert_bin(
        SIGNATURE_HEADER,
        BinaryMetadataValue::from_bytes(&parts.signature.encode_to_vec()),
    );
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
    let signature = metadata
        .get_bin(SIGNATURE_HEADER)
        .ok_or(RequestError::Missing(SIGNATURE_HEADER))?
        .to_bytes()
        .map_err(|_| RequestError::Malformed(SIGNATURE_HEADER))?;
    Ok(SignedParts {
        caller: header(metadata, CALLER_HEADER)?
            .parse()
            .map_err(|_| RequestError::Malformed(CALLER_HEADER))?,
        at_ms: header(metadata, TIME_HEADER)?
            .parse()
            .map_err(|_| RequestError::Malformed(TIME_HEADER))?,
        nonce: fixed_hex(header(metadata, NONCE_HEADER)?, NONCE_HEADER)?,
        signature: pb::BatchSignature::decode(signature.as_ref())
            .map_err(|_| RequestError::Malformed(SIGNATURE_HEADER))?,
    })
}

/// Checks that `parts` is `key`'s signature of a request to `method` with
/// message digest `digest` under `agreement`.
pub fn verify(
    parts: &SignedParts,
    key: &ed25519_dalek::VerifyingKey,
    method: &str,
    digest: &[u8; 32],
    agreement: Uuid,
    provider: u32,
    roots: Option<&VerifiedRoots>,
) -> Result<(), RequestError> {
    let message = signed_message(
        method,
        digest,
        agreement,
        parts.caller,
        provider,
        parts.at_ms,
        &parts.nonce,
    );
    batch::verify(&parts.signature, BATCH_DOMAIN, &message, key, roots)
        .map_err(RequestError::BadSignature)
}

/// One caller's recent requests.
#[derive(Debug, Default)]
struct CallerWindow {
    /// The latest request time seen (Unix ms).
    high: i64,
    /// Nonces of requests within [`REORDER_SLACK`] of `high`, by time.
    by_time: BTreeMap<(i64, [u8; 16]), ()>,
    nonces: HashMap<[u8; 16], i64>,
}

impl CallerWindow {
    fn forget_before(&mut self, floor: i64, forgotten: &mut Vec<(i64, [u8; 16])>) {
        while let Some((&(at, nonce), ())) = self.by_time.first_key_value() {
            if at >= floor {
                break;
            }
            self.by_time.remove(&(at, nonce));
            self.nonces.remove(&nonce);
            forgotten.push((at, nonce));
        }
    }
}

/// The recent requests of every caller, and the skew window.
#[derive(Debug)]
pub struct Replays {
    store: Arc<dyn Store>,
    window: Duration,
    callers: Mutex<HashMap<u32, CallerWindow>>,
    /// Stored nonces this process no longer remembers, waiting until they
    /// are older than the skew window by the clock: only then may they
    /// leave the store, because another node process sharing it may not
    /// have moved on from that caller's time yet. (time, key), oldest
    /// mostly first.
    expiring: Mutex<std::collections::VecDeque<(i64, Vec<u8>)>>,
}

/// Stored nonces waiting to be removed, at most; beyond, the oldest are
/// left for the next start's clean-up.
const MAX_EXPIRING: usize = 100_000;

fn nonce_key(caller: u32, at_ms: i64, nonce: &[u8; 16]) -> Vec<u8> {
    let mut key = Vec::with_capacity(28);
    key.extend_from_slice(&caller.to_be_bytes());
    key.extend_from_slice(&at_ms.to_be_bytes());
    key.extend_from_slice(nonce);
    key
}

impl Replays {
    /// The recent requests kept in `store`, for a skew window of `window`
    /// either side of this node's clock, which reads `now`.
    pub fn open(
        store: Arc<dyn Store>,
        window: Duration,
        now: OffsetDateTime,
    ) -> Result<Replays, StoreError> {
        let mut callers: HashMap<u32, CallerWindow> = HashMap::new();
        for item in store.scan_prefix(Keyspace::Nonces, b"") {
            let (key, _) = item?;
            let (Some(caller), Some(at), Some(nonce)) = (
                key.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()),
                key.get(4..12).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                key.get(12..28).and_then(|b| <[u8; 16]>::try_from(b).ok()),
            ) else {
                continue;
            };
            let (caller, at) = (u32::from_be_bytes(caller), i64::from_be_bytes(at));
            let entry = callers.entry(caller).or_default();
            entry.high = entry.high.max(at);
            entry.by_time.insert((at, nonce), ());
            entry.nonces.insert(nonce, at);
        }
        let slack = REORDER_SLACK.whole_milliseconds() as i64;
        let expired = ms(now) - window.whole_milliseconds() as i64;
        let mut stale = WriteBatch::default();
        let mut expiring = std::collections::VecDeque::new();
        for (caller, entry) in &mut callers {
            let mut forgotten = Vec::new();
            entry.forget_before(entry.high - slack, &mut forgotten);
            for (at, nonce) in forgotten {
                let key = nonce_key(*caller, at, &nonce);
                if at < expired {
                    stale.delete(key);
                } else if expiring.len() < MAX_EXPIRING {
                    expiring.push_back((at, key));
                }
            }
        }
        if !stale.ops.is_empty() {
            store.write(Keyspace::Nonces, stale)?;
        }
        Ok(Replays {
            store,
            window,
            callers: Mutex::new(callers),
            expiring: Mutex::new(expiring),
        })
    }

    /// The skew window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Checks a verified request's time against `now` and the caller's
    /// recent requests, and records it; refuses a stale time, a request
    /// too far out of order, or a nonce seen before.
    pub fn admit(&self, parts: &SignedParts, now: OffsetDateTime) -> Result<(), RequestError> {
        let window_ms = self.window.whole_milliseconds() as i64;
        let off_by = parts.at_ms.saturating_sub(ms(now));
        if off_by.abs() > window_ms {
            return Err(RequestError::Stale {
                off_by_secs: off_by / 1000,
                window_secs: window_ms / 1000,
            });
        }
        let slack = REORDER_SLACK.whole_milliseconds() as i64;
        let mut callers = self
            .callers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = callers.entry(parts.caller).or_default();
        if parts.at_ms < entry.high - slack {
            return Err(RequestError::OutOfOrder {
                behind_ms: entry.high - parts.at_ms,
                slack_secs: slack / 1000,
            });
        }
        if entry.nonces.contains_key(&parts.nonce) {
            return Err(RequestError::Replayed);
        }
        if entry.nonces.len() >= MAX_NONCES_PER_CALLER {
            return Err(RequestError::TooMany);
        }
        entry.nonces.insert(parts.nonce, parts.at_ms);
        entry.by_time.insert((parts.at_ms, parts.nonce), ());
        let mut forgotten = Vec::new();
        if parts.at_ms > entry.high {
            entry.high = parts.at_ms;
            entry.forget_before(entry.high - slack, &mut forgotten);
        }
        drop(callers);
        // The store decides, not this process's memory: another node
        // process sharing the store may have admitted the same request a
        // moment ago. The insert is refused if the nonce is there. (It
        // becomes durable with the audit entry's flush.)
        let key = nonce_key(parts.caller, parts.at_ms, &parts.nonce);
        match self
            .store
            .insert_new(Keyspace::Nonces, vec![(key, Vec::new())])
        {
            Ok(true) => {}
            Ok(false) => return Err(RequestError::Replayed),
            Err(error) => {
                // Refuse rather than risk admitting a replay unrecorded;
                // the request, signed again, is welcome.
                tracing::error!(%error, "the request nonce memory could not be stored");
                self.forget(parts);
                return Err(RequestError::Unrecorded);
            }
        }
        self.expire(parts.caller, forgotten, ms(now) - window_ms);
        Ok(())
    }

    /// Drops a nonce from this process's memory (its store insert failed).
    fn forget(&self, parts: &SignedParts) {
        let mut callers = self
            .callers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = callers.get_mut(&parts.caller) {
            entry.nonces.remove(&parts.nonce);
            entry.by_time.remove(&(parts.at_ms, parts.nonce));
        }
    }

    /// Queues nonces this process forgot, and removes from the store those
    /// older than `expired` (outside the skew window by the clock: no
    /// process can admit them again).
    fn expire(&self, caller: u32, forgotten: Vec<(i64, [u8; 16])>, expired: i64) {
        let mut stale = WriteBatch::default();
        {
            let mut expiring = self
                .expiring
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (at, nonce) in forgotten {
                if expiring.len() >= MAX_EXPIRING {
                    break;
                }
                expiring.push_back((at, nonce_key(caller, at, &nonce)));
            }
            while let Some((at, _)) = expiring.front() {
                if *at >= expired {
                    break;
                }
                if let Some((_, key)) = expiring.pop_front() {
                    stale.delete(key);
                }
            }
        }
        if !stale.ops.is_empty()
            && let Err(error) = self.store.write(Keyspace::Nonces, stale)
        {
            tracing::error!(%error, "expired request nonces could not be removed");
        }
    }
}

fn ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use ed25519_dalek::SigningKey;
    use time::macros::datetime;

    const METHOD: &str = "/samvirke.v1.Peer/Catalog";

    #[tokio::test]
    async fn a_signed_request_verifies_and_any_change_does_not() {
        let key = Arc::new(SigningKey::from_bytes(&[5; 32]));
        let signer = BatchSigner::start(Arc::clone(&key), BATCH_DOMAIN);
        let mut metadata = MetadataMap::new();
        let agreement = Uuid::from_u128(7);
        let digest = [9u8; 32];
        let facts = RequestFacts {
            caller: 630,
            provider: 751,
            method: METHOD,
            digest: &digest,
            agreement,
            at: datetime!(2026-03-01 12:00 UTC),
        };
        sign(&mut metadata, &signer, facts).await.expect("sign");
        let parts = read(&metadata).expect("parts");
        assert_eq!(parts.caller, 630);
        let vk = key.verifying_key();
        assert_eq!(
            verify(&parts, &vk, METHOD, &digest, agreement, 751, None),
            Ok(())
        );
        // Sent to another provider: not this request.
        assert!(verify(&parts, &vk, METHOD, &digest, agreement, 740, None).is_err());
        for (method, digest, agreement) in [
            ("/samvirke.v1.Peer/ListPilots", digest, agreement),
            (METHOD, [8u8; 32], agreement),
            (METHOD, digest, Uuid::from_u128(8)),
        ] {
            assert!(verify(&parts, &vk, method, &digest, agreement, 751, None).is_err());
        }
        let mut other = parts.clone();
        other.caller = 751;
        assert!(verify(&other, &vk, METHOD, &digest, agreement, 751, None).is_err());
        let mut later = parts.clone();
        later.at_ms += 1;
        assert!(verify(&later, &vk, METHOD, &digest, agreement, 751, None).is_err());
        let stranger = SigningKey::from_bytes(&[6; 32]);
        assert!(matches!(
            verify(
                &parts,
                &stranger.verifying_key(),
                METHOD,
                &digest,
                agreement,
                751,
                None
            ),
            Err(RequestError::BadSignature(BatchError::WrongSigner { .. }))
        ));
        assert_eq!(
            read(&MetadataMap::new()),
            Err(RequestError::Missing(SIGNATURE_HEADER))
        );
    }

    fn parts(caller: u32, at: OffsetDateTime, nonce: u8) -> SignedParts {
        SignedParts {
            caller,
            at_ms: ms(at),
            nonce: [nonce; 16],
            signature: pb::BatchSignature::default(),
        }
    }

    #[test]
    fn replays_stale_and_out_of_order_requests_are_refused_also_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let now = datetime!(2026-03-01 12:00 UTC);
        let replays = Replays::open(Arc::clone(&store), Duration::minutes(5), now).expect("open");
        let first = parts(630, now, 1);
        assert_eq!(replays.admit(&first, now), Ok(()));
        assert_eq!(replays.admit(&first, now), Err(RequestError::Replayed));
        // Another caller's nonce space is its own.
        assert_eq!(replays.admit(&parts(751, now, 1), now), Ok(()));
        for off in [Duration::minutes(-6), Duration::minutes(6)] {
            assert!(matches!(
                replays.admit(&parts(630, now + off, 2), now),
                Err(RequestError::Stale { .. })
            ));
        }
        // A little out of order is fine; far behind the latest is not.
        let later = now + Duration::minutes(2);
        assert_eq!(replays.admit(&parts(630, later, 3), now), Ok(()));
        assert_eq!(
            replays.admit(&parts(630, later - Duration::seconds(10), 4), now),
            Ok(())
        );
        assert!(matches!(
            replays.admit(&parts(630, now + Duration::seconds(1), 5), now),
            Err(RequestError::OutOfOrder { .. })
        ));
        // The first request, replayed now, is both old and far behind.
        assert!(replays.admit(&first, now).is_err());
        drop(replays);
        let reopened = Replays::open(store, Duration::minutes(5), now).expect("open");
        assert_eq!(
            reopened.admit(&parts(630, later, 3), now),
            Err(RequestError::Replayed)
        );
        assert!(reopened.admit(&parts(630, now, 6), now).is_err());
    }
}
