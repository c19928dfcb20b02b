//! The node's configuration: one TOML file, documented key by key in
//! `deploy/node.example.toml`.
//!
//! Loading is two passes. Serde parses the file strictly (unknown keys are
//! errors, because a misspelt security setting must never be silently
//! ignored); then [`Config::load`] checks meaning: addresses parse, files
//! exist, tokens are well-formed. Every error names the file and the key, so
//! an operator can fix it without reading code. Relative paths are resolved
//! against the directory of the config file, so a node directory can be
//! moved as a whole.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use crate::local::auth::{Role, TokenHash};

/// A configuration problem. Every variant names the file; semantic errors
/// also name the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

// ---- The file as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    peer: RawPeer,
    local: RawLocal,
    #[serde(default)]
    governance: RawGovernance,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    log: RawLog,
    /// Absent: no HTTP API.
    #[serde(default)]
    http: Option<RawHttp>,
    /// OS2iot HTTP push and MQTT ingest.
    #[serde(default)]
    ingest: crate::ingest::config::RawIngest,
    /// Absent: no admin listener (`samvirke init` writes one).
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    catalog: RawCatalog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    public_url: Option<String>,
    #[serde(default)]
    contact_name: Option<String>,
    #[serde(default)]
    contact_email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_admin_listen")]
    listen: String,
}

fn default_true() -> bool {
    true
}

/// Loopback, on the port commonly given to a service's own exporter.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";

fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    #[serde(default)]
    tls: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    backend: StoreBackendName,
    #[serde(default = "default_cache_mib")]
    cache_mib: u64,
    url: Option<String>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pool_size: usize,
    ca_file: Option<PathBuf>,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            backend: StoreBackendName::default(),
            cache_mib: default_cache_mib(),
            url: None,
            password_file: None,
            pool_size: default_pool_size(),
            ca_file: None,
        }
    }
}

/// `store.backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreBackendName {
    #[default]
    Sled,
    Postgres,
}

/// Enough for the node's concurrent work (peer and local calls, ingest,
/// the audit writer) without crowding a shared database server.
fn default_pool_size() -> usize {
    16
}

/// Small by default: the store's page cache is what makes a node's memory
/// grow with its data, and reads of recent data stay fast with little.
fn default_cache_mib() -> u64 {
    16
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "default_checkpoint_interval_secs")]
    checkpoint_interval_secs: u64,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            checkpoint_interval_secs: default_checkpoint_interval_secs(),
        }
    }
}

fn default_checkpoint_interval_secs() -> u64 {
    300
}

fn default_request_skew_secs() -> u64 {
    300
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGovernance {
    #[serde(default = "default_sync_interval_secs")]
    sync_interval_secs: u64,
}

impl Default for RawGovernance {
    fn default() -> Self {
        RawGovernance {
            sync_interval_secs: default_sync_interval_secs(),
        }
    }
}

fn default_sync_interval_secs() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    municipality_code: u32,
    municipality_name: String,
    node_id: Uuid,
    data_dir: PathBuf,
    signing_key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    listen: String,
    #[serde(default)]
    advertised_endpoint: Option<String>,
    tls_certificate: PathBuf,
    tls_key: PathBuf,
    trust_roots: PathBuf,
    #[serde(default = "default_handshake_timeout_secs")]
    handshake_timeout_secs: u64,
    #[serde(default = "default_request_skew_secs")]
    request_skew_secs: u64,
    #[serde(default)]
    limits: RawLimits,
}

fn default_handshake_timeout_secs() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    listen: String,
    #[serde(default)]
    tls: bool,
    #[serde(default = "default_handshake_timeout_secs")]
    handshake_timeout_secs: u64,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    tokens: Vec<RawToken>,
}

/// `[peer.limits]` and `[local.limits]`: what one caller, and all callers
/// together, can make a listener spend. Unset keys take the listener's
/// defaults ([`Limits::peer_defaults`], [`Limits::local_defaults`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<u64>,
    max_connections_per_caller: Option<u64>,
    max_handshakes_per_address: Option<u64>,
    idle_timeout_secs: Option<u64>,
    max_streams_per_connection: Option<u64>,
    max_calls: Option<u64>,
    max_calls_per_caller: Option<u64>,
    call_timeout_secs: Option<u64>,
    send_timeout_secs: Option<u64>,
    answer_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    roles: Vec<Role>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
    #[serde(default)]
    level: Option<String>,
}

