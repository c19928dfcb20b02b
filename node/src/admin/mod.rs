//! Operating the node: the admin listener (`[admin]`, loopback by
//! default) serving Prometheus `/metrics`, `/healthz`, `/readyz` and a
//! read-only status page at `/`.
//!
//! This module owns that listener: routing, readiness, bounds and
//! shutdown. [`metrics`] owns what is measured and how it is labelled;
//! [`status`] renders the page. Nothing here changes the node, and
//! nothing secret is on it: no tokens (the audit never holds them), no
//! keys, only public identity (fingerprints, codes, names) and counts.
//! The listener is plaintext and unauthenticated, like every Prometheus
//! exporter; keep it on loopback or a management network.
//!
//! Bounds: connections come through [`crate::transport::serve_incoming`]
//! with small fixed limits; request heads are bounded in size and time;
//! every answer must be ready within [`ANSWER_TIMEOUT`]; the page shows
//! bounded lists; scrapes recompute the gauges one at a time.

pub mod metrics;
pub mod status;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::governance::registry::Registry;
use crate::identity::NodeIdentity;
use crate::partners::PartnerPool;
use crate::plane::DataPlane;
use crate::store::{Keyspace, Store};
use crate::transport::http_serve::{HttpServing, serve_router};
use crate::transport::{self, ListenerLimits, Security};
use metrics::Metrics;

/// Longest any admin answer may take (the status page reads the store).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head, in bytes.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// What the admin listener lets clients spend: a scraper and a few
/// operators' browsers.
const LIMITS: ListenerLimits = ListenerLimits {
    max_connections: 32,
    max_connections_per_caller: 16,
    max_handshakes_per_address: 16,
    handshake_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
};

/// What the node reports as its readiness, set by the parts it names.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The gRPC (and HTTP) listeners are serving, and not stopping.
    pub serving: AtomicBool,
    /// The audit writer task runs.
    pub audit_writer: AtomicBool,
}

impl Readiness {
    /// Why the node is not ready, or `None` when it is.
    fn not_ready(&self, store: &dyn Store) -> Option<String> {
        if !self.serving.load(Ordering::Acquire) {
            return Some("the listeners are not serving (starting or stopping)".to_string());
        }
        if !self.audit_writer.load(Ordering::Acquire) {
            return Some("the audit writer is not running".to_string());
        }
        if let Err(error) = store.get(Keyspace::Meta, b"admin-readiness-probe") {
            return Some(format!("the store cannot be read: {error}"));
        }
        None
    }
}

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct Admin {
    pub identity: Arc<NodeIdentity>,
    pub store: Arc<dyn Store>,
    pub data_dir: PathBuf,
    pub registry: Arc<Registry>,
    pub plane: Arc<DataPlane>,
    pub audit: Arc<AuditLog>,
    pub partners: PartnerPool,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub started: Instant,
    scrape: Arc<metrics::ScrapeLock>,
}

impl Admin {
    /// The admin endpoints over the node's parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Arc<NodeIdentity>,
        store: Arc<dyn Store>,
        data_dir: PathBuf,
        registry: Arc<Registry>,
        plane: Arc<DataPlane>,
        audit: Arc<AuditLog>,
        partners: PartnerPool,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Admin {
        Admin {
            identity,
            store,
            data_dir,
            registry,
            plane,
            audit,
            partners,
            clock,
            metrics,
            readiness,
            started: Instant::now(),
            scrape: Arc::default(),
        }
    }

