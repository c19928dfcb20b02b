//! Sensor pseudonyms: when an agreement withholds `sensor_id`, consumers
//! see `anon-<16 hex>` instead, an HMAC-SHA256 of the agreement id and the
//! sensor id under a key only this node holds.
//!
//! The pseudonym is stable for one agreement (a consumer can follow one
//! sensor over time and filter by it) but differs between agreements (two
//! consumers cannot join their answers on it), and without the key nobody
//! can compute it from a guessed sensor id, which a plain hash would allow
//! (sensor ids are often guessable: serial numbers, addresses). The key is
//! 32 random bytes made on first use and kept in the store's metadata.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::store::{Keyspace, Store, StoreError};

const KEY_NAME: &[u8] = b"pseudonym_key";
/// The prefix that marks a pseudonym (never a valid stored sensor id
/// prefix by convention, and easy to recognise in an answer).
pub const PREFIX: &str = "anon-";

/// The node's pseudonym key.
#[derive(Clone)]
pub struct PseudonymKey([u8; 32]);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(..)")
    }
}

impl PseudonymKey {
    /// The key kept in `store`, made (and flushed) on first use.
    pub fn load_or_create(store: &dyn Store) -> Result<PseudonymKey, StoreError> {
        if let Some(bytes) = store.get(Keyspace::Meta, KEY_NAME)?
            && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            return Ok(PseudonymKey(key));
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| {
            StoreError::Backend(format!("no randomness for the pseudonym key: {e}"))
        })?;
        // Inserted only if absent: node processes sharing one store that
        // start together must end up with one key, whoever was first.
        store.insert_new(Keyspace::Meta, vec![(KEY_NAME.to_vec(), key.to_vec())])?;
        store.flush()?;
        let stored = store
            .get(Keyspace::Meta, KEY_NAME)?
            .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
            .ok_or_else(|| StoreError::Backend("the pseudonym key is unreadable".to_string()))?;
        Ok(PseudonymKey(stored))
    }

    /// The pseudonym of `sensor_id` under `agreement`.
    pub fn of(&self, agreement: Uuid, sensor_id: &str) -> String {
        // HMAC takes keys of any length; a 32-byte key cannot fail.
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => return format!("{PREFIX}unavailable"),
        };
        mac.update(agreement.as_bytes());
        mac.update(&[0]);
        mac.update(sensor_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("{PREFIX}{}", hex::encode(&digest[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_agreement_and_differ_between_agreements() {
        let key = PseudonymKey([7; 32]);
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(key.of(a, "meter-17"), key.of(a, "meter-17"));
        assert_ne!(key.of(a, "meter-17"), key.of(a, "meter-18"));
        assert_ne!(key.of(a, "meter-17"), key.of(b, "meter-17"));
        assert!(key.of(a, "meter-17").starts_with(PREFIX));
        assert_eq!(key.of(a, "meter-17").len(), PREFIX.len() + 16);
        // Another node's key gives other pseudonyms.
        assert_ne!(
            PseudonymKey([8; 32]).of(a, "meter-17"),
            key.of(a, "meter-17")
        );
    }
}
