//! The admin listener, end to end: a fellowship of three real nodes on
//! loopback (Greve, Holbæk, and Roskilde, which has left), with a
//! roster, an agreement ending within 30 days, a dataset with readings
//! and real traffic; the admin port scraped and browsed as Prometheus and
//! an operator's browser would.
//!
//! Covered:
//! - `/metrics` parses as Prometheus text (an independent parser) and its
//!   counters move with traffic: local calls by RPC and gRPC code
//!   (accepted and refused), a refused peer call (by reason, and on the
//!   peer listener), ingest rows and batches by door, partner call
//!   latency by partner code; the scrape-time gauges (audit length, store
//!   size, governance documents, certificate expiry, up, ready) hold;
//! - `/healthz` and `/readyz` answer 200 while the node serves; the admin
//!   port closes with the node;
//! - an oversized request head is refused, not buffered;
//! - the status page in headless Chromium (Debian `chromium`): the
//!   municipality, a member with its left date, the agreement with its
//!   expiry warning, the dataset's row count, the partner's reachability,
//!   recent audit entries; markup in a dataset title is shown as text,
//!   never run; no token or key material is on the page. A screenshot is
//!   saved under `target/`. Without chromium the test fails, unless
//!   `SAMVIRKE_SKIP_BROWSER` is set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use samvirke_node::data::sensor_dataset;
use samvirke_node::governance::{Consumers, DecisionRule};
use samvirke_node::ingest::Source;
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_tests::{GovernanceFixture, LocalApi, air_quality_readings, local_client};
use time::OffsetDateTime;
use time::macros::{date, datetime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GREVE: u32 = 253;
const HOLBAEK: u32 = 316;
const ROSKILDE: u32 = 265;
/// 21.5 days before the agreement of [`GovernanceFixture::terms`] ends.
const NOW: OffsetDateTime = datetime!(2025-12-10 12:00 UTC);
const DATA_FROM: OffsetDateTime = datetime!(2025-12-01 00:00 UTC);
/// A dataset title an attacker with a publishing token might choose.
const HOSTILE_TITLE: &str = "Luft <script>document.title='owned'</script> & <b>fed</b>";

/// One HTTP answer.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    content_type: String,
    body: String,
}

