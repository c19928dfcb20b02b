//! The catalog as DCAT-AP-DK, end to end: the demo federation's four
//! nodes publish the demo's datasets (the sensor kinds `samvirke demo`
//! publishes, and Aarhus's pilot and procurement records), and each node's
//! `GET /api/v1/catalog.jsonld` is expanded by a real JSON-LD processor
//! (pyld, `tests/python/dcat_expand.py`) and checked on the expanded
//! graph, by full IRIs:
//! - the catalog's mandatory properties (title, description, publisher,
//!   at least one dataset) and that it lists every demo dataset;
//! - for every demo dataset: the mandatory title and description, and the
//!   recommended properties we have (identifier, publisher as a
//!   `foaf:Agent` with `foaf:name` and type LocalAuthority, contact point,
//!   keywords, EU data themes, spatial, temporal from the first and last
//!   reading, accrual periodicity, access rights from the classification,
//!   distributions with accessURL, format and licence);
//! - every accessURL points at the node's own HTTP API, and the readings
//!   one answers;
//! - `scope=fellowship` at Vejle adds the Aarhus dataset an agreement lets
//!   Vejle see, under Aarhus as its own publisher; datasets no agreement
//!   covers stay out;
//! - the gRPC `ExportCatalog` answers the same document; no token gets
//!   401, an unknown scope 400 naming it.
//!
//! Needs python3 with pyld (`.ci/run` installs it); set
//! SAMVIRKE_SKIP_PYTHON=1 to skip the JSON-LD processor where there is none.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use samvirke_node::data::{DatasetKind, generate, records_dataset, sensor_dataset};
use samvirke_node::devnet::{DEMO_MUNICIPALITIES, DEMO_SENSOR_KINDS};
use samvirke_node::governance::{Consumers, DecisionRule, Scope};
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_tests::{GovernanceFixture, ingest, ingest_batches};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
const FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const UNTIL: OffsetDateTime = datetime!(2026-03-01 02:00 UTC);

const DCAT: &str = "http://www.w3.org/ns/dcat#";
const DCT: &str = "http://purl.org/dc/terms/";
const FOAF: &str = "http://xmlns.com/foaf/0.1/";
const VCARD: &str = "http://www.w3.org/2006/vcard/ns#";
const RDF_TYPE: &str = "@type";
const EU: &str = "http://publications.europa.eu/resource/authority/";

/// GET `base` + `path`, read to the end.
async fn get(base: &str, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::get(format!("{base}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let exchange = async {
        let response = client
            .request(request.body(Empty::new()).expect("request"))
            .await
            .expect("an HTTP answer");
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
            .expect("body")
            .to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("UTF-8"),
        )
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("an answer within 30 s")
}

/// The expanded document by a real JSON-LD processor, or `None` when
/// SAMVIRKE_SKIP_PYTHON is set.
fn expand(document: &str) -> Option<Vec<Value>> {
    if std::env::var_os("SAMVIRKE_SKIP_PYTHON").is_some() {
        eprintln!("SAMVIRKE_SKIP_PYTHON is set: the JSON-LD processor check is skipped");
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/dcat_expand.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (set SAMVIRKE_SKIP_PYTHON=1 where there is none)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(document.as_bytes())
        .expect("write the document");
    let out = child.wait_with_output().expect("python3 ends");
    assert!(
        out.status.success(),
        "the JSON-LD processor refused the document ({}): {}\n(install it with `python3 -m pip \
         install pyld`, or set SAMVIRKE_SKIP_PYTHON=1)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");
    assert!(
        answer["quads"].as_u64().unwrap_or(0) > 50,
        "the document converts to RDF statements: {}",
        answer["quads"]
    );
    Some(answer["expanded"].as_array().expect("expanded").clone())
}

/// The expanded graph's nodes by `@id` (expansion keeps `@graph` as the
/// default graph's node list).
struct Graph {
    nodes: BTreeMap<String, Value>,
}

impl Graph {
    fn new(expanded: Vec<Value>) -> Graph {
        let mut nodes = BTreeMap::new();
        for top in expanded {
            let list = match top.get("@graph") {
                Some(Value::Array(list)) => list.clone(),
                _ => vec![top],
            };
            for node in list {
                if let Some(id) = node["@id"].as_str() {
                    nodes.insert(id.to_string(), node.clone());
                }
            }
        }
        Graph { nodes }
    }

    fn of_type(&self, class: &str) -> Vec<&Value> {
        self.nodes
            .values()
            .filter(|n| {
                n[RDF_TYPE]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == class))
            })
            .collect()
    }

    fn node(&self, id: &str) -> &Value {
        self.nodes
            .get(id)
            .unwrap_or_else(|| panic!("no node {id} in the graph"))
    }
}

