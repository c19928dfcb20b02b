//! One question to a whole fellowship, answered by five nodes: Aarhus (751),
//! Vejle (630), Silkeborg (740), Herning (657) and Randers (730), members of
//! one roster, with agreements that let Vejle read the others' air-quality
//! readings. Vejle's analyst asks through Vejle's own node (`Local/Ask`),
//! which includes Vejle's own data.
//!
//! Four nodes run in this process (real sled stores, real mutual TLS on
//! loopback). Randers runs as a separate process: this test binary started
//! again on [`child_node_process`], which opens and serves a node directory
//! with the node library exactly as `samvirke-node` does, so it can be
//! frozen and killed like any node process. Herning is listed in the roster
//! at the address of a TCP proxy in this test that forwards to Herning's
//! peer listener (the TLS name stays 127.0.0.1, which Herning's certificate
//! is issued for) and, when told to, holds every chunk for a while.
//!
//! Covered:
//! - the federated readings answer is exactly the union of every node's own
//!   answer (each node's local `QueryReadings`), compared row by row
//!   (municipality, dataset, sensor, time, measure, value), and each node's
//!   own answer is exactly what it ingested in the range; a second dataset
//!   with the same keyword that no agreement covers never appears;
//! - hourly buckets over all sensors, combined over the fellowship, equal a
//!   brute force over every reading ingested (count, min and max exactly,
//!   sum and average up to rounding), and so does each source's own buckets;
//! - with Randers's process frozen under the question and then killed, and
//!   Herning's answers slowed past a 2 s deadline, the answer ends within
//!   the deadline plus a margin, the healthy sources' rows are complete and
//!   exact, and the statuses say Randers unavailable, Herning timed out,
//!   everyone else ok; asked again for buckets, the combination holds
//!   exactly the healthy sources and names the two left out; once Herning
//!   is quick again it answers in full, and the dead node holds no question
//!   up;
//! - Randers killed in the middle of a long answer: what it sent arrives,
//!   tagged and exact, its status says unavailable with the rows that
//!   arrived, the break is noticed at once, everyone else answers in full.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use samvirke_node::config::Config;
use samvirke_node::data::{Reading, sensor_dataset};
use samvirke_node::devnet::{DEV_SYNC_INTERVAL_SECS, DevStore};
use samvirke_node::governance::files::IdentityCard;
use samvirke_node::governance::{Consumers, DecisionRule, Operation, Scope};
use samvirke_node::identity::NodeIdentity;
use samvirke_node::pki::{DevCa, loopback_hosts};
use samvirke_node::provision::{NodeSpec, init_node_dir, install_dev_certificate};
use samvirke_node::server::{Listeners, Node};
use samvirke_node::wire;
use samvirke_proto::v1::{self as pb, PartnerOutcome, ask_request};
use samvirke_tests::{
    AskAnswer, FELLOWSHIP, GovernanceFixture, LocalApi, ReadingRow, air_quality_readings, ask_all,
    ingest, ingest_batches, local_query, reading_rows,
};
use time::OffsetDateTime;
use time::macros::{date, datetime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const SILKEBORG: u32 = 740;
const HERNING: u32 = 657;
const RANDERS: u32 = 730;
const EVERYONE: [u32; 5] = [AARHUS, VEJLE, SILKEBORG, HERNING, RANDERS];
const PROVIDERS: [u32; 4] = [AARHUS, SILKEBORG, HERNING, RANDERS];

const KEYWORD: &str = "air-quality";
/// Aarhus's second air-quality dataset, which no agreement covers.
const UNSHARED: &str = "aarhus-air-quality-pilot";
/// Every node's readings: 6 sensors every 10 minutes for 200 steps
/// (1 200 readings, 33 h 20 min) from `DATA_FROM`.
const DATA_FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const SENSORS: u32 = 6;
const STEPS: u32 = 200;

/// The child process's node config (its presence makes
/// [`child_node_process`] serve).
const CHILD_CONFIG: &str = "SAMVIRKE_TEST_CHILD_NODE_CONFIG";
/// The line the child prints once its listeners are bound and it serves.
const CHILD_READY: &str = "child node serving";

// ---- Randers: a node process ------------------------------------------------

/// Not a test: the entry point of the node process the tests start (this
/// binary run again with `--ignored --exact child_node_process`). It opens
/// the node directory named by `SAMVIRKE_TEST_CHILD_NODE_CONFIG`, binds,
/// serves, prints its addresses, and serves until killed or until its
/// parent goes away (its stdin closes).
#[test]
#[ignore = "the node process the federation tests start; not a test by itself"]
fn child_node_process() {
    let Some(config) = std::env::var_os(CHILD_CONFIG) else {
        return;
    };
    let config = Config::load(Path::new(&config)).expect("the child node's config loads");
    std::thread::spawn(|| {
        let mut parent = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut parent);
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Runtime::new().expect("the child node's runtime");
    runtime.block_on(async move {
        let node = Node::open(config).expect("open the child node");
        let listeners = Listeners::bind(node.config())
            .await
            .expect("bind the child node's listeners");
        let running = node.spawn(listeners);
        println!(
            "{CHILD_READY} peer={} local={}",
            running.peer_addr, running.local_addr
        );
        std::future::pending::<()>().await;
    });
}

/// A node in its own process, killed when dropped.
struct NodeProcess {
    child: Child,
    identity: NodeIdentity,
    peer: SocketAddr,
    api: LocalApi,
}

impl NodeProcess {
    /// Provisions a node for `code` in `dir` with a certificate from `ca`
    /// and starts it as a child process; returns once it serves.
    async fn start(dir: &Path, ca: &DevCa, code: u32) -> NodeProcess {
        let name = samvirke_node::fixtures::municipality(code)
            .expect("a fixture municipality")
            .name;
        let made = init_node_dir(
            dir,
            &NodeSpec {
                municipality_code: code,
                municipality_name: name.clone(),
                peer_listen: "127.0.0.1:0".to_string(),
                local_listen: "127.0.0.1:0".to_string(),
                advertised_endpoint: None,
            },
        )
        .expect("provision the node directory");
        install_dev_certificate(dir, &name, ca, &loopback_hosts()).expect("install certificate");
        let mut text = std::fs::read_to_string(&made.config_path).expect("read node.toml");
        text.push_str(&format!(
            "\n[governance]\nsync_interval_secs = {DEV_SYNC_INTERVAL_SECS}\n"
        ));
        // The store SAMVIRKE_DEV_STORE chooses, like the in-process nodes'.
        text.push_str(
            &DevStore::from_env()
                .and_then(|store| store.config_section(&format!("process_{code}")))
                .expect("the node process's store"),
        );
        std::fs::write(&made.config_path, text).expect("write node.toml");
        let config = Config::load(&made.config_path).expect("the config loads");
        let identity = NodeIdentity::load(&config).expect("the node's identity loads");

        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "--ignored",
                "--exact",
                "child_node_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_CONFIG, &made.config_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the node process");
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready, serving) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The test harness may have begun the line with the
                // test's name.
                if let Some(at) = line.find(CHILD_READY) {
                    let _ = ready.send(line[at..].to_string());
                }
            }
        });
        let line =
            tokio::task::spawn_blocking(move || serving.recv_timeout(Duration::from_secs(30)))
                .await
                .expect("the readiness wait")
                .expect("the node process says it serves");
        let address = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key))
                .and_then(|address| address.parse().ok())
                .unwrap_or_else(|| panic!("`{key}` in `{line}`"))
        };
        NodeProcess {
            peer: address("peer="),
            api: LocalApi {
                endpoint: format!("http://{}", address("local=")),
                token: made.admin_token.to_string(),
            },
            child,
            identity,
        }
    }

    /// Sends `signal` (e.g. `-STOP`) to the process.
    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {signal} {}", self.child.id());
    }

    /// SIGKILL, and waits until the process is gone.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the node process");
        self.child.wait().expect("reap the node process");
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- Herning: behind a proxy that can be slowed ---------------------------------

