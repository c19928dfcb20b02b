//! The node's Prometheus metrics: what is counted where it happens
//! (calls, refusals, ingest, partner calls) and what is read at scrape
//! time (audit length, store size, governance documents, certificate
//! expiry, up and ready).
//!
//! Every label takes values from a closed set, so no caller can grow the
//! scrape or the node's memory by inventing names: RPC names are the
//! methods of the services the node serves (read from its own protobuf
//! descriptors; anything else counts as `other`), gRPC codes and refusal
//! reasons are fixed words, partners are municipality codes from the
//! roster, and ingest sources are the configured door names.
//!
//! The counting parts are owned by the component that counts (the ingest
//! pipeline owns [`IngestMetrics`], the peer accounts own
//! [`DenialMetrics`], the partner pool owns [`PartnerMetrics`]); the
//! admin listener registers them all in one [`Metrics`] registry.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ingest::Source;

/// Calls by listener, RPC and gRPC outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub listener: &'static str,
    pub rpc: String,
    pub code: &'static str,
}

/// Ingest by door.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `grpc`, `http` or `mqtt`.
    pub kind: &'static str,
    /// The configured endpoint or subscription name (empty for gRPC).
    pub name: String,
}

/// Refused peer calls by reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    /// A fixed word: see [`crate::peer::call::Refusal::reason`].
    pub reason: &'static str,
    /// The gRPC code the caller got.
    pub code: &'static str,
}

/// Calls to one partner.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartnerLabels {
    /// The partner's municipality code, as the roster lists it.
    pub partner: u32,
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// Governance documents by kind and status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DocumentLabels {
    /// `roster` or `agreement`.
    pub kind: &'static str,
    pub status: &'static str,
}

/// Ingest counters, owned by the ingest pipeline.
#[derive(Debug, Clone, Default)]
pub struct IngestMetrics {
    pub rows: Family<SourceLabels, Counter>,
    pub batches: Family<SourceLabels, Counter>,
    pub refused: Family<SourceLabels, Counter>,
}

impl IngestMetrics {
    /// Counts one batch from `source`: stored with `rows` rows, or refused.
    pub fn record(&self, source: &Source, stored: Option<u64>) {
        let labels = SourceLabels {
            kind: source.kind(),
            name: source.name().to_string(),
        };
        match stored {
            Some(rows) => {
                self.batches.get_or_create(&labels).inc();
                self.rows.get_or_create(&labels).inc_by(rows);
            }
            None => {
                self.refused.get_or_create(&labels).inc();
            }
        }
    }
}

/// Refused peer calls, owned by the peer service's accounts.
pub type DenialMetrics = Family<DenialLabels, Counter>;

/// Counts one refusal.
pub fn count_denial(denials: &DenialMetrics, reason: &'static str, code: tonic::Code) {
    denials
        .get_or_create(&DenialLabels {
            reason,
            code: code_name(code),
        })
        .inc();
}

/// Buckets of partner call latency, in seconds: 5 ms to about 40 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// What the status page shows of one partner: the last call's outcome.
#[derive(Debug, Clone)]
pub struct PartnerSeen {
    pub at: time::OffsetDateTime,
    pub latency: Duration,
    /// Why the last call failed; `None` when it was answered.
    pub failure: Option<String>,
}

/// Partner call latency and the last outcome per partner, owned by the
/// partner pool.
#[derive(Debug, Clone)]
pub struct PartnerMetrics {
    pub latency: Family<PartnerLabels, Histogram, fn() -> Histogram>,
    last: Arc<Mutex<BTreeMap<u32, PartnerSeen>>>,
}

impl Default for PartnerMetrics {
    fn default() -> Self {
        PartnerMetrics {
            latency: Family::new_with_constructor(latency_histogram),
            last: Arc::default(),
        }
    }
}

impl PartnerMetrics {
    /// Records a call to `partner` (a roster code, so the set is bounded
    /// by the rosters) that took `latency` until its answer started.
    pub fn observe(
        &self,
        partner: u32,
        latency: Duration,
        failure: Option<String>,
        at: time::OffsetDateTime,
    ) {
        self.latency
            .get_or_create(&PartnerLabels {
                partner,
                outcome: if failure.is_none() { "ok" } else { "failed" },
            })
            .observe(latency.as_secs_f64());
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(
                partner,
                PartnerSeen {
                    at,
                    latency,
                    failure: failure.map(|f| crate::telemetry::untrusted(&f).to_string()),
                },
            );
    }

