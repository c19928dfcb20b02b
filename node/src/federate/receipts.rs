//! The receipts this node keeps: every receipt a partner signed for an
//! answer this node received, checked before it is kept (signature by the
//! provider's key in the roster, and that it describes the request sent
//! and the answer received).
//!
//! Keys: [`Keyspace::Receipts`] holds `receipt id (UUID v7, 16 bytes)` ->
//! the receipt's protobuf encoding, so ids (and therefore time) order the
//! keys.

use std::ops::Bound;
use std::sync::{Arc, Mutex};

use prost::Message;
use samvirke_proto::v1 as pb;
use uuid::Uuid;

use crate::store::{Keyspace, Store, StoreError, WriteBatch};

/// Most receipts one listing returns.
pub const MAX_LIST: usize = 1_000;

/// Why a receipt could not be kept or found.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptStoreError {
    #[error("receipt id `{0}` is not a UUID")]
    BadId(String),
    #[error("receipt {0} is stored damaged")]
    Corrupt(String),
    #[error(
        "the partner reused receipt id {0}, which names a receipt kept earlier for another \
         answer; the earlier receipt is kept, this one is not"
    )]
    Reused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The kept receipts.
#[derive(Debug, Clone)]
pub struct ReceiptStore {
    store: Arc<dyn Store>,
    /// Serialises the check-then-write of [`ReceiptStore::keep`].
    writing: Arc<Mutex<()>>,
}

fn key_of(id: &str) -> Result<[u8; 16], ReceiptStoreError> {
    Uuid::parse_str(id)
        .map(|id| *id.as_bytes())
        .map_err(|_| ReceiptStoreError::BadId(crate::telemetry::untrusted(id)))
}

impl ReceiptStore {
    pub fn new(store: Arc<dyn Store>) -> ReceiptStore {
        ReceiptStore {
            store,
            writing: Arc::default(),
        }
    }

    /// Keeps a checked receipt (made durable with the audit entry of the
    /// question it answers). The id is the provider's choice: a receipt
    /// kept under it before is never replaced (a provider could otherwise
    /// erase the proof of an earlier answer by reusing its id).
    pub fn keep(&self, receipt: &pb::Receipt) -> Result<(), ReceiptStoreError> {
        let id = receipt.body.as_ref().map(|b| b.id.as_str()).unwrap_or("");
        let key = key_of(id)?;
        let encoded = receipt.encode_to_vec();
        let _writing = self
            .writing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match self.store.get(Keyspace::Receipts, &key)? {
            Some(kept) if kept == encoded => return Ok(()),
            Some(_) => return Err(ReceiptStoreError::Reused(id.to_string())),
            None => {}
        }
        let mut batch = WriteBatch::default();
        batch.put(key.to_vec(), encoded);
        self.store.write(Keyspace::Receipts, batch)?;
        Ok(())
    }

    /// The receipt `id`, if kept.
    pub fn get(&self, id: &str) -> Result<Option<pb::Receipt>, ReceiptStoreError> {
        self.store
            .get(Keyspace::Receipts, &key_of(id)?)?
            .map(|bytes| {
                pb::Receipt::decode(bytes.as_slice())
                    .map_err(|_| ReceiptStoreError::Corrupt(id.to_string()))
            })
            .transpose()
    }

    /// Receipts after `after` (oldest first), of `provider` only unless 0,
    /// at most `limit` (and [`MAX_LIST`]); and whether more follow.
    pub fn list(
        &self,
        provider: u32,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<pb::Receipt>, bool), ReceiptStoreError> {
        let limit = if limit == 0 { 100 } else { limit.min(MAX_LIST) };
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(key_of(after)?.to_vec())
        };
        let mut out = Vec::new();
        for item in self
            .store
            .range(Keyspace::Receipts, (start, Bound::Unbounded))
        {
            let (key, bytes) = item?;
            let receipt = pb::Receipt::decode(bytes.as_slice())
                .map_err(|_| ReceiptStoreError::Corrupt(hex::encode(&key)))?;
            if provider != 0 && receipt.body.as_ref().map(|b| b.provider) != Some(provider) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(receipt);
        }
        Ok((out, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn receipt(id: &str, rows: u64) -> pb::Receipt {
        pb::Receipt {
            body: Some(pb::ReceiptBody {
                id: id.to_string(),
                provider: 751,
                consumer: 630,
                rows,
                ..Default::default()
            }),
            signature: None,
        }
    }

    #[test]
    fn a_kept_receipt_is_never_replaced_by_another_with_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let receipts = ReceiptStore::new(store);
        let id = Uuid::now_v7().to_string();
        receipts.keep(&receipt(&id, 10)).expect("kept");
        // The same receipt again is fine (a retry).
        receipts.keep(&receipt(&id, 10)).expect("kept again");
        // Another with the same id is refused; the first stays.
        let error = receipts.keep(&receipt(&id, 0)).expect_err("reused id");
        assert!(matches!(error, ReceiptStoreError::Reused(_)), "{error}");
        let kept = receipts.get(&id).expect("get").expect("kept");
        assert_eq!(kept.body.map(|b| b.rows), Some(10));
    }
}
