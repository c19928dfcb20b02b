//! Development PKI: a certificate authority and node certificates, made
//! with rcgen, for tests, the demo and trying Samvirke out.
//!
//! Production nodes should use certificates from the municipality's own CA
//! (or a CA the fellowship agrees on); the node only needs a PEM chain, a
//! PEM key and the trust roots, whoever issued them. See `certs/README.md`.
//!
//! Node certificates carry both the serverAuth and clientAuth extended key
//! usages, because a node is a TLS server to its partners and a TLS client
//! when it calls them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::identity::{IdentityError, write_private_file, write_public_file};

/// Problems making or loading development PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("`{0}` is neither a DNS name nor an IP address")]
    BadHost(String),
    #[error(transparent)]
    Files(#[from] IdentityError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// File names inside a CA directory made by `samvirke pki ca`.
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA's private key file (0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// How long development certificates are valid.
const CA_VALIDITY_DAYS: i64 = 5 * 365;
const NODE_VALIDITY_DAYS: i64 = 397;

/// The host names every loopback development certificate is valid for.
pub fn loopback_hosts() -> Vec<String> {
    vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ]
}

/// A development certificate authority.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
    key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// A certificate and its private key, as PEM.
pub struct IssuedCertificate {
    pub certificate_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<DevCa, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            certificate_pem: certificate.pem(),
            key_pem,
        })
    }

    /// Loads a CA written by [`DevCa::write`] from `dir`.
    pub fn load(dir: &Path) -> Result<DevCa, PkiError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| PkiError::Read { path, source })
        };
        let certificate_pem = read(CA_CERT_FILE)?;
        let key_pem = Zeroizing::new(read(CA_KEY_FILE)?);
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key)?;
        Ok(DevCa {
            issuer,
            certificate_pem,
            key_pem,
        })
    }

    /// Writes `ca.crt` (0644) and `ca.key` (0600) into `dir`, creating it.
    /// Refuses to overwrite an existing CA key.
    pub fn write(&self, dir: &Path) -> Result<(), PkiError> {
        create_dir(dir)?;
        write_private_file(&dir.join(CA_KEY_FILE), self.key_pem.as_bytes())?;
        write_public_file(&dir.join(CA_CERT_FILE), self.certificate_pem.as_bytes())?;
        Ok(())
    }

    /// The CA certificate as PEM: what nodes put in `peer.trust_roots`.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Issues a node certificate for `common_name`, valid for `hosts`
    /// (DNS names or IP addresses), usable as TLS server and client.
    pub fn issue_node(
        &self,
        common_name: &str,
        hosts: &[String],
    ) -> Result<IssuedCertificate, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name);
        params.subject_alt_names = hosts
            .iter()
            .map(|host| san(host))
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_VALIDITY_DAYS);
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

impl IssuedCertificate {
    /// Writes the certificate (0644) and key (0600). Refuses to overwrite a key.
    pub fn write(&self, certificate: &Path, key: &Path) -> Result<(), PkiError> {
        write_private_file(key, self.key_pem.as_bytes())?;
        write_public_file(certificate, self.certificate_pem.as_bytes())?;
        Ok(())
    }
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, "Samvirke development PKI");
    name
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    // Start an hour back so small clock differences between nodes do not
    // make a fresh certificate "not yet valid".
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn san(host: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_dns = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid_dns {
        return Err(PkiError::BadHost(host.to_string()));
    }
    let name = host
        .to_string()
        .try_into()
        .map_err(|_| PkiError::BadHost(host.to_string()))?;
    Ok(SanType::DnsName(name))
}

/// Creates `dir` (and parents) if missing.
pub(crate) fn create_dir(dir: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| {
        PkiError::Files(IdentityError::Write {
            path: dir.to_path_buf(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_written_ca_loads_back_and_issues_certificates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = DevCa::generate("Test CA").expect("ca");
        ca.write(dir.path()).expect("write");
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = DevCa::load(dir.path()).expect("load");
        let issued = loaded
            .issue_node("Aarhus Kommune", &loopback_hosts())
            .expect("issue");
        assert!(issued.certificate_pem.contains("BEGIN CERTIFICATE"));
        assert!(ca.write(dir.path()).is_err(), "must not overwrite a CA key");
    }

    #[test]
    fn bad_host_names_are_named() {
        let ca = DevCa::generate("Test CA").expect("ca");
        let err = ca
            .issue_node("x", &["bad host!".to_string()])
            .expect_err("bad host");
        assert!(err.to_string().contains("bad host!"));
    }
}
