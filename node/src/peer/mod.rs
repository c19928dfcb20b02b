//! The peer API (`samvirke.v1.Peer`): what partner nodes call over mutual
//! TLS, and [`client`], a plain (unpinned) client for tools and tests
//! (nodes call each other through [`crate::partners`]).
//!
//! The TLS layer has already refused anyone without a client certificate
//! chaining to a trust root before a handler runs; handlers identify the
//! caller by the SHA-256 fingerprint of that certificate
//! ([`caller_fingerprint`]), never by anything the caller says about itself.
//! Every call first takes a place under the per-caller limits
//! ([`CallLimiter`]), so one partner's calls cannot crowd out the others',
//! and is then accounted for ([`call`]): data calls are signed, every
//! decision is in the audit log before its answer leaves, every answer has
//! a signed receipt.

pub mod call;
pub mod client;
mod data;

pub use data::{CATALOG, LIST_PILOTS, LIST_PROCUREMENTS, QUERY_READINGS};

use std::sync::Arc;

use samvirke_proto::v1::{
    CheckAccessRequest, CheckAccessResponse, HelloRequest, HelloResponse, SyncGovernanceRequest,
    SyncGovernanceResponse, peer_server::Peer,
};
use tonic::{Request, Response, Status};

use uuid::Uuid;

use samvirke_proto::v1 as pb;

use crate::clock::SharedClock;
use crate::governance::registry::{Registry, operation_from_proto, operation_to_proto};
use crate::governance::{AccessRequest, sync};
use crate::identity::{Fingerprint, NodeIdentity};
use crate::plane::DataPlane;
use crate::plane::answer::AnswerLimits;
use crate::telemetry::untrusted;
use crate::transport::ConnectionInfo;
use crate::transport::limiter::{CallLimiter, CallPermit};
use crate::wire::timestamp;
use call::{Accounts, Refusal};

/// Why a peer call was refused before any authorisation rule ran.
#[derive(Debug, thiserror::Error)]
pub enum PeerAuthError {
    #[error("no TLS client certificate on this connection; the peer API needs mutual TLS")]
    NoClientCertificate,
    #[error(
        "the client certificate {0} is not that of a current member of any fellowship this \
         node follows"
    )]
    NotAMember(Fingerprint),
}

/// The fingerprint of the certificate the caller presented in the TLS
/// handshake.
pub fn caller_fingerprint<T>(request: &Request<T>) -> Result<Fingerprint, PeerAuthError> {
    request
        .extensions()
        .get::<ConnectionInfo>()
        .and_then(|info| info.client_certificate)
        .ok_or(PeerAuthError::NoClientCertificate)
}

/// The peer service's state.
#[derive(Debug)]
pub struct PeerService {
    identity: Arc<NodeIdentity>,
    registry: Arc<Registry>,
    plane: Arc<DataPlane>,
    clock: SharedClock,
    calls: Arc<CallLimiter>,
    answers: AnswerLimits,
    accounts: Arc<Accounts>,
}

const HELLO: &str = "/samvirke.v1.Peer/Hello";
const SYNC_GOVERNANCE: &str = "/samvirke.v1.Peer/SyncGovernance";
const CHECK_ACCESS: &str = "/samvirke.v1.Peer/CheckAccess";

impl PeerService {
    /// A peer service answering as `identity`, judging calls by `registry`,
    /// accounting for them with `accounts`.
    pub fn new(
        identity: Arc<NodeIdentity>,
        registry: Arc<Registry>,
        plane: Arc<DataPlane>,
        clock: SharedClock,
        calls: Arc<CallLimiter>,
        answers: AnswerLimits,
        accounts: Arc<Accounts>,
    ) -> PeerService {
        PeerService {
            identity,
            registry,
            plane,
            clock,
            calls,
            answers,
            accounts,
        }
    }

    /// The caller's certificate and its place under the call limits.
    fn admit<T>(&self, request: &Request<T>) -> Result<(Fingerprint, CallPermit), Status> {
        let caller = caller_fingerprint(request)?;
        let permit = self.calls.admit(&caller.to_string())?;
        Ok((caller, permit))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let (caller, _permit) = self.admit(&request)?;
        let mut call = self.accounts.open(&request, HELLO, false);
        // Only members learn who this node is; anyone else learns only that
        // the TLS handshake worked and it is not a member.
        let Some((code, _)) = self.registry.membership_of(&caller) else {
            return Err(self
                .accounts
                .refused(&call, PeerAuthError::NotAMember(caller).into())
                .await);
        };
        call.caller_code = Some(code);
        // What the caller says about itself is informative only, and never
        // logged or recorded as it came (it could forge log lines).
        let claimed = request
            .get_ref()
            .caller
            .as_ref()
            .map(|c| {
                untrusted(&format!(
                    "{} ({})",
                    c.municipality_name, c.municipality_code
                ))
            })
            .unwrap_or_else(|| "unnamed".to_string());
        tracing::debug!(caller = code, fingerprint = %caller, claimed = %claimed, "peer hello");
        self.accounts
            .noted(&call, format!("hello; the caller calls itself {claimed}"))
            .await?;
        Ok(Response::new(HelloResponse {
            node: Some(self.identity.to_proto()),
            server_time: Some(timestamp(self.clock.now())),
            caller_certificate_fingerprint: caller.to_string(),
        }))
    }

