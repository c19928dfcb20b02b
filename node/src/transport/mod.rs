//! The node's two listeners below gRPC: accepting connections within
//! limits, the TLS handshake, and closing connections that sit idle.
//!
//! tonic serves HTTP/2 on connections this module hands it
//! ([`serve_incoming`]). Before that:
//!
//! - at most `max_connections` established connections are open per
//!   listener, and a quarter as many (at least 16) in the handshake,
//!   counted apart so slow handshakes cannot take established partners'
//!   slots; a connection over a limit is closed at once;
//! - a handshake (TLS on the peer listener) must finish within
//!   `handshake_timeout`, and one address may have at most
//!   `max_handshakes_per_address` in progress, so half-open or slow
//!   clients cannot hold slots for long or crowd others out;
//! - a connection that makes no call within 10 s of opening is closed;
//! - after the handshake, one caller (a client certificate on the peer
//!   listener, an address on the local one) may hold at most
//!   `max_connections_per_caller` connections;
//! - a connection with no call in progress for `idle_timeout` is closed
//!   ([`Activity`] counts calls; [`ActivityLayer`] keeps the count).
//!
//! The caller's certificate fingerprint and the connection's activity
//! reach the services as a [`ConnectionInfo`] request extension.
//! [`limiter`] bounds concurrent calls per caller; [`http_serve`] serves
//! an axum router (the HTTP API, the admin listener) on these connections.

pub mod http_serve;
pub mod limiter;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::identity::{Fingerprint, TlsMaterial};
use crate::telemetry::refusals;

/// Limits of one listener (config keys of the same names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub max_connections_per_caller: usize,
    pub max_handshakes_per_address: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Why the TLS setup of a listener failed.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup failed: {0}")]
pub struct TlsSetupError(pub String);

/// How a listener secures its connections.
#[derive(Clone)]
pub enum Security {
    /// Plain TCP (the local listener on loopback).
    Plaintext,
    /// TLS; with client certificates required when the config says so.
    Tls(TlsAcceptor),
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Security::Plaintext => "Plaintext",
            Security::Tls(_) => "Tls",
        })
    }
}

/// Mutual TLS for the peer listener: this node's certificate, and client
/// certificates required and verified against the trust roots.
pub fn mutual_tls(tls: &TlsMaterial) -> Result<Security, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(tls.trust_roots_pem.as_bytes()) {
        let certificate = certificate.map_err(|e| TlsSetupError(format!("trust roots: {e}")))?;
        roots
            .add(certificate)
            .map_err(|e| TlsSetupError(format!("trust roots: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| TlsSetupError(format!("client verifier: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_client_cert_verifier(verifier);
    finish(config, tls, &[b"h2"])
}

/// Server-side TLS without client certificates (the local listener with
/// `local.tls = true`).
pub fn server_tls(tls: &TlsMaterial) -> Result<Security, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_no_client_auth();
    finish(config, tls, &[b"h2"])
}

/// Server-side TLS for the HTTP API (`http.tls = true`): like
/// [`server_tls`], but HTTP/1.1 is offered next to HTTP/2, since
/// spreadsheet and dashboard tools often speak only HTTP/1.1.
pub fn http_tls(tls: &TlsMaterial) -> Result<Security, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(e.to_string()))?
        .with_no_client_auth();
    finish(config, tls, &[b"h2", b"http/1.1"])
}

fn finish(
    config: rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    tls: &TlsMaterial,
    alpn: &[&[u8]],
) -> Result<Security, TlsSetupError> {
    let chain = CertificateDer::pem_slice_iter(tls.certificate_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError(format!("certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(tls.private_key_pem().as_bytes())
        .map_err(|e| TlsSetupError(format!("key: {e}")))?;
    let mut config = config
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError(format!("certificate and key: {e}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Security::Tls(TlsAcceptor::from(Arc::new(config))))
}

/// How long a new connection may go without making a call: a connection
/// that only holds a slot is closed well before the idle timeout.
const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls in progress on one connection, and since when there were none.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    called: std::sync::atomic::AtomicBool,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            called: std::sync::atomic::AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// A call starts; it ends when the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> CallGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.called.store(true, Ordering::SeqCst);
        CallGuard(Arc::clone(self))
    }

    /// Whether a call was ever made on the connection.
    fn ever_called(&self) -> bool {
        self.called.load(Ordering::SeqCst)
    }

    /// How long the connection has been without a call, if it is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(
            self.idle_since
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .elapsed(),
        )
    }
}

/// One call in progress on a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self
                .0
                .idle_since
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        }
    }
}

/// What the services learn about the connection a call came on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    /// SHA-256 of the client certificate (peer listener).
    pub client_certificate: Option<Fingerprint>,
    pub activity: Arc<Activity>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, as tonic serves it. Holds its connection
