//! The local API's data RPCs: publish and list datasets, ingest and query
//! readings, put and list records. Storage calls block (sled, fsync), so
//! they run on tokio's blocking pool; query answers stream through
//! [`crate::plane::answer`], so a slow client slows the scan instead of filling
//! memory or holding a thread.

use samvirke_proto::v1 as pb;
use tonic::{Request, Response, Status, Streaming};

use super::LocalService;
use super::auth::Role;
use crate::data::aggregate::AggregateSpec;
use crate::data::catalog::widening_changes;
use crate::data::records::Stored;
use crate::ingest::Source;
use crate::plane::answer::{self, AnswerStream, blocking};
use crate::plane::disclosure::AnswerPlan;
use crate::wire;

fn bad(error: wire::WireError) -> Status {
    Status::invalid_argument(error.to_string())
}

impl LocalService {
    pub(super) async fn publish_dataset_rpc(
        &self,
        request: Request<pb::Dataset>,
        update: bool,
    ) -> Result<Response<pb::Dataset>, Status> {
        let method = if update {
            "samvirke.v1.Local/UpdateDataset"
        } else {
            "samvirke.v1.Local/PublishDataset"
        };
        let (caller, _permit) = self.admit(&request, Role::Ingest, method).await?;
        let dataset = wire::dataset_from_proto(request.into_inner()).map_err(bad)?;
        let answer = wire::dataset_to_proto(&dataset);
        let id = dataset.id.clone();
        let admin = caller.has(Role::Admin);
        let token = caller.name.clone();
        let widened = blocking(&self.plane, move |plane| {
            if !update {
                return plane.catalog().publish(dataset).map(|()| Vec::new());
            }
            // A change that lets partners see more (a field no longer
            // personal, a lower classification, a keyword that pulls the
            // dataset into a keyword-scoped agreement) is the admin's call.
            let widened = match plane.catalog().get(&dataset.id)? {
                Some(current) => widening_changes(&current, &dataset),
                None => Vec::new(),
            };
            if !widened.is_empty() && !admin {
                return Err(crate::data::CatalogError::Widening {
                    id: dataset.id.clone(),
                    token,
                    changes: widened.join("; "),
                });
            }
            plane.catalog().update(dataset).map(|()| widened)
        })
        .await;
        // Publishing and changing what partners may be shown are admin
        // actions in the audit log, refusals included.
        let widened = match widened {
            Ok(widened) => widened,
            Err(status) => {
                self.record(
                    &caller,
                    method,
                    "refused",
                    format!("dataset `{id}`: {}", status.message()),
                )
                .await?;
                return Err(status);
            }
        };
        self.record(
            &caller,
            method,
            "accepted",
            format!(
                "dataset `{id}`, classification {}{}{}",
                answer.classification,
                if widened.is_empty() { "" } else { "; widens: " },
                widened.join("; ")
            ),
        )
        .await?;
        if widened.is_empty() {
            tracing::info!(token = %caller.name, dataset = %id, update, "dataset published");
        } else {
            tracing::warn!(
                token = %caller.name,
                dataset = %id,
                changes = %widened.join("; "),
                "dataset changed by an admin in a way that widens what partners may see"
            );
        }
        Ok(Response::new(answer))
    }

