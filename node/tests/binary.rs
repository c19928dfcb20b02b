//! The `samvirke-node` binary as an operator runs it: a real process with a
//! node directory made by `provision` (as `samvirke init` makes it).
//!
//! - configuration mistakes (missing key file, unknown key, bad address,
//!   private key readable by others) exit with status 64 (EX_USAGE) and a
//!   message naming the key or file;
//! - a foreign directory as `node.data_dir` is refused and left exactly as
//!   it was; a port already in use is refused with the listener named;
//! - a valid node starts, serves, and on SIGTERM drains and exits 0;
//! - SIGTERM with `Health/Watch` streams open still stops within 5 s.
//!
//! Every child runs under a watchdog that kills it if it hangs, so a broken
//! build fails these tests instead of stalling them.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use samvirke_node::pki::{DevCa, loopback_hosts};
use samvirke_node::provision::{
    CONFIG_FILE, NodeSpec, SIGNING_KEY_FILE, init_node_dir, install_dev_certificate,
};
use samvirke_proto::v1 as pb;
use samvirke_proto::v1::local_client::LocalClient;

const BIN: &str = env!("CARGO_BIN_EXE_samvirke-node");
/// How long a child may take to exit (or to get ready) before it counts as hung.
const TIMEOUT: Duration = Duration::from_secs(30);
/// EX_USAGE: what the binary returns for a configuration problem.
const EXIT_CONFIG: i32 = 64;

/// A provisioned node directory inside a temporary root.
struct NodeDir {
    root: tempfile::TempDir,
    dir: PathBuf,
    /// The first admin token `init` made.
    admin_token: String,
}

impl NodeDir {
    /// A valid node directory whose peer listener is `peer_listen`.
    fn new(peer_listen: &str) -> NodeDir {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("aarhus");
        let spec = NodeSpec {
            municipality_code: 751,
            municipality_name: "Aarhus Kommune".to_string(),
            peer_listen: peer_listen.to_string(),
            local_listen: "127.0.0.1:0".to_string(),
            advertised_endpoint: None,
        };
        let made = init_node_dir(&dir, &spec).expect("init node dir");
        let ca = DevCa::generate("Test CA").expect("CA");
        install_dev_certificate(&dir, "Aarhus Kommune", &ca, &loopback_hosts())
            .expect("install certificate");
        NodeDir {
            root,
            dir,
            admin_token: made.admin_token.to_string(),
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Rewrites the config text with `edit`.
    fn edit_config(&self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(self.config()).expect("read node.toml");
        let edited = edit(&text);
        assert_ne!(edited, text, "the edit must change the config");
        std::fs::write(self.config(), edited).expect("write node.toml");
    }

    fn command(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--config")
            .arg(self.config())
            .env_remove("SAMVIRKE_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }
}

/// Sends `signal` (e.g. `-TERM`) to `pid` with kill(1).
fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Kills `pid` unless told to stand down within [`TIMEOUT`]. Joining the
/// returned handle says whether it had to.
fn watchdog(pid: u32) -> (mpsc::Sender<()>, JoinHandle<bool>) {
    let (stand_down, orders) = mpsc::channel::<()>();
    let handle = std::thread::spawn(move || match orders.recv_timeout(TIMEOUT) {
        Err(RecvTimeoutError::Timeout) => send_signal(pid, "-KILL"),
        Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
    });
    (stand_down, handle)
}

/// Waits for `child` to exit, killing it if it takes longer than [`TIMEOUT`].
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let (stand_down, dog) = watchdog(child.id());
    let status = child.wait().expect("wait for samvirke-node");
    // The child is reaped; tell the watchdog before it can fire.
    let _ = stand_down.send(());
    let killed = dog.join().expect("watchdog thread");
    assert!(!killed, "samvirke-node hung for {TIMEOUT:?} and was killed");
    status
}

/// Runs the binary to completion; returns its status and stderr.
fn run_to_exit(mut command: Command) -> (ExitStatus, String) {
    let child = command.spawn().expect("spawn samvirke-node");
    let (stand_down, dog) = watchdog(child.id());
    let output = child.wait_with_output().expect("wait for samvirke-node");
    let _ = stand_down.send(());
    let killed = dog.join().expect("watchdog thread");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !killed,
        "samvirke-node hung for {TIMEOUT:?} and was killed; stderr:\n{stderr}"
    );
    (output.status, stderr)
}

/// Removes ANSI colour sequences, in case the log writer adds them anyway.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of ` key=value` in a text log line.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..].split_whitespace().next()
}

/// A list of the names and contents of the files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            let entry = entry.expect("dir entry");
            let contents = std::fs::read(entry.path()).expect("read file");
            (entry.file_name().to_string_lossy().into_owned(), contents)
        })
        .collect();
    entries.sort();
    entries
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_missing_signing_key_exits_64_naming_the_key_and_the_file() {
    let node = NodeDir::new("127.0.0.1:0");
    let key = node.dir.join(SIGNING_KEY_FILE);
    std::fs::remove_file(&key).expect("remove signing key");

    let (status, stderr) = run_to_exit(node.command());
    assert_eq!(status.code(), Some(EXIT_CONFIG), "stderr:\n{stderr}");
    assert!(stderr.contains("node.signing_key"), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&key.display().to_string()),
        "stderr names {}:\n{stderr}",
        key.display()
    );
}