/// The values of `property` on `node` (expanded form: always an array).
fn values<'a>(node: &'a Value, property: &str) -> &'a [Value] {
    node[property].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The one literal of `property`, which must be there and not be empty.
fn literal(node: &Value, property: &str) -> String {
    let found = values(node, property);
    assert_eq!(found.len(), 1, "one {property} on {node}");
    let text = found[0]["@value"].as_str().unwrap_or_default().to_string();
    assert!(!text.trim().is_empty(), "{property} is not empty on {node}");
    text
}

/// The IRIs of `property` on `node`; at least one.
fn iris(node: &Value, property: &str) -> Vec<String> {
    let found: Vec<String> = values(node, property)
        .iter()
        .filter_map(|v| v["@id"].as_str().map(String::from))
        .collect();
    assert!(!found.is_empty(), "{property} on {node}");
    found
}

fn time_of(value: &Value) -> OffsetDateTime {
    assert_eq!(
        value["@type"], "http://www.w3.org/2001/XMLSchema#dateTime",
        "{value}"
    );
    OffsetDateTime::parse(value["@value"].as_str().expect("a time"), &Rfc3339).expect("RFC 3339")
}

/// What the test published on one node.
struct Published {
    code: u32,
    name: String,
    datasets: Vec<(pb::Dataset, Option<(OffsetDateTime, OffsetDateTime)>)>,
}

/// Checks the catalog `graph` exported by `node` at `base` lists every
/// dataset of `node` with every mandatory and recommended property.
fn check_catalog(graph: &Graph, node: &Published, base: &str) {
    let catalogs = graph.of_type(&format!("{DCAT}Catalog"));
    assert_eq!(catalogs.len(), 1, "one catalog");
    let catalog = catalogs[0];
    literal(catalog, &format!("{DCT}title"));
    literal(catalog, &format!("{DCT}description"));
    let publisher = iris(catalog, &format!("{DCT}publisher"));
    assert_eq!(publisher, vec![format!("urn:samvirke:{:03}", node.code)]);
    check_agent(graph, &publisher[0], &node.name);
    let listed = iris(catalog, &format!("{DCAT}dataset"));

    for (dataset, period) in &node.datasets {
        let id = format!("urn:samvirke:{:03}:dataset:{}", node.code, dataset.id);
        assert!(listed.contains(&id), "{id} in the catalog's datasets");
        let d = graph.node(&id);
        assert!(
            values(d, RDF_TYPE)
                .iter()
                .any(|t| *t == format!("{DCAT}Dataset")),
            "{id} is a dcat:Dataset"
        );
        // Mandatory.
        assert_eq!(literal(d, &format!("{DCT}title")), dataset.title);
        assert_eq!(
            literal(d, &format!("{DCT}description")),
            dataset.description
        );
        // Recommended.
        assert_eq!(literal(d, &format!("{DCT}identifier")), id);
        let publisher = iris(d, &format!("{DCT}publisher"));
        check_agent(graph, &publisher[0], &node.name);
        let contact = &values(d, &format!("{DCAT}contactPoint"))[0];
        literal(contact, &format!("{VCARD}fn"));
        let keywords: Vec<&str> = values(d, &format!("{DCAT}keyword"))
            .iter()
            .filter_map(|k| k["@value"].as_str())
            .collect();
        for keyword in &dataset.keywords {
            assert!(keywords.contains(&keyword.as_str()), "{keyword} of {id}");
        }
        assert!(
            keywords.contains(&dataset.kind.as_str()),
            "{id}: {keywords:?}"
        );
        for theme in iris(d, &format!("{DCAT}theme")) {
            assert!(
                theme.starts_with(&format!("{EU}data-theme/")),
                "{id}: theme {theme}"
            );
        }
        let spatial = iris(d, &format!("{DCT}spatial"));
        assert_eq!(
            spatial,
            vec![format!(
                "https://api.dataforsyningen.dk/kommuner/{:04}",
                node.code
            )]
        );
        if let Some((first, last)) = period {
            let temporal = &values(d, &format!("{DCT}temporal"))[0];
            assert_eq!(
                time_of(&values(temporal, &format!("{DCAT}startDate"))[0]),
                *first
            );
            assert_eq!(
                time_of(&values(temporal, &format!("{DCAT}endDate"))[0]),
                *last
            );
        }
        let frequency = iris(d, &format!("{DCT}accrualPeriodicity"));
        assert!(
            frequency[0].starts_with(&format!("{EU}frequency/")),
            "{frequency:?}"
        );
        let rights = iris(d, &format!("{DCT}accessRights"));
        let expected = match dataset.classification.as_str() {
            "open" => "PUBLIC",
            "internal" => "RESTRICTED",
            _ => "NON_PUBLIC",
        };
        assert_eq!(rights, vec![format!("{EU}access-right/{expected}")], "{id}");
        let distributions = iris(d, &format!("{DCAT}distribution"));
        let wanted: &[&str] = if dataset.kind == "sensor" {
            &["JSON", "CSV", "GEOJSON"]
        } else {
            &["JSON", "CSV"]
        };
        assert_eq!(distributions.len(), wanted.len(), "{id}");
        let mut formats = Vec::new();
        for distribution in &distributions {
            let dist = graph.node(distribution);
            // Mandatory.
            let url = iris(dist, &format!("{DCAT}accessURL"));
            assert!(url[0].starts_with(base), "{} points at {base}", url[0]);
            // Recommended.
            formats.extend(iris(dist, &format!("{DCT}format")));
            assert!(
                iris(dist, &format!("{DCT}license"))[0].starts_with(&format!("{EU}licence/")),
                "{distribution}"
            );
            literal(dist, &format!("{DCT}description"));
        }
        for format in wanted {
            assert!(
                formats.contains(&format!("{EU}file-type/{format}")),
                "{id}: {formats:?}"
            );
        }
    }
}

