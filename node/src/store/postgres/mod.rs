//! The PostgreSQL implementation of [`Store`] and [`ReadingTable`]: a
//! municipality's data in a database its IT already runs (on premises or
//! managed, with streaming replicas), shared by every node process that
//! serves the municipality.
//!
//! The client is tokio-postgres with a deadpool connection pool: the
//! maintained asynchronous driver (binary `COPY`, pipelining,
//! `LISTEN`/`NOTIFY`) and the pool built for it. (sqlx would add
//! compile-time query checking against a live database at build time,
//! which a fresh clone cannot have.) The node's storage interface is
//! synchronous (sled answers from memory or one disk read), so this store
//! runs its own small runtime and every call is sent there and waited for:
//! the caller's thread waits on the database, the node's runtime never has
//! a database future in it, and no call depends on which runtime (or none)
//! the caller runs on.
//!
//! Key-value keyspaces live in one table, `samvirke_kv`; readings in a
//! partitioned table the database scans, filters and aggregates itself
//! (see [`schema`] for the layout, `readings` for the queries). Every
//! write is one transaction, committed (and so durable) before the call
//! returns, which is why [`Store::flush`] has nothing left to do.
//!
//! Several processes share one database safely because nothing they must
//! agree on is decided in one process's memory: an audit append or a
//! nonce is an insert the primary key admits once ([`Store::insert_new`]),
//! a budget is a compare-and-swap, the sensor index is updated in the
//! readings' own transaction, and governance and catalog changes are
//! announced to every process with `NOTIFY` ([`Store::changes`]); governance
//! imports, which judge each document against the ones held, hold an
//! advisory lock ([`Store::exclusive`]).

mod listen;
mod readings;
pub mod schema;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;
use zeroize::Zeroizing;

use super::table::ReadingTable;
use super::{
    Entry, EntryIter, ExclusiveGuard, ExclusiveSection, Keyspace, SnapshotVisitor, Store,
    StoreError, WriteBatch, WriteOp,
};

/// The meta key `samvirke-node migrate-store` writes before it fills a
/// database and removes once everything is moved and checked: a node does
/// not open a database a move left half-filled.
pub const MOVE_IN_PROGRESS: &[u8] = b"move_in_progress";

/// How long a call waits for a free pooled connection before failing.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// Entries one page of a key-value scan reads.
const KV_PAGE: i64 = 512;

