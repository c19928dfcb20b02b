//! The peer API's data RPCs. Each one asks the registry whether the caller
//! may, under the agreement it names, perform the operation on the dataset
//! (the same [`crate::governance::authorize`] every peer call uses), checks
//! the caller's signature on the request, and then answers only what the
//! agreement discloses ([`Disclosure`]), with a signed receipt; every call
//! is accounted for by [`super::call`].
//!
//! Authorisation comes before anything about the dataset is looked at, and
//! a dataset this node does not publish is described to the check by its
//! id alone, so the answer to a caller the agreement does not cover is the
//! same whether the dataset exists or not.

use std::sync::Arc;

use samvirke_proto::v1 as pb;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::PeerService;
use super::call::{Call, Refusal};
use crate::data::catalog::{CatalogSnapshot, Dataset, DatasetKind};
use crate::governance::{AccessRequest, Denial, Grant, Operation};
use crate::identity::Fingerprint;
use crate::plane::Disclosure;
use crate::plane::answer::{self, AnswerStream, blocking};
use crate::wire;

pub const CATALOG: &str = "/samvirke.v1.Peer/Catalog";
pub const QUERY_READINGS: &str = "/samvirke.v1.Peer/QueryReadings";
pub const LIST_PILOTS: &str = "/samvirke.v1.Peer/ListPilots";
pub const LIST_PROCUREMENTS: &str = "/samvirke.v1.Peer/ListProcurements";

fn agreement_id(text: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(text).map_err(|_| {
        Status::invalid_argument(format!(
            "agreement_id: `{}` is not a UUID",
            crate::telemetry::untrusted(text)
        ))
    })
}

impl PeerService {
    /// The decoded catalog (no store I/O once built).
    async fn catalog_snapshot(&self) -> Result<Arc<CatalogSnapshot>, Status> {
        match self.plane.catalog().cached() {
            Some(snapshot) => Ok(snapshot),
            None => blocking(&self.plane, |plane| plane.catalog().snapshot()).await,
        }
    }

    /// The dataset `id` of this node for a caller asking under
    /// `agreement`. A dataset this node does not publish is reported as
    /// NOT_FOUND only to a caller the agreement would let ask about that id;
    /// anyone else gets the denial, so ids cannot be probed.
    async fn dataset(
        &self,
        caller: Fingerprint,
        agreement: Uuid,
        operation: Operation,
        id: &str,
    ) -> Result<Dataset, Refusal> {
        match self.catalog_snapshot().await?.get(id) {
            Some(dataset) => Ok(dataset.clone()),
            None => {
                self.registry.authorize(&AccessRequest {
                    caller_fingerprint: caller,
                    claimed_code: None,
                    agreement_id: agreement,
                    operation,
                    dataset: Some(self.plane.dataset_ref(id)),
                })?;
                Err(Status::not_found(format!(
                    "dataset `{}` is not published on this node",
                    crate::telemetry::untrusted(id)
                ))
                .into())
            }
        }
    }

    /// Authorises `operation` on `dataset` under `agreement`.
    fn grant(
        &self,
        caller: Fingerprint,
        agreement: Uuid,
        operation: Operation,
        dataset: Option<&Dataset>,
    ) -> Result<Grant, Denial> {
        self.registry.authorize(&AccessRequest {
            caller_fingerprint: caller,
            claimed_code: None,
            agreement_id: agreement,
            operation,
            dataset: dataset.map(Dataset::as_ref),
        })
    }

    /// The caller's certificate, which every call on this listener has.
    fn caller(call: &Call) -> Result<Fingerprint, Refusal> {
        call.caller
            .ok_or_else(|| super::PeerAuthError::NoClientCertificate.into())
    }

    pub(super) async fn catalog_rpc(
        &self,
        request: Request<pb::PeerCatalogRequest>,
    ) -> Result<Response<pb::PeerCatalogResponse>, Status> {
        let (_, _permit) = self.admit(&request)?;
        let mut call = self.accounts.open(&request, CATALOG, true);
        match self.catalog_answer(&mut call, request.into_inner()).await {
            Ok(answer) => Ok(Response::new(answer)),
            Err(refusal) => Err(self.accounts.refused(&call, refusal).await),
        }
    }

