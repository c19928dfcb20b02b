//! The data part of the demo: each municipality publishes sensor datasets
//! with generated readings, Aarhus also the fixture pilot results and
//! procurement outcomes; then Vejle asks Aarhus, through the peer API and
//! within its agreements, for its catalog, an air-quality aggregate, pilots
//! and procurements.

use anyhow::Context;
use samvirke_node::data::record_fixtures::{fixture_pilots, fixture_procurements};
use samvirke_node::data::{generate, sensor_dataset};
use samvirke_node::devnet::{DevFederation, DevNode};
use samvirke_node::governance::{AgreementBody, Consumers, LegalBasis, Operation, Scope};
use samvirke_node::peer::client;
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use time::{Duration, OffsetDateTime};

use super::governance::DATASET;
use crate::local;

/// Sensor kinds each demo municipality publishes, in federation order.
const SENSOR_KINDS: [&[&str]; 3] = [
    &["air-quality", "waste-bin-fill"],
    &["parking-occupancy", "water-level"],
    &["noise", "indoor-climate"],
];
const SENSORS_PER_DATASET: u32 = 8;
const DAYS_OF_READINGS: i64 = 2;
const BATCH: usize = 2_000;

const PILOTS: &str = "aarhus-pilot-results";
const PROCUREMENTS: &str = "aarhus-procurement-outcomes";

/// The end of the generated period: the last whole hour.
fn until() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now - Duration::seconds(i64::from(now.minute()) * 60 + i64::from(now.second()))
        - Duration::nanoseconds(i64::from(now.nanosecond()))
}

/// Publishes every node's datasets and loads their data.
pub async fn publish(federation: &DevFederation) -> anyhow::Result<()> {
    println!("Data: each municipality publishes sensor datasets with generated readings.");
    let until = until();
    let from = until - Duration::days(DAYS_OF_READINGS);
    for (node, kinds) in federation.nodes.iter().zip(SENSOR_KINDS) {
        let mut api = local::connect(&node.running.local_endpoint(), &node.admin_token).await?;
        let code = node.running.identity.municipality_code;
        let mut lines = Vec::new();
        for kind in kinds {
            let dataset = sensor_dataset(kind, code)?;
            api.publish_dataset(wire::dataset_to_proto(&dataset))
                .await
                .with_context(|| format!("publishing {}", dataset.id))?;
            let readings: Vec<pb::Reading> = generate(
                kind,
                code,
                SENSORS_PER_DATASET,
                from,
                until,
                u64::from(code),
            )?
            .map(wire::reading_to_proto)
            .collect();
            let batches: Vec<pb::IngestReadingsRequest> = readings
                .chunks(BATCH)
                .map(|chunk| pb::IngestReadingsRequest {
                    dataset_id: dataset.id.clone(),
                    readings: chunk.to_vec(),
                })
                .collect();
            let stored = api
                .ingest_readings(tokio_stream::iter(batches))
                .await
                .with_context(|| format!("ingesting into {}", dataset.id))?
                .into_inner();
            lines.push(format!("{} ({} readings)", dataset.id, stored.readings));
        }
        println!(
            "  {:<22} {}",
            node.running.identity.municipality_name,
            lines.join(", ")
        );
    }
    publish_records(&federation.nodes[0]).await?;
    println!();
    Ok(())
}

fn records_dataset(
    id: &str,
    kind: &str,
    title: &str,
    fields: &[(&str, &str, &str)],
) -> pb::Dataset {
    pb::Dataset {
        id: id.to_string(),
        title: title.to_string(),
        description: format!("{title}, as published in the Danish municipal IT press"),
        kind: kind.to_string(),
        owner: 751,
        theme: "GOVE".to_string(),
        keywords: vec!["fellowship".to_string(), kind.to_string()],
        license: "CC-BY-4.0".to_string(),
        classification: "internal".to_string(),
        schema: fields
            .iter()
            .map(|(name, field_type, unit)| pb::SchemaField {
                name: name.to_string(),
                r#type: field_type.to_string(),
                unit: unit.to_string(),
                personal: false,
            })
            .collect(),
        ..Default::default()
    }
}

