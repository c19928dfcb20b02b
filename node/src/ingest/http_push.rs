//! The OS2iot HTTP-push door: `POST /ingest/os2iot/{endpoint}` on the
//! `[http]` listener, one endpoint per `[[ingest.http]]`.
//!
//! OS2iot posts each decoded device message once (no retry, no batching),
//! with the payload decoder's output as the body, unwrapped (an object or
//! an array of objects), `Content-Type: application/json`, and the
//! `Authorization` header verbatim as the operator typed it in the data
//! target (`Bearer <token>`). So this door:
//!
//! 1. finds the endpoint (404 if none has that name);
//! 2. checks `Authorization: Bearer <token>` against the endpoint's token
//!    hash in constant time (401 without or with a wrong token), before
//!    reading the body, so an outsider cannot make the node buffer it;
//! 3. takes only JSON (415) of at most `max_body_kib` (413);
//! 4. maps the body with the endpoint's [`Mapping`] (400 naming the element,
//!    field and reason if any element does not map: nothing of the body is
//!    stored);
//! 5. stores the readings through the [`Pipeline`] as one atomic durable
//!    write and answers 200 only after that returned (400 for readings the
//!    dataset refuses, 404 if the endpoint's dataset is not published).
//!
//! Refusals are logged at WARN, at most a few lines per endpoint per
//! minute ([`crate::telemetry::RateLimitedLog`]); tokens are never logged.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::HttpPushConfig;
use super::{Pipeline, Source};
use crate::clock::SharedClock;
use crate::http::error::ApiError;
use crate::telemetry::{RateLimitedLog, untrusted};

/// Most bytes of a refused body read and dropped before answering.
const DRAIN_BYTES: usize = 1 << 20;
/// Longest a refused body is read before answering.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// The body, if it is at most `limit` bytes; 413 otherwise.
async fn read_within(mut body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::bad_body(format!("the body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                drain(body).await;
                return Err(ApiError::TooLarge(limit));
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

/// Reads and drops what is left of a refused body, up to [`DRAIN_BYTES`]
/// within [`DRAIN_TIME`]. Closing a connection with unread bytes makes the
/// kernel reset it, and a client still sending then loses the 413 it was
/// about to read; a little reading lets an ordinary client see why it was
/// refused. The bounds keep it from being a way to make the node read.
async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut left = DRAIN_BYTES;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                match left.checked_sub(data.len()) {
                    Some(rest) => left = rest,
                    None => return,
                }
            }
        }
    })
    .await;
}

/// The route of every endpoint.
pub const ROUTE: &str = "/ingest/os2iot/{endpoint}";

/// Refusal lines per endpoint per minute.
const REFUSALS_PER_MINUTE: u32 = 5;

/// The configured endpoints and what they store through.
#[derive(Debug)]
pub struct PushEndpoints {
    endpoints: HashMap<String, Arc<HttpPushConfig>>,
    pipeline: Arc<Pipeline>,
    clock: SharedClock,
    refusals: RateLimitedLog,
}

impl PushEndpoints {
    /// Endpoints for `configs`, storing through `pipeline`; `clock` gives
    /// the time of receipt for bodies without a time.
    pub fn new(configs: &[HttpPushConfig], pipeline: Arc<Pipeline>, clock: SharedClock) -> Self {
        PushEndpoints {
            endpoints: configs
                .iter()
                .map(|c| (c.name.clone(), Arc::new(c.clone())))
                .collect(),
            pipeline,
            clock,
            refusals: RateLimitedLog::with_limit(REFUSALS_PER_MINUTE),
        }
    }

    /// Whether any endpoint is configured.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    fn refused(&self, endpoint: &str, error: &ApiError) {
        if let Some(suppressed) = self.refusals.admit(endpoint) {
            tracing::warn!(
                endpoint = %untrusted(endpoint),
                status = error.status().as_u16(),
                reason = %untrusted(&error.to_string()),
                suppressed,
                "OS2iot push refused"
            );
        }
    }
}

