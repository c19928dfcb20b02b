//! The HTTP API for analysts' tools, end to end: real nodes on loopback,
//! the HTTP listener on `127.0.0.1:0`, an HTTP/1.1 client as Excel, Power
//! BI and Grafana use, and the answers compared with the local gRPC API's
//! for the same question.
//!
//! Covered:
//! - the catalog as JSON and CSV;
//! - raw readings as JSON, NDJSON, CSV and GeoJSON, each exactly the
//!   local gRPC answer (CSV parsed back, values compared bit for bit);
//! - hourly buckets equal to the gRPC aggregate;
//! - 401 with `WWW-Authenticate: Bearer` without a token or with an
//!   unknown one, 403 for an ingest-only token, 400 naming a bad
//!   parameter, 404 for an unknown dataset, all with a JSON `error`;
//! - the OpenAPI document parses and lists every route;
//! - a federated question over two nodes: the partner's rows, tagged, and
//!   its `ok` status, as JSON, NDJSON, GeoJSON and CSV (`part=status` for
//!   the statuses);
//! - a token at its call limit (an answer it does not read) gets 429 with
//!   `Retry-After`, and may call again once that reader has gone;
//! - with `http.tls = true` the API answers HTTP/1.1 over TLS (the ALPN
//!   spreadsheet tools offer), verified against the development CA.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use samvirke_node::data::{Reading, generate, sensor_dataset};
use samvirke_node::governance::{Consumers, DecisionRule, Scope};
use samvirke_node::pki::DevCa;
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_tests::{
    GovernanceFixture, ingest, ingest_batches, local_client, local_query, start_node,
};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const AIR: &str = "aarhus-air-quality";
const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
const FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const UNTIL: OffsetDateTime = datetime!(2026-03-02 00:00 UTC);
const RANGE: &str = "from=2026-03-01&until=2026-03-02T00:00:00Z";

/// One HTTP answer.
#[derive(Debug)]
struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("a JSON body ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("a UTF-8 body")
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts an error status with a JSON body whose `error` contains
    /// every one of `parts`.
    fn assert_error(&self, status: StatusCode, parts: &[&str]) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.content_type(), "application/json");
        let error = self.json()["error"]
            .as_str()
            .expect("an error message")
            .to_string();
        for part in parts {
            assert!(error.contains(part), "`{part}` in {error:?}");
        }
    }
}

/// GET `base` + `path` with `token` as bearer, read to the end (within 30 s).
async fn get(base: &str, path: &str, token: Option<&str>) -> Got {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(Empty::new()).expect("a request");
    let exchange = async {
        let response = client.request(request).await.expect("an HTTP answer");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the whole body")
            .to_bytes();
        Got {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} answers within 30 s"))
}

fn instant(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|e| panic!("`{text}`: {e}"))
}

fn at(reading: &pb::Reading) -> OffsetDateTime {
    let ts = reading.at.expect("a reading has a time");
    OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos),
    )
    .expect("a valid time")
}

/// Aarhus's air quality: 6 sensors every 10 minutes for a day.
fn air_readings() -> Vec<Reading> {
    generate("air-quality", AARHUS, 6, FROM, UNTIL, 0x6874_7470)
        .expect("generate air quality")
        .collect()
}

