//! The local API (`samvirke.v1.Local`): the service the municipality's own
//! users and applications call, on its own listener, with bearer tokens.
//! Each RPC states the role it needs at its first line, through
//! [`LocalService::admit`], which also takes the call's place under the
//! per-token limits. Governance imports, catalog changes and every use of
//! an admin-only RPC are recorded in the audit log with the token.
//!
//! - [`data`]: catalog, readings and records;
//! - [`ingest`]: readings acknowledged batch by batch, resumable sessions;
//! - [`ask`]: questions to the fellowship, its catalog, partners, receipts;
//! - [`audit`]: tailing and exporting the audit log;
//! - [`backup`]: a consistent snapshot of the store for backups;
//! - [`export`]: the catalog as DCAT-AP-DK for open-data portals.

pub mod ask;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod data;
pub mod export;
pub mod ingest;

use std::sync::Arc;

use samvirke_proto::v1::{
    ImportAgreementRequest, ImportAgreementResponse, ImportRosterRequest, ImportRosterResponse,
    ListGovernanceRequest, ListGovernanceResponse, ListenerInfo, StatusRequest, StatusResponse,
    local_server::Local,
};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use samvirke_proto::v1 as pb;

use crate::audit::{AuditLog, Entry};
use crate::clock::SharedClock;
use crate::federate::Federation;
use crate::governance::registry::{Imported, ListCursor, Registry, RosterImport};
use crate::identity::NodeIdentity;
use crate::ingest::Pipeline;
use crate::plane::DataPlane;
use crate::plane::answer::AnswerLimits;
use crate::store::Store;
use crate::transport::limiter::{CallLimiter, CallPermit};
use auth::{Principal, Role, TokenRegistry};

/// Rosters and agreements in one `ListGovernance` page when the caller
/// does not say.
pub const LIST_PAGE_DEFAULT: u32 = 100;
/// Most rosters and agreements in one `ListGovernance` page.
pub const LIST_PAGE_MAX: u32 = 1000;
/// Most encoded bytes of one `ListGovernance` page's documents: a quarter
/// of the transport's 4 MiB message limit, so large rosters or agreements
/// cannot make a page fail.
pub const LIST_PAGE_BYTES: usize = 1024 * 1024;

/// The local service's state.
#[derive(Debug)]
pub struct LocalService {
    identity: Arc<NodeIdentity>,
    tokens: Arc<TokenRegistry>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    plane: Arc<DataPlane>,
    ingest: Arc<Pipeline>,
    /// Cancelled when the node stops; long calls (ingest streams) end on it.
    stopping: tokio_util::sync::CancellationToken,
    clock: SharedClock,
    started_at: OffsetDateTime,
    listeners: Vec<ListenerInfo>,
    calls: Arc<CallLimiter>,
    answers: AnswerLimits,
    federation: Arc<Federation>,
    audit: Arc<AuditLog>,
    /// Where backups spool their snapshot (the data directory); `None`:
    /// no backups.
    backup_dir: Option<std::path::PathBuf>,
    /// Held while a backup runs: one at a time.
    backup_running: Arc<tokio::sync::Mutex<()>>,
    export: export::ExportSettings,
}

