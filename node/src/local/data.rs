//! The local API's data RPCs: publish and list datasets, ingest and query
//! readings, put and list records. Storage calls block (sled, fsync), so
//! they run on tokio's blocking pool; query answers stream through a
//! bounded channel so a slow client slows the scan instead of filling
//! memory.

use std::sync::Arc;

use samvirke_proto::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::LocalService;
use super::auth::Role;
use crate::data::records::Stored;
use crate::plane::DataPlane;
use crate::wire;

/// Readings per streamed chunk.
const CHUNK_READINGS: usize = 1_000;
/// Buckets per streamed chunk.
const CHUNK_BUCKETS: usize = 2_000;
/// Chunks buffered between the scan and the client.
const CHUNKS_IN_FLIGHT: usize = 4;

/// A stream of answer chunks.
pub type ChunkStream = ReceiverStream<Result<pb::ReadingChunk, Status>>;

/// Runs storage work on the blocking pool.
pub(crate) async fn blocking<T, E>(
    plane: &Arc<DataPlane>,
    work: impl FnOnce(&DataPlane) -> Result<T, E> + Send + 'static,
) -> Result<T, Status>
where
    T: Send + 'static,
    E: Into<Status> + Send + 'static,
{
    let plane = Arc::clone(plane);
    tokio::task::spawn_blocking(move || work(&plane))
        .await
        .map_err(|e| Status::internal(format!("storage task failed: {e}")))?
        .map_err(Into::into)
}

