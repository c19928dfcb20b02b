//! The data plane as the services see it: this node's catalog, readings
//! and records, and the rules for what of them may leave the node under an
//! agreement.
//!
//! Both services use one [`DataPlane`]. The local service hands the
//! municipality's own users everything; the peer service first asks
//! [`crate::governance::registry::Registry::authorize`] and then shapes the
//! answer here with [`Disclosure`]: personal fields and fields the
//! agreement excludes are removed from every catalog entry, reading,
//! bucket and record, and an aggregate-only agreement gets aggregates with
//! small groups suppressed, never raw readings.

use std::sync::Arc;

use samvirke_proto::v1 as pb;

use crate::clock::SharedClock;
use crate::data::aggregate::{Bucket, Group, suppress_small_groups};
use crate::data::catalog::{Catalog, Classification, Dataset, DatasetKind};
use crate::data::readings::{LOCATION_FIELD, Reading, ReadingStore, strip_fields};
use crate::data::records::{
    RecordStore, Stored, strip_pilot_fields, strip_procurement_fields, top_level,
};
use crate::governance::{DatasetRef, Grant, Operation};
use crate::store::Store;
use crate::wire;

/// The node's data, shared by the local and peer services.
#[derive(Debug)]
pub struct DataPlane {
    pub readings: ReadingStore,
    pub records: RecordStore,
    pub clock: SharedClock,
}

impl DataPlane {
    /// The data kept in `store`.
    pub fn new(store: Arc<dyn Store>, clock: SharedClock) -> DataPlane {
        DataPlane {
            readings: ReadingStore::new(Arc::clone(&store)),
            records: RecordStore::new(store),
            clock,
        }
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

/// The most buckets one aggregate question may produce: bounds the memory
/// one request can take (each bucket is an accumulator until the end).
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

/// How much of a dataset one granted peer request may see.
#[derive(Debug, Clone, PartialEq)]
pub struct Disclosure {
    /// Fields that never leave: the dataset's personal fields plus the
    /// agreement's excluded fields.
    pub withheld: Vec<String>,
    /// `Some(min)` when the agreement allows aggregates but not raw reads:
    /// buckets describing fewer than `min` readings or sensors are withheld.
    pub min_group_size: Option<u32>,
    /// Whether raw readings and records may be returned.
    pub raw: bool,
}

/// Why a granted request still cannot be answered as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisclosureError {
    #[error(
        "agreement {agreement} allows only aggregates of `{dataset}`; ask with a bucket \
         (e.g. \"1h\") instead of for raw readings"
    )]
    RawNotAllowed { agreement: String, dataset: String },
    #[error(
        "dataset `{dataset}` is classified personal and agreement {agreement} allows only \
         aggregates: per-sensor buckets could single out a person; group over all sensors"
    )]
    PerSensorOfPersonal { agreement: String, dataset: String },
    #[error(
        "`{field}` never leaves this node under agreement {agreement} (personal data, or \
         excluded by the agreement); leave it out of the query"
    )]
    Withheld { agreement: String, field: String },
    #[error("agreement {agreement} discloses no measure of `{dataset}`")]
    NothingDisclosed { agreement: String, dataset: String },
    #[error(
        "measure `{field}` is not available under agreement {agreement}; available: {disclosed}"
    )]
    NotDisclosed {
        agreement: String,
        field: String,
        disclosed: String,
    },
    #[error(
        "agreement {agreement} allows only aggregates over all sensors: leave out sensor_ids \
         and the area filter (aggregates over sets that differ by one sensor would reveal it)"
    )]
    NarrowAggregate { agreement: String },
}

impl Disclosure {
    /// The disclosure `grant` allows for `dataset`.
    pub fn new(grant: &Grant, dataset: &Dataset) -> Disclosure {
        // Field names are compared as records compare them: trimmed,
        // lower case, the top-level part of a dotted path; so "NO2" or
        // "location.lat" in an agreement withhold what a person means.
        let mut withheld: Vec<String> = Vec::new();
        for field in dataset
            .personal_fields()
            .iter()
            .chain(&grant.excluded_fields)
        {
            let field = top_level(field);
            if !withheld.contains(&field) {
                withheld.push(field);
            }
        }
        let raw = grant.operations.contains(&Operation::Read);
        Disclosure {
            withheld,
            min_group_size: if raw {
                None
            } else {
                Some(grant.min_group_size.unwrap_or(1))
            },
            raw,
        }
    }

    fn withholds(&self, field: &str) -> bool {
        let field = top_level(field);
        self.withheld.contains(&field)
    }

