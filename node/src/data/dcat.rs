//! The catalog as DCAT-AP-DK: a JSON-LD document that opendata.dk and
//! other DCAT harvesters read, built from this node's datasets and, on
//! request, the partners' datasets the agreements in force let it see.
//!
//! This module owns the mapping from Samvirke's catalog entries to the
//! profile (DCAT-AP-DK 2.0.2 on DCAT-AP 2.0.1) and its controlled
//! vocabularies: publisher type, data themes, access rights, frequencies,
//! file types and licences (EU Publications Office URIs). It builds a
//! [`serde_json::Value`] and does no I/O; the local service gathers the
//! inputs ([`crate::local`]) and the HTTP API and the CLI serve the result.
//!
//! Shape: a self-contained prefix context (there is no official DCAT-AP-DK
//! context to point at, and a harvester must not need the network to read
//! us) and an `@graph` of one `dcat:Catalog`, one `foaf:Agent` per
//! municipality, the `dcat:Dataset`s and their `dcat:Distribution`s, linked
//! by `@id`.
//!
//! Identifiers: a dataset is `urn:samvirke:<kommunekode>:dataset:<id>` and
//! a municipality `urn:samvirke:<kommunekode>`, the same whichever node
//! exports them, so a portal harvesting several nodes sees one dataset
//! once. Partner entries arrive over the network, so a dataset whose id is
//! not a valid dataset id (it would go into an IRI) is left out and
//! counted.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::catalog::check_dataset_id;
use samvirke_proto::v1 as pb;

/// The media type of the document.
pub const MEDIA_TYPE: &str = "application/ld+json";

const EU: &str = "http://publications.europa.eu/resource/authority";
const LOCAL_AUTHORITY: &str = "http://purl.org/adms/publishertype/LocalAuthority";
/// DAWA (Danmarks Adresser) names each kommune by its four-digit code.
const DAWA_KOMMUNE: &str = "https://api.dataforsyningen.dk/kommuner";

/// One municipality, as publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    pub code: u32,
    pub name: String,
}

/// Who answers questions about a node's datasets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// One of this node's datasets, with what its readings say about it.
#[derive(Debug, Clone)]
pub struct LocalDataset {
    pub dataset: pb::Dataset,
    /// First and last stored reading (sensor datasets with readings).
    pub readings: Option<(OffsetDateTime, OffsetDateTime)>,
}

/// Everything the document is made of.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// This node's municipality: the catalog's publisher.
    pub node: Publisher,
    /// The HTTP API's base URL, without a trailing slash.
    pub base_url: String,
    pub contact: Contact,
    pub local: Vec<LocalDataset>,
    /// Partners' datasets; `None` for the node's own catalog only.
    pub fellowship: Option<Vec<pb::VisibleDataset>>,
    /// When the document was made (the catalog's `dct:modified`).
    pub now: OffsetDateTime,
}

/// The document, and what had to be left out of it.
#[derive(Debug, Clone)]
pub struct Document {
    pub json: Value,
    /// Partner entries left out because their ids cannot be IRIs.
    pub skipped: usize,
}

