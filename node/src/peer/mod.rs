//! The peer API (`samvirke.v1.Peer`): what partner nodes call over mutual
//! TLS, and [`client`], how this node calls them.
//!
//! The TLS layer has already refused anyone without a client certificate
//! chaining to a trust root before a handler runs; handlers identify the
//! caller by the SHA-256 fingerprint of that certificate
//! ([`caller_fingerprint`]), never by anything the caller says about itself.

pub mod client;

use std::sync::Arc;

use samvirke_proto::v1::{
    CheckAccessRequest, CheckAccessResponse, HelloRequest, HelloResponse, SyncGovernanceRequest,
    SyncGovernanceResponse, peer_server::Peer,
};
use tonic::{Request, Response, Status};

use crate::clock::SharedClock;
use crate::identity::{Fingerprint, NodeIdentity};
use crate::local::timestamp;

/// Why a peer call was refused before any authorisation rule ran.
#[derive(Debug, thiserror::Error)]
pub enum PeerAuthError {
    #[error("no TLS client certificate on this connection; the peer API needs mutual TLS")]
    NoClientCertificate,
}

/// The fingerprint of the certificate the caller presented in the TLS
/// handshake.
pub fn caller_fingerprint<T>(request: &Request<T>) -> Result<Fingerprint, PeerAuthError> {
    request
        .peer_certs()
        .and_then(|certs| certs.first().map(|leaf| Fingerprint::of_der(leaf)))
        .ok_or(PeerAuthError::NoClientCertificate)
}

/// The peer service's state.
#[derive(Debug)]
pub struct PeerService {
    identity: Arc<NodeIdentity>,
    clock: SharedClock,
}

impl PeerService {
    /// A peer service answering as `identity`.
    pub fn new(identity: Arc<NodeIdentity>, clock: SharedClock) -> PeerService {
        PeerService { identity, clock }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let caller = caller_fingerprint(&request)?;
        let claimed = request
            .get_ref()
            .caller
            .as_ref()
            .map(|c| format!("{} ({})", c.municipality_name, c.municipality_code))
            .unwrap_or_else(|| "unnamed".to_string());
        tracing::info!(caller = %caller, claimed = %claimed, "peer hello");
        Ok(Response::new(HelloResponse {
            node: Some(self.identity.to_proto()),
            server_time: Some(timestamp(self.clock.now())),
            caller_certificate_fingerprint: caller.to_string(),
        }))
    }

    async fn sync_governance(
        &self,
        _request: Request<SyncGovernanceRequest>,
    ) -> Result<Response<SyncGovernanceResponse>, Status> {
        Err(Status::unimplemented("governance sync is being wired in"))
    }

    async fn check_access(
        &self,
        _request: Request<CheckAccessRequest>,
    ) -> Result<Response<CheckAccessResponse>, Status> {
        Err(Status::unimplemented("access checks are being wired in"))
    }
}