/// The push routes over `endpoints`, to merge into the HTTP API's router.
pub fn router(endpoints: Arc<PushEndpoints>) -> Router {
    Router::new()
        .route(ROUTE, post(push).fallback(post_only))
        .with_state(endpoints)
}

async fn post_only() -> ApiError {
    ApiError::PostOnly
}

async fn push(
    State(doors): State<Arc<PushEndpoints>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match receive(&doors, &endpoint, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            doors.refused(&endpoint, &error);
            error.into_response()
        }
    }
}

async fn receive(
    doors: &PushEndpoints,
    endpoint: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let door = doors
        .endpoints
        .get(endpoint)
        .ok_or_else(|| ApiError::NoEndpoint(untrusted(endpoint)))?;
    authorize(door, headers)?;
    json_only(headers)?;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > door.max_body_bytes as u64
    {
        drain(body).await;
        return Err(ApiError::TooLarge(door.max_body_bytes));
    }
    let bytes = read_within(body, door.max_body_bytes).await?;
    let received = doors.clock.now();
    let readings = door
        .mapping
        .map(&bytes, None, received)
        .map_err(|e| ApiError::bad_body(e.to_string()))?;
    let summary = doors
        .pipeline
        .store(&Source::Http(door.name.clone()), &door.dataset, readings)
        .await
        .map_err(|e| ApiError::from(tonic::Status::from(e)))?;
    tracing::debug!(
        endpoint = %door.name,
        dataset = %door.dataset,
        stored = summary.received,
        "OS2iot push stored"
    );
    let body = serde_json::json!({
        "stored": summary.received,
        "new": summary.new,
        "replaced": summary.replaced,
        "dataset": door.dataset,
    })
    .to_string();
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// `Authorization: Bearer <token>` (scheme case-insensitive) whose SHA-256
/// is the endpoint's, compared in constant time.
fn authorize(door: &HttpPushConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::Unauthorized(
            "missing Authorization header: set it in the OS2iot data target to `Bearer <token>`",
        ))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::Unauthorized(
            "malformed Authorization header: expected `Bearer <token>`",
        ))?;
    let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if bool::from(presented.ct_eq(&door.token_sha256)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("wrong token for this endpoint"))
    }
}

/// A body declared as something other than JSON is refused; OS2iot
/// always sends `application/json`. No Content-Type is taken as JSON.
fn json_only(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::MediaType(untrusted(&media)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn door() -> HttpPushConfig {
        let raw: super::super::mapping::RawMapping =
            toml::from_str("sensor_id = \"id\"\nmeasures = { t = \"t\" }").expect("mapping");
        HttpPushConfig {
            name: "e".into(),
            dataset: "d".into(),
            token_sha256: Sha256::digest(b"svk_right").into(),
            max_body_bytes: 1024,
            mapping: super::super::mapping::Mapping::from_raw(raw, false).expect("mapping"),
        }
    }

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn only_the_endpoint_token_as_bearer_is_let_in() {
        let door = door();
        assert!(authorize(&door, &with(header::AUTHORIZATION, "Bearer svk_right")).is_ok());
        assert!(authorize(&door, &with(header::AUTHORIZATION, "bearer svk_right")).is_ok());
        for wrong in [
            "Bearer svk_wrong",
            "svk_right",
            "Basic svk_right",
            "Bearer ",
            "Bearer svk_right2",
        ] {
            let err = authorize(&door, &with(header::AUTHORIZATION, wrong)).expect_err(wrong);
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{wrong}");
        }
        let err = authorize(&door, &HeaderMap::new()).expect_err("no header");
        assert_eq!(err.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn only_json_is_taken() {
        assert!(json_only(&HeaderMap::new()).is_ok());
        assert!(
            json_only(&with(
                header::CONTENT_TYPE,
                "application/json; charset=utf-8"
            ))
            .is_ok()
        );
        assert!(json_only(&with(header::CONTENT_TYPE, "application/ld+json")).is_ok());
        let err = json_only(&with(header::CONTENT_TYPE, "text/plain")).expect_err("text");
        assert_eq!(err.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