/// How to reach the database.
#[derive(Clone)]
pub struct PostgresOptions {
    /// A libpq-style URL (`postgresql://user@host:port/db?...`) or
    /// key-value string (`host=... user=... dbname=...`), without a password.
    pub url: String,
    /// The password, read from a file the operator keeps 0600.
    pub password: Option<Zeroizing<String>>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// A CA certificate (PEM) for TLS to the database; with it, the
    /// connection is TLS and the server's certificate must chain to it
    /// and name the host. Without it, the connection is plain TCP or a
    /// Unix socket (a database on the same host or a private link).
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Reads a database password from `path`, which only its owner may read.
pub fn read_password_file(path: &std::path::Path) -> Result<Zeroizing<String>, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |message: String| StoreError::Io {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io(format!(
            "the password file is readable by others (mode {mode:o}); chmod 600 it"
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| io(e.to_string()))?);
    let password = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if password.is_empty() {
        return Err(io("the password file is empty".to_string()));
    }
    Ok(password)
}

/// State shared with the tasks on the store's runtime.
struct Shared {
    /// Key-value work: audit, nonces, budgets, governance, catalog.
    pool: Pool,
    /// Readings: ingest, scans, aggregation.
    readings: Pool,
    /// Readings partitions known to exist, as months since year 0
    /// (`year * 12 + month0`): checked once per process.
    partitions: Mutex<BTreeSet<i32>>,
    changes: tokio::sync::broadcast::Sender<Keyspace>,
}

/// A store in a PostgreSQL database.
pub struct PostgresStore {
    shared: Arc<Shared>,
    database: String,
    schema: u32,
    /// The runtime the database calls run on; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    stop_listening: tokio_util::sync::CancellationToken,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.database)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop_listening.cancel();
        // Dropping a runtime blocks until its tasks finish, which is not
        // allowed on an async thread; nothing here needs waiting for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Longest a statement may run: an answer taking longer is cut off by the
/// node anyway (`answer_timeout`), and a connection must not stay busy
/// with work nobody waits for.
const STATEMENT_TIMEOUT: &str = "120s";
/// Longest a statement waits for a lock (a partition being created, a
/// sensor's index entry another process is updating) before failing.
const LOCK_TIMEOUT: &str = "10s";

/// A pool of at most `size` connections, each set up with the time limits
/// and the staging table.
fn pool(manager: Manager, size: usize) -> Result<Pool, StoreError> {
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move {
                // Every pooled connection gets its limits and its staging
                // table once; the table's rows vanish at each commit.
                client
                    .batch_execute(&format!(
                        "SET statement_timeout = '{STATEMENT_TIMEOUT}'; \
                         SET lock_timeout = '{LOCK_TIMEOUT}'; \
                         SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; \
                         SET tcp_keepalives_count = 3; {}",
                        schema::STAGING
                    ))
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(|e| StoreError::Backend(format!("PostgreSQL connection pool: {e}")))
}

/// A database error as a store error: SQLSTATE and the server's message.
pub(crate) fn db(error: tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(e) => StoreError::Backend(format!(
            "PostgreSQL {}: {}{}",
            e.code().code(),
            e.message(),
            e.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        )),
        None => StoreError::Backend(format!("PostgreSQL: {error}")),
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(e) => db(e),
        other => StoreError::Backend(format!("PostgreSQL connection pool: {other}")),
    }
}

impl PostgresStore {
    /// Connects, applies missing migrations (refusing a newer or foreign
    /// database), and starts following other processes' changes.
    pub fn open(options: &PostgresOptions) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = options.url.parse().map_err(|e| {
            StoreError::Backend(format!(
                "store.url is not a PostgreSQL connection string: {e}"
            ))
        })?;
        if config.get_password().is_some() {
            return Err(StoreError::Backend(
                "store.url holds a password; put it in store.password_file (kept 0600) instead"
                    .to_string(),
            ));
        }
        if let Some(password) = &options.password {
            config.password(password.as_bytes());
        }
        // Find a database that vanished (a failed-over primary, a cut
        // link) within about a minute rather than the system's two hours.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        let database = config
            .get_dbname()
            .map(str::to_string)
            .or_else(|| config.get_user().map(str::to_string))
            .unwrap_or_else(|| "postgres".to_string());
        let tls = match &options.ca_file {
            Some(path) => {
                config.ssl_mode(SslMode::Require);
                Some(tls_connector(path)?)
            }
            None => {
                // Readings may be personal data and the database holds the
                // node's governance: plaintext only where no network is
                // crossed.
                for host in config.get_hosts() {
                    let local = match host {
                        tokio_postgres::config::Host::Tcp(name) => {
                            matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1")
                        }
                        tokio_postgres::config::Host::Unix(_) => true,
                    };
                    if !local {
                        return Err(StoreError::Backend(format!(
                            "store.url names the database host {host:?}: name its CA in \
                             store.ca_file so the connection is TLS (plaintext is only used \
                             on loopback or a Unix socket)"
                        )));
                    }
                }
                if config.get_ssl_mode() == SslMode::Require {
                    return Err(StoreError::Backend(
                        "store.url asks for sslmode=require; name the database server's CA in \
                         store.ca_file so its certificate can be checked"
                            .to_string(),
                    ));
                }
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("samvirke-db")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config),
        };
        let readings_manager = match &tls {
            Some(tls) => Manager::from_config(
                config.clone(),
                tls.clone(),
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ),
            None => Manager::from_config(
                config.clone(),
                tokio_postgres::NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            ),
        };
        // Two pools: partners' questions can only ever take the readings
        // pool's connections, so however many long scans they start, the
        // audit writer, replay memory, budgets and governance still get a
        // connection of their own.
        // At least three: a governance import holds one for its lock and
        // still needs one for its reads and writes while audit appends go on.
        let control = pool(manager, (options.pool_size / 4).clamp(3, 8))?;
        let readings = pool(readings_manager, options.pool_size.max(2))?;
        let (changes, _) = tokio::sync::broadcast::channel(256);
        let shared = Arc::new(Shared {
            pool: control,
            readings,
            partitions: Mutex::new(BTreeSet::new()),
            changes,
        });
        let stop_listening = tokio_util::sync::CancellationToken::new();
        let mut store = PostgresStore {
            shared: Arc::clone(&shared),
            database: database.clone(),
            schema: 0,
            runtime: Some(runtime),
            handle,
            stop_listening: stop_listening.clone(),
        };
        let schema = store.call(move |shared| async move { migrate(&shared, &database).await })?;
        store.call(|shared| async move { readings::prepare_partitions(&shared).await })?;
        store.handle.spawn(listen::follow_changes(
            config,
            tls,
            shared.changes.clone(),
            stop_listening,
        ));
        store.schema = schema;
        Ok(store)
    }

