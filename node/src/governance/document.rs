//! The signed-file envelope shared by rosters and agreements.
//!
//! A document file is the body (UTF-8 TOML text, exactly as drafted), then
//! the separator line `--- samvirke signatures ---`, then one line per
//! signature: `sig ed25519:<64 hex public key> <128 hex signature>`. A file
//! without the separator is an unsigned draft. Each signature covers
//! `domain prefix || body bytes`, where the prefix names the document type
//! (`samvirke/roster/v1\0`, `samvirke/agreement/v1\0`) so a signature on a
//! roster can never be replayed as one on an agreement.
//!
//! This module owns the file format because the format is the security
//! boundary: verification uses the exact body bytes from the file (nothing
//! is re-encoded), and parsing is strict (lowercase hex only, single spaces,
//! every line ends in a newline, nothing after the last signature line, no
//! signer twice), so a file has exactly one accepted byte form and changing
//! any byte of a signed file makes parsing or verification fail.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::identity::signing_key_text;

/// The separator line between the body and the signature lines.
pub const SEPARATOR: &str = "--- samvirke signatures ---\n";

const SIG_PREFIX: &str = "sig ed25519:";

/// The kinds of signed document; each has its own signature domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocumentType {
    Roster,
    Agreement,
}

impl DocumentType {
    /// The bytes prepended to the body before signing and verifying.
    pub fn domain_prefix(self) -> &'static [u8] {
        match self {
            DocumentType::Roster => b"samvirke/roster/v1\0",
            DocumentType::Agreement => b"samvirke/agreement/v1\0",
        }
    }

    /// The exact message a signature covers: prefix followed by the body bytes.
    pub fn signed_message(self, body: &[u8]) -> Vec<u8> {
        let prefix = self.domain_prefix();
        let mut message = Vec::with_capacity(prefix.len() + body.len());
        message.extend_from_slice(prefix);
        message.extend_from_slice(body);
        message
    }
}

impl fmt::Display for DocumentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DocumentType::Roster => "roster",
            DocumentType::Agreement => "agreement",
        })
    }
}

/// Problems with a document file or its signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("document body is not UTF-8 text (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error(
        "the file has signature lines but no intact `--- samvirke signatures ---` separator \
         line; the file is damaged, use the original"
    )]
    DamagedSeparator,
    #[error("signature line {line}: {reason}; the file is damaged, use the original")]
    BadSignatureLine { line: usize, reason: String },
    #[error("signature line {line}: {signer} has already signed on line {first}")]
    DuplicateSigner {
        line: usize,
        first: usize,
        signer: String,
    },
    #[error(
        "the body must end with a newline before it can be signed (the separator is a line of its own)"
    )]
    BodyNotTerminated,
    #[error("the body contains the separator line `--- samvirke signatures ---`; remove it")]
    BodyContainsSeparator,
    #[error("{signer} has already signed this {doc_type}")]
    AlreadySigned {
        doc_type: DocumentType,
        signer: String,
    },
    #[error(
        "bad signature by {signer} (signature line {line}): it does not verify over this {doc_type} \
         body; the file was changed after signing or was signed as another document type"
    )]
    BadSignature {
        doc_type: DocumentType,
        line: usize,
        signer: String,
    },
}

/// One signature line: who signed and the signature over prefix || body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub signer: VerifyingKey,
    pub signature: ed25519_dalek::Signature,
}

/// The outcome of checking one signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureCheck {
    pub signer: VerifyingKey,
    /// 1-based signature line number, as in error messages.
    pub line: usize,
    pub valid: bool,
}

/// A document file: the exact body text and its signatures, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDocument {
    pub body: String,
    pub signatures: Vec<Signature>,
}

/// `sha256:<hex>` of a document body: how a roster names its predecessor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentDigest(pub [u8; 32]);

impl DocumentDigest {
    /// Digest of the exact body bytes.
    pub fn of(body: &[u8]) -> Self {
        DocumentDigest(Sha256::digest(body).into())
    }
}

impl fmt::Display for DocumentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for DocumentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for DocumentDigest {
    type Err = String;

