//! Creating a node directory: the layout `samvirke init`, the demo and the
//! tests all use, so there is one way a node is set up.
//!
//! ```text
//! node.toml             config (see deploy/node.example.toml)
//! keys/signing.pem      Ed25519 signing key, 0600
//! tls/node.crt          TLS certificate chain (from `samvirke pki issue` or your CA)
//! tls/node.key          TLS private key, 0600
//! tls/trust-roots.pem   CA certificates partners' certificates must chain to
//! data/                 the store, created at first start
//! ```

use std::path::{Path, PathBuf};

use uuid::Uuid;
use zeroize::Zeroizing;

use crate::identity::{
    IdentityError, generate_signing_key, signing_key_text, write_public_file, write_signing_key,
};
use crate::local::auth::generate_token;
use crate::pki::{DevCa, PkiError};

/// Config file name inside a node directory.
pub const CONFIG_FILE: &str = "node.toml";
/// Signing key path inside a node directory.
pub const SIGNING_KEY_FILE: &str = "keys/signing.pem";
/// TLS certificate path inside a node directory.
pub const TLS_CERT_FILE: &str = "tls/node.crt";
/// TLS key path inside a node directory.
pub const TLS_KEY_FILE: &str = "tls/node.key";
/// Trust roots path inside a node directory.
pub const TRUST_ROOTS_FILE: &str = "tls/trust-roots.pem";

/// Problems creating a node directory.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0} already holds a node config; refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot draw random bytes from the operating system: {0}")]
    Random(String),
}

/// What the new node is.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub municipality_code: u32,
    pub municipality_name: String,
    /// Peer listener address, e.g. `0.0.0.0:7443`.
    pub peer_listen: String,
    /// Local listener address, e.g. `127.0.0.1:7080`.
    pub local_listen: String,
    /// How partners reach this node, e.g. `https://samvirke.aarhus.dk:7443`.
    pub advertised_endpoint: Option<String>,
}

/// A created node directory.
pub struct Provisioned {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub node_id: Uuid,
    /// The signing public key in its fixed text form.
    pub signing_public_key: String,
    /// The first admin token. Shown once; only its hash is stored.
    pub admin_token: Zeroizing<String>,
}

impl std::fmt::Debug for Provisioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisioned")
            .field("dir", &self.dir)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

fn create_dir(path: &Path, mode: u32) -> Result<(), ProvisionError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|source| ProvisionError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Creates a node directory at `dir`: signing key, config with one admin
/// token, and the folders for TLS material and data.
pub fn init_node_dir(dir: &Path, spec: &NodeSpec) -> Result<Provisioned, ProvisionError> {
    let config_path = dir.join(CONFIG_FILE);
    if config_path.exists() {
        return Err(ProvisionError::AlreadyInitialised(dir.to_path_buf()));
    }
    create_dir(dir, 0o755)?;
    create_dir(&dir.join("keys"), 0o700)?;
    create_dir(&dir.join("tls"), 0o755)?;

    let signing_key = generate_signing_key()?;
    write_signing_key(&dir.join(SIGNING_KEY_FILE), &signing_key)?;
    let token = generate_token().map_err(|e| ProvisionError::Random(e.to_string()))?;
    let node_id = Uuid::now_v7();
    let text = config_text(spec, node_id, &token.hash.to_hex());
    write_public_file(&config_path, text.as_bytes())?;
    Ok(Provisioned {
        dir: dir.to_path_buf(),
        config_path,
        node_id,
        signing_public_key: signing_key_text(&signing_key.verifying_key()),
        admin_token: token.secret,
    })
}

/// Issues this node a certificate from a development CA for `hosts` and
/// installs it with the CA as trust root.
pub fn install_dev_certificate(
    dir: &Path,
    common_name: &str,
    ca: &DevCa,
    hosts: &[String],
) -> Result<(), ProvisionError> {
    let issued = ca.issue_node(common_name, hosts)?;
    issued.write(&dir.join(TLS_CERT_FILE), &dir.join(TLS_KEY_FILE))?;
    write_public_file(&dir.join(TRUST_ROOTS_FILE), ca.certificate_pem().as_bytes())?;
    Ok(())
}

fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

fn config_text(spec: &NodeSpec, node_id: Uuid, admin_hash: &str) -> String {
    let advertised = match &spec.advertised_endpoint {
        Some(url) => format!("advertised_endpoint = {}", toml_string(url)),
        None => "# advertised_endpoint = \"https://samvirke.example.dk:7443\"".to_string(),
    };
    format!(
        r#"# Samvirke node configuration. Every key is described in
# deploy/node.example.toml. Relative paths are relative to this file.

[node]
municipality_code = {code}
municipality_name = {name}
node_id = "{node_id}"
data_dir = "data"
signing_key = "{SIGNING_KEY_FILE}"

[peer]
listen = {peer_listen}
{advertised}
tls_certificate = "{TLS_CERT_FILE}"
tls_key = "{TLS_KEY_FILE}"
trust_roots = "{TRUST_ROOTS_FILE}"

[local]
listen = {local_listen}

[[local.tokens]]
name = "admin"
sha256 = "{admin_hash}"
roles = ["admin"]

[log]
format = "text"
level = "info"
"#,
        code = spec.municipality_code,
        name = toml_string(&spec.municipality_name),
        peer_listen = toml_string(&spec.peer_listen),
        local_listen = toml_string(&spec.local_listen),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pki::loopback_hosts;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_provisioned_directory_loads_as_a_valid_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node_dir = dir.path().join("aarhus");
        let spec = NodeSpec {
            municipality_code: 751,
            municipality_name: "Aarhus Kommune".into(),
            peer_listen: "127.0.0.1:0".into(),
            local_listen: "127.0.0.1:0".into(),
            advertised_endpoint: None,
        };
        let made = init_node_dir(&node_dir, &spec).expect("init");
        let ca = DevCa::generate("Test CA").expect("ca");
        install_dev_certificate(&node_dir, "Aarhus Kommune", &ca, &loopback_hosts())
            .expect("certs");
        let config = Config::load(&made.config_path).expect("config loads");
        assert_eq!(config.node.node_id, made.node_id);
        assert!(made.admin_token.starts_with("svk_"));
        for key in [SIGNING_KEY_FILE, TLS_KEY_FILE] {
            let mode = std::fs::metadata(node_dir.join(key))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        assert!(matches!(
            init_node_dir(&node_dir, &spec),
            Err(ProvisionError::AlreadyInitialised(_))
        ));
    }
}