    /// Runs `work` on the store's runtime and waits for its result.
    fn call<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        wait_on(&self.handle, work(Arc::clone(&self.shared)))
    }

    /// The database's name, for messages.
    pub fn database(&self) -> &str {
        &self.database
    }
}

/// Runs `future` on the store's runtime (`handle`) and waits for it.
fn wait_on<T>(
    handle: &tokio::runtime::Handle,
    future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, StoreError>
where
    T: Send + 'static,
{
    let (done, result) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = done.send(future.await);
    });
    let wait = move || {
        result
            .recv()
            .map_err(|_| StoreError::Backend("the database call was cut off".to_string()))?
    };
    // On a worker of the node's (multi-threaded) runtime, say so before
    // waiting: tokio hands this worker's other tasks to another thread,
    // so a slow database holds up the calls that wait for it, not every
    // task that happened to share their thread.
    match tokio::runtime::Handle::try_current() {
        Ok(current) if current.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// An advisory lock held on one pooled connection (see
/// [`Store::exclusive`]).
struct AdvisoryHold {
    /// `None` only while dropping.
    client: Option<Arc<deadpool_postgres::Object>>,
    id: i64,
    section: ExclusiveSection,
    handle: tokio::runtime::Handle,
}

impl super::SectionHold for AdvisoryHold {
    fn confirm(&self) -> Result<(), StoreError> {
        let client = self.client.clone().ok_or_else(|| {
            StoreError::Backend("the advisory lock was already released".to_string())
        })?;
        let id = self.id;
        let held = wait_on(&self.handle, async move {
            let row = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                         AND pid = pg_backend_pid() AND granted \
                         AND ((classid::bigint << 32) | objid::bigint) = $1)",
                    &[&id],
                )
                .await
                .map_err(db)?;
            Ok(row.get::<_, bool>(0))
        })?;
        if held {
            Ok(())
        } else {
            Err(StoreError::Backend(format!(
                "lost the database lock on {:?}; nothing was written, try again",
                self.section
            )))
        }
    }
}

impl Drop for AdvisoryHold {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let (id, section) = (self.id, self.section);
        self.handle.spawn(async move {
            let released = client
                .query_one("SELECT pg_advisory_unlock($1)", &[&id])
                .await
                .map(|row| row.get::<_, bool>(0));
            if !matches!(released, Ok(true)) {
                // Never hand a connection that may still hold the lock
                // back to the pool: close it, which releases it.
                tracing::warn!(
                    ?section,
                    "advisory lock release failed; closing its connection"
                );
                if let Ok(client) = Arc::try_unwrap(client) {
                    drop(deadpool_postgres::Object::take(client));
                }
            }
        });
    }
}

