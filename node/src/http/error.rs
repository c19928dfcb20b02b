//! The one place where errors become HTTP statuses, so every endpoint
//! answers the same problem with the same code, and always with a JSON
//! body `{"error": "..."}` naming what is wrong.
//!
//! Errors of the local service come as gRPC statuses (the mapping from
//! module errors to those is [`crate::error`]); their codes map here once:
//!
//! | problem | gRPC code | HTTP |
//! |---|---|---|
//! | bad query parameter | (`INVALID_ARGUMENT`) | 400, naming the parameter |
//! | no or unknown bearer token | `UNAUTHENTICATED` | 401 with `WWW-Authenticate: Bearer` |
//! | token without the role, or refused by an agreement | `PERMISSION_DENIED` | 403 |
//! | unknown dataset or path | `NOT_FOUND` | 404 |
//! | over the per-token or node call limits | `RESOURCE_EXHAUSTED` | 429 |
//! | store or audit log unavailable | `UNAVAILABLE` | 503 |
//! | answer did not start within the call timeout | `DEADLINE_EXCEEDED` | 503 |
//! | storage failure | `INTERNAL` | 500 (details logged, not sent) |
//!
//! The OS2iot HTTP-push door ([`crate::ingest::http_push`]) adds: a wrong
//! or missing push token 401, an unknown push endpoint 404, a body that
//! is not JSON 415 or too large 413, a body that does not map 400 naming
//! the element, field and reason.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tonic::{Code, Status};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A query parameter is missing, malformed or not allowed here.
    #[error("parameter `{name}`: {reason}")]
    BadParameter { name: String, reason: String },
    /// No dataset of that id in this node's catalog.
    #[error("no dataset `{0}` in this node's catalog")]
    UnknownDataset(String),
    /// No endpoint at that path.
    #[error("no endpoint {0}; see /api/v1/openapi.json")]
    NoRoute(String),
    /// The endpoint exists, but not for that method.
    #[error("method {0} is not allowed here; the API answers GET")]
    Method(String),
    /// The answer did not start in time.
    #[error("the request took longer than {0} s to start its answer; retry, or ask for less")]
    Timeout(u64),
    /// The local service refused or failed the call.
    #[error("{}", .0.message())]
    Call(Status),
    /// A push without the endpoint's token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// No push endpoint of that name.
    #[error("no ingest endpoint `{0}` on this node; check the URL's last part")]
    NoEndpoint(String),
    /// A push body declared as something other than JSON.
    #[error("content type `{0}` is not accepted; send application/json")]
    MediaType(String),
    /// A push body over the endpoint's limit, in bytes.
    #[error("the body is larger than this endpoint's limit of {0} bytes")]
    TooLarge(usize),
    /// A push body that does not map to readings.
    #[error("{0}; nothing of the body was stored")]
    BadBody(String),
    /// A push endpoint called with another method than POST.
    #[error("ingest endpoints take POST")]
    PostOnly,
}

impl ApiError {
    /// A bad parameter `name`, for `reason`.
    pub fn bad(name: &str, reason: impl Into<String>) -> ApiError {
        ApiError::BadParameter {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    /// A push body that does not map, for `reason`.
    pub fn bad_body(reason: impl Into<String>) -> ApiError {
        ApiError::BadBody(reason.into())
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParameter { .. } | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NoEndpoint(_) => StatusCode::NOT_FOUND,
            ApiError::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::PostOnly => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnknownDataset(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Call(status) => match status.code() {
                Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                    StatusCode::BAD_REQUEST
                }
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                Code::PermissionDenied => StatusCode::FORBIDDEN,
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
                Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
                Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
        }
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        ApiError::Call(status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"samvirke\""),
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_once() {
        let cases = [
            (Status::unauthenticated("x"), 401),
            (Status::permission_denied("x"), 403),
            (Status::not_found("x"), 404),
            (Status::invalid_argument("x"), 400),
            (Status::resource_exhausted("x"), 429),
            (Status::unavailable("x"), 503),
            (Status::internal("x"), 500),
        ];
        for (status, code) in cases {
            assert_eq!(ApiError::from(status).status().as_u16(), code);
        }
        let response = ApiError::Call(Status::unauthenticated("no token")).into_response();
        assert!(
            response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .is_some_and(|v| v.as_bytes().starts_with(b"Bearer"))
        );
        assert_eq!(
            ApiError::bad("from", "`yesterday` is not a time").to_string(),
            "parameter `from`: `yesterday` is not a time"
        );
    }
}