fn query(bucket: &str) -> pb::ReadingQuery {
    pb::ReadingQuery {
        dataset_id: AIR.to_string(),
        from: Some(wire::timestamp(FROM)),
        until: Some(wire::timestamp(UNTIL)),
        bucket: bucket.to_string(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_answers_as_the_local_grpc_api_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("HTTP API test CA").expect("CA");
    let node = start_node(
        &dir.path().join("aarhus"),
        &ca,
        AARHUS,
        &[("analyst", &["read"]), ("os2iot", &["ingest"])],
    )
    .await;
    let (analyst, feeder) = (node.extra_tokens[0].clone(), node.extra_tokens[1].clone());
    let base = node.running.http_endpoint().expect("the HTTP API is on");
    let mut admin = local_client(&node.running.local_endpoint(), Some(&node.admin_token)).await;
    admin
        .publish_dataset(wire::dataset_to_proto(
            &sensor_dataset("air-quality", AARHUS).expect("air-quality dataset"),
        ))
        .await
        .expect("publish");
    let readings = air_readings();
    ingest(&mut admin, ingest_batches(AIR, &readings, 500))
        .await
        .expect("ingest");
    let grpc = local_query(&mut admin, query(""))
        .await
        .expect("gRPC answer");
    assert_eq!(grpc.readings.len(), readings.len());
    let measures = ["pm2_5", "pm10", "no2"];

    // The catalog.
    let catalog = get(&base, "/api/v1/datasets", Some(&analyst)).await;
    assert_eq!(catalog.status, StatusCode::OK, "{}", catalog.text());
    assert_eq!(catalog.content_type(), "application/json");
    assert_eq!(catalog.json()[0]["id"], AIR);
    assert_eq!(catalog.json()[0]["kind"], "sensor");
    let csv_catalog = get(&base, "/api/v1/datasets?format=csv", Some(&analyst)).await;
    assert!(csv_catalog.content_type().starts_with("text/csv"));
    assert!(
        csv_catalog.text().starts_with("id,title,kind,owner,"),
        "{}",
        csv_catalog.text()
    );
    assert!(csv_catalog.text().contains(AIR));

    // Raw readings as JSON: exactly the gRPC answer, in order.
    let path = format!("/api/v1/datasets/{AIR}/readings?{RANGE}");
    let json = get(&base, &path, Some(&analyst)).await;
    assert_eq!(json.status, StatusCode::OK, "{}", json.text());
    let rows = json.json();
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), grpc.readings.len());
    for (row, reading) in rows.iter().zip(&grpc.readings) {
        assert_eq!(row["sensor_id"], reading.sensor_id.as_str());
        assert_eq!(instant(row["at"].as_str().expect("at")), at(reading));
        let values = row["values"].as_object().expect("values");
        assert_eq!(values.len(), reading.values.len());
        for (measure, value) in &reading.values {
            assert_eq!(
                values[measure].as_f64().map(f64::to_bits),
                Some(value.to_bits()),
                "{measure} of {row}"
            );
        }
        match reading.location {
            Some(l) => assert_eq!(
                (row["lat"].as_f64(), row["lon"].as_f64()),
                (Some(l.lat), Some(l.lon))
            ),
            None => assert!(row.get("lat").is_none()),
        }
    }

    // NDJSON: the same objects, one per line.
    let ndjson = get(&base, &format!("{path}&format=ndjson"), Some(&analyst)).await;
    assert_eq!(ndjson.content_type(), "application/x-ndjson");
    let lines: Vec<Value> = ndjson
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(&lines, rows);

    // CSV (asked for with the Accept header, as Excel's web query does):
    // parsed back, every cell equals the gRPC answer exactly.
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(
            http::Request::get(format!("{base}{path}"))
                .header("authorization", format!("Bearer {analyst}"))
                .header("accept", "text/csv")
                .body(Empty::new())
                .expect("request"),
        )
        .await
        .expect("CSV answer");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let mut csv = csv::Reader::from_reader(&body[..]);
    let header: Vec<String> = csv
        .headers()
        .expect("a header row")
        .iter()
        .map(String::from)
        .collect();
    let mut columns = vec!["sensor_id", "timestamp", "lat", "lon"];
    let schema = samvirke_node::data::sensor_dataset("air-quality", AARHUS).expect("dataset");
    let known: Vec<String> = schema
        .schema
        .iter()
        .filter(|f| f.field_type == samvirke_node::data::FieldType::Number)
        .map(|f| f.name.clone())
        .collect();
    columns.extend(known.iter().map(String::as_str));
    assert_eq!(header, columns);
    let records: Vec<csv::StringRecord> = csv.records().map(|r| r.expect("a CSV row")).collect();
    assert_eq!(records.len(), grpc.readings.len());
    for (record, reading) in records.iter().zip(&grpc.readings) {
        assert_eq!(&record[0], reading.sensor_id.as_str());
        assert_eq!(instant(&record[1]), at(reading));
        match reading.location {
            Some(l) => {
                assert_eq!(record[2].parse::<f64>().ok(), Some(l.lat));
                assert_eq!(record[3].parse::<f64>().ok(), Some(l.lon));
            }
            None => assert_eq!((&record[2], &record[3]), ("", "")),
        }
        for (i, measure) in known.iter().enumerate() {
            let cell = &record[4 + i];
            match reading.values.get(measure) {
                Some(value) => assert_eq!(
                    cell.parse::<f64>().map(f64::to_bits).ok(),
                    Some(value.to_bits()),
                    "{measure} in {record:?}"
                ),
                None => assert_eq!(cell, ""),
            }
        }
    }
    assert!(measures.iter().all(|m| known.iter().any(|k| k == m)));

    // GeoJSON: the located readings as points, lon first.
    let geo = get(&base, &format!("{path}&format=geojson"), Some(&analyst)).await;
    assert_eq!(geo.content_type(), "application/geo+json");
    let geo = geo.json();
    assert_eq!(geo["type"], "FeatureCollection");
    let located: Vec<&pb::Reading> = grpc
        .readings
        .iter()
        .filter(|r| r.location.is_some())
        .collect();
    let features = geo["features"].as_array().expect("features");
    assert_eq!(features.len(), located.len());
    if let (Some(feature), Some(reading)) = (features.first(), located.first()) {
        let l = reading.location.expect("located");
        assert_eq!(feature["geometry"]["coordinates"][0].as_f64(), Some(l.lon));
        assert_eq!(feature["geometry"]["coordinates"][1].as_f64(), Some(l.lat));
        assert_eq!(
            feature["properties"]["sensor_id"],
            reading.sensor_id.as_str()
        );
    }

    // Hourly buckets: the gRPC aggregate, bucket by bucket.
    let grpc_buckets = local_query(&mut admin, query("1h"))
        .await
        .expect("gRPC aggregate");
    assert!(!grpc_buckets.buckets.is_empty());
    let buckets = get(&base, &format!("{path}&bucket=1h"), Some(&analyst)).await;
    assert_eq!(buckets.status, StatusCode::OK, "{}", buckets.text());
    let buckets = buckets.json();
    let buckets = buckets.as_array().expect("an array of buckets");
    assert_eq!(buckets.len(), grpc_buckets.buckets.len());
    for (bucket, expected) in buckets.iter().zip(&grpc_buckets.buckets) {
        let start = expected.start.expect("a start");
        assert_eq!(
            instant(bucket["start"].as_str().expect("start")).unix_timestamp(),
            start.seconds
        );
        assert_eq!(bucket["measure"], expected.measure.as_str());
        assert_eq!(bucket["count"].as_u64(), Some(expected.count));
        assert_eq!(
            bucket["sum"].as_f64().map(f64::to_bits),
            Some(expected.sum.to_bits())
        );
        assert_eq!(
            bucket["avg"].as_f64().map(f64::to_bits),
            Some(expected.avg.to_bits())
        );
        assert_eq!(bucket["min"].as_f64(), expected.min);
        assert_eq!(bucket["max"].as_f64(), expected.max);
        assert!(bucket["sensor_id"].is_null());
    }
    let csv_buckets = get(
        &base,
        &format!("{path}&bucket=1h&format=csv"),
        Some(&analyst),
    )
    .await;
    assert!(
        csv_buckets
            .text()
            .starts_with("start,sensor_id,measure,count,min,max,avg,sum,distinct_sensors\n")
    );
    assert_eq!(
        csv_buckets.text().lines().count(),
        grpc_buckets.buckets.len() + 1
    );

    // Records (none published): empty lists, not errors.
    let pilots = get(&base, "/api/v1/pilots?phase=test", Some(&analyst)).await;
    assert_eq!(
        (pilots.status, pilots.json()),
        (StatusCode::OK, Value::Array(Vec::new()))
    );
    let procurements = get(&base, "/api/v1/procurements?format=csv", Some(&analyst)).await;
    assert_eq!(procurements.status, StatusCode::OK);
    assert!(procurements.text().starts_with("id,dataset_id,title,"));

    // Refusals: JSON errors with the right codes.
    let none = get(&base, &path, None).await;
    none.assert_error(StatusCode::UNAUTHORIZED, &["bearer token"]);
    assert!(
        none.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        none.headers
    );
    let wrong = format!("svk_{}", "0".repeat(64));
    let unknown = get(&base, &path, Some(&wrong)).await;
    unknown.assert_error(StatusCode::UNAUTHORIZED, &["unknown"]);
    assert!(unknown.headers.contains_key("www-authenticate"));
    get(&base, &path, Some(&feeder))
        .await
        .assert_error(StatusCode::FORBIDDEN, &["os2iot", "read"]);
    get(
        &base,
        &format!("/api/v1/datasets/{AIR}/readings?from=yesterday&until=2026-03-02"),
        Some(&analyst),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, &["`from`", "yesterday"]);
    get(&base, &format!("{path}&colour=red"), Some(&analyst))
        .await
        .assert_error(StatusCode::BAD_REQUEST, &["`colour`"]);
    get(&base, &format!("{path}&measure=ozone"), Some(&analyst))
        .await
        .assert_error(StatusCode::BAD_REQUEST, &["`measure`", "ozone"]);
    get(
        &base,
        &format!("{path}&bucket=1h&format=geojson"),
        Some(&analyst),
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, &["`format`"]);
    get(
        &base,
        &format!("/api/v1/datasets/nowhere-air/readings?{RANGE}"),
        Some(&analyst),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, &["nowhere-air"]);
    get(&base, "/api/v1/nothing", Some(&analyst))
        .await
        .assert_error(StatusCode::NOT_FOUND, &["/api/v1/nothing"]);

    // The OpenAPI document: every route, and it needs no token.
    let openapi = get(&base, "/api/v1/openapi.json", None).await;
    assert_eq!(openapi.status, StatusCode::OK);
    let openapi = openapi.json();
    assert!(
        openapi["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3."))
    );
    let paths = openapi["paths"].as_object().expect("paths");
    for route in [
        "/api/v1/datasets",
        "/api/v1/datasets/{id}/readings",
        "/api/v1/pilots",
        "/api/v1/procurements",
        "/api/v1/ask/readings",
        "/api/v1/openapi.json",
        "/api/v1/catalog.jsonld",
    ] {
        assert!(paths.contains_key(route), "{route} in {:?}", paths.keys());
    }
    assert_eq!(paths.len(), 7, "every route, and only those");

    node.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_question_over_http_returns_the_partners_rows_and_statuses() {
    let fx = GovernanceFixture::start(&[AARHUS, VEJLE], NOW).await;
    let mut aarhus = fx.admin(AARHUS).await;
    aarhus
        .publish_dataset(wire::dataset_to_proto(
            &sensor_dataset("air-quality", AARHUS).expect("air-quality dataset"),
        ))
        .await
        .expect("publish");
    let readings = air_readings();
    ingest(&mut aarhus, ingest_batches(AIR, &readings, 500))
        .await
        .expect("ingest");
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE]))
        .await;
    let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
    terms.scope = Scope {
        datasets: vec![AIR.to_string()],
        kinds: Vec::new(),
        keywords: Vec::new(),
    };
    terms.valid_from = datetime!(2026-01-01 00:00 UTC);
    terms.valid_until = datetime!(2027-01-01 00:00 UTC);
    let agreement = fx.agreement(&terms, &[AARHUS, VEJLE]);
    for code in [AARHUS, VEJLE] {
        fx.import_agreement(code, &agreement.to_bytes())
            .await
            .unwrap_or_else(|s| panic!("{code} imports the agreement: {s:?}"));
    }
    let vejle = fx.node(VEJLE);
    let base = vejle.running.http_endpoint().expect("the HTTP API is on");
    let token = vejle.admin_token.to_string();
    let pm25 = readings
        .iter()
        .filter(|r| r.values.contains_key("pm2_5"))
        .count();
    let question = format!("/api/v1/ask/readings?partner={AARHUS}&{RANGE}&measure=pm2_5");

    // JSON: one object with the rows, the statuses and the summary.
    let answer = get(&base, &question, Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let answer = answer.json();
    let rows = answer["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), pm25);
    for row in rows {
        assert_eq!(row["municipality"], AARHUS);
        assert_eq!(row["dataset"], AIR);
        assert_eq!(row["name"], "Aarhus Kommune");
        assert_eq!(row["agreement"], agreement.id().to_string());
        assert!(row["values"]["pm2_5"].is_f64(), "{row}");
    }
    let partners = answer["partners"].as_array().expect("partners");
    assert_eq!(partners.len(), 1, "{partners:?}");
    assert_eq!(partners[0]["municipality"], AARHUS);
    assert_eq!(partners[0]["status"], "ok", "{partners:?}");
    assert_eq!(partners[0]["rows"].as_u64(), Some(pm25 as u64));
    assert_eq!(answer["summary"]["answered"], 1);

    // NDJSON: the rows, then one line per partner, then the summary.
    let ndjson = get(&base, &format!("{question}&format=ndjson"), Some(&token)).await;
    assert_eq!(ndjson.status, StatusCode::OK, "{}", ndjson.text());
    let lines: Vec<Value> = ndjson
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), pm25 + 2);
    assert_eq!(lines[pm25 - 1]["municipality"], AARHUS);
    assert_eq!(lines[pm25]["partner"]["status"], "ok");
    assert_eq!(lines[pm25 + 1]["summary"]["answered"], 1);

    // GeoJSON: the located rows as points, the statuses beside them.
    let geo = get(&base, &format!("{question}&format=geojson"), Some(&token)).await;
    assert_eq!(geo.status, StatusCode::OK, "{}", geo.text());
    let geo = geo.json();
    let located = readings
        .iter()
        .filter(|r| r.values.contains_key("pm2_5") && r.location.is_some())
        .count();
    assert_eq!(geo["features"].as_array().map(Vec::len), Some(located));
    assert_eq!(geo["features"][0]["properties"]["municipality"], AARHUS);
    assert_eq!(geo["partners"][0]["status"], "ok");

    // CSV: the rows in long form; the statuses as a table of their own.
    let csv_rows = get(&base, &format!("{question}&format=csv"), Some(&token)).await;
    assert_eq!(csv_rows.status, StatusCode::OK);
    let text = csv_rows.text();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("municipality,name,dataset,sensor_id,at,lat,lon,measure,value")
    );
    assert_eq!(lines.count(), pm25);
    let statuses = get(
        &base,
        &format!("{question}&format=csv&part=status"),
        Some(&token),
    )
    .await;
    assert_eq!(statuses.status, StatusCode::OK, "{}", statuses.text());
    let mut csv = csv::Reader::from_reader(statuses.body.as_ref());
    assert_eq!(
        csv.headers()
            .expect("header")
            .iter()
            .take(4)
            .collect::<Vec<_>>(),
        vec!["municipality", "name", "dataset", "status"]
    );
    let records: Vec<csv::StringRecord> = csv.records().map(|r| r.expect("row")).collect();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (&records[0][0], &records[0][2], &records[0][3]),
        ("751", AIR, "ok")
    );

    fx.shutdown().await;
}