/// slots until dropped, and reads end-of-stream once it has been idle
/// for the listener's idle timeout (hyper then closes it).
pub struct Connection {
    io: Io,
    info: ConnectionInfo,
    idle_timeout: Duration,
    idle_check: Pin<Box<tokio::time::Sleep>>,
    _slots: Vec<Slot>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl Connection {
    /// Whether the connection has been idle too long; arms the timer to
    /// look again otherwise.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let timeout = if self.info.activity.ever_called() {
                self.idle_timeout
            } else {
                self.idle_timeout.min(FIRST_CALL_TIMEOUT)
            };
            let wait = match self.info.activity.idle_for() {
                Some(idle) if idle >= timeout => return true,
                Some(idle) => timeout - idle,
                None => timeout,
            };
            let deadline = tokio::time::Instant::now() + wait;
            self.idle_check.as_mut().reset(deadline);
            if self.idle_check.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = match &mut this.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        match polled {
            Poll::Pending if this.idle_expired(cx) => {
                // End of stream: hyper closes the connection.
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }
}

/// A counted slot: a connection holds a few, released on drop.
enum Slot {
    Permit(#[allow(dead_code)] OwnedSemaphorePermit),
    Keyed(Arc<KeyedCounts>, String),
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Slot::Keyed(counts, key) = self {
            counts.release(key);
        }
    }
}

/// Counts per key (an address, a certificate) with a cap.
#[derive(Debug, Default)]
struct KeyedCounts {
    counts: Mutex<HashMap<String, usize>>,
}

impl KeyedCounts {
    fn acquire(self: &Arc<Self>, key: String, cap: usize) -> Option<Slot> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Slot::Keyed(Arc::clone(self), key))
    }

    fn release(&self, key: &str) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(key);
            }
        }
    }
}

/// Logs a refused connection, at most a few lines per address a minute
/// (an IPv6 /64 counts as one address: one host commonly holds all of it).
fn refused(listener: &'static str, address: IpAddr, reason: &str) {
    if let Some(suppressed) = refusals().admit(&format!("{listener} {}", log_key(address))) {
        tracing::warn!(
            listener,
            %address,
            reason,
            suppressed_since_last = suppressed,
            "connection refused"
        );
    }
}

/// The address a refusal is counted against: the address itself, or its
/// /64 network for IPv6.
fn log_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Why a TLS handshake failed, in words for the operator; `None` when the
/// client just closed the connection.
fn handshake_refusal(error: &io::Error) -> Option<String> {
    use rustls::{CertificateError, Error as Tls};
    if error.kind() == io::ErrorKind::UnexpectedEof {
        return None;
    }
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Tls>());
    let reason = match tls {
        Some(Tls::NoCertificatesPresented) => "TLS handshake: no client certificate".to_string(),
        Some(Tls::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "TLS handshake: a certificate from a CA this node does not trust".to_string()
        }
        Some(Tls::InvalidCertificate(CertificateError::Expired))
        | Some(Tls::InvalidCertificate(CertificateError::ExpiredContext { .. })) => {
            "TLS handshake: the certificate has expired".to_string()
        }
        Some(Tls::InvalidCertificate(CertificateError::NotValidYet))
        | Some(Tls::InvalidCertificate(CertificateError::NotValidYetContext { .. })) => {
            "TLS handshake: the certificate is not valid yet".to_string()
        }
        Some(Tls::InvalidCertificate(CertificateError::Revoked)) => {
            "TLS handshake: the certificate is revoked".to_string()
        }
        Some(Tls::InvalidMessage(_)) => "TLS handshake: not a TLS client (plaintext?)".to_string(),
        Some(other) => format!("TLS handshake: {other}"),
        None => format!("TLS handshake: {error}"),
    };
    Some(reason)
}