async fn publish_records(aarhus: &DevNode) -> anyhow::Result<()> {
    let mut api = local::connect(&aarhus.running.local_endpoint(), &aarhus.admin_token).await?;
    api.publish_dataset(records_dataset(
        PILOTS,
        "pilot",
        "Pilot and innovation project results",
        &[
            ("title", "text", ""),
            ("phase", "text", ""),
            ("findings", "text", ""),
            ("budget_dkk", "number", "DKK"),
        ],
    ))
    .await
    .context("publishing the pilots dataset")?;
    api.publish_dataset(records_dataset(
        PROCUREMENTS,
        "procurement",
        "Joint procurement outcomes",
        &[
            ("title", "text", ""),
            ("suppliers", "text", ""),
            ("value_dkk", "number", "DKK"),
        ],
    ))
    .await
    .context("publishing the procurements dataset")?;
    let pilots = fixture_pilots(PILOTS);
    let procurements = fixture_procurements(PROCUREMENTS);
    let (pilot_count, procurement_count) = (pilots.len(), procurements.len());
    for pilot in pilots {
        api.put_pilot(pilot).await.context("storing a pilot")?;
    }
    for procurement in procurements {
        api.put_procurement(procurement)
            .await
            .context("storing a procurement")?;
    }
    println!(
        "  {:<22} {PILOTS} ({pilot_count} pilots), {PROCUREMENTS} ({procurement_count} procurements)",
        aarhus.running.identity.municipality_name
    );
    Ok(())
}