/// Provisions and starts a node of Aarhus in `dir` with a certificate
/// from `ca` and `extra` appended to its config; returns it and its admin
/// token.
async fn provision(
    dir: &std::path::Path,
    ca: &DevCa,
    extra: &str,
) -> (samvirke_node::server::RunningNode, String) {
    use samvirke_node::config::Config;
    use samvirke_node::pki::loopback_hosts;
    use samvirke_node::provision::{NodeSpec, init_node_dir, install_dev_certificate};
    use samvirke_node::server::{Listeners, Node};

    let name = samvirke_node::fixtures::municipality(AARHUS)
        .expect("a fixture municipality")
        .name;
    let made = init_node_dir(
        dir,
        &NodeSpec {
            municipality_code: AARHUS,
            municipality_name: name.clone(),
            peer_listen: "127.0.0.1:0".to_string(),
            local_listen: "127.0.0.1:0".to_string(),
            advertised_endpoint: None,
        },
    )
    .expect("init");
    install_dev_certificate(dir, &name, ca, &loopback_hosts()).expect("certificate");
    let mut text = std::fs::read_to_string(&made.config_path).expect("config");
    text.push_str(extra);
    std::fs::write(&made.config_path, text).expect("write config");
    let config = Config::load(&made.config_path).expect("config loads");
    let node = Node::open(config.clone()).expect("open");
    let running = node.spawn(Listeners::bind(&config).await.expect("bind"));
    (running, made.admin_token.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_call_limit_gets_429_until_its_answer_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("HTTP API limits test CA").expect("CA");
    let (running, token) = provision(
        dir.path(),
        &ca,
        "\n[local.limits]\nmax_calls_per_caller = 1\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let base = running.http_endpoint().expect("the HTTP API is on");
    let mut admin = local_client(&running.local_endpoint(), Some(&token)).await;
    admin
        .publish_dataset(wire::dataset_to_proto(
            &sensor_dataset("air-quality", AARHUS).expect("air-quality dataset"),
        ))
        .await
        .expect("publish");
    // A few megabytes of JSON: more than the sockets and the answer's
    // chunks in flight hold, so an answer nobody reads stays in progress.
    let readings: Vec<Reading> = generate(
        "air-quality",
        AARHUS,
        40,
        FROM,
        datetime!(2026-03-05 00:00 UTC),
        0x6c69_6d69,
    )
    .expect("generate")
    .collect();
    ingest(&mut admin, ingest_batches(AIR, &readings, 2000))
        .await
        .expect("ingest");
    drop(admin);

    // A client that asks and then reads (almost) nothing.
    let address = running.http_addr.expect("bound");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut stalled = socket.connect(address).await.expect("connect");
    stalled
        .write_all(
            format!(
                "GET /api/v1/datasets/{AIR}/readings?from=2026-03-01&until=2026-03-05 HTTP/1.1\r\n\
                 host: {address}\r\nauthorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send the request");
    let mut start = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut start))
        .await
        .expect("the answer starts")
        .expect("read");
    assert!(
        start[..read].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&start[..read])
    );

    // The token's one call is in progress: the next is refused at once.
    let refused = get(&base, "/api/v1/datasets", Some(&token)).await;
    refused.assert_error(StatusCode::TOO_MANY_REQUESTS, &["too many calls"]);
    assert!(refused.headers.contains_key("retry-after"));

    // The reader goes away: its answer ends, and the token may call again.
    drop(stalled);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = get(&base, "/api/v1/datasets", Some(&token)).await;
        if again.status == StatusCode::OK {
            break;
        }
        assert_eq!(
            again.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            again.text()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the call limit is released once the reader has gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_http_api_answers_http_1_1() {
    use rustls::pki_types::pem::PemObject;

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("HTTP API TLS test CA").expect("CA");
    let (running, admin_token) = provision(
        dir.path(),
        &ca,
        "\n[http]\nlisten = \"127.0.0.1:0\"\ntls = true\n",
    )
    .await;
    let endpoint = running.http_endpoint().expect("the HTTP API is on");
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let address = running.http_addr.expect("bound");

    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        rustls::pki_types::CertificateDer::pem_slice_iter(ca.certificate_pem().as_bytes())
    {
        roots.add(certificate.expect("CA PEM")).expect("a root");
    }
    let mut client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(address).await.expect("TCP");
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
            .connect(
                rustls::pki_types::ServerName::IpAddress(address.ip().into()),
                tcp,
            )
            .await
            .expect("the TLS handshake succeeds with ALPN http/1.1");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .expect("HTTP/1.1");
        tokio::spawn(connection);
        let response = sender
            .send_request(
                http::Request::get("/api/v1/datasets")
                    .header("host", address.to_string())
                    .header("authorization", format!("Bearer {}", admin_token))
                    .body(Empty::<Bytes>::new())
                    .expect("request"),
            )
            .await
            .expect("an answer");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, body)
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("answers within 30 s");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"[]", "an empty catalog");
    running.shutdown().await.expect("clean shutdown");
}