    /// Refuses a records filter that tests a withheld field: whether a
    /// record matches would reveal the field (a value range halved call by
    /// call finds the exact value).
    fn check_filter(&self, grant: &Grant, tested: &[(&str, bool)]) -> Result<(), DisclosureError> {
        match tested
            .iter()
            .find(|(field, set)| *set && self.withholds(field))
        {
            Some((field, _)) => Err(DisclosureError::Withheld {
                agreement: grant.agreement_id.to_string(),
                field: field.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Checks a pilot filter against the disclosure.
    pub fn check_pilot_filter(
        &self,
        grant: &Grant,
        filter: &pb::PilotFilter,
    ) -> Result<(), DisclosureError> {
        self.check_filter(
            grant,
            &[
                ("phase", filter.phase != 0),
                ("technology", !filter.technology.is_empty()),
                ("municipalities", filter.municipality != 0),
                ("started", filter.year != 0),
            ],
        )
    }

    /// Checks a procurement filter against the disclosure.
    pub fn check_procurement_filter(
        &self,
        grant: &Grant,
        filter: &pb::ProcurementFilter,
    ) -> Result<(), DisclosureError> {
        self.check_filter(
            grant,
            &[
                ("suppliers", !filter.supplier.is_empty()),
                ("buyer_municipalities", filter.buyer_municipality != 0),
                ("buyer_fellowship", !filter.buyer_fellowship.is_empty()),
                ("procedure", filter.procedure != 0),
                ("awarded", filter.year != 0),
                (
                    "value_dkk",
                    filter.min_value_dkk != 0 || filter.max_value_dkk != 0,
                ),
                ("cpv_codes", !filter.cpv_code.is_empty()),
                ("complaints", filter.has_complaint.is_some()),
            ],
        )
    }

    /// The catalog entry as the caller may see it: without withheld fields.
    pub fn dataset(&self, dataset: &Dataset) -> pb::Dataset {
        let mut message = wire::dataset_to_proto(dataset);
        message.schema.retain(|field| !self.withholds(&field.name));
        message
    }

    /// Checks a readings question against the disclosure, and narrows its
    /// measures to those that may leave.
    pub fn check_question(
        &self,
        grant: &Grant,
        dataset: &Dataset,
        question: &mut wire::ReadingQuestion,
    ) -> Result<(), DisclosureError> {
        match question.aggregate {
            None if !self.raw => {
                return Err(DisclosureError::RawNotAllowed {
                    agreement: grant.agreement_id.to_string(),
                    dataset: dataset.id.clone(),
                });
            }
            Some((_, Group::PerSensor))
                if !self.raw && dataset.classification == Classification::Personal =>
            {
                return Err(DisclosureError::PerSensorOfPersonal {
                    agreement: grant.agreement_id.to_string(),
                    dataset: dataset.id.clone(),
                });
            }
            _ => {}
        }
        // Under an aggregate-only agreement the set of sensors a bucket
        // covers is always "all of them": two aggregates over sets that
        // differ by one sensor would give that sensor's raw values.
        if !self.raw && (!question.query.sensor_ids.is_empty() || question.query.area.is_some()) {
            return Err(DisclosureError::NarrowAggregate {
                agreement: grant.agreement_id.to_string(),
            });
        }
        if self.withholds(LOCATION_FIELD) && question.query.area.is_some() {
            return Err(DisclosureError::Withheld {
                agreement: grant.agreement_id.to_string(),
                field: LOCATION_FIELD.to_string(),
            });
        }
        // A measure that is withheld and one that does not exist get the
        // same answer, listing only what is disclosed, so a caller learns
        // nothing about fields it may not see.
        let disclosed: Vec<String> = dataset
            .measure_names()
            .into_iter()
            .filter(|m| !self.withholds(m))
            .collect();
        if let Some(unknown) = question
            .query
            .measures
            .iter()
            .find(|m| !disclosed.contains(m))
        {
            return Err(DisclosureError::NotDisclosed {
                agreement: grant.agreement_id.to_string(),
                field: unknown.clone(),
                disclosed: disclosed.join(", "),
            });
        }
        if question.query.measures.is_empty() {
            let allowed = disclosed;
            if allowed.is_empty() {
                return Err(DisclosureError::NothingDisclosed {
                    agreement: grant.agreement_id.to_string(),
                    dataset: dataset.id.clone(),
                });
            }
            question.query.measures = allowed;
        }
        Ok(())
    }

    /// A reading as the caller may see it.
    pub fn reading(&self, mut reading: Reading) -> Reading {
        strip_fields(&mut reading, &self.withheld);
        if self.withholds(LOCATION_FIELD) {
            reading.location = None;
        }
        reading
    }

    /// Buckets as the caller may see them, and how many were withheld.
    pub fn buckets(&self, buckets: Vec<Bucket>) -> (Vec<Bucket>, usize) {
        let buckets: Vec<Bucket> = buckets
            .into_iter()
            .filter(|b| !self.withholds(&b.measure))
            .collect();
        match self.min_group_size {
            Some(min) => suppress_small_groups(buckets, min),
            None => (buckets, 0),
        }
    }

    /// A pilot record as the caller may see it.
    pub fn pilot(&self, mut pilot: pb::Pilot) -> pb::Pilot {
        strip_pilot_fields(&mut pilot, &self.withheld);
        pilot
    }

    /// A procurement record as the caller may see it.
    pub fn procurement(&self, mut procurement: pb::Procurement) -> pb::Procurement {
        strip_procurement_fields(&mut procurement, &self.withheld);
        procurement
    }
}
