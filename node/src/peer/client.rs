//! Calling partner nodes: a mutual-TLS gRPC channel that presents this
//! node's certificate and trusts only the configured roots.

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
    let channel = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| bad(e.to_string()))?
        .tls_config(tls_config)
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| PeerClientError::Connect {
            endpoint: endpoint.to_string(),
            reason: error_chain(&e),
        })?;
    Ok(PeerClient::new(channel))
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
