//! The peer API's data RPCs. Each one asks the registry whether the caller
//! may, under the agreement it names, perform the operation on the dataset
//! (the same [`crate::governance::authorize`] every peer call uses), and
//! then answers only what the agreement discloses ([`Disclosure`]).
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
use crate::answer::{self, AnswerStream, blocking};
use crate::data::catalog::{Dataset, DatasetKind};
use crate::governance::{AccessRequest, Denial, Grant, Operation};
use crate::identity::Fingerprint;
use crate::plane::Disclosure;
use crate::wire;

fn agreement_id(text: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(text).map_err(|_| {
        Status::invalid_argument(format!(
            "agreement_id: `{}` is not a UUID",
            crate::telemetry::untrusted(text)
        ))
    })
}

impl PeerService {
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
    ) -> Result<Dataset, Status> {
        let key = id.to_string();
        match blocking(&self.plane, move |plane| plane.catalog().get(&key)).await? {
            Some(dataset) => Ok(dataset),
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
                )))
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
        let grant = self.registry.authorize(&AccessRequest {
            caller_fingerprint: caller,
            claimed_code: None,
            agreement_id: agreement,
            operation,
            dataset: dataset.map(Dataset::as_ref),
        })?;
        tracing::debug!(
            caller = grant.caller_code,
            agreement = %grant.agreement_id,
            operation = operation.as_str(),
            dataset = dataset.map(|d| d.id.as_str()).unwrap_or(""),
            "peer request allowed"
        );
        Ok(grant)
    }

    pub(super) async fn catalog_rpc(
        &self,
        request: Request<pb::PeerCatalogRequest>,
    ) -> Result<Response<pb::PeerCatalogResponse>, Status> {
        let (caller, _permit) = self.admit(&request)?;
        let agreement = agreement_id(&request.get_ref().agreement_id)?;
        let grant = self.grant(caller, agreement, Operation::Catalog, None)?;
        let datasets = blocking(&self.plane, |plane| plane.catalog().list()).await?;
        let pseudonyms = self.plane.pseudonyms.clone();
        Ok(Response::new(pb::PeerCatalogResponse {
            datasets: datasets
                .iter()
                .filter(|d| grant.scope.covers(&d.as_ref()))
                .map(|d| Disclosure::new(&grant, d, pseudonyms.clone(), None).dataset(d))
                .collect(),
        }))
    }

    pub(super) async fn query_readings_rpc(
        &self,
        request: Request<pb::PeerReadingQuery>,
    ) -> Result<Response<AnswerStream>, Status> {
        let (caller, permit) = self.admit(&request)?;
        let ask = request.into_inner();
        let agreement = agreement_id(&ask.agreement_id)?;
        let question = wire::query_from_proto(ask.query.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(format!("query.{e}")))?;
        let operation = if question.aggregate.is_some() {
            Operation::Aggregate
        } else {
            Operation::Read
        };
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
        Ok(Response::new(
            answer::readings(&self.plane, plan, Some(disclosure), self.answers, permit).await?,
        ))
    }

    /// Authorises a records read of `dataset_id` of kind `kind`.
    async fn records_grant(
        &self,
        caller: Fingerprint,
        agreement: &str,
        dataset_id: &str,
        kind: DatasetKind,
    ) -> Result<Disclosure, Status> {
        let agreement = agreement_id(agreement)?;
        if dataset_id.is_empty() {
            return Err(Status::invalid_argument(
                "filter.dataset_id: required; it is what the agreement must cover",
            ));
        }
        let dataset = self
            .dataset(caller, agreement, Operation::Read, dataset_id)
            .await?;
        let grant = self.grant(caller, agreement, Operation::Read, Some(&dataset))?;
        if dataset.kind != kind {
            return Err(Status::invalid_argument(format!(
                "filter.dataset_id: `{dataset_id}` is a {} dataset, not {kind}",
                dataset.kind
            )));
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
        let (caller, _permit) = self.admit(&request)?;
        let ask = request.into_inner();
        let filter = ask.filter.unwrap_or_default();
        let disclosure = self
            .records_grant(
                caller,
                &ask.agreement_id,
                &filter.dataset_id,
                DatasetKind::Pilot,
            )
            .await?;
        disclosure.check_pilot_filter(&filter)?;
        let pilots = blocking(&self.plane, move |plane| plane.records.list_pilots(&filter)).await?;
        Ok(Response::new(pb::ListPeerPilotsResponse {
            pilots: pilots.into_iter().map(|p| disclosure.pilot(p)).collect(),
        }))
    }

    pub(super) async fn list_procurements_rpc(
        &self,
        request: Request<pb::PeerProcurementQuery>,
    ) -> Result<Response<pb::ListPeerProcurementsResponse>, Status> {
        let (caller, _permit) = self.admit(&request)?;
        let ask = request.into_inner();
        let filter = ask.filter.unwrap_or_default();
        let disclosure = self
            .records_grant(
                caller,
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
        Ok(Response::new(pb::ListPeerProcurementsResponse {
            procurements: procurements
                .into_iter()
                .map(|p| disclosure.procurement(p))
                .collect(),
        }))
    }
}