    async fn sync_governance(
        &self,
        request: Request<SyncGovernanceRequest>,
    ) -> Result<Response<SyncGovernanceResponse>, Status> {
        let (caller, _permit) = self.admit(&request)?;
        let mut call = self.accounts.open(&request, SYNC_GOVERNANCE, false);
        let registry = Arc::clone(&self.registry);
        // Roster heads of fellowships not pinned here are what a partner
        // sends when only it was given the first roster: said once, with
        // what to do, rather than left to look like a refused partner.
        let heads = request
            .get_ref()
            .summary
            .as_ref()
            .map(|summary| summary.rosters.as_slice())
            .unwrap_or_default();
        let member = self.registry.membership_of(&caller);
        let partner = match &member {
            Some((code, _)) => format!("municipality {code}"),
            None => format!("with certificate {caller}"),
        };
        self.registry.note_unpinned_offers(&partner, heads);
        let Some((code, fellowships)) = member else {
            // A former member is told it left (so its operator sees it),
            // nothing more.
            let Some((code, fellowships)) = self.registry.former_membership_of(&caller) else {
                return Err(self
                    .accounts
                    .refused(&call, PeerAuthError::NotAMember(caller).into())
                    .await);
            };
            let ask = request.into_inner();
            let answer = tokio::task::spawn_blocking(move || {
                sync::answer_former_member(&registry, code, &fellowships, &ask)
            })
            .await
            .map_err(|e| Status::internal(format!("governance task failed: {e}")))??;
            return Ok(Response::new(answer));
        };
        call.caller_code = Some(code);
        let ask = request.into_inner();
        // Imports verify signatures and fsync: keep them off the async
        // workers. What a page changes is recorded by the registry's own
        // audit entries; a page that changes nothing is the background
        // heartbeat and is not recorded.
        let answer =
            tokio::task::spawn_blocking(move || sync::answer(&registry, code, &fellowships, ask))
                .await
                .map_err(|e| Status::internal(format!("governance task failed: {e}")))??;
        Ok(Response::new(answer))
    }

    async fn check_access(
        &self,
        request: Request<CheckAccessRequest>,
    ) -> Result<Response<CheckAccessResponse>, Status> {
        let (caller, _permit) = self.admit(&request)?;
        let mut call = self.accounts.open(&request, CHECK_ACCESS, false);
        let ask = request.into_inner();
        let operation = operation_from_proto(ask.operation)
            .map(|op| op.as_str())
            .unwrap_or("");
        call.about(&ask.agreement_id, operation, &ask.dataset_id);
        let decided = async {
            let plane = Arc::clone(&self.plane);
            let access = tokio::task::spawn_blocking(move || {
                access_request(caller, &ask, &plane).map(|access| (access, ask))
            })
            .await
            .map_err(|e| Status::internal(format!("storage task failed: {e}")))??;
            let (access, _) = access;
            Ok::<_, Refusal>(self.registry.authorize(&access)?)
        }
        .await;
        let grant = match decided {
            Ok(grant) => grant,
            Err(refusal) => return Err(self.accounts.refused(&call, refusal).await),
        };
        call.granted(&grant);
        self.accounts
            .noted(&call, "access check: allowed".to_string())
            .await?;
        Ok(Response::new(CheckAccessResponse {
            agreement_id: grant.agreement_id.to_string(),
            caller_member_code: grant.caller_code,
            operations: grant
                .operations
                .iter()
                .map(|op| operation_to_proto(*op) as i32)
                .collect(),
            min_group_size: grant.min_group_size.unwrap_or(0),
            excluded_fields: grant.excluded_fields,
        }))
    }
    async fn catalog(
        &self,
        request: Request<pb::PeerCatalogRequest>,
    ) -> Result<Response<pb::PeerCatalogResponse>, Status> {
        self.catalog_rpc(request).await
    }

    type QueryReadingsStream = crate::plane::answer::AnswerStream;

    async fn query_readings(
        &self,
        request: Request<pb::PeerReadingQuery>,
    ) -> Result<Response<Self::QueryReadingsStream>, Status> {
        self.query_readings_rpc(request).await
    }

    async fn list_pilots(
        &self,
        request: Request<pb::PeerPilotQuery>,
    ) -> Result<Response<pb::ListPeerPilotsResponse>, Status> {
        self.list_pilots_rpc(request).await
    }

    async fn list_procurements(
        &self,
        request: Request<pb::PeerProcurementQuery>,
    ) -> Result<Response<pb::ListPeerProcurementsResponse>, Status> {
        self.list_procurements_rpc(request).await
    }
}

/// The authorisation question a CheckAccess request asks. The dataset is
/// described from this node's catalog (kind, keywords), exactly as the data
/// RPCs describe it, so the answer matches what a data call would get.
fn access_request(
    caller: Fingerprint,
    ask: &CheckAccessRequest,
    plane: &DataPlane,
) -> Result<AccessRequest, Status> {
    let agreement_id = Uuid::parse_str(&ask.agreement_id).map_err(|_| {
        Status::invalid_argument(format!(
            "agreement_id: `{}` is not a UUID",
            ask.agreement_id
        ))
    })?;
    let operation = operation_from_proto(ask.operation)
        .ok_or_else(|| Status::invalid_argument("operation: must be CATALOG, READ or AGGREGATE"))?;
    let dataset = (!ask.dataset_id.is_empty()).then(|| plane.dataset_ref(&ask.dataset_id));
    Ok(AccessRequest {
        caller_fingerprint: caller,
        claimed_code: (ask.claimed_member_code != 0).then_some(ask.claimed_member_code),
        agreement_id,
        operation,
        dataset,
    })
}
