//! A throwaway PostgreSQL server for development nodes, tests and
//! benchmarks.
//!
//! [`DevPostgres::start`] runs Debian's `initdb` and `postgres` in a fresh
//! temporary directory (`samvirke-dev-pg-<pid>-*` under the temp dir) and
//! serves on `127.0.0.1` at a free port, with `trust` authentication for the
//! superuser `samvirke`. `fsync` stays on so that benchmarks measure durable
//! writes. [`DevPostgres::shared`] is one such server per process;
//! [`DevPostgres::create_database`] hands out a new empty database and its
//! connection URL, one per node.
//!
//! The server never outlives the process that started it, even when that
//! process exits without running destructors (test binaries do not drop
//! statics):
//! - the server runs under a small guardian shell whose standard input is a
//!   pipe from this process. The pipe reaches end-of-file when the process
//!   ends, however it ends (or when the [`DevPostgres`] is dropped); the
//!   guardian then asks the server for a fast shutdown (SIGINT), waits for
//!   it and removes the directory. An end-of-file does not depend on which
//!   thread spawned what, unlike `PR_SET_PDEATHSIG`, which fires when the
//!   spawning *thread* ends;
//! - the guardian starts the server through `setpriv --pdeathsig KILL`, so
//!   if the guardian itself is killed the server goes with it;
//! - directories whose owning process is gone (a guardian killed before it
//!   could clean up) are removed at the next [`DevPostgres::start`].
//!
//! PostgreSQL refuses to run as root, so as root `initdb` and `postgres` run
//! as the `postgres` system user (which Debian's package creates) through
//! `setpriv`, and the directory is handed to that user first.
//!
//! Readiness is the server's own log line "database system is ready to
//! accept connections", read from its standard error through a pipe: no
//! polling and no fixed sleeps. The same reader keeps draining the log
//! afterwards (so the server never blocks on a full pipe) and keeps only its
//! last lines, for error messages.
//!
//! `trust` authentication means any local user can connect to the server
//! while it runs: it is for throwaway development data only, never for a
//! deployment.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The superuser `initdb` creates; connection URLs name it.
pub const SUPERUSER: &str = "samvirke";

/// Prefix of the temporary directories servers live in; the owning
/// process's id follows it, so stale directories can be told apart.
const DIR_PREFIX: &str = "samvirke-dev-pg-";

/// The server's log line that says it accepts connections.
const READY_LINE: &str = "database system is ready to accept connections";

/// How long a start may take before we give up: generous, because a
/// two-core machine running many test binaries can be slow.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many log lines are kept for error messages, and how long each may be.
const LOG_TAIL_LINES: usize = 40;
const LOG_LINE_MAX: usize = 1024;

/// How many times a start is tried when another process took the chosen
/// port between our choosing it and the server binding it.
const START_ATTEMPTS: usize = 3;

/// The guardian: starts the server (the remaining arguments) with its output
/// on our pipe, waits for end-of-file on its standard input, then stops the
/// server and removes the directory (the first argument). It ignores the
/// terminal's and the shutdown signals so that a Ctrl-C to the process
/// group still ends in the cleanup; its own output goes nowhere, so a write
/// after our reader is gone cannot kill it.
const GUARDIAN: &str = r#"dir=$1; shift
"$@" </dev/null 2>&1 &
server=$!
exec >/dev/null 2>&1
trap '' INT TERM HUP PIPE
read -r _ || :
kill -INT "$server"
wait "$server"
rm -rf -- "$dir"
"#;

