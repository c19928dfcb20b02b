//! Ingest survives `kill -9`: the real `samvirke-node` binary is killed with
//! SIGKILL at random points while a client streams numbered batches of a
//! 50 000-reading file into a resumable session, and restarted each time.
//! After every restart:
//!
//! - `CountReadings` equals the rows a full query returns (the sensor index
//!   agrees with the readings);
//! - the stored readings are exactly the file's batches `1..=n` for some
//!   `n` (no batch is stored in part), every batch the client saw
//!   acknowledged among them, and at most the two batches in flight beyond;
//! - the session says `n` (its progress is written with the batch);
//! - the node logged its start-up check of the index.
//!
//! Finally the real `samvirke ingest csv --resume` completes the file: it
//! skips the `n` stored batches without sending them and stores the rest as
//! new readings (none replaced), and a second `--resume` sends nothing.
//!
//! The kill points come from a seeded generator; the seed is printed, and
//! `SAMVIRKE_CRASH_SEED=<seed>` replays a run.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime};

use samvirke_node::data::generate::{SplitMix64, sensor_dataset};
use samvirke_node::ingest::session;
use samvirke_node::pki::{DevCa, loopback_hosts};
use samvirke_node::provision::{CONFIG_FILE, NodeSpec, init_node_dir, install_dev_certificate};
use samvirke_proto::v1 as pb;
use samvirke_proto::v1::local_client::LocalClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_samvirke-node");
/// How long the node may take to get ready, and the CLI to finish.
const TIMEOUT: Duration = Duration::from_secs(60);
const SENSORS: u64 = 50;
const INSTANTS: u64 = 1000;
const BATCH: usize = 500;
const ROUNDS: usize = 8;
/// Batches the client sends ahead of their acknowledgement (as the CLI).
const WINDOW: usize = 2;
/// 2026-01-01T00:00:00Z in Unix seconds.
const START_S: i64 = 1_767_225_600;

/// The `samvirke` CLI, built next to the node binary by `cargo test
/// --workspace`; checked to be newer than its sources.
fn cli() -> PathBuf {
    let path = Path::new(BIN).with_file_name("samvirke");
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}); build it with `cargo build -p samvirke-cli` (cargo test \
                 --workspace does)",
                path.display()
            )
        });
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../admin-cli/src");
    let newest = newest_mtime(&sources);
    assert!(
        built >= newest,
        "{} is older than admin-cli/src; rebuild it with `cargo build -p samvirke-cli`",
        path.display()
    );
    path
}

fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).expect("read admin-cli/src") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        let mtime = if meta.is_dir() {
            newest_mtime(&entry.path())
        } else {
            meta.modified().expect("mtime")
        };
        newest = newest.max(mtime);
    }
    newest
}

/// The readings file: `SENSORS` sensors x `INSTANTS` minutes, and the same
/// readings as the CLI parses them, cut into its batches.
fn readings_file(path: &Path) -> Vec<Vec<pb::Reading>> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    writeln!(file, "sensor_id,timestamp,lat,lon,no2").expect("write");
    let mut all = Vec::new();
    for minute in 0..INSTANTS {
        for sensor in 0..SENSORS {
            let id = format!("crash-{sensor:02}");
            let seconds = START_S + 60 * minute as i64;
            let value = ((sensor * 7 + minute) % 100) as f64;
            let located = (sensor + minute) % 2 == 0;
            if located {
                writeln!(file, "{id},{},56.15,10.2,{value}", seconds * 1000).expect("write");
            } else {
                writeln!(file, "{id},{},,,{value}", seconds * 1000).expect("write");
            }
            all.push(pb::Reading {
                sensor_id: id,
                at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                values: [("no2".to_string(), value)].into_iter().collect(),
                location: located.then_some(pb::Location {
                    lat: 56.15,
                    lon: 10.2,
                }),
            });
        }
    }
    file.flush().expect("flush");
    all.chunks(BATCH).map(<[pb::Reading]>::to_vec).collect()
}

/// A running node process and its log lines.
struct RunningNode {
    child: Child,
    local: String,
    /// Every stderr line up to "serving".
    startup: Vec<String>,
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(config: &Path) -> RunningNode {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env_remove("SAMVIRKE_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn samvirke-node");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = std_mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // After start-up nobody listens; keep draining the pipe.
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut startup = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("samvirke node serving") => {
                let local = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("local="))
                    .unwrap_or_else(|| panic!("no local= in {line}"))
                    .to_string();
                startup.push(line);
                return RunningNode {
                    child,
                    local: format!("http://{local}"),
                    startup,
                };
            }
            Ok(line) => startup.push(line),
            Err(e) => panic!("the node did not get ready ({e:?}); its log:\n{startup:#?}"),
        }
    }
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII"),
    );
    request
}