/// Builds the DCAT-AP-DK JSON-LD document.
pub fn document(inputs: &Inputs) -> Document {
    let mut graph = Vec::new();
    let mut publishers = std::collections::BTreeMap::new();
    publishers.insert(inputs.node.code, inputs.node.name.clone());
    let mut dataset_ids = Vec::new();
    let mut skipped = 0;

    for local in &inputs.local {
        let d = &local.dataset;
        if check_dataset_id("id", &d.id).is_err() {
            skipped += 1;
            continue;
        }
        let contact = contact_point(&inputs.contact, &inputs.node.name);
        let access = local_access(&inputs.base_url, &d.id, &d.kind);
        let temporal = local
            .readings
            .or_else(|| declared_period(d.temporal.as_ref()));
        let (dataset, distributions) =
            dataset_nodes(d, inputs.node.code, contact, temporal, &access, None);
        dataset_ids.push(json!({ "@id": dataset["@id"] }));
        graph.push(dataset);
        graph.extend(distributions);
    }

    if let Some(partners) = &inputs.fellowship {
        for visible in partners {
            let Some(d) = &visible.dataset else {
                skipped += 1;
                continue;
            };
            let provider = visible.provider;
            if check_dataset_id("id", &d.id).is_err() || !(1..=999).contains(&provider) {
                skipped += 1;
                continue;
            }
            let name = if visible.provider_name.trim().is_empty() {
                format!("Municipality {provider}")
            } else {
                visible.provider_name.clone()
            };
            publishers.entry(provider).or_insert_with(|| name.clone());
            let contact = contact_point(&Contact::default(), &name);
            let access = partner_access(&inputs.base_url, provider, &d.id, &d.kind);
            let terms = partner_terms(visible);
            let (dataset, distributions) = dataset_nodes(
                d,
                provider,
                contact,
                declared_period(d.temporal.as_ref()),
                &access,
                Some(&terms),
            );
            let id = json!({ "@id": dataset["@id"] });
            // The same dataset under two agreements is one dataset.
            if dataset_ids.contains(&id) {
                continue;
            }
            dataset_ids.push(id);
            graph.push(dataset);
            graph.extend(distributions);
        }
    }

    let catalog_id = format!("{}/api/v1/catalog.jsonld", inputs.base_url);
    let (title, description) = match inputs.fellowship {
        None => (
            format!("Samvirke catalog of {}", inputs.node.name),
            format!(
                "Datasets {} shares through its Samvirke node: sensor readings, pilot results \
                 and procurement outcomes. Access depends on each dataset's access rights.",
                inputs.node.name
            ),
        ),
        Some(_) => (
            format!(
                "Samvirke fellowship catalog as seen by {}",
                inputs.node.name
            ),
            format!(
                "Datasets of {} and the datasets partner municipalities let it use under \
                 data-sharing agreements in force, each under its own publisher.",
                inputs.node.name
            ),
        ),
    };
    let catalog = json!({
        "@id": catalog_id,
        "@type": "dcat:Catalog",
        "dct:title": title,
        "dct:description": description,
        "dct:publisher": { "@id": agent_id(inputs.node.code) },
        "dct:language": { "@id": format!("{EU}/language/DAN") },
        "foaf:homepage": { "@id": format!("{}/api/v1/openapi.json", inputs.base_url) },
        "dct:modified": date_time(inputs.now),
        "dcat:dataset": dataset_ids,
    });
    let mut nodes = vec![catalog];
    for (code, name) in &publishers {
        nodes.push(json!({
            "@id": agent_id(*code),
            "@type": "foaf:Agent",
            "foaf:name": name,
            "dct:type": { "@id": LOCAL_AUTHORITY },
            "dct:identifier": format!("{code:03}"),
        }));
    }
    nodes.extend(graph);
    Document {
        json: json!({ "@context": context(), "@graph": nodes }),
        skipped,
    }
}

