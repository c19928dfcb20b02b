//! Peer call throughput: what a signed, authorised, audited and receipted
//! `Peer/Catalog` call costs next to a bare gRPC call over the same mutual
//! TLS.
//!
//! Run: `cargo bench -p samvirke-tests --bench peer_call`
//!
//! One process, two tokio runtimes: the servers (a development federation
//! of real nodes with sled stores in a temporary directory, and a bare
//! tonic server) run on one, the clients on the other. Every variant is
//! called over mutual TLS on loopback with a node's certificate, through
//! the node's own listener code (`transport::mutual_tls`,
//! `transport::serve_incoming`):
//!
//! - `bare Health/Check`: the standard health service alone, served with
//!   the provider node's TLS material and HTTP/2 settings;
//! - `node Health/Check`: the same call at the provider node's peer
//!   listener (its listener stack, no peer service);
//! - `node Peer/Hello`: membership looked up in the roster, audited;
//! - `node Peer/Catalog`: a signed request under an agreement: authorised
//!   against roster and agreement, signature, time and nonce checked
//!   (replay memory), audited (hash-chained log, durable before the
//!   answer leaves), answered with what the agreement discloses and a
//!   signed receipt. Twice: with every request signed on its own
//!   (`SignedPeer`, one Ed25519 signature and one verification per call),
//!   and with requests signed as a node signs them, by a batch signer
//!   (one signature per batch of concurrent requests; the provider checks
//!   each request's Merkle path and the batch's signature once).
//!
//! The federation's clock runs from a fixed date at real speed, so request
//! times advance and the replay memory forgets nonces as it does in service.
//!
//! Each variant gets a warm-up, then [`ROUNDS`] rounds of [`CALLS`] calls
//! with [`CONCURRENCY`] calls in flight: four callers (member nodes), one
//! pooled channel each, eight calls in flight per channel (half the peer
//! listener's per-caller call limit). The variants take turns within each
//! round, so drift affects them alike. Reported: the median calls/s, its
//! ratio to the bare call, and CPU per call, split into the server
//! runtime's share (every thread but the client runtime's and the main
//! thread: nodes, sled, audit writer, receipt signer) and the client's
//! (signing the Catalog requests included, and the thread that moves the
//! clock), both read from `/proc`. Last, the cost of one Ed25519 signature
//! and verification on the machine, the floor under a signed call.
//!
//! Without `--bench` (as `cargo test --benches` would run it) it makes a
//! few calls of each variant and prints nothing but a line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use samvirke_node::governance::{Consumers, DecisionRule, Operation, Scope};
use samvirke_node::identity::TlsMaterial;
use samvirke_node::proof::batch::BatchSigner;
use samvirke_node::proof::message_digest;
use samvirke_node::proof::request::{self, RequestFacts};
use samvirke_node::transport::{self, ActivityLayer, ListenerLimits};
use samvirke_proto::v1 as pb;
use samvirke_proto::v1::peer_client::PeerClient;
use samvirke_tests::{GovernanceFixture, SignedPeer, hello_request, node_client_tls, tls_channel};
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

/// The provider node (Aarhus).
const PROVIDER: u32 = 751;
/// "Now" for the federation: inside the agreement's validity.
const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
/// Calls in flight at any time, over all callers.
const CONCURRENCY: usize = 32;
/// Callers (member nodes), one channel each.
const CALLERS: usize = 4;
/// Calls per measured round.
const CALLS: usize = 10_000;
/// Calls of the warm-up round.
const WARM_UP_CALLS: usize = 2_000;
/// Measured rounds per variant.
const ROUNDS: usize = 7;
/// Name of the client runtime's threads (at most 15 bytes: `comm`).
const CLIENT_THREADS: &str = "bench-client";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    NodeHealth,
    Hello,
    Catalog,
    CatalogBatched,
}

const VARIANTS: [Variant; 5] = [
    Variant::Bare,
    Variant::NodeHealth,
    Variant::Hello,
    Variant::Catalog,
    Variant::CatalogBatched,
];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare Health/Check",
            Variant::NodeHealth => "node Health/Check",
            Variant::Hello => "node Peer/Hello",
            Variant::Catalog => "node Peer/Catalog, each request signed",
            Variant::CatalogBatched => "node Peer/Catalog, batch-signed",
        }
    }
}