/// Streams the answer to `question` (readings or buckets) in chunks,
/// passing each through `shape` (the local API passes everything; the
/// peer API withholds what an agreement does not disclose).
pub(crate) fn stream_answer(
    plane: &Arc<DataPlane>,
    question: wire::ReadingQuestion,
    shape: Option<crate::plane::Disclosure>,
) -> ChunkStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    let plane = Arc::clone(plane);
    let mut question = question;
    // A limit counts the buckets the caller may see, so it applies after
    // withheld and suppressed buckets are gone.
    let bucket_limit = match (&question.aggregate, &shape) {
        (Some(_), Some(_)) => std::mem::take(&mut question.query.limit),
        _ => 0,
    };
    tokio::task::spawn_blocking(move || {
        let outcome = match question.aggregate {
            Some((size, group)) => plane
                .check_aggregate_size(&question)
                .map_err(|e| Status::invalid_argument(e.to_string()))
                .and_then(|()| {
                    plane
                        .readings
                        .aggregate(&question.query, size, group)
                        .map_err(Status::from)
                })
                .map(|buckets| {
                    let (mut buckets, suppressed) = match &shape {
                        Some(disclosure) => disclosure.buckets(buckets),
                        None => (buckets, 0),
                    };
                    if bucket_limit > 0 {
                        buckets.truncate(usize::try_from(bucket_limit).unwrap_or(usize::MAX));
                    }
                    let mut chunks: Vec<pb::ReadingChunk> = buckets
                        .chunks(CHUNK_BUCKETS)
                        .map(|chunk| pb::ReadingChunk {
                            buckets: chunk.iter().cloned().map(wire::bucket_to_proto).collect(),
                            ..Default::default()
                        })
                        .collect();
                    if chunks.is_empty() || suppressed > 0 {
                        chunks.push(pb::ReadingChunk::default());
                    }
                    if let Some(last) = chunks.last_mut() {
                        last.suppressed_buckets = u32::try_from(suppressed).unwrap_or(u32::MAX);
                    }
                    for chunk in chunks {
                        if sender.blocking_send(Ok(chunk)).is_err() {
                            break;
                        }
                    }
                }),
            None => plane
                .readings
                .query_chunks(&question.query, CHUNK_READINGS, |readings| {
                    let readings = readings
                        .into_iter()
                        .map(|r| match &shape {
                            Some(disclosure) => disclosure.reading(r),
                            None => r,
                        })
                        .map(wire::reading_to_proto)
                        .collect();
                    sender
                        .blocking_send(Ok(pb::ReadingChunk {
                            readings,
                            ..Default::default()
                        }))
                        .is_ok()
                })
                .map(|_| ())
                .map_err(Status::from),
        };
        if let Err(status) = outcome {
            // The client may have gone; nothing else to tell.
            let _ = sender.blocking_send(Err(status));
        }
    });
    ReceiverStream::new(receiver)
}

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
        let caller = self.tokens.authorize(&request, Role::Ingest, method)?;
        let dataset = wire::dataset_from_proto(request.into_inner()).map_err(bad)?;
        let answer = wire::dataset_to_proto(&dataset);
        let id = dataset.id.clone();
        blocking(&self.plane, move |plane| {
            if update {
                plane.catalog().update(dataset)
            } else {
                plane.catalog().publish(dataset)
            }
        })
        .await?;
        tracing::info!(token = %caller.name, dataset = %id, update, "dataset published");
        Ok(Response::new(answer))
    }

    pub(super) async fn list_datasets_rpc(
        &self,
        request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        self.tokens
            .authorize(&request, Role::Read, "samvirke.v1.Local/ListDatasets")?;
        let datasets = blocking(&self.plane, |plane| plane.catalog().list()).await?;
        Ok(Response::new(pb::ListDatasetsResponse {
            datasets: datasets.iter().map(wire::dataset_to_proto).collect(),
        }))
    }

    pub(super) async fn ingest_readings_rpc(
        &self,
        request: Request<Streaming<pb::IngestReadingsRequest>>,
    ) -> Result<Response<pb::IngestReadingsResponse>, Status> {
        let caller =
            self.tokens
                .authorize(&request, Role::Ingest, "samvirke.v1.Local/IngestReadings")?;
        let mut batches = request.into_inner();
        let mut totals = pb::IngestReadingsResponse::default();
        while let Some(batch) = batches.message().await? {
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
            let dataset = batch.dataset_id;
            let now = self.clock.now();
            let summary = blocking(&self.plane, move |plane| {
                plane.readings.ingest_batch(&dataset, &readings, now)
            })
            .await
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
    ) -> Result<Response<ChunkStream>, Status> {
        self.tokens
            .authorize(&request, Role::Read, "samvirke.v1.Local/QueryReadings")?;
        let question = wire::query_from_proto(request.into_inner()).map_err(bad)?;
        Ok(Response::new(stream_answer(&self.plane, question, None)))
    }

    pub(super) async fn count_readings_rpc(
        &self,
        request: Request<pb::CountReadingsRequest>,
    ) -> Result<Response<pb::CountReadingsResponse>, Status> {
        self.tokens
            .authorize(&request, Role::Read, "samvirke.v1.Local/CountReadings")?;
        let dataset = request.into_inner().dataset_id;
        let count = blocking(&self.plane, move |plane| plane.readings.count(&dataset)).await?;
        Ok(Response::new(pb::CountReadingsResponse { count }))
    }

    pub(super) async fn put_pilot_rpc(
        &self,
        request: Request<pb::Pilot>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        self.tokens
            .authorize(&request, Role::Ingest, "samvirke.v1.Local/PutPilot")?;
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
        self.tokens
            .authorize(&request, Role::Read, "samvirke.v1.Local/ListPilots")?;
        let filter = request.into_inner();
        let pilots = blocking(&self.plane, move |plane| plane.records.list_pilots(&filter)).await?;
        Ok(Response::new(pb::ListPilotsResponse { pilots }))
    }

    pub(super) async fn put_procurement_rpc(
        &self,
        request: Request<pb::Procurement>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        self.tokens
            .authorize(&request, Role::Ingest, "samvirke.v1.Local/PutProcurement")?;
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
        self.tokens
            .authorize(&request, Role::Read, "samvirke.v1.Local/ListProcurements")?;
        let filter = request.into_inner();
        let procurements = blocking(&self.plane, move |plane| {
            plane.records.list_procurements(&filter)
        })
        .await?;
        Ok(Response::new(pb::ListProcurementsResponse { procurements }))
    }
}
