//! Receipts: the provider's signed statement of one answer
//! (`samvirke.v1.Receipt`). The provider signs the protobuf encoding of
//! the receipt's body as a batch signature in the domain `receipt` (see
//! [`super::batch`]); the consumer checks it with the provider's key from
//! the roster, checks that the body describes the request it sent and the
//! answer it received, and keeps it.
//!
//! A receipt travels as a file in JSON ([`to_file`], [`from_file`]), so an
//! auditor can check it with nothing but the roster. The file holds the
//! body's fields as they were signed; the body is re-encoded from them to
//! check the signature, so a changed byte anywhere in the file either
//! breaks the JSON or the signature.

use ed25519_dalek::VerifyingKey;
use prost::Message;
use samvirke_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::batch::{self, BatchError, BatchSigner, VerifiedRoots};

/// The batch-signature domain of receipts.
pub const BATCH_DOMAIN: &str = "receipt";

/// Why a receipt does not verify, or does not describe this answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("the answer carries no receipt")]
    Missing,
    #[error("the receipt's signature: {0}")]
    Signature(#[from] BatchError),
    #[error("the receipt says {field} is `{stated}`, but it is `{actual}`")]
    Mismatch {
        field: &'static str,
        stated: String,
        actual: String,
    },
    #[error("the receipt file is not valid: {0}")]
    File(String),
}

/// Signs `body` with `signer` (in a batch with the receipts signed at the
/// same moment).
pub async fn sign(body: pb::ReceiptBody, signer: &BatchSigner) -> Result<pb::Receipt, BatchError> {
    let signature = signer.sign(&body.encode_to_vec()).await?;
    Ok(pb::Receipt {
        body: Some(body),
        signature: Some(signature),
    })
}

/// Checks that `provider_key` signed `receipt` as it is.
pub fn verify(
    receipt: &pb::Receipt,
    provider_key: &VerifyingKey,
    roots: Option<&VerifiedRoots>,
) -> Result<(), ReceiptError> {
    let body = receipt.body.as_ref().ok_or(ReceiptError::Missing)?;
    let signature = receipt
        .signature
        .as_ref()
        .ok_or(ReceiptError::Signature(BatchError::Missing))?;
    batch::verify(
        signature,
        BATCH_DOMAIN,
        &body.encode_to_vec(),
        provider_key,
        roots,
    )?;
    Ok(())
}

/// What the consumer knows of a call, to check a receipt describes it.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub provider: u32,
    pub consumer: u32,
    pub agreement_id: &'a str,
    pub method: &'a str,
    pub request_digest: &'a str,
    pub response_digest: &'a str,
    pub request_nonce: &'a str,
    /// Rows and bytes the consumer counted in the answer.
    pub rows: u64,
    pub bytes: u64,
    /// When the consumer got the answer, and how far the provider's clock
    /// may be from it.
    pub received_at: time::OffsetDateTime,
    pub skew: time::Duration,
}

/// Checks that `body` describes the call the consumer made and the answer
/// it received.
pub fn check_describes(
    body: &pb::ReceiptBody,
    expected: &Expected<'_>,
) -> Result<(), ReceiptError> {
    let checks: [(&'static str, String, String); 9] = [
        (
            "provider",
            body.provider.to_string(),
            expected.provider.to_string(),
        ),
        (
            "consumer",
            body.consumer.to_string(),
            expected.consumer.to_string(),
        ),
        (
            "agreement_id",
            body.agreement_id.clone(),
            expected.agreement_id.to_string(),
        ),
        ("method", body.method.clone(), expected.method.to_string()),
        (
            "request_digest",
            body.request_digest.clone(),
            expected.request_digest.to_string(),
        ),
        (
            "response_digest",
            body.response_digest.clone(),
            expected.response_digest.to_string(),
        ),
        (
            "request_nonce",
            body.request_nonce.clone(),
            expected.request_nonce.to_string(),
        ),
        ("rows", body.rows.to_string(), expected.rows.to_string()),
        ("bytes", body.bytes.to_string(), expected.bytes.to_string()),
    ];
    for (field, stated, actual) in checks {
        if stated != actual {
            return Err(ReceiptError::Mismatch {
                field,
                stated: crate::telemetry::untrusted(&stated),
                actual,
            });
        }
    }
    // A receipt dated far from the answer misstates when it was given.
    let at = body
        .at
        .as_ref()
        .and_then(|at| crate::wire::time_of("at", at).ok());
    let near = at.is_some_and(|at| (at - expected.received_at).abs() <= expected.skew);
    if !near {
        return Err(ReceiptError::Mismatch {
            field: "at",
            stated: at
                .map(crate::governance::body::show_instant)
                .unwrap_or_else(|| "nothing".to_string()),
            actual: format!(
                "within {} s of {}",
                expected.skew.whole_seconds(),
                crate::governance::body::show_instant(expected.received_at)
            ),
        });
    }
    Ok(())
}

/// A receipt as a file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ReceiptFile {
    id: String,
    provider: u32,
    consumer: u32,
    agreement_id: String,
    method: String,
    request_digest: String,
    response_digest: String,
    request_nonce: String,
    rows: u64,
    bytes: u64,
    /// Seconds and nanoseconds since the Unix epoch, as signed.
    at_seconds: i64,
    at_nanos: i32,
    /// RFC 3339, for people (not signed; checked against `at_seconds`).
    at: String,
    signature: SignatureFile,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    signer: String,
    /// Hex.
    signature: String,
    index: u32,
    size: u32,
    /// Hex, leaf first.
    path: Vec<String>,
}