/// One caller's client for one variant.
#[derive(Debug, Clone)]
enum Target {
    Health(HealthClient<Channel>),
    Hello(PeerClient<Channel>, pb::HelloRequest),
    Catalog(SignedPeer, String),
    /// Requests signed the way a node signs them ([`PartnerPool`]): by
    /// the caller's batch signer, in a batch with the requests signed at
    /// the same moment.
    ///
    /// [`PartnerPool`]: samvirke_node::partners::PartnerPool
    CatalogBatched(SignedPeer, Arc<BatchSigner>, Uuid),
}

impl Target {
    async fn call(&mut self) -> Result<(), Status> {
        match self {
            Target::Health(client) => {
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
            }
            Target::Hello(client, hello) => {
                client.hello(hello.clone()).await?;
            }
            Target::Catalog(peer, agreement) => {
                let answer = peer
                    .catalog(pb::PeerCatalogRequest {
                        agreement_id: agreement.clone(),
                    })
                    .await?
                    .into_inner();
                check_catalog(&answer)?;
            }
            Target::CatalogBatched(peer, signer, agreement) => {
                let message = pb::PeerCatalogRequest {
                    agreement_id: agreement.to_string(),
                };
                let digest = message_digest(&message);
                let mut request = tonic::Request::new(message);
                request::sign(
                    request.metadata_mut(),
                    signer,
                    RequestFacts {
                        caller: peer.code,
                        provider: peer.provider,
                        method: samvirke_node::peer::CATALOG,
                        digest: &digest,
                        agreement: *agreement,
                        at: peer.clock.now(),
                    },
                )
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
                let answer = peer.client.catalog(request).await?.into_inner();
                check_catalog(&answer)?;
            }
        }
        Ok(())
    }
}

/// A catalog answer lists the dataset the agreement covers and carries a
/// receipt.
fn check_catalog(answer: &pb::PeerCatalogResponse) -> Result<(), Status> {
    if answer.receipt.is_none() || answer.datasets.len() != 1 {
        return Err(Status::internal(
            "a catalog answer without receipt or without the covered dataset",
        ));
    }
    Ok(())
}

/// Makes `calls` calls over `targets` with [`CONCURRENCY`] in flight;
/// returns the wall time.
async fn round(targets: &[Target], calls: usize) -> Duration {
    let left = Arc::new(AtomicIsize::new(calls as isize));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for worker in 0..CONCURRENCY {
        let mut target = targets[worker % targets.len()].clone();
        let left = Arc::clone(&left);
        workers.spawn(async move {
            while left.fetch_sub(1, Ordering::Relaxed) > 0 {
                if let Err(status) = target.call().await {
                    panic!("call failed: {status:?}");
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("a bench worker panicked");
    }
    started.elapsed()
}

// ---- CPU time from /proc ---------------------------------------------------

/// utime + stime (clock ticks) of a `/proc/.../stat` line.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields 14 and 15 of stat(5); index 0 here is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU ticks of the whole process (exited threads included) and of the
/// client side (the client runtime's threads and the main thread).
fn cpu_ticks() -> (u64, u64) {
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_ticks(&s))
        .map(|(_, t)| t)
        .unwrap_or(0);
    let main = std::process::id().to_string();
    let mut client = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let Some((comm, ticks)) = stat_ticks(&stat) else {
                continue;
            };
            if comm == CLIENT_THREADS || task.file_name().to_string_lossy() == main {
                client += ticks;
            }
        }
    }
    (process, client)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---- Setup -----------------------------------------------------------------

/// A bare tonic server with the standard health service, behind the node's
/// listener code with `tls` and the node's peer limits; returns its address.
async fn start_bare(
    tls: &TlsMaterial,
    config: &samvirke_node::config::Config,
    stop: CancellationToken,
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the bare listener");
    let address = listener.local_addr().expect("bare listener address");
    let limits = config.peer.limits;
    let incoming = transport::serve_incoming(
        "bare",
        listener,
        transport::mutual_tls(tls).expect("TLS setup"),
        ListenerLimits {
            max_connections: limits.max_connections,
            max_connections_per_caller: limits.max_connections_per_caller,
            max_handshakes_per_address: limits.max_handshakes_per_address,
            handshake_timeout: config.peer.handshake_timeout,
            idle_timeout: limits.idle_timeout,
        },
        stop.clone(),
    );
    let (reporter, health) = tonic_health::server::health_reporter();
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .http2_max_header_list_size(16 * 1024)
        .timeout(limits.call_timeout)
        .layer(ActivityLayer)
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
    tokio::spawn(async move {
        // The reporter (and so the service's status) lives as long as the
        // server.
        let _reporter = reporter;
        server.await.expect("the bare server serves");
    });
    address
}

/// The federation: the provider with two published datasets, the callers,
/// one roster of all, and an agreement letting the callers list the
/// provider's air-quality dataset. Returns the agreement id.
async fn federation(callers: &[u32]) -> (GovernanceFixture, String) {
    let mut codes = vec![PROVIDER];
    codes.extend_from_slice(callers);
    let fx = GovernanceFixture::start(&codes, NOW).await;
    let mut admin = fx.admin(PROVIDER).await;
    for kind in ["air-quality", "noise"] {
        let dataset = samvirke_node::wire::dataset_to_proto(
            &samvirke_node::data::sensor_dataset(kind, PROVIDER).expect("a sensor dataset"),
        );
        admin
            .publish_dataset(dataset)
            .await
            .unwrap_or_else(|s| panic!("publish {kind}: {s:?}"));
    }
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &codes))
        .await;
    let mut terms = fx.terms(PROVIDER, Consumers::Named(callers.to_vec()));
    terms.scope = Scope {
        datasets: vec!["aarhus-air-quality".to_string()],
        kinds: Vec::new(),
        keywords: Vec::new(),
    };
    terms.operations = vec![Operation::Catalog, Operation::Read];
    terms.valid_from = datetime!(2026-01-01 00:00 UTC);
    terms.valid_until = datetime!(2027-01-01 00:00 UTC);
    let agreement = fx.agreement(&terms, &codes);
    let info = fx
        .import_agreement(PROVIDER, &agreement.to_bytes())
        .await
        .expect("the provider imports the agreement")
        .agreement
        .expect("agreement info");
    assert_eq!(info.status, "active", "{info:?}");
    (fx, agreement.id().to_string())
}

