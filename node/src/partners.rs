//! How this node reaches its partners: one pooled mutual-TLS channel per
//! partner, presenting this node's certificate, with the partner's server
//! certificate **pinned** to the fingerprint the roster lists for it (a
//! server on a partner's address with any other certificate, even one
//! from the trusted CA, is refused in the handshake), reconnecting with
//! backoff; and requests signed as [`crate::proof::request`] describes.
//! Both anti-entropy and federated questions call partners through here.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prost::Message;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use samvirke_proto::v1::peer_client::PeerClient;
use tonic::transport::{Channel, Endpoint, Uri};
use uuid::Uuid;

use crate::admin::metrics::PartnerMetrics;
use crate::clock::SharedClock;
use crate::identity::{Fingerprint, NodeIdentity};
use crate::proof::batch::BatchSigner;
use crate::proof::message_digest;
use crate::proof::request::{self, RequestFacts, SignError};

/// How long to wait for a partner's TCP connect and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest wait before calling a partner again after it could
/// not be reached.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a partner could not be called.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PartnerError {
    #[error("`{endpoint}` is not a valid peer endpoint: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error(
        "{endpoint} could not be reached recently ({last_error}); next attempt in {} ms",
        .retry_in.as_millis()
    )]
    BackingOff {
        endpoint: String,
        /// Why the last attempt failed, so the operator and the analyst
        /// see the cause (e.g. a certificate that is not the pinned one),
        /// not only that there is a wait.
        last_error: String,
        retry_in: Duration,
    },
}

/// Checks a partner's server certificate: it must chain to the trust roots
/// and name the host (as usual), and its fingerprint must be the one the
/// roster lists for that partner.
#[derive(Debug)]
struct PinnedVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    expected: Fingerprint,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_der(end_entity);
        if presented != self.expected {
            return Err(rustls::Error::General(format!(
                "the server's certificate {presented} is not the one the roster lists for this \
                 partner ({})",
                self.expected
            )));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client TLS config presenting `identity`'s certificate and pinning the
/// server to `expected`.
fn pinned_config(
    identity: &NodeIdentity,
    expected: Fingerprint,
) -> Result<Arc<rustls::ClientConfig>, PartnerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(identity.tls.trust_roots_pem.as_bytes()) {
        let certificate = certificate.map_err(|e| PartnerError::Tls(e.to_string()))?;
        roots
            .add(certificate)
            .map_err(|e| PartnerError::Tls(e.to_string()))?;
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| PartnerError::Tls(e.to_string()))?;
    let chain = CertificateDer::pem_slice_iter(identity.tls.certificate_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PartnerError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(identity.tls.private_key_pem().as_bytes())
        .map_err(|e| PartnerError::Tls(e.to_string()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PartnerError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier { inner, expected }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| PartnerError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Connects TCP and TLS (pinned) to the partner the URI names.
#[derive(Clone)]
struct PinnedConnector {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    health: Arc<Mutex<Health>>,
}

/// A partner's reachability, for backoff.
#[derive(Debug, Default)]
struct Health {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

impl tower::Service<Uri> for PinnedConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = Arc::clone(&self.config);
        let server_name = self.server_name.clone();
        let health = Arc::clone(&self.health);
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let connected = async {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(server_name, tcp)
                    .await
            }
            .await;
            let mut health = health
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match &connected {
                Ok(_) => *health = Health::default(),
                Err(error) => {
                    health.last_error = error.to_string();
                    health.failures = health.failures.saturating_add(1);
                    let wait = FIRST_BACKOFF
                        .saturating_mul(1 << health.failures.min(8))
                        .min(MAX_BACKOFF);
                    health.retry_at = Some(Instant::now() + wait);
                }
            }
            connected.map(hyper_util::rt::TokioIo::new)
        })
    }
}

/// One channel per (endpoint, pinned fingerprint), created on first use.
#[derive(Debug, Clone)]
pub struct PartnerPool {
    identity: Arc<NodeIdentity>,
    clock: SharedClock,
    channels: Arc<Mutex<HashMap<(String, Fingerprint), Pooled>>>,
    call_timeout: Duration,
    signer: BatchSigner,
    /// Call latency and last outcome per partner (metrics, status page).
    metrics: PartnerMetrics,
}

/// A request signed by this node, and what the provider's receipt must
/// then say about it.
#[derive(Debug)]
pub struct SignedRequest<T> {
    pub request: tonic::Request<T>,
    pub digest: [u8; 32],
    pub nonce: [u8; 16],
}

#[derive(Clone)]
struct Pooled {
    channel: Channel,
    health: Arc<Mutex<Health>>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").finish_non_exhaustive()
    }
}

