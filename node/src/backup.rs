//! Backups of a running node, and restoring one into a fresh data directory.
//!
//! **Consistency.** The node's store is one sled database, and sled 0.34 has
//! no point-in-time snapshot across trees: exporting tree after tree while
//! ingest runs could catch readings without their sensor index, or an audit
//! entry without the batch it records. So the running node takes the
//! snapshot itself ([`spool`], behind the admin-only `Local/Backup` RPC):
//! [`Store::snapshot`] lets no write in while every keyspace is copied to
//! an unnamed spool file in the data directory (disk speed; writers wait,
//! readers do not), then the node streams the spool to the client at the
//! client's pace with writes flowing again. The node signs an audit
//! checkpoint for the snapshot's last audit entry, so a restore can verify
//! the whole chain with the node's public key.
//!
//! **What a backup directory holds** ([`fetch`], `samvirke-node backup`):
//! `store.snapshot` (every keyspace: data, governance, audit, receipts,
//! budgets, nonces, records), `config/` (the node's config, its TLS
//! certificate and trust roots: what is needed to run the node again and
//! is no secret), and `MANIFEST.toml`, written last, with the node's
//! identity, per-keyspace entry counts and SHA-256 digests, the signed
//! checkpoint and a digest of every file. Private keys are secrets and are
//! left out unless asked for (`--include-keys`, written 0600 under
//! `keys/`): a backup usually travels to places keys should not. Every
//! file is 0600 and the directory 0700: the store holds personal data.
//!
//! **Restore** ([`restore`], `samvirke-node restore`) checks everything
//! before it writes anything: the manifest, every digest, each keyspace's
//! count and digest, and the audit chain (the same check as
//! `samvirke audit verify`, against the signed checkpoint); only then does
//! it fill a new or empty data directory, and it counts again afterwards.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::audit::chain::{self, Checkpoint};
use crate::audit::{VerifyError, verify_export};
use crate::config::Config;
use crate::identity::{NodeIdentity, parse_signing_key_text, signing_key_text};
use crate::store::{Keyspace, SCHEMA_VERSION, SledStore, Store, StoreError, WriteBatch};
use samvirke_proto::v1 as pb;

/// The manifest, written last: a backup without one is incomplete.
pub const MANIFEST_FILE: &str = "MANIFEST.toml";
/// The store snapshot inside a backup directory.
pub const STORE_FILE: &str = "store.snapshot";
const MANIFEST_FORMAT: &str = "samvirke-backup";
const MANIFEST_VERSION: u32 = 1;
/// First bytes of a snapshot file.
const MAGIC: &[u8] = b"SAMVIRKE-SNAPSHOT 1\n";
/// The byte after the last record.
const END: u8 = 0xFF;
/// Largest key or value a snapshot record may declare: far above anything
/// the node writes, and it keeps a damaged length from asking for gigabytes.
const MAX_FIELD: u32 = 64 * 1024 * 1024;
/// Entries written per batch on restore.
const RESTORE_BATCH: usize = 4_096;
/// Bytes per `Backup` data message.
pub const CHUNK: usize = 256 * 1024;

/// Backup and restore failures. Each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path} is not empty; back up into a new or empty directory")]
    TargetNotEmpty { path: PathBuf },
    #[error(
        "data directory {path} is not empty; restore only into a new or empty directory \
         (nothing was changed)"
    )]
    DataDirNotEmpty { path: PathBuf },
    #[error("backup {path}: {reason} (nothing was restored)")]
    Invalid { path: PathBuf, reason: String },
    #[error("backup {path}: the audit chain does not verify: {source} (nothing was restored)")]
    Audit { path: PathBuf, source: VerifyError },
    #[error("a backup of this node is already being taken; try again when it has finished")]
    Busy,
    #[error("this node keeps no spool directory for backups")]
    Unavailable,
    #[error("{0}")]
    Node(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

// ---- The snapshot file -------------------------------------------------

/// One keyspace's part of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceSummary {
    pub entries: u64,
    /// SHA-256 (hex) of the keyspace's records as the file holds them.
    pub sha256: String,
}

/// What a snapshot holds, as the node states it and the manifest keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSummary {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub schema: u32,
    pub audit_entries: u64,
    /// The checkpoint line the node signed for the last audit entry.
    pub audit_checkpoint: String,
    pub keyspaces: BTreeMap<String, KeyspaceSummary>,
}