fn check_agent(graph: &Graph, id: &str, name: &str) {
    let agent = graph.node(id);
    assert!(
        values(agent, RDF_TYPE)
            .iter()
            .any(|t| *t == format!("{FOAF}Agent")),
        "{id} is a foaf:Agent"
    );
    assert_eq!(literal(agent, &format!("{FOAF}name")), name);
    assert_eq!(
        iris(agent, &format!("{DCT}type")),
        vec!["http://purl.org/adms/publishertype/LocalAuthority".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_dataset_is_exported_as_dcat_ap_dk_json_ld() {
    let fx = GovernanceFixture::start(&DEMO_MUNICIPALITIES, NOW).await;

    // The demo's datasets, with two hours of readings each.
    let mut published = Vec::new();
    for (code, kinds) in DEMO_MUNICIPALITIES.iter().zip(DEMO_SENSOR_KINDS) {
        let mut admin = fx.admin(*code).await;
        let mut datasets = Vec::new();
        for kind in kinds {
            let dataset = sensor_dataset(kind, *code).expect("a demo dataset");
            admin
                .publish_dataset(wire::dataset_to_proto(&dataset))
                .await
                .expect("publish");
            let readings: Vec<_> = generate(kind, *code, 3, FROM, UNTIL, u64::from(*code))
                .expect("readings")
                .collect();
            let first = readings.iter().map(|r| r.at).min().expect("readings");
            let last = readings.iter().map(|r| r.at).max().expect("readings");
            ingest(&mut admin, ingest_batches(&dataset.id, &readings, 500))
                .await
                .expect("ingest");
            datasets.push((wire::dataset_to_proto(&dataset), Some((first, last))));
        }
        if *code == AARHUS {
            for kind in [DatasetKind::Pilot, DatasetKind::Procurement] {
                let dataset = records_dataset(kind, AARHUS).expect("a records dataset");
                admin
                    .publish_dataset(wire::dataset_to_proto(&dataset))
                    .await
                    .expect("publish");
                datasets.push((wire::dataset_to_proto(&dataset), None));
            }
        }
        published.push(Published {
            code: *code,
            name: fx.node(*code).running.identity.municipality_name.clone(),
            datasets,
        });
    }

    for node in &published {
        let running = &fx.node(node.code).running;
        let base = running.http_endpoint().expect("the HTTP API is on");
        let token = fx.node(node.code).admin_token.to_string();
        let (status, content_type, body) = get(&base, "/api/v1/catalog.jsonld", Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(content_type, "application/ld+json");
        let document: Value = serde_json::from_str(&body).expect("JSON");
        assert!(
            document["@context"].is_object(),
            "a self-contained context, no remote one"
        );
        if let Some(expanded) = expand(&body) {
            check_catalog(&Graph::new(expanded), node, &base);
        }
        // The same document over gRPC (but for when it was made).
        let mut admin = fx.admin(node.code).await;
        let grpc = admin
            .export_catalog(pb::ExportCatalogRequest::default())
            .await
            .expect("ExportCatalog")
            .into_inner();
        assert_eq!(grpc.media_type, "application/ld+json");
        assert_eq!(grpc.document, body);
    }

    // A distribution's accessURL answers (the readings, given a period).
    let aarhus = fx.node(AARHUS);
    let base = aarhus.running.http_endpoint().expect("HTTP");
    let token = aarhus.admin_token.to_string();
    let (_, _, body) = get(&base, "/api/v1/catalog.jsonld", Some(&token)).await;
    let document: Value = serde_json::from_str(&body).expect("JSON");
    let csv_url = document["@graph"]
        .as_array()
        .expect("graph")
        .iter()
        .find(|n| n["@id"] == "urn:samvirke:751:dataset:aarhus-air-quality:distribution:csv")
        .and_then(|n| n["dcat:accessURL"]["@id"].as_str())
        .expect("the CSV distribution")
        .to_string();
    let path = csv_url.strip_prefix(&base).expect("under the API's base");
    let (status, content_type, csv) = get(
        &base,
        &format!("{path}&from=2026-03-01&until=2026-03-02"),
        Some(&token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{csv}");
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    assert!(csv.lines().count() > 1, "{csv}");

    // Refusals: no token; a scope that does not exist.
    let (status, _, _) = get(&base, "/api/v1/catalog.jsonld", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = get(&base, "/api/v1/catalog.jsonld?scope=world", Some(&token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("scope"), "{body}");

    // The fellowship: Aarhus shares its air quality with Vejle.
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &DEMO_MUNICIPALITIES))
        .await;
    let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
    terms.scope = Scope {
        datasets: vec!["aarhus-air-quality".to_string()],
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
    let vejle_base = vejle.running.http_endpoint().expect("HTTP");
    let (status, _, body) = get(
        &vejle_base,
        "/api/v1/catalog.jsonld?scope=fellowship&deadline=10",
        Some(vejle.admin_token.as_str()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let document: Value = serde_json::from_str(&body).expect("JSON");
    let ids: Vec<&str> = document["@graph"]
        .as_array()
        .expect("graph")
        .iter()
        .filter(|n| n["@type"] == "dcat:Dataset")
        .filter_map(|n| n["@id"].as_str())
        .collect();
    assert!(
        ids.contains(&"urn:samvirke:751:dataset:aarhus-air-quality"),
        "{ids:?}"
    );
    assert!(
        !ids.iter().any(|id| id.contains("aarhus-waste-bin-fill")),
        "no agreement covers Aarhus's waste bins: {ids:?}"
    );
    assert!(
        !ids.iter().any(|id| id.starts_with("urn:samvirke:740:")),
        "Silkeborg shares nothing with Vejle: {ids:?}"
    );
    if let Some(expanded) = expand(&body) {
        let graph = Graph::new(expanded);
        let catalog = graph.of_type(&format!("{DCAT}Catalog"))[0];
        assert_eq!(
            iris(catalog, &format!("{DCT}publisher")),
            vec!["urn:samvirke:630".to_string()],
            "Vejle publishes its view of the fellowship"
        );
        let shared = graph.node("urn:samvirke:751:dataset:aarhus-air-quality");
        let publisher = iris(shared, &format!("{DCT}publisher"));
        check_agent(&graph, &publisher[0], "Aarhus Kommune");
        let dist = graph.node(&iris(shared, &format!("{DCAT}distribution"))[0]);
        let url = &iris(dist, &format!("{DCAT}accessURL"))[0];
        assert!(
            url.starts_with(&format!("{vejle_base}/api/v1/ask/readings?partner=751")),
            "a partner's data is asked through Vejle's own API: {url}"
        );
        assert!(
            literal(dist, &format!("{DCT}description")).contains(&agreement.id().to_string()),
            "the distribution names the agreement"
        );
    }

    fx.shutdown().await;
}