/// The receipt as a JSON file.
pub fn to_file(receipt: &pb::Receipt) -> String {
    let body = receipt.body.clone().unwrap_or_default();
    let signature = receipt.signature.clone().unwrap_or_default();
    let at = body.at.unwrap_or_default();
    let file = ReceiptFile {
        id: body.id,
        provider: body.provider,
        consumer: body.consumer,
        agreement_id: body.agreement_id,
        method: body.method,
        request_digest: body.request_digest,
        response_digest: body.response_digest,
        request_nonce: body.request_nonce,
        rows: body.rows,
        bytes: body.bytes,
        at_seconds: at.seconds,
        at_nanos: at.nanos,
        at: crate::wire::time_of("at", &at)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default(),
        signature: SignatureFile {
            signer: signature.signer,
            signature: hex::encode(&signature.signature),
            index: signature.index,
            size: signature.size,
            path: signature.path.iter().map(hex::encode).collect(),
        },
    };
    serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
}

/// A receipt from its JSON file.
pub fn from_file(text: &str) -> Result<pb::Receipt, ReceiptError> {
    let bad = |e: String| ReceiptError::File(e);
    let file: ReceiptFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let hex_field =
        |name: &str, text: &str| hex::decode(text).map_err(|_| bad(format!("{name} is not hex")));
    let at = prost_types::Timestamp {
        seconds: file.at_seconds,
        nanos: file.at_nanos,
    };
    let stated = crate::wire::time_of("at", &at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    if stated != file.at {
        return Err(bad(format!(
            "`at` says {} but at_seconds/at_nanos say {stated}",
            file.at
        )));
    }
    Ok(pb::Receipt {
        body: Some(pb::ReceiptBody {
            id: file.id,
            provider: file.provider,
            consumer: file.consumer,
            agreement_id: file.agreement_id,
            method: file.method,
            request_digest: file.request_digest,
            response_digest: file.response_digest,
            rows: file.rows,
            bytes: file.bytes,
            at: Some(at),
            request_nonce: file.request_nonce,
        }),
        signature: Some(pb::BatchSignature {
            signer: file.signature.signer,
            signature: hex_field("signature", &file.signature.signature)?,
            index: file.signature.index,
            size: file.signature.size,
            path: file
                .signature
                .path
                .iter()
                .map(|p| hex_field("path", p))
                .collect::<Result<_, _>>()?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use std::sync::Arc;

    fn body() -> pb::ReceiptBody {
        pb::ReceiptBody {
            id: "01a230ea-2ff1-7433-b121-ad558238af69".to_string(),
            provider: 751,
            consumer: 630,
            agreement_id: "01a230ea-2ff1-7433-b121-ad558238af60".to_string(),
            method: "/samvirke.v1.Peer/QueryReadings".to_string(),
            request_digest: format!("sha256:{}", "ab".repeat(32)),
            response_digest: format!("sha256:{}", "cd".repeat(32)),
            rows: 1200,
            bytes: 98_000,
            at: Some(prost_types::Timestamp {
                seconds: 1_772_366_400,
                nanos: 123_456_789,
            }),
            request_nonce: "11".repeat(16),
        }
    }

    #[tokio::test]
    async fn a_receipt_file_verifies_with_the_providers_key_only_and_only_unchanged() {
        let key = Arc::new(SigningKey::from_bytes(&[2; 32]));
        let signer = BatchSigner::start(Arc::clone(&key), BATCH_DOMAIN);
        let receipt = sign(body(), &signer).await.expect("sign");
        assert_eq!(verify(&receipt, &key.verifying_key(), None), Ok(()));
        let other = SigningKey::from_bytes(&[3; 32]);
        assert!(matches!(
            verify(&receipt, &other.verifying_key(), None),
            Err(ReceiptError::Signature(BatchError::WrongSigner { .. }))
        ));
        let file = to_file(&receipt);
        assert_eq!(from_file(&file).expect("parse"), receipt);
        // Every byte of the file matters: a flip breaks the JSON, the
        // time's consistency or the signature.
        let bytes = file.as_bytes();
        for i in 0..bytes.len() {
            let mut damaged = bytes.to_vec();
            damaged[i] ^= 0x01;
            let Ok(text) = String::from_utf8(damaged) else {
                continue;
            };
            let outcome = from_file(&text).and_then(|r| verify(&r, &key.verifying_key(), None));
            assert!(outcome.is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_receipt_must_describe_the_call() {
        let body = body();
        let expected = Expected {
            provider: 751,
            consumer: 630,
            agreement_id: &body.agreement_id,
            method: &body.method,
            request_digest: &body.request_digest,
            response_digest: &body.response_digest,
            request_nonce: &body.request_nonce,
            rows: 1200,
            bytes: 98_000,
            received_at: time::macros::datetime!(2026-03-01 12:00:01 UTC),
            skew: time::Duration::minutes(5),
        };
        assert_eq!(check_describes(&body, &expected), Ok(()));
        // Fewer rows than were sent, or a date far from the answer: no.
        let err = check_describes(
            &body,
            &Expected {
                rows: 1201,
                ..expected
            },
        )
        .expect_err("rows");
        assert!(err.to_string().contains("rows"), "{err}");
        let err = check_describes(
            &body,
            &Expected {
                received_at: time::macros::datetime!(2026-03-02 12:00 UTC),
                ..expected
            },
        )
        .expect_err("at");
        assert!(err.to_string().contains("says at is"), "{err}");
        let other_digest = format!("sha256:{}", "ee".repeat(32));
        let err = check_describes(
            &body,
            &Expected {
                response_digest: &other_digest,
                ..expected
            },
        )
        .expect_err("another answer");
        assert!(err.to_string().contains("response_digest"), "{err}");
    }
}
