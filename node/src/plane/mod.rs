//! The data plane as the services see it: this node's catalog, readings
//! and records, and the rules for what of them may leave the node under an
//! agreement.
//!
//! Both services use one [`DataPlane`]. The local service hands the
//! municipality's own users everything; the peer service first asks
//! [`crate::governance::registry::Registry::authorize`] and then shapes the
//! answer with a [`Disclosure`] ([`disclosure`] has the rules and why they
//! hold against a hostile partner). [`noise`] adds calibrated noise and
//! keeps privacy budgets; [`pseudonym`] hides sensor ids.
//!
//! The plane also tells the registry, before an agreement this node
//! provides is accepted, whether its terms can be honoured exactly
//! ([`ProviderCheck`]).

pub mod answer;
pub mod disclosure;
pub mod noise;
pub mod pseudonym;

use std::sync::Arc;

use samvirke_proto::v1 as pb;

pub use disclosure::{AnswerPlan, Disclosure, DisclosureError};

use crate::clock::SharedClock;
use crate::data::aggregate::Group;
use crate::data::catalog::{Catalog, DatasetKind};
use crate::data::readings::ReadingStore;
use crate::data::records::{PILOT_FIELDS, PROCUREMENT_FIELDS, RecordStore, Stored};
use crate::governance::agreement::{LOCATION_FIELD, SENSOR_ID_FIELD, field_root};
use crate::governance::registry::ProviderCheck;
use crate::governance::{AgreementBody, DatasetRef};
use crate::store::{Store, StoreError};
use crate::wire;

/// The node's data, shared by the local and peer services.
#[derive(Debug)]
pub struct DataPlane {
    pub readings: ReadingStore,
    pub records: RecordStore,
    pub clock: SharedClock,
    /// Keys the per-agreement sensor pseudonyms.
    pub pseudonyms: pseudonym::PseudonymKey,
    /// Privacy budgets spent under noisy agreements.
    pub budgets: noise::Budgets,
}

impl DataPlane {
    /// The data kept in `store`.
    pub fn new(store: Arc<dyn Store>, clock: SharedClock) -> Result<DataPlane, StoreError> {
        Ok(DataPlane {
            readings: ReadingStore::new(Arc::clone(&store)),
            records: RecordStore::new(Arc::clone(&store)),
            clock,
            pseudonyms: pseudonym::PseudonymKey::load_or_create(store.as_ref())?,
            budgets: noise::Budgets::new(store),
        })
    }

    /// The dataset catalog (the one the reading store looks datasets up in).
    pub fn catalog(&self) -> &Catalog {
        self.readings.catalog()
    }

    /// What the authorisation check needs to know about dataset `id`: its
    /// kind and keywords from the catalog, or only its id when this node
    /// does not publish it (then only id-scoped agreements can cover it).
    pub fn dataset_ref(&self, id: &str) -> DatasetRef {
        match self.catalog().get(id) {
            Ok(Some(dataset)) => dataset.as_ref(),
            _ => DatasetRef {
                id: id.to_string(),
                kind: String::new(),
                keywords: Vec::new(),
            },
        }
    }
}

/// The most buckets one aggregate question may produce: bounds the size of
/// one answer (memory is bounded by streaming; this bounds the work).
pub const MAX_BUCKETS: u64 = 1_000_000;

/// An aggregate question too large to answer.
#[derive(Debug, thiserror::Error)]
#[error(
    "bucket: {bucket} over this range gives up to {estimate} buckets, more than {MAX_BUCKETS}; \
     use a larger bucket, a shorter range, or group over all sensors"
)]
pub struct TooManyBuckets {
    pub bucket: String,
    pub estimate: u64,
}

impl DataPlane {
    /// Refuses an aggregate question that could produce more than
    /// [`MAX_BUCKETS`] buckets: time buckets in the range, times sensors
    /// when grouped per sensor, times measures.
    pub fn check_aggregate_size(
        &self,
        question: &wire::ReadingQuestion,
    ) -> Result<(), TooManyBuckets> {
        let Some((size, group)) = question.aggregate else {
            return Ok(());
        };
        let span = (question.query.until - question.query.from)
            .whole_seconds()
            .max(0) as u64;
        let size_s = size.whole_seconds().max(1) as u64;
        let time_buckets = span.div_ceil(size_s).max(1);
        let measures = match question.query.measures.len() {
            0 => self
                .catalog()
                .get(&question.query.dataset)
                .ok()
                .flatten()
                .map(|d| d.measure_names().len())
                .unwrap_or(1),
            n => n,
        } as u64;
        let sensors = match group {
            Group::AllSensors => 1,
            Group::PerSensor if !question.query.sensor_ids.is_empty() => {
                question.query.sensor_ids.len() as u64
            }
            Group::PerSensor => self
                .readings
                .sensors(&question.query.dataset)
                .map(|s| s.len() as u64)
                .unwrap_or(1),
        };
        let estimate = time_buckets
            .saturating_mul(measures.max(1))
            .saturating_mul(sensors.max(1));
        if estimate > MAX_BUCKETS {
            return Err(TooManyBuckets {
                bucket: format!("{size}"),
                estimate,
            });
        }
        Ok(())
    }
}

