//! Wiring: a [`Node`] opens its identity and store, binds its two
//! listeners (three with the HTTP API) and serves until told to stop.
//!
//! - The **peer listener** speaks only mutual TLS. The client must present
//!   a certificate chaining to `peer.trust_roots`; a missing certificate, a
//!   certificate from another CA or plaintext fail in the TLS handshake,
//!   before any gRPC code runs.
//! - The **local listener** serves the municipality's own users and apps
//!   with bearer tokens (optionally over server-side TLS).
//! - The optional **admin listener** (`[admin]`) serves Prometheus
//!   metrics, health and readiness and a read-only status page
//!   ([`crate::admin`]); the gRPC calls are counted by a layer on both
//!   listeners.
//! - The optional **HTTP listener** (`[http]`) serves the same local API
//!   to analysts' tools as JSON and CSV ([`crate::http`]), with the same
//!   tokens, connection limits and per-token call limits.
//!
//! Both listeners accept connections through [`crate::transport`] (limits,
//! handshake and idle timeouts) and serve HTTP/2 with bounded streams per
//! connection, reset-flood protection and bounded headers; calls are
//! bounded per caller ([`CallLimiter`]). Both serve `grpc.health.v1` and
//! server reflection so stock clients (grpcurl, grpcio) work
//! ([`crate::health`]). Shutdown first marks both services NOT_SERVING and
//! ends health watches, then lets in-flight calls finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use samvirke_proto::v1::{
    LOCAL_SERVICE_NAME, ListenerInfo, PEER_SERVICE_NAME, local_server::LocalServer,
    peer_server::PeerServer,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::admin::metrics::Metrics;
use crate::admin::{Admin, Readiness};
use crate::audit::{AuditError, AuditLog};
use crate::clock::{SharedClock, SystemClock};
use crate::config::StoreBackend;
use crate::config::{Config, Limits};
use crate::federate::{Federation, ReceiptStore};
use crate::governance::registry::{ImportError, Registry};
use crate::governance::sync;
use crate::health::{ListenerHealth, ReflectionError, reflection};
use crate::identity::{IdentityError, NodeIdentity};
use crate::ingest::Pipeline;
use crate::ingest::http_push::PushEndpoints;
use crate::ingest::mqtt::MqttStates;
use crate::local::LocalService;
use crate::local::auth::TokenRegistry;
use crate::partners::PartnerPool;
use crate::peer::PeerService;
use crate::peer::call::Accounts;
use crate::plane::DataPlane;
use crate::plane::answer::AnswerLimits;
use crate::proof::batch::BatchSigner;
use crate::proof::receipt;
use crate::proof::request::Replays;
use crate::store::{Keyspace, PostgresStore, SledStore, Store, StoreError};
use crate::transport::limiter::CallLimiter;
use crate::transport::{self, ActivityLayer, CallTimeoutLayer, ListenerLimits, Security};

