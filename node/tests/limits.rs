//! One partner cannot freeze a node: the `samvirke-node` binary as a real
//! process (Aarhus, 751), attacked over real sockets by a partner holding a
//! valid certificate and a place in the roster (Vejle, 630), while another
//! partner (Albertslund, 165) keeps asking.
//!
//! The attack, all from one address:
//! - 300 TCP connections that never start a TLS handshake;
//! - TLS connections that complete the handshake and then sit idle;
//! - hundreds of readings queries whose answers are never read, over
//!   several connections, and the same from a local `read` token.
//!
//! Asserted: every half-open connection is closed by the node within the
//! handshake timeout; idle connections (peer TLS, and plaintext HTTP/2 on
//! the local listener) are closed after the idle timeout;
//! calls beyond the caller's limit are refused at once with
//! RESOURCE_EXHAUSTED; the other partner's queries are answered in full
//! throughout; and the node's resident memory and thread count stay
//! bounded (the bound is stated in the assertion).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use samvirke_node::data::{generate, sensor_dataset};
use samvirke_node::governance::files::IdentityCard;
use samvirke_node::governance::{
    AgreementBody, Consumers, DecisionRule, LegalBasis, Member, Operation, RosterBody, Scope,
};
use samvirke_node::identity::{Fingerprint, generate_signing_key, read_signing_key};
use samvirke_node::pki::{DevCa, IssuedCertificate, loopback_hosts};
use samvirke_node::provision::{
    CONFIG_FILE, NodeSpec, SIGNING_KEY_FILE, TLS_CERT_FILE, init_node_dir, install_dev_certificate,
};
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_proto::v1::local_client::LocalClient;
use samvirke_proto::v1::peer_client::PeerClient;
use time::macros::datetime;
use tokio::io::AsyncReadExt;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const BIN: &str = env!("CARGO_BIN_EXE_samvirke-node");
const DATASET: &str = "aarhus-air-quality";
/// The bound this test holds the node to while under attack.
const MAX_RSS_MIB: u64 = 256;
const MAX_THREADS: u64 = 64;

/// A free loopback port (bound, then released for the node to take).
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

fn certificate_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("certificate PEM")
}

/// A partner: its certificate and signing key (it runs no node here).
struct Partner {
    code: u32,
    name: &'static str,
    certificate: IssuedCertificate,
    key: ed25519_dalek::SigningKey,
}

impl Partner {
    fn member(&self) -> Member {
        Member {
            code: self.code,
            name: self.name.to_string(),
            node_id: uuid::Uuid::now_v7(),
            // Nobody listens there: the node's own sync attempts fail.
            endpoint: "https://127.0.0.1:9".to_string(),
            signing_key: self.key.verifying_key(),
            tls_fingerprint: Fingerprint::of_der(&certificate_der(
                &self.certificate.certificate_pem,
            )),
            joined: time::macros::date!(2016 - 01 - 01),
            left: None,
        }
    }

    fn tls(&self, ca: &DevCa) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.certificate_pem()))
            .identity(Identity::from_pem(
                &self.certificate.certificate_pem,
                self.certificate.key_pem.as_str(),
            ))
    }

    fn rustls(&self, ca: &DevCa) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(certificate_der(ca.certificate_pem()))
            .expect("root");
        let key = PrivateKeyDer::from_pem_slice(self.certificate.key_pem.as_bytes()).expect("key");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![certificate_der(&self.certificate.certificate_pem)],
            key,
        )
        .expect("client certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// The node process; killed when dropped.
struct Running {
    child: Child,
    _stderr: std::thread::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    fn status_field(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    fn rss_mib(&self) -> u64 {
        self.status_field("VmRSS:") / 1024
    }

    fn threads(&self) -> u64 {
        self.status_field("Threads:")
    }
}

fn start(config: &Path) -> Running {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .env("SAMVIRKE_LOG", "warn,samvirke_node=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn samvirke-node");
    let stderr = child.stderr.take().expect("stderr");
    let (ready, serving) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut ready = Some(ready);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var_os("SAMVIRKE_TEST_NODE_LOG").is_some() {
                eprintln!("node: {line}");
            }
            if line.contains("samvirke node serving")
                && let Some(ready) = ready.take()
            {
                let _ = ready.send(());
            }
        }
    });
    serving
        .recv_timeout(Duration::from_secs(30))
        .expect("the node logs that it is serving");
    Running {
        child,
        _stderr: reader,
    }
}

async fn local(endpoint: &str) -> LocalClient<Channel> {
    LocalClient::new(
        Endpoint::from_shared(endpoint.to_string())
            .expect("endpoint")
            .connect()
            .await
            .expect("local connects"),
    )
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    request
}