impl PartnerPool {
    /// A pool calling as `identity`, each call bounded by `call_timeout`
    /// (until the partner starts answering; callers bound streams
    /// themselves). Starts the request signer: call within a runtime.
    pub fn new(identity: Arc<NodeIdentity>, clock: SharedClock, call_timeout: Duration) -> Self {
        let signer = BatchSigner::start(
            Arc::new(identity.signing_key().clone()),
            request::BATCH_DOMAIN,
        );
        PartnerPool {
            identity,
            clock,
            channels: Arc::default(),
            call_timeout,
            signer,
            metrics: PartnerMetrics::default(),
        }
    }

    /// Call latency and the last outcome per partner.
    pub fn metrics(&self) -> &PartnerMetrics {
        &self.metrics
    }

    /// Why calls to `endpoint` wait now, while it backs off after failing
    /// to connect; `None` when it may be called.
    pub fn backing_off(&self, endpoint: &str) -> Option<String> {
        let channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        channels.iter().find_map(|((e, _), pooled)| {
            if e != endpoint {
                return None;
            }
            let health = pooled
                .health
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let wait = health.retry_at?.checked_duration_since(Instant::now())?;
            Some(format!(
                "{}; next attempt in {} s",
                health.last_error,
                wait.as_secs()
            ))
        })
    }

    /// "Now" on this node's clock.
    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// A client for the partner at `endpoint` whose certificate must have
    /// fingerprint `expected`. Fails fast while the partner is backing off.
    pub fn client(
        &self,
        endpoint: &str,
        expected: Fingerprint,
    ) -> Result<PeerClient<Channel>, PartnerError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (endpoint.to_string(), expected);
        if let Some(pooled) = channels.get(&key) {
            let health = pooled
                .health
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(retry_at) = health.retry_at
                && let Some(wait) = retry_at.checked_duration_since(Instant::now())
            {
                return Err(PartnerError::BackingOff {
                    endpoint: endpoint.to_string(),
                    last_error: health.last_error.clone(),
                    retry_in: wait,
                });
            }
            return Ok(PeerClient::new(pooled.channel.clone()));
        }
        let pooled = self.open(endpoint, expected)?;
        let client = PeerClient::new(pooled.channel.clone());
        // Channels of endpoints or certificates the roster no longer
        // lists are dropped with the map entry when a new one replaces them.
        channels.retain(|(e, _), _| e != endpoint);
        channels.insert(key, pooled);
        Ok(client)
    }

    fn open(&self, endpoint: &str, expected: Fingerprint) -> Result<Pooled, PartnerError> {
        let bad = |reason: String| PartnerError::BadEndpoint {
            endpoint: endpoint.to_string(),
            reason,
        };
        let rest = endpoint
            .strip_prefix("https://")
            .ok_or_else(|| bad("peer endpoints are https:// URLs".to_string()))?;
        // TLS is done by the connector; the channel itself sees a plain URI.
        let uri: Uri = format!("http://{rest}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let host = uri
            .host()
            .ok_or_else(|| bad("no host".to_string()))?
            .trim_matches(['[', ']'])
            .to_string();
        let server_name = ServerName::try_from(host).map_err(|e| bad(e.to_string()))?;
        let health = Arc::new(Mutex::new(Health::default()));
        let connector = PinnedConnector {
            config: pinned_config(&self.identity, expected)?,
            server_name,
            health: Arc::clone(&health),
        };
        let channel = Endpoint::from(uri)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(self.call_timeout)
            .tcp_nodelay(true)
            .connect_with_connector_lazy(connector);
        Ok(Pooled { channel, health })
    }

    /// `message` as a request to `method` under `agreement`, signed by this
    /// node (see [`crate::proof::request`]), in a batch with the requests
    /// signed at the same moment.
    pub async fn signed<T: Message>(
        &self,
        method: &str,
        provider: u32,
        agreement: Uuid,
        message: T,
    ) -> Result<SignedRequest<T>, SignError> {
        let digest = message_digest(&message);
        let mut request = tonic::Request::new(message);
        let nonce = request::sign(
            request.metadata_mut(),
            &self.signer,
            RequestFacts {
                caller: self.identity.municipality_code,
                provider,
                method,
                digest: &digest,
                agreement,
                at: self.clock.now(),
            },
        )
        .await?;
        Ok(SignedRequest {
            request,
            digest,
            nonce,
        })
    }
}