fn context() -> Value {
    json!({
        "dcat": "http://www.w3.org/ns/dcat#",
        "dct": "http://purl.org/dc/terms/",
        "foaf": "http://xmlns.com/foaf/0.1/",
        "vcard": "http://www.w3.org/2006/vcard/ns#",
        "dcatap": "http://data.europa.eu/r5r/",
        "dcat-dk": "https://data.gov.dk/model/core/dcat-dk/",
        "locn": "http://www.w3.org/ns/locn#",
        "skos": "http://www.w3.org/2004/02/skos/core#",
        "xsd": "http://www.w3.org/2001/XMLSchema#",
        "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    })
}

fn agent_id(code: u32) -> String {
    format!("urn:samvirke:{code:03}")
}

fn dataset_id(code: u32, id: &str) -> String {
    format!("urn:samvirke:{code:03}:dataset:{id}")
}

/// How a distribution is reached: one per format the API serves.
struct Access {
    /// (file type, IANA media type, URL, what to add to it)
    formats: Vec<(&'static str, &'static str, String)>,
    description: String,
}

fn local_access(base: &str, id: &str, kind: &str) -> Access {
    match kind {
        "sensor" => {
            let url = format!("{base}/api/v1/datasets/{id}/readings");
            Access {
                formats: vec![
                    ("JSON", "application/json", format!("{url}?format=json")),
                    ("CSV", "text/csv", format!("{url}?format=csv")),
                    (
                        "GEOJSON",
                        "application/geo+json",
                        format!("{url}?format=geojson"),
                    ),
                ],
                description: "Readings over HTTP GET with a bearer token; add from and until \
                              (RFC 3339), optionally bucket for aggregates. See the OpenAPI \
                              document."
                    .to_string(),
            }
        }
        "pilot" | "procurement" => {
            let url = format!(
                "{base}/api/v1/{}",
                if kind == "pilot" {
                    "pilots"
                } else {
                    "procurements"
                }
            );
            Access {
                formats: vec![
                    ("JSON", "application/json", format!("{url}?format=json")),
                    ("CSV", "text/csv", format!("{url}?format=csv")),
                ],
                description: "Records over HTTP GET with a bearer token. See the OpenAPI \
                              document."
                    .to_string(),
            }
        }
        _ => Access {
            formats: vec![(
                "JSON",
                "application/json",
                format!("{base}/api/v1/openapi.json"),
            )],
            description: "See the OpenAPI document.".to_string(),
        },
    }
}

/// A partner's data is reached through this node's federated question.
fn partner_access(base: &str, provider: u32, id: &str, kind: &str) -> Access {
    if kind == "sensor" {
        let url = format!("{base}/api/v1/ask/readings?partner={provider}&dataset={id}");
        Access {
            formats: vec![
                ("JSON", "application/json", format!("{url}&format=json")),
                ("CSV", "text/csv", format!("{url}&format=csv")),
                (
                    "GEOJSON",
                    "application/geo+json",
                    format!("{url}&format=geojson"),
                ),
            ],
            description: "Asked of the partner through this node (a federated question) with \
                          a bearer token of this node; add from and until (RFC 3339)."
                .to_string(),
        }
    } else {
        Access {
            formats: vec![(
                "JSON",
                "application/json",
                format!("{base}/api/v1/openapi.json"),
            )],
            description: "Asked of the partner through this node; see the OpenAPI document."
                .to_string(),
        }
    }
}

fn partner_terms(visible: &pb::VisibleDataset) -> String {
    let mut terms = format!(
        "Shared with this node under agreement {} in fellowship {} (operations: {})",
        visible.agreement_id,
        visible.fellowship,
        visible.operations.join(", ")
    );
    if !visible.terms.is_empty() {
        terms.push_str("; ");
        terms.push_str(&visible.terms);
    }
    if let Some(until) = visible
        .valid_until
        .as_ref()
        .and_then(|t| crate::wire::time_of("valid_until", t).ok())
    {
        terms.push_str("; until ");
        terms.push_str(&until.format(&Rfc3339).unwrap_or_default());
    }
    terms.push('.');
    terms
}

/// The dataset node and its distribution nodes.
fn dataset_nodes(
    d: &pb::Dataset,
    owner: u32,
    contact: Value,
    temporal: Option<(OffsetDateTime, OffsetDateTime)>,
    access: &Access,
    terms: Option<&str>,
) -> (Value, Vec<Value>) {
    let id = dataset_id(owner, &d.id);
    let mut keywords: Vec<Value> = d.keywords.iter().map(|k| json!(k)).collect();
    if !d.keywords.iter().any(|k| k.eq_ignore_ascii_case(&d.kind)) && !d.kind.is_empty() {
        keywords.push(json!(d.kind));
    }
    let mut node = Map::new();
    node.insert("@id".into(), json!(id));
    node.insert("@type".into(), json!("dcat:Dataset"));
    node.insert("dct:title".into(), json!(d.title));
    node.insert("dct:description".into(), json!(d.description));
    node.insert("dct:identifier".into(), json!(id));
    node.insert("dct:publisher".into(), json!({ "@id": agent_id(owner) }));
    node.insert("dcat:contactPoint".into(), contact);
    node.insert("dcat:keyword".into(), Value::Array(keywords));
    node.insert(
        "dcat:theme".into(),
        Value::Array(
            themes(&d.theme, &d.kind)
                .into_iter()
                .map(|t| json!({ "@id": format!("{EU}/data-theme/{t}") }))
                .collect(),
        ),
    );
    node.insert("dct:spatial".into(), spatial(owner, d.spatial.as_ref()));
    if let Some((from, until)) = temporal {
        node.insert(
            "dct:temporal".into(),
            json!({
                "@type": "dct:PeriodOfTime",
                "dcat:startDate": date_time(from),
                "dcat:endDate": date_time(until),
            }),
        );
    }
    node.insert(
        "dct:accrualPeriodicity".into(),
        json!({ "@id": format!("{EU}/frequency/{}", frequency(d.update_interval_seconds)) }),
    );
    node.insert(
        "dct:accessRights".into(),
        json!({ "@id": format!("{EU}/access-right/{}", access_right(&d.classification)) }),
    );
    node.insert(
        "dct:language".into(),
        json!({ "@id": format!("{EU}/language/DAN") }),
    );
    let licence = licence(&d.license);
    let mut distributions = Vec::new();
    let mut distribution_ids = Vec::new();
    let description = match terms {
        None => access.description.clone(),
        Some(terms) => format!("{} {terms}", access.description),
    };
    for (file_type, media_type, url) in &access.formats {
        let distribution_id = format!("{id}:distribution:{}", file_type.to_lowercase());
        distribution_ids.push(json!({ "@id": distribution_id }));
        distributions.push(json!({
            "@id": distribution_id,
            "@type": "dcat:Distribution",
            "dct:title": format!("{} as {file_type}", d.title),
            "dct:description": description,
            "dcat:accessURL": { "@id": url },
            "dct:format": { "@id": format!("{EU}/file-type/{file_type}") },
            "dcat:mediaType": { "@id": format!("https://www.iana.org/assignments/media-types/{media_type}") },
            "dct:license": licence,
            "dct:rights": { "@type": "dct:RightsStatement", "rdfs:label": access_words(&d.classification) },
        }));
    }
    node.insert("dcat:distribution".into(), Value::Array(distribution_ids));
    (Value::Object(node), distributions)
}

fn contact_point(contact: &Contact, fallback: &str) -> Value {
    let mut kind = Map::new();
    kind.insert("@type".into(), json!("vcard:Organization"));
    kind.insert(
        "vcard:fn".into(),
        json!(contact.name.clone().unwrap_or_else(|| fallback.to_string())),
    );
    if let Some(email) = &contact.email {
        kind.insert(
            "vcard:hasEmail".into(),
            json!({ "@id": format!("mailto:{email}") }),
        );
    }
    Value::Object(kind)
}

/// The municipality (DAWA's kommune resource), and the box the data is
/// about when the dataset gives one.
fn spatial(owner: u32, bbox: Option<&pb::BoundingBox>) -> Value {
    let mut location = Map::new();
    location.insert("@id".into(), json!(format!("{DAWA_KOMMUNE}/{owner:04}")));
    location.insert("@type".into(), json!("dct:Location"));
    if let Some(b) = bbox {
        let all_finite = [b.min_lat, b.min_lon, b.max_lat, b.max_lon]
            .iter()
            .all(|v| v.is_finite());
        if all_finite {
            // WKT takes longitude first.
            let wkt = format!(
                "POLYGON(({0} {1}, {2} {1}, {2} {3}, {0} {3}, {0} {1}))",
                b.min_lon, b.min_lat, b.max_lon, b.max_lat
            );
            location.insert(
                "dcat:bbox".into(),
                json!({ "@value": wkt, "@type": "http://www.opengis.net/ont/geosparql#wktLiteral" }),
            );
        }
    }
    Value::Object(location)
}

fn declared_period(range: Option<&pb::TimeRange>) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let range = range?;
    let from = crate::wire::time_of("from", range.from.as_ref()?).ok()?;
    let until = crate::wire::time_of("until", range.until.as_ref()?).ok()?;
    Some((from, until))
}

fn date_time(at: OffsetDateTime) -> Value {
    let text = at.format(&Rfc3339).unwrap_or_default();
    json!({ "@value": text, "@type": "xsd:dateTime" })
}

/// EU data themes for a dataset's free-text theme and kind. A theme that
/// already is an EU code (`ENVI`) is kept; sensor data is also about the
/// municipality as a place (REGI), records about its administration (GOVE).
pub fn themes(theme: &str, kind: &str) -> Vec<&'static str> {
    const CODES: [&str; 14] = [
        "AGRI",
        "ECON",
        "EDUC",
        "ENER",
        "ENVI",
        "GOVE",
        "HEAL",
        "INTR",
        "JUST",
        "OP_DATPRO",
        "REGI",
        "SOCI",
        "TECH",
        "TRAN",
    ];
    let t = theme.trim().to_lowercase();
    let mut out: Vec<&'static str> = Vec::new();
    if let Some(code) = CODES.iter().find(|c| c.eq_ignore_ascii_case(&t)) {
        out.push(code);
    }
    let words: &[(&[&str], &'static str)] = &[
        (
            &[
                "environment",
                "air",
                "noise",
                "waste",
                "climate",
                "water",
                "nature",
                "weather",
            ],
            "ENVI",
        ),
        (
            &["mobility", "transport", "traffic", "parking", "bicycle"],
            "TRAN",
        ),
        (&["energy", "heating", "electricity"], "ENER"),
        (&["health", "care"], "HEAL"),
        (&["education", "school"], "EDUC"),
        (
            &[
                "government",
                "digitalisation",
                "procurement",
                "administration",
            ],
            "GOVE",
        ),
        (&["economy", "finance", "budget"], "ECON"),
        (
            &["buildings", "housing", "city", "urban", "planning"],
            "REGI",
        ),
        (&["technology", "iot", "sensors"], "TECH"),
    ];
    for (keys, code) in words {
        if keys.iter().any(|k| t.contains(k)) && !out.contains(code) {
            out.push(code);
        }
    }
    let by_kind = match kind {
        "sensor" => "REGI",
        _ => "GOVE",
    };
    if !out.contains(&by_kind) {
        out.push(by_kind);
    }
    out
}

/// The EU frequency for an update interval in seconds.
pub fn frequency(seconds: u64) -> &'static str {
    match seconds {
        0 => "IRREG",
        1..=3599 => "CONT",
        3600 => "HOURLY",
        3601..=86_400 => "DAILY",
        86_401..=604_800 => "WEEKLY",
        604_801..=2_678_400 => "MONTHLY",
        _ => "ANNUAL",
    }
}