/// Accepts connections on `listener` within `limits` until `stop`, and
/// returns the stream of ready connections tonic serves.
pub fn serve_incoming(
    name: &'static str,
    listener: TcpListener,
    security: Security,
    limits: ListenerLimits,
    stop: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Connection>> {
    let (ready, incoming) = mpsc::channel(64);
    // Connections in the handshake and established ones are counted apart,
    // so slow handshakes from many addresses cannot take the slots of
    // established partners.
    let handshaking = Arc::new(Semaphore::new((limits.max_connections / 4).max(16)));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let handshakes = Arc::new(KeyedCounts::default());
    let callers = Arc::new(KeyedCounts::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause briefly
                    // rather than spin.
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(handshake_permit) = Arc::clone(&handshaking).try_acquire_owned() else {
                refused(
                    name,
                    remote.ip(),
                    "too many handshakes in progress on this listener",
                );
                continue;
            };
            let Some(handshake_slot) =
                handshakes.acquire(remote.ip().to_string(), limits.max_handshakes_per_address)
            else {
                refused(
                    name,
                    remote.ip(),
                    "too many handshakes in progress from this address",
                );
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let security = security.clone();
            let callers = Arc::clone(&callers);
            let connections = Arc::clone(&connections);
            let ready = ready.clone();
            tokio::spawn(async move {
                let handshake = async {
                    match security {
                        Security::Plaintext => Ok((Io::Plain(tcp), None)),
                        Security::Tls(acceptor) => {
                            let tls = acceptor.accept(tcp).await?;
                            let fingerprint = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .map(|leaf| Fingerprint::of_der(leaf));
                            Ok::<_, io::Error>((Io::Tls(Box::new(tls)), fingerprint))
                        }
                    }
                };
                let (io, fingerprint) =
                    match tokio::time::timeout(limits.handshake_timeout, handshake).await {
                        Ok(Ok(done)) => done,
                        Ok(Err(error)) => {
                            match handshake_refusal(&error) {
                                Some(reason) => refused(name, remote.ip(), &reason),
                                // The client left before saying anything
                                // (a TCP probe): nothing was refused.
                                None => tracing::debug!(
                                    listener = name,
                                    %remote,
                                    %error,
                                    "connection closed in the handshake"
                                ),
                            }
                            return;
                        }
                        Err(_) => {
                            refused(name, remote.ip(), "handshake timed out");
                            return;
                        }
                    };
                drop(handshake_slot);
                drop(handshake_permit);
                let Ok(slot) = connections.try_acquire_owned() else {
                    refused(name, remote.ip(), "too many connections on this listener");
                    return;
                };
                let caller = match &fingerprint {
                    Some(fingerprint) => fingerprint.to_string(),
                    None => remote.ip().to_string(),
                };
                let Some(caller_slot) =
                    callers.acquire(caller.clone(), limits.max_connections_per_caller)
                else {
                    refused(
                        name,
                        remote.ip(),
                        &format!("too many connections from caller {caller}"),
                    );
                    return;
                };
                let connection = Connection {
                    io,
                    info: ConnectionInfo {
                        remote,
                        client_certificate: fingerprint,
                        activity: Arc::new(Activity::new()),
                    },
                    idle_timeout: limits.idle_timeout,
                    idle_check: Box::pin(tokio::time::sleep(limits.idle_timeout)),
                    _slots: vec![Slot::Permit(slot), caller_slot],
                };
                let _ = ready.send(Ok(connection)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(incoming)
}

/// A tower layer that counts each call on its connection's [`Activity`]
/// from the request until the response body is done (or dropped), so idle
/// connections can be told from busy ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActivityLayer;

impl<S> tower::Layer<S> for ActivityLayer {
    type Service = ActivityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActivityService { inner }
    }
}

/// The service [`ActivityLayer`] makes.
#[derive(Debug, Clone)]
pub struct ActivityService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ActivityService<S>
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
        let guard = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| info.activity.begin());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(GuardedBody {
                        inner: body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that holds its call's guard until it is done.
struct GuardedBody {
    inner: tonic::body::Body,
    _guard: CallGuard,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A tower layer that ends a call whose answer has not started within
/// `timeout` with DEADLINE_EXCEEDED, except for the methods in `exempt`
/// (client streams such as ingest, which rightly last long and have their
/// own per-message timeout).
#[derive(Debug, Clone, Copy)]
pub struct CallTimeoutLayer {
    pub timeout: Duration,
    pub exempt: &'static [&'static str],
}

impl<S> tower::Layer<S> for CallTimeoutLayer {
    type Service = CallTimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallTimeoutService {
            inner,
            timeout: self.timeout,
            exempt: self.exempt,
        }
    }
}

/// The service [`CallTimeoutLayer`] makes.
#[derive(Debug, Clone)]
pub struct CallTimeoutService<S> {
    inner: S,
    timeout: Duration,
    exempt: &'static [&'static str],
}

impl<S, B> tower::Service<http::Request<B>> for CallTimeoutService<S>
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
        let exempt = self.exempt.contains(&request.uri().path());
        let timeout = self.timeout;
        let response = self.inner.call(request);
        Box::pin(async move {
            if exempt {
                return response.await;
            }
            match tokio::time::timeout(timeout, response).await {
                Ok(response) => response,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "the call took longer than {} s",
                    timeout.as_secs()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(error: rustls::Error) -> io::Error {
        // How tokio-rustls hands rustls errors over.
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn refused_handshakes_say_why_and_probes_are_no_refusal() {
        use rustls::CertificateError;
        let cases = [
            (
                tls(rustls::Error::NoCertificatesPresented),
                "no client certificate",
            ),
            (
                tls(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                )),
                "a CA this node does not trust",
            ),
            (
                tls(rustls::Error::InvalidCertificate(CertificateError::Expired)),
                "has expired",
            ),
            (
                tls(rustls::Error::InvalidMessage(
                    rustls::InvalidMessage::InvalidContentType,
                )),
                "not a TLS client",
            ),
        ];
        for (error, expected) in cases {
            let reason = handshake_refusal(&error).expect("a refusal");
            assert!(reason.contains(expected), "{reason}");
        }
        let probe = io::Error::new(io::ErrorKind::UnexpectedEof, "closed");
        assert_eq!(handshake_refusal(&probe), None);
    }

    #[test]
    fn refusals_from_one_ipv6_network_count_as_one_address() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("v6");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(log_key(a), log_key(b));
        assert_ne!(log_key(a), log_key(c));
        let v4: IpAddr = "192.0.2.7".parse().expect("v4");
        assert_eq!(log_key(v4), "192.0.2.7");
    }
}
