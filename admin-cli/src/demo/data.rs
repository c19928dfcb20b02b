//! Chapter 1 of the demo: each municipality publishes sensor datasets with
//! generated readings on its own node (three whole days up to the last
//! full hour); Aarhus also the fixture pilot results and procurement
//! outcomes. Nothing leaves any node here.

use anyhow::Context;
use samvirke_node::data::record_fixtures::{fixture_pilots, fixture_procurements};
use samvirke_node::data::{DatasetKind, generate, records_dataset, sensor_dataset};
use samvirke_node::devnet::{DEMO_SENSOR_KINDS, DevFederation, DevNode};
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use time::{Duration, OffsetDateTime};

use crate::local;

const SENSORS_PER_DATASET: u32 = 8;
/// Whole days of readings before today.
pub const DAYS_OF_READINGS: i64 = 3;
const BATCH: usize = 2_000;

pub const PILOTS: &str = "aarhus-pilot-results";
pub const PROCUREMENTS: &str = "aarhus-procurement-outcomes";

/// The end of the generated period: the last whole hour.
pub fn until() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now - Duration::seconds(i64::from(now.minute()) * 60 + i64::from(now.second()))
        - Duration::nanoseconds(i64::from(now.nanosecond()))
}

/// Midnight (UTC) `days` before today.
pub fn midnight_before(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_time(time::Time::MIDNIGHT) - Duration::days(days)
}

/// Publishes every node's datasets and loads their data.
pub async fn publish(federation: &DevFederation) -> anyhow::Result<()> {
    println!(
        "  Sensor readings stay on the node that collected them; what a partner may see is \
         decided by agreements (chapter 2)."
    );
    let until = until();
    let from = midnight_before(DAYS_OF_READINGS);
    for (node, kinds) in federation.nodes.iter().zip(DEMO_SENSOR_KINDS) {
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
    Ok(())
}

async fn publish_records(aarhus: &DevNode) -> anyhow::Result<()> {
    let mut api = local::connect(&aarhus.running.local_endpoint(), &aarhus.admin_token).await?;
    for kind in [DatasetKind::Pilot, DatasetKind::Procurement] {
        let dataset = records_dataset(kind, aarhus.running.identity.municipality_code)
            .context("the records dataset template")?;
        api.publish_dataset(wire::dataset_to_proto(&dataset))
            .await
            .with_context(|| format!("publishing `{}`", dataset.id))?;
    }
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