/// Running digests and counts while a snapshot file is written or read.
struct Tally {
    file: Sha256,
    bytes: u64,
    spaces: BTreeMap<&'static str, (u64, Sha256)>,
    /// Last audit entry: sequence number and the hash of its line.
    audit_head: Option<(u64, [u8; 32])>,
    audit_entries: u64,
}

impl Tally {
    fn new() -> Tally {
        let mut tally = Tally {
            file: Sha256::new(),
            bytes: 0,
            spaces: Keyspace::ALL
                .into_iter()
                .map(|space| (space.name(), (0, Sha256::new())))
                .collect(),
            audit_head: None,
            audit_entries: 0,
        };
        tally.raw(MAGIC);
        tally
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.file.update(bytes);
        self.bytes += bytes.len() as u64;
    }

    /// Counts one record; `record` is its bytes as framed in the file.
    fn record(&mut self, space: Keyspace, record: &[u8]) {
        self.raw(record);
        if let Some((count, hash)) = self.spaces.get_mut(space.name()) {
            *count += 1;
            hash.update(record);
        }
    }

    fn finish(self, schema: u32, checkpoint: String) -> SnapshotSummary {
        SnapshotSummary {
            file: STORE_FILE.to_string(),
            bytes: self.bytes,
            sha256: hex::encode(self.file.finalize()),
            schema,
            audit_entries: self.audit_entries,
            audit_checkpoint: checkpoint,
            keyspaces: self
                .spaces
                .into_iter()
                .map(|(name, (entries, hash))| {
                    (
                        name.to_string(),
                        KeyspaceSummary {
                            entries,
                            sha256: hex::encode(hash.finalize()),
                        },
                    )
                })
                .collect(),
        }
    }
}

fn space_index(space: Keyspace) -> u8 {
    // ALL has 13 entries, so the position always fits.
    Keyspace::ALL
        .iter()
        .position(|s| *s == space)
        .map_or(u8::MAX, |i| i as u8)
}

fn frame(space: Keyspace, key: &[u8], value: &[u8]) -> Result<Vec<u8>, StoreError> {
    let length = |field: &[u8]| {
        u32::try_from(field.len())
            .ok()
            .filter(|n| *n <= MAX_FIELD)
            .ok_or_else(|| StoreError::Backend("an entry is too large to back up".to_string()))
    };
    let mut record = Vec::with_capacity(9 + key.len() + value.len());
    record.push(space_index(space));
    record.extend_from_slice(&length(key)?.to_be_bytes());
    record.extend_from_slice(key);
    record.extend_from_slice(&length(value)?.to_be_bytes());
    record.extend_from_slice(value);
    Ok(record)
}