/// rustls for the database connection, trusting only `ca_file`.
fn tls_connector(
    ca_file: &std::path::Path,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let pem = std::fs::read(ca_file).map_err(|e| StoreError::Io {
        path: ca_file.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let mut found = 0;
    for certificate in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let certificate: rustls::pki_types::CertificateDer<'static> =
            certificate.map_err(|e| StoreError::Io {
                path: ca_file.to_path_buf(),
                message: format!("not a PEM certificate file: {e}"),
            })?;
        roots.add(certificate).map_err(|e| StoreError::Io {
            path: ca_file.to_path_buf(),
            message: format!("unusable CA certificate: {e}"),
        })?;
        found += 1;
    }
    if found == 0 {
        return Err(StoreError::Io {
            path: ca_file.to_path_buf(),
            message: "holds no certificate".to_string(),
        });
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Backend(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Applies missing migrations; returns the schema version.
async fn migrate(shared: &Shared, database: &str) -> Result<u32, StoreError> {
    let mut client = shared.pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(db)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&schema::MIGRATION_LOCK],
    )
    .await
    .map_err(db)?;
    let version: i32 = tx
        .query_one("SELECT current_setting('server_version_num')::integer", &[])
        .await
        .map_err(db)?
        .get(0);
    if version < 140_000 {
        return Err(StoreError::Backend(format!(
            "database {database} runs PostgreSQL {}.{}; Samvirke needs 14 or newer (date_bin)",
            version / 10_000,
            version % 10_000
        )));
    }
    let ours: bool = tx
        .query_one("SELECT to_regclass('samvirke_schema') IS NOT NULL", &[])
        .await
        .map_err(db)?
        .get(0);
    let mut current = 0u32;
    if ours {
        let found: Option<i32> = tx
            .query_one("SELECT max(version) FROM samvirke_schema", &[])
            .await
            .map_err(db)?
            .get(0);
        current = found.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        if current > schema::SCHEMA_VERSION {
            return Err(StoreError::NewerDatabase {
                database: database.to_string(),
                found: current,
                supported: schema::SCHEMA_VERSION,
            });
        }
    } else {
        let foreign: i64 = tx
            .query_one(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        if foreign > 0 {
            return Err(StoreError::ForeignDatabase {
                database: database.to_string(),
                tables: u64::try_from(foreign).unwrap_or(0),
            });
        }
        tx.batch_execute(
            "CREATE TABLE samvirke_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now(),
                release text NOT NULL
            )",
        )
        .await
        .map_err(db)?;
    }
    for (version, sql) in schema::MIGRATIONS {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql).await.map_err(db)?;
        tx.execute(
            "INSERT INTO samvirke_schema (version, release) VALUES ($1, $2)",
            &[
                &i32::try_from(*version).unwrap_or(i32::MAX),
                &env!("CARGO_PKG_VERSION"),
            ],
        )
        .await
        .map_err(db)?;
        tracing::info!(database, version, "applied store migration");
        current = *version;
    }
    let moving = tx
        .query_opt(
            "SELECT 1 FROM samvirke_kv WHERE space = 'meta' AND key = $1",
            &[&MOVE_IN_PROGRESS],
        )
        .await
        .map_err(db)?;
    if moving.is_some() {
        return Err(StoreError::Backend(format!(
            "database {database} holds an unfinished `samvirke-node migrate-store`: drop and \
             recreate it, then move the node's data again"
        )));
    }
    tx.commit().await.map_err(db)?;
    Ok(current)
}

/// Applies `batches` in order inside `tx`.
async fn apply(
    tx: &tokio_postgres::Transaction<'_>,
    batches: Vec<(Keyspace, WriteBatch)>,
) -> Result<(), StoreError> {
    if batches.iter().all(|(_, b)| b.ops.is_empty()) {
        return Ok(());
    }
    let put = tx
        .prepare(
            "INSERT INTO samvirke_kv (space, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await
        .map_err(db)?;
    let delete = tx
        .prepare("DELETE FROM samvirke_kv WHERE space = $1 AND key = $2")
        .await
        .map_err(db)?;
    for (space, batch) in batches {
        let name = space.name();
        for op in batch.ops {
            match op {
                WriteOp::Put { key, value } => {
                    tx.execute(&put, &[&name, &key, &value]).await.map_err(db)?
                }
                WriteOp::Delete { key } => tx.execute(&delete, &[&name, &key]).await.map_err(db)?,
            };
        }
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key-value range read a page at a time.
struct KvPages<'a> {
    store: &'a PostgresStore,
    space: Keyspace,
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    buffer: VecDeque<Entry>,
    done: bool,
}

impl KvPages<'_> {
    fn fill(&mut self) -> Result<(), StoreError> {
        let (space, lower, upper) = (self.space.name(), self.lower.clone(), self.upper.clone());
        let page = self.store.call(move |shared| async move {
            let client = shared.pool.get().await.map_err(pool_error)?;
            let mut sql = String::from("SELECT key, value FROM samvirke_kv WHERE space = $1");
            let mut params: Vec<Vec<u8>> = Vec::new();
            for (bound, inclusive, exclusive) in [(&lower, ">=", ">"), (&upper, "<=", "<")] {
                let (op, key) = match bound {
                    Bound::Included(k) => (inclusive, k),
                    Bound::Excluded(k) => (exclusive, k),
                    Bound::Unbounded => continue,
                };
                params.push(key.clone());
                sql.push_str(&format!(" AND key {op} ${}", params.len() + 1));
            }
            sql.push_str(&format!(" ORDER BY key LIMIT {KV_PAGE}"));
            let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&space];
            for p in &params {
                args.push(p);
            }
            let rows = client.query(&sql, &args).await.map_err(db)?;
            Ok(rows
                .into_iter()
                .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)))
                .collect::<Vec<Entry>>())
        })?;
        if (page.len() as i64) < KV_PAGE {
            self.done = true;
        }
        if let Some((last, _)) = page.last() {
            self.lower = Bound::Excluded(last.clone());
        }
        self.buffer.extend(page);
        Ok(())
    }
}

