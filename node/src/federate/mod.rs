//! Asking the fellowship from one's own node: an analyst's one question
//! goes to every partner whose agreement covers it, and comes back as one
//! answer with a status per partner.
//!
//! - [`route`]: which partners a target names, which of their datasets a
//!   question is about, and under which agreement each is asked;
//! - [`partner`]: calling one partner (signed request, pinned channel) and
//!   checking and keeping its receipt;
//! - [`ask`]: the question as a whole: fan-out with one deadline, rows
//!   streamed back as they arrive, tagged with their source, this node's
//!   own data alongside, combined aggregates ([`combine`]), one status per
//!   partner and dataset, and the question in the audit log;
//! - [`receipts`]: the receipts kept.
//!
//! Partner catalogs (what each agreement lets this node see) are fetched
//! under each agreement and cached for [`CATALOG_TTL`], and dropped when
//! governance changes, so a question costs one round trip per partner, not
//! two.

pub mod ask;
pub mod combine;
pub mod partner;
pub mod receipts;
pub mod route;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use samvirke_proto::v1::{self as pb, PartnerOutcome};
use uuid::Uuid;

use crate::audit::AuditLog;
use crate::governance::registry::{Registry, UsableAgreement};
use crate::identity::NodeIdentity;
use crate::partners::PartnerPool;
use crate::plane::DataPlane;
use crate::plane::answer::AnswerLimits;
use crate::proof::batch::VerifiedRoots;
pub use partner::{Failure, Tally};
pub use receipts::{ReceiptStore, ReceiptStoreError};

/// How long a partner's catalog is reused.
pub const CATALOG_TTL: Duration = Duration::from_secs(60);
/// The deadline of a question that names none, and the longest allowed.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
pub const MAX_DEADLINE: Duration = Duration::from_secs(120);
/// Most datasets of one partner one question goes to.
pub const MAX_DATASETS_PER_PARTNER: usize = 64;
/// Sub-questions (partner and dataset pairs) of one question in flight at
/// once; the rest wait for a turn, within the deadline.
pub const MAX_IN_FLIGHT: usize = 64;
/// Receipt batch roots remembered as verified.
const RECEIPT_ROOTS: usize = 4_096;

/// Why a question cannot be asked at all (partial answers are not errors).
#[derive(Debug, thiserror::Error)]
pub enum FederateError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(
        "agreement {0} is not in force for this node as a consumer (see samvirke governance \
         list)"
    )]
    AgreementNotUsable(Uuid),
    #[error("the question could not be recorded in the audit log, so it was not asked: {0}")]
    Audit(String),
    #[error(transparent)]
    Receipts(#[from] ReceiptStoreError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> FederateError {
    FederateError::Invalid {
        field,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone)]
struct CachedCatalog {
    fetched: Instant,
    generation: u64,
    datasets: Arc<Vec<pb::Dataset>>,
}

/// The consumer side of the fellowship.
#[derive(Debug)]
pub struct Federation {
    identity: Arc<NodeIdentity>,
    registry: Arc<Registry>,
    plane: Arc<DataPlane>,
    pool: PartnerPool,
    receipts: ReceiptStore,
    receipt_roots: VerifiedRoots,
    catalogs: Mutex<HashMap<(u32, Uuid), CachedCatalog>>,
    audit: Arc<AuditLog>,
    answers: AnswerLimits,
}