/// Takes a consistent snapshot of `store` into an unnamed file in `dir`
/// (gone when closed, even after a crash), and signs an audit checkpoint
/// for its last entry as `identity`. Returns the file, rewound, and what
/// it holds. Writes to the store wait while the snapshot is copied.
pub fn spool(
    store: &dyn Store,
    identity: &NodeIdentity,
    now: OffsetDateTime,
    dir: &Path,
) -> Result<(std::fs::File, SnapshotSummary), BackupError> {
    let mut file = tempfile::tempfile_in(dir).map_err(io(dir))?;
    let mut tally = Tally::new();
    {
        let mut out = BufWriter::with_capacity(1 << 20, &mut file);
        out.write_all(MAGIC).map_err(io(dir))?;
        store.snapshot(&mut |space, key, value| {
            let record = frame(space, key, value)?;
            out.write_all(&record).map_err(|e| StoreError::Io {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
            tally.record(space, &record);
            if space == Keyspace::Audit {
                let seq = <[u8; 8]>::try_from(key)
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Backend("an audit key is not a number".into()))?;
                tally.audit_head = Some((seq, chain::entry_hash(value)));
                tally.audit_entries += 1;
            }
            Ok(())
        })?;
        out.write_all(&[END]).map_err(io(dir))?;
        out.flush().map_err(io(dir))?;
    }
    tally.raw(&[END]);
    let checkpoint = match tally.audit_head {
        Some((seq, head)) => {
            let line = Checkpoint::sign(
                identity.signing_key(),
                identity.municipality_code,
                seq,
                &head,
                seq,
                now,
            )
            .line();
            String::from_utf8_lossy(&line).into_owned()
        }
        None => String::new(),
    };
    file.rewind().map_err(io(dir))?;
    Ok((file, tally.finish(store.schema_version(), checkpoint)))
}

/// The `Backup` RPC's first message for a snapshot.
pub fn summary_to_proto(
    summary: &SnapshotSummary,
    identity: &NodeIdentity,
    taken_at: OffsetDateTime,
) -> pb::BackupSummary {
    pb::BackupSummary {
        schema: summary.schema,
        bytes: summary.bytes,
        sha256: summary.sha256.clone(),
        keyspaces: summary
            .keyspaces
            .iter()
            .map(|(name, k)| pb::BackupKeyspace {
                name: name.clone(),
                entries: k.entries,
                sha256: k.sha256.clone(),
            })
            .collect(),
        audit_entries: summary.audit_entries,
        audit_checkpoint: summary.audit_checkpoint.clone(),
        taken_at: Some(crate::wire::timestamp(taken_at)),
        signing_key: signing_key_text(&identity.verifying_key()),
        municipality_code: identity.municipality_code,
        node_id: identity.node_id.to_string(),
    }
}

/// Reads a snapshot file, checking its framing, and calls `visit` for each
/// record; returns the tally of what it read. `visit` sees keyspaces the
/// file names by position in [`Keyspace::ALL`].
fn read_snapshot(
    path: &Path,
    mut visit: impl FnMut(Keyspace, Vec<u8>, Vec<u8>) -> Result<(), BackupError>,
) -> Result<Tally, BackupError> {
    let invalid = |reason: String| BackupError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = vec![0u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| invalid("not a Samvirke store snapshot (too short)".into()))?;
    if magic != MAGIC {
        return Err(invalid("not a Samvirke store snapshot".into()));
    }
    let mut tally = Tally::new();
    let mut previous: Option<(u8, Vec<u8>)> = None;
    loop {
        let mut tag = [0u8; 1];
        input
            .read_exact(&mut tag)
            .map_err(|_| invalid("the snapshot ends without its end mark".into()))?;
        if tag[0] == END {
            tally.raw(&tag);
            break;
        }
        let space = Keyspace::ALL
            .get(usize::from(tag[0]))
            .copied()
            .ok_or_else(|| invalid(format!("unknown keyspace number {}", tag[0])))?;
        let mut field = |what: &str| -> Result<Vec<u8>, BackupError> {
            let mut length = [0u8; 4];
            input
                .read_exact(&mut length)
                .map_err(|_| invalid(format!("the snapshot ends inside a {what}")))?;
            let length = u32::from_be_bytes(length);
            if length > MAX_FIELD {
                return Err(invalid(format!("a {what} of {length} bytes is too long")));
            }
            let mut bytes = vec![0u8; length as usize];
            input
                .read_exact(&mut bytes)
                .map_err(|_| invalid(format!("the snapshot ends inside a {what}")))?;
            Ok(bytes)
        };
        let key = field("key")?;
        let value = field("value")?;
        // Keys come in keyspace order, ascending: anything else is not
        // what a node wrote.
        if let Some((last_tag, last_key)) = &previous
            && (*last_tag > tag[0] || (*last_tag == tag[0] && *last_key >= key))
        {
            return Err(invalid(format!(
                "entries of keyspace `{}` are out of order",
                space.name()
            )));
        }
        let record = frame(space, &key, &value).map_err(|e| invalid(e.to_string()))?;
        tally.record(space, &record);
        previous = Some((tag[0], key.clone()));
        visit(space, key, value)?;
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest).map_err(io(path))? != 0 {
        return Err(invalid("bytes after the snapshot's end mark".into()));
    }
    Ok(tally)
}

// ---- The backup directory ------------------------------------------------

/// One file of a backup other than the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackedUpFile {
    /// Path inside the backup directory.
    pub path: String,
    /// Where it came from on the node.
    pub source: String,
    pub sha256: String,
    /// A private key (only with `--include-keys`).
    pub secret: bool,
}

/// `MANIFEST.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// When the node took the snapshot (RFC 3339).
    pub taken_at: String,
    pub municipality_code: u32,
    pub node_id: String,
    /// The node's public signing key, which verifies the audit checkpoint.
    pub signing_key: String,
    pub keys_included: bool,
    pub store: SnapshotSummary,
    #[serde(default)]
    pub files: Vec<BackedUpFile>,
}