    async fn catalog_answer(
        &self,
        call: &mut Call,
        ask: pb::PeerCatalogRequest,
    ) -> Result<pb::PeerCatalogResponse, Refusal> {
        call.about(&ask.agreement_id, Operation::Catalog.as_str(), "");
        let agreement = agreement_id(&ask.agreement_id)?;
        let grant = self.grant(Self::caller(call)?, agreement, Operation::Catalog, None)?;
        self.accounts.check_signature(call, &grant)?;
        let catalog = self.catalog_snapshot().await?;
        let pseudonyms = self.plane.pseudonyms.clone();
        let mut answer = pb::PeerCatalogResponse {
            datasets: catalog
                .datasets
                .iter()
                .filter(|d| grant.scope.covers(&d.as_ref()))
                .map(|d| Disclosure::new(&grant, d, pseudonyms.clone(), None).dataset(d))
                .collect(),
            receipt: None,
        };
        let rows = answer.datasets.len() as u64;
        answer.receipt = Some(self.accounts.answered(call, &answer, rows).await?);
        Ok(answer)
    }

    pub(super) async fn query_readings_rpc(
        &self,
        request: Request<pb::PeerReadingQuery>,
    ) -> Result<Response<AnswerStream>, Status> {
        let (_, permit) = self.admit(&request)?;
        let mut call = self.accounts.open(&request, QUERY_READINGS, true);
        match self
            .query_readings_answer(&mut call, request.into_inner(), permit)
            .await
        {
            Ok(answer) => Ok(Response::new(answer)),
            Err(refusal) => Err(self.accounts.refused(&call, refusal).await),
        }
    }

    async fn query_readings_answer(
        &self,
        call: &mut Call,
        ask: pb::PeerReadingQuery,
        permit: crate::transport::limiter::CallPermit,
    ) -> Result<AnswerStream, Refusal> {
        let dataset_id = ask
            .query
            .as_ref()
            .map(|q| q.dataset_id.clone())
            .unwrap_or_default();
        let aggregate = ask.query.as_ref().is_some_and(|q| !q.bucket.is_empty());
        let operation = if aggregate {
            Operation::Aggregate
        } else {
            Operation::Read
        };
        call.about(&ask.agreement_id, operation.as_str(), &dataset_id);
        let caller = Self::caller(call)?;
        let agreement = agreement_id(&ask.agreement_id)?;
        let question = wire::query_from_proto(ask.query.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(format!("query.{e}")))?;
        let dataset = self
            .dataset(caller, agreement, operation, &question.query.dataset)
            .await?;
        // An aggregate is allowed by an aggregate-only agreement and by one
        // that allows raw reads.
        let grant = match question.aggregate {
            // A raw question under an aggregate-only agreement gets the
            // advice to ask for aggregates (from the disclosure below).
            None => match self.grant(caller, agreement, Operation::Read, Some(&dataset)) {
                Err(denied @ Denial::OperationNotAllowed { .. }) => self
                    .grant(caller, agreement, Operation::Aggregate, Some(&dataset))
                    .map_err(|_| denied)?,
                other => other?,
            },
            Some(_) => match self.grant(caller, agreement, Operation::Aggregate, Some(&dataset)) {
                Err(denied @ Denial::OperationNotAllowed { .. }) => self
                    .grant(caller, agreement, Operation::Read, Some(&dataset))
                    .map_err(|_| denied)?,
                other => other?,
            },
        };
        self.accounts.check_signature(call, &grant)?;
        let policy = self.registry.grid_policy(&dataset.as_ref());
        let mut disclosure =
            Disclosure::new(&grant, &dataset, self.plane.pseudonyms.clone(), policy);
        let now = self.clock.now();
        let (plan, disclosure) = {
            let plane = Arc::clone(&self.plane);
            tokio::task::spawn_blocking(move || {
                disclosure
                    .plan(&plane, &dataset, question, now)
                    .map(|plan| (plan, disclosure))
            })
            .await
            .map_err(|e| Status::internal(format!("planning task failed: {e}")))??
        };
        // Every allowed answer is in the audit before its first chunk
        // leaves, aggregate-only ones with their parameters.
        call.detail = plan.describe();
        self.accounts.allowed(call).await?;
        let end = self.accounts.stream_end(call.clone());
        Ok(answer::readings(
            &self.plane,
            plan,
            Some(disclosure),
            self.answers,
            permit,
            Some(end),
        )
        .await?)
    }