    /// Parses `sha256:<64 lowercase hex>`; uppercase hex is refused.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex_part = text
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("`{text}` does not start with `sha256:`"))?;
        decode_lower_hex::<32>(hex_part)
            .map(DocumentDigest)
            .map_err(|reason| format!("`{text}`: {reason}"))
    }
}

/// Decodes exactly `N` bytes written as `2N` lowercase hex digits.
pub(crate) fn decode_lower_hex<const N: usize>(text: &str) -> Result<[u8; N], String> {
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("expected {} lowercase hexadecimal digits", 2 * N));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| format!("expected {} lowercase hexadecimal digits", 2 * N))?;
    Ok(out)
}

/// Parses a public key in the strict text form `ed25519:<64 lowercase hex>`,
/// refusing non-canonical point encodings (one key, one spelling).
pub fn parse_key_strict(text: &str) -> Result<VerifyingKey, String> {
    let hex_part = text
        .strip_prefix("ed25519:")
        .ok_or_else(|| format!("`{text}` does not start with `ed25519:`"))?;
    let bytes = decode_lower_hex::<32>(hex_part).map_err(|reason| format!("`{text}`: {reason}"))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| format!("`{text}` is not a valid Ed25519 public key"))?;
    if key.to_edwards().compress().to_bytes() != bytes || key.is_weak() {
        return Err(format!("`{text}` is not a usable Ed25519 public key"));
    }
    Ok(key)
}

impl SignedDocument {
    /// An unsigned document with `body` as its body.
    pub fn draft(body: impl Into<String>) -> Self {
        SignedDocument {
            body: body.into(),
            signatures: Vec::new(),
        }
    }

    /// Parses a document file strictly (see the module documentation).
    pub fn parse(bytes: &[u8]) -> Result<SignedDocument, DocumentError> {
        let separator = SEPARATOR.as_bytes();
        let at = if bytes.starts_with(separator) {
            Some(0)
        } else {
            find(bytes, &[&b"\n"[..], separator].concat()).map(|i| i + 1)
        };
        let Some(at) = at else {
            // An unsigned draft. Refuse files that look signed but whose
            // separator was damaged, rather than read them as drafts.
            if find(bytes, SEPARATOR.trim_end().as_bytes()).is_some()
                || bytes.starts_with(SIG_PREFIX.as_bytes())
                || find(bytes, format!("\n{SIG_PREFIX}").as_bytes()).is_some()
            {
                return Err(DocumentError::DamagedSeparator);
            }
            return Ok(SignedDocument::draft(to_text(bytes)?));
        };
        let body = to_text(&bytes[..at])?;
        let mut rest = &bytes[at + separator.len()..];
        let mut signatures: Vec<Signature> = Vec::new();
        let mut line = 0;
        while !rest.is_empty() {
            line += 1;
            let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                return Err(DocumentError::BadSignatureLine {
                    line,
                    reason: "does not end with a newline".to_string(),
                });
            };
            let signature = parse_signature_line(&rest[..end])
                .map_err(|reason| DocumentError::BadSignatureLine { line, reason })?;
            if let Some(first) = signatures.iter().position(|s| s.signer == signature.signer) {
                return Err(DocumentError::DuplicateSigner {
                    line,
                    first: first + 1,
                    signer: signing_key_text(&signature.signer),
                });
            }
            signatures.push(signature);
            rest = &rest[end + 1..];
        }
        Ok(SignedDocument { body, signatures })
    }

    /// The file bytes: the body, and if signed, the separator and signature
    /// lines. `parse(to_bytes())` gives the same document back, and for a
    /// file with at least one signature `to_bytes(parse(file)) == file`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.body.clone().into_bytes();
        if !self.signatures.is_empty() {
            out.extend_from_slice(SEPARATOR.as_bytes());
            for s in &self.signatures {
                out.extend_from_slice(
                    format!(
                        "{SIG_PREFIX}{} {}\n",
                        hex::encode(s.signer.as_bytes()),
                        hex::encode(s.signature.to_bytes())
                    )
                    .as_bytes(),
                );
            }
        }
        out
    }

    /// `sha256:<hex>` of the body bytes.
    pub fn digest(&self) -> DocumentDigest {
        DocumentDigest::of(self.body.as_bytes())
    }

    /// Appends a signature by `key`. Never replaces anything; refuses a
    /// second signature by the same key and a body that cannot be framed.
    pub fn sign(&mut self, doc_type: DocumentType, key: &SigningKey) -> Result<(), DocumentError> {
        check_signable(&self.body)?;
        let signer = key.verifying_key();
        if self.signatures.iter().any(|s| s.signer == signer) {
            return Err(DocumentError::AlreadySigned {
                doc_type,
                signer: signing_key_text(&signer),
            });
        }
        let signature = key.sign(&doc_type.signed_message(self.body.as_bytes()));
        self.signatures.push(Signature { signer, signature });
        Ok(())
    }

    /// Checks every signature over `prefix || body`, in file order.
    pub fn check_signatures(&self, doc_type: DocumentType) -> Vec<SignatureCheck> {
        let message = doc_type.signed_message(self.body.as_bytes());
        self.signatures
            .iter()
            .enumerate()
            .map(|(i, s)| SignatureCheck {
                signer: s.signer,
                line: i + 1,
                valid: s.signer.verify_strict(&message, &s.signature).is_ok(),
            })
            .collect()
    }

    /// The keys that signed, if every signature verifies; otherwise the
    /// first bad signature, named by signer and line.
    pub fn valid_signers(
        &self,
        doc_type: DocumentType,
    ) -> Result<Vec<VerifyingKey>, DocumentError> {
        let message = doc_type.signed_message(self.body.as_bytes());
        self.signatures
            .iter()
            .enumerate()
            .map(
                |(i, s)| match s.signer.verify_strict(&message, &s.signature) {
                    Ok(()) => Ok(s.signer),
                    Err(_) => Err(DocumentError::BadSignature {
                        doc_type,
                        line: i + 1,
                        signer: signing_key_text(&s.signer),
                    }),
                },
            )
            .collect()
    }
}

