//! The local API's acknowledged ingest: `IngestBatches`, a bidirectional
//! stream that answers each batch with an [`pb::IngestAck`] once the batch
//! is durable, and `IngestSession`, which tells a resuming client how far
//! its session is stored. Batches are stored through the one ingest
//! [`crate::ingest::Pipeline`].
//!
//! What a client can make the node spend is bounded: one batch is decoded
//! at a time (the node reads the next only after acknowledging the one
//! before, and HTTP/2 flow control holds the client back meanwhile), at
//! most one acknowledgement waits for the client, a client that sends
//! nothing or reads no acknowledgement for the listener's send timeout
//! loses the call, and the call holds one place under the per-token call
//! limits for its whole life. Sessions are bounded per token
//! ([`crate::ingest::session`]).

use std::sync::Arc;
use std::time::Duration;

use samvirke_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::LocalService;
use super::auth::Role;
use crate::data::readings::from_ms;
use crate::ingest::session::{self, Progress};
use crate::ingest::{Pipeline, Source, Stored};
use crate::transport::limiter::CallPermit;
use crate::wire;

/// The acknowledgements of an `IngestBatches` call.
pub type AckStream = ReceiverStream<Result<pb::IngestAck, Status>>;

/// What one `IngestBatches` call stored so far.
#[derive(Debug, Default)]
struct CallTotals {
    batches: u64,
    readings: u64,
    /// The sequence number of the last batch acknowledged.
    last: Option<u64>,
}

impl CallTotals {
    /// What a refusal message says is stored of this call.
    fn stored(&self) -> String {
        match self.last {
            None => "; nothing of this call was stored".to_string(),
            Some(last) => format!(
                "; the {} batches acknowledged before it (the last was batch {last}, {} \
                 readings in all) stay stored",
                self.batches, self.readings
            ),
        }
    }
}