// ---- The validated config ------------------------------------------------

/// A loaded and checked node configuration. Paths are absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages).
    pub source: PathBuf,
    pub node: NodeConfig,
    pub peer: PeerConfig,
    pub local: LocalConfig,
    pub governance: GovernanceConfig,
    pub audit: AuditConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    /// `[http]`: the HTTP API for analysts' tools; `None` when off.
    pub http: Option<HttpConfig>,
    /// `[ingest]`: OS2iot HTTP-push endpoints and MQTT subscriptions.
    pub ingest: crate::ingest::config::IngestConfig,
    /// `[admin]`: metrics, health and the status page; `None` when off.
    pub admin: Option<AdminConfig>,
    /// `[catalog]`: how the catalog describes itself to open-data portals.
    pub catalog: CatalogConfig,
}

/// `[catalog]`: what the DCAT-AP-DK export says beyond the datasets
/// themselves. Every key is optional.
#[derive(Debug, Clone, Default)]
pub struct CatalogConfig {
    /// The HTTP API's base URL as analysts and portals reach it (e.g.
    /// behind a reverse proxy), without a trailing slash; `None`: the
    /// `[http]` listener's own address.
    pub public_url: Option<String>,
    /// Who answers questions about the datasets (a team, not a person's
    /// private address), and where.
    pub contact_name: Option<String>,
    pub contact_email: Option<String>,
}

/// `[admin]`: the plaintext, unauthenticated listener for Prometheus
/// `/metrics`, `/healthz`, `/readyz` and the read-only status page.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// `[http]`: the HTTP API for analysts' tools, on a listener of its own.
/// It takes the local API's tokens and `[local.limits]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Serve over TLS with the node's certificate.
    pub tls: bool,
}

/// `[store]`: where the node keeps its data.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of page cache the sled store may hold in memory.
    pub cache_bytes: u64,
    pub backend: StoreBackend,
}

/// Which store the node keeps its data in.
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// The embedded sled store in `node.data_dir/store`.
    Sled,
    /// A PostgreSQL database (several node processes may share one).
    Postgres(crate::store::postgres::PostgresOptions),
}

/// `[audit]`: the audit log.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// How often the node signs a checkpoint of its audit chain (when it
    /// grew); it also signs one when it stops.
    pub checkpoint_interval: Duration,
}

/// `[governance]`: how rosters and agreements spread between nodes.
#[derive(Debug, Clone)]
pub struct GovernanceConfig {
    /// How often the node compares documents with every partner, as a
    /// catch-up behind the immediate offer made on every import.
    pub sync_interval: Duration,
}

/// `[node]`: who this node is and where it keeps its state.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub municipality_code: u32,
    pub municipality_name: String,
    pub node_id: Uuid,
    pub data_dir: PathBuf,
    pub signing_key: PathBuf,
}

/// `[peer]`: the mutual-TLS listener partner nodes call.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub listen: SocketAddr,
    pub advertised_endpoint: Option<String>,
    pub tls_certificate: PathBuf,
    pub tls_key: PathBuf,
    pub trust_roots: PathBuf,
    pub handshake_timeout: Duration,
    /// How far a signed request's time may be from this node's clock.
    pub request_skew: Duration,
    pub limits: Limits,
}

/// `[local]`: the listener for the municipality's own users and apps.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub listen: SocketAddr,
    pub tls: bool,
    pub handshake_timeout: Duration,
    pub limits: Limits,
    pub tokens: Vec<TokenConfig>,
}