#[test]
fn an_unknown_config_key_exits_64_naming_it() {
    let node = NodeDir::new("127.0.0.1:0");
    node.edit_config(|text| {
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(line);
            out.push('\n');
            if line.starts_with("municipality_code") {
                out.push_str("colour = \"blue\"\n");
            }
        }
        out
    });

    let (status, stderr) = run_to_exit(node.command());
    assert_eq!(status.code(), Some(EXIT_CONFIG), "stderr:\n{stderr}");
    assert!(stderr.contains("colour"), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&node.config().display().to_string()),
        "stderr names the config file:\n{stderr}"
    );
}

#[test]
fn a_bad_listen_address_exits_64_naming_the_key() {
    let node = NodeDir::new("not-an-address");

    let (status, stderr) = run_to_exit(node.command());
    assert_eq!(status.code(), Some(EXIT_CONFIG), "stderr:\n{stderr}");
    assert!(stderr.contains("peer.listen"), "stderr:\n{stderr}");
    assert!(stderr.contains("not-an-address"), "stderr:\n{stderr}");
}

#[test]
fn a_signing_key_readable_by_others_exits_64() {
    let node = NodeDir::new("127.0.0.1:0");
    let key = node.dir.join(SIGNING_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let (status, stderr) = run_to_exit(node.command());
    assert_eq!(status.code(), Some(EXIT_CONFIG), "stderr:\n{stderr}");
    assert!(stderr.contains("chmod 600"), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&key.display().to_string()),
        "stderr:\n{stderr}"
    );
}

#[test]
fn a_foreign_data_dir_is_refused_and_left_untouched() {
    let node = NodeDir::new("127.0.0.1:0");
    let foreign = node.root.path().join("home-of-someone");
    std::fs::create_dir(&foreign).expect("mkdir");
    std::fs::write(foreign.join("thesis.docx"), b"Chapter 1: Samvirke").expect("write");
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let before = listing(&foreign);
    let mode_before = mode(&foreign);
    let literal = foreign.display().to_string();
    assert!(
        !literal.contains('\''),
        "a TOML literal string cannot hold `'`"
    );
    node.edit_config(|text| {
        text.replace("data_dir = \"data\"", &format!("data_dir = '{literal}'"))
    });

    let (status, stderr) = run_to_exit(node.command());
    assert!(!status.success(), "a foreign data dir must stop the node");
    assert!(stderr.contains("not a Samvirke store"), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&literal),
        "stderr names the directory:\n{stderr}"
    );
    assert_eq!(
        listing(&foreign),
        before,
        "the directory must be left as it was"
    );
    assert_eq!(mode(&foreign), mode_before, "its permissions too");
}

#[test]
fn a_port_in_use_is_refused_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("local addr").to_string();
    let node = NodeDir::new(&address);

    let (status, stderr) = run_to_exit(node.command());
    assert!(!status.success(), "stderr:\n{stderr}");
    assert!(stderr.contains("peer listener"), "stderr:\n{stderr}");
    assert!(stderr.contains(&address), "stderr:\n{stderr}");
    drop(taken);
}