    /// The last call to `partner`, if any since the node started.
    pub fn last(&self, partner: u32) -> Option<PartnerSeen> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&partner)
            .cloned()
    }
}

/// The gRPC code's name as Prometheus labels usually spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Values read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub up: Gauge,
    pub ready: Gauge,
    pub audit_entries: Gauge,
    pub store_bytes: Gauge,
    pub documents: Family<DocumentLabels, Gauge>,
    pub datasets: Gauge,
    pub certificate_expiry: Gauge<f64, AtomicU64>,
    pub uptime: Gauge<i64, AtomicI64>,
}

/// One node's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub rpc: Family<RpcLabels, Counter>,
    pub gauges: Gauges,
    known_rpcs: HashSet<String>,
}

impl Metrics {
    /// A registry holding the node's own counters and the components'.
    pub fn new(ingest: &IngestMetrics, denials: &DenialMetrics, partners: &PartnerMetrics) -> Self {
        let mut registry = Registry::with_prefix("samvirke");
        let rpc = Family::<RpcLabels, Counter>::default();
        let gauges = Gauges::default();
        registry.register(
            "rpc_requests",
            "gRPC calls answered, by listener, method and outcome (gRPC code)",
            rpc.clone(),
        );
        registry.register(
            "peer_denials",
            "Peer calls refused, by reason and the gRPC code the caller got",
            denials.clone(),
        );
        registry.register(
            "ingest_rows",
            "Readings durably stored, by door (kind and configured name)",
            ingest.rows.clone(),
        );
        registry.register(
            "ingest_batches",
            "Batches durably stored, by door",
            ingest.batches.clone(),
        );
        registry.register(
            "ingest_refused_batches",
            "Batches refused (nothing of them stored), by door",
            ingest.refused.clone(),
        );
        registry.register(
            "partner_call_seconds",
            "Time until a partner's answer started, by partner municipality code and outcome",
            partners.latency.clone(),
        );
        registry.register("up", "1 while the node runs", gauges.up.clone());
        registry.register(
            "ready",
            "1 when the listeners serve, the store is open and the audit writer runs",
            gauges.ready.clone(),
        );
        registry.register(
            "audit_entries",
            "Entries in the audit chain",
            gauges.audit_entries.clone(),
        );
        registry.register(
            "store_size_bytes",
            "Bytes the store takes on disk (sled: its files; PostgreSQL: the database)",
            gauges.store_bytes.clone(),
        );
        registry.register(
            "governance_documents",
            "Rosters and agreements held, by kind and status",
            gauges.documents.clone(),
        );
        registry.register(
            "datasets",
            "Datasets this node publishes",
            gauges.datasets.clone(),
        );
        registry.register(
            "tls_certificate_expiry_seconds",
            "Seconds until the node's TLS certificate expires (negative once expired)",
            gauges.certificate_expiry.clone(),
        );
        registry.register(
            "uptime_seconds",
            "Seconds since the node started",
            gauges.uptime.clone(),
        );
        Metrics {
            registry,
            rpc,
            gauges,
            known_rpcs: known_rpcs(),
        }
    }

    /// The registry as Prometheus (OpenMetrics) text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The RPC label of a request path: the method itself when the node
    /// serves it, `other` for anything a client made up.
    pub fn rpc_label(&self, path: &str) -> String {
        let method = path.strip_prefix('/').unwrap_or(path);
        if self.known_rpcs.contains(method) {
            method.to_string()
        } else {
            "other".to_string()
        }
    }

    /// A tower layer counting every call on `listener`.
    pub fn layer(self: &Arc<Self>, listener: &'static str) -> RpcMetricsLayer {
        RpcMetricsLayer {
            metrics: Arc::clone(self),
            listener,
        }
    }
}