    /// Recomputes the gauges read at scrape time (one scrape at a time).
    fn refresh_gauges(&self) {
        let _one_at_a_time = self.scrape.hold();
        let gauges = &self.metrics.gauges;
        gauges.up.set(1);
        gauges.ready.set(i64::from(
            self.readiness.not_ready(self.store.as_ref()).is_none(),
        ));
        gauges
            .audit_entries
            .set(i64::try_from(self.audit.length()).unwrap_or(i64::MAX));
        gauges.store_bytes.set(
            i64::try_from(
                self.store
                    .size_on_disk()
                    .unwrap_or_else(|| metrics::directory_size(&self.data_dir)),
            )
            .unwrap_or(i64::MAX),
        );
        gauges
            .uptime
            .set(i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX));
        if let Some(seconds) =
            metrics::certificate_expiry(&self.identity.tls.certificate_chain_pem, self.clock.now())
        {
            gauges.certificate_expiry.set(seconds);
        }
        if let Ok(datasets) = self.plane.catalog().list() {
            gauges
                .datasets
                .set(i64::try_from(datasets.len()).unwrap_or(i64::MAX));
        }
        let (rosters, agreements) = self.registry.list();
        gauges.documents.clear();
        gauges
            .documents
            .get_or_create(&metrics::DocumentLabels {
                kind: "roster",
                status: "held",
            })
            .set(i64::try_from(rosters.len()).unwrap_or(i64::MAX));
        for agreement in &agreements {
            gauges
                .documents
                .get_or_create(&metrics::DocumentLabels {
                    kind: "agreement",
                    status: agreement_status(&agreement.status),
                })
                .inc();
        }
    }
}

/// The agreement status as a label value from a closed set.
fn agreement_status(status: &str) -> &'static str {
    match status {
        "active" => "active",
        "pending signatures" => "pending_signatures",
        "not yet valid" => "not_yet_valid",
        "expired" => "expired",
        _ => "other",
    }
}

/// The admin routes.
pub fn router(admin: Admin) -> axum::Router {
    axum::Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(status::page))
        .route("/status", get(status::page))
        .with_state(admin)
}

async fn metrics_text(State(admin): State<Admin>) -> Response {
    let encoded = tokio::task::spawn_blocking(move || {
        admin.refresh_gauges();
        admin.metrics.encode()
    })
    .await;
    match encoded {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        )
            .into_response(),
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(admin): State<Admin>) -> Response {
    let store = Arc::clone(&admin.store);
    let readiness = Arc::clone(&admin.readiness);
    let verdict = tokio::task::spawn_blocking(move || readiness.not_ready(store.as_ref()))
        .await
        .unwrap_or_else(|e| Some(format!("the readiness check failed: {e}")));
    match verdict {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

/// Warns when the admin listener is reachable from other machines.
pub fn warn_if_exposed(address: SocketAddr) {
    if !address.ip().is_loopback() {
        tracing::warn!(
            address = %address,
            "the admin listener (metrics, status page) is plaintext and unauthenticated on a \
             non-loopback address; anyone who can reach it sees the node's fellowships, \
             partners and recent audit entries. Bind it to 127.0.0.1 or firewall it to the \
             monitoring host"
        );
    }
}

/// Serves the admin endpoints on `listener` until `stop`, then lets
/// answers in progress finish.
pub async fn serve(listener: TcpListener, admin: Admin, stop: CancellationToken) -> io::Result<()> {
    if let Ok(address) = listener.local_addr() {
        warn_if_exposed(address);
    }
    let incoming =
        transport::serve_incoming("admin", listener, Security::Plaintext, LIMITS, stop.clone());
    let serving = HttpServing {
        listener: "admin",
        head_timeout: LIMITS.handshake_timeout,
        max_request_head: MAX_REQUEST_HEAD,
        max_streams: 16,
        answer_timeout: ANSWER_TIMEOUT,
        timed_out: |_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the answer took too long\n",
            )
                .into_response()
        },
    };
    serve_router(incoming, router(admin), serving, stop).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn ready_only_when_serving_with_the_audit_writer_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SledStore::open(&dir.path().join("data")).expect("store");
        let readiness = Readiness::default();
        let reason = readiness.not_ready(&store).expect("not ready at first");
        assert!(reason.contains("listeners"), "{reason}");
        readiness.serving.store(true, Ordering::Release);
        let reason = readiness.not_ready(&store).expect("no audit writer yet");
        assert!(reason.contains("audit writer"), "{reason}");
        readiness.audit_writer.store(true, Ordering::Release);
        assert_eq!(readiness.not_ready(&store), None);
        // Stopping: not ready again, before anything else stops.
        readiness.serving.store(false, Ordering::Release);
        assert!(readiness.not_ready(&store).is_some());
    }

    #[test]
    fn agreement_statuses_map_to_a_closed_set_of_labels() {
        assert_eq!(agreement_status("active"), "active");
        assert_eq!(agreement_status("pending signatures"), "pending_signatures");
        assert_eq!(agreement_status("anything a future version says"), "other");
    }
}