/// Why a development PostgreSQL server could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum DevPostgresError {
    #[error(
        "no PostgreSQL server programs found (looked for `initdb` in /usr/lib/postgresql/*/bin and on PATH): install Debian's postgresql package"
    )]
    NotInstalled,
    #[error(
        "PostgreSQL refuses to run as root and there is no `postgres` system user to run it as: install Debian's postgresql package, which creates that user"
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initdb failed ({status}); its output ends:\n{output}")]
    Initdb { status: String, output: String },
    #[error(
        "the PostgreSQL server exited before it was ready to accept connections; its log ends:\n{log}"
    )]
    ExitedEarly { log: String },
    #[error(
        "the PostgreSQL server was not ready to accept connections within {} s; its log ends:\n{log}",
        READY_TIMEOUT.as_secs()
    )]
    NotReady { log: String },
    #[error("`{command}` failed ({status}); its output ends:\n{output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("the shared development PostgreSQL server could not start: {0}")]
    Shared(String),
}

impl DevPostgresError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevPostgresError {
        let what = what.into();
        move |source| DevPostgresError::Io { what, source }
    }
}

/// What the log reader has seen, shared with the starting thread.
#[derive(Debug, Default)]
struct LogState {
    ready: bool,
    exited: bool,
    tail: VecDeque<String>,
}

#[derive(Debug, Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

