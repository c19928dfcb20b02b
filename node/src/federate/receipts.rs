//! The receipts this node keeps: every receipt a partner signed for an
//! answer this node received, checked before it is kept (signature by the
//! provider's key in the roster, and that it describes the request sent
//! and the answer received).
//!
//! Keys: [`Keyspace::Receipts`] holds `receipt id (UUID v7, 16 bytes)` ->
//! the receipt's protobuf encoding, so ids (and therefore time) order the
//! keys.

use std::ops::Bound;
use std::sync::Arc;

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The kept receipts.
#[derive(Debug, Clone)]
pub struct ReceiptStore {
    store: Arc<dyn Store>,
}

fn key_of(id: &str) -> Result<[u8; 16], ReceiptStoreError> {
    Uuid::parse_str(id)
        .map(|id| *id.as_bytes())
        .map_err(|_| ReceiptStoreError::BadId(crate::telemetry::untrusted(id)))
}

impl ReceiptStore {
    pub fn new(store: Arc<dyn Store>) -> ReceiptStore {
        ReceiptStore { store }
    }

    /// Keeps a checked receipt (made durable with the audit entry of the
    /// question it answers).
    pub fn keep(&self, receipt: &pb::Receipt) -> Result<(), ReceiptStoreError> {
        let id = receipt.body.as_ref().map(|b| b.id.as_str()).unwrap_or("");
        let mut batch = WriteBatch::default();
        batch.put(key_of(id)?.to_vec(), receipt.encode_to_vec());
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
