//! The node's identity: municipality, node id, the Ed25519 signing key (for
//! documents, receipts and audit checkpoints) and the TLS key and
//! certificate (for mutual TLS), plus the fixed text forms in which keys and
//! fingerprints are shown to people and written into rosters:
//!
//! - signing public key: `ed25519:<64 lowercase hex>`
//! - certificate fingerprint: `sha256:<64 lowercase hex>` of the DER bytes
//!
//! Private keys are read from and written to files with mode 0600 only, and
//! no `Debug` or `Display` impl here ever prints one.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::config::Config;

/// Problems with key and certificate material.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error(
        "private key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{what} {path} is not valid: {reason}")]
    Malformed {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot draw random bytes from the operating system: {0}")]
    Random(String),
}

// ---- Fixed text forms ----------------------------------------------------

/// SHA-256 fingerprint of a certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hex_part = text
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("`{text}` does not start with `sha256:`"))?;
        decode_32(hex_part).map(Fingerprint)
    }
}

/// An Ed25519 public key in its fixed text form `ed25519:<hex>`.
pub fn signing_key_text(key: &VerifyingKey) -> String {
    format!("ed25519:{}", hex::encode(key.as_bytes()))
}

/// Parses the fixed text form `ed25519:<hex>` of a public key.
pub fn parse_signing_key_text(text: &str) -> Result<VerifyingKey, String> {
    let hex_part = text
        .strip_prefix("ed25519:")
        .ok_or_else(|| format!("`{text}` does not start with `ed25519:`"))?;
    let bytes = decode_32(hex_part)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| format!("`{text}` is not a valid Ed25519 key"))
}

fn decode_32(hex_part: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| format!("`{hex_part}` is not 64 hexadecimal digits"))?;
    Ok(out)
}

// ---- Private key files ---------------------------------------------------

/// Writes `contents` to a new file readable only by its owner (0600).
/// Refuses to replace an existing file: keys are never overwritten by accident.
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => IdentityError::Exists {
                path: path.to_path_buf(),
            },
            _ => IdentityError::Write {
                path: path.to_path_buf(),
                source,
            },
        })?;
    // The mode given to open() is filtered by the umask; set it explicitly
    // so the result does not depend on the caller's environment.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(contents))
        .and_then(|()| file.sync_all())
        .map_err(|source| IdentityError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes a public file (certificates, configs): create or replace, mode 0644.
pub fn write_public_file(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    std::fs::write(path, contents).map_err(|source| IdentityError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a private key file, refusing one that others can read (as ssh does).
fn read_private_file(what: &'static str, path: &Path) -> Result<Zeroizing<String>, IdentityError> {
    let read_error = |source| IdentityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_error)?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(read_error)
}

fn read_public_file(what: &'static str, path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

// ---- Signing key ---------------------------------------------------------

/// A fresh Ed25519 signing key from the operating system's random source.
pub fn generate_signing_key() -> Result<SigningKey, IdentityError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes a signing key as PKCS#8 PEM (the form `openssl pkey` reads), 0600.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), IdentityError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| IdentityError::Malformed {
            what: "signing key",
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_private_file(path, pem.as_bytes())
}

/// Reads a PKCS#8 PEM Ed25519 signing key written by [`write_signing_key`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, IdentityError> {
    let pem = read_private_file("signing key", path)?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| IdentityError::Malformed {
        what: "signing key",
        path: path.to_path_buf(),
        reason: format!("expected an Ed25519 PKCS#8 PEM key ({e})"),
    })
}

// ---- TLS material --------------------------------------------------------

/// The node's TLS certificate chain and private key, as PEM, plus the
/// trust roots that peers' client certificates must chain to.
#[derive(Clone)]
pub struct TlsMaterial {
    pub certificate_chain_pem: String,
    private_key_pem: Zeroizing<String>,
    pub trust_roots_pem: String,
    pub fingerprint: Fingerprint,
}