async fn connect(node: &RunningNode) -> LocalClient<Channel> {
    LocalClient::connect(node.local.clone())
        .await
        .expect("connect to the local API")
}

/// `CountReadings`, and the (sensor, second) of every reading a full query returns.
async fn stored(node: &RunningNode, token: &str, dataset: &str) -> (u64, HashSet<(String, i64)>) {
    let mut client = connect(node).await;
    let count = client
        .count_readings(authorized(
            pb::CountReadingsRequest {
                dataset_id: dataset.to_string(),
            },
            token,
        ))
        .await
        .expect("CountReadings")
        .into_inner()
        .count;
    let query = pb::ReadingQuery {
        dataset_id: dataset.to_string(),
        from: Some(prost_types::Timestamp {
            seconds: START_S - 86_400,
            nanos: 0,
        }),
        until: Some(prost_types::Timestamp {
            seconds: START_S + 86_400 * 3,
            nanos: 0,
        }),
        ..pb::ReadingQuery::default()
    };
    let mut chunks = client
        .query_readings(authorized(query, token))
        .await
        .expect("QueryReadings")
        .into_inner();
    let mut rows = HashSet::new();
    let mut total = 0u64;
    while let Some(chunk) = chunks.message().await.expect("a chunk") {
        for reading in chunk.readings {
            total += 1;
            let at = reading.at.map_or(0, |t| t.seconds);
            rows.insert((reading.sensor_id, at));
        }
    }
    assert_eq!(total, rows.len() as u64, "no reading is returned twice");
    (count, rows)
}

async fn session_acked(node: &RunningNode, token: &str, id: &str) -> u64 {
    let mut client = connect(node).await;
    client
        .ingest_session(authorized(
            pb::IngestSessionRequest {
                session_id: id.to_string(),
            },
            token,
        ))
        .await
        .expect("IngestSession")
        .into_inner()
        .acked
}

/// Streams batches `from..` of the session until the call breaks (the
/// node is killed) or the batches run out; returns the last batch
/// acknowledged. After `kill_after` acknowledgements of this call, kills
/// the node `kill_delay` later, while the next batches are being stored.
#[allow(clippy::too_many_arguments)]
async fn ingest_until_killed(
    node: &RunningNode,
    token: &str,
    dataset: &str,
    session_id: &str,
    batches: &[Vec<pb::Reading>],
    from: u64,
    kill_after: u64,
    kill_delay: Duration,
) -> Option<u64> {
    let mut client = connect(node).await;
    let (requests, rx) = mpsc::channel::<pb::IngestBatch>(WINDOW);
    let request = |sequence: u64| pb::IngestBatch {
        dataset_id: dataset.to_string(),
        readings: batches[sequence as usize - 1].clone(),
        sequence,
        session_id: session_id.to_string(),
        restart: false,
    };
    let mut next = from;
    while next < from + WINDOW as u64 && next as usize <= batches.len() {
        requests.send(request(next)).await.expect("queue");
        next += 1;
    }
    let mut acks = client
        .ingest_batches(authorized(ReceiverStream::new(rx), token))
        .await
        .expect("IngestBatches")
        .into_inner();
    let pid = node.child.id();
    let kill = move || {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
    };
    let mut requests = Some(requests);
    let mut last = None;
    let mut seen = 0;
    // The call ends when the node dies (or the batches run out).
    while let Ok(Some(ack)) = acks.message().await {
        assert_eq!(ack.sequence, from + seen, "acknowledged in order");
        assert_eq!(ack.session_acked, ack.sequence);
        last = Some(ack.sequence);
        seen += 1;
        if seen == kill_after {
            std::thread::spawn(move || {
                std::thread::sleep(kill_delay);
                kill();
            });
        }
        if next as usize <= batches.len() {
            if let Some(queue) = &requests
                && queue.send(request(next)).await.is_err()
            {
                break;
            }
            next += 1;
        } else {
            // No batch left: end the stream.
            requests = None;
        }
    }
    if seen < kill_after {
        // The file ran out first: kill the node now.
        kill();
    }
    last
}

/// (sensor, second) of every reading of batches `1..=n`.
fn expected(batches: &[Vec<pb::Reading>], n: usize) -> HashSet<(String, i64)> {
    batches[..n]
        .iter()
        .flatten()
        .map(|r| (r.sensor_id.clone(), r.at.as_ref().map_or(0, |t| t.seconds)))
        .collect()
}

/// What the checks after a restart compare against.
struct Facts {
    token: String,
    dataset: String,
    session: String,
    /// Readings in batches `1..=n`, by `n`.
    prefix: Vec<u64>,
    batches: Vec<Vec<pb::Reading>>,
}

