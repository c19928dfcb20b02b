//! The catalog export (`ExportCatalog`): this node's datasets, and on
//! request the fellowship's, as a DCAT-AP-DK document
//! ([`crate::data::dcat`]) for open-data portals. The HTTP API serves the
//! same answer at `/api/v1/catalog.jsonld`.

use std::time::Duration;

use samvirke_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::LocalService;
use super::auth::Role;
use crate::data::dcat::{self, Contact, Inputs, LocalDataset, Publisher};
use crate::federate::{DEFAULT_DEADLINE, MAX_DEADLINE};
use crate::plane::answer::blocking;
use crate::wire;

/// What the export says beyond the datasets: where the HTTP API is and
/// whom to ask. Set by the server from `[catalog]` and `[http]`.
#[derive(Debug, Clone, Default)]
pub struct ExportSettings {
    /// The HTTP API's base URL without a trailing slash; `None` when the
    /// node has no HTTP API and no `catalog.public_url`.
    pub base_url: Option<String>,
    pub contact: Contact,
}

impl LocalService {
    pub(super) async fn export_catalog_rpc(
        &self,
        request: Request<pb::ExportCatalogRequest>,
    ) -> Result<Response<pb::ExportCatalogResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/ExportCatalog")
            .await?;
        let ask = request.into_inner();
        if !matches!(ask.format.as_str(), "" | "dcat") {
            return Err(Status::invalid_argument(format!(
                "format: `{}` is not a catalog format this node exports (it has: dcat)",
                crate::telemetry::untrusted(&ask.format)
            )));
        }
        // Every distribution must point somewhere a portal can reach.
        let Some(base_url) = self.export.base_url.clone() else {
            return Err(Status::failed_precondition(
                "the DCAT-AP-DK catalog points at the HTTP API, which this node does not serve: \
                 add an [http] section or set catalog.public_url in the node's config",
            ));
        };
        let local = blocking(&self.plane, |plane| {
            let mut out = Vec::new();
            for dataset in plane.catalog().list()? {
                // First and last reading from the sensor index, which is
                // small (one entry per sensor), not from the readings.
                let readings = if dataset.kind == crate::data::DatasetKind::Sensor {
                    let sensors = plane.readings.sensors(&dataset.id)?;
                    let first = sensors.iter().map(|s| s.first).min();
                    let last = sensors.iter().map(|s| s.last).max();
                    first.zip(last)
                } else {
                    None
                };
                out.push(LocalDataset {
                    dataset: wire::dataset_to_proto(&dataset),
                    readings,
                });
            }
            Ok::<_, Status>(out)
        })
        .await?;
        let (fellowship, unavailable) = if ask.fellowship {
            let deadline = match ask.deadline_ms {
                0 => DEFAULT_DEADLINE,
                ms => Duration::from_millis(u64::from(ms)).min(MAX_DEADLINE),
            };
            let answer = self
                .federation
                .fellowship_catalog("", &pb::CatalogSearch::default(), deadline)
                .await;
            (Some(answer.datasets), answer.unavailable)
        } else {
            (None, Vec::new())
        };
        let document = dcat::document(&Inputs {
            node: Publisher {
                code: self.identity.municipality_code,
                name: self.identity.municipality_name.clone(),
            },
            base_url,
            contact: self.export.contact.clone(),
            local,
            fellowship,
            now: self.clock.now(),
        });
        if document.skipped > 0 {
            tracing::warn!(
                skipped = document.skipped,
                "catalog export left out partner entries whose ids cannot be IRIs"
            );
        }
        let text = serde_json::to_string_pretty(&document.json)
            .map_err(|e| Status::internal(format!("the catalog could not be encoded: {e}")))?;
        Ok(Response::new(pb::ExportCatalogResponse {
            document: text,
            media_type: dcat::MEDIA_TYPE.to_string(),
            unavailable,
        }))
    }
}