impl TlsMaterial {
    /// Loads and checks the three PEM files: the chain must hold at least
    /// one certificate, the key must parse, the roots must hold at least
    /// one certificate.
    pub fn load(
        certificate: &Path,
        key: &Path,
        trust_roots: &Path,
    ) -> Result<TlsMaterial, IdentityError> {
        let certificate_chain_pem = read_public_file("TLS certificate", certificate)?;
        let leaf = first_certificate("TLS certificate", certificate, &certificate_chain_pem)?;
        let private_key_pem = read_private_file("TLS key", key)?;
        PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes()).map_err(|e| {
            IdentityError::Malformed {
                what: "TLS key",
                path: key.to_path_buf(),
                reason: format!("expected a PEM private key ({e})"),
            }
        })?;
        let trust_roots_pem = read_public_file("trust roots", trust_roots)?;
        first_certificate("trust roots", trust_roots, &trust_roots_pem)?;
        Ok(TlsMaterial {
            fingerprint: Fingerprint::of_der(&leaf),
            certificate_chain_pem,
            private_key_pem,
            trust_roots_pem,
        })
    }

    /// The private key PEM, for handing to the TLS stack. Never log it.
    pub fn private_key_pem(&self) -> &str {
        &self.private_key_pem
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The DER of the first certificate in a PEM bundle, checking every
/// certificate in it parses.
fn first_certificate(
    what: &'static str,
    path: &Path,
    pem: &str,
) -> Result<CertificateDer<'static>, IdentityError> {
    let malformed = |reason: String| IdentityError::Malformed {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(format!("bad PEM certificate ({e})")))?;
    certs
        .into_iter()
        .next()
        .ok_or_else(|| malformed("no PEM certificate found".to_string()))
}

/// Fingerprint of the first certificate in a PEM file.
pub fn certificate_fingerprint(path: &Path) -> Result<Fingerprint, IdentityError> {
    let pem = read_public_file("TLS certificate", path)?;
    first_certificate("TLS certificate", path, &pem).map(|der| Fingerprint::of_der(&der))
}

// ---- The whole identity --------------------------------------------------

/// Everything that makes this node itself.
#[derive(Clone)]
pub struct NodeIdentity {
    pub municipality_code: u32,
    pub municipality_name: String,
    pub node_id: Uuid,
    signing_key: SigningKey,
    pub tls: TlsMaterial,
}

impl NodeIdentity {
    /// Loads the keys and certificates a config points at.
    pub fn load(config: &Config) -> Result<NodeIdentity, IdentityError> {
        Ok(NodeIdentity {
            municipality_code: config.node.municipality_code,
            municipality_name: config.node.municipality_name.clone(),
            node_id: config.node.node_id,
            signing_key: read_signing_key(&config.node.signing_key)?,
            tls: TlsMaterial::load(
                &config.peer.tls_certificate,
                &config.peer.tls_key,
                &config.peer.trust_roots,
            )?,
        })
    }

    /// The public half of the signing key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// The signing key, for the modules that sign (documents, receipts).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// The identity as the peer and local APIs report it.
    pub fn to_proto(&self) -> samvirke_proto::v1::NodeIdentity {
        samvirke_proto::v1::NodeIdentity {
            municipality_code: self.municipality_code,
            municipality_name: self.municipality_name.clone(),
            node_id: self.node_id.to_string(),
            signing_public_key: signing_key_text(&self.verifying_key()),
            tls_certificate_fingerprint: self.tls.fingerprint.to_string(),
            software_version: crate::SOFTWARE_VERSION.to_string(),
        }
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("municipality_code", &self.municipality_code)
            .field("municipality_name", &self.municipality_name)
            .field("node_id", &self.node_id)
            .field(
                "signing_public_key",
                &signing_key_text(&self.verifying_key()),
            )
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let key = generate_signing_key().expect("key").verifying_key();
        let text = signing_key_text(&key);
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 64);
        assert_eq!(parse_signing_key_text(&text).expect("parse"), key);

        let fingerprint = Fingerprint::of_der(b"certificate");
        let text = fingerprint.to_string();
        assert_eq!(text.parse::<Fingerprint>().expect("parse"), fingerprint);
        assert!("sha1:00".parse::<Fingerprint>().is_err());
        assert!("sha256:zz".parse::<Fingerprint>().is_err());
    }

    #[test]
    fn signing_keys_are_written_0600_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("signing.pem");
        let key = generate_signing_key().expect("key");
        write_signing_key(&path, &key).expect("write");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            read_signing_key(&path).expect("read").to_bytes(),
            key.to_bytes()
        );
        assert!(matches!(
            write_signing_key(&path, &key),
            Err(IdentityError::Exists { .. })
        ));
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("signing.pem");
        write_signing_key(&path, &generate_signing_key().expect("key")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_signing_key(&path).expect_err("too open");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
