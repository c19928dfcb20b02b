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

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::local::LocalService;
use crate::transport::Connection;
use crate::transport::http_serve::{HttpServing, serve_router};

/// Largest request head (request line and headers over HTTP/1.1, the
/// header block over HTTP/2), in bytes; longer ones are refused by hyper.
const MAX_REQUEST_HEAD: usize = 64 * 1024;

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
    incoming: tokio_stream::wrappers::ReceiverStream<io::Result<Connection>>,
    api: HttpApi,
    head_timeout: Duration,
    stop: CancellationToken,
) -> Result<(), String> {
    let serving = HttpServing {
        listener: "http",
        head_timeout,
        max_request_head: MAX_REQUEST_HEAD,
        max_streams: 64,
        // The answer must start within the call timeout; a streamed body
        // then runs under the answer limits.
        answer_timeout: api.limits.call_timeout,
        timed_out: |after| {
            axum::response::IntoResponse::into_response(error::ApiError::Timeout(after.as_secs()))
        },
    };
    serve_router(incoming, routes::router(api), serving, stop).await;
    Ok(())
}