/// Creates `dir` (0700) or checks it is an empty directory.
fn empty_directory(dir: &Path) -> Result<bool, BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io(dir)(e)),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// A new file readable only by its owner.
fn create_private_file(path: &Path) -> Result<std::fs::File, BackupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

fn sha256_file(path: &Path) -> Result<String, BackupError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash).map_err(io(path))?;
    Ok(hex::encode(hash.finalize()))
}

/// What `samvirke-node backup` is told.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// The node's local API, e.g. `http://127.0.0.1:7080`.
    pub endpoint: String,
    /// An admin token for it.
    pub token: zeroize::Zeroizing<String>,
    /// The backup directory (new or empty).
    pub to: PathBuf,
    /// Copy the node's private keys too (0600).
    pub include_keys: bool,
}

/// The local API address of `config` as a client on this machine reaches
/// it: a wildcard listen address is reached on loopback.
pub fn local_endpoint(config: &Config) -> String {
    let mut address = config.local.listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if config.local.tls { "https" } else { "http" };
    format!("{scheme}://{address}")
}

/// Takes a backup of the running node of `config` through its local API
/// into `request.to`, then copies its config files (and keys if asked).
/// The manifest is written last.
pub async fn fetch(config: &Config, request: &BackupRequest) -> Result<Manifest, BackupError> {
    use samvirke_proto::v1::local_client::LocalClient;
    let to = request.to.as_path();
    if !empty_directory(to)? {
        return Err(BackupError::TargetNotEmpty {
            path: to.to_path_buf(),
        });
    }
    let mut channel = tonic::transport::Endpoint::from_shared(request.endpoint.clone())
        .map_err(|e| BackupError::Node(format!("`{}` is not a URL: {e}", request.endpoint)))?;
    if config.local.tls {
        let roots = std::fs::read_to_string(&config.peer.trust_roots)
            .map_err(io(&config.peer.trust_roots))?;
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(roots));
        if let Some(host) = config
            .peer
            .advertised_endpoint
            .as_deref()
            .and_then(|url| url.parse::<http::Uri>().ok())
            .and_then(|uri| uri.host().map(str::to_string))
        {
            tls = tls.domain_name(host);
        }
        channel = channel
            .tls_config(tls)
            .map_err(|e| BackupError::Node(e.to_string()))?;
    }
    let channel = channel.connect().await.map_err(|e| {
        BackupError::Node(format!(
            "cannot reach the node at {}: {e}",
            request.endpoint
        ))
    })?;
    let mut bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {}", request.token.as_str())
            .parse()
            .map_err(|_| {
                BackupError::Node("the token has characters a header cannot carry".into())
            })?;
    bearer.set_sensitive(true);
    let mut client = LocalClient::with_interceptor(channel, move |mut call: tonic::Request<()>| {
        call.metadata_mut().insert("authorization", bearer.clone());
        Ok(call)
    });
    let refused = |status: tonic::Status| {
        BackupError::Node(format!(
            "{} refused the backup ({:?}): {}",
            request.endpoint,
            status.code(),
            status.message()
        ))
    };
    let mut stream = client
        .backup(pb::BackupRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    let summary = match stream.message().await.map_err(refused)? {
        Some(pb::BackupChunk {
            part: Some(pb::backup_chunk::Part::Summary(summary)),
        }) => summary,
        _ => {
            return Err(BackupError::Node(
                "the node's backup did not start with its summary".into(),
            ));
        }
    };
    create_private_dir(to)?;
    let store_path = to.join(STORE_FILE);
    let mut out = BufWriter::new(create_private_file(&store_path)?);
    let mut hash = Sha256::new();
    let mut bytes: u64 = 0;
    while let Some(chunk) = stream.message().await.map_err(refused)? {
        let Some(pb::backup_chunk::Part::Data(data)) = chunk.part else {
            return Err(BackupError::Node("the node sent a second summary".into()));
        };
        bytes += data.len() as u64;
        if bytes > summary.bytes {
            return Err(BackupError::Node(format!(
                "the node sent more than the {} bytes it announced",
                summary.bytes
            )));
        }
        hash.update(&data);
        out.write_all(&data).map_err(io(&store_path))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| io(&store_path)(e.into_error()))?;
    file.sync_all().map_err(io(&store_path))?;
    let digest = hex::encode(hash.finalize());
    if bytes != summary.bytes || digest != summary.sha256 {
        return Err(BackupError::Node(format!(
            "the snapshot arrived incomplete or changed ({bytes} of {} bytes, SHA-256 {digest}, \
             announced {}); the backup in {} is unusable",
            summary.bytes,
            summary.sha256,
            to.display()
        )));
    }

    let mut files = Vec::new();
    let mut copy = |source: &Path, name: &str, secret: bool| -> Result<(), BackupError> {
        let dir = if secret { "keys" } else { "config" };
        create_private_dir(&to.join(dir))?;
        let relative = format!("{dir}/{name}");
        let target = to.join(&relative);
        let contents = zeroize::Zeroizing::new(std::fs::read(source).map_err(io(source))?);
        let mut file = create_private_file(&target)?;
        file.write_all(&contents)
            .and_then(|()| file.sync_all())
            .map_err(io(&target))?;
        files.push(BackedUpFile {
            path: relative,
            source: source.display().to_string(),
            sha256: hex::encode(Sha256::digest(contents.as_slice())),
            secret,
        });
        Ok(())
    };
    copy(&config.source, "node.toml", false)?;
    copy(&config.peer.tls_certificate, "tls-certificate.pem", false)?;
    copy(&config.peer.trust_roots, "trust-roots.pem", false)?;
    if request.include_keys {
        copy(&config.node.signing_key, "signing.pem", true)?;
        copy(&config.peer.tls_key, "tls.key", true)?;
    }

    let taken_at = summary
        .taken_at
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        version: MANIFEST_VERSION,
        taken_at,
        municipality_code: summary.municipality_code,
        node_id: summary.node_id.clone(),
        signing_key: summary.signing_key.clone(),
        keys_included: request.include_keys,
        store: SnapshotSummary {
            file: STORE_FILE.to_string(),
            bytes: summary.bytes,
            sha256: summary.sha256.clone(),
            schema: summary.schema,
            audit_entries: summary.audit_entries,
            audit_checkpoint: summary.audit_checkpoint.clone(),
            keyspaces: summary
                .keyspaces
                .iter()
                .map(|k| {
                    (
                        k.name.clone(),
                        KeyspaceSummary {
                            entries: k.entries,
                            sha256: k.sha256.clone(),
                        },
                    )
                })
                .collect(),
        },
        files,
    };
    write_manifest(to, &manifest)?;
    Ok(manifest)
}