impl Log {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        // A panic elsewhere while holding the lock leaves plain data behind;
        // it is still fine to read.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tail_text(&self) -> String {
        self.lock()
            .tail
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `done` holds or `deadline` passes; returns the state's
    /// `done` value at the end.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&LogState) -> bool) -> bool {
        let mut state = self.lock();
        while !done(&state) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// A running throwaway PostgreSQL server; dropping it stops the server and
/// removes its directory.
#[derive(Debug)]
pub struct DevPostgres {
    port: u16,
    dir: PathBuf,
    bindir: PathBuf,
    guardian: Option<Child>,
    /// Our end of the guardian's standard input: closing it stops the server.
    lifeline: Option<ChildStdin>,
    log: Arc<Log>,
    reader: Option<JoinHandle<()>>,
    databases: AtomicU64,
    /// One `createdb` at a time: concurrent copies of the template database
    /// gain nothing on a small machine.
    creating: Mutex<()>,
}

static SHARED: OnceLock<Result<DevPostgres, String>> = OnceLock::new();

impl DevPostgres {
    /// Starts a fresh server in a new temporary directory and returns once
    /// it accepts connections.
    pub fn start() -> Result<DevPostgres, DevPostgresError> {
        let bindir = find_bindir()?;
        let run_as = if running_as_root()? {
            Some(postgres_user()?)
        } else {
            None
        };
        remove_stale_dirs();
        let mut attempt = 1;
        loop {
            match Self::start_once(&bindir, run_as) {
                Err(DevPostgresError::ExitedEarly { log })
                    if attempt < START_ATTEMPTS && log.contains("could not bind") =>
                {
                    // Another process took the port after we chose it.
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The one server of this process, started on first use. It stops when
    /// the process ends.
    pub fn shared() -> Result<&'static DevPostgres, DevPostgresError> {
        SHARED
            .get_or_init(|| DevPostgres::start().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| DevPostgresError::Shared(e.clone()))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the data directory and the socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The connection URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Whether the server is still running (it has not exited).
    pub fn is_running(&self) -> bool {
        !self.log.lock().exited
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        self.log.tail_text()
    }

    /// Creates a new empty database with a name made from `name_hint`
    /// (letters, digits and `_` kept, anything else becomes `_`) and a
    /// suffix unique to this call, and returns its connection URL.
    pub fn create_database(&self, name_hint: &str) -> Result<String, DevPostgresError> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = database_name(name_hint, std::process::id(), n);
        let _one_at_a_time = self
            .creating
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut command = Command::new(self.bindir.join("createdb"));
        command
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg(format!("--username={SUPERUSER}"))
            .arg("--no-password")
            .arg(&name);
        run(command, "createdb")?;
        Ok(self.url(&name))
    }

    /// Runs `sql` with `psql` against the database at `url` and returns
    /// what it printed (unaligned, tuples only): for tests that look at
    /// what a node stored.
    pub fn psql(&self, url: &str, sql: &str) -> Result<String, DevPostgresError> {
        let mut command = Command::new(self.bindir.join("psql"));
        command
            .args(["--no-psqlrc", "--no-align", "--tuples-only", "--quiet"])
            .args(["--set", "ON_ERROR_STOP=1", "--no-password"])
            .arg(format!("--dbname={url}"))
            .arg(format!("--command={sql}"));
        run(command, "psql")
    }

    fn start_once(
        bindir: &Path,
        run_as: Option<(u32, u32)>,
    ) -> Result<DevPostgres, DevPostgresError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .map_err(DevPostgresError::io("cannot make a temporary directory"))?
            // The guardian removes it, also after this process is gone.
            .keep();
        // Until the guardian runs, removing the directory on failure is ours.
        let mut cleanup = RemoveOnDrop(Some(dir.clone()));
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(DevPostgresError::io(
                format!("cannot hand {} to the postgres user", dir.display()),
            ))?;
        }
        let data = dir.join("data");

        let mut initdb = as_server_user(run_as, &[]);
        initdb
            .arg(bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(&dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        let output = initdb
            .output()
            .map_err(DevPostgresError::io("cannot run setpriv/initdb"))?;
        if !output.status.success() {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            return Err(DevPostgresError::Initdb {
                status: output.status.to_string(),
                output: last_lines(&text),
            });
        }

        let port = free_port()?;
        let mut server = as_server_user(run_as, &["--pdeathsig", "KILL"]);
        server
            .arg(bindir.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args(["-c", "fsync=on"])
            .args(["-c", "max_connections=200"])
            .args(["-c", "shared_buffers=128MB"])
            .args(["-c", "lc_messages=C"]);
        let mut guardian = Command::new("sh");
        guardian
            .arg("-c")
            .arg(GUARDIAN)
            .arg("samvirke-dev-pg")
            .arg(&dir)
            .arg(server.get_program())
            .args(server.get_args())
            .current_dir(&dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = guardian
            .spawn()
            .map_err(DevPostgresError::io("cannot run sh to start postgres"))?;
        // From here on the guardian owns the directory.
        cleanup.0 = None;
        let lifeline = child.stdin.take();
        let log = Arc::new(Log::default());
        let reader = child.stdout.take().map(|out| {
            let log = log.clone();
            std::thread::Builder::new()
                .name("dev-postgres-log".to_string())
                .spawn(move || read_log(out, &log))
        });
        let reader = match reader {
            Some(Ok(handle)) => Some(handle),
            Some(Err(e)) => {
                drop(lifeline);
                let _ = child.wait();
                return Err(DevPostgresError::io("cannot start the log reader")(e));
            }
            None => None,
        };
        let pg = DevPostgres {
            port,
            dir,
            bindir: bindir.to_path_buf(),
            guardian: Some(child),
            lifeline,
            log,
            reader,
            databases: AtomicU64::new(0),
            creating: Mutex::new(()),
        };
        let settled = pg
            .log
            .wait_until(Instant::now() + READY_TIMEOUT, |s| s.ready || s.exited);
        let state = pg.log.lock();
        if state.ready && !state.exited {
            drop(state);
            return Ok(pg);
        }
        let failed_early = state.exited;
        drop(state);
        let log = pg.log_tail();
        // Dropping `pg` stops what is left and removes the directory.
        drop(pg);
        if failed_early || settled {
            Err(DevPostgresError::ExitedEarly { log })
        } else {
            Err(DevPostgresError::NotReady { log })
        }
    }
}

impl Drop for DevPostgres {
    fn drop(&mut self) {
        // End-of-file on the guardian's input: fast shutdown, then cleanup.
        drop(self.lifeline.take());
        if let Some(mut guardian) = self.guardian.take() {
            let _ = guardian.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // If the guardian was killed it could not clean up.
        if self.dir.exists() {
            remove_server_dir(&self.dir);
        }
    }
}

/// Removes a directory when dropped, unless emptied first.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads the server's log until it closes: marks readiness, keeps the tail.
fn read_log(out: impl std::io::Read, log: &Log) {
    let mut reader = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                let mut state = log.lock();
                if text.contains(READY_LINE) {
                    state.ready = true;
                    log.changed.notify_all();
                }
                if state.tail.len() == LOG_TAIL_LINES {
                    state.tail.pop_front();
                }
                state
                    .tail
                    .push_back(truncate(text, LOG_LINE_MAX).to_string());
            }
        }
    }
    // End-of-file: every server process has closed the pipe.
    log.lock().exited = true;
    log.changed.notify_all();
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[from..]
        .iter()
        .map(|l| truncate(l, LOG_LINE_MAX))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `command`, returning its standard output, or an error with its
/// output's last lines.
fn run(mut command: Command, name: &str) -> Result<String, DevPostgresError> {
    let output = command
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(DevPostgresError::io(format!("cannot run {name}")))?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        return Err(DevPostgresError::Command {
            command: name.to_string(),
            status: output.status.to_string(),
            output: last_lines(&text),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `setpriv` with `extra` options, switching to `run_as` (uid, gid) if given;
/// the program and its arguments follow.
fn as_server_user(run_as: Option<(u32, u32)>, extra: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    if let Some((uid, gid)) = run_as {
        command
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--init-groups");
    }
    command.args(extra).arg("--");
    command
}

/// A database name from `hint`, the process id and a counter: lower-case
/// ASCII letters, digits and `_` only, starting with a letter, at most 63
/// bytes (PostgreSQL's limit), so it never needs quoting.
fn database_name(hint: &str, pid: u32, n: u64) -> String {
    let mut base: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert_str(0, "db_");
    }
    format!("{base}_{pid}_{n}")
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb`, else
/// the directory of the `initdb` on PATH (symbolic links followed, so a
/// link in /usr/local/bin leads to the rest of the programs).
fn find_bindir() -> Result<PathBuf, DevPostgresError> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            is_program(&bin.join("initdb")).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let initdb = dir.join("initdb");
        if is_program(&initdb) {
            let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(bin) = real.parent() {
                return Ok(bin.to_path_buf());
            }
        }
    }
    Err(DevPostgresError::NotInstalled)
}

fn is_program(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// Whether this process runs as root: `/proc/self` belongs to the
/// process's effective user.
fn running_as_root() -> Result<bool, DevPostgresError> {
    let meta = std::fs::metadata("/proc/self").map_err(DevPostgresError::io(
        "cannot read /proc/self to learn our user",
    ))?;
    Ok(meta.uid() == 0)
}

/// The `postgres` system user's uid and gid.
fn postgres_user() -> Result<(u32, u32), DevPostgresError> {
    let id = |flag: &str| -> Result<u32, DevPostgresError> {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(DevPostgresError::io("cannot run id"))?;
        if !output.status.success() {
            return Err(DevPostgresError::NoPostgresUser);
        }
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| DevPostgresError::NoPostgresUser)
    };
    let uid = id("-u")?;
    if uid == 0 {
        return Err(DevPostgresError::NoPostgresUser);
    }
    Ok((uid, id("-g")?))
}

/// A loopback port nobody listens on right now. Another process may take
/// it before the server binds it; [`DevPostgres::start`] retries then.
fn free_port() -> Result<u16, DevPostgresError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(DevPostgresError::io("cannot find a free loopback port"))?;
    let port = listener
        .local_addr()
        .map_err(DevPostgresError::io("cannot find a free loopback port"))?
        .port();
    Ok(port)
}

/// Removes server directories whose owning process is gone: their guardian
/// was killed before it could clean up. Directories of other users that we
/// may not remove are left alone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let Some(Ok(owner)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if owner == me || alive(owner) {
            continue;
        }
        // The owner is gone, but its guardian may still be shutting the
        // server down: leave the directory to it while the server runs.
        let server = std::fs::read_to_string(entry.path().join("data").join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        if server.is_some_and(alive) {
            continue;
        }
        remove_server_dir(&entry.path());
    }
}

/// Removes the directory of a server that is no longer running. A server
/// that was killed (not shut down) leaves its `postmaster.pid` and a small
/// System V shared memory segment behind; the segment is released too, so
/// killed servers do not use up the system's segments over many runs.
fn remove_server_dir(dir: &Path) {
    let pid_file = dir.join("data").join("postmaster.pid");
    // Line 7 of postmaster.pid holds the segment's key and id. By key:
    // no two live segments share one, and PostgreSQL picked a key nobody
    // else used.
    let key = std::fs::read_to_string(pid_file).ok().and_then(|text| {
        let line = text.lines().nth(6)?.to_string();
        line.split_whitespace().next()?.parse::<u64>().ok()
    });
    if let Some(key) = key {
        let _ = Command::new("ipcrm")
            .args(["-M", &key.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Whether anything accepts TCP connections on the loopback `port`.
    fn listening(port: u16) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    #[test]
    fn starts_serves_two_databases_and_drop_removes_everything() {
        let pg = DevPostgres::start().unwrap();
        let dir = pg.dir().to_path_buf();
        let port = pg.port();
        assert!(dir.join("data").join("PG_VERSION").is_file());
        assert!(pg.is_running());
        assert!(listening(port));

        let a = pg.create_database("node a").unwrap();
        let b = pg.create_database("node a").unwrap();
        assert_ne!(a, b, "each call makes a new database");
        for url in [&a, &b] {
            assert!(
                url.starts_with(&format!("postgresql://samvirke@127.0.0.1:{port}/node_a_")),
                "{url}"
            );
            assert_eq!(pg.psql(url, "SELECT 1").unwrap().trim(), "1");
        }
        // Separate databases: a table made in one is not in the other.
        pg.psql(&a, "CREATE TABLE only_in_a (x int)").unwrap();
        let err = pg.psql(&b, "SELECT * FROM only_in_a").unwrap_err();
        assert!(err.to_string().contains("only_in_a"), "{err}");
        // Durable writes: benchmarks against this server measure fsync.
        assert_eq!(pg.psql(&a, "SHOW fsync").unwrap().trim(), "on");

        let second = DevPostgres::start().unwrap();
        assert_ne!(second.port(), port, "a second server gets its own port");
        assert_ne!(second.dir(), dir);

        drop(pg);
        assert!(!dir.exists(), "drop removes {}", dir.display());
        assert!(!listening(port), "drop stops the server");
        // The other server is untouched.
        let c = second.create_database("after").unwrap();
        assert_eq!(second.psql(&c, "SELECT 2").unwrap().trim(), "2");
    }

    #[test]
    fn hostile_name_hints_make_plain_names() {
        assert_eq!(database_name("Node 751", 9, 0), "node_751_9_0");
        assert_eq!(database_name("751", 9, 1), "db_751_9_1");
        assert_eq!(database_name("", 9, 2), "db__9_2");
        let evil = database_name("x\"; DROP DATABASE postgres; --", 9, 3);
        assert!(
            evil.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{evil}"
        );
        let long = database_name(&"ø".repeat(500), u32::MAX, u64::MAX);
        assert!(long.len() <= 63, "{long} is longer than PostgreSQL allows");

        // And for real: the hint cannot reach SQL.
        let pg = DevPostgres::shared().unwrap();
        let url = pg
            .create_database("x\"; DROP DATABASE postgres; --")
            .unwrap();
        assert_eq!(pg.psql(&url, "SELECT 1").unwrap().trim(), "1");
        let postgres = pg.url("postgres");
        assert_eq!(pg.psql(&postgres, "SELECT 1").unwrap().trim(), "1");
    }

    #[test]
    fn shared_is_one_server() {
        let a = DevPostgres::shared().unwrap();
        let b = DevPostgres::shared().unwrap();
        assert!(std::ptr::eq(a, b));
        assert!(a.is_running());
    }

    #[test]
    fn bad_sql_names_the_failure() {
        let pg = DevPostgres::shared().unwrap();
        let url = pg.create_database("bad_sql").unwrap();
        let err = pg.psql(&url, "SELEC 1").unwrap_err().to_string();
        assert!(
            err.contains("psql") && err.contains("syntax error"),
            "{err}"
        );
        let missing = pg.url("no_such_database");
        let err = pg.psql(&missing, "SELECT 1").unwrap_err().to_string();
        assert!(err.contains("no_such_database"), "{err}");
    }

    #[test]
    fn a_killed_guardian_takes_the_server_with_it() {
        let mut pg = DevPostgres::start().unwrap();
        let port = pg.port();
        let dir = pg.dir().to_path_buf();
        let pid_file = std::fs::read_to_string(dir.join("data/postmaster.pid")).unwrap();
        let key: i64 = pid_file
            .lines()
            .nth(6)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let segment_exists = || {
            std::fs::read_to_string("/proc/sysvipc/shm")
                .unwrap()
                .lines()
                .skip(1)
                .any(|l| {
                    l.split_whitespace()
                        .next()
                        .and_then(|k| k.parse::<i64>().ok())
                        == Some(key)
                })
        };
        assert!(segment_exists(), "the running server holds segment {key}");
        // SIGKILL cannot be trapped: the guardian cannot clean up, so the
        // server must die of its parent-death signal.
        pg.guardian.as_mut().unwrap().kill().unwrap();
        assert!(
            pg.log
                .wait_until(Instant::now() + Duration::from_secs(30), |s| s.exited),
            "the server exits when its guardian is killed"
        );
        assert!(!listening(port));
        drop(pg);
        assert!(!dir.exists(), "drop removes what the guardian could not");
        assert!(!segment_exists(), "drop releases segment {key}");
    }

    #[test]
    fn stale_directories_of_dead_owners_are_removed_at_start() {
        let dead = {
            let mut child = Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        let stale = std::env::temp_dir().join(format!("{DIR_PREFIX}{dead}-stale"));
        std::fs::create_dir_all(stale.join("data")).unwrap();
        // Owner alive (pid 1 always is): kept.
        let live = std::env::temp_dir().join(format!("{DIR_PREFIX}1-live-{}", std::process::id()));
        std::fs::create_dir_all(&live).unwrap();
        let pg = DevPostgres::start().unwrap();
        let stale_left = stale.exists();
        let live_left = live.exists();
        let _ = std::fs::remove_dir_all(&stale);
        let _ = std::fs::remove_dir_all(&live);
        drop(pg);
        assert!(!stale_left, "{} is removed", stale.display());
        assert!(live_left, "{} is kept", live.display());
    }

    /// Run by [`the_server_ends_with_its_process`] in a child process:
    /// starts a server, says where, and lets the process exit without
    /// dropping it.
    #[test]
    #[ignore = "run by the_server_ends_with_its_process in a child process"]
    fn child_process_starts_a_server_and_exits() {
        let pg = DevPostgres::shared().unwrap();
        println!("SERVER {} {}", pg.port(), pg.dir().display());
    }

    #[test]
    fn the_server_ends_with_its_process() {
        let output = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "dev_postgres::tests::child_process_starts_a_server_and_exits",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        let line = stdout
            .lines()
            .find_map(|l| Some(&l[l.find("SERVER ")? + "SERVER ".len()..]))
            .unwrap_or_else(|| panic!("the child says where its server is: {stdout}"));
        let (port, dir) = line.split_once(' ').unwrap();
        let port: u16 = port.parse().unwrap();
        let dir = PathBuf::from(dir);
        // The process is gone; its server's guardian now shuts the server
        // down. Nothing of ours signals when, so poll briefly and boundedly.
        let deadline = Instant::now() + Duration::from_secs(30);
        while (listening(port) || dir.exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!listening(port), "the server on port {port} stopped");
        assert!(!dir.exists(), "{} was removed", dir.display());
    }
}