/// Why a record cannot be stored under the dataset it names.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("dataset_id: `{0}` is not published on this node; publish the dataset first")]
    UnknownDataset(String),
    #[error(
        "dataset_id: `{id}` is a {actual} dataset; this record belongs in a {expected} dataset"
    )]
    WrongKind {
        id: String,
        actual: DatasetKind,
        expected: DatasetKind,
    },
    #[error(transparent)]
    Catalog(#[from] crate::data::CatalogError),
    #[error(transparent)]
    Record(#[from] crate::data::records::RecordError),
}

impl DataPlane {
    /// Stores `pilot` after checking its dataset is a published pilot dataset.
    pub fn put_pilot(&self, pilot: pb::Pilot) -> Result<Stored, PlacementError> {
        self.check_placement(&pilot.dataset_id, DatasetKind::Pilot)?;
        Ok(self.records.put_pilot(pilot)?)
    }

    /// Stores `procurement` after checking its dataset is a published
    /// procurement dataset.
    pub fn put_procurement(&self, procurement: pb::Procurement) -> Result<Stored, PlacementError> {
        self.check_placement(&procurement.dataset_id, DatasetKind::Procurement)?;
        Ok(self.records.put_procurement(procurement)?)
    }

    fn check_placement(&self, id: &str, expected: DatasetKind) -> Result<(), PlacementError> {
        let dataset = self
            .catalog()
            .get(id)?
            .ok_or_else(|| PlacementError::UnknownDataset(id.to_string()))?;
        if dataset.kind != expected {
            return Err(PlacementError::WrongKind {
                id: id.to_string(),
                actual: dataset.kind,
                expected,
            });
        }
        Ok(())
    }
}

/// The fields of records of `kind` an agreement may name.
fn record_fields(kind: DatasetKind) -> &'static [&'static str] {
    match kind {
        DatasetKind::Sensor => &[],
        DatasetKind::Pilot => PILOT_FIELDS,
        DatasetKind::Procurement => PROCUREMENT_FIELDS,
    }
}

impl ProviderCheck for DataPlane {
    /// Every excluded name must name something this node could send under
    /// the agreement: `location`, `sensor_id`, a field of a covered dataset
    /// in this node's catalog, or a field of a covered kind of record. A
    /// misspelt name would otherwise exclude nothing, silently.
    fn check(&self, terms: &AgreementBody) -> Result<(), String> {
        if terms.excluded_fields.is_empty() {
            return Ok(());
        }
        let datasets = self.catalog().list().map_err(|e| e.to_string())?;
        let covered: Vec<_> = datasets
            .iter()
            .filter(|d| terms.scope.covers(&d.as_ref()))
            .collect();
        let mut known: Vec<String> = vec![LOCATION_FIELD.to_string(), SENSOR_ID_FIELD.to_string()];
        for kind in &terms.scope.kinds {
            for k in [DatasetKind::Pilot, DatasetKind::Procurement] {
                if k.as_str() == kind {
                    known.extend(record_fields(k).iter().map(|f| f.to_string()));
                }
            }
        }
        for dataset in &covered {
            known.extend(record_fields(dataset.kind).iter().map(|f| f.to_string()));
            known.extend(dataset.schema.iter().map(|f| f.name.clone()));
        }
        for name in &terms.excluded_fields {
            if !known.contains(&field_root(name)) {
                let ids: Vec<&str> = covered.iter().map(|d| d.id.as_str()).collect();
                return Err(format!(
                    "excluded field `{}` names no field of the datasets it covers on this node \
                     ({}); a misspelt name would withhold nothing. Fix the name, or publish the \
                     dataset first",
                    name.escape_debug(),
                    if ids.is_empty() {
                        "none published yet".to_string()
                    } else {
                        ids.join(", ")
                    }
                ));
            }
        }
        Ok(())
    }
}
