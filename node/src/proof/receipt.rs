//! Receipts: the provider's signed statement of one answer (see
//! `samvirke.v1.Receipt`). Signed over `samvirke/receipt/v1\0` and the
//! receipt's protobuf encoding with the signature field empty; the
//! signature field holds `ed25519:<key> <hex>` so a reader knows which key
//! to look up in the roster (and must check it is the provider's).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;
use samvirke_proto::v1 as pb;

use crate::identity::signing_key_text;

const DOMAIN: &[u8] = b"samvirke/receipt/v1\0";

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the receipt carries no signature")]
    Unsigned,
    #[error("the receipt's signature field is malformed")]
    Malformed,
    #[error("the receipt is signed by {signed}, not by the provider's key {expected}")]
    WrongKey { signed: String, expected: String },
    #[error("the receipt's signature does not verify: it was changed after signing")]
    BadSignature,
}

fn signed_bytes(receipt: &pb::Receipt) -> Vec<u8> {
    let mut unsigned = receipt.clone();
    unsigned.signature.clear();
    let mut bytes = DOMAIN.to_vec();
    bytes.extend_from_slice(&unsigned.encode_to_vec());
    bytes
}

/// Signs `receipt` with `key` (replacing any signature).
pub fn sign(receipt: &mut pb::Receipt, key: &SigningKey) {
    let signature = key.sign(&signed_bytes(receipt));
    receipt.signature = format!(
        "{} {}",
        signing_key_text(&key.verifying_key()),
        hex::encode(signature.to_bytes())
    );
}

/// Checks that `provider_key` signed `receipt` as it is.
pub fn verify(receipt: &pb::Receipt, provider_key: &VerifyingKey) -> Result<(), ReceiptError> {
    if receipt.signature.is_empty() {
        return Err(ReceiptError::Unsigned);
    }
    let (key_text, signature_hex) = receipt
        .signature
        .split_once(' ')
        .ok_or(ReceiptError::Malformed)?;
    let expected = signing_key_text(provider_key);
    if key_text != expected {
        return Err(ReceiptError::WrongKey {
            signed: key_text.to_string(),
            expected,
        });
    }
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature_hex, &mut bytes).map_err(|_| ReceiptError::Malformed)?;
    provider_key
        .verify_strict(&signed_bytes(receipt), &Signature::from_bytes(&bytes))
        .map_err(|_| ReceiptError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_verifies_with_the_providers_key_only_and_only_unchanged() {
        let key = SigningKey::from_bytes(&[2; 32]);
        let mut receipt = pb::Receipt {
            id: "01a230ea-2ff1-7433-b121-ad558238af69".to_string(),
            provider: 751,
            consumer: 630,
            agreement_id: "01a230ea-2ff1-7433-b121-ad558238af60".to_string(),
            method: "/samvirke.v1.Peer/QueryReadings".to_string(),
            request_digest: format!("sha256:{}", "ab".repeat(32)),
            response_digest: format!("sha256:{}", "cd".repeat(32)),
            rows: 1200,
            bytes: 98_000,
            at: None,
            signature: String::new(),
        };
        sign(&mut receipt, &key);
        assert_eq!(verify(&receipt, &key.verifying_key()), Ok(()));
        let other = SigningKey::from_bytes(&[3; 32]);
        assert!(matches!(
            verify(&receipt, &other.verifying_key()),
            Err(ReceiptError::WrongKey { .. })
        ));
        let encoded = receipt.encode_to_vec();
        // Every byte of the encoded receipt matters.
        for i in 0..encoded.len() {
            let mut damaged = encoded.clone();
            damaged[i] ^= 0x01;
            let Ok(decoded) = pb::Receipt::decode(damaged.as_slice()) else {
                continue;
            };
            assert!(
                verify(&decoded, &key.verifying_key()).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
    }
}