fn air_query() -> pb::ReadingQuery {
    pb::ReadingQuery {
        dataset_id: DATASET.to_string(),
        from: Some(wire::timestamp(datetime!(2026-03-01 00:00 UTC))),
        until: Some(wire::timestamp(datetime!(2026-03-02 00:00 UTC))),
        ..Default::default()
    }
}

/// The day's readings under `agreement`, signed as partner `code` with
/// `key` signs them (as its node would).
fn signed_query(
    key: &ed25519_dalek::SigningKey,
    code: u32,
    agreement: &str,
) -> tonic::Request<pb::PeerReadingQuery> {
    let message = pb::PeerReadingQuery {
        agreement_id: agreement.to_string(),
        query: Some(air_query()),
    };
    let digest = samvirke_node::proof::message_digest(&message);
    let mut request = tonic::Request::new(message);
    samvirke_node::proof::request::sign_now(
        request.metadata_mut(),
        key,
        samvirke_node::proof::request::RequestFacts {
            caller: code,
            // The node under attack, Aarhus.
            provider: 751,
            method: samvirke_node::peer::QUERY_READINGS,
            digest: &digest,
            agreement: uuid::Uuid::parse_str(agreement).expect("agreement id"),
            at: time::OffsetDateTime::now_utc(),
        },
    )
    .expect("sign");
    request
}

