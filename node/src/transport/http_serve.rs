//! Serving an axum router on the connections [`super::serve_incoming`]
//! hands over: the hyper connection loop shared by the HTTP API and the
//! admin listener, so both bound request heads and answer times the same
//! way and stop the same way.
//!
//! Each request counts as a call on its connection ([`super::Activity`])
//! until its response body is done, so a connection streaming an answer is
//! never closed as idle and an idle one is. An answer that does not start
//! within the configured time gets the caller's timeout response. On
//! `stop`, accepting ends and answers in progress finish (streamed ones
//! under their own limits); idle keep-alive connections close at once.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use super::{CallGuard, Connection};

/// How one listener serves HTTP.
#[derive(Debug, Clone, Copy)]
pub struct HttpServing {
    /// The listener's name in logs (`http`, `admin`).
    pub listener: &'static str,
    /// How long a client may take to send a request head over HTTP/1.1.
    pub head_timeout: Duration,
    /// Largest request head (HTTP/1.1) or header block (HTTP/2), in bytes;
    /// longer ones are refused by hyper (431 or a stream reset).
    pub max_request_head: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: u32,
    /// How long an answer may take to start.
    pub answer_timeout: Duration,
    /// The response sent when an answer does not start in time.
    pub timed_out: fn(Duration) -> Response,
}

/// Serves `router` on the connections `incoming` yields until `stop`, then
/// lets answers in progress finish.
pub async fn serve_router(
    mut incoming: ReceiverStream<io::Result<Connection>>,
    router: Router,
    serving: HttpServing,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(serving.head_timeout)
        .max_buf_size(serving.max_request_head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(serving.max_request_head).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_concurrent_streams(serving.max_streams);
    let graceful = GracefulShutdown::new();
    let listener = serving.listener;
    loop {
        let connection = tokio::select! {
            () = stop.cancelled() => break,
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(error)) => {
                    tracing::debug!(listener, %error, "connection failed before serving");
                    continue;
                }
                None => break,
            },
        };
        let activity = connection.connect_info().activity;
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: http::Request<_>| {
            let guard = activity.begin();
            let router = router.clone();
            async move {
                // The answer must start in time; a streamed body then runs
                // under the caller's own answer limits.
                let answer = tokio::time::timeout(
                    serving.answer_timeout,
                    tower::ServiceExt::oneshot(router, request.map(Body::new)),
                )
                .await;
                let response = match answer {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => (serving.timed_out)(serving.answer_timeout),
                };
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Guarded {
                        body,
                        _guard: guard,
                    })
                }))
            }
        });
        let served = builder
            .serve_connection(TokioIo::new(connection), service)
            .into_owned();
        let served = graceful.watch(served);
        tokio::spawn(async move {
            if let Err(error) = served.await {
                tracing::debug!(listener, %error, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}

/// A response body that holds its request's [`CallGuard`] until it is
/// done or dropped.
struct Guarded {
    body: Body,
    _guard: CallGuard,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