/// A body can be signed only if the separator can frame it unambiguously.
fn check_signable(body: &str) -> Result<(), DocumentError> {
    if !body.is_empty() && !body.ends_with('\n') {
        return Err(DocumentError::BodyNotTerminated);
    }
    if body.starts_with(SEPARATOR) || body.contains(&format!("\n{SEPARATOR}")) {
        return Err(DocumentError::BodyContainsSeparator);
    }
    Ok(())
}

fn to_text(bytes: &[u8]) -> Result<String, DocumentError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| DocumentError::NotUtf8 {
        offset: e.utf8_error().valid_up_to(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `sig ed25519:<64 hex> <128 hex>` without its newline.
fn parse_signature_line(line: &[u8]) -> Result<Signature, String> {
    let text = std::str::from_utf8(line).map_err(|_| "is not ASCII text".to_string())?;
    let rest = text
        .strip_prefix(SIG_PREFIX)
        .ok_or_else(|| format!("does not start with `{SIG_PREFIX}`"))?;
    let (key_hex, signature_hex) = rest
        .split_once(' ')
        .ok_or_else(|| "expected `sig ed25519:<key> <signature>`".to_string())?;
    let signer = parse_key_strict(&format!("ed25519:{key_hex}"))
        .map_err(|reason| format!("public key: {reason}"))?;
    let signature_bytes =
        decode_lower_hex::<64>(signature_hex).map_err(|reason| format!("signature: {reason}"))?;
    Ok(Signature {
        signer,
        signature: ed25519_dalek::Signature::from_bytes(&signature_bytes),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    const BODY: &str = "kind = \"test\"\nname = \"Greve Kommune\"\n";

    fn signed(keys: &[u8]) -> SignedDocument {
        let mut doc = SignedDocument::draft(BODY);
        for seed in keys {
            doc.sign(DocumentType::Roster, &key(*seed)).expect("sign");
        }
        doc
    }

    #[test]
    fn signed_files_round_trip_exactly() {
        let doc = signed(&[1, 2, 3]);
        let bytes = doc.to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert!(text.starts_with(BODY));
        assert!(text[BODY.len()..].starts_with(SEPARATOR));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("sig ed25519:"))
                .count(),
            3
        );
        let parsed = SignedDocument::parse(&bytes).expect("parse");
        assert_eq!(parsed, doc);
        assert_eq!(parsed.to_bytes(), bytes);
        assert_eq!(
            parsed.valid_signers(DocumentType::Roster).expect("valid"),
            vec![
                key(1).verifying_key(),
                key(2).verifying_key(),
                key(3).verifying_key()
            ]
        );
    }

    #[test]
    fn a_draft_is_its_body() {
        let parsed = SignedDocument::parse(BODY.as_bytes()).expect("parse");
        assert_eq!(parsed.body, BODY);
        assert!(parsed.signatures.is_empty());
        assert_eq!(parsed.to_bytes(), BODY.as_bytes());
        assert_eq!(
            parsed.valid_signers(DocumentType::Roster).expect("ok"),
            vec![]
        );
        // A separator with no signature lines is a draft too.
        let framed = format!("{BODY}{SEPARATOR}");
        let parsed = SignedDocument::parse(framed.as_bytes()).expect("parse");
        assert_eq!(parsed.body, BODY);
        assert!(parsed.signatures.is_empty());
    }

    #[test]
    fn signatures_are_bound_to_the_document_type() {
        let doc = signed(&[1]);
        assert!(doc.valid_signers(DocumentType::Roster).is_ok());
        let err = doc
            .valid_signers(DocumentType::Agreement)
            .expect_err("roster signature used as agreement signature");
        assert!(
            err.to_string().starts_with("bad signature by ed25519:"),
            "{err}"
        );
    }

    #[test]
    fn signing_appends_and_refuses_the_same_key_twice() {
        let mut doc = signed(&[1]);
        let before = doc.to_bytes();
        doc.sign(DocumentType::Roster, &key(2))
            .expect("second signer");
        assert!(doc.to_bytes().starts_with(&before));
        let err = doc
            .sign(DocumentType::Roster, &key(1))
            .expect_err("same key twice");
        assert!(matches!(err, DocumentError::AlreadySigned { .. }));
        assert_eq!(doc.signatures.len(), 2);
    }

    #[test]
    fn unframeable_bodies_are_not_signed() {
        let mut doc = SignedDocument::draft("no newline");
        assert_eq!(
            doc.sign(DocumentType::Roster, &key(1)),
            Err(DocumentError::BodyNotTerminated)
        );
        let mut doc = SignedDocument::draft(format!("a = 1\n{SEPARATOR}b = 2\n"));
        assert_eq!(
            doc.sign(DocumentType::Roster, &key(1)),
            Err(DocumentError::BodyContainsSeparator)
        );
    }

    #[test]
    fn strict_parsing_refuses_other_spellings() {
        let good = String::from_utf8(signed(&[1]).to_bytes()).expect("utf8");
        let sig_line = good.lines().last().expect("line").to_string();
        let cases = [
            good.replace(
                &sig_line,
                &sig_line
                    .to_uppercase()
                    .replace("SIG ED25519:", "sig ed25519:"),
            ),
            good.replace("sig ed25519:", "sig  ed25519:"),
            good.replace(&sig_line, &sig_line.replacen(' ', "  ", 2)),
            good.trim_end().to_string(),
            format!("{good}\n"),
            format!("{good}trailing"),
            format!("{good}{sig_line}\n"),
            good.replace('\n', "\r\n"),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(
                SignedDocument::parse(case.as_bytes()).is_err(),
                "case {i} parsed: {case:?}"
            );
        }
    }

    #[test]
    fn flipping_any_byte_of_a_signed_file_is_detected() {
        let bytes = signed(&[1, 2]).to_bytes();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            let outcome = SignedDocument::parse(&damaged)
                .and_then(|doc| doc.valid_signers(DocumentType::Roster));
            assert!(outcome.is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn digests_have_the_fixed_text_form() {
        let doc = signed(&[1]);
        let text = doc.digest().to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<DocumentDigest>().expect("parse"), doc.digest());
        assert!(
            text.to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<DocumentDigest>()
                .is_err()
        );
        // The digest covers the body only, not the signatures.
        assert_eq!(doc.digest(), SignedDocument::draft(BODY).digest());
    }
}