impl Federation {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: Arc<NodeIdentity>,
        registry: Arc<Registry>,
        plane: Arc<DataPlane>,
        pool: PartnerPool,
        receipts: ReceiptStore,
        audit: Arc<AuditLog>,
        answers: AnswerLimits,
    ) -> Federation {
        Federation {
            identity,
            registry,
            plane,
            pool,
            receipts,
            receipt_roots: VerifiedRoots::new(RECEIPT_ROOTS),
            catalogs: Mutex::new(HashMap::new()),
            audit,
            answers,
        }
    }

    /// The receipts kept.
    pub fn receipts(&self) -> &ReceiptStore {
        &self.receipts
    }

    fn cached_catalog(&self, agreement: &UsableAgreement) -> Option<Arc<Vec<pb::Dataset>>> {
        let generation = self.registry.generation();
        let catalogs = self
            .catalogs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        catalogs
            .get(&(agreement.provider, agreement.id))
            .filter(|c| c.generation == generation && c.fetched.elapsed() < CATALOG_TTL)
            .map(|c| Arc::clone(&c.datasets))
    }

    /// What `agreement` lets this node see of its provider's catalog,
    /// cached for [`CATALOG_TTL`].
    pub async fn catalog_under(
        &self,
        agreement: &UsableAgreement,
    ) -> Result<Arc<Vec<pb::Dataset>>, Failure> {
        if let Some(datasets) = self.cached_catalog(agreement) {
            return Ok(datasets);
        }
        let generation = self.registry.generation();
        let mut tally = Tally::default();
        let datasets = Arc::new(self.partner_catalog(agreement, &mut tally).await?);
        let mut catalogs = self
            .catalogs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Entries of agreements no longer asked about age out here.
        catalogs.retain(|_, c| c.fetched.elapsed() < CATALOG_TTL);
        catalogs.insert(
            (agreement.provider, agreement.id),
            CachedCatalog {
                fetched: Instant::now(),
                generation,
                datasets: Arc::clone(&datasets),
            },
        );
        Ok(datasets)
    }

    /// Every partner dataset that agreements in force let this node see
    /// (of `fellowship`, if not empty), matching `search`; and the partners
    /// whose catalog could not be had within `deadline`.
    pub async fn fellowship_catalog(
        &self,
        fellowship: &str,
        search: &pb::CatalogSearch,
        deadline: Duration,
    ) -> pb::FellowshipCatalogResponse {
        let agreements: Vec<UsableAgreement> = self
            .registry
            .usable_agreements()
            .into_iter()
            .filter(|a| fellowship.is_empty() || a.fellowship == fellowship)
            .filter(|a| a.allows(crate::governance::Operation::Catalog))
            .collect();
        let until = tokio::time::Instant::now() + deadline.min(MAX_DEADLINE);
        let fetched = join_all(agreements.iter().map(|agreement| async move {
            let outcome = tokio::time::timeout_at(until, self.catalog_under(agreement))
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::new(
                        PartnerOutcome::TimedOut,
                        "no catalog within the deadline",
                    ))
                });
            (agreement, outcome)
        }))
        .await;
        let mut response = pb::FellowshipCatalogResponse::default();
        for (agreement, outcome) in fetched {
            match outcome {
                Ok(datasets) => {
                    for dataset in datasets.iter().filter(|d| route::found(d, search)) {
                        response.datasets.push(pb::VisibleDataset {
                            dataset: Some(dataset.clone()),
                            provider: agreement.provider,
                            provider_name: agreement.provider_name.clone(),
                            fellowship: agreement.fellowship.clone(),
                            agreement_id: agreement.id.to_string(),
                            operations: agreement
                                .operations
                                .iter()
                                .map(|op| op.as_str().to_string())
                                .collect(),
                            terms: terms_in_words(agreement),
                            valid_until: Some(crate::wire::timestamp(agreement.valid_until)),
                        });
                    }
                }
                Err(failure) => response.unavailable.push(pb::PartnerStatus {
                    municipality: agreement.provider,
                    name: agreement.provider_name.clone(),
                    outcome: failure.outcome as i32,
                    detail: failure.detail,
                    agreement_id: agreement.id.to_string(),
                    ..Default::default()
                }),
            }
        }
        response.datasets.sort_by(|a, b| {
            (
                a.provider,
                a.dataset.as_ref().map(|d| d.id.as_str()),
                &a.agreement_id,
            )
                .cmp(&(
                    b.provider,
                    b.dataset.as_ref().map(|d| d.id.as_str()),
                    &b.agreement_id,
                ))
        });
        response
    }

    /// The partners this node can ask, with the agreements in force each
    /// way, and (with `probe`) whether each answers now.
    pub async fn partners(&self, probe: bool) -> pb::ListPartnersResponse {
        let usable = self.registry.usable_agreements();
        let partners = self.registry.partners();
        let infos = join_all(partners.iter().map(|partner| {
            let usable = &usable;
            async move {
                let (reachable, latency_ms) = if probe {
                    match tokio::time::timeout(DEFAULT_DEADLINE, self.probe(partner)).await {
                        Ok(Ok(ms)) => ("ok".to_string(), ms),
                        Ok(Err(why)) => (why, 0),
                        Err(_) => ("no answer within 10 s".to_string(), 0),
                    }
                } else {
                    (String::new(), 0)
                };
                pb::PartnerInfo {
                    municipality: partner.code,
                    name: partner.name.clone(),
                    endpoint: partner.endpoint.clone(),
                    fellowships: partner.fellowships.iter().cloned().collect(),
                    agreements_as_consumer: usable
                        .iter()
                        .filter(|a| a.provider == partner.code)
                        .count() as u32,
                    agreements_as_provider: self.registry.agreements_provided_to(partner.code)
                        as u32,
                    reachable,
                    latency_ms,
                }
            }
        }))
        .await;
        pb::ListPartnersResponse { partners: infos }
    }
}

/// An agreement's aggregate-only terms in words (empty when it allows raw
/// reads).
pub fn terms_in_words(agreement: &UsableAgreement) -> String {
    use crate::governance::Operation;
    if agreement.allows(Operation::Read) || !agreement.allows(Operation::Aggregate) {
        return String::new();
    }
    let terms = &agreement.aggregate;
    let mut words = format!(
        "aggregates only: {} cells, groups of at least {}",
        crate::governance::body::show_span(terms.cell),
        agreement.min_group_size.unwrap_or(0)
    );
    if terms.per_sensor {
        words.push_str(", per sensor allowed");
    }
    if let Some(noise) = &terms.noise {
        words.push_str(&format!(
            ", noise epsilon {} per answer (budget {})",
            noise.epsilon, noise.budget
        ));
    }
    words
}