/// A TCP proxy on 127.0.0.1 to one address that forwards each chunk,
/// either way, only once it has been held for the delay set (none at
/// first). A new delay applies at once, also to chunks being held.
struct DelayProxy {
    address: SocketAddr,
    delay: watch::Sender<Duration>,
}

impl DelayProxy {
    async fn start(target: SocketAddr) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let (delay, _) = watch::channel(Duration::ZERO);
        let delays = delay.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let delays = delays.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.into_split();
                    let (from_node, to_node) = outbound.into_split();
                    tokio::join!(
                        pump(from_client, to_node, delays.subscribe()),
                        pump(from_node, to_client, delays.subscribe())
                    );
                });
            }
        });
        DelayProxy { address, delay }
    }

    fn set_delay(&self, delay: Duration) {
        self.delay.send_replace(delay);
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut delay: watch::Receiver<Duration>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // The slowness being simulated, not a wait for readiness.
        let read_at = tokio::time::Instant::now();
        loop {
            let due = read_at + *delay.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep_until(due) => break,
                changed = delay.changed() => if changed.is_err() { break },
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

// ---- The fellowship ------------------------------------------------------------

struct Fellowship {
    fx: GovernanceFixture,
    randers: NodeProcess,
    herning_proxy: DelayProxy,
    apis: BTreeMap<u32, LocalApi>,
    /// Each node's air-quality dataset id and the readings it ingested.
    datasets: BTreeMap<u32, String>,
    readings: BTreeMap<u32, Vec<Reading>>,
    /// The agreement each provider's dataset is read under.
    agreements: BTreeMap<u32, String>,
}

impl Fellowship {
    async fn start() -> Fellowship {
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("a whole second");
        let fx = GovernanceFixture::start(&[AARHUS, VEJLE, SILKEBORG, HERNING], now).await;
        let randers = NodeProcess::start(
            &fx.dir.path().join(RANDERS.to_string()),
            &fx.fed.ca,
            RANDERS,
        )
        .await;
        let herning_proxy = DelayProxy::start(fx.node(HERNING).running.peer_addr).await;
        let mut apis: BTreeMap<u32, LocalApi> = [AARHUS, VEJLE, SILKEBORG, HERNING]
            .into_iter()
            .map(|code| (code, LocalApi::of(fx.node(code))))
            .collect();
        apis.insert(RANDERS, randers.api.clone());

        let mut datasets = BTreeMap::new();
        let mut readings = BTreeMap::new();
        for code in EVERYONE {
            let dataset = wire::dataset_to_proto(
                &sensor_dataset(KEYWORD, code).expect("an air-quality dataset"),
            );
            let data = air_quality_readings(code, SENSORS, STEPS, DATA_FROM);
            apis[&code].publish_with_readings(&dataset, &data).await;
            datasets.insert(code, dataset.id);
            readings.insert(code, data);
        }
        let mut unshared =
            wire::dataset_to_proto(&sensor_dataset(KEYWORD, AARHUS).expect("a dataset"));
        unshared.id = UNSHARED.to_string();
        unshared.title = "Air quality pilot sensors, Aarhus".to_string();
        apis[&AARHUS]
            .publish_with_readings(&unshared, &air_quality_readings(AARHUS, 2, 30, DATA_FROM))
            .await;

        let mut members = fx.members(&[AARHUS, VEJLE, SILKEBORG]);
        let mut herning = fx.member(HERNING);
        herning.endpoint = format!("https://{}", herning_proxy.address);
        members.push(herning);
        members.push(
            IdentityCard::of_node(&randers.identity, &format!("https://{}", randers.peer))
                .to_member(date!(2016 - 01 - 01))
                .expect("Randers's roster entry"),
        );
        let roster = fx.sign_roster(
            &fx.first_roster(DecisionRule::Quorum(1), members),
            &[&fx.secretariat],
        );
        for api in apis.values() {
            api.pin_roster(&roster).await;
        }

        let mut agreements = BTreeMap::new();
        for provider in PROVIDERS {
            let mut terms = fx.terms(provider, Consumers::Named(vec![VEJLE]));
            terms.scope = Scope {
                datasets: vec![datasets[&provider].clone()],
                kinds: Vec::new(),
                keywords: Vec::new(),
            };
            terms.operations = vec![Operation::Catalog, Operation::Read];
            terms.valid_from = now - time::Duration::days(1);
            terms.valid_until = now + time::Duration::days(30);
            let provider_key = if provider == RANDERS {
                randers.identity.signing_key()
            } else {
                fx.key(provider)
            };
            let agreement = fx.sign_agreement(&terms, &[provider_key, fx.key(VEJLE)]);
            for party in [provider, VEJLE] {
                assert_eq!(
                    apis[&party].import_agreement(&agreement).await,
                    "active",
                    "agreement of {provider} at {party}"
                );
            }
            agreements.insert(provider, agreement.id().to_string());
        }
        Fellowship {
            fx,
            randers,
            herning_proxy,
            apis,
            datasets,
            readings,
            agreements,
        }
    }

    /// Vejle's readings question of `query` to the whole fellowship, for
    /// datasets with the air-quality keyword.
    fn question(query: pb::ReadingQuery, deadline: Duration) -> pb::AskRequest {
        pb::AskRequest {
            question: Some(ask_request::Question::Readings(query)),
            datasets: Some(pb::DatasetSelector {
                keyword: KEYWORD.to_string(),
                ..Default::default()
            }),
            target: Some(pb::AskTarget {
                fellowship: FELLOWSHIP.to_string(),
                ..Default::default()
            }),
            deadline_ms: deadline.as_millis() as u32,
            ..Default::default()
        }
    }

    /// The readings `code` ingested in `[from, until)`, as long-form rows.
    fn ingested_rows(
        &self,
        code: u32,
        from: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Vec<ReadingRow> {
        let readings: Vec<pb::Reading> = self.readings[&code]
            .iter()
            .filter(|r| r.at >= from && r.at < until)
            .cloned()
            .map(wire::reading_to_proto)
            .collect();
        sorted(reading_rows(code, &self.datasets[&code], &readings))
    }

    fn readings_in(&self, code: u32, from: OffsetDateTime, until: OffsetDateTime) -> u64 {
        self.readings[&code]
            .iter()
            .filter(|r| r.at >= from && r.at < until)
            .count() as u64
    }

    async fn shutdown(self) {
        self.herning_proxy.set_delay(Duration::ZERO);
        self.fx.shutdown().await;
        drop(self.randers);
    }
}

fn sorted<T: Ord>(mut rows: Vec<T>) -> Vec<T> {
    rows.sort();
    rows
}

fn readings_query(from: OffsetDateTime, until: OffsetDateTime) -> pb::ReadingQuery {
    pb::ReadingQuery {
        from: Some(wire::timestamp(from)),
        until: Some(wire::timestamp(until)),
        ..Default::default()
    }
}

/// The long-form rows of every readings event of `answer`, and the number
/// of readings each municipality sent.
fn answered_rows(answer: &AskAnswer) -> (Vec<ReadingRow>, BTreeMap<u32, u64>) {
    let mut rows = Vec::new();
    let mut per_source = BTreeMap::new();
    for event in &answer.rows {
        let source = event.source.as_ref().expect("rows name their source");
        assert!(
            event.buckets.is_empty(),
            "a readings question has no buckets"
        );
        *per_source.entry(source.municipality).or_insert(0) += event.readings.len() as u64;
        rows.extend(reading_rows(
            source.municipality,
            &source.dataset_id,
            &event.readings,
        ));
    }
    (sorted(rows), per_source)
}

fn outcome(status: &pb::PartnerStatus) -> PartnerOutcome {
    PartnerOutcome::try_from(status.outcome).expect("a known outcome")
}

// ---- The tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fellowship_s_readings_are_exactly_the_union_of_every_node_s_own_answer() {
    let fellowship = Fellowship::start().await;
    let (from, until) = (
        datetime!(2026-03-01 05:00 UTC),
        datetime!(2026-03-02 07:30 UTC),
    );

    // The truth: each node's own answer through its local API, which is
    // exactly what it ingested in the range.
    let mut truth = Vec::new();
    for code in EVERYONE {
        let mut query = readings_query(from, until);
        query.dataset_id = fellowship.datasets[&code].clone();
        let mut client = fellowship.apis[&code].client().await;
        let local = local_query(&mut client, query)
            .await
            .unwrap_or_else(|s| panic!("{code}'s own answer: {s:?}"));
        let rows = sorted(reading_rows(
            code,
            &fellowship.datasets[&code],
            &local.readings,
        ));
        assert!(!rows.is_empty());
        assert_eq!(
            rows,
            fellowship.ingested_rows(code, from, until),
            "{code}'s own answer is what it ingested in the range"
        );
        truth.extend(rows);
    }
    let truth = sorted(truth);

    let mut vejle = fellowship.apis[&VEJLE].client().await;
    let answer = ask_all(
        &mut vejle,
        Fellowship::question(readings_query(from, until), Duration::from_secs(20)),
    )
    .await
    .expect("Vejle's node takes the question");
    let (federated, per_source) = answered_rows(&answer);
    assert_eq!(
        federated.len(),
        truth.len(),
        "as many rows as the nodes hold in the range"
    );
    assert!(
        federated == truth,
        "the federated rows are exactly the union of the nodes' own answers"
    );
    assert!(
        answer
            .rows
            .iter()
            .all(|r| r.source.as_ref().is_some_and(|s| s.dataset_id != UNSHARED)),
        "a dataset no agreement covers is never asked"
    );

    assert_eq!(
        answer.statuses.len(),
        EVERYONE.len(),
        "{:#?}",
        answer.statuses
    );
    for code in EVERYONE {
        let status = answer.status(code, &fellowship.datasets[&code]);
        assert_eq!(outcome(status), PartnerOutcome::Ok, "{status:?}");
        let expected = fellowship.readings_in(code, from, until);
        assert_eq!(status.rows, expected, "{status:?}");
        assert_eq!(per_source.get(&code), Some(&expected));
        if code == VEJLE {
            assert!(status.agreement_id.is_empty() && status.receipt_id.is_empty());
        } else {
            assert_eq!(status.agreement_id, fellowship.agreements[&code]);
            assert!(!status.receipt_id.is_empty(), "a kept receipt: {status:?}");
        }
    }
    let done = answer.done.expect("a summary");
    assert_eq!((done.asked, done.answered), (5, 5));
    assert_eq!(
        done.rows,
        EVERYONE
            .iter()
            .map(|code| fellowship.readings_in(*code, from, until))
            .sum::<u64>()
    );

    // Narrower questions reach every node as asked: one measure, newest
    // first, at most 50 readings of each dataset; and only readings within
    // 2 km of Aarhus town hall (the other nodes answer, with nothing).
    let aarhus = samvirke_node::fixtures::municipality(AARHUS).expect("Aarhus");
    let mut newest = readings_query(from, until);
    newest.measures = vec!["no2".to_string()];
    newest.order = pb::Order::Descending as i32;
    newest.limit = 50;
    let mut near = readings_query(from, until);
    near.area = Some(pb::reading_query::Area::Radius(pb::Radius {
        lat: aarhus.lat,
        lon: aarhus.lon,
        km: 2.0,
    }));
    let located_in_aarhus = fellowship.readings[&AARHUS]
        .iter()
        .filter(|r| r.location.is_some() && r.at >= from && r.at < until)
        .map(|r| r.values.len())
        .sum::<usize>();
    for (query, rows) in [(newest, 5 * 50), (near, located_in_aarhus)] {
        let mut union = Vec::new();
        for code in EVERYONE {
            let mut own = query.clone();
            own.dataset_id = fellowship.datasets[&code].clone();
            let mut client = fellowship.apis[&code].client().await;
            let local = local_query(&mut client, own)
                .await
                .unwrap_or_else(|s| panic!("{code}'s own answer: {s:?}"));
            union.extend(reading_rows(
                code,
                &fellowship.datasets[&code],
                &local.readings,
            ));
        }
        assert_eq!(union.len(), rows, "{query:?}");
        let answer = ask_all(
            &mut vejle,
            Fellowship::question(query.clone(), Duration::from_secs(20)),
        )
        .await
        .expect("Vejle's node takes the question");
        let (federated, _) = answered_rows(&answer);
        assert!(federated == sorted(union), "the union, for {query:?}");
        for code in EVERYONE {
            let status = answer.status(code, &fellowship.datasets[&code]);
            assert_eq!(outcome(status), PartnerOutcome::Ok, "{status:?}");
        }
    }
    fellowship.shutdown().await;
}

/// count, sum, min, max of one cell, and who contributed.
#[derive(Debug, Default)]
struct Cell {
    count: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
}

impl Cell {
    fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = Some(self.min.map_or(value, |m| m.min(value)));
        self.max = Some(self.max.map_or(value, |m| m.max(value)));
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Brute-force hourly cells (start seconds, measure) of `readings`.
fn hourly(readings: &[Reading]) -> BTreeMap<(i64, String), Cell> {
    let mut cells: BTreeMap<(i64, String), Cell> = BTreeMap::new();
    for reading in readings {
        let start = reading.at.unix_timestamp().div_euclid(3600) * 3600;
        for (measure, value) in &reading.values {
            cells
                .entry((start, measure.clone()))
                .or_default()
                .add(*value);
        }
    }
    cells
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fellowship_buckets_equal_a_brute_force_over_every_reading_ingested() {
    let fellowship = Fellowship::start().await;
    let mut query = readings_query(DATA_FROM, datetime!(2026-03-03 00:00 UTC));
    query.bucket = "1h".to_string();
    query.grouping = pb::Grouping::AllSensors as i32;
    let mut vejle = fellowship.apis[&VEJLE].client().await;
    let answer = ask_all(
        &mut vejle,
        Fellowship::question(query, Duration::from_secs(20)),
    )
    .await
    .expect("Vejle's node takes the question");
    for code in EVERYONE {
        let status = answer.status(code, &fellowship.datasets[&code]);
        assert_eq!(outcome(status), PartnerOutcome::Ok, "{status:?}");
    }

    // Each source's own buckets.
    for code in EVERYONE {
        let expected = hourly(&fellowship.readings[&code]);
        let buckets: Vec<&pb::Bucket> = answer
            .rows
            .iter()
            .filter(|r| r.source.as_ref().is_some_and(|s| s.municipality == code))
            .flat_map(|r| r.buckets.iter())
            .collect();
        assert_eq!(buckets.len(), expected.len(), "{code}'s buckets");
        for bucket in buckets {
            let start = bucket.start.expect("a bucket start").seconds;
            let cell = &expected[&(start, bucket.measure.clone())];
            assert!(bucket.sensor_id.is_empty(), "over all sensors");
            assert_eq!(
                bucket.count, cell.count,
                "{code} {start} {}",
                bucket.measure
            );
            assert_eq!((bucket.min, bucket.max), (cell.min, cell.max));
            assert!(close(bucket.sum, cell.sum), "{bucket:?} vs {cell:?}");
        }
    }

    // The fellowship's.
    let all: Vec<Reading> = fellowship.readings.values().flatten().cloned().collect();
    let expected = hourly(&all);
    let combined = answer.combined.expect("combined buckets");
    assert!(
        combined.note.is_empty(),
        "nothing left out: {}",
        combined.note
    );
    assert_eq!(combined.buckets.len(), expected.len());
    // 33 h 20 min of readings: 34 hours, three measures.
    assert_eq!(expected.len(), 34 * 3);
    for bucket in &combined.buckets {
        let start = bucket.start.expect("a bucket start").seconds;
        let cell = expected
            .get(&(start, bucket.measure.clone()))
            .unwrap_or_else(|| panic!("an unexpected bucket {bucket:?}"));
        assert_eq!(bucket.count, cell.count, "{start} {}", bucket.measure);
        assert_eq!((bucket.min, bucket.max), (cell.min, cell.max), "{start}");
        assert!(close(bucket.sum, cell.sum), "{bucket:?} vs {cell:?}");
        assert!(
            close(bucket.avg, cell.sum / cell.count as f64),
            "{bucket:?} vs {cell:?}"
        );
        assert_eq!(
            bucket.municipalities,
            vec![VEJLE, HERNING, RANDERS, SILKEBORG, AARHUS]
        );
    }
    fellowship.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_and_a_slow_node_are_reported_and_the_rest_answer_in_full_in_time() {
    let mut fellowship = Fellowship::start().await;
    let (from, until) = (DATA_FROM, datetime!(2026-03-03 00:00 UTC));
    let mut vejle = fellowship.apis[&VEJLE].client().await;

    // First everyone answers (and Vejle's node has its channels to each).
    let first = ask_all(
        &mut vejle,
        Fellowship::question(readings_query(from, until), Duration::from_secs(20)),
    )
    .await
    .expect("the first question");
    for code in EVERYONE {
        let status = first.status(code, &fellowship.datasets[&code]);
        assert_eq!(outcome(status), PartnerOutcome::Ok, "{status:?}");
    }

    // Randers's node stops in its tracks (it is killed once the question is
    // under way); every chunk to and from Herning now takes 3 s.
    fellowship.randers.signal("-STOP");
    fellowship.herning_proxy.set_delay(Duration::from_secs(3));
    let deadline = Duration::from_secs(2);
    let healthy = [AARHUS, SILKEBORG, VEJLE];
    let healthy_readings: u64 = healthy
        .iter()
        .map(|code| fellowship.readings_in(*code, from, until))
        .sum();

    let started = Instant::now();
    let mut stream = vejle
        .ask(Fellowship::question(readings_query(from, until), deadline))
        .await
        .expect("Vejle's node takes the question")
        .into_inner();
    let mut answer = AskAnswer::default();
    let mut killed_after = None;
    let mut healthy_so_far = 0u64;
    let drain = async {
        while let Some(event) = stream.message().await.expect("the answer streams") {
            if let Some(pb::ask_event::Event::Rows(rows)) = &event.event
                && rows
                    .source
                    .as_ref()
                    .is_some_and(|s| healthy.contains(&s.municipality))
            {
                healthy_so_far += rows.readings.len() as u64;
            }
            answer.take(event);
            if killed_after.is_none() && healthy_so_far == healthy_readings {
                fellowship.randers.kill();
                killed_after = Some(started.elapsed());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .expect("the answer ends");
    let elapsed = started.elapsed();
    let killed_after = killed_after.expect("the healthy sources answered in full");
    assert!(
        killed_after < deadline,
        "Randers was killed under the question, after {killed_after:?}"
    );
    assert!(answer.done.is_some(), "the answer ends with its summary");
    assert!(
        elapsed >= deadline && elapsed < deadline + Duration::from_millis(1_500),
        "the answer ends at the deadline plus a margin, not later: {elapsed:?}"
    );

    let (rows, per_source) = answered_rows(&answer);
    let mut expected = Vec::new();
    for code in healthy {
        expected.extend(fellowship.ingested_rows(code, from, until));
    }
    assert!(
        rows == sorted(expected),
        "the healthy sources' rows are complete and exact"
    );
    assert_eq!(per_source.get(&RANDERS), None);
    assert_eq!(per_source.get(&HERNING), None);

    assert_eq!(
        answer.statuses.len(),
        EVERYONE.len(),
        "{:#?}",
        answer.statuses
    );
    for code in healthy {
        let status = answer.status(code, &fellowship.datasets[&code]);
        assert_eq!(outcome(status), PartnerOutcome::Ok, "{status:?}");
        assert_eq!(status.rows, fellowship.readings_in(code, from, until));
    }
    let randers = answer.status(RANDERS, &fellowship.datasets[&RANDERS]);
    assert_eq!(outcome(randers), PartnerOutcome::Unavailable, "{randers:?}");
    assert_eq!(randers.agreement_id, fellowship.agreements[&RANDERS]);
    assert!(randers.receipt_id.is_empty());
    let herning = answer.status(HERNING, &fellowship.datasets[&HERNING]);
    assert_eq!(outcome(herning), PartnerOutcome::TimedOut, "{herning:?}");
    assert_eq!(herning.rows, 0);
    assert!(herning.receipt_id.is_empty());
    let done = answer.done.expect("a summary");
    assert_eq!((done.asked, done.answered), (5, 3));
    assert_eq!(done.rows, healthy_readings);

    // Asked again, for hourly buckets, with Randers's node gone and Herning
    // still slow: the combination holds exactly the healthy sources, and
    // says who is left out.
    let mut query = readings_query(from, until);
    query.bucket = "1h".to_string();
    query.grouping = pb::Grouping::AllSensors as i32;
    let started = Instant::now();
    let answer = ask_all(&mut vejle, Fellowship::question(query, deadline))
        .await
        .expect("Vejle's node takes the question");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= deadline && elapsed < deadline + Duration::from_millis(1_500),
        "the answer ends at the deadline plus a margin, not later: {elapsed:?}"
    );
    for code in healthy {
        let status = answer.status(code, &fellowship.datasets[&code]);
        assert_eq!(outcome(status), PartnerOutcome::Ok, "{status:?}");
    }
    let randers = answer.status(RANDERS, &fellowship.datasets[&RANDERS]);
    assert_eq!(outcome(randers), PartnerOutcome::Unavailable, "{randers:?}");
    let herning = answer.status(HERNING, &fellowship.datasets[&HERNING]);
    assert_eq!(outcome(herning), PartnerOutcome::TimedOut, "{herning:?}");
    let healthy_data: Vec<Reading> = healthy
        .iter()
        .flat_map(|code| fellowship.readings[code].iter().cloned())
        .collect();
    let expected = hourly(&healthy_data);
    let combined = answer.combined.expect("combined buckets");
    assert_eq!(combined.buckets.len(), expected.len());
    for bucket in &combined.buckets {
        let start = bucket.start.expect("a bucket start").seconds;
        let cell = &expected[&(start, bucket.measure.clone())];
        assert_eq!(bucket.count, cell.count, "{start} {}", bucket.measure);
        assert_eq!((bucket.min, bucket.max), (cell.min, cell.max), "{start}");
        assert!(close(bucket.sum, cell.sum), "{bucket:?} vs {cell:?}");
        assert_eq!(bucket.municipalities, vec![VEJLE, SILKEBORG, AARHUS]);
    }
    for left_out in [
        "657 herning-air-quality (timed out)",
        "730 randers-air-quality (unavailable)",
    ] {
        assert!(
            combined.note.contains(left_out),
            "the note names {left_out}: {}",
            combined.note
        );
    }

    // Herning is quick again: the next question has its answer in full,
    // over the same channel.
    fellowship.herning_proxy.set_delay(Duration::ZERO);
    let started = Instant::now();
    let answer = ask_all(
        &mut vejle,
        Fellowship::question(readings_query(from, until), deadline),
    )
    .await
    .expect("Vejle's node takes the question");
    let elapsed = started.elapsed();
    assert!(
        elapsed < deadline,
        "a node that is gone holds no one up: {elapsed:?}"
    );
    let herning = answer.status(HERNING, &fellowship.datasets[&HERNING]);
    assert_eq!(outcome(herning), PartnerOutcome::Ok, "{herning:?}");
    let (rows, _) = answered_rows(&answer);
    let herning_rows: Vec<ReadingRow> = rows.into_iter().filter(|r| r.0 == HERNING).collect();
    assert!(herning_rows == fellowship.ingested_rows(HERNING, from, until));
    let randers = answer.status(RANDERS, &fellowship.datasets[&RANDERS]);
    assert_eq!(outcome(randers), PartnerOutcome::Unavailable, "{randers:?}");
    assert!(randers.latency_ms < 1_000, "{randers:?}");

    fellowship.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_the_middle_of_its_answer_is_reported_with_what_it_sent() {
    let mut fellowship = Fellowship::start().await;
    // Randers holds 60 000 more readings (earlier in the year): its answer
    // takes 61 chunks, and it is killed when the first reaches the analyst.
    let earlier = datetime!(2026-01-01 00:00 UTC);
    let more = air_quality_readings(RANDERS, 40, 1_500, earlier);
    let mut client = fellowship.apis[&RANDERS].client().await;
    let stored = ingest(
        &mut client,
        ingest_batches(&fellowship.datasets[&RANDERS], &more, 5_000),
    )
    .await
    .expect("Randers ingests");
    assert_eq!(stored.inserted, more.len() as u64);
    fellowship
        .readings
        .get_mut(&RANDERS)
        .expect("Randers")
        .extend(more);
    let until = datetime!(2026-03-03 00:00 UTC);
    let randers_total = fellowship.readings_in(RANDERS, earlier, until);

    let deadline = Duration::from_secs(10);
    let started = Instant::now();
    let mut vejle = fellowship.apis[&VEJLE].client().await;
    let mut stream = vejle
        .ask(Fellowship::question(
            readings_query(earlier, until),
            deadline,
        ))
        .await
        .expect("Vejle's node takes the question")
        .into_inner();
    let mut answer = AskAnswer::default();
    let mut killed = false;
    let drain = async {
        while let Some(event) = stream.message().await.expect("the answer streams") {
            let from_randers = matches!(
                &event.event,
                Some(pb::ask_event::Event::Rows(rows))
                    if rows.source.as_ref().is_some_and(|s| s.municipality == RANDERS)
            );
            answer.take(event);
            if from_randers && !killed {
                fellowship.randers.kill();
                killed = true;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .expect("the answer ends");
    let elapsed = started.elapsed();
    assert!(killed, "Randers began its answer");
    assert!(
        elapsed < deadline,
        "the broken answer is noticed at once, not at the deadline: {elapsed:?}"
    );

    let randers = answer.status(RANDERS, &fellowship.datasets[&RANDERS]);
    assert_eq!(outcome(randers), PartnerOutcome::Unavailable, "{randers:?}");
    assert!(randers.receipt_id.is_empty());
    let (rows, per_source) = answered_rows(&answer);
    let arrived = per_source.get(&RANDERS).copied().unwrap_or(0);
    assert!(
        arrived > 0 && arrived < randers_total,
        "part of Randers's answer arrived: {arrived} of {randers_total}"
    );
    assert_eq!(randers.rows, arrived, "the status counts what arrived");
    // What arrived is Randers's, tagged as such, each row exactly as stored.
    let stored = fellowship.ingested_rows(RANDERS, earlier, until);
    let from_randers: Vec<&ReadingRow> = rows.iter().filter(|r| r.0 == RANDERS).collect();
    assert!(
        from_randers
            .iter()
            .all(|row| stored.binary_search(row).is_ok()),
        "Randers's rows are readings it holds"
    );
    // Everyone else answered in full.
    let mut expected = Vec::new();
    for code in [AARHUS, VEJLE, SILKEBORG, HERNING] {
        let status = answer.status(code, &fellowship.datasets[&code]);
        assert_eq!(outcome(status), PartnerOutcome::Ok, "{status:?}");
        expected.extend(fellowship.ingested_rows(code, earlier, until));
    }
    let others: Vec<ReadingRow> = rows.into_iter().filter(|r| r.0 != RANDERS).collect();
    assert!(others == sorted(expected), "the others' rows are complete");
    let done = answer.done.expect("a summary");
    assert_eq!((done.asked, done.answered), (5, 4));

    fellowship.shutdown().await;
}