/// Writes `MANIFEST.toml` by write-then-rename, so a backup cut off
/// before this point has no manifest and is refused by restore.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let text = format!(
        "# A Samvirke node backup. Restore with: samvirke-node restore --from DIR --data-dir NEW\n{}",
        toml::to_string(manifest).map_err(|e| BackupError::Invalid {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?
    );
    let temporary = dir.join(format!("{MANIFEST_FILE}.tmp"));
    let _ = std::fs::remove_file(&temporary);
    let mut file = create_private_file(&temporary)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(&temporary))?;
    let target = dir.join(MANIFEST_FILE);
    std::fs::rename(&temporary, &target).map_err(io(&target))?;
    if let Ok(directory) = std::fs::File::open(dir) {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Reads and checks `MANIFEST.toml` of the backup in `dir`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| BackupError::Invalid {
        path: dir.to_path_buf(),
        reason: format!("cannot read {MANIFEST_FILE} ({e}); a backup without one is incomplete"),
    })?;
    let manifest: Manifest = toml::from_str(&text).map_err(|e| BackupError::Invalid {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if manifest.format != MANIFEST_FORMAT || manifest.version != MANIFEST_VERSION {
        return Err(BackupError::Invalid {
            path,
            reason: format!(
                "format `{}` version {} is not a backup this samvirke-node reads \
                 ({MANIFEST_FORMAT} version {MANIFEST_VERSION})",
                manifest.format, manifest.version
            ),
        });
    }
    Ok(manifest)
}

/// What a restore put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub manifest: Manifest,
    /// Entries per keyspace, counted in the restored store.
    pub entries: BTreeMap<String, u64>,
    /// Audit entries that verified against the node's signed checkpoint.
    pub audit_verified: u64,
}