    /// Authorises a records read of `dataset_id` of kind `kind`.
    async fn records_grant(
        &self,
        call: &mut Call,
        agreement: &str,
        dataset_id: &str,
        kind: DatasetKind,
    ) -> Result<Disclosure, Refusal> {
        call.about(agreement, Operation::Read.as_str(), dataset_id);
        let caller = Self::caller(call)?;
        let agreement = agreement_id(agreement)?;
        if dataset_id.is_empty() {
            return Err(Status::invalid_argument(
                "filter.dataset_id: required; it is what the agreement must cover",
            )
            .into());
        }
        let dataset = self
            .dataset(caller, agreement, Operation::Read, dataset_id)
            .await?;
        let grant = self.grant(caller, agreement, Operation::Read, Some(&dataset))?;
        self.accounts.check_signature(call, &grant)?;
        if dataset.kind != kind {
            return Err(Status::invalid_argument(format!(
                "filter.dataset_id: `{dataset_id}` is a {} dataset, not {kind}",
                dataset.kind
            ))
            .into());
        }
        Ok(Disclosure::new(
            &grant,
            &dataset,
            self.plane.pseudonyms.clone(),
            None,
        ))
    }

    pub(super) async fn list_pilots_rpc(
        &self,
        request: Request<pb::PeerPilotQuery>,
    ) -> Result<Response<pb::ListPeerPilotsResponse>, Status> {
        let (_, _permit) = self.admit(&request)?;
        let mut call = self.accounts.open(&request, LIST_PILOTS, true);
        match self.pilots_answer(&mut call, request.into_inner()).await {
            Ok(answer) => Ok(Response::new(answer)),
            Err(refusal) => Err(self.accounts.refused(&call, refusal).await),
        }
    }

    async fn pilots_answer(
        &self,
        call: &mut Call,
        ask: pb::PeerPilotQuery,
    ) -> Result<pb::ListPeerPilotsResponse, Refusal> {
        let filter = ask.filter.unwrap_or_default();
        let disclosure = self
            .records_grant(
                call,
                &ask.agreement_id,
                &filter.dataset_id,
                DatasetKind::Pilot,
            )
            .await?;
        disclosure.check_pilot_filter(&filter)?;
        let pilots = blocking(&self.plane, move |plane| plane.records.list_pilots(&filter)).await?;
        let mut answer = pb::ListPeerPilotsResponse {
            pilots: pilots.into_iter().map(|p| disclosure.pilot(p)).collect(),
            receipt: None,
        };
        let rows = answer.pilots.len() as u64;
        answer.receipt = Some(self.accounts.answered(call, &answer, rows).await?);
        Ok(answer)
    }

    pub(super) async fn list_procurements_rpc(
        &self,
        request: Request<pb::PeerProcurementQuery>,
    ) -> Result<Response<pb::ListPeerProcurementsResponse>, Status> {
        let (_, _permit) = self.admit(&request)?;
        let mut call = self.accounts.open(&request, LIST_PROCUREMENTS, true);
        match self
            .procurements_answer(&mut call, request.into_inner())
            .await
        {
            Ok(answer) => Ok(Response::new(answer)),
            Err(refusal) => Err(self.accounts.refused(&call, refusal).await),
        }
    }

    async fn procurements_answer(
        &self,
        call: &mut Call,
        ask: pb::PeerProcurementQuery,
    ) -> Result<pb::ListPeerProcurementsResponse, Refusal> {
        let filter = ask.filter.unwrap_or_default();
        let disclosure = self
            .records_grant(
                call,
                &ask.agreement_id,
                &filter.dataset_id,
                DatasetKind::Procurement,
            )
            .await?;
        disclosure.check_procurement_filter(&filter)?;
        let procurements = blocking(&self.plane, move |plane| {
            plane.records.list_procurements(&filter)
        })
        .await?;
        let mut answer = pb::ListPeerProcurementsResponse {
            procurements: procurements
                .into_iter()
                .map(|p| disclosure.procurement(p))
                .collect(),
            receipt: None,
        };
        let rows = answer.procurements.len() as u64;
        answer.receipt = Some(self.accounts.answered(call, &answer, rows).await?);
        Ok(answer)
    }
}