/// Kills the child if the test fails before it exits on its own.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn a_valid_node_serves_until_sigterm_then_exits_0() {
    let node = NodeDir::new("127.0.0.1:0");
    let mut child = KillOnDrop(node.command().spawn().expect("spawn samvirke-node"));
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(strip_ansi(&line)).is_err() {
                break;
            }
        }
    });

    // Ready when the node logs that it serves (after both listeners are bound).
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    let serving = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("samvirke node serving") => break line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no `samvirke node serving` line ({e:?}); stderr so far:\n{seen:#?}"),
        }
    };
    assert!(
        matches!(child.0.try_wait(), Ok(None)),
        "the node keeps running after it is ready"
    );
    for key in ["peer", "local"] {
        let address = log_field(&serving, key)
            .unwrap_or_else(|| panic!("`{key}=` in the serving line: {serving}"));
        let address: std::net::SocketAddr = address
            .parse()
            .unwrap_or_else(|e| panic!("`{key}={address}` is an address: {e}"));
        assert_ne!(address.port(), 0, "the log shows the bound port");
        std::net::TcpStream::connect_timeout(&address, TIMEOUT)
            .unwrap_or_else(|e| panic!("the {key} listener {address} accepts connections: {e}"));
    }

    assert!(send_signal(child.0.id(), "-TERM"), "kill -TERM");
    let status = wait_bounded(&mut child.0);
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");

    reader.join().expect("stderr reader");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter().any(|line| line.contains("SIGTERM received")),
        "the node says why it stops: {rest:#?}"
    );
    assert!(
        rest.iter()
            .any(|line| line.contains("samvirke node stopped")),
        "the node drains and logs that it stopped: {rest:#?}"
    );
}

/// What systemd allows before it kills a stopping unit is 30 s by default
/// (and the deploy unit keeps that); the node must be well within it even
/// when clients hold `Health/Watch` streams open, which never end on their
/// own.
const STOP_WITH_WATCHES: Duration = Duration::from_secs(5);

#[test]
fn sigterm_stops_within_5_s_while_health_watches_are_open() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let node = NodeDir::new("127.0.0.1:0");
    let mut child = KillOnDrop(node.command().spawn().expect("spawn samvirke-node"));
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(strip_ansi(&line)).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let serving = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("samvirke node serving") => break line,
            Ok(_) => {}
            Err(e) => panic!("no `samvirke node serving` line ({e:?})"),
        }
    };
    let local = log_field(&serving, "local")
        .expect("`local=` in the serving line")
        .to_string();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    // Three watchers, as a load balancer and two monitors would hold, and
    // an ingest client that opened its stream and then went quiet.
    let (mut watches, idle_ingest) = runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{local}"))
            .expect("an endpoint")
            .connect()
            .await
            .expect("connect to the local listener");
        let mut watches = Vec::new();
        for _ in 0..3 {
            let mut stream = HealthClient::new(channel.clone())
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("Health/Watch opens")
                .into_inner();
            let first = tokio::time::timeout(TIMEOUT, stream.message())
                .await
                .expect("a first status in time")
                .expect("a status")
                .expect("the stream is open");
            assert_eq!(first.status, 1, "SERVING");
            watches.push(stream);
        }
        let (batches, batch_rx) = tokio::sync::mpsc::channel::<pb::IngestBatch>(1);
        let mut request =
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(batch_rx));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", node.admin_token)
                .parse()
                .expect("a header value"),
        );
        let acks = LocalClient::new(channel)
            .ingest_batches(request)
            .await
            .expect("IngestBatches opens")
            .into_inner();
        (watches, (batches, acks))
    });

    let asked = Instant::now();
    assert!(send_signal(child.0.id(), "-TERM"), "kill -TERM");
    let status = wait_bounded(&mut child.0);
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    assert!(
        took < STOP_WITH_WATCHES,
        "stopped in {took:?} with three Health/Watch streams and an idle ingest stream \
         open; must be under {STOP_WITH_WATCHES:?}"
    );
    // Each watcher learns the stream is over (a last status or an error),
    // rather than hanging on a dead connection.
    runtime.block_on(async {
        for stream in &mut watches {
            let ended = tokio::time::timeout(Duration::from_secs(5), async {
                while let Ok(Some(_)) = stream.message().await {}
            })
            .await;
            assert!(ended.is_ok(), "a watch stream ends with the node");
        }
        // The quiet ingest client is told why its call ended.
        let (_batches, mut acks) = idle_ingest;
        let last = tokio::time::timeout(Duration::from_secs(5), acks.message())
            .await
            .expect("the ingest stream ends with the node");
        assert!(
            !matches!(last, Ok(Some(_))),
            "no acknowledgement for a batch never sent: {last:?}"
        );
    });
    reader.join().expect("stderr reader");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter()
            .any(|line| line.contains("samvirke node stopped")),
        "the node drains and logs that it stopped (the final flush ran): {rest:#?}"
    );
}