/// Keep idle HTTP/2 connections to partners alive through firewalls and
/// notice dead ones.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a client may reset before they are answered, before the
/// connection is closed (HTTP/2 rapid-reset protection).
const MAX_PENDING_RESETS: usize = 20;
/// Streams this node may reset for protocol errors before it closes the
/// connection.
const MAX_ERROR_RESETS: usize = 64;
/// How long a partner may take to start answering any call (federated
/// questions and sync bound their own calls more tightly).
const PARTNER_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest request header block, in bytes.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Why a node could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored governance documents could not be loaded: {0}")]
    Governance(#[from] ImportError),
    #[error("the audit log could not be opened: {0}")]
    Audit(#[from] AuditError),
    #[error("cannot listen on {address} ({listener} listener): {source}")]
    Bind {
        listener: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{listener} listener: TLS setup failed: {reason}")]
    Tls {
        listener: &'static str,
        reason: String,
    },
    #[error("cannot listen for {signal}: {reason}")]
    Signal {
        signal: &'static str,
        reason: String,
    },
    #[error("{listener} listener stopped: {reason}")]
    Serve {
        listener: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Reflection(#[from] ReflectionError),
    #[error("start-up check of the sensor index failed: {0}")]
    Recovery(#[from] crate::ingest::recovery::RecoveryError),
    #[error(transparent)]
    Mqtt(#[from] crate::ingest::mqtt::MqttError),
    #[error("{listener} listener: {source}")]
    TlsSetup {
        listener: &'static str,
        source: transport::TlsSetupError,
    },
}

/// The bound sockets a node serves on.
#[derive(Debug)]
pub struct Listeners {
    pub peer: TcpListener,
    pub local: TcpListener,
    /// The HTTP API's, when `[http]` is configured.
    pub http: Option<TcpListener>,
    /// The admin listener's (metrics, health, status page), when
    /// `[admin]` is configured.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, NodeError> {
        let bind = |listener: &'static str, address: SocketAddr| async move {
            TcpListener::bind(address)
                .await
                .map_err(|source| NodeError::Bind {
                    listener,
                    address,
                    source,
                })
        };
        Ok(Listeners {
            peer: bind("peer", config.peer.listen).await?,
            local: bind("local", config.local.listen).await?,
            http: match &config.http {
                Some(http) => Some(bind("http", http.listen).await?),
                None => None,
            },
            admin: match &config.admin {
                Some(admin) => Some(bind("admin", admin.listen).await?),
                None => None,
            },
        })
    }

    fn address(listener: &TcpListener) -> String {
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }
}

/// Opens the store `config` names: sled in `node.data_dir`, or PostgreSQL.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.store.backend {
        StoreBackend::Sled => Arc::new(SledStore::open_with_cache(
            &config.node.data_dir,
            config.store.cache_bytes,
        )?),
        StoreBackend::Postgres(options) => Arc::new(PostgresStore::open(options)?),
    })
}

/// How often a node on a shared store re-reads governance and catalog
/// even without a change notification: a notification can be lost (a
/// connection pooler that does not pass `LISTEN` through, a feed that is
/// down), and a re-read that failed is retried then.
const SHARED_STORE_RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

/// Re-reads what other node processes sharing the store changed: the
/// governance view on roster, agreement and quarantine changes, the
/// catalog on dataset changes, both every [`SHARED_STORE_RESYNC`]. Runs
/// until `stop`.
async fn follow_store_changes(
    mut changes: tokio::sync::broadcast::Receiver<Keyspace>,
    registry: Arc<Registry>,
    plane: Arc<DataPlane>,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut resync = tokio::time::interval(SHARED_STORE_RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.reset();
    loop {
        let (governance, catalog) = tokio::select! {
            () = stop.cancelled() => return,
            _ = resync.tick() => (true, true),
            change = changes.recv() => match change {
                Ok(Keyspace::Datasets) => (false, true),
                Ok(_) => (true, false),
                // Missed some: re-read both.
                Err(RecvError::Lagged(_)) => (true, true),
                Err(RecvError::Closed) => return,
            },
        };
        if catalog {
            plane.readings.catalog().refresh();
        }
        if governance {
            let registry = Arc::clone(&registry);
            let reloaded = tokio::task::spawn_blocking(move || registry.reload()).await;
            match reloaded {
                Ok(Ok(())) => tracing::debug!("governance documents re-read from the store"),
                Ok(Err(error)) => tracing::error!(
                    %error,
                    retry_in_s = SHARED_STORE_RESYNC.as_secs(),
                    "governance documents could not be re-read"
                ),
                Err(error) => tracing::error!(%error, "governance re-read failed"),
            }
        }
    }
}

/// A node ready to serve: identity loaded, store open.
#[derive(Debug)]
pub struct Node {
    config: Config,
    identity: Arc<NodeIdentity>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    plane: Arc<DataPlane>,
    ingest: Arc<Pipeline>,
    mqtt: MqttStates,
    audit: Arc<AuditLog>,
    clock: SharedClock,
}

impl Node {
    /// Loads the identity and opens the store named in `config`.
    pub fn open(config: Config) -> Result<Node, NodeError> {
        let identity = Arc::new(NodeIdentity::load(&config)?);
        let store = open_store(&config)?;
        let node = Self::assemble(config, identity, store, Arc::new(SystemClock))?;
        // Before anything is served: after an unclean stop, make the
        // sensor index agree with the readings again.
        crate::ingest::recovery::on_open(node.store.as_ref(), &node.plane.readings)?;
        Ok(node)
    }

    fn assemble(
        config: Config,
        identity: Arc<NodeIdentity>,
        store: Arc<dyn Store>,
        clock: SharedClock,
    ) -> Result<Node, NodeError> {
        let registry = Arc::new(Registry::open(
            Arc::clone(&store),
            config.node.municipality_code,
            identity.verifying_key(),
            Arc::clone(&clock),
        )?);
        let plane = Arc::new(DataPlane::new(Arc::clone(&store), Arc::clone(&clock))?);
        registry.set_provider_check(plane.clone());
        let audit = Arc::new(AuditLog::open(
            Arc::clone(&store),
            Arc::clone(&identity),
            Arc::clone(&clock),
        )?);
        registry.set_audit(Arc::clone(&audit));
        let ingest = Arc::new(Pipeline::new(Arc::clone(&plane), Arc::clone(&clock)));
        let mqtt = MqttStates::new(&config.ingest.mqtt);
        Ok(Node {
            config,
            identity,
            store,
            registry,
            plane,
            ingest,
            mqtt,
            audit,
            clock,
        })
    }

    /// Replaces the clock (tests set "now" this way).
    pub fn with_clock(self, clock: SharedClock) -> Result<Node, NodeError> {
        Self::assemble(self.config, self.identity, self.store, clock)
    }

    /// The node's governance registry (rosters and agreements).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The ingest pipeline every door stores readings through.
    pub fn ingest(&self) -> &Arc<Pipeline> {
        &self.ingest
    }

    /// This node's identity.
    pub fn identity(&self) -> &Arc<NodeIdentity> {
        &self.identity
    }

    /// The config the node was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves on `listeners` until `shutdown` completes, then drains.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), NodeError> {
        let stop = CancellationToken::new();
        let peer_address = Listeners::address(&listeners.peer);
        let local_address = Listeners::address(&listeners.local);
        let local_security = if self.config.local.tls {
            "tls+bearer"
        } else {
            "plaintext+bearer"
        };
        if !self.config.local.tls
            && !listeners
                .local
                .local_addr()
                .map(|a| a.ip().is_loopback())
                .unwrap_or(false)
        {
            tracing::warn!(
                address = %local_address,
                "local listener is plaintext on a non-loopback address; set local.tls = true \
                 or bind it to 127.0.0.1 so bearer tokens do not cross the network in clear"
            );
        }
        let http_tls = self.config.http.as_ref().is_some_and(|h| h.tls);
        let http_address = listeners.http.as_ref().map(Listeners::address);
        if let Some(http) = &listeners.http
            && !http_tls
            && !http
                .local_addr()
                .map(|a| a.ip().is_loopback())
                .unwrap_or(false)
        {
            tracing::warn!(
                address = %Listeners::address(http),
                "HTTP API is plaintext on a non-loopback address; set http.tls = true or bind \
                 it to 127.0.0.1 so bearer tokens do not cross the network in clear"
            );
        }
        let mut listener_info = vec![
            ListenerInfo {
                name: "peer".into(),
                address: peer_address.clone(),
                security: "mtls".into(),
            },
            ListenerInfo {
                name: "local".into(),
                address: local_address.clone(),
                security: local_security.into(),
            },
        ];
        if let Some(address) = &http_address {
            listener_info.push(ListenerInfo {
                name: "http".into(),
                address: address.clone(),
                security: if http_tls {
                    "tls+bearer"
                } else {
                    "plaintext+bearer"
                }
                .into(),
            });
        }

        let (peer_health, peer_health_service) = ListenerHealth::new(PEER_SERVICE_NAME);
        let (local_health, local_health_service) = ListenerHealth::new(LOCAL_SERVICE_NAME);
        peer_health.serving().await;
        local_health.serving().await;
        let (peer_reflection, peer_reflection_v1alpha) = reflection(PEER_SERVICE_NAME)?;
        let (local_reflection, local_reflection_v1alpha) = reflection(LOCAL_SERVICE_NAME)?;

        let peer_limits = self.config.peer.limits;
        let local_limits = self.config.local.limits;
        // The audit writer outlives the listeners: calls still draining at
        // shutdown record their entries before it stops.
        let audit_stop = CancellationToken::new();
        let readiness = Arc::new(Readiness::default());
        readiness.audit_writer.store(true, Ordering::Release);
        let audit_writer = tokio::spawn({
            let readiness = Arc::clone(&readiness);
            let writer = Arc::clone(&self.audit)
                .run(self.config.audit.checkpoint_interval, audit_stop.clone());
            async move {
                writer.await;
                readiness.audit_writer.store(false, Ordering::Release);
            }
        });
        let skew = time::Duration::try_from(self.config.peer.request_skew)
            .unwrap_or(time::Duration::minutes(5));
        let accounts = Arc::new(Accounts::new(
            Arc::clone(&self.audit),
            Replays::open(Arc::clone(&self.store), skew, self.clock.now())?,
            BatchSigner::start(
                Arc::new(self.identity.signing_key().clone()),
                receipt::BATCH_DOMAIN,
            ),
            self.identity.municipality_code,
            Arc::clone(&self.clock),
        ));
        let partners = PartnerPool::new(
            Arc::clone(&self.identity),
            Arc::clone(&self.clock),
            PARTNER_CALL_TIMEOUT,
        );
        let metrics = Arc::new(Metrics::new(
            self.ingest.metrics(),
            accounts.denials(),
            partners.metrics(),
        ));
        let federation = Arc::new(Federation::new(
            Arc::clone(&self.identity),
            Arc::clone(&self.registry),
            Arc::clone(&self.plane),
            partners.clone(),
            ReceiptStore::new(Arc::clone(&self.store)),
            Arc::clone(&self.audit),
            answer_limits(&local_limits),
        ));
        let peer_service = PeerService::new(
            Arc::clone(&self.identity),
            Arc::clone(&self.registry),
            Arc::clone(&self.plane),
            Arc::clone(&self.clock),
            Arc::new(CallLimiter::new(
                peer_limits.max_calls_per_caller,
                peer_limits.max_calls,
            )),
            answer_limits(&peer_limits),
            accounts,
        );
        let local_service = Arc::new(
            LocalService::new(
                Arc::clone(&self.identity),
                Arc::new(TokenRegistry::new(&self.config.local.tokens)),
                Arc::clone(&self.store),
                Arc::clone(&self.registry),
                Arc::clone(&self.plane),
                Arc::clone(&self.ingest),
                Arc::clone(&self.clock),
                listener_info,
                Arc::new(CallLimiter::new(
                    local_limits.max_calls_per_caller,
                    local_limits.max_calls,
                )),
                answer_limits(&local_limits),
                federation,
                Arc::clone(&self.audit),
            )
            .with_backup_dir(self.config.node.data_dir.clone())
            .with_stop(stop.clone())
            .with_export(crate::local::export::ExportSettings {
                // Behind a proxy the operator says where the API is; else it is
                // where the [http] listener is bound.
                base_url: self.config.catalog.public_url.clone().or_else(|| {
                    http_address.as_ref().map(|address| {
                        format!("{}://{address}", if http_tls { "https" } else { "http" })
                    })
                }),
                contact: crate::data::dcat::Contact {
                    name: self.config.catalog.contact_name.clone(),
                    email: self.config.catalog.contact_email.clone(),
                },
            }),
        );
        let partners_for_admin = partners.clone();
        let store_changes = self.store.changes().map(|changes| {
            tokio::spawn(follow_store_changes(
                changes,
                Arc::clone(&self.registry),
                Arc::clone(&self.plane),
                stop.clone(),
            ))
        });
        let anti_entropy = tokio::spawn(sync::run(
            Arc::clone(&self.registry),
            partners,
            self.config.governance.sync_interval,
            stop.clone(),
        ));

        let peer_security =
            transport::mutual_tls(&self.identity.tls).map_err(|source| NodeError::TlsSetup {
                listener: "peer",
                source,
            })?;
        let peer_incoming = transport::serve_incoming(
            "peer",
            listeners.peer,
            peer_security,
            listener_limits(&peer_limits, self.config.peer.handshake_timeout),
            stop.clone(),
        );
        let peer_server = http2(&peer_limits)
            // Every peer call is unary or server-streaming: its response
            // starts within the call timeout (streams then run under the
            // answer limits).
            .timeout(peer_limits.call_timeout)
            .layer(ActivityLayer)
            .layer(metrics.layer("peer"))
            .add_service(peer_health_service)
            .add_service(peer_reflection)
            .add_service(peer_reflection_v1alpha)
            .add_service(PeerServer::new(peer_service))
            .serve_with_incoming_shutdown(peer_incoming, stop.clone().cancelled_owned());

        let local_security = if self.config.local.tls {
            transport::server_tls(&self.identity.tls).map_err(|source| NodeError::TlsSetup {
                listener: "local",
                source,
            })?
        } else {
            Security::Plaintext
        };
        let local_incoming = transport::serve_incoming(
            "local",
            listeners.local,
            local_security,
            listener_limits(&local_limits, self.config.local.handshake_timeout),
            stop.clone(),
        );
        // Ingest streams are exempt from the call timeout: they may rightly
        // last long, and have a per-batch timeout instead.
        let local_server = http2(&local_limits)
            .layer(ActivityLayer)
            .layer(metrics.layer("local"))
            .layer(CallTimeoutLayer {
                timeout: local_limits.call_timeout,
                exempt: &[
                    "/samvirke.v1.Local/IngestReadings",
                    "/samvirke.v1.Local/IngestBatches",
                ],
            })
            .add_service(local_health_service)
            .add_service(local_reflection)
            .add_service(local_reflection_v1alpha)
            .add_service(LocalServer::from_arc(Arc::clone(&local_service)))
            .serve_with_incoming_shutdown(local_incoming, stop.clone().cancelled_owned());

        // The HTTP API calls the same local service in-process, so tokens,
        // roles, per-token call limits and audit entries are the gRPC ones.
        let http_server = match listeners.http {
            None => None,
            Some(listener) => {
                let security = if http_tls {
                    transport::http_tls(&self.identity.tls).map_err(|source| {
                        NodeError::TlsSetup {
                            listener: "http",
                            source,
                        }
                    })?
                } else {
                    Security::Plaintext
                };
                let incoming = transport::serve_incoming(
                    "http",
                    listener,
                    security,
                    listener_limits(&local_limits, self.config.local.handshake_timeout),
                    stop.clone(),
                );
                let push = Arc::new(PushEndpoints::new(
                    &self.config.ingest.http,
                    Arc::clone(&self.ingest),
                    Arc::clone(&self.clock),
                ));
                Some(crate::http::serve(
                    incoming,
                    crate::http::HttpApi::new(Arc::clone(&local_service), local_limits)
                        .with_push(push),
                    self.config.local.handshake_timeout,
                    stop.clone(),
                ))
            }
        };

        // MQTT subscriptions store through the same pipeline.
        let mqtt_tasks = crate::ingest::mqtt::spawn_all(
            &self.config.ingest.mqtt,
            &self.ingest,
            &self.clock,
            &self.mqtt,
            &stop,
        )?;
        let admin_address = listeners.admin.as_ref().map(Listeners::address);
        let admin_server = listeners.admin.map(|listener| {
            crate::admin::serve(
                listener,
                Admin::new(
                    Arc::clone(&self.identity),
                    Arc::clone(&self.store),
                    self.config.node.data_dir.clone(),
                    Arc::clone(&self.registry),
                    Arc::clone(&self.plane),
                    Arc::clone(&self.audit),
                    partners_for_admin,
                    Arc::clone(&self.clock),
                    Arc::clone(&metrics),
                    Arc::clone(&readiness),
                ),
                stop.clone(),
            )
        });

        tracing::info!(
            municipality = self.identity.municipality_code,
            name = %self.identity.municipality_name,
            node_id = %self.identity.node_id,
            peer = %peer_address,
            local = %local_address,
            http = %http_address.as_deref().unwrap_or("off"),
            admin = %admin_address.as_deref().unwrap_or("off"),
            tls_fingerprint = %self.identity.tls.fingerprint,
            "samvirke node serving"
        );

        let store = Arc::clone(&self.store);
        let serve_error = |listener: &'static str| {
            move |e: tonic::transport::Error| NodeError::Serve {
                listener,
                reason: e.to_string(),
            }
        };
        // Each listener reports its own failure at once: if one stops, the
        // node stops as a whole rather than running half-deaf.
        let peer_server = async { peer_server.await.map_err(serve_error("peer")) };
        let local_server = async { local_server.await.map_err(serve_error("local")) };
        let http_server = async {
            match http_server {
                Some(server) => server.await.map_err(|reason| NodeError::Serve {
                    listener: "http",
                    reason,
                }),
                None => Ok(()),
            }
        };
        let admin_server = async {
            match admin_server {
                Some(server) => server.await.map_err(|e| NodeError::Serve {
                    listener: "admin",
                    reason: e.to_string(),
                }),
                None => Ok(()),
            }
        };
        let serving = async {
            tokio::try_join!(peer_server, local_server, http_server, admin_server).map(|_| ())
        };
        tokio::pin!(serving);
        // The listeners are bound and their servers run from here on.
        readiness.serving.store(true, Ordering::Release);
        let served = tokio::select! {
            result = &mut serving => result,
            () = shutdown => {
                tracing::info!("shutting down: draining in-flight calls");
                readiness.serving.store(false, Ordering::Release);
                peer_health.stopping().await;
                local_health.stopping().await;
                stop.cancel();
                serving.await
            }
        };
        readiness.serving.store(false, Ordering::Release);
        if served.is_err() {
            peer_health.stopping().await;
            local_health.stopping().await;
            stop.cancel();
        }
        for task in mqtt_tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "MQTT ingest task failed");
            }
        }
        if let Err(error) = anti_entropy.await {
            tracing::error!(%error, "anti-entropy task failed");
        }
        if let Some(task) = store_changes
            && let Err(error) = task.await
        {
            tracing::error!(%error, "store change follower failed");
        }
        // Last entries, then the closing checkpoint.
        audit_stop.cancel();
        if let Err(error) = audit_writer.await {
            tracing::error!(%error, "audit writer failed");
        }
        // Whatever was acknowledged is already durable; this catches the rest.
        store.flush()?;
        // Every write is complete: the next start need not check the index.
        if served.is_ok() {
            crate::ingest::recovery::mark_clean_stop(store.as_ref())?;
        }
        tracing::info!("samvirke node stopped");
        served
    }

    /// Starts serving in a background task; for tests and the demo.
    pub fn spawn(self, listeners: Listeners) -> RunningNode {
        let peer_addr = listeners.peer.local_addr().ok();
        let local_addr = listeners.local.local_addr().ok();
        let http_addr = listeners.http.as_ref().and_then(|l| l.local_addr().ok());
        let admin_addr = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
        let http_tls = self.config.http.as_ref().is_some_and(|h| h.tls);
        let identity = Arc::clone(&self.identity);
        let registry = Arc::clone(&self.registry);
        let audit = Arc::clone(&self.audit);
        let ingest = Arc::clone(&self.ingest);
        let local_tls = self.config.local.tls;
        let mqtt = self.mqtt.clone();
        let stop = CancellationToken::new();
        let task = tokio::spawn(self.run(listeners, stop.clone().cancelled_owned()));
        RunningNode {
            peer_addr: peer_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            local_addr: local_addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            identity,
            registry,
            audit,
            local_tls,
            http_addr,
            http_tls,
            mqtt,
            admin_addr,
            ingest,
            stop,
            task,
        }
    }
}

