//! Calling partner nodes: a mutual-TLS gRPC channel that presents this
//! node's certificate and trusts only the configured roots, and
//! [`PeerPool`], which keeps one channel per partner so repeated calls
//! (anti-entropy rounds, queries) reuse the connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use samvirke_proto::v1::peer_client::PeerClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::identity::TlsMaterial;

/// How long to wait for a partner's TCP connect and TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a partner could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum PeerClientError {
    #[error("`{endpoint}` is not a valid peer endpoint: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
}

/// Opens a mutual-TLS channel to the partner at `endpoint`
/// (`https://host:port`), presenting `tls`'s certificate.
pub async fn connect(
    endpoint: &str,
    tls: &TlsMaterial,
) -> Result<PeerClient<Channel>, PeerClientError> {
    let channel =
        peer_endpoint(endpoint, tls)?
            .connect()
            .await
            .map_err(|e| PeerClientError::Connect {
                endpoint: endpoint.to_string(),
                reason: error_chain(&e),
            })?;
    Ok(PeerClient::new(channel))
}

/// How long one call to a partner may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One lazily connected channel per partner endpoint. Channels reconnect
/// by themselves after a partner restarts, so the pool never needs
/// invalidating; a partner that is down costs one failed call per use.
#[derive(Debug, Clone)]
pub struct PeerPool {
    tls: Arc<TlsMaterial>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerPool {
    /// A pool presenting `tls` to every partner.
    pub fn new(tls: TlsMaterial) -> PeerPool {
        PeerPool {
            tls: Arc::new(tls),
            channels: Arc::default(),
        }
    }

    /// A client for the partner at `endpoint`, reusing its channel.
    pub fn client(&self, endpoint: &str) -> Result<PeerClient<Channel>, PeerClientError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(endpoint) {
            return Ok(PeerClient::new(channel.clone()));
        }
        let channel = peer_endpoint(endpoint, &self.tls)?
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(PeerClient::new(channel))
    }
}

/// The tonic endpoint for a partner, with mutual TLS configured.
fn peer_endpoint(endpoint: &str, tls: &TlsMaterial) -> Result<Endpoint, PeerClientError> {
    let bad = |reason: String| PeerClientError::BadEndpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    if !endpoint.starts_with("https://") {
        return Err(bad("peer endpoints are https:// URLs".to_string()));
    }
    let tls_config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.trust_roots_pem))
        .identity(Identity::from_pem(
            &tls.certificate_chain_pem,
            tls.private_key_pem(),
        ));
    Ok(Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| bad(e.to_string()))?
        .tls_config(tls_config)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true))
}

/// An error and its sources on one line: tonic's transport errors keep the
/// useful part (the TLS alert, the refused connection) in the source chain.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
