//! Streaming answers to callers, local or peer, with bounded memory and
//! without letting a slow or absent reader hold anything for long.
//!
//! An answer is produced chunk by chunk: each chunk is computed on tokio's
//! blocking pool (storage reads block), then handed to an async task that
//! waits, with a timeout, for the caller to take it. So:
//!
//! - a blocking thread is used only while a chunk is computed, never while
//!   a caller is slow to read (600 unread streams pin no threads);
//! - at most [`CHUNKS_IN_FLIGHT`] chunks wait for the caller, and a chunk
//!   holds at most [`CHUNK_READINGS`] readings or [`CHUNK_BUCKETS`]
//!   buckets, so one answer's memory is bounded whatever it covers;
//! - a caller that takes no chunk for `send_timeout`, or an answer that
//!   runs past `answer_timeout`, ends the answer with an error (never a
//!   silent truncation: the stream's last item is the status) and frees
//!   what it held at once.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use samvirke_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use crate::data::aggregate::BucketStream;
use crate::data::query::ReadingIter;
use crate::plane::{DataPlane, Disclosure};
use crate::wire;

/// Readings per streamed chunk.
pub const CHUNK_READINGS: usize = 1_000;
/// Buckets per streamed chunk.
pub const CHUNK_BUCKETS: usize = 2_000;
/// Chunks waiting for the caller.
pub const CHUNKS_IN_FLIGHT: usize = 4;

/// How long answers may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerLimits {
    /// A caller that takes no chunk for this long loses the answer.
    pub send_timeout: Duration,
    /// No answer streams for longer than this.
    pub answer_timeout: Duration,
}

impl Default for AnswerLimits {
    fn default() -> Self {
        AnswerLimits {
            send_timeout: Duration::from_secs(30),
            answer_timeout: Duration::from_secs(600),
        }
    }
}

/// Runs storage work on the blocking pool.
pub async fn blocking<T, E>(
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

/// What a source yields next.
#[derive(Debug)]
pub enum Step {
    /// A chunk for the caller.
    Chunk(pb::ReadingChunk),
    /// Nothing yet (the source read its share of rows and found nothing
    /// to send); ask again.
    Pending,
    /// The answer is complete.
    Done,
}

/// Something that yields an answer one chunk at a time.
pub trait ChunkSource: Send + 'static {
    fn next_chunk(&mut self) -> Result<Step, Status>;
}

/// Raw readings, shaped by a disclosure for peers.
#[derive(Debug)]
pub struct ReadingSource {
    pub readings: ReadingIter,
    pub shape: Option<Disclosure>,
}

impl ChunkSource for ReadingSource {
    fn next_chunk(&mut self) -> Result<Step, Status> {
        if self.readings.is_finished() {
            return Ok(Step::Done);
        }
        let readings = self.readings.next_chunk(CHUNK_READINGS)?;
        if readings.is_empty() {
            return Ok(Step::Pending);
        }
        Ok(Step::Chunk(pb::ReadingChunk {
            readings: readings
                .into_iter()
                .map(|r| match &self.shape {
                    Some(disclosure) => disclosure.reading(r),
                    None => r,
                })
                .map(wire::reading_to_proto)
                .collect(),
            ..Default::default()
        }))
    }
}

/// Aggregate buckets, shaped by a disclosure for peers; the first chunk
/// carries the answer's terms (aggregate-only answers).
#[derive(Debug)]
pub struct BucketSource {
    pub buckets: BucketStream,
    pub shape: Option<Disclosure>,
    pub terms: Option<pb::AnswerTerms>,
    pub started: bool,
}

impl ChunkSource for BucketSource {
    fn next_chunk(&mut self) -> Result<Step, Status> {
        let first = !self.started;
        if self.buckets.is_finished() && !first {
            return Ok(Step::Done);
        }
        let buckets = self.buckets.next_chunk(CHUNK_BUCKETS)?;
        if buckets.is_empty() && !first {
            return Ok(Step::Pending);
        }
        self.started = true;
        let mut shaped = Vec::with_capacity(buckets.len());
        for bucket in buckets {
            let bucket = match &self.shape {
                Some(disclosure) => disclosure.bucket(bucket)?,
                None => bucket,
            };
            shaped.push(wire::bucket_to_proto(bucket));
        }
        Ok(Step::Chunk(pb::ReadingChunk {
            buckets: shaped,
            terms: if first { self.terms.take() } else { None },
            ..Default::default()
        }))
    }
}

/// The stream a server-streaming RPC returns.
#[derive(Debug)]
pub struct AnswerStream {
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    /// `None` once the answer was cut off (the chunks waiting are dropped).
    receiver: Option<mpsc::Receiver<Result<pb::ReadingChunk, Status>>>,
    /// Why it was cut off, told to the caller as the stream's last item.
    cut: Option<Status>,
    /// The call's place under the limits: held by the answer as the caller
    /// sees it, so it ends when the caller has taken (or dropped) the last
    /// of it, never earlier.
    permit: Option<Box<dyn Send>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("cut", &self.cut)
            .finish_non_exhaustive()
    }
}