impl LocalService {
    /// A local service reporting `listeners` as this node's bound sockets.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Arc<NodeIdentity>,
        tokens: Arc<TokenRegistry>,
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        plane: Arc<DataPlane>,
        ingest: Arc<Pipeline>,
        clock: SharedClock,
        listeners: Vec<ListenerInfo>,
        calls: Arc<CallLimiter>,
        answers: AnswerLimits,
        federation: Arc<Federation>,
        audit: Arc<AuditLog>,
    ) -> LocalService {
        let started_at = clock.now();
        LocalService {
            identity,
            tokens,
            store,
            registry,
            plane,
            ingest,
            clock,
            started_at,
            listeners,
            calls,
            answers,
            federation,
            audit,
            backup_dir: None,
            backup_running: Arc::new(tokio::sync::Mutex::new(())),
            stopping: tokio_util::sync::CancellationToken::new(),
            export: export::ExportSettings::default(),
        }
    }

    /// Ends long calls (ingest streams) when `stopping` is cancelled, so
    /// that a client cannot hold up the node's shutdown.
    pub fn with_stop(mut self, stopping: tokio_util::sync::CancellationToken) -> LocalService {
        self.stopping = stopping;
        self
    }

    /// Lets `Local/Backup` spool its snapshot in `dir` (the node's data
    /// directory: on the same disk as the store, and as private).
    pub fn with_backup_dir(mut self, dir: std::path::PathBuf) -> LocalService {
        self.backup_dir = Some(dir);
        self
    }

    /// The same service, exporting its catalog with `settings`.
    pub fn with_export(mut self, settings: export::ExportSettings) -> LocalService {
        self.export = settings;
        self
    }

    /// Records what a local token did (an `admin` entry); the action's
    /// answer waits for it, and fails if it cannot be recorded.
    pub(crate) async fn record(
        &self,
        caller: &Principal,
        method: &str,
        outcome: &str,
        detail: String,
    ) -> Result<u64, Status> {
        self.audit
            .append(Entry {
                event: "admin".to_string(),
                outcome: outcome.to_string(),
                token: caller.name.clone(),
                operation: method.to_string(),
                detail: crate::audit::chain::bounded(&crate::telemetry::untrusted(&detail)),
                ..Entry::default()
            })
            .await
            .map_err(|error| {
                tracing::error!(%error, "a local action could not be recorded in the audit log");
                Status::unavailable(
                    "this node cannot record the action in its audit log; its operator has the \
                     details",
                )
            })
    }

    /// Checks the caller's token holds `role` for `method`, without
    /// taking a place under the call limits (the call itself does): for
    /// front ends that must refuse a caller before reading its request,
    /// such as the HTTP API ([`crate::http`]).
    pub(crate) fn authenticate<T>(
        &self,
        request: &Request<T>,
        role: Role,
        method: &'static str,
    ) -> Result<Arc<Principal>, Status> {
        Ok(self.tokens.authorize(request, role, method)?)
    }

    /// Records an operator's import of a governance document: refused
    /// (with the reason), or accepted or unchanged (with `describe` of the
    /// document); returns the import's outcome.
    async fn record_import<T, E>(
        &self,
        caller: &Principal,
        method: &str,
        imported: Result<(Imported, T), E>,
        describe: impl FnOnce(&T) -> String,
    ) -> Result<(Imported, T), Status>
    where
        E: std::fmt::Display + Into<Status>,
    {
        match imported {
            Ok((imported, document)) => {
                let outcome = if imported == Imported::Changed {
                    "accepted"
                } else {
                    "unchanged"
                };
                self.record(caller, method, outcome, describe(&document))
                    .await?;
                Ok((imported, document))
            }
            Err(error) => {
                self.record(caller, method, "refused", error.to_string())
                    .await?;
                Err(error.into())
            }
        }
    }

    /// Checks the caller's token holds `role` for `method`, and takes the
    /// call's place under the per-token limits. A token holding the
    /// `admin` role leaves an audit entry for every call it makes (calls
    /// that need `admin` record what they did themselves): an admin token
    /// is the key to everything here, and its use must be traceable.
    pub(crate) async fn admit<T>(
        &self,
        request: &Request<T>,
        role: Role,
        method: &'static str,
    ) -> Result<(Arc<Principal>, CallPermit), Status> {
        let caller = self.tokens.authorize(request, role, method)?;
        let permit = self.calls.admit(&format!("token {}", caller.name))?;
        if role != Role::Admin && caller.has(Role::Admin) {
            self.record(&caller, method, "allowed", "admin token used".to_string())
                .await?;
        }
        Ok((caller, permit))
    }
}