impl Iterator for KvPages<'_> {
    type Item = Result<Entry, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty()
            && !self.done
            && let Err(e) = self.fill()
        {
            self.done = true;
            return Some(Err(e));
        }
        self.buffer.pop_front().map(Ok)
    }
}

impl Store for PostgresStore {
    fn schema_version(&self) -> u32 {
        self.schema
    }

    fn get(&self, space: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.call(move |shared| async move {
            let client = shared.pool.get().await.map_err(pool_error)?;
            let statement = client
                .prepare_cached("SELECT value FROM samvirke_kv WHERE space = $1 AND key = $2")
                .await
                .map_err(db)?;
            Ok(client
                .query_opt(&statement, &[&space.name(), &key])
                .await
                .map_err(db)?
                .map(|row| row.get::<_, Vec<u8>>(0)))
        })
    }

    fn write(&self, space: Keyspace, batch: WriteBatch) -> Result<(), StoreError> {
        self.write_all(vec![(space, batch)])
    }

    fn write_all(&self, batches: Vec<(Keyspace, WriteBatch)>) -> Result<(), StoreError> {
        if batches.iter().all(|(_, b)| b.ops.is_empty()) {
            return Ok(());
        }
        self.call(move |shared| async move {
            let mut client = shared.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db)?;
            apply(&tx, batches).await?;
            tx.commit().await.map_err(db)
        })
    }

    fn range(&self, space: Keyspace, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> EntryIter<'_> {
        Box::new(KvPages {
            store: self,
            space,
            lower: range.0,
            upper: range.1,
            buffer: VecDeque::new(),
            done: false,
        })
    }

    fn scan_prefix(&self, space: Keyspace, prefix: &[u8]) -> EntryIter<'_> {
        let upper = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.range(space, (Bound::Included(prefix.to_vec()), upper))
    }

    fn flush(&self) -> Result<(), StoreError> {
        // Every write is a committed transaction by the time it returns.
        Ok(())
    }

    fn snapshot(&self, _visit: &mut SnapshotVisitor<'_>) -> Result<(), StoreError> {
        Err(StoreError::Backend(format!(
            "database {} is PostgreSQL: back it up with the database's own tools \
             (pg_dump, or pg_basebackup with WAL archiving for point-in-time recovery); \
             samvirke-node backup copies sled stores",
            self.database
        )))
    }

    fn insert_new(&self, space: Keyspace, entries: Vec<Entry>) -> Result<bool, StoreError> {
        self.call(move |shared| async move {
            let mut client = shared.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db)?;
            let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = entries.into_iter().unzip();
            let wanted = keys.len() as u64;
            // One statement for the whole batch (an audit group commit is
            // up to a thousand entries): all inserted, or roll back.
            let inserted = tx
                .execute(
                    "INSERT INTO samvirke_kv (space, key, value)
                     SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v)
                     ON CONFLICT (space, key) DO NOTHING",
                    &[&space.name(), &keys, &values],
                )
                .await
                .map_err(db)?;
            if inserted != wanted {
                // Dropping the transaction rolls it back.
                return Ok(false);
            }
            tx.commit().await.map_err(db)?;
            Ok(true)
        })
    }

    fn compare_and_swap(
        &self,
        space: Keyspace,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let (key, expected) = (key.to_vec(), expected.map(<[u8]>::to_vec));
        self.call(move |shared| async move {
            let client = shared.pool.get().await.map_err(pool_error)?;
            let changed = match expected {
                None => client
                    .execute(
                        "INSERT INTO samvirke_kv (space, key, value) VALUES ($1, $2, $3)
                         ON CONFLICT (space, key) DO NOTHING",
                        &[&space.name(), &key, &new],
                    )
                    .await
                    .map_err(db)?,
                Some(old) => client
                    .execute(
                        "UPDATE samvirke_kv SET value = $4
                         WHERE space = $1 AND key = $2 AND value = $3",
                        &[&space.name(), &key, &old, &new],
                    )
                    .await
                    .map_err(db)?,
            };
            Ok(changed == 1)
        })
    }

    fn last(&self, space: Keyspace) -> Result<Option<Entry>, StoreError> {
        self.call(move |shared| async move {
            let client = shared.pool.get().await.map_err(pool_error)?;
            Ok(client
                .query_opt(
                    "SELECT key, value FROM samvirke_kv WHERE space = $1 ORDER BY key DESC LIMIT 1",
                    &[&space.name()],
                )
                .await
                .map_err(db)?
                .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1))))
        })
    }

    fn reading_table(&self) -> Option<&dyn ReadingTable> {
        Some(self)
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Keyspace>> {
        Some(self.shared.changes.subscribe())
    }

    fn exclusive(&self, section: ExclusiveSection) -> Result<Option<ExclusiveGuard>, StoreError> {
        // A session-level advisory lock on a connection taken out of the
        // pool for as long as the guard lives: another process waits
        // (within `lock_timeout`); a process that dies mid-section loses
        // its connection and with it the lock (TCP keepalives on both
        // ends find a vanished peer within about a minute).
        let id = section.id();
        let client = self.call(move |shared| async move {
            let client = shared.pool.get().await.map_err(pool_error)?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&id])
                .await
                .map_err(db)?;
            Ok(Arc::new(client))
        })?;
        Ok(Some(ExclusiveGuard::new(AdvisoryHold {
            client: Some(client),
            id,
            section,
            handle: self.handle.clone(),
        })))
    }

    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn size_on_disk(&self) -> Option<u64> {
        self.call(|shared| async move {
            let client = shared.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
                .map_err(db)?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        })
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dev_postgres::DevPostgres;
    use crate::store::SledStore;
    use crate::store::table::TableRow;

    fn options(url: String) -> PostgresOptions {
        PostgresOptions {
            url,
            password: None,
            pool_size: 2,
            ca_file: None,
        }
    }

    fn fresh(hint: &str) -> (String, PostgresStore) {
        let server = DevPostgres::shared().expect("development PostgreSQL");
        let url = server.create_database(hint).expect("database");
        let store = PostgresStore::open(&options(url.clone())).expect("open");
        (url, store)
    }

    #[test]
    fn a_newer_schema_or_a_foreign_database_is_refused_and_left_untouched() {
        let server = DevPostgres::shared().expect("development PostgreSQL");
        let (url, store) = fresh("newer");
        drop(store);
        server
            .psql(
                &url,
                "INSERT INTO samvirke_schema (version, release) VALUES (99, 'future')",
            )
            .expect("a future migration");
        let err = PostgresStore::open(&options(url.clone())).expect_err("newer schema");
        assert!(
            matches!(err, StoreError::NewerDatabase { found: 99, .. }),
            "{err}"
        );
        let versions = server
            .psql(
                &url,
                "SELECT string_agg(version::text, ',' ORDER BY version) FROM samvirke_schema",
            )
            .expect("versions");
        assert_eq!(versions.trim(), "1,99");

        let foreign = server.create_database("foreign").expect("database");
        server
            .psql(&foreign, "CREATE TABLE invoices (id integer)")
            .expect("someone else's table");
        let err = PostgresStore::open(&options(foreign.clone())).expect_err("foreign");
        assert!(
            matches!(err, StoreError::ForeignDatabase { tables: 1, .. }),
            "{err}"
        );
        let tables = server
            .psql(
                &foreign,
                "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'",
            )
            .expect("tables");
        assert_eq!(tables.trim(), "invoices");

        let err = PostgresStore::open(&options(format!("{}?password=inline", foreign)))
            .expect_err("a password in the URL");
        assert!(err.to_string().contains("password_file"), "{err}");
    }

    #[test]
    fn shared_store_primitives_agree_on_both_backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sled: Box<dyn Store> = Box::new(SledStore::open(dir.path()).expect("sled"));
        let (_, postgres) = fresh("primitives");
        for store in [sled, Box::new(postgres) as Box<dyn Store>] {
            let name = store.backend_name();
            let one = vec![(b"n1".to_vec(), Vec::new())];
            assert!(
                store
                    .insert_new(Keyspace::Nonces, one.clone())
                    .expect("insert"),
                "{name}"
            );
            assert!(
                !store.insert_new(Keyspace::Nonces, one).expect("again"),
                "{name}"
            );
            // All or nothing: one key taken, none written.
            let two = vec![(b"n2".to_vec(), Vec::new()), (b"n1".to_vec(), Vec::new())];
            assert!(
                !store.insert_new(Keyspace::Nonces, two).expect("two"),
                "{name}"
            );
            assert_eq!(
                store.get(Keyspace::Nonces, b"n2").expect("get"),
                None,
                "{name}"
            );

            let key = b"budget";
            assert!(
                store
                    .compare_and_swap(Keyspace::Budgets, key, None, b"a".to_vec())
                    .expect("cas")
            );
            assert!(
                !store
                    .compare_and_swap(Keyspace::Budgets, key, None, b"b".to_vec())
                    .expect("cas")
            );
            assert!(
                !store
                    .compare_and_swap(Keyspace::Budgets, key, Some(b"x"), b"b".to_vec())
                    .expect("cas")
            );
            assert!(
                store
                    .compare_and_swap(Keyspace::Budgets, key, Some(b"a"), b"b".to_vec())
                    .expect("cas")
            );
            assert_eq!(
                store.get(Keyspace::Budgets, key).expect("get"),
                Some(b"b".to_vec())
            );

            assert_eq!(store.last(Keyspace::Audit).expect("last"), None, "{name}");
            let mut batch = WriteBatch::default();
            for seq in [3u64, 1, 2, 256] {
                batch.put(seq.to_be_bytes().to_vec(), seq.to_string().into_bytes());
            }
            store.write(Keyspace::Audit, batch).expect("write");
            assert_eq!(
                store.last(Keyspace::Audit).expect("last"),
                Some((256u64.to_be_bytes().to_vec(), b"256".to_vec())),
                "{name}"
            );
            let keys: Vec<Vec<u8>> = store
                .range(
                    Keyspace::Audit,
                    (
                        Bound::Excluded(1u64.to_be_bytes().to_vec()),
                        Bound::Unbounded,
                    ),
                )
                .map(|e| e.expect("entry").0)
                .collect();
            assert_eq!(
                keys,
                [2u64, 3, 256].map(|s| s.to_be_bytes().to_vec()).to_vec(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_change_made_by_another_process_is_announced() {
        let (url, writer) = fresh("changes");
        let reader = PostgresStore::open(&options(url)).expect("second");
        let mut changes = reader.changes().expect("a shared store announces changes");
        let mut batch = WriteBatch::default();
        batch.put(b"doc".to_vec(), b"signed".to_vec());
        writer.write(Keyspace::Agreements, batch).expect("write");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let heard = runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(20), async {
                loop {
                    // The first announcements after connecting name every
                    // announced keyspace; wait for the notification itself
                    // by checking what the store holds when one arrives.
                    match changes.recv().await {
                        Ok(Keyspace::Agreements)
                            if reader
                                .get(Keyspace::Agreements, b"doc")
                                .ok()
                                .flatten()
                                .is_some() =>
                        {
                            return true;
                        }
                        Ok(_) => {}
                        Err(_) => return false,
                    }
                }
            })
            .await
        });
        assert_eq!(heard, Ok(true), "the agreement change was announced");
    }

    /// The governance import lock: another process waits for it, gets it
    /// once released, and a holder whose connection was cut learns that it
    /// no longer holds it before writing.
    #[test]
    fn an_exclusive_section_is_held_once_and_a_lost_hold_is_noticed() {
        let server = DevPostgres::shared().expect("development PostgreSQL");
        let (url, first) = fresh("exclusive");
        let second = PostgresStore::open(&options(url.clone())).expect("second");
        let section = ExclusiveSection::GovernanceImport;
        let held = first.exclusive(section).expect("lock").expect("a guard");
        held.confirm().expect("held");
        let started = std::time::Instant::now();
        let err = second.exclusive(section).expect_err("held by the first");
        assert!(err.to_string().contains("55P03"), "{err}");
        assert!(
            started.elapsed() >= Duration::from_secs(9),
            "waited for lock_timeout"
        );
        drop(held);
        let taken = second
            .exclusive(section)
            .expect("released")
            .expect("a guard");
        // The holder's connection is cut (a fail-over, a dropped link).
        server
            .psql(
                &url,
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks \
                     WHERE locktype = 'advisory' AND objsubid = 1 \
                     AND ((classid::bigint << 32) | objid::bigint) = {}",
                    section.id()
                ),
            )
            .expect("terminate");
        let err = taken.confirm().expect_err("the hold is gone");
        assert!(err.to_string().contains("PostgreSQL"), "{err}");
        drop(taken);
        first
            .exclusive(section)
            .expect("free again")
            .expect("a guard")
            .confirm()
            .expect("held");
    }

    /// Two processes storing the same readings at the same moment: each
    /// reading is counted once in the sensor index, and the counts of new
    /// rows the two report add up to the rows stored.
    #[test]
    fn readings_stored_by_two_processes_at_once_are_counted_once() {
        let (url, first) = fresh("race");
        let second = PostgresStore::open(&options(url)).expect("second");
        let rows: Vec<TableRow> = (0..400)
            .map(|i| TableRow {
                sensor_id: format!("s{}", i % 4),
                ms: 1_767_225_600_000 + i * 60_000,
                values: vec![Some(i as f64)],
                location: None,
            })
            .collect();
        let mut reported_new = 0;
        for chunk in rows.chunks(40) {
            let (a, b) = std::thread::scope(|scope| {
                let a = scope.spawn(|| first.ingest(1, chunk.to_vec(), Vec::new()));
                let b = scope.spawn(|| second.ingest(1, chunk.to_vec(), Vec::new()));
                (a.join().expect("first"), b.join().expect("second"))
            });
            let (a, b) = (a.expect("first ingest"), b.expect("second ingest"));
            reported_new += a.new + b.new;
            // Each stored its whole batch, one way or the other.
            assert_eq!(a.new + a.replaced, 40);
            assert_eq!(b.new + b.replaced, 40);
        }
        assert_eq!(reported_new, 400);
        let indexed: u64 = first
            .sensors(1)
            .expect("index")
            .iter()
            .map(|s| s.count)
            .sum();
        assert_eq!(indexed, 400);
        assert_eq!(
            first.recount(1).expect("recount"),
            first.sensors(1).expect("index")
        );
    }

    #[test]
    fn prefix_ends_skip_trailing_ff_bytes() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