impl LocalService {
    pub(super) async fn ingest_batches_rpc(
        &self,
        request: Request<Streaming<pb::IngestBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        let (caller, permit) = self
            .admit(&request, Role::Ingest, "samvirke.v1.Local/IngestBatches")
            .await?;
        let batches = request.into_inner();
        // One acknowledgement in flight: a client that does not read them
        // stops the node reading its batches.
        let (acks, rx) = mpsc::channel(1);
        let call = BatchCall {
            pipeline: Arc::clone(&self.ingest),
            token: caller.name.clone(),
            idle: self.answers.send_timeout,
            acks,
            stopping: self.stopping.clone(),
            _permit: permit,
        };
        tokio::spawn(call.run(batches));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    pub(super) async fn ingest_session_rpc(
        &self,
        request: Request<pb::IngestSessionRequest>,
    ) -> Result<Response<pb::IngestSessionResponse>, Status> {
        let (caller, _permit) = self
            .admit(&request, Role::Ingest, "samvirke.v1.Local/IngestSession")
            .await?;
        let id = request.into_inner().session_id;
        let state = self.ingest.session(&caller.name, &id).await?;
        Ok(Response::new(match state {
            None => pb::IngestSessionResponse::default(),
            Some(state) => pb::IngestSessionResponse {
                found: true,
                chain: state.chain_bytes().to_vec(),
                dataset_id: state.dataset,
                acked: state.acked,
                readings: state.readings,
                updated_at: from_ms(state.updated_ms).ok().map(wire::timestamp),
            },
        }))
    }
}

/// One `IngestBatches` call, served in its own task.
#[derive(Debug)]
struct BatchCall {
    pipeline: Arc<Pipeline>,
    token: String,
    idle: Duration,
    acks: mpsc::Sender<Result<pb::IngestAck, Status>>,
    /// Cancelled when the node stops: the call ends between batches.
    stopping: CancellationToken,
    /// The call's place under the per-token limits, held until it ends.
    _permit: CallPermit,
}

impl BatchCall {
    async fn run(self, mut batches: Streaming<pb::IngestBatch>) {
        let mut totals = CallTotals::default();
        let outcome = loop {
            let next = tokio::select! {
                next = tokio::time::timeout(self.idle, batches.message()) => next,
                // The client went away: nobody to answer.
                () = self.acks.closed() => break Ok(()),
                // A stopping node does not wait for a client that may never
                // finish; what was acknowledged is stored, and the client
                // resumes its session against the restarted node.
                () = self.stopping.cancelled() => {
                    break Err(Status::unavailable(format!(
                        "the node is stopping{}",
                        totals.stored()
                    )));
                }
            };
            let batch = match next {
                Err(_) => {
                    break Err(Status::deadline_exceeded(format!(
                        "no batch for {} s{}",
                        self.idle.as_secs(),
                        totals.stored()
                    )));
                }
                // A broken stream: the client cannot hear an answer.
                Ok(Err(_)) => break Ok(()),
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(batch))) => batch,
            };
            let ack = match self.store(batch, &totals).await {
                Ok(ack) => ack,
                Err(status) => break Err(status),
            };
            totals.batches += 1;
            totals.readings += ack.readings;
            totals.last = Some(ack.sequence);
            match tokio::time::timeout(self.idle, self.acks.send(Ok(ack))).await {
                Ok(Ok(())) => {}
                // Gone, or not reading its acknowledgements: what was
                // acknowledged is stored; the client asks its session.
                Ok(Err(_)) | Err(_) => break Ok(()),
            }
        };
        if let Err(status) = outcome {
            tracing::debug!(token = %self.token, error = %status.message(), "ingest call refused");
            let _ = tokio::time::timeout(self.idle, self.acks.send(Err(status))).await;
        }
        tracing::info!(
            token = %self.token,
            batches = totals.batches,
            readings = totals.readings,
            "readings ingested with per-batch acknowledgements"
        );
    }

    /// Checks and stores one batch; the acknowledgement once it is durable.
    async fn store(
        &self,
        batch: pb::IngestBatch,
        totals: &CallTotals,
    ) -> Result<pb::IngestAck, Status> {
        let in_session = !batch.session_id.is_empty();
        let sequence = match (in_session, batch.sequence, totals.last) {
            (false, 0, last) => last.map_or(1, |n| n + 1),
            (_, 0, _) => {
                return Err(Status::invalid_argument(format!(
                    "sequence: 0; batches of a session are numbered from 1{}",
                    totals.stored()
                )));
            }
            (false, given, last) if given != last.map_or(1, |n| n + 1) => {
                return Err(Status::invalid_argument(format!(
                    "sequence: batch {given} follows {}; number the batches of a call 1, 2, \
                     ... (or leave them 0){}",
                    last.map_or("nothing".to_string(), |n| format!("batch {n}")),
                    totals.stored()
                )));
            }
            (_, given, _) => given,
        };
        let refused = |status: Status| {
            Status::new(
                status.code(),
                format!("batch {sequence}: {}{}", status.message(), totals.stored()),
            )
        };
        let progress = if in_session {
            Some(Progress {
                token: self.token.clone(),
                digest: session::batch_digest(&batch.dataset_id, &batch.readings),
                session: batch.session_id.clone(),
                sequence,
                restart: batch.restart,
                readings: batch.readings.len() as u64,
            })
        } else {
            None
        };
        let readings = batch
            .readings
            .into_iter()
            .enumerate()
            .map(|(i, r)| wire::reading_from_proto(&format!("reading[{i}]"), r))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| refused(Status::invalid_argument(e.to_string())))?;
        let Stored { summary, session } = self
            .pipeline
            .store_with_progress(&Source::Grpc, &batch.dataset_id, readings, progress)
            .await
            .map_err(|e| refused(e.into()))?;
        Ok(pb::IngestAck {
            sequence,
            readings: summary.received as u64,
            inserted: summary.new,
            replaced: summary.replaced + summary.duplicates_in_batch,
            session_acked: session.as_ref().map_or(0, |s| s.acked),
            session_readings: session.as_ref().map_or(0, |s| s.readings),
        })
    }
}
