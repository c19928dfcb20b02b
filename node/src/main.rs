//! `samvirke-node --config FILE`: runs one municipality's Samvirke node;
//! `samvirke-node backup` and `restore` back it up while it runs and bring
//! a backup back (see `samvirke_node::backup`). Everything but argument
//! parsing and exit codes lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use samvirke_node::backup;
use samvirke_node::config::{Config, LogFormat};
use samvirke_node::server::{Listeners, Node, NodeError};
use samvirke_node::store::StoreError;
use samvirke_node::telemetry;

/// Exit status for a configuration problem (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Runs a Samvirke node: the mutual-TLS peer listener for partner
/// municipalities and the local listener for this municipality's own users.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    /// Path to the node's TOML config (see deploy/node.example.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format; overrides `log.format` in the config.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Back up the running node of `--config` into a new or empty directory:
    /// a consistent snapshot of its store (taken by the node over its local
    /// API with an admin token, without stopping it), its config and
    /// certificates, and a manifest of counts and digests. Private keys are
    /// left out unless `--include-keys`.
    Backup {
        /// The node's config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The backup directory (created 0700; must be new or empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Also copy the signing key and TLS key (0600). They are secrets:
        /// keep such a backup as safe as the node itself.
        #[arg(long)]
        include_keys: bool,
        /// The node's local API (default: from the config's `local.listen`).
        #[arg(long, value_name = "URL")]
        node: Option<String>,
        /// An admin token of the node.
        #[arg(long, env = "SAMVIRKE_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Restore a backup into a new or empty data directory, after checking
    /// every digest, count and the audit chain; then point `node.data_dir`
    /// of the node's config at it and start the node.
    Restore {
        /// The backup directory.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The data directory to fill (must be missing or empty).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The node's public signing key, `ed25519:<hex>` as the roster
        /// lists it: refuse a backup made under another key.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Apply the store's pending schema migrations (PostgreSQL: in one
    /// transaction, refusing a database of a newer schema) and exit. Nodes
    /// also apply them when they start.
    Migrate {
        /// The node's config.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Move a stopped node's data to another store, then check counts and
    /// the audit chain: `--from sled:DIR --to postgres:URL`. The
    /// destination must be empty. Afterwards set `[store]` in the node's
    /// config to the destination.
    MigrateStore {
        /// The source: `sled:DIR` (the node's `node.data_dir`).
        #[arg(long, value_name = "sled:DIR")]
        from: String,
        /// The destination: `postgres:URL` (a libpq URL or key=value
        /// string, no password) or `sled:DIR` (new or empty).
        #[arg(long, value_name = "postgres:URL")]
        to: String,
        /// The database password, in a file only its owner can read.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// The database server's CA certificate (PEM): connect over TLS.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Backup {
            config,
            to,
            include_keys,
            node,
            token,
        }) => return backup(&config, to, include_keys, node, token),
        Some(Command::Restore {
            from,
            data_dir,
            key,
        }) => return restore(&from, &data_dir, key.as_deref()),
        Some(Command::Migrate { config }) => return migrate(&config),
        Some(Command::MigrateStore {
            from,
            to,
            password_file,
            ca_file,
        }) => return migrate_store(&from, &to, password_file, ca_file),
        None => {}
    }
    let Some(config_path) = args.config else {
        eprintln!("samvirke-node: --config FILE is required");
        return ExitCode::from(EXIT_CONFIG);
    };
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("samvirke-node: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(
        args.log_format.unwrap_or(config.log.format),
        &config.log.level,
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("samvirke-node: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "samvirke-node failed");
            eprintln!("samvirke-node: {error}");
            match error {
                // Unreadable or malformed key material is a config problem.
                NodeError::Identity(_)
                | NodeError::Store(StoreError::NotAStore { .. })
                | NodeError::Store(StoreError::NotADirectory { .. }) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn backup(
    config_path: &std::path::Path,
    to: PathBuf,
    include_keys: bool,
    node: Option<String>,
    token: String,
) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("samvirke-node: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let request = backup::BackupRequest {
        endpoint: node.unwrap_or_else(|| backup::local_endpoint(&config)),
        token: zeroize::Zeroizing::new(token),
        to,
        include_keys,
    };
    let fetched = tokio::runtime::Runtime::new()
        .map_err(|e| backup::BackupError::Node(format!("cannot start the async runtime: {e}")))
        .and_then(|runtime| runtime.block_on(backup::fetch(&config, &request)));
    match fetched {
        Ok(manifest) => {
            println!(
                "backup of node {} (municipality {}) taken at {} in {}: {} bytes of store, {} \
                 readings, {} audit entries, {} receipts; private keys {}",
                manifest.node_id,
                manifest.municipality_code,
                manifest.taken_at,
                request.to.display(),
                manifest.store.bytes,
                entries(&manifest, "readings"),
                manifest.store.audit_entries,
                entries(&manifest, "receipts"),
                if manifest.keys_included {
                    "included (0600)"
                } else {
                    "not included"
                }
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("samvirke-node backup: {error}");
            ExitCode::FAILURE
        }
    }
}

fn entries(manifest: &backup::Manifest, keyspace: &str) -> u64 {
    manifest
        .store
        .keyspaces
        .get(keyspace)
        .map_or(0, |k| k.entries)
}

fn restore(from: &std::path::Path, data_dir: &std::path::Path, key: Option<&str>) -> ExitCode {
    match backup::restore(from, data_dir, key) {
        Ok(restored) => {
            println!(
                "restored node {} (municipality {}, backup of {}) into {}: {} readings, {} \
                 receipts, audit chain of {} entries verified with {}",
                restored.manifest.node_id,
                restored.manifest.municipality_code,
                restored.manifest.taken_at,
                data_dir.display(),
                restored.entries.get("readings").copied().unwrap_or(0),
                restored.entries.get("receipts").copied().unwrap_or(0),
                restored.audit_verified,
                restored.manifest.signing_key,
            );
            println!(
                "config and certificates are in {}/config; set node.data_dir to {} and start \
                 the node",
                from.display(),
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("samvirke-node restore: {error}");
            ExitCode::FAILURE
        }
    }
}

fn migrate(config_path: &std::path::Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("samvirke-node: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match samvirke_node::server::open_store(&config) {
        Ok(store) => {
            println!(
                "{} store is at schema {}",
                store.backend_name(),
                store.schema_version()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("samvirke-node migrate: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Opens `sled:DIR` or `postgres:URL`.
fn open_named_store(
    name: &str,
    password_file: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
) -> Result<std::sync::Arc<dyn samvirke_node::store::Store>, String> {
    use samvirke_node::store::postgres::{PostgresOptions, read_password_file};
    use samvirke_node::store::{PostgresStore, SledStore};
    if let Some(dir) = name.strip_prefix("sled:") {
        return SledStore::open(std::path::Path::new(dir))
            .map(|s| std::sync::Arc::new(s) as _)
            .map_err(|e| e.to_string());
    }
    if let Some(url) = name.strip_prefix("postgres:") {
        let password = match password_file {
            Some(path) => Some(read_password_file(path).map_err(|e| e.to_string())?),
            None => None,
        };
        return PostgresStore::open(&PostgresOptions {
            url: url.to_string(),
            password,
            pool_size: 4,
            ca_file: ca_file.map(std::path::Path::to_path_buf),
        })
        .map(|s| std::sync::Arc::new(s) as _)
        .map_err(|e| e.to_string());
    }
    Err(format!(
        "`{name}` names no store; use sled:DIR or postgres:URL"
    ))
}

fn migrate_store(
    from: &str,
    to: &str,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
) -> ExitCode {
    let Some(source_dir) = from.strip_prefix("sled:") else {
        eprintln!("samvirke-node migrate-store: --from must be sled:DIR (the node's data_dir)");
        return ExitCode::from(EXIT_CONFIG);
    };
    // Opening a missing directory would make a new, empty store and move
    // nothing: a mistyped path must fail instead.
    if !std::path::Path::new(source_dir)
        .join(samvirke_node::store::MARKER_FILE)
        .exists()
    {
        eprintln!(
            "samvirke-node migrate-store: {source_dir} is not a Samvirke store (no {} marker); \
             name the node's data_dir",
            samvirke_node::store::MARKER_FILE
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let stores = open_named_store(from, None, None).and_then(|source| {
        open_named_store(to, password_file.as_deref(), ca_file.as_deref())
            .map(|destination| (source, destination))
    });
    let (source, destination) = match stores {
        Ok(stores) => stores,
        Err(error) => {
            eprintln!("samvirke-node migrate-store: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut progress = |space: &str, count: u64| println!("moved {space}: {count}");
    match samvirke_node::store_move::move_store(
        source.as_ref(),
        destination.as_ref(),
        &mut progress,
    ) {
        Ok(moved) => {
            let readings: u64 = moved.readings.values().sum();
            println!(
                "moved and checked: {} readings in {} datasets, {} audit entries (chain verified), \
                 every keyspace's count equal; now set [store] in the node's config to the \
                 destination",
                readings.max(moved.entries.get("readings").copied().unwrap_or(0)),
                moved.readings.len(),
                moved.audit_verified
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("samvirke-node migrate-store: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), NodeError> {
    // Listen for the signals before anything is bound or logged as
    // serving: a SIGTERM that arrives right after the "serving" line must
    // stop the node gracefully, not kill it with the default action.
    let shutdown = shutdown_signal()?;
    let node = Node::open(config)?;
    let listeners = Listeners::bind(node.config()).await?;
    node.run(listeners, shutdown).await
}

/// Installs the SIGTERM (systemd, container runtimes) and SIGINT (Ctrl-C)
/// handlers now; the returned future completes on the first of them.
fn shutdown_signal() -> Result<impl Future<Output = ()>, NodeError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|error| NodeError::Signal {
            signal: name,
            reason: error.to_string(),
        })
    };
    let mut terminate = install(SignalKind::terminate(), "SIGTERM")?;
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("Ctrl-C received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
