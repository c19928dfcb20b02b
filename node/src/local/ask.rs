//! The analyst's RPCs: one question to the fellowship
//! ([`crate::federate`]), what the fellowship lets this node see, its
//! partners, and the receipts partners signed for this node's answers.

use std::time::Duration;

use samvirke_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::LocalService;
use super::auth::Role;
use crate::federate::ask::AskStream;
use crate::federate::{DEFAULT_DEADLINE, MAX_DEADLINE};

impl LocalService {
    pub(super) async fn ask_rpc(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<AskStream>, Status> {
        let (caller, permit) = self
            .admit(&request, Role::Read, "samvirke.v1.Local/Ask")
            .await?;
        let stream = self
            .federation
            .ask(request.into_inner(), &caller.name, permit)
            .await?;
        Ok(Response::new(stream))
    }

    pub(super) async fn fellowship_catalog_rpc(
        &self,
        request: Request<pb::FellowshipCatalogRequest>,
    ) -> Result<Response<pb::FellowshipCatalogResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/FellowshipCatalog")
            .await?;
        let ask = request.into_inner();
        let deadline = match ask.deadline_ms {
            0 => DEFAULT_DEADLINE,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_DEADLINE),
        };
        Ok(Response::new(
            self.federation
                .fellowship_catalog(&ask.fellowship, &ask.search.unwrap_or_default(), deadline)
                .await,
        ))
    }

    pub(super) async fn list_partners_rpc(
        &self,
        request: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/ListPartners")
            .await?;
        Ok(Response::new(
            self.federation.partners(request.get_ref().probe).await,
        ))
    }

    pub(super) async fn list_receipts_rpc(
        &self,
        request: Request<pb::ListReceiptsRequest>,
    ) -> Result<Response<pb::ListReceiptsResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/ListReceipts")
            .await?;
        let ask = request.into_inner();
        let receipts = self.federation.receipts().clone();
        let (receipts, more) = tokio::task::spawn_blocking(move || {
            receipts.list(ask.provider, &ask.after, ask.limit as usize)
        })
        .await
        .map_err(|e| Status::internal(format!("receipts task failed: {e}")))??;
        Ok(Response::new(pb::ListReceiptsResponse { receipts, more }))
    }

    pub(super) async fn get_receipt_rpc(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::Receipt>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/GetReceipt")
            .await?;
        let id = request.into_inner().id;
        let receipts = self.federation.receipts().clone();
        let lookup = id.clone();
        let found = tokio::task::spawn_blocking(move || receipts.get(&lookup))
            .await
            .map_err(|e| Status::internal(format!("receipts task failed: {e}")))??;
        found.map(Response::new).ok_or_else(|| {
            Status::not_found(format!(
                "no receipt `{}` is kept on this node",
                crate::telemetry::untrusted(&id)
            ))
        })
    }
}