/// The EU access right for a classification: only open data is public;
/// personal data never leaves the node raw, so it is non-public.
pub fn access_right(classification: &str) -> &'static str {
    match classification {
        "open" => "PUBLIC",
        "internal" => "RESTRICTED",
        _ => "NON_PUBLIC",
    }
}

fn access_words(classification: &str) -> String {
    match classification {
        "open" => "Open data.".to_string(),
        "internal" => {
            "Internal: shared only with partner municipalities under a signed data-sharing \
             agreement."
                .to_string()
        }
        "personal" => "Personal data (GDPR): not published; only aggregates may be shared \
                       under a signed agreement, personal fields never leave the node."
            .to_string(),
        other => format!("Classified {other}: shared only under a signed data-sharing agreement."),
    }
}

/// The licence as an IRI: EU licence codes for the common SPDX names, a
/// URL as given, anything else as a described licence document.
fn licence(license: &str) -> Value {
    let l = license.trim();
    let code = match l.to_ascii_uppercase().as_str() {
        "CC-BY-4.0" | "CC BY 4.0" | "CC_BY_4_0" => Some("CC_BY_4_0"),
        "CC0" | "CC0-1.0" | "CC0 1.0" => Some("CC0"),
        "CC-BY-SA-4.0" | "CC_BYSA_4_0" => Some("CC_BYSA_4_0"),
        _ => None,
    };
    match code {
        Some(code) => json!({ "@id": format!("{EU}/licence/{code}") }),
        None if (l.starts_with("https://") || l.starts_with("http://"))
            && !l
                .chars()
                .any(|c| c.is_whitespace() || "<>\"{}|\\^`".contains(c)) =>
        {
            json!({ "@id": l })
        }
        None => json!({ "@type": "dct:LicenseDocument", "rdfs:label": l }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_map_as_the_profile_expects() {
        assert_eq!(themes("environment", "sensor"), vec!["ENVI", "REGI"]);
        assert_eq!(themes("mobility", "sensor"), vec!["TRAN", "REGI"]);
        assert_eq!(themes("ENVI", "pilot"), vec!["ENVI", "GOVE"]);
        assert_eq!(themes("digitalisation", "pilot"), vec!["GOVE"]);
        assert_eq!(frequency(0), "IRREG");
        assert_eq!(frequency(600), "CONT");
        assert_eq!(frequency(3600), "HOURLY");
        assert_eq!(frequency(86_400), "DAILY");
        assert_eq!(access_right("open"), "PUBLIC");
        assert_eq!(access_right("internal"), "RESTRICTED");
        assert_eq!(access_right("confidential"), "NON_PUBLIC");
        assert_eq!(access_right("personal"), "NON_PUBLIC");
        assert_eq!(access_right("something new"), "NON_PUBLIC");
        assert_eq!(
            licence("CC-BY-4.0"),
            json!({ "@id": format!("{EU}/licence/CC_BY_4_0") })
        );
        assert_eq!(
            licence("see <contract>")["@type"],
            json!("dct:LicenseDocument"),
            "text that is no IRI stays text"
        );
    }

    #[test]
    fn a_partner_entry_whose_id_cannot_be_an_iri_is_left_out() {
        let dataset = |id: &str| pb::Dataset {
            id: id.to_string(),
            title: "t".into(),
            description: "d".into(),
            kind: "sensor".into(),
            classification: "open".into(),
            ..Default::default()
        };
        let visible = |id: &str, provider: u32| pb::VisibleDataset {
            dataset: Some(dataset(id)),
            provider,
            provider_name: "Vejle Kommune".into(),
            ..Default::default()
        };
        let doc = document(&Inputs {
            node: Publisher {
                code: 751,
                name: "Aarhus Kommune".into(),
            },
            base_url: "http://127.0.0.1:1".into(),
            contact: Contact::default(),
            local: vec![],
            fellowship: Some(vec![
                visible("vejle-noise", 630),
                visible("x> <urn:evil", 630),
                visible("vejle-noise", 0),
                pb::VisibleDataset::default(),
            ]),
            now: OffsetDateTime::UNIX_EPOCH,
        });
        assert_eq!(doc.skipped, 3);
        let text = doc.json.to_string();
        assert!(text.contains("urn:samvirke:630:dataset:vejle-noise"));
        assert!(!text.contains("evil"));
    }
}