/// Asks for the whole day of readings and reads the answer to its end.
async fn full_answer(
    client: &mut PeerClient<Channel>,
    key: &ed25519_dalek::SigningKey,
    code: u32,
    agreement: &str,
) -> usize {
    let mut stream = client
        .query_readings(signed_query(key, code, agreement))
        .await
        .expect("the honest partner's query is accepted")
        .into_inner();
    let mut readings = 0;
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        readings += chunk.readings.len();
    }
    readings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partner_cannot_freeze_the_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = root.path().join("aarhus");
    let ca = DevCa::generate("Test CA").expect("CA");
    let (peer_addr, local_addr) = (free_port(), free_port());
    let made = init_node_dir(
        &dir,
        &NodeSpec {
            municipality_code: 751,
            municipality_name: "Aarhus Kommune".to_string(),
            peer_listen: peer_addr.to_string(),
            local_listen: local_addr.to_string(),
            advertised_endpoint: Some(format!("https://{peer_addr}")),
        },
    )
    .expect("init");
    install_dev_certificate(&dir, "Aarhus Kommune", &ca, &loopback_hosts()).expect("cert");
    // Tight limits so the test sees them at work within seconds.
    let mut config = std::fs::read_to_string(dir.join(CONFIG_FILE)).expect("config");
    config = config.replace(
        "[local]",
        "[peer.limits]\nmax_connections_per_caller = 6\nmax_calls_per_caller = 8\n\
         idle_timeout_secs = 2\nsend_timeout_secs = 30\n\n[local]",
    );
    config = config.replace("[peer]", "[peer]\nhandshake_timeout_secs = 2");
    config.push_str(
        "\n[local.limits]\nmax_calls_per_caller = 8\nidle_timeout_secs = 2\nsend_timeout_secs = 3\n",
    );
    // A read token for the local attack.
    let read_token = samvirke_node::local::auth::generate_token().expect("token");
    config = config.replacen(
        "[[local.tokens]]",
        &format!(
            "[[local.tokens]]\nname = \"dashboard\"\nsha256 = \"{}\"\nroles = [\"read\"]\n\n[[local.tokens]]",
            read_token.hash.to_hex()
        ),
        1,
    );
    std::fs::write(dir.join(CONFIG_FILE), config).expect("write config");

    let partner = |code, name| Partner {
        code,
        name,
        certificate: ca.issue_node(name, &loopback_hosts()).expect("certificate"),
        key: generate_signing_key().expect("key"),
    };
    let attacker = partner(630, "Vejle Kommune");
    let honest = partner(165, "Albertslund Kommune");

    // Governance: a roster of all three, and Aarhus's agreement.
    let aarhus_key = read_signing_key(&dir.join(SIGNING_KEY_FILE)).expect("Aarhus's key");
    let card = IdentityCard {
        code: 751,
        name: "Aarhus Kommune".to_string(),
        node_id: uuid::Uuid::now_v7(),
        endpoint: Some(format!("https://{peer_addr}")),
        signing_key: samvirke_node::identity::signing_key_text(&aarhus_key.verifying_key()),
        tls_fingerprint: Fingerprint::of_der(&certificate_der(
            &std::fs::read_to_string(dir.join(TLS_CERT_FILE)).expect("certificate"),
        ))
        .to_string(),
    };
    let secretariat = generate_signing_key().expect("key");
    let mut roster = RosterBody::first(
        "govtech-midtjylland",
        "GovTech Midtjylland",
        secretariat.verifying_key(),
        DecisionRule::Secretariat,
        time::OffsetDateTime::now_utc(),
        vec![
            card.to_member(time::macros::date!(2016 - 01 - 01))
                .expect("member"),
            attacker.member(),
            honest.member(),
        ],
    )
    .to_draft()
    .expect("roster");
    roster.sign(&secretariat).expect("sign");
    let mut agreement = AgreementBody {
        id: AgreementBody::new_id(),
        fellowship: "govtech-midtjylland".to_string(),
        provider: 751,
        consumers: Consumers::Named(vec![630, 165]),
        scope: Scope {
            datasets: vec![DATASET.to_string()],
            ..Scope::default()
        },
        operations: vec![Operation::Catalog, Operation::Read],
        min_group_size: None,
        purpose: "Air quality across the fellowship".to_string(),
        legal_basis: LegalBasis {
            code: "GDPR art. 6(1)(e)".to_string(),
            text: "Task in the public interest".to_string(),
        },
        excluded_fields: Vec::new(),
        valid_from: datetime!(2024-01-01 00:00 UTC),
        valid_until: datetime!(2099-01-01 00:00 UTC),
        aggregate: Default::default(),
    }
    .to_draft()
    .expect("agreement");
    for key in [&aarhus_key, &attacker.key, &honest.key] {
        agreement.sign(key).expect("sign");
    }
    let agreement_id = agreement.id().to_string();

    let node = start(&dir.join(CONFIG_FILE));
    let local_endpoint = format!("http://{local_addr}");
    let admin = made.admin_token.to_string();
    let mut api = local(&local_endpoint).await;
    api.import_roster(bearer(
        pb::ImportRosterRequest {
            document: Some(pb::SignedDocumentBytes {
                content: roster.to_bytes(),
            }),
            trust_anchor: true,
            ..Default::default()
        },
        &admin,
    ))
    .await
    .expect("roster");
    api.publish_dataset(bearer(
        wire::dataset_to_proto(&sensor_dataset("air-quality", 751).expect("dataset")),
        &admin,
    ))
    .await
    .expect("publish");
    api.import_agreement(bearer(
        pb::ImportAgreementRequest {
            document: Some(pb::SignedDocumentBytes {
                content: agreement.to_bytes(),
            }),
        },
        &admin,
    ))
    .await
    .expect("agreement");
    // Enough that one answer (about 4 MB) outgrows what HTTP/2 flow control
    // lets travel unread (a client takes up to 2 MB a stream), so unread
    // answers really wait on the node.
    let readings: Vec<pb::Reading> = generate(
        "air-quality",
        751,
        250,
        datetime!(2026-03-01 00:00 UTC),
        datetime!(2026-03-02 00:00 UTC),
        7,
    )
    .expect("readings")
    .map(wire::reading_to_proto)
    .collect();
    let total = readings.len();
    let batches: Vec<pb::IngestReadingsRequest> = readings
        .chunks(5_000)
        .map(|chunk| pb::IngestReadingsRequest {
            dataset_id: DATASET.to_string(),
            readings: chunk.to_vec(),
        })
        .collect();
    api.ingest_readings(bearer(tokio_stream::iter(batches), &admin))
        .await
        .expect("ingest");

    let peer_endpoint = format!("https://{peer_addr}");
    let channel = |partner: &Partner| {
        Endpoint::from_shared(peer_endpoint.clone())
            .expect("endpoint")
            .tls_config(partner.tls(&ca))
            .expect("tls")
            .timeout(Duration::from_secs(20))
    };
    // The honest partner's pooled channel, as a node keeps one.
    let mut honest_client = PeerClient::new(channel(&honest).connect().await.expect("honest"));
    let honest_key = honest.key.clone();
    let honest_code = honest.code;
    assert_eq!(
        full_answer(&mut honest_client, &honest_key, honest_code, &agreement_id).await,
        total
    );
    let baseline = node.rss_mib();

    // The honest partner keeps asking, all through the attack.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let honest_task = {
        let stop = Arc::clone(&stop);
        let agreement_id = agreement_id.clone();
        tokio::spawn(async move {
            let mut answers = 0;
            let mut slowest = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                assert_eq!(
                    full_answer(&mut honest_client, &honest_key, honest_code, &agreement_id).await,
                    total
                );
                slowest = slowest.max(started.elapsed());
                answers += 1;
            }
            (answers, slowest)
        })
    };

    // 1. The attacker's connections: four to ask on, two to sit idle, and
    //    more than its limit of six (closed as soon as they are made).
    let mut attack_clients = Vec::new();
    for _ in 0..4 {
        let channel = channel(&attacker)
            .connect()
            .await
            .expect("attacker connects");
        attack_clients.push(PeerClient::new(channel));
    }
    let connector = tokio_rustls::TlsConnector::from(attacker.rustls(&ca));
    let mut idle = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(peer_addr)
            .await
            .expect("tcp");
        let tls = connector
            .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
            .await
            .expect("an idle TLS connection within the limit");
        idle.push(tls);
    }
    let tcp = tokio::net::TcpStream::connect(peer_addr)
        .await
        .expect("tcp");
    let mut seventh = connector
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("the handshake itself completes");
    let mut byte = [0u8; 1];
    let over = tokio::time::timeout(Duration::from_secs(5), seventh.read(&mut byte)).await;
    assert!(
        matches!(over, Ok(Ok(0)) | Ok(Err(_))),
        "a seventh connection of one caller is closed at once: {over:?}"
    );

    // 2. 300 TCP connections that never start TLS.
    let mut half_open = Vec::new();
    for _ in 0..300 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(peer_addr).await {
            half_open.push(tcp);
        }
    }

    // 3. Hundreds of answers asked for and never read.
    let mut held = Vec::new();
    let mut refused = 0;
    let connections = attack_clients.len();
    let burst = Instant::now();
    for i in 0..600 {
        let client = &mut attack_clients[i % connections];
        match client
            .query_readings(signed_query(&attacker.key, attacker.code, &agreement_id))
            .await
        {
            // Kept, never read.
            Ok(stream) => held.push(stream.into_inner()),
            Err(status) if status.code() == Code::ResourceExhausted => refused += 1,
            Err(status) => panic!("unexpected refusal: {status:?}"),
        }
    }
    // Within the burst (inside the 30 s send timeout, after which an
    // unread answer is cut off and its slot freed) at most the caller's
    // limit of 8 are admitted.
    let burst = burst.elapsed();
    assert!(burst < Duration::from_secs(25), "the burst took {burst:?}");
    assert!(held.len() <= 8, "{} unread answers admitted", held.len());
    assert!(refused >= 590, "{refused} refused");
    let (rss, threads) = (node.rss_mib(), node.threads());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (answers, slowest) = honest_task.await.expect("the honest partner's task");
    eprintln!(
        "under attack: RSS {rss} MiB (baseline {baseline} MiB), {threads} threads; {answers} full \
         answers to the honest partner, the slowest in {slowest:?}; {} unread answers admitted, \
         {refused} refused",
        held.len()
    );
    assert!(
        answers >= 1,
        "the honest partner was answered during the attack"
    );
    assert!(rss <= MAX_RSS_MIB, "RSS {rss} MiB over {MAX_RSS_MIB} MiB");
    assert!(threads <= MAX_THREADS, "{threads} threads");

    // Every half-open connection is closed by the node by now (the
    // handshake timeout is 2 s): reading gives end-of-stream or an error.
    let mut closed = 0;
    for mut tcp in half_open {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    assert_eq!(closed, 300, "half-open connections left open");
    // The idle TLS connections are closed after the idle timeout.
    for mut tls in idle {
        let mut buffer = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match tls.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    // HTTP/2 settings and pings: keep reading.
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle connection was kept open");
    }
    // The attacker's slots are its until it gives up its unread answers
    // (or the node cuts them off after the send timeout, freeing what they
    // held): then it was refused, not blocked, and is served again.
    drop(held);
    let mut attacker_client = attack_clients.pop().expect("a client");
    let freed = Instant::now();
    loop {
        match attacker_client
            .query_readings(signed_query(&attacker.key, attacker.code, &agreement_id))
            .await
        {
            Ok(_) => break,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    freed.elapsed() < Duration::from_secs(15),
                    "slots never freed"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }

    // An idle plaintext HTTP/2 connection on the local listener is closed
    // after its idle timeout too.
    {
        use tokio::io::AsyncWriteExt;
        let mut h2c = tokio::net::TcpStream::connect(local_addr)
            .await
            .expect("local tcp");
        h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .expect("preface");
        let mut buffer = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match h2c.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "an idle local connection was kept open");
    }

    // A local read token with unread answers: the same limits.
    let mut dashboard = local(&local_endpoint).await;
    let mut local_held = Vec::new();
    let mut local_refused = 0;
    for _ in 0..100 {
        match dashboard
            .query_readings(bearer(air_query(), read_token.secret.as_str()))
            .await
        {
            Ok(stream) => local_held.push(stream.into_inner()),
            Err(status) if status.code() == Code::ResourceExhausted => local_refused += 1,
            Err(status) => panic!("unexpected local refusal: {status:?}"),
        }
    }
    assert!(local_held.len() <= 8 && local_refused >= 92);
    // The admin token is another caller: answered.
    let mut count = local(&local_endpoint).await;
    let counted = count
        .count_readings(bearer(
            pb::CountReadingsRequest {
                dataset_id: DATASET.to_string(),
            },
            &admin,
        ))
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(counted, total as u64);
    assert!(node.rss_mib() <= MAX_RSS_MIB);
}