/// Vejle's questions to Aarhus; returns how many went otherwise than expected.
pub async fn query(federation: &DevFederation, air_agreement: &str) -> anyhow::Result<usize> {
    let [aarhus, vejle, _] = &federation.nodes[..] else {
        anyhow::bail!("the demo needs exactly three nodes");
    };
    let records_agreement = records_agreement(aarhus, vejle).await?;
    let mut peer =
        client::connect(&aarhus.running.peer_endpoint(), &vejle.running.identity.tls).await?;
    let mut failures = 0;
    println!();
    println!("Vejle asks Aarhus through the peer API, within its agreements:");

    let catalog = peer
        .catalog(pb::PeerCatalogRequest {
            agreement_id: air_agreement.to_string(),
        })
        .await?
        .into_inner();
    let ids: Vec<String> = catalog.datasets.iter().map(|d| d.id.clone()).collect();
    println!(
        "  catalog under the air-quality agreement: {}",
        ids.join(", ")
    );
    if ids != [DATASET] {
        failures += 1;
        println!("  FAIL  expected only {DATASET}");
    }

    let until = until();
    let mut stream = peer
        .query_readings(pb::PeerReadingQuery {
            agreement_id: air_agreement.to_string(),
            query: Some(pb::ReadingQuery {
                dataset_id: DATASET.to_string(),
                from: Some(wire::timestamp(until - Duration::hours(4))),
                until: Some(wire::timestamp(until)),
                measures: vec!["pm2_5".to_string()],
                bucket: "1h".to_string(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let mut buckets = Vec::new();
    let mut terms = None;
    while let Some(chunk) = stream.message().await? {
        buckets.extend(chunk.buckets);
        terms = terms.or(chunk.terms);
    }
    let terms = terms.unwrap_or_default();
    let when = |t: Option<&prost_types::Timestamp>| {
        t.and_then(|t| wire::time_of("t", t).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    println!(
        "  sensor aggregate: PM2.5 in Aarhus per hour over all sensors: {} buckets from the \
         agreement's fixed {} grid, {} to {} (the newest hour is not answered until it has \
         settled; every cell holds at least {} readings and sensors)",
        buckets.len(),
        terms.cell,
        when(terms.from.as_ref()),
        when(terms.until.as_ref()),
        terms.min_group_size
    );
    for bucket in &buckets {
        let start = bucket
            .start
            .as_ref()
            .and_then(|t| wire::time_of("start", t).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let shown = |v: Option<f64>| {
            v.map(|v| format!("{v:>6.2}"))
                .unwrap_or_else(|| "     -".to_string())
        };
        println!(
            "    {start}  avg {:>6.2} ug/m3  min {}  max {}  from {} readings",
            bucket.avg,
            shown(bucket.min),
            shown(bucket.max),
            bucket.count
        );
    }
    if buckets.is_empty() {
        failures += 1;
        println!("  FAIL  no buckets");
    }

    let pilots = peer
        .list_pilots(pb::PeerPilotQuery {
            agreement_id: records_agreement.clone(),
            filter: Some(pb::PilotFilter {
                dataset_id: PILOTS.to_string(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .pilots;
    println!(
        "  pilot results ({}; budgets withheld by the agreement):",
        pilots.len()
    );
    for pilot in &pilots {
        let phase = pb::PilotPhase::try_from(pilot.phase)
            .map(|p| {
                p.as_str_name()
                    .trim_start_matches("PILOT_PHASE_")
                    .to_lowercase()
            })
            .unwrap_or_default();
        println!("    {:<12} {}", phase, pilot.title);
    }
    if pilots.is_empty() || pilots.iter().any(|p| p.budget_dkk != 0) {
        failures += 1;
        println!("  FAIL  expected pilots without budgets");
    }

    let procurements = peer
        .list_procurements(pb::PeerProcurementQuery {
            agreement_id: records_agreement,
            filter: Some(pb::ProcurementFilter {
                dataset_id: PROCUREMENTS.to_string(),
                supplier: "KMD".to_string(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .procurements;
    println!(
        "  procurement outcomes with supplier KMD ({}):",
        procurements.len()
    );
    for procurement in &procurements {
        println!(
            "    {:<52} {:>13} DKK  {}",
            procurement.title,
            procurement.value_dkk,
            procurement.suppliers.join(", ")
        );
    }
    if procurements.is_empty() {
        failures += 1;
        println!("  FAIL  expected KMD procurements");
    }
    Ok(failures)
}

/// A second agreement: Aarhus shares its pilot and procurement records
/// with Vejle (read), never the pilots' budgets.
async fn records_agreement(aarhus: &DevNode, vejle: &DevNode) -> anyhow::Result<String> {
    let now = OffsetDateTime::now_utc();
    let mut agreement = AgreementBody {
        id: AgreementBody::new_id(),
        fellowship: "govtech-midtjylland".to_string(),
        provider: aarhus.running.identity.municipality_code,
        consumers: Consumers::Named(vec![vejle.running.identity.municipality_code]),
        scope: Scope {
            datasets: Vec::new(),
            kinds: vec!["pilot".to_string(), "procurement".to_string()],
            keywords: Vec::new(),
        },
        operations: vec![Operation::Catalog, Operation::Read],
        min_group_size: None,
        purpose: "Learn from each other's pilots and joint tenders".to_string(),
        legal_basis: LegalBasis {
            code: "Offentlighedsloven".to_string(),
            text: "Records of public procurement and projects; no personal data".to_string(),
        },
        excluded_fields: vec!["budget_dkk".to_string()],
        valid_from: now - Duration::days(1),
        valid_until: now + Duration::days(365),
        aggregate: Default::default(),
    }
    .to_draft()?;
    agreement.sign(aarhus.running.identity.signing_key())?;
    agreement.sign(vejle.running.identity.signing_key())?;
    let mut api = local::connect(&aarhus.running.local_endpoint(), &aarhus.admin_token).await?;
    api.import_agreement(pb::ImportAgreementRequest {
        document: Some(pb::SignedDocumentBytes {
            content: agreement.to_bytes(),
        }),
    })
    .await
    .context("importing the records agreement")?;
    Ok(agreement.id().to_string())
}