/// The checks after a node killed with SIGKILL is restarted, with the
/// client having seen batches `1..=acked_seen` acknowledged; returns the
/// number of batches stored.
async fn verify_after_kill(node: &RunningNode, facts: &Facts, label: &str, acked_seen: u64) -> u64 {
    assert!(
        node.startup
            .iter()
            .any(|line| line.contains("sensor index was checked against the readings and agrees")),
        "{label}: after kill -9 the node checks its index: {:#?}",
        node.startup
    );
    let (count, rows) = stored(node, &facts.token, &facts.dataset).await;
    assert_eq!(
        count,
        rows.len() as u64,
        "{label}: CountReadings equals the rows stored"
    );
    let n = facts
        .prefix
        .iter()
        .position(|&p| p == count)
        .unwrap_or_else(|| panic!("{label}: {count} readings is not a whole number of batches"))
        as u64;
    assert!(
        n >= acked_seen && n <= acked_seen + WINDOW as u64,
        "{label}: {n} batches stored; the client saw 1..={acked_seen} acknowledged"
    );
    assert!(
        rows == expected(&facts.batches, n as usize),
        "{label}: the stored readings are exactly batches 1..={n}"
    );
    assert_eq!(
        session_acked(node, &facts.token, &facts.session).await,
        n,
        "{label}: the session's progress is written with its batches"
    );
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_batches_survive_kill_9_and_resume_sends_only_the_rest() {
    let seed = std::env::var("SAMVIRKE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("kill points seeded with {seed}; replay with SAMVIRKE_CRASH_SEED={seed}");
    let mut rng = SplitMix64(seed);
    let cli = cli();

    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("aarhus");
    let made = init_node_dir(
        &dir,
        &NodeSpec {
            municipality_code: 751,
            municipality_name: "Aarhus Kommune".to_string(),
            peer_listen: "127.0.0.1:0".to_string(),
            local_listen: "127.0.0.1:0".to_string(),
            advertised_endpoint: None,
        },
    )
    .expect("init node dir");
    let ca = DevCa::generate("Test CA").expect("CA");
    install_dev_certificate(&dir, "Aarhus Kommune", &ca, &loopback_hosts()).expect("certificate");
    let config = dir.join(CONFIG_FILE);
    let token = made.admin_token.to_string();

    let file = root.path().join("readings.csv");
    let batches = readings_file(&file);
    let total = SENSORS * INSTANTS;
    assert_eq!(batches.len() as u64, total / BATCH as u64);
    let prefix: Vec<u64> = std::iter::once(0)
        .chain(batches.iter().scan(0u64, |sum, b| {
            *sum += b.len() as u64;
            Some(*sum)
        }))
        .collect();
    let mut node = start(&config);
    let dataset = sensor_dataset("air-quality", 751).expect("dataset");
    let dataset_id = dataset.id.clone();
    connect(&node)
        .await
        .publish_dataset(authorized(
            samvirke_node::wire::dataset_to_proto(&dataset),
            &token,
        ))
        .await
        .expect("publish the dataset");
    // The CLI's session for this file, so `--resume` finds what the rounds stored.
    let session_id = session::file_session_id(
        "csv",
        &dataset_id,
        BATCH as u32,
        std::fs::File::open(&file).expect("open"),
    )
    .expect("session id");

    let facts = Facts {
        token: token.clone(),
        dataset: dataset_id.clone(),
        session: session_id.clone(),
        prefix: prefix.clone(),
        batches: batches.clone(),
    };
    let started = Instant::now();
    let mut acked_seen = 0u64;
    let mut stored_batches = 0u64;
    for round in 1..=ROUNDS {
        let kill_after = 1 + rng.below(3);
        let kill_delay = Duration::from_micros(rng.below(60_000));
        let from = stored_batches + 1;
        let last = ingest_until_killed(
            &node,
            &token,
            &dataset_id,
            &session_id,
            &batches,
            from,
            kill_after,
            kill_delay,
        )
        .await;
        let status = node.child.wait().expect("wait for the killed node");
        assert!(
            !status.success(),
            "round {round}: the node was killed, not stopped ({status:?})"
        );
        if let Some(last) = last {
            acked_seen = last;
        }

        node = start(&config);
        let n = verify_after_kill(&node, &facts, &format!("round {round}"), acked_seen).await;
        eprintln!(
            "round {round}: killed {kill_delay:?} after {kill_after} acknowledgements; \
             acknowledged 1..={acked_seen}, stored 1..={n}"
        );
        stored_batches = n;
        // The session is the truth from here on.
        acked_seen = stored_batches;
    }
    assert!(
        (stored_batches as usize) < batches.len(),
        "the rounds leave work for --resume"
    );

    // The CLI itself is cut off by kill -9: its report says exactly which
    // batches are stored.
    {
        let target = stored_batches + 1 + rng.below(3);
        let kill_delay = Duration::from_micros(rng.below(30_000));
        let mut run = Command::new(&cli)
            .args(["ingest", "csv"])
            .arg(&file)
            .args(["--dataset", &dataset_id, "--batch-size"])
            .arg(BATCH.to_string())
            .args(["--resume", "--node", &node.local, "--token", &token])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run samvirke ingest");
        let deadline = Instant::now() + TIMEOUT;
        while session_acked(&node, &token, &session_id).await < target {
            assert!(Instant::now() < deadline, "the CLI made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(kill_delay).await;
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(node.child.id().to_string())
            .status();
        node.child.wait().expect("wait for the killed node");
        let output = tokio::task::spawn_blocking(move || {
            let _ = run.stdin.take();
            run.wait_with_output()
        })
        .await
        .expect("CLI task")
        .expect("CLI output");
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        let errors = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{report}{errors}");
        assert!(
            errors.contains("run the same command with --resume"),
            "{errors}"
        );
        // "batches 1..=K of the file are stored (acknowledged by the node)"
        let told: u64 = report
            .lines()
            .find_map(|line| {
                line.strip_prefix("batches 1..=").and_then(|rest| {
                    rest.strip_suffix(" of the file are stored (acknowledged by the node)")
                })
            })
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("no stored batches in the report:\n{report}{errors}"));
        assert!(told >= target, "{report}");
        assert!(
            report.contains(&format!(
                "skipped {stored_batches} batches ({} readings)",
                prefix[stored_batches as usize]
            )),
            "{report}"
        );
        node = start(&config);
        let n = verify_after_kill(&node, &facts, "the CLI round", told).await;
        eprintln!(
            "the CLI round: killed {kill_delay:?} after batch {target} was stored; the CLI \
             reported 1..={told} stored, stored 1..={n}"
        );
        stored_batches = n;
    }
    assert!(
        (stored_batches as usize) < batches.len(),
        "the CLI round leaves work for --resume"
    );

    // The CLI completes the file, sending only what the node lacks.
    let resume = {
        let (cli, file, local, token, dataset_id) = (
            cli.clone(),
            file.clone(),
            node.local.clone(),
            token.clone(),
            dataset_id.clone(),
        );
        tokio::task::spawn_blocking(move || {
            Command::new(cli)
                .args(["ingest", "csv"])
                .arg(&file)
                .args(["--dataset", &dataset_id, "--batch-size"])
                .arg(BATCH.to_string())
                .args(["--resume", "--node", &local, "--token", &token])
                .output()
                .expect("run samvirke ingest")
        })
        .await
        .expect("CLI task")
    };
    let report = String::from_utf8_lossy(&resume.stdout).into_owned();
    assert!(
        resume.status.success(),
        "samvirke ingest --resume: {report}{}",
        String::from_utf8_lossy(&resume.stderr)
    );
    let skipped = stored_batches;
    let rest = batches.len() as u64 - skipped;
    let rest_readings = total - prefix[skipped as usize];
    assert!(
        report.contains(&format!(
            "skipped {skipped} batches ({} readings) the node had already stored (session \
             {session_id})\n",
            prefix[skipped as usize]
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "ingested {rest_readings} readings in {rest} batches: {rest_readings} new, 0 replaced\n"
        )),
        "only the unacknowledged batches were sent, and each was new: {report}"
    );
    let (count, rows) = stored(&node, &token, &dataset_id).await;
    assert_eq!(count, total);
    assert!(
        rows == expected(&batches, batches.len()),
        "the whole file is stored"
    );
    assert_eq!(
        session_acked(&node, &token, &session_id).await,
        batches.len() as u64
    );

    // Resuming a complete file sends nothing.
    let again = {
        let (local, token, dataset_id) = (node.local.clone(), token.clone(), dataset_id.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(cli)
                .args(["ingest", "csv"])
                .arg(&file)
                .args(["--dataset", &dataset_id, "--batch-size"])
                .arg(BATCH.to_string())
                .args(["--resume", "--node", &local, "--token", &token])
                .output()
                .expect("run samvirke ingest")
        })
        .await
        .expect("CLI task")
    };
    let report = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.status.success(), "{report}");
    assert!(
        report.contains("ingested 0 readings in 0 batches: 0 new, 0 replaced\n"),
        "{report}"
    );

    // A clean stop is remembered: the next start does not read every reading.
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(node.child.id().to_string())
            .status()
            .expect("kill -TERM")
            .success()
    );
    assert!(node.child.wait().expect("wait").success());
    let node = start(&config);
    assert!(
        node.startup
            .iter()
            .any(|line| line.contains("stopped cleanly last time")),
        "{:#?}",
        node.startup
    );
    eprintln!("done in {:.1?}", started.elapsed());
}
