//! The one ingest pipeline: every door readings come in by (the local gRPC
//! stream and the CLI on it, OS2iot HTTP push, MQTT) hands its batches to
//! [`Pipeline::store`], which validates the batch, writes it as one atomic
//! durable write and only then returns. A door acknowledges its sender
//! (gRPC ack, HTTP 2xx, MQTT PUBACK) only after `store` returned `Ok`, so
//! an acknowledged reading survives a crash and an unacknowledged batch is
//! either wholly stored or not at all.
//!
//! Doors differ only in how they get readings out of their sender's bytes
//! and whom they answer; validation, durability and counting are here.
//!
//! - [`session`]: resumable ingest sessions, whose progress is written in
//!   the same atomic write as each batch ([`Pipeline::store_with_progress`]);
//! - [`recovery`]: the start-up check of the sensor index after an
//!   unclean stop, and the clean-stop marker that makes it unnecessary;
//! - [`config`]: the `[ingest]` config section (push endpoints, MQTT
//!   subscriptions) and its checks;
//! - [`mapping`]: where the readings are in a pushed JSON body;
//! - [`http_push`]: the OS2iot HTTP-push door on the `[http]` listener;
//! - [`mqtt`]: the MQTT door (persistent session, QoS 1, acks after storing).

pub mod config;
pub mod http_push;
pub mod mapping;
pub mod mqtt;
pub mod recovery;
pub mod session;

use std::fmt;
use std::sync::Arc;

use crate::admin::metrics::IngestMetrics;
use crate::clock::SharedClock;
use crate::data::readings::{IngestError, IngestSummary, Reading, to_ms};
use crate::plane::DataPlane;
use crate::store::Keyspace;
use session::{Progress, SessionError, SessionState};

/// Which door a batch came in by (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The local gRPC ingest streams (`IngestBatches`, `samvirke ingest`,
    /// and `IngestReadings`).
    Grpc,
    /// An OS2iot HTTP-push endpoint, by its configured name.
    Http(String),
    /// An MQTT subscription, by its configured name.
    Mqtt(String),
}

impl Source {
    /// The door's kind: `grpc`, `http` or `mqtt`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Grpc => "grpc",
            Source::Http(_) => "http",
            Source::Mqtt(_) => "mqtt",
        }
    }

    /// The configured endpoint or subscription name (empty for gRPC).
    pub fn name(&self) -> &str {
        match self {
            Source::Grpc => "",
            Source::Http(name) | Source::Mqtt(name) => name,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Grpc => f.write_str("grpc"),
            other => write!(f, "{}:{}", other.kind(), other.name()),
        }
    }
}

/// Why the pipeline did not store a batch.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("the storage task failed: {0}")]
    Task(String),
}

/// A batch stored by [`Pipeline::store_with_progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub summary: IngestSummary,
    /// The session after this batch, when the batch was part of one.
    pub session: Option<SessionState>,
}

/// Validates and durably stores batches of readings.
#[derive(Debug, Clone)]
pub struct Pipeline {
    plane: Arc<DataPlane>,
    clock: SharedClock,
    metrics: IngestMetrics,
}

impl Pipeline {
    /// A pipeline storing into `plane`, judging "now" by `clock`.
    pub fn new(plane: Arc<DataPlane>, clock: SharedClock) -> Pipeline {
        Pipeline {
            plane,
            clock,
            metrics: IngestMetrics::default(),
        }
    }

    /// Rows and batches stored and refused, by door.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// Validates `readings` for `dataset` and stores them as one atomic,
    /// durable write. One bad reading refuses the whole batch (nothing of
    /// it is stored). Returns once the batch is on disk.
    pub async fn store(
        &self,
        source: &Source,
        dataset: &str,
        readings: Vec<Reading>,
    ) -> Result<IngestSummary, PipelineError> {
        let plane = Arc::clone(&self.plane);
        let now = self.clock.now();
        let dataset_id = dataset.to_string();
        let result = tokio::task::spawn_blocking(move || {
            plane.readings.ingest_batch(&dataset_id, &readings, now)
        })
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))?;
        if let Err(e) = &result {
            tracing::debug!(%source, dataset, error = %e, "batch refused");
        }
        self.metrics
            .record(source, result.as_ref().ok().map(|s| s.new + s.replaced));
        Ok(result?)
    }

    /// [`Pipeline::store`] for a batch numbered in a resumable session:
    /// the batch is stored only if it is the session's next one, and the
    /// session's new position is written in the same atomic write as the
    /// readings, so it never claims a batch that is not on disk. Without
    /// `progress` this is [`Pipeline::store`].
    pub async fn store_with_progress(
        &self,
        source: &Source,
        dataset: &str,
        readings: Vec<Reading>,
        progress: Option<Progress>,
    ) -> Result<Stored, PipelineError> {
        let plane = Arc::clone(&self.plane);
        let now = self.clock.now();
        let dataset_id = dataset.to_string();
        let result = tokio::task::spawn_blocking(move || {
            let mut session = None;
            let summary = plane.readings.ingest_batch_with(
                &dataset_id,
                &readings,
                now,
                |store| -> Result<_, PipelineError> {
                    let Some(progress) = &progress else {
                        return Ok(None);
                    };
                    let (write, state) =
                        session::advance(store, progress, &dataset_id, to_ms(now))?;
                    session = Some(state);
                    Ok(Some((Keyspace::IngestSessions, write)))
                },
            )?;
            Ok::<_, PipelineError>(Stored { summary, session })
        })
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))?;
        if let Err(e) = &result {
            tracing::debug!(%source, dataset, error = %e, "batch refused");
        }
        result
    }

    /// The session `session` of `token`, if the node has it.
    pub async fn session(
        &self,
        token: &str,
        session: &str,
    ) -> Result<Option<SessionState>, PipelineError> {
        let plane = Arc::clone(&self.plane);
        let (token, session) = (token.to_string(), session.to_string());
        tokio::task::spawn_blocking(move || session::get(plane.readings.store(), &token, &session))
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))?
            .map_err(PipelineError::from)
    }
}