/// Microseconds to make and to check (strictly) one Ed25519 signature of a
/// request-sized message: what per-request signing costs at the least.
fn ed25519_costs() -> (f64, f64) {
    use ed25519_dalek::{Signer, SigningKey};
    const N: u32 = 2_000;
    let key = SigningKey::from_bytes(&[7; 32]);
    let message = [0x5a_u8; 120];
    let started = Instant::now();
    let mut signature = key.sign(&message);
    for _ in 1..N {
        signature = key.sign(std::hint::black_box(&message));
    }
    let sign = started.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    let verifying = key.verifying_key();
    let started = Instant::now();
    for _ in 0..N {
        verifying
            .verify_strict(std::hint::black_box(&message), &signature)
            .expect("a fresh signature verifies");
    }
    let verify = started.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    (sign, verify)
}

// ---- Report ----------------------------------------------------------------

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[derive(Debug, Default)]
struct Tally {
    rates: Vec<f64>,
    calls: u64,
    server_ticks: u64,
    client_ticks: u64,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, calls, warm_up) = if full {
        (ROUNDS, CALLS, WARM_UP_CALLS)
    } else {
        (1, CONCURRENCY * 2, CONCURRENCY)
    };
    if full {
        samvirke_node::telemetry::init(samvirke_node::config::LogFormat::Text, "info");
    }

    let server = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-server")
        .enable_all()
        .build()
        .expect("server runtime");
    let client: Runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("client runtime");

    let callers: Vec<u32> = samvirke_node::fixtures::municipalities()
        .into_iter()
        .map(|m| m.code)
        .filter(|code| *code != PROVIDER)
        .take(CALLERS)
        .collect();
    assert_eq!(callers.len(), CALLERS, "enough fixture municipalities");
    let (fx, agreement) = server.block_on(federation(&callers));
    let provider = fx.node(PROVIDER);
    let stop = CancellationToken::new();
    let bare = server.block_on(start_bare(
        &provider.running.identity.tls,
        &provider.config,
        stop.clone(),
    ));
    // The federation's clock follows real time from NOW on, so request
    // times advance and the replay memory forgets old nonces as it would.
    let ticking = Arc::new(AtomicBool::new(true));
    let ticker = {
        let clock = Arc::clone(&fx.clock);
        let ticking = Arc::clone(&ticking);
        std::thread::Builder::new()
            .name(CLIENT_THREADS.to_string())
            .spawn(move || {
                let started = Instant::now();
                while ticking.load(Ordering::Relaxed) {
                    clock.set(NOW + started.elapsed());
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .expect("start the clock thread")
    };
    let node_endpoint = provider.running.peer_endpoint();
    let bare_endpoint = format!("https://{bare}");

    // One channel per caller and server, made on the client runtime.
    let targets: Vec<(Variant, Vec<Target>)> = client.block_on(async {
        let mut by_variant: Vec<(Variant, Vec<Target>)> =
            VARIANTS.iter().map(|v| (*v, Vec::new())).collect();
        for &code in &callers {
            let node = fx.node(code);
            let tls = node_client_tls(&node.running.identity.tls);
            let to_bare = tls_channel(&bare_endpoint, tls.clone())
                .await
                .expect("mutual TLS to the bare server");
            let to_node = tls_channel(&node_endpoint, tls)
                .await
                .expect("mutual TLS to the provider");
            let peer = SignedPeer {
                client: PeerClient::new(to_node.clone()),
                key: fx.key(code).clone(),
                code,
                provider: PROVIDER,
                clock: fx.clock.clone(),
            };
            let signer = Arc::new(BatchSigner::start(
                Arc::new(fx.key(code).clone()),
                request::BATCH_DOMAIN,
            ));
            for (variant, targets) in &mut by_variant {
                targets.push(match variant {
                    Variant::Bare => Target::Health(HealthClient::new(to_bare.clone())),
                    Variant::NodeHealth => Target::Health(HealthClient::new(to_node.clone())),
                    Variant::Hello => Target::Hello(
                        PeerClient::new(to_node.clone()),
                        hello_request(Some(&node.running.identity)),
                    ),
                    Variant::Catalog => Target::Catalog(peer.clone(), agreement.clone()),
                    Variant::CatalogBatched => Target::CatalogBatched(
                        peer.clone(),
                        Arc::clone(&signer),
                        Uuid::parse_str(&agreement).expect("an agreement id is a UUID"),
                    ),
                });
            }
        }
        by_variant
    });

    for (_, targets) in &targets {
        client.block_on(round(targets, warm_up));
    }
    let mut tallies: Vec<Tally> = targets.iter().map(|_| Tally::default()).collect();
    for r in 0..rounds {
        // Take turns, starting with a different variant each round.
        for k in 0..targets.len() {
            let i = (r + k) % targets.len();
            let (process_before, client_before) = cpu_ticks();
            let took = client.block_on(round(&targets[i].1, calls));
            let (process_after, client_after) = cpu_ticks();
            let client_ticks = client_after.saturating_sub(client_before);
            let tally = &mut tallies[i];
            tally.rates.push(calls as f64 / took.as_secs_f64());
            tally.calls += calls as u64;
            tally.client_ticks += client_ticks;
            tally.server_ticks += process_after
                .saturating_sub(process_before)
                .saturating_sub(client_ticks);
        }
    }

    let variants: Vec<Variant> = targets.iter().map(|(v, _)| *v).collect();
    stop.cancel();
    ticking.store(false, Ordering::Relaxed);
    ticker.join().expect("the clock thread");
    drop(targets);
    server.block_on(fx.shutdown());

    if !full {
        println!("peer_call: smoke run passed (run with `cargo bench` to measure)");
        return;
    }
    let per_second = ticks_per_second();
    let us_per_call = |ticks: u64, calls: u64| ticks as f64 / per_second * 1e6 / calls as f64;
    let bare_rate = median(&mut tallies[0].rates.clone());
    println!();
    println!(
        "peer_call: {rounds} rounds x {calls} calls, {CONCURRENCY} in flight over {CALLERS} \
         mutual-TLS channels, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| {:<38} | {:>9} | {:>13} | {:>7} | {:>9} | {:>9} |",
        "variant", "calls/s", "min - max", "vs bare", "server us", "client us"
    );
    println!(
        "|{:-<40}|{:->11}|{:->15}|{:->9}|{:->11}|{:->11}|",
        "", "", "", "", "", ""
    );
    for (variant, tally) in variants.iter().zip(tallies.iter_mut()) {
        let min = tally.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = tally.rates.iter().copied().fold(0.0, f64::max);
        let rate = median(&mut tally.rates);
        println!(
            "| {:<38} | {:>9.0} | {:>13} | {:>6.2}x | {:>9.1} | {:>9.1} |",
            variant.label(),
            rate,
            format!("{min:.0} - {max:.0}"),
            rate / bare_rate,
            us_per_call(tally.server_ticks, tally.calls),
            us_per_call(tally.client_ticks, tally.calls),
        );
    }
    let (sign_us, verify_us) = ed25519_costs();
    println!();
    println!(
        "one Ed25519 signature on this machine: {sign_us:.1} us to make, {verify_us:.1} us to \
         verify (verify_strict, one thread)"
    );
    println!(
        "server us / client us: CPU time per call of the server runtime (nodes, stores, audit \
         writer, receipt signer) and of the client runtime, from /proc (one process hosts both)"
    );
}