#[tonic::async_trait]
impl Local for LocalService {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let (caller, _permit) = self
            .admit(&request, Role::Read, "samvirke.v1.Local/Status")
            .await?;
        let uptime = (self.clock.now() - self.started_at).whole_seconds().max(0);
        Ok(Response::new(StatusResponse {
            node: Some(self.identity.to_proto()),
            started_at: Some(crate::wire::timestamp(self.started_at)),
            uptime_seconds: u64::try_from(uptime).unwrap_or(0),
            listeners: self.listeners.clone(),
            store_schema_version: self.store.schema_version(),
            caller_token_name: caller.name.clone(),
            caller_roles: caller.roles.iter().map(|r| r.to_string()).collect(),
            alerts: self.registry.alerts(),
            memberships: self
                .registry
                .own_memberships()
                .into_iter()
                .map(|m| pb::Membership {
                    fellowship: m.fellowship,
                    serial: m.serial,
                    current: m.current,
                    left: m.left.map(crate::governance::body::ymd).unwrap_or_default(),
                    listed: m.listed,
                    detail: m.detail,
                })
                .collect(),
            unpinned_rosters: self
                .registry
                .unpinned_offers()
                .into_iter()
                .map(|offer| pb::UnpinnedRoster {
                    detail: offer.detail(),
                    fellowship: offer.fellowship,
                    serial: offer.serial,
                    digest: offer.digest,
                    partner: offer.partner,
                })
                .collect(),
        }))
    }

    async fn import_roster(
        &self,
        request: Request<ImportRosterRequest>,
    ) -> Result<Response<ImportRosterResponse>, Status> {
        let (caller, _permit) = self
            .admit(&request, Role::Admin, "samvirke.v1.Local/ImportRoster")
            .await?;
        let ask = request.into_inner();
        let document = ask
            .document
            .ok_or_else(|| Status::invalid_argument("document: missing"))?;
        let registry = Arc::clone(&self.registry);
        let mode = RosterImport {
            trust_anchor: ask.trust_anchor,
            repin: ask.repin,
            accept_own_entry_change: ask.accept_own_entry_change,
        };
        let imported =
            tokio::task::spawn_blocking(move || registry.import_roster(&document.content, mode))
                .await
                .map_err(|e| Status::internal(format!("governance task failed: {e}")))?;
        let (imported, roster) = self
            .record_import(
                &caller,
                "samvirke.v1.Local/ImportRoster",
                imported,
                |roster| {
                    format!(
                        "roster `{}` serial {} digest {}{}{}{}",
                        roster.fellowship(),
                        roster.serial(),
                        roster.digest(),
                        if mode.trust_anchor {
                            "; pinned as trust anchor"
                        } else {
                            ""
                        },
                        if mode.repin { "; re-pinned" } else { "" },
                        if mode.accept_own_entry_change {
                            "; own entry change accepted unsigned"
                        } else {
                            ""
                        }
                    )
                },
            )
            .await?;
        tracing::info!(
            token = %caller.name,
            fellowship = roster.fellowship(),
            serial = roster.serial(),
            changed = imported == Imported::Changed,
            trust_anchor = mode.trust_anchor,
            repin = mode.repin,
            accept_own_entry_change = mode.accept_own_entry_change,
            "roster import by operator"
        );
        Ok(Response::new(ImportRosterResponse {
            roster: Some(self.registry.roster_info(&roster)),
            changed: imported == Imported::Changed,
        }))
    }

    async fn import_agreement(
        &self,
        request: Request<ImportAgreementRequest>,
    ) -> Result<Response<ImportAgreementResponse>, Status> {
        let (caller, _permit) = self
            .admit(&request, Role::Admin, "samvirke.v1.Local/ImportAgreement")
            .await?;
        let document = request
            .into_inner()
            .document
            .ok_or_else(|| Status::invalid_argument("document: missing"))?;
        let registry = Arc::clone(&self.registry);
        let imported =
            tokio::task::spawn_blocking(move || registry.import_agreement(&document.content))
                .await
                .map_err(|e| Status::internal(format!("governance task failed: {e}")))?;
        let (imported, agreement) = self
            .record_import(
                &caller,
                "samvirke.v1.Local/ImportAgreement",
                imported,
                |agreement| {
                    format!(
                        "agreement {} of provider {} in `{}` digest {}",
                        agreement.id(),
                        agreement.body().provider,
                        agreement.body().fellowship,
                        agreement.digest()
                    )
                },
            )
            .await?;
        tracing::info!(
            token = %caller.name,
            agreement = %agreement.id(),
            changed = imported == Imported::Changed,
            "agreement import by operator"
        );
        Ok(Response::new(ImportAgreementResponse {
            agreement: Some(self.registry.agreement_info(&agreement)),
            changed: imported == Imported::Changed,
        }))
    }

    async fn list_governance(
        &self,
        request: Request<ListGovernanceRequest>,
    ) -> Result<Response<ListGovernanceResponse>, Status> {
        let _call = self
            .admit(&request, Role::Read, "samvirke.v1.Local/ListGovernance")
            .await?;
        let ask = request.into_inner();
        let after = if ask.page_token.is_empty() {
            None
        } else {
            Some(ListCursor::from_token(&ask.page_token).map_err(Status::invalid_argument)?)
        };
        let size = match ask.page_size {
            0 => LIST_PAGE_DEFAULT,
            n => n.min(LIST_PAGE_MAX),
        };
        let page = self
            .registry
            .list_page(after.as_ref(), size as usize, LIST_PAGE_BYTES);
        let quarantined = if after.is_none() {
            self.registry
                .quarantined()
                .into_iter()
                .map(|q| pb::QuarantinedRoster {
                    fellowship: q.fellowship,
                    serial: q.serial,
                    digest: q.digest.to_string(),
                    changes: q.changes,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(ListGovernanceResponse {
            rosters: page.rosters,
            agreements: page.agreements,
            quarantined,
            next_page_token: page.next.map(|c| c.to_token()).unwrap_or_default(),
        }))
    }

    async fn publish_dataset(
        &self,
        request: Request<pb::Dataset>,
    ) -> Result<Response<pb::Dataset>, Status> {
        self.publish_dataset_rpc(request, false).await
    }

    async fn update_dataset(
        &self,
        request: Request<pb::Dataset>,
    ) -> Result<Response<pb::Dataset>, Status> {
        self.publish_dataset_rpc(request, true).await
    }

    async fn list_datasets(
        &self,
        request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        self.list_datasets_rpc(request).await
    }

    async fn ingest_readings(
        &self,
        request: Request<tonic::Streaming<pb::IngestReadingsRequest>>,
    ) -> Result<Response<pb::IngestReadingsResponse>, Status> {
        self.ingest_readings_rpc(request).await
    }

    type IngestBatchesStream = ingest::AckStream;

    async fn ingest_batches(
        &self,
        request: Request<tonic::Streaming<pb::IngestBatch>>,
    ) -> Result<Response<Self::IngestBatchesStream>, Status> {
        self.ingest_batches_rpc(request).await
    }

    async fn ingest_session(
        &self,
        request: Request<pb::IngestSessionRequest>,
    ) -> Result<Response<pb::IngestSessionResponse>, Status> {
        self.ingest_session_rpc(request).await
    }

    type QueryReadingsStream = crate::plane::answer::AnswerStream;

    async fn query_readings(
        &self,
        request: Request<pb::ReadingQuery>,
    ) -> Result<Response<Self::QueryReadingsStream>, Status> {
        self.query_readings_rpc(request).await
    }

    async fn count_readings(
        &self,
        request: Request<pb::CountReadingsRequest>,
    ) -> Result<Response<pb::CountReadingsResponse>, Status> {
        self.count_readings_rpc(request).await
    }

    async fn put_pilot(
        &self,
        request: Request<pb::Pilot>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        self.put_pilot_rpc(request).await
    }

    async fn list_pilots(
        &self,
        request: Request<pb::PilotFilter>,
    ) -> Result<Response<pb::ListPilotsResponse>, Status> {
        self.list_pilots_rpc(request).await
    }

    async fn put_procurement(
        &self,
        request: Request<pb::Procurement>,
    ) -> Result<Response<pb::PutRecordResponse>, Status> {
        self.put_procurement_rpc(request).await
    }

    async fn list_procurements(
        &self,
        request: Request<pb::ProcurementFilter>,
    ) -> Result<Response<pb::ListProcurementsResponse>, Status> {
        self.list_procurements_rpc(request).await
    }

    type AskStream = crate::federate::ask::AskStream;

    async fn ask(
        &self,
        request: Request<pb::AskRequest>,
    ) -> Result<Response<Self::AskStream>, Status> {
        self.ask_rpc(request).await
    }

    async fn fellowship_catalog(
        &self,
        request: Request<pb::FellowshipCatalogRequest>,
    ) -> Result<Response<pb::FellowshipCatalogResponse>, Status> {
        self.fellowship_catalog_rpc(request).await
    }

    async fn export_catalog(
        &self,
        request: Request<pb::ExportCatalogRequest>,
    ) -> Result<Response<pb::ExportCatalogResponse>, Status> {
        self.export_catalog_rpc(request).await
    }

    async fn list_partners(
        &self,
        request: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        self.list_partners_rpc(request).await
    }

    async fn list_receipts(
        &self,
        request: Request<pb::ListReceiptsRequest>,
    ) -> Result<Response<pb::ListReceiptsResponse>, Status> {
        self.list_receipts_rpc(request).await
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::Receipt>, Status> {
        self.get_receipt_rpc(request).await
    }

    async fn tail_audit(
        &self,
        request: Request<pb::TailAuditRequest>,
    ) -> Result<Response<pb::TailAuditResponse>, Status> {
        self.tail_audit_rpc(request).await
    }

    type ExportAuditStream = audit::ExportStream;

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<Self::ExportAuditStream>, Status> {
        self.export_audit_rpc(request).await
    }

    type BackupStream = backup::BackupStream;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        self.backup_rpc(request).await
    }
}