impl Stream for AnswerStream {
    type Item = Result<pb::ReadingChunk, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(status) = shared.cut.take() {
            shared.receiver = None;
            shared.permit = None;
            return Poll::Ready(Some(Err(status)));
        }
        let polled = match shared.receiver.as_mut() {
            Some(receiver) => receiver.poll_recv(cx),
            None => Poll::Ready(None),
        };
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            shared.permit = None;
        }
        polled
    }
}

/// Streams what `source` yields to the caller, within `limits`. `permit`
/// (a concurrency slot) is held until the caller has taken the end of the
/// answer or dropped it.
pub fn stream<S: ChunkSource>(
    source: S,
    limits: AnswerLimits,
    permit: impl Send + 'static,
) -> AnswerStream {
    let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let shared = Arc::new(Mutex::new(Shared {
        receiver: Some(receiver),
        cut: None,
        permit: Some(Box::new(permit)),
    }));
    let cut = {
        let shared = Arc::clone(&shared);
        move |status: Status| {
            let mut shared = shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Drop the waiting chunks now; the caller sees the status.
            shared.receiver = None;
            shared.cut = Some(status);
        }
    };
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + limits.answer_timeout;
        let mut source = Some(source);
        loop {
            let Some(mut taken) = source.take() else {
                return;
            };
            let produced = tokio::time::timeout_at(
                deadline,
                tokio::task::spawn_blocking(move || {
                    let chunk = taken.next_chunk();
                    (taken, chunk)
                }),
            )
            .await;
            let (back, chunk) = match produced {
                Ok(Ok(done)) => done,
                Ok(Err(join)) => {
                    cut(Status::internal(format!("answer task failed: {join}")));
                    return;
                }
                Err(_) => {
                    cut(answer_timed_out(limits));
                    return;
                }
            };
            source = Some(back);
            let item = match chunk {
                Ok(Step::Chunk(chunk)) => Ok(chunk),
                Ok(Step::Pending) => {
                    // Nothing to send yet: stop if the caller went away.
                    if sender.is_closed() {
                        return;
                    }
                    continue;
                }
                Ok(Step::Done) => {
                    // Everything is produced; the answer (and the permit)
                    // lasts until the caller has taken the last chunk,
                    // within the same limits.
                    let wait = limits
                        .send_timeout
                        .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                    if let Err(_elapsed) =
                        tokio::time::timeout(wait, sender.reserve_many(CHUNKS_IN_FLIGHT)).await
                    {
                        cut(Status::deadline_exceeded(format!(
                            "the answer was cut off: the caller took no data for {} s",
                            limits.send_timeout.as_secs()
                        )));
                    }
                    return;
                }
                Err(status) => Err(status),
            };
            let failed = item.is_err();
            let wait = limits
                .send_timeout
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, sender.send(item)).await {
                Ok(Ok(())) if !failed => {}
                // Sent the error, or the caller went away.
                Ok(_) => return,
                Err(_) => {
                    cut(if tokio::time::Instant::now() >= deadline {
                        answer_timed_out(limits)
                    } else {
                        Status::deadline_exceeded(format!(
                            "the answer was cut off: the caller took no data for {} s",
                            limits.send_timeout.as_secs()
                        ))
                    });
                    return;
                }
            }
        }
    });
    AnswerStream { shared }
}

fn answer_timed_out(limits: AnswerLimits) -> Status {
    Status::deadline_exceeded(format!(
        "the answer was cut off after {} s, the longest an answer may stream; ask for a \
         shorter range or larger buckets",
        limits.answer_timeout.as_secs()
    ))
}

/// Starts the answer to `plan`: raw readings or buckets, shaped by `shape`
/// (peers) or not (local users), streamed within `limits`, holding
/// `permit` until done. Refuses aggregates over too many buckets first.
pub async fn readings(
    plane: &Arc<DataPlane>,
    plan: crate::plane::disclosure::AnswerPlan,
    shape: Option<Disclosure>,
    limits: AnswerLimits,
    permit: impl Send + 'static,
) -> Result<AnswerStream, Status> {
    enum Source {
        Readings(Box<ReadingSource>),
        Buckets(Box<BucketSource>),
    }
    let source = blocking(plane, move |plane| -> Result<Source, Status> {
        match plan.aggregate {
            Some(spec) => {
                plane
                    .check_aggregate_size(&wire::ReadingQuestion {
                        query: plan.query.clone(),
                        aggregate: Some((spec.bucket, spec.group)),
                    })
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                Ok(Source::Buckets(Box::new(BucketSource {
                    buckets: plane.readings.aggregate_stream(&plan.query, &spec)?,
                    shape,
                    terms: plan.terms,
                    started: false,
                })))
            }
            None => Ok(Source::Readings(Box::new(ReadingSource {
                readings: plane.readings.query_iter(&plan.query)?,
                shape,
            }))),
        }
    })
    .await?;
    Ok(match source {
        Source::Readings(source) => stream(*source, limits, permit),
        Source::Buckets(source) => stream(*source, limits, permit),
    })
}
