//! The HTTP API for analysts' tools: the local API's read side as JSON,
//! CSV, NDJSON and GeoJSON over plain HTTP GET, for Power BI, Excel and
//! Grafana (Infinity), which pull documents and cannot speak gRPC.
//!
//! This module owns the optional `[http]` listener: routing, query
//! parameters, content negotiation, rendering and the HTTP error mapping.
//! It owns no data logic: every endpoint calls the node's own
//! [`LocalService`] in-process, so bearer tokens, roles, the per-token
//! call limits, the audit entries and the answers (catalog, streamed
//! readings and aggregates, records, federated questions) are exactly the
//! gRPC local API's. Streamed answers stay streamed: each chunk is
//! rendered and handed to the connection as it comes, so memory is
//! bounded by the answer machinery ([`crate::plane::answer`],
//! [`crate::federate::ask`]), not by the size of the answer.
//!
//! Connections come through [`crate::transport::serve_incoming`] with the
//! `[local.limits]` values (connections per address, handshake and idle
//! timeouts); request heads are bounded in size and time, a request whose
//! answer does not start within `call_timeout` gets 503, and streamed
//! answers run under the local send and answer timeouts.
//!
//! - [`routes`]: the endpoints;
//! - [`params`]: query parameters, one table per endpoint (also the
//!   source of the OpenAPI parameters);
//! - [`formats`]: JSON, CSV, NDJSON and GeoJSON renderings, in the shapes
//!   `samvirke query` and `samvirke ask` print;
//! - [`error`]: the one mapping from errors to HTTP statuses;
//! - [`openapi`]: the `/api/v1/openapi.json` document.
//!
//! `/api/v1/catalog.jsonld` serves the catalog as DCAT-AP-DK
//! ([`crate::data::dcat`]) through the local `ExportCatalog` RPC.

pub mod error;
pub mod formats;
pub mod openapi;
pub mod params;
pub mod routes;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::config::Limits;
use crate::local::LocalService;
use crate::transport::{CallGuard, Connection};

/// Largest request head (request line and headers) over HTTP/1.1, in
/// bytes; longer ones are refused by hyper with 431.
const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Largest request header block over HTTP/2, in bytes.
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// What the endpoints share: the local service they call, and the limits.
#[derive(Debug, Clone)]
pub struct HttpApi {
    local: Arc<LocalService>,
    limits: Limits,
    /// The OS2iot HTTP-push endpoints served beside the API, if any.
    push: Option<Arc<crate::ingest::http_push::PushEndpoints>>,
}

impl HttpApi {
    /// The HTTP API over `local`, within the local listener's `limits`.
    pub fn new(local: Arc<LocalService>, limits: Limits) -> HttpApi {
        HttpApi {
            local,
            limits,
            push: None,
        }
    }

    /// Also serves the OS2iot HTTP-push endpoints `push` (under `/ingest/`).
    pub fn with_push(mut self, push: Arc<crate::ingest::http_push::PushEndpoints>) -> HttpApi {
        if !push.is_empty() {
            self.push = Some(push);
        }
        self
    }
}

/// Serves the HTTP API on the connections `incoming` yields until `stop`,
/// then lets requests in progress finish. `head_timeout` bounds how long
/// a client may take to send a request head over HTTP/1.1.
pub async fn serve(
    mut incoming: tokio_stream::wrappers::ReceiverStream<io::Result<Connection>>,
    api: HttpApi,
    head_timeout: Duration,
    stop: CancellationToken,
) -> Result<(), String> {
    let call_timeout = api.limits.call_timeout;
    let router = routes::router(api);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_REQUEST_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(Some(20))
        .max_concurrent_streams(64);
    let graceful = GracefulShutdown::new();
    loop {
        let connection = tokio::select! {
            () = stop.cancelled() => break,
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(error)) => {
                    tracing::debug!(%error, "HTTP connection failed before serving");
                    continue;
                }
                None => break,
            },
        };
        let activity = connection.connect_info().activity;
        let router = router.clone();
        // Each request counts as a call on its connection until its
        // response body is done, so busy connections are never closed as
        // idle and idle ones are.
        let service = hyper::service::service_fn(move |request: http::Request<_>| {
            let guard = activity.begin();
            let router = router.clone();
            async move {
                // The answer must start within the call timeout; a
                // streamed body then runs under the answer limits.
                let answer = tokio::time::timeout(
                    call_timeout,
                    tower::ServiceExt::oneshot(router, request.map(Body::new)),
                )
                .await;
                let response = match answer {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => axum::response::IntoResponse::into_response(
                        error::ApiError::Timeout(call_timeout.as_secs()),
                    ),
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
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        });
    }
    // Requests in progress finish (streamed answers within their own
    // limits); idle keep-alive connections close at once.
    graceful.shutdown().await;
    Ok(())
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