/// A tonic server with the HTTP/2 settings both listeners share.
fn http2(limits: &Limits) -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(MAX_ERROR_RESETS))
        .http2_max_header_list_size(MAX_HEADER_LIST)
}

fn listener_limits(limits: &Limits, handshake_timeout: Duration) -> ListenerLimits {
    ListenerLimits {
        max_connections: limits.max_connections,
        max_connections_per_caller: limits.max_connections_per_caller,
        max_handshakes_per_address: limits.max_handshakes_per_address,
        handshake_timeout,
        idle_timeout: limits.idle_timeout,
    }
}

fn answer_limits(limits: &Limits) -> AnswerLimits {
    AnswerLimits {
        send_timeout: limits.send_timeout,
        answer_timeout: limits.answer_timeout,
    }
}

/// A node serving in a background task.
#[derive(Debug)]
pub struct RunningNode {
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub identity: Arc<NodeIdentity>,
    pub registry: Arc<Registry>,
    pub audit: Arc<AuditLog>,
    local_tls: bool,
    /// The HTTP API's bound address, when `[http]` is configured.
    pub http_addr: Option<SocketAddr>,
    http_tls: bool,
    /// Whether each `[[ingest.mqtt]]` subscription is subscribed.
    pub mqtt: MqttStates,
    /// The admin listener's bound address, when `[admin]` is configured.
    pub admin_addr: Option<SocketAddr>,
    /// The ingest pipeline every door stores through.
    pub ingest: Arc<Pipeline>,
    stop: CancellationToken,
    task: JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// The peer endpoint URL partners use (`https://127.0.0.1:PORT`).
    pub fn peer_endpoint(&self) -> String {
        format!("https://{}", self.peer_addr)
    }

    /// The local endpoint URL (`http://127.0.0.1:PORT`, or `https://` when
    /// the local listener uses TLS).
    pub fn local_endpoint(&self) -> String {
        let scheme = if self.local_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The HTTP API's base URL (`http://127.0.0.1:PORT`, or `https://`
    /// with `http.tls`), when it is on.
    pub fn http_endpoint(&self) -> Option<String> {
        let scheme = if self.http_tls { "https" } else { "http" };
        self.http_addr.map(|a| format!("{scheme}://{a}"))
    }

    /// The admin listener's base URL (`http://127.0.0.1:PORT`), when on.
    pub fn admin_endpoint(&self) -> Option<String> {
        self.admin_addr.map(|a| format!("http://{a}"))
    }

    /// Stops the node and waits until it has drained.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        self.stop.cancel();
        self.task.await.map_err(|e| NodeError::Serve {
            listener: "node",
            reason: e.to_string(),
        })?
    }
}