/// What one listener lets callers spend (see `deploy/node.example.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections on the listener.
    pub max_connections: usize,
    /// Open connections of one caller (a certificate on the peer listener,
    /// an address on the local one).
    pub max_connections_per_caller: usize,
    /// Handshakes in progress from one address.
    pub max_handshakes_per_address: usize,
    /// A connection with no call in progress for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams one connection may have open.
    pub max_streams_per_connection: u32,
    /// Calls in progress on the listener, and of one caller (a
    /// certificate on the peer listener, a token on the local one).
    pub max_calls: usize,
    pub max_calls_per_caller: usize,
    /// Longest a unary call (or a streaming call until its first answer)
    /// may take.
    pub call_timeout: Duration,
    /// A caller that takes no chunk of a streamed answer for this long
    /// loses the answer.
    pub send_timeout: Duration,
    /// Longest a streamed answer may last.
    pub answer_timeout: Duration,
}

impl Limits {
    /// Defaults for the peer listener: partners are few and machines.
    pub const fn peer_defaults() -> Limits {
        Limits {
            max_connections: 1024,
            max_connections_per_caller: 8,
            max_handshakes_per_address: 16,
            idle_timeout: Duration::from_secs(300),
            max_streams_per_connection: 32,
            max_calls: 256,
            max_calls_per_caller: 16,
            call_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            answer_timeout: Duration::from_secs(600),
        }
    }

    /// Defaults for the local listener: the municipality's own tools.
    pub const fn local_defaults() -> Limits {
        Limits {
            max_connections: 256,
            max_connections_per_caller: 64,
            max_handshakes_per_address: 64,
            idle_timeout: Duration::from_secs(300),
            max_streams_per_connection: 64,
            max_calls: 256,
            max_calls_per_caller: 32,
            call_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            answer_timeout: Duration::from_secs(3600),
        }
    }
}

/// One `[[local.tokens]]` entry: a named bearer token, stored only as its hash.
#[derive(Clone)]
pub struct TokenConfig {
    pub name: String,
    pub hash: TokenHash,
    pub roles: Vec<Role>,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// `[log]`: format and level.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `samvirke_node=debug,info`.
    pub level: String,
}

impl Config {
    /// Reads, parses and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(path, &text)
    }

    /// Parses and checks config text as if read from `path` (relative paths
    /// in it are resolved against `path`'s directory).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let check = Checker {
            path,
            base: path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        check.config(raw)
    }
}

/// Semantic checks, each naming the key it is about.
struct Checker<'a> {
    path: &'a Path,
    base: PathBuf,
}

