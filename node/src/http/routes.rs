//! The endpoints. Each checks the caller's token first (so a request
//! without a valid token learns nothing, not even that a parameter is
//! wrong), then its parameters, then calls the local service in-process
//! and renders what it answers.

use std::io;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Uri, header};
use samvirke_proto::v1::{self as pb, local_server::Local};
use tonic::metadata::MetadataValue;

use super::HttpApi;
use super::error::ApiError;
use super::formats::{self, Format};
use super::params::{self, Params};
use crate::local::auth::Role;
use crate::telemetry::untrusted;

/// Every route, for the router and the OpenAPI document.
pub const DATASETS: &str = "/api/v1/datasets";
pub const READINGS: &str = "/api/v1/datasets/{id}/readings";
pub const PILOTS: &str = "/api/v1/pilots";
pub const PROCUREMENTS: &str = "/api/v1/procurements";
pub const ASK_READINGS: &str = "/api/v1/ask/readings";
pub const OPENAPI: &str = "/api/v1/openapi.json";
pub const CATALOG_DCAT: &str = "/api/v1/catalog.jsonld";

/// The API's routes over `api`.
pub fn router(api: HttpApi) -> Router {
    let push = api.push.clone();
    let router = Router::new()
        .route(DATASETS, get(datasets))
        .route(READINGS, get(readings))
        .route(PILOTS, get(pilots))
        .route(PROCUREMENTS, get(procurements))
        .route(ASK_READINGS, get(ask_readings))
        .route(OPENAPI, get(openapi))
        .route(CATALOG_DCAT, get(catalog_dcat))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(api);
    // The OS2iot HTTP-push door shares the listener; it has its own
    // token per endpoint.
    match push {
        Some(push) => router.merge(crate::ingest::http_push::router(push)),
        None => router,
    }
}

async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(untrusted(uri.path()))
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::Method(untrusted(method.as_str()))
}

/// A local-service request carrying the HTTP request's bearer token.
fn call<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        // A header gRPC metadata cannot carry is malformed as a token too.
        let value = MetadataValue::try_from(value.as_bytes())
            .unwrap_or_else(|_| MetadataValue::from_static("malformed"));
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Refuses a caller without a token holding the read role, before
/// anything else.
fn admit(api: &HttpApi, headers: &HeaderMap, method: &'static str) -> Result<(), ApiError> {
    api.local
        .authenticate(&call(headers, ()), Role::Read, method)
        .map(|_| ())
        .map_err(ApiError::from)
}

/// A response of `format` with `body`.
fn respond(format: Format, body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    // Answers change as data arrives; a proxy or a tool must not replay
    // an old one (or one made for another token).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A whole body in `format`.
fn whole(format: Format, body: Bytes) -> Response {
    respond(format, Body::from(body))
}

/// A streamed body in `format`: the pieces as they come. An answer cut
/// off (a send or answer timeout, a storage failure, a federated answer
/// without its summary) ends the body with an error, so the client sees
/// a broken transfer rather than a complete-looking, truncated document.
fn streamed(
    format: Format,
    pieces: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
) -> Response {
    let pieces = pieces.filter(|piece| std::future::ready(!matches!(piece, Ok(b) if b.is_empty())));
    respond(format, Body::from_stream(pieces))
}

fn cut(status: &tonic::Status) -> io::Error {
    tracing::warn!(
        code = ?status.code(),
        reason = %untrusted(status.message()),
        "HTTP answer cut off"
    );
    io::Error::other(status.message().to_string())
}

fn no_geojson(format: Format, what: &str) -> Result<(), ApiError> {
    if format == Format::Geojson {
        return Err(ApiError::bad(
            "format",
            format!("geojson draws raw readings as points; use json, ndjson or csv for {what}"),
        ));
    }
    Ok(())
}

async fn datasets(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&api, &headers, "GET /api/v1/datasets")?;
    let params = Params::parse(query.as_deref(), &[params::DATASETS])?;
    let format = Format::negotiate(&params, &headers)?;
    no_geojson(format, "datasets")?;
    let list = api
        .local
        .list_datasets(call(&headers, pb::ListDatasetsRequest::default()))
        .await?
        .into_inner();
    Ok(whole(format, formats::datasets(format, &list.datasets)))
}