/// Restores the backup in `from` into `data_dir`, which must be missing or
/// empty. `expected_key` (`ed25519:<hex>`, as the fellowship's roster
/// lists the node) is checked against the manifest's key when given, so a
/// backup forged wholesale under another key is refused. Everything is
/// checked before anything is written; a failure while writing removes
/// what was written.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    expected_key: Option<&str>,
) -> Result<Restored, BackupError> {
    let manifest = read_manifest(from)?;
    let invalid = |reason: String| BackupError::Invalid {
        path: from.to_path_buf(),
        reason,
    };
    if manifest.store.schema != SCHEMA_VERSION {
        return Err(invalid(format!(
            "its store is schema {}, and this samvirke-node restores schema {SCHEMA_VERSION}; \
             restore it with the version that made it, start the node once, then upgrade",
            manifest.store.schema
        )));
    }
    let key = parse_signing_key_text(&manifest.signing_key)
        .map_err(|e| invalid(format!("signing_key: {e}")))?;
    if let Some(expected) = expected_key {
        let expected =
            parse_signing_key_text(expected.trim()).map_err(|e| invalid(format!("--key: {e}")))?;
        if expected != key {
            return Err(invalid(format!(
                "it was made by the node with key {}, not {}",
                manifest.signing_key,
                signing_key_text(&expected)
            )));
        }
    }
    for file in &manifest.files {
        if file.path.contains("..") || file.path.starts_with('/') {
            return Err(invalid(format!(
                "file path `{}` leaves the backup",
                file.path
            )));
        }
        let digest = sha256_file(&from.join(&file.path))?;
        if digest != file.sha256 {
            return Err(invalid(format!(
                "{} was changed since the backup (SHA-256 differs)",
                file.path
            )));
        }
    }
    if manifest.store.file != STORE_FILE {
        return Err(invalid(format!(
            "store file `{}` is not `{STORE_FILE}`",
            manifest.store.file
        )));
    }
    let store_path = from.join(STORE_FILE);
    // Pass 1: check every byte and the audit chain, writing nothing. The
    // whole file's digest first, so damage anywhere (a length field too)
    // is reported as damage, not as whatever it makes the framing say.
    let digest = sha256_file(&store_path)?;
    if digest != manifest.store.sha256 {
        return Err(invalid(format!(
            "{STORE_FILE} was changed since the backup (SHA-256 {digest}, the manifest says {})",
            manifest.store.sha256
        )));
    }
    let mut audit_text = Vec::new();
    let tally = read_snapshot(&store_path, |space, _key, value| {
        if space == Keyspace::Audit {
            audit_text.extend_from_slice(&value);
            audit_text.push(b'\n');
        }
        Ok(())
    })?;
    check_tally(from, &manifest.store, tally)?;
    let audit_verified = if manifest.store.audit_entries == 0 {
        0
    } else {
        audit_text.extend_from_slice(manifest.store.audit_checkpoint.as_bytes());
        audit_text.push(b'\n');
        let verified = verify_export(&audit_text, &key).map_err(|source| BackupError::Audit {
            path: from.to_path_buf(),
            source,
        })?;
        if verified.first != 1 || verified.last != manifest.store.audit_entries {
            return Err(invalid(format!(
                "the audit chain holds entries {}..{}, the manifest says 1..{}",
                verified.first, verified.last, manifest.store.audit_entries
            )));
        }
        verified.last
    };
    drop(audit_text);

    // Pass 2: write.
    if !empty_directory(data_dir)? {
        return Err(BackupError::DataDirNotEmpty {
            path: data_dir.to_path_buf(),
        });
    }
    let existed = data_dir.exists();
    let written = write_store(&store_path, data_dir, &manifest);
    match written {
        Ok(entries) => Ok(Restored {
            manifest,
            entries,
            audit_verified,
        }),
        Err(error) => {
            // Leave the directory as it was: missing, or empty.
            if existed {
                if let Ok(entries) = std::fs::read_dir(data_dir) {
                    for entry in entries.flatten() {
                        let _ = std::fs::remove_dir_all(entry.path())
                            .or_else(|_| std::fs::remove_file(entry.path()));
                    }
                }
            } else {
                let _ = std::fs::remove_dir_all(data_dir);
            }
            Err(error)
        }
    }
}