/// GET `url`, read to the end (within 30 s).
async fn get(url: &str) -> Got {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::get(url)
        .body(Empty::new())
        .expect("a request");
    let exchange = async {
        let response = client.request(request).await.expect("an HTTP answer");
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the whole body")
            .to_bytes();
        Got {
            status,
            content_type,
            body: String::from_utf8(body.to_vec()).expect("UTF-8"),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {url} answers within 30 s"))
}

/// A scrape: every sample's value by metric name and sorted labels.
#[derive(Debug)]
struct Scrape(HashMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    async fn of(base: &str) -> Scrape {
        let got = get(&format!("{base}/metrics")).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        assert!(
            got.content_type.starts_with("application/openmetrics-text"),
            "{}",
            got.content_type
        );
        let lines = got.body.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("/metrics is Prometheus text");
        let mut samples = HashMap::new();
        for sample in parsed.samples {
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(buckets) => {
                    buckets.last().map(|b| b.count).unwrap_or(0.0)
                }
                prometheus_parse::Value::Summary(_) => continue,
            };
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            samples.insert((sample.metric, labels), value);
        }
        assert!(!samples.is_empty(), "the scrape has samples");
        Scrape(samples)
    }

    /// The sum of `metric` over the samples whose labels include `want`.
    fn sum(&self, metric: &str, want: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|((name, labels), _)| {
                name == metric
                    && want
                        .iter()
                        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    fn has(&self, metric: &str) -> bool {
        self.0.keys().any(|(name, _)| name == metric)
    }
}

/// Greve, Holbæk and Roskilde in one fellowship (Roskilde left on
/// 2025-01-01); Greve shares its air quality with Holbæk under an
/// agreement ending 2026-01-01, and holds 4 sensors x 12 readings.
async fn fellowship() -> (GovernanceFixture, pb::Dataset, String) {
    let fx = GovernanceFixture::start(&[GREVE, HOLBAEK, ROSKILDE], NOW).await;
    let mut members = fx.members(&[GREVE, HOLBAEK, ROSKILDE]);
    members[2].left = Some(date!(2025 - 01 - 01));
    let roster = fx.sign_roster(
        &fx.first_roster(DecisionRule::Quorum(1), members),
        &[&fx.secretariat],
    );
    fx.import_everywhere(&roster).await;

    let mut dataset = wire::dataset_to_proto(
        &sensor_dataset("air-quality", GREVE).expect("the air-quality dataset"),
    );
    dataset.title = HOSTILE_TITLE.to_string();
    let readings = air_quality_readings(GREVE, 4, 12, DATA_FROM);
    LocalApi::of(fx.node(GREVE))
        .publish_with_readings(&dataset, &readings)
        .await;

    let mut terms = fx.terms(GREVE, Consumers::Named(vec![HOLBAEK]));
    terms.scope.datasets = vec![dataset.id.clone()];
    let agreement = fx.agreement(&terms, &[GREVE, HOLBAEK]);
    for code in [GREVE, HOLBAEK] {
        fx.import_agreement(code, &agreement.to_bytes())
            .await
            .unwrap_or_else(|s| panic!("{code} imports the agreement: {s:?}"));
    }
    (fx, dataset, agreement.id().to_string())
}

fn admin_base(fx: &GovernanceFixture, code: u32) -> String {
    fx.node(code)
        .running
        .admin_endpoint()
        .expect("development nodes serve the admin listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic_and_health_answers() {
    let (fx, dataset, agreement) = fellowship().await;
    let greve = admin_base(&fx, GREVE);
    let holbaek = admin_base(&fx, HOLBAEK);

    assert_eq!(
        get(&format!("{greve}/healthz")).await.status,
        StatusCode::OK
    );
    let ready = get(&format!("{greve}/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);

    let before = Scrape::of(&greve).await;
    let holbaek_before = Scrape::of(&holbaek).await;

    // Three accepted local calls and two refused ones.
    let mut admin = fx.admin(GREVE).await;
    for _ in 0..3 {
        admin
            .status(pb::StatusRequest {})
            .await
            .expect("Status answers the admin token");
    }
    let endpoint = fx.node(GREVE).running.local_endpoint();
    let mut stranger = local_client(&endpoint, Some("svk_not-a-token")).await;
    for _ in 0..2 {
        let refused = stranger.status(pb::StatusRequest {}).await;
        assert_eq!(
            refused.expect_err("an unknown token is refused").code(),
            tonic::Code::Unauthenticated
        );
    }

    // A peer call from Roskilde, which has left: refused and counted.
    let mut roskilde = fx.peer(ROSKILDE, GREVE).await;
    let denied = roskilde
        .catalog(pb::PeerCatalogRequest {
            agreement_id: agreement.clone(),
        })
        .await;
    let code = denied.expect_err("a former member is refused").code();

    // A door storing through the ingest pipeline.
    let readings = air_quality_readings(GREVE, 2, 5, datetime!(2025-12-05 00:00 UTC));
    let stored = fx
        .node(GREVE)
        .running
        .ingest
        .store(&Source::Http("test-door".into()), &dataset.id, readings)
        .await
        .expect("the pipeline stores the batch");
    assert_eq!(stored.new, 10);

    // Holbæk probes its partners: a latency for Greve (code 253).
    let partners = fx
        .admin(HOLBAEK)
        .await
        .list_partners(pb::ListPartnersRequest { probe: true })
        .await
        .expect("ListPartners")
        .into_inner();
    assert!(
        partners.partners.iter().any(|p| p.municipality == GREVE),
        "{partners:?}"
    );

    let after = Scrape::of(&greve).await;
    let holbaek_after = Scrape::of(&holbaek).await;
    let moved = |metric: &str, labels: &[(&str, &str)]| {
        after.sum(metric, labels) - before.sum(metric, labels)
    };
    let status_ok = [
        ("listener", "local"),
        ("rpc", "samvirke.v1.Local/Status"),
        ("code", "OK"),
    ];
    assert_eq!(moved("samvirke_rpc_requests_total", &status_ok), 3.0);
    let status_refused = [
        ("listener", "local"),
        ("rpc", "samvirke.v1.Local/Status"),
        ("code", "UNAUTHENTICATED"),
    ];
    assert_eq!(moved("samvirke_rpc_requests_total", &status_refused), 2.0);
    let code_name = match code {
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
        other => panic!("a refusal, not {other:?}"),
    };
    assert_eq!(
        moved(
            "samvirke_rpc_requests_total",
            &[
                ("listener", "peer"),
                ("rpc", "samvirke.v1.Peer/Catalog"),
                ("code", code_name)
            ]
        ),
        1.0
    );
    assert_eq!(
        moved("samvirke_peer_denials_total", &[("code", code_name)]),
        1.0,
        "one refusal counted"
    );
    assert_eq!(
        moved(
            "samvirke_ingest_rows_total",
            &[("kind", "http"), ("name", "test-door")]
        ),
        10.0
    );
    assert_eq!(
        moved(
            "samvirke_ingest_batches_total",
            &[("kind", "http"), ("name", "test-door")]
        ),
        1.0
    );
    assert!(
        after.sum("samvirke_audit_entries", &[]) > before.sum("samvirke_audit_entries", &[]),
        "the refusal is in the audit, and its length is reported"
    );
    assert!(after.sum("samvirke_store_size_bytes", &[]) > 0.0);
    assert_eq!(after.sum("samvirke_up", &[]), 1.0);
    assert_eq!(after.sum("samvirke_ready", &[]), 1.0);
    assert_eq!(after.sum("samvirke_datasets", &[]), 1.0);
    assert_eq!(
        after.sum(
            "samvirke_governance_documents",
            &[("kind", "agreement"), ("status", "active")]
        ),
        1.0
    );
    assert_eq!(
        after.sum("samvirke_governance_documents", &[("kind", "roster")]),
        1.0
    );
    let expiry = after.sum("samvirke_tls_certificate_expiry_seconds", &[]);
    assert!(expiry > 0.0, "the dev certificate is valid: {expiry}");

    // Holbæk's partner latency histogram for Greve counted the probe.
    let probes = |s: &Scrape| s.sum("samvirke_partner_call_seconds_count", &[("partner", "253")]);
    assert!(
        probes(&holbaek_after) >= probes(&holbaek_before) + 1.0,
        "the probe of Greve is in Holbæk's latency histogram"
    );
    // ... and its buckets parse as a histogram (the value here is the
    // count of the +Inf bucket).
    assert!(holbaek_after.has("samvirke_partner_call_seconds"));
    let in_buckets = |s: &Scrape| s.sum("samvirke_partner_call_seconds", &[("partner", "253")]);
    assert!(in_buckets(&holbaek_after) >= in_buckets(&holbaek_before) + 1.0);

    // An oversized request head is refused, not buffered.
    let address = fx.node(GREVE).running.admin_addr.expect("admin address");
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nhost: x\r\nx-fill: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = socket.write_all(huge.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.contains(" 200 "),
        "an oversized head is not answered: {answer}"
    );

    // The admin port stops with the node.
    fx.shutdown().await;
    let closed = tokio::net::TcpStream::connect(address).await;
    assert!(closed.is_err(), "the admin listener closed with the node");
}

/// Runs chromium headless with `args` then `url`; its stdout.
fn chromium(profile: &std::path::Path, args: &[&str], url: &str) -> String {
    let output = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_node_in_a_real_browser() {
    if !std::path::Path::new("/usr/bin/chromium").exists() {
        if std::env::var_os("SAMVIRKE_SKIP_BROWSER").is_some() {
            eprintln!("SAMVIRKE_SKIP_BROWSER is set and chromium is missing: browser test skipped");
            return;
        }
        panic!(
            "/usr/bin/chromium is missing: install Debian's `chromium` (.ci/run does), or set \
             SAMVIRKE_SKIP_BROWSER=1 to skip this test"
        );
    }
    let (fx, dataset, agreement) = fellowship().await;
    // Holbæk calls Greve once, so the page has a latency to show.
    fx.admin(HOLBAEK)
        .await
        .list_partners(pb::ListPartnersRequest { probe: true })
        .await
        .expect("ListPartners");
    let url = format!("{}/", admin_base(&fx, HOLBAEK));
    let greve_url = format!("{}/", admin_base(&fx, GREVE));

    // The page as served: HTML, no script, every value escaped.
    let served = get(&greve_url).await;
    assert_eq!(served.status, StatusCode::OK);
    assert!(served.content_type.starts_with("text/html"));
    assert!(!served.body.contains("<script"), "{}", served.body);
    assert!(
        served.body.contains("&lt;script&gt;"),
        "the title is shown as text"
    );

    let profile = tempfile::tempdir().expect("a fresh browser profile");
    let dom = tokio::task::spawn_blocking({
        let profile = profile.path().to_path_buf();
        let url = greve_url.clone();
        move || chromium(&profile, &["--dump-dom"], &url)
    })
    .await
    .expect("chromium task");

    let greve = &fx.node(GREVE);
    for expected in [
        "Greve Kommune",
        "Roskilde Kommune",
        "2025-01-01",
        agreement.as_str(),
        "expires in 21 days",
        dataset.id.as_str(),
        // 4 sensors x 12 readings.
        "<td>48</td>",
        "Recent audit entries",
        "Holbaek Kommune",
    ] {
        assert!(dom.contains(expected), "`{expected}` on the page:\n{dom}");
    }
    // The hostile title is text: the browser built no script element and
    // did not run it (the title would have changed).
    assert!(!dom.contains("<script"), "no script element:\n{dom}");
    assert!(dom.contains("&lt;script&gt;"), "{dom}");
    assert!(
        dom.contains("<title>Samvirke: Greve Kommune</title>"),
        "{dom}"
    );
    // No secret: neither the admin token nor any key.
    assert!(
        !dom.contains(greve.admin_token.as_str()),
        "the admin token is not shown"
    );
    assert!(!dom.contains("svk_"), "no token of any kind");
    assert!(!dom.contains("PRIVATE KEY"), "no key material");
    let key_pem = greve.running.identity.tls.private_key_pem().to_string();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!dom.contains(&key_body[..32]), "no part of the TLS key");

    // Holbæk's page: Greve reached, with a latency.
    let holbaek_dom = tokio::task::spawn_blocking({
        let profile = profile.path().to_path_buf();
        let url = url.clone();
        move || chromium(&profile, &["--dump-dom"], &url)
    })
    .await
    .expect("chromium task");
    assert!(holbaek_dom.contains("reachable"), "{holbaek_dom}");
    assert!(holbaek_dom.contains(" ms at "), "{holbaek_dom}");

    // A screenshot, kept for people to look at.
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("admin-status-page.png");
    let shot = tokio::task::spawn_blocking({
        let profile = profile.path().to_path_buf();
        let target = target.clone();
        move || {
            chromium(
                &profile,
                &[
                    &format!("--screenshot={}", target.display()),
                    "--window-size=1280,2000",
                    "--hide-scrollbars",
                ],
                &greve_url,
            );
            std::fs::read(&target)
        }
    })
    .await
    .expect("chromium task")
    .expect("the screenshot was written");
    assert!(shot.starts_with(b"\x89PNG"), "a PNG");
    println!("status page screenshot: {}", target.display());
    fx.shutdown().await;
}
