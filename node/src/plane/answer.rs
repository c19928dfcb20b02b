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
//!
//! A peer answer also has an [`AnswerEnd`]: the stream keeps the digest of
//! every chunk it hands over ([`StreamDigest`]) and, when the answer is
//! complete, asks the end for a last chunk (the peer service records the
//! answer in the audit log and returns the signed receipt); an answer cut
//! off is reported to the end too, with what was sent until then.

use std::future::Future;
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
use crate::proof::StreamDigest;
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
    /// A chunk for the caller (boxed: it is large and moves between
    /// threads, the other steps are empty).
    Chunk(Box<pb::ReadingChunk>),
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
        Ok(Step::Chunk(Box::new(pb::ReadingChunk {
            readings: readings
                .into_iter()
                .map(|r| match &self.shape {
                    Some(disclosure) => disclosure.reading(r),
                    None => r,
                })
                .map(wire::reading_to_proto)
                .collect(),
            ..Default::default()
        })))
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
        Ok(Step::Chunk(Box::new(pb::ReadingChunk {
            buckets: shaped,
            terms: if first { self.terms.take() } else { None },
            ..Default::default()
        })))
    }
}

/// How an answer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Everything was produced and handed over.
    Complete,
    /// Cut off, for the reason given (the caller was told).
    Cut(String),
}

/// Told once when an answer ends, with what was handed to the caller; for
/// a complete answer it returns the chunk to send last (or an error to end
/// the stream with instead).
pub type AnswerEnd = Box<
    dyn FnOnce(
            Ending,
            StreamDigest,
        )
            -> Pin<Box<dyn Future<Output = Result<Option<pb::ReadingChunk>, Status>> + Send>>
        + Send,
>;

/// Rows in a chunk (readings and buckets).
pub fn rows_of(chunk: &pb::ReadingChunk) -> u64 {
    (chunk.readings.len() + chunk.buckets.len()) as u64
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

impl Drop for AnswerStream {
    /// The caller went away (or the answer ended): free what the answer
    /// holds at once, and let the producing task see the closed channel.
    fn drop(&mut self) {
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shared.receiver = None;
        shared.permit = None;
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
    end: Option<AnswerEnd>,
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
        let mut end = end;
        let mut sent = StreamDigest::default();
        // Tells the end an answer was cut off (at most once).
        let report_cut = |end: &mut Option<AnswerEnd>, sent: &StreamDigest, why: &Status| {
            if let Some(end) = end.take() {
                tokio::spawn(end(Ending::Cut(why.message().to_string()), sent.clone()));
            }
        };
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
                    let status = Status::internal(format!("answer task failed: {join}"));
                    report_cut(&mut end, &sent, &status);
                    cut(status);
                    return;
                }
                Err(_) => {
                    let status = answer_timed_out(limits);
                    report_cut(&mut end, &sent, &status);
                    cut(status);
                    return;
                }
            };
            source = Some(back);
            let item = match chunk {
                Ok(Step::Chunk(chunk)) => Ok(*chunk),
                Ok(Step::Pending) => {
                    // Nothing to send yet: stop if the caller went away.
                    if sender.is_closed() {
                        report_cut(&mut end, &sent, &Status::cancelled("the caller went away"));
                        return;
                    }
                    continue;
                }
                Ok(Step::Done) => {
                    // Everything is produced: the end may add a last chunk
                    // (a receipt) or an error.
                    if let Some(end) = end.take() {
                        let last = match end(Ending::Complete, sent.clone()).await {
                            Ok(Some(chunk)) => Some(Ok(chunk)),
                            Ok(None) => None,
                            Err(status) => Some(Err(status)),
                        };
                        if let Some(last) = last {
                            let wait = limits.send_timeout.min(
                                deadline.saturating_duration_since(tokio::time::Instant::now()),
                            );
                            if !matches!(
                                tokio::time::timeout(wait, sender.send(last)).await,
                                Ok(Ok(()))
                            ) {
                                return;
                            }
                        }
                    }
                    // The answer (and the permit) lasts until the caller
                    // has taken the last chunk, within the same limits.
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
            let failed = match &item {
                Ok(chunk) => {
                    sent.add(chunk);
                    sent.rows += rows_of(chunk);
                    None
                }
                Err(status) => Some(status.clone()),
            };
            let wait = limits
                .send_timeout
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, sender.send(item)).await {
                Ok(Ok(())) if failed.is_none() => {}
                Ok(Ok(())) => {
                    if let Some(status) = failed {
                        report_cut(&mut end, &sent, &status);
                    }
                    return;
                }
                // The caller went away.
                Ok(Err(_)) => {
                    report_cut(&mut end, &sent, &Status::cancelled("the caller went away"));
                    return;
                }
                Err(_) => {
                    let status = if tokio::time::Instant::now() >= deadline {
                        answer_timed_out(limits)
                    } else {
                        Status::deadline_exceeded(format!(
                            "the answer was cut off: the caller took no data for {} s",
                            limits.send_timeout.as_secs()
                        ))
                    };
                    report_cut(&mut end, &sent, &status);
                    cut(status);
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
    end: Option<AnswerEnd>,
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
        Source::Readings(source) => stream(*source, limits, permit, end),
        Source::Buckets(source) => stream(*source, limits, permit, end),
    })
}