fn check_tally(from: &Path, stated: &SnapshotSummary, tally: Tally) -> Result<(), BackupError> {
    let audit_entries = tally.audit_entries_in_file();
    let found = tally.finish(stated.schema, stated.audit_checkpoint.clone());
    let invalid = |reason: String| BackupError::Invalid {
        path: from.to_path_buf(),
        reason,
    };
    if found.bytes != stated.bytes || found.sha256 != stated.sha256 {
        return Err(invalid(format!(
            "{STORE_FILE} is not the snapshot the manifest describes ({} bytes, SHA-256 {}; \
             the manifest says {} bytes, {})",
            found.bytes, found.sha256, stated.bytes, stated.sha256
        )));
    }
    for (name, expected) in &stated.keyspaces {
        let got = found.keyspaces.get(name).cloned().unwrap_or_default();
        if got != *expected {
            return Err(invalid(format!(
                "keyspace `{name}` holds {} entries (SHA-256 {}); the manifest says {} ({})",
                got.entries, got.sha256, expected.entries, expected.sha256
            )));
        }
    }
    if audit_entries != stated.audit_entries {
        return Err(invalid(format!(
            "the snapshot holds {audit_entries} audit entries; the manifest says {}",
            stated.audit_entries
        )));
    }
    Ok(())
}

impl Tally {
    fn audit_entries_in_file(&self) -> u64 {
        self.spaces
            .get(Keyspace::Audit.name())
            .map_or(0, |(count, _)| *count)
    }
}

fn write_store(
    store_path: &Path,
    data_dir: &Path,
    manifest: &Manifest,
) -> Result<BTreeMap<String, u64>, BackupError> {
    let store = SledStore::open(data_dir)?;
    let mut pending: Option<(Keyspace, WriteBatch)> = None;
    let flush_batch = |pending: &mut Option<(Keyspace, WriteBatch)>| -> Result<(), BackupError> {
        if let Some((space, batch)) = pending.take()
            && !batch.ops.is_empty()
        {
            store.write(space, batch)?;
        }
        Ok(())
    };
    read_snapshot(store_path, |space, key, value| {
        if pending
            .as_ref()
            .is_some_and(|(s, b)| *s != space || b.ops.len() >= RESTORE_BATCH)
        {
            flush_batch(&mut pending)?;
        }
        pending
            .get_or_insert_with(|| (space, WriteBatch::default()))
            .1
            .put(key, value);
        Ok(())
    })?;
    flush_batch(&mut pending)?;
    store.flush()?;
    let mut entries = BTreeMap::new();
    for space in Keyspace::ALL {
        let mut count = 0u64;
        for item in store.scan_prefix(space, b"") {
            item?;
            count += 1;
        }
        let expected = manifest
            .store
            .keyspaces
            .get(space.name())
            .map_or(0, |k| k.entries);
        if count != expected {
            return Err(BackupError::Invalid {
                path: data_dir.to_path_buf(),
                reason: format!(
                    "after restoring, keyspace `{}` holds {count} entries, not {expected}",
                    space.name()
                ),
            });
        }
        entries.insert(space.name().to_string(), count);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_keep_keyspace_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(STORE_FILE);
        let mut tally = Tally::new();
        let mut bytes = MAGIC.to_vec();
        for (space, key, value) in [
            (Keyspace::Meta, b"a".as_slice(), b"1".as_slice()),
            (Keyspace::Readings, b"k", b""),
        ] {
            let record = frame(space, key, value).expect("frame");
            tally.record(space, &record);
            bytes.extend_from_slice(&record);
        }
        bytes.push(END);
        tally.raw(&[END]);
        std::fs::write(&path, &bytes).expect("write");
        let mut seen = Vec::new();
        let read = read_snapshot(&path, |space, key, _| {
            seen.push((space, key));
            Ok(())
        })
        .expect("reads");
        assert_eq!(seen.len(), 2);
        assert_eq!(
            read.finish(1, String::new()),
            tally.finish(1, String::new())
        );
        // Out of order, trailing bytes and cut-off files are refused.
        let mut swapped = MAGIC.to_vec();
        swapped.extend(frame(Keyspace::Readings, b"k", b"").expect("frame"));
        swapped.extend(frame(Keyspace::Meta, b"a", b"1").expect("frame"));
        swapped.push(END);
        std::fs::write(&path, &swapped).expect("write");
        assert!(read_snapshot(&path, |_, _, _| Ok(())).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        std::fs::write(&path, &trailing).expect("write");
        assert!(read_snapshot(&path, |_, _, _| Ok(())).is_err());
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        assert!(read_snapshot(&path, |_, _, _| Ok(())).is_err());
    }
}