    pub(super) async fn list_datasets_rpc(
        &self,
        request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/ListDatasets")
            .await?;
        let datasets = blocking(&self.plane, |plane| plane.catalog().list()).await?;
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets: datasets.iter().map(wire::dataset_to_proto).collect(),
        }))
    }

    pub(super) async fn ingest_readings_rpc(
        &self,
        request: Request<Streaming<pb::IngestReadingsRequest>>,
    ) -> Result<Response<pb::IngestReadingsResponse>, Status> {
        let (caller, _permit) = self
            .admit(&request, Role::Ingest, "samvirke.v1.Local/IngestReadings")
            .await?;
        let mut batches = request.into_inner();
        let mut totals = pb::IngestReadingsResponse::default();
        let idle = self.answers.send_timeout;
        loop {
            // A client that sends nothing for this long loses the call
            // (what it sent before stays stored).
            // A stopping node ends the call between batches rather than
            // waiting on a client that may never finish.
            let next = tokio::select! {
                next = tokio::time::timeout(idle, batches.message()) => next,
                () = self.stopping.cancelled() => {
                    return Err(Status::unavailable(format!(
                        "the node is stopping; batches 1..{} ({} readings) are stored",
                        totals.batches, totals.readings
                    )));
                }
            }
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no batch for {} s; batches 1..{} ({} readings) are stored",
                    idle.as_secs(),
                    totals.batches,
                    totals.readings
                ))
            })??;
            let Some(batch) = next else {
                break;
            };
            let number = totals.batches + 1;
            let stored_so_far = |totals: &pb::IngestReadingsResponse| match totals.batches {
                0 => "; nothing of this call was stored".to_string(),
                1 => format!(
                    "; batch 1 ({} readings) before it is stored",
                    totals.readings
                ),
                n => format!(
                    "; batches 1..{n} ({} readings) before it are stored",
                    totals.readings
                ),
            };
            let readings = batch
                .readings
                .into_iter()
                .enumerate()
                .map(|(i, r)| wire::reading_from_proto(&format!("reading[{i}]"), r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    Status::invalid_argument(format!(
                        "batch {number}: {e}{}",
                        stored_so_far(&totals)
                    ))
                })?;
            let summary = self
                .ingest
                .store(&Source::Grpc, &batch.dataset_id, readings)
                .await
                .map_err(Status::from)
                .map_err(|status| {
                    Status::new(
                        status.code(),
                        format!(
                            "batch {number}: {}{}",
                            status.message(),
                            stored_so_far(&totals)
                        ),
                    )
                })?;
            totals.batches = number;
            totals.readings += summary.received as u64;
            totals.inserted += summary.new;
            totals.replaced += summary.replaced + summary.duplicates_in_batch;
        }
        tracing::info!(
            token = %caller.name,
            batches = totals.batches,
            readings = totals.readings,
            "readings ingested"
        );
        Ok(Response::new(totals))
    }

    pub(super) async fn query_readings_rpc(
        &self,
        request: Request<pb::ReadingQuery>,
    ) -> Result<Response<AnswerStream>, Status> {
        let (_, permit) = self
            .admit(&request, Role::Read, "samvirke.v1.Local/QueryReadings")
            .await?;
        let question = wire::query_from_proto(request.into_inner()).map_err(bad)?;
        let plan = AnswerPlan {
            query: question.query,
            aggregate: question
                .aggregate
                .map(|(bucket, group)| AggregateSpec::plain(bucket, group)),
            terms: None,
        };
        Ok(Response::new(
            answer::readings(&self.plane, plan, None, self.answers, permit, None).await?,
        ))
    }

    pub(super) async fn count_readings_rpc(
        &self,
        request: Request<pb::CountReadingsRequest>,
    ) -> Result<Response<pb::CountReadingsResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/CountReadings")
            .await?;
        let dataset = request.into_inner().dataset_id;
        let count = blocking(&self.plane, move |plane| plane.readings.count(&dataset)).await?;
        Ok(Response::new(pb::CountReadingsResponse { count }))
    }

    pub(super) async fn put_pilot_rpc(
        &self,
        request: Request<pb::Pilot>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        let _call = self
            .admit(&request, Role::Ingest, "samvirke.v1.Local/PutPilot")
            .await?;
        let pilot = request.into_inner();
        let stored = blocking(&self.plane, move |plane| plane.put_pilot(pilot)).await?;
        Ok(Response::new(pb::PutRecordResponse {
            replaced: stored == Stored::Replaced,
        }))
    }

    pub(super) async fn list_pilots_rpc(
        &self,
        request: Request<pb::PilotFilter>,
    ) -> Result<Response<pb::ListPilotsResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/ListPilots")
            .await?;
        let filter = request.into_inner();
        let pilots = blocking(&self.plane, move |plane| plane.records.list_pilots(&filter)).await?;
        Ok(Response::new(pb::ListPilotsResponse { pilots }))
    }

    pub(super) async fn put_procurement_rpc(
        &self,
        request: Request<pb::Procurement>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        let _call = self
            .admit(&request, Role::Ingest, "samvirke.v1.Local/PutProcurement")
            .await?;
        let procurement = request.into_inner();
        let stored = blocking(&self.plane, move |plane| plane.put_procurement(procurement)).await?;
        Ok(Response::new(pb::PutRecordResponse {
            replaced: stored == Stored::Replaced,
        }))
    }

    pub(super) async fn list_procurements_rpc(
        &self,
        request: Request<pb::ProcurementFilter>,
    ) -> Result<Response<pb::ListProcurementsResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/ListProcurements")
            .await?;
        let filter = request.into_inner();
        let procurements = blocking(&self.plane, move |plane| {
            plane.records.list_procurements(&filter)
        })
        .await?;
        Ok(Response::new(pb::ListProcurementsResponse { procurements }))
    }
}