async fn readings(
    State(api): State<HttpApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&api, &headers, "GET /api/v1/datasets/{id}/readings")?;
    let params = Params::parse(query.as_deref(), &[params::READINGS])?;
    let format = Format::negotiate(&params, &headers)?;
    let question = params::reading_query(&params, id.clone())?;
    let buckets = !question.bucket.is_empty();
    if buckets {
        no_geojson(format, "buckets")?;
    }
    // The catalog says whether the dataset exists and which measures it
    // has (the CSV columns).
    let dataset = api
        .local
        .list_datasets(call(&headers, pb::ListDatasetsRequest::default()))
        .await?
        .into_inner()
        .datasets
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ApiError::UnknownDataset(untrusted(&id)))?;
    if dataset.kind != "sensor" {
        return Err(ApiError::bad(
            "id",
            format!(
                "dataset `{}` is a {} dataset; only sensor datasets have readings",
                dataset.id, dataset.kind
            ),
        ));
    }
    let known = formats::measures(&dataset);
    if let Some(unknown) = question.measures.iter().find(|m| !known.contains(m)) {
        return Err(ApiError::bad(
            "measure",
            format!(
                "`{}` is not a measure of `{}` (it has: {})",
                untrusted(unknown),
                dataset.id,
                known.join(", ")
            ),
        ));
    }
    let columns = if question.measures.is_empty() {
        known
    } else {
        question.measures.clone()
    };
    let answer = api
        .local
        .query_readings(call(&headers, question))
        .await?
        .into_inner();
    let renderer = formats::Readings::new(format, buckets, columns);
    let head = renderer.head();
    let pieces = futures::stream::unfold(Some((answer, renderer)), |state| async move {
        let (mut answer, mut renderer) = state?;
        match answer.next().await {
            Some(Ok(chunk)) => {
                let piece = renderer.chunk(&chunk);
                Some((Ok(piece), Some((answer, renderer))))
            }
            Some(Err(status)) => Some((Err(cut(&status)), None)),
            None => Some((Ok(renderer.tail()), None)),
        }
    });
    Ok(streamed(
        format,
        futures::stream::once(std::future::ready(Ok(head))).chain(pieces),
    ))
}

async fn pilots(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&api, &headers, "GET /api/v1/pilots")?;
    let params = Params::parse(query.as_deref(), &[params::PILOTS])?;
    let format = Format::negotiate(&params, &headers)?;
    no_geojson(format, "pilots")?;
    let filter = params::pilot_filter(&params)?;
    let list = api
        .local
        .list_pilots(call(&headers, filter))
        .await?
        .into_inner();
    Ok(whole(format, formats::pilots(format, &list.pilots)))
}

async fn procurements(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&api, &headers, "GET /api/v1/procurements")?;
    let params = Params::parse(query.as_deref(), &[params::PROCUREMENTS])?;
    let format = Format::negotiate(&params, &headers)?;
    no_geojson(format, "procurements")?;
    let filter = params::procurement_filter(&params)?;
    let list = api
        .local
        .list_procurements(call(&headers, filter))
        .await?
        .into_inner();
    Ok(whole(
        format,
        formats::procurements(format, &list.procurements),
    ))
}

async fn ask_readings(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&api, &headers, "GET /api/v1/ask/readings")?;
    let params = Params::parse(query.as_deref(), &[params::READINGS, params::ASK])?;
    let format = Format::negotiate(&params, &headers)?;
    let statuses_only = params.choice("part", &["rows", "status"])?.as_deref() == Some("status");
    let request = params::ask_request(&params)?;
    let buckets = matches!(
        &request.question,
        Some(pb::ask_request::Question::Readings(q)) if !q.bucket.is_empty()
    );
    if buckets || statuses_only {
        no_geojson(format, if buckets { "buckets" } else { "statuses" })?;
    }
    let answer = api.local.ask(call(&headers, request)).await?.into_inner();
    let renderer = formats::Asked::new(format, buckets, statuses_only);
    let head = renderer.head();
    let pieces = futures::stream::unfold(Some((answer, renderer, false)), |state| async move {
        let (mut answer, mut renderer, done) = state?;
        match answer.next().await {
            Some(Ok(event)) => {
                let Some(event) = event.event else {
                    return Some((Ok(Bytes::new()), Some((answer, renderer, done))));
                };
                let done = done || matches!(event, pb::ask_event::Event::Done(_));
                let piece = renderer.event(event);
                Some((Ok(piece), Some((answer, renderer, done))))
            }
            Some(Err(status)) => Some((Err(cut(&status)), None)),
            None if done => None,
            None => Some((
                Err(cut(&tonic::Status::internal(
                    "the answer ended without its summary",
                ))),
                None,
            )),
        }
    });
    Ok(streamed(
        format,
        futures::stream::once(std::future::ready(Ok(head))).chain(pieces),
    ))
}

/// The catalog as DCAT-AP-DK JSON-LD, for opendata.dk and other
/// harvesters: the local `ExportCatalog` answer as it is.
async fn catalog_dcat(
    State(api): State<HttpApi>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    admit(&api, &headers, "GET /api/v1/catalog.jsonld")?;
    let params = Params::parse(query.as_deref(), &[params::CATALOG])?;
    let fellowship =
        params.choice("scope", &["local", "fellowship"])?.as_deref() == Some("fellowship");
    let deadline_ms = match params.number::<u32>("deadline")? {
        None => 0,
        Some(s @ 1..=120) => s * 1000,
        Some(s) => {
            return Err(ApiError::bad(
                "deadline",
                format!("{s} is outside 1-120 (seconds)"),
            ));
        }
    };
    let answer = api
        .local
        .export_catalog(call(
            &headers,
            pb::ExportCatalogRequest {
                format: "dcat".to_string(),
                fellowship,
                deadline_ms,
            },
        ))
        .await?
        .into_inner();
    let mut response = Response::new(Body::from(answer.document));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::data::dcat::MEDIA_TYPE),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn openapi() -> Response {
    whole(
        Format::Json,
        Bytes::from(super::openapi::document().to_string()),
    )
}