impl Checker<'_> {
    fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let ingest = crate::ingest::config::check(
            raw.ingest,
            &|path| self.resolve(path),
            raw.http.is_some(),
            raw.node.municipality_code,
        )
        .map_err(|(key, reason)| self.invalid(&key, reason))?;
        Ok(Config {
            source: self.path.to_path_buf(),
            node: self.node(raw.node)?,
            peer: self.peer(raw.peer)?,
            local: self.local(raw.local)?,
            governance: self.governance(raw.governance)?,
            audit: AuditConfig {
                checkpoint_interval: self.seconds(
                    "audit.checkpoint_interval_secs",
                    raw.audit.checkpoint_interval_secs,
                    1..=86_400,
                )?,
            },
            store: self.store(raw.store)?,
            log: LogConfig {
                format: raw.log.format,
                level: raw.log.level.unwrap_or_else(|| "info".to_string()),
            },
            http: match raw.http {
                None => None,
                Some(http) => Some(HttpConfig {
                    listen: self.address("http.listen", &http.listen)?,
                    tls: http.tls,
                }),
            },
            ingest,
            admin: match raw.admin {
                None => None,
                Some(admin) if !admin.enabled || admin.listen.trim().is_empty() => None,
                Some(admin) => Some(AdminConfig {
                    listen: self.address("admin.listen", &admin.listen)?,
                }),
            },
            catalog: self.catalog(raw.catalog)?,
        })
    }

    fn catalog(&self, raw: RawCatalog) -> Result<CatalogConfig, ConfigError> {
        let public_url = match raw.public_url {
            None => None,
            Some(url) => {
                let trimmed = url.trim().trim_end_matches('/');
                let rest = trimmed
                    .strip_prefix("https://")
                    .or_else(|| trimmed.strip_prefix("http://"));
                // A host must follow, and nothing that would break out of
                // an IRI in the exported document.
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/'))
                    || trimmed
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "<>\"{}|\\^`".contains(c))
                {
                    return Err(self.invalid(
                        "catalog.public_url",
                        format!(
                            "`{url}` is not an http:// or https:// URL with a host, e.g. \
                             https://data.aarhus.example/samvirke"
                        ),
                    ));
                }
                Some(trimmed.to_string())
            }
        };
        let text = |key: &str, value: Option<String>| -> Result<Option<String>, ConfigError> {
            match value.map(|v| v.trim().to_string()) {
                Some(v) if v.is_empty() || v.chars().count() > 200 => {
                    Err(self.invalid(key, "must be 1 to 200 characters (or left out)"))
                }
                other => Ok(other),
            }
        };
        let contact_name = text("catalog.contact_name", raw.contact_name)?;
        let contact_email = text("catalog.contact_email", raw.contact_email)?;
        if let Some(email) = &contact_email
            && (email.split('@').count() != 2
                || email.starts_with('@')
                || email.ends_with('@')
                || email
                    .chars()
                    .any(|c| c.is_whitespace() || "<>\"".contains(c)))
        {
            return Err(self.invalid(
                "catalog.contact_email",
                format!("`{email}` is not an e-mail address, e.g. data@aarhus.example"),
            ));
        }
        Ok(CatalogConfig {
            public_url,
            contact_name,
            contact_email,
        })
    }

    fn store(&self, raw: RawStore) -> Result<StoreConfig, ConfigError> {
        let cache_bytes = self.cache_mib(raw.cache_mib)?;
        let backend = match raw.backend {
            StoreBackendName::Sled => {
                for (key, set) in [
                    ("store.url", raw.url.is_some()),
                    ("store.password_file", raw.password_file.is_some()),
                    ("store.ca_file", raw.ca_file.is_some()),
                ] {
                    if set {
                        return Err(
                            self.invalid(key, "is for backend = \"postgres\"; this store is sled")
                        );
                    }
                }
                StoreBackend::Sled
            }
            StoreBackendName::Postgres => {
                let url = raw.url.ok_or_else(|| {
                    self.invalid(
                        "store.url",
                        "is required with backend = \"postgres\" \
                         (e.g. \"postgresql://samvirke@db.internal:5432/samvirke\")",
                    )
                })?;
                if url
                    .parse::<tokio_postgres::Config>()
                    .map_err(|e| self.invalid("store.url", e.to_string()))?
                    .get_password()
                    .is_some()
                {
                    return Err(self.invalid(
                        "store.url",
                        "holds a password; put it in store.password_file (kept 0600) instead",
                    ));
                }
                if !(1..=256).contains(&raw.pool_size) {
                    return Err(self.invalid(
                        "store.pool_size",
                        format!("{} is outside 1-256", raw.pool_size),
                    ));
                }
                let password = match raw.password_file {
                    None => None,
                    Some(path) => {
                        let path = self.resolve(&path);
                        Some(
                            crate::store::postgres::read_password_file(&path)
                                .map_err(|e| self.invalid("store.password_file", e.to_string()))?,
                        )
                    }
                };
                StoreBackend::Postgres(crate::store::postgres::PostgresOptions {
                    url,
                    password,
                    pool_size: raw.pool_size,
                    ca_file: raw.ca_file.map(|p| self.resolve(&p)),
                })
            }
        };
        Ok(StoreConfig {
            cache_bytes,
            backend,
        })
    }

    fn cache_mib(&self, mib: u64) -> Result<u64, ConfigError> {
        if !(1..=65_536).contains(&mib) {
            return Err(self.invalid("store.cache_mib", format!("{mib} is outside 1-65536 (MiB)")));
        }
        Ok(mib * 1024 * 1024)
    }

    fn node(&self, raw: RawNode) -> Result<NodeConfig, ConfigError> {
        // Danish kommunekoder run from 101 (Copenhagen) to 860 (Hjoerring);
        // regions and other members use codes in the same three-digit space.
        if !(100..=999).contains(&raw.municipality_code) {
            return Err(self.invalid(
                "node.municipality_code",
                format!(
                    "{} is not a three-digit municipality code (100-999)",
                    raw.municipality_code
                ),
            ));
        }
        if raw.municipality_name.trim().is_empty() {
            return Err(self.invalid("node.municipality_name", "must not be empty"));
        }
        if raw.node_id.is_nil() {
            return Err(self.invalid("node.node_id", "must not be the nil UUID"));
        }
        Ok(NodeConfig {
            municipality_code: raw.municipality_code,
            municipality_name: raw.municipality_name,
            node_id: raw.node_id,
            data_dir: self.resolve(&raw.data_dir),
            signing_key: self.existing_file("node.signing_key", &raw.signing_key)?,
        })
    }

    fn peer(&self, raw: RawPeer) -> Result<PeerConfig, ConfigError> {
        if let Some(endpoint) = &raw.advertised_endpoint
            && !endpoint.starts_with("https://")
        {
            return Err(self.invalid(
                "peer.advertised_endpoint",
                format!("`{endpoint}` must be an https:// URL (peers always use mutual TLS)"),
            ));
        }
        Ok(PeerConfig {
            listen: self.address("peer.listen", &raw.listen)?,
            advertised_endpoint: raw.advertised_endpoint,
            tls_certificate: self.existing_file("peer.tls_certificate", &raw.tls_certificate)?,
            tls_key: self.existing_file("peer.tls_key", &raw.tls_key)?,
            trust_roots: self.existing_file("peer.trust_roots", &raw.trust_roots)?,
            handshake_timeout: self.seconds(
                "peer.handshake_timeout_secs",
                raw.handshake_timeout_secs,
                1..=300,
            )?,
            request_skew: self.seconds(
                "peer.request_skew_secs",
                raw.request_skew_secs,
                5..=3_600,
            )?,
            limits: self.limits("peer.limits", raw.limits, Limits::peer_defaults())?,
        })
    }

    fn seconds(
        &self,
        key: &str,
        value: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        if !range.contains(&value) {
            return Err(self.invalid(
                key,
                format!("{value} is outside {}..={}", range.start(), range.end()),
            ));
        }
        Ok(Duration::from_secs(value))
    }

    fn count(
        &self,
        key: &str,
        value: Option<u64>,
        default: usize,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<usize, ConfigError> {
        match value {
            None => Ok(default),
            Some(v) if range.contains(&v) => Ok(usize::try_from(v).unwrap_or(usize::MAX)),
            Some(v) => Err(self.invalid(
                key,
                format!("{v} is outside {}..={}", range.start(), range.end()),
            )),
        }
    }

    fn limits(&self, table: &str, raw: RawLimits, defaults: Limits) -> Result<Limits, ConfigError> {
        let key = |name: &str| format!("{table}.{name}");
        let secs = |name: &str, value: Option<u64>, default: Duration, max: u64| match value {
            None => Ok(default),
            Some(v) => self.seconds(&key(name), v, 1..=max),
        };
        let limits = Limits {
            max_connections: self.count(
                &key("max_connections"),
                raw.max_connections,
                defaults.max_connections,
                1..=1_000_000,
            )?,
            max_connections_per_caller: self.count(
                &key("max_connections_per_caller"),
                raw.max_connections_per_caller,
                defaults.max_connections_per_caller,
                1..=1_000_000,
            )?,
            max_handshakes_per_address: self.count(
                &key("max_handshakes_per_address"),
                raw.max_handshakes_per_address,
                defaults.max_handshakes_per_address,
                1..=1_000_000,
            )?,
            idle_timeout: secs(
                "idle_timeout_secs",
                raw.idle_timeout_secs,
                defaults.idle_timeout,
                86_400,
            )?,
            max_streams_per_connection: u32::try_from(self.count(
                &key("max_streams_per_connection"),
                raw.max_streams_per_connection,
                defaults.max_streams_per_connection as usize,
                1..=10_000,
            )?)
            .unwrap_or(u32::MAX),
            max_calls: self.count(
                &key("max_calls"),
                raw.max_calls,
                defaults.max_calls,
                1..=1_000_000,
            )?,
            max_calls_per_caller: self.count(
                &key("max_calls_per_caller"),
                raw.max_calls_per_caller,
                defaults.max_calls_per_caller,
                1..=1_000_000,
            )?,
            call_timeout: secs(
                "call_timeout_secs",
                raw.call_timeout_secs,
                defaults.call_timeout,
                3_600,
            )?,
            send_timeout: secs(
                "send_timeout_secs",
                raw.send_timeout_secs,
                defaults.send_timeout,
                3_600,
            )?,
            answer_timeout: secs(
                "answer_timeout_secs",
                raw.answer_timeout_secs,
                defaults.answer_timeout,
                86_400,
            )?,
        };
        if limits.max_connections_per_caller > limits.max_connections {
            return Err(self.invalid(
                &key("max_connections_per_caller"),
                "is more than max_connections",
            ));
        }
        if limits.max_calls_per_caller > limits.max_calls {
            return Err(self.invalid(&key("max_calls_per_caller"), "is more than max_calls"));
        }
        Ok(limits)
    }

    fn governance(&self, raw: RawGovernance) -> Result<GovernanceConfig, ConfigError> {
        if !(1..=3600).contains(&raw.sync_interval_secs) {
            return Err(self.invalid(
                "governance.sync_interval_secs",
                format!("{} is outside 1..=3600", raw.sync_interval_secs),
            ));
        }
        Ok(GovernanceConfig {
            sync_interval: Duration::from_secs(raw.sync_interval_secs),
        })
    }

    fn local(&self, raw: RawLocal) -> Result<LocalConfig, ConfigError> {
        let listen = self.address("local.listen", &raw.listen)?;
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut tokens = Vec::with_capacity(raw.tokens.len());
        for (index, token) in raw.tokens.into_iter().enumerate() {
            let key = |field: &str| format!("local.tokens[{index}].{field}");
            if token.name.trim().is_empty() {
                return Err(self.invalid(&key("name"), "must not be empty"));
            }
            if !names.insert(token.name.clone()) {
                return Err(self.invalid(
                    &key("name"),
                    format!("token name `{}` is used twice", token.name),
                ));
            }
            let hash = TokenHash::from_hex(&token.sha256).map_err(|reason| {
                self.invalid(
                    &key("sha256"),
                    format!("{reason} (make one with `samvirke token new`)"),
                )
            })?;
            if !hashes.insert(hash) {
                return Err(self.invalid(&key("sha256"), "the same token hash is listed twice"));
            }
            if token.roles.is_empty() {
                return Err(self.invalid(
                    &key("roles"),
                    "must name at least one of read, ingest, admin",
                ));
            }
            tokens.push(TokenConfig {
                name: token.name,
                hash,
                roles: token.roles,
            });
        }
        Ok(LocalConfig {
            listen,
            tls: raw.tls,
            handshake_timeout: self.seconds(
                "local.handshake_timeout_secs",
                raw.handshake_timeout_secs,
                1..=300,
            )?,
            limits: self.limits("local.limits", raw.limits, Limits::local_defaults())?,
            tokens,
        })
    }

    fn address(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.invalid(
                key,
                format!("`{value}` is not a socket address like 127.0.0.1:7443 or [::]:7443"),
            )
        })
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn existing_file(&self, key: &str, path: &Path) -> Result<PathBuf, ConfigError> {
        let resolved = self.resolve(path);
        match std::fs::metadata(&resolved) {
            Ok(meta) if meta.is_file() => Ok(resolved),
            Ok(_) => Err(self.invalid(key, format!("{} is not a file", resolved.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.invalid(key, format!("file {} does not exist", resolved.display())))
            }
            Err(e) => Err(self.invalid(key, format!("cannot read {}: {e}", resolved.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for file in ["signing.pem", "node.crt", "node.key", "ca.crt"] {
            std::fs::write(dir.path().join(file), "x").expect("write");
        }
        dir
    }

    fn text(extra_peer: &str) -> String {
        format!(
            r#"
[node]
municipality_code = 751
municipality_name = "Aarhus Kommune"
node_id = "0199b5a4-6f2e-7c4d-9d6e-8f1a2b3c4d5e"
data_dir = "data"
signing_key = "signing.pem"

[peer]
listen = "127.0.0.1:7443"
tls_certificate = "node.crt"
tls_key = "node.key"
trust_roots = "ca.crt"
{extra_peer}

[local]
listen = "127.0.0.1:7080"
[[local.tokens]]
name = "operator"
sha256 = "{hash}"
roles = ["admin"]
"#,
            hash = "ab".repeat(32)
        )
    }

    #[test]
    fn a_good_config_loads_with_paths_resolved_against_its_directory() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let config = Config::from_toml(&path, &text("")).expect("valid");
        assert_eq!(config.node.data_dir, dir.path().join("data"));
        assert_eq!(config.peer.tls_key, dir.path().join("node.key"));
        assert_eq!(config.local.tokens[0].roles, vec![Role::Admin]);
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn the_documented_example_uses_only_known_keys() {
        let text = include_str!("../../deploy/node.example.toml");
        let raw: RawConfig = toml::from_str(text).expect("deploy/node.example.toml parses");
        assert_eq!(raw.local.tokens.len(), 2);
        assert!(raw.http.is_some(), "the [http] section is documented");
        let admin = raw.admin.expect("the [admin] section is documented");
        assert_eq!(
            admin.listen, DEFAULT_ADMIN_LISTEN,
            "the example shows the default"
        );
        assert!(admin.enabled);
        assert!(
            raw.catalog.public_url.is_some()
                && raw.catalog.contact_name.is_some()
                && raw.catalog.contact_email.is_some(),
            "the [catalog] section is documented"
        );
    }

    #[test]
    fn a_postgres_store_needs_a_url_and_a_private_password_file() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let config = Config::from_toml(
            &path,
            &text("[store]\nbackend = \"postgres\"\nurl = \"postgresql://samvirke@db/samvirke\"\n"),
        )
        .expect("valid");
        let StoreBackend::Postgres(options) = &config.store.backend else {
            panic!("postgres: {:?}", config.store.backend);
        };
        assert_eq!(options.url, "postgresql://samvirke@db/samvirke");
        assert_eq!(options.pool_size, 16);

        let err = Config::from_toml(&path, &text("[store]\nbackend = \"postgres\"\n"))
            .expect_err("no url");
        assert!(err.to_string().contains("store.url"), "{err}");
        let err = Config::from_toml(&path, &text("[store]\nurl = \"postgresql://db/x\"\n"))
            .expect_err("url on sled");
        assert!(err.to_string().contains("store.url"), "{err}");

        use std::os::unix::fs::PermissionsExt;
        let secret = dir.path().join("db-password");
        std::fs::write(&secret, "s3cret\n").expect("write");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let with_file = text(
            "[store]\nbackend = \"postgres\"\nurl = \"postgresql://samvirke@db/x\"\npassword_file = \"db-password\"\n",
        );
        let err = Config::from_toml(&path, &with_file).expect_err("readable by others");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = Config::from_toml(&path, &with_file).expect("private file");
        let StoreBackend::Postgres(options) = &config.store.backend else {
            panic!("postgres");
        };
        assert_eq!(
            options.password.as_deref().map(String::as_str),
            Some("s3cret")
        );
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the password is never in debug output"
        );
    }

    #[test]
    fn an_unknown_key_is_named() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let err = Config::from_toml(&path, &text("colour = \"blue\"")).expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("colour"), "{message}");
        assert!(message.contains("node.toml"), "{message}");
    }

    #[test]
    fn a_bad_address_names_the_key() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let bad = text("").replace("127.0.0.1:7443", "not-an-address");
        let err = Config::from_toml(&path, &bad).expect_err("bad address");
        assert!(err.to_string().contains("key `peer.listen`"), "{err}");
    }

    #[test]
    fn the_store_cache_is_small_by_default_and_bounded() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let config = Config::from_toml(&path, &text("")).expect("valid");
        assert_eq!(config.store.cache_bytes, 16 * 1024 * 1024);
        let sized = format!("{}\n[store]\ncache_mib = 64\n", text(""));
        let config = Config::from_toml(&path, &sized).expect("valid");
        assert_eq!(config.store.cache_bytes, 64 * 1024 * 1024);
        let zero = format!("{}\n[store]\ncache_mib = 0\n", text(""));
        let err = Config::from_toml(&path, &zero).expect_err("no cache");
        assert!(err.to_string().contains("key `store.cache_mib`"), "{err}");
    }

    #[test]
    fn the_http_api_is_off_unless_configured() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let config = Config::from_toml(&path, &text("")).expect("loads");
        assert!(config.http.is_none());
        let on = format!("{}\n[http]\nlisten = \"127.0.0.1:7081\"\n", text(""));
        let config = Config::from_toml(&path, &on).expect("loads");
        let http = config.http.expect("on");
        assert_eq!((http.listen.port(), http.tls), (7081, false));
        let bad = on.replace("127.0.0.1:7081", "nowhere");
        let err = Config::from_toml(&path, &bad).expect_err("bad address");
        assert!(err.to_string().contains("key `http.listen`"), "{err}");
    }

    #[test]
    fn the_admin_listener_is_loopback_by_default_and_can_be_turned_off() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let config = Config::from_toml(&path, &text("")).expect("loads");
        assert!(config.admin.is_none(), "absent section: off");
        let on = format!("{}\n[admin]\n", text(""));
        let admin = Config::from_toml(&path, &on)
            .expect("loads")
            .admin
            .expect("on");
        assert!(admin.listen.ip().is_loopback());
        assert_eq!(admin.listen.port(), 9464);
        for off in [
            "listen = \"\"",
            "enabled = false",
            "enabled = false\nlisten = \"0.0.0.0:1\"",
        ] {
            let text = format!("{}\n[admin]\n{off}\n", text(""));
            let config = Config::from_toml(&path, &text).expect("loads");
            assert!(config.admin.is_none(), "{off}");
        }
        let bad = format!("{}\n[admin]\nlisten = \"everywhere\"\n", text(""));
        let err = Config::from_toml(&path, &bad).expect_err("bad address");
        assert!(err.to_string().contains("key `admin.listen`"), "{err}");
        let unknown = format!("{}\n[admin]\ntoken = \"x\"\n", text(""));
        let err = Config::from_toml(&path, &unknown).expect_err("unknown key");
        assert!(err.to_string().contains("token"), "{err}");
    }

    #[test]
    fn catalog_keys_are_checked_and_named() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let config = Config::from_toml(&path, &text("")).expect("loads");
        assert!(config.catalog.public_url.is_none());
        let good = format!(
            "{}\n[catalog]\npublic_url = \"https://data.aarhus.example/samvirke/\"\n\
             contact_name = \"Data team\"\ncontact_email = \"data@aarhus.example\"\n",
            text("")
        );
        let config = Config::from_toml(&path, &good).expect("loads");
        assert_eq!(
            config.catalog.public_url.as_deref(),
            Some("https://data.aarhus.example/samvirke"),
            "the trailing slash is dropped"
        );
        for (bad, key) in [
            ("public_url = \"ftp://x\"", "catalog.public_url"),
            ("public_url = \"https://\"", "catalog.public_url"),
            (
                "public_url = \"https://a.example/\\\"><x\"",
                "catalog.public_url",
            ),
            ("contact_email = \"nobody\"", "catalog.contact_email"),
            ("contact_name = \" \"", "catalog.contact_name"),
        ] {
            let text = format!("{}\n[catalog]\n{bad}\n", text(""));
            let err = Config::from_toml(&path, &text).expect_err(bad);
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn a_missing_key_file_names_the_key_and_the_file() {
        let dir = node_dir();
        std::fs::remove_file(dir.path().join("node.key")).expect("rm");
        let path = dir.path().join("node.toml");
        let err = Config::from_toml(&path, &text("")).expect_err("missing file");
        let message = err.to_string();
        assert!(message.contains("key `peer.tls_key`"), "{message}");
        assert!(message.contains("node.key"), "{message}");
    }

    #[test]
    fn a_malformed_token_hash_names_the_token() {
        let dir = node_dir();
        let path = dir.path().join("node.toml");
        let bad = text("").replace(&"ab".repeat(32), "abc");
        let err = Config::from_toml(&path, &bad).expect_err("bad hash");
        assert!(err.to_string().contains("local.tokens[0].sha256"), "{err}");
    }
}