/// Every `package.Service/Method` the node's listeners serve: its own
/// services from their descriptors, and the standard health and
/// reflection services.
fn known_rpcs() -> HashSet<String> {
    use prost::Message;
    let mut known: HashSet<String> = [
        "grpc.health.v1.Health/Check",
        "grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health/List",
        "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    if let Ok(set) = prost_types::FileDescriptorSet::decode(samvirke_proto::v1::FILE_DESCRIPTOR_SET)
    {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    known.insert(format!(
                        "{package}.{name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    known
}

/// Counts calls by RPC and outcome; see [`Metrics::layer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<Metrics>,
    listener: &'static str,
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
            listener: self.listener,
        }
    }
}

/// The service [`RpcMetricsLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    listener: &'static str,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let tally = Tally {
            metrics: Arc::clone(&self.metrics),
            labels: Some((self.listener, self.metrics.rpc_label(request.uri().path()))),
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut tally = tally;
            let response = match response.await {
                Ok(response) => response,
                Err(error) => {
                    // The call never got an answer (the connection failed).
                    tally.count(tonic::Code::Unknown);
                    return Err(error);
                }
            };
            // A refusal before any answer is "trailers-only": its status
            // is in the headers. Otherwise it comes in the trailers.
            if let Some(code) = grpc_status(response.headers()) {
                tally.count(code);
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(CountedBody { inner: body, tally })))
        })
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// Counts a call once: at its status, or as CANCELLED when the answer is
/// dropped before it ends (the client went away).
struct Tally {
    metrics: Arc<Metrics>,
    labels: Option<(&'static str, String)>,
}

impl Tally {
    fn count(&mut self, code: tonic::Code) {
        if let Some((listener, rpc)) = self.labels.take() {
            self.metrics
                .rpc
                .get_or_create(&RpcLabels {
                    listener,
                    rpc,
                    code: code_name(code),
                })
                .inc();
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.count(tonic::Code::Cancelled);
    }
}

/// A response body that counts its call when the trailers pass.
struct CountedBody {
    inner: tonic::body::Body,
    tally: Tally,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.tally.count(code);
                }
            }
            Poll::Ready(Some(Err(status))) => {
                let code = status.code();
                self.tally.count(code);
            }
            Poll::Ready(None) => self.tally.count(tonic::Code::Ok),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Bytes under `dir`, walking at most a few levels and entries (a sled
/// store is a handful of files; the bound keeps a scrape cheap whatever
/// else is put there).
pub fn directory_size(dir: &std::path::Path) -> u64 {
    const MAX_ENTRIES: usize = 10_000;
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![(dir.to_path_buf(), 0u8)];
    while let Some((path, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                return total;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() && depth < 4 {
                stack.push((entry.path(), depth + 1));
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

/// Seconds from `now` until the first certificate in `pem` expires.
pub fn certificate_expiry(pem: &str, now: time::OffsetDateTime) -> Option<f64> {
    let not_after = certificate_not_after(pem)?;
    Some((not_after - now).as_seconds_f64())
}

/// The `notAfter` of the first certificate in `pem`.
pub fn certificate_not_after(pem: &str) -> Option<time::OffsetDateTime> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(certificate.validity().not_after.to_datetime())
}

/// Serialises the scrape-time reads, so concurrent scrapes cost one
/// read of the disk and the registry at a time, not one each.
#[derive(Debug, Default)]
pub struct ScrapeLock(Mutex<()>);

impl ScrapeLock {
    /// Holds the lock while the gauges are refreshed.
    pub fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_get_their_own_label() {
        let metrics = Metrics::new(
            &IngestMetrics::default(),
            &DenialMetrics::default(),
            &PartnerMetrics::default(),
        );
        assert_eq!(
            metrics.rpc_label("/samvirke.v1.Local/Status"),
            "samvirke.v1.Local/Status"
        );
        assert_eq!(
            metrics.rpc_label("/grpc.health.v1.Health/Check"),
            "grpc.health.v1.Health/Check"
        );
        // A client inventing method names cannot add label values.
        for made_up in [
            "/samvirke.v1.Local/Nope",
            "/x/y",
            "",
            "/samvirke.v1.Local/Status/extra",
        ] {
            assert_eq!(metrics.rpc_label(made_up), "other", "{made_up}");
        }
    }

    #[test]
    fn the_text_names_every_family() {
        let ingest = IngestMetrics::default();
        ingest.record(&Source::Http("os2iot".into()), Some(3));
        let metrics = Metrics::new(
            &ingest,
            &DenialMetrics::default(),
            &PartnerMetrics::default(),
        );
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains("samvirke_ingest_rows_total{kind=\"http\",name=\"os2iot\"} 3"),
            "{text}"
        );
        assert!(text.contains("samvirke_up"), "{text}");
    }
}
