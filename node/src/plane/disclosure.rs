//! What an agreement discloses, and how an answer is shaped to it.
//!
//! A [`Disclosure`] is made per granted peer request from the agreement's
//! terms and the dataset's catalog entry. It withholds fields (the
//! dataset's personal fields and the agreement's excluded fields; names
//! compared by [`field_root`], so `NO2` or `location.lat` withhold what a
//! person means), replaces sensor ids by per-agreement pseudonyms when
//! `sensor_id` is excluded, and for an agreement that allows aggregates but
//! not raw reads (aggregate-only) it decides what may be asked and how the
//! answer is built.
//!
//! # Aggregate-only: why differencing cannot work
//!
//! The attack: ask two aggregates whose sets of readings differ by one
//! reading (a window 1 ms longer, one sensor more, one reading later) and
//! subtract. Every way to vary the set is closed:
//!
//! - **Time.** Answers come only from a fixed grid: epoch-aligned cells of
//!   the agreement's width (`cell`, default 1 h). A bucket must be a whole
//!   number of cells, and the asked range is widened to whole buckets, so
//!   the caller chooses which cells, never which readings. A bucket is
//!   released only if every cell in it that holds data meets the minimum
//!   group size in readings and (over all sensors) distinct sensors
//!   (`data::aggregate`); any two released buckets therefore differ by
//!   whole cells that each met the threshold, never by a smaller part.
//! - **Arrival.** Only cells that ended at least the settling delay ago
//!   (`settle`, default 1 h) are answered, so the usual flow of readings
//!   into a cell is over before anyone sees it: asking before and after a
//!   reading lands gives the same answer.
//! - **Sensors and area.** No sensor or area filter is accepted: every
//!   bucket covers all sensors.
//! - **Grouping.** Per-sensor buckets (one sensor's own aggregate) only
//!   where the agreement grants `per_sensor`, and never for a dataset
//!   classified `personal`.
//! - **Extremes and counts.** For personal datasets no `min` and `max`
//!   (they are individual values). No answer says how many sensors a
//!   bucket had, nor how many buckets were withheld: such small counts
//!   help an attacker narrow down groups.
//! - **Noise.** Where the agreement asks for it, aggregates of personal
//!   datasets carry calibrated noise under a privacy budget ([`super::noise`]).
//!
//! What this does not protect against is written in the README: readings
//! that arrive after a cell has settled (a late backfill) change a released
//! bucket, and two answers before and after show their sum; without noise,
//! a group of exactly `min_group_size` members is described exactly.
//!
//! Every aggregate answered under aggregate-only is logged with its
//! parameters.

use std::collections::BTreeMap;

use samvirke_proto::v1 as pb;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::DataPlane;
use super::noise::{MeasureNoise, NoiseError};
use super::pseudonym::{self, PseudonymKey};
use crate::data::aggregate::{AggregateSpec, Bucket, Grid, Group};
use crate::data::catalog::{Classification, Dataset};
use crate::data::query::ReadingQuery;
use crate::data::readings::Reading;
use crate::data::records::{strip_pilot_fields, strip_procurement_fields};
use crate::governance::agreement::{AggregateTerms, LOCATION_FIELD, SENSOR_ID_FIELD, field_root};
use crate::governance::body::show_span;
use crate::governance::{Grant, GridPolicy, Operation};
use crate::store::StoreError;
use crate::wire::{self, ReadingQuestion};

/// How much of a dataset one granted peer request may see.
#[derive(Debug, Clone)]
pub struct Disclosure {
    pub agreement: Uuid,
    /// The consumer (for its privacy budget).
    pub consumer: u32,
    /// Fields that never leave: the dataset's personal fields plus the
    /// agreement's excluded fields, by [`field_root`].
    pub withheld: Vec<String>,
    /// Whether raw readings and records may be returned.
    pub raw: bool,
    /// For aggregate-only: the minimum group size and the grid terms.
    pub aggregate_only: Option<(u32, AggregateTerms)>,
    /// The dataset is classified personal.
    pub personal: bool,
    /// The combined grid of every aggregate-only agreement on the dataset,
    /// which each answer is held to as well (see [`GridPolicy`]).
    pub policy: Option<GridPolicy>,
    pseudonyms: PseudonymKey,
    /// Noise per measure, set by [`Disclosure::plan`] when the answer is noisy.
    noise: BTreeMap<String, MeasureNoise>,
}

/// Why a granted request still cannot be answered as asked.
#[derive(Debug, thiserror::Error)]
pub enum DisclosureError {
    #[error(transparent)]
    TooManyBuckets(#[from] super::TooManyBuckets),
    #[error(
        "agreement {agreement} allows only aggregates of `{dataset}`; ask with a bucket \
         (e.g. \"1h\") instead of for raw readings"
    )]
    RawNotAllowed { agreement: Uuid, dataset: String },
    #[error(
        "dataset `{dataset}` is classified personal and agreement {agreement} allows only \
         aggregates: per-sensor buckets could single out a person; group over all sensors"
    )]
    PerSensorOfPersonal { agreement: Uuid, dataset: String },
    #[error(
        "agreement {agreement} allows only aggregates over all sensors (it does not grant \
         per-sensor aggregates); group over all sensors"
    )]
    PerSensorNotGranted { agreement: Uuid },
    #[error(
        "`{field}` never leaves this node under agreement {agreement} (personal data, or \
         excluded by the agreement); leave it out of the query"
    )]
    Withheld { agreement: Uuid, field: String },
    #[error("agreement {agreement} discloses no measure of `{dataset}`")]
    NothingDisclosed { agreement: Uuid, dataset: String },
    #[error(
        "measure `{field}` is not available under agreement {agreement}; available: {disclosed}"
    )]
    NotDisclosed {
        agreement: Uuid,
        field: String,
        disclosed: String,
    },
    #[error(
        "agreement {agreement} allows only aggregates over all sensors: leave out sensor_ids \
         and the area filter (aggregates over sets that differ by one sensor would reveal it)"
    )]
    NarrowAggregate { agreement: Uuid },
    #[error(
        "bucket: {bucket} is not a whole multiple of the {cell} grid cell of agreement \
         {agreement}; use {cell} or a multiple (e.g. {cell}, 1d)"
    )]
    OffGrid {
        agreement: Uuid,
        bucket: String,
        cell: String,
    },
    #[error(
        "measure `{measure}` has no noise range in agreement {agreement}, which answers `{dataset}` \
         only with calibrated noise; ask for the measures it gives ranges for: {available}"
    )]
    NoNoiseBounds {
        agreement: Uuid,
        measure: String,
        dataset: String,
        available: String,
    },
    #[error(
        "the privacy budget under agreement {agreement} is spent: this answer needs {asked}, \
         {left} is left; the parties must sign a new agreement"
    )]
    BudgetSpent {
        agreement: Uuid,
        asked: f64,
        left: f64,
    },
    #[error(transparent)]
    Noise(#[from] NoiseError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DisclosureError {
    /// Who the refusal is about, for limiting log lines per caller.
    pub fn caller_key(&self) -> String {
        match self {
            DisclosureError::RawNotAllowed { agreement, .. }
            | DisclosureError::PerSensorOfPersonal { agreement, .. }
            | DisclosureError::PerSensorNotGranted { agreement }
            | DisclosureError::Withheld { agreement, .. }
            | DisclosureError::NothingDisclosed { agreement, .. }
            | DisclosureError::NotDisclosed { agreement, .. }
            | DisclosureError::NarrowAggregate { agreement }
            | DisclosureError::OffGrid { agreement, .. }
            | DisclosureError::NoNoiseBounds { agreement, .. }
            | DisclosureError::BudgetSpent { agreement, .. } => format!("agreement {agreement}"),
            DisclosureError::TooManyBuckets(_)
            | DisclosureError::Noise(_)
            | DisclosureError::Store(_) => "node".to_string(),
        }
    }
}

/// What an accepted readings question becomes: the query to run (range,
/// measures and filters rewritten), the aggregation to apply, and for an
/// aggregate-only answer the terms to tell the caller.
#[derive(Debug, Clone)]
pub struct AnswerPlan {
    pub query: ReadingQuery,
    pub aggregate: Option<AggregateSpec>,
    pub terms: Option<pb::AnswerTerms>,
}

impl AnswerPlan {
    /// The parameters of an aggregate-only answer in words, for its audit
    /// entry (empty for other answers): the snapped period, bucket and
    /// grid cell, grouping, measures, minimum group and privacy budget
    /// spent.
    pub fn describe(&self) -> String {
        let (Some(terms), Some(aggregate)) = (&self.terms, &self.aggregate) else {
            return String::new();
        };
        let cell = aggregate
            .grid
            .as_ref()
            .map(|grid| show_span(grid.cell))
            .unwrap_or_default();
        format!(
            "aggregate-only: {}..{}, bucket {} on a {} grid, {:?}, measures {}, groups of at \
             least {}, epsilon {}",
            crate::governance::body::show_instant(self.query.from),
            crate::governance::body::show_instant(self.query.until),
            show_span(aggregate.bucket),
            cell,
            aggregate.group,
            if self.query.measures.is_empty() {
                "all".to_string()
            } else {
                self.query.measures.join(",")
            },
            terms.min_group_size,
            terms.epsilon_spent
        )
    }
}

/// `ms` rounded down to a multiple of `step` (epoch-aligned).
fn floor_to(at: OffsetDateTime, step: Duration) -> OffsetDateTime {
    let step_ns = step.whole_nanoseconds().max(1);
    let ns = at.unix_timestamp_nanos();
    OffsetDateTime::from_unix_timestamp_nanos(ns - ns.rem_euclid(step_ns)).unwrap_or(at)
}

/// `at` rounded up to a multiple of `step` (or `at` itself at the end of
/// time).
fn ceil_to(at: OffsetDateTime, step: Duration) -> OffsetDateTime {
    let floor = floor_to(at, step);
    if floor == at {
        at
    } else {
        floor.checked_add(step).unwrap_or(floor)
    }
}

impl Disclosure {
    /// The disclosure `grant` allows for `dataset`, held also to `policy`
    /// (the combined grid of all aggregate-only agreements on it).
    pub fn new(
        grant: &Grant,
        dataset: &Dataset,
        pseudonyms: PseudonymKey,
        policy: Option<GridPolicy>,
    ) -> Disclosure {
        let mut withheld: Vec<String> = Vec::new();
        for field in dataset
            .personal_fields()
            .iter()
            .chain(&grant.excluded_fields)
        {
            let field = field_root(field);
            if !withheld.contains(&field) {
                withheld.push(field);
            }
        }
        let raw = grant.operations.contains(&Operation::Read);
        Disclosure {
            agreement: grant.agreement_id,
            consumer: grant.caller_code,
            withheld,
            raw,
            aggregate_only: (!raw).then(|| {
                (
                    grant.min_group_size.unwrap_or(1).max(1),
                    grant.aggregate.clone(),
                )
            }),
            personal: dataset.classification == Classification::Personal,
            policy,
            pseudonyms,
            noise: BTreeMap::new(),
        }
    }

    fn withholds(&self, field: &str) -> bool {
        self.withheld.contains(&field_root(field))
    }

    /// Refuses a records filter that tests a withheld field: whether a
    /// record matches would reveal the field (a value range halved call by
    /// call finds the exact value).
    fn check_filter(&self, tested: &[(&str, bool)]) -> Result<(), DisclosureError> {
        match tested
            .iter()
            .find(|(field, set)| *set && self.withholds(field))
        {
            Some((field, _)) => Err(DisclosureError::Withheld {
                agreement: self.agreement,
                field: field.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Checks a pilot filter against the disclosure.
    pub fn check_pilot_filter(&self, filter: &pb::PilotFilter) -> Result<(), DisclosureError> {
        self.check_filter(&[
            ("phase", filter.phase != 0),
            ("technology", !filter.technology.is_empty()),
            ("municipalities", filter.municipality != 0),
            ("started", filter.year != 0),
        ])
    }

    /// Checks a procurement filter against the disclosure.
    pub fn check_procurement_filter(
        &self,
        filter: &pb::ProcurementFilter,
    ) -> Result<(), DisclosureError> {
        self.check_filter(&[
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
        ])
    }

    /// The catalog entry as the caller may see it: without withheld fields.
    pub fn dataset(&self, dataset: &Dataset) -> pb::Dataset {
        let mut message = wire::dataset_to_proto(dataset);
        message.schema.retain(|field| !self.withholds(&field.name));
        message
    }

    /// Checks a readings question against the disclosure and turns it into
    /// the plan to answer it by; for a noisy answer, charges the consumer's
    /// privacy budget first. `now` decides which cells have settled.
    pub fn plan(
        &mut self,
        plane: &DataPlane,
        dataset: &Dataset,
        question: ReadingQuestion,
        now: OffsetDateTime,
    ) -> Result<AnswerPlan, DisclosureError> {
        let agreement = self.agreement;
        let ReadingQuestion {
            mut query,
            aggregate,
        } = question;
        if aggregate.is_none() && !self.raw {
            return Err(DisclosureError::RawNotAllowed {
                agreement,
                dataset: dataset.id.clone(),
            });
        }
        if self.aggregate_only.is_some() && (!query.sensor_ids.is_empty() || query.area.is_some()) {
            return Err(DisclosureError::NarrowAggregate { agreement });
        }
        if self.withholds(LOCATION_FIELD) && query.area.is_some() {
            return Err(DisclosureError::Withheld {
                agreement,
                field: LOCATION_FIELD.to_string(),
            });
        }
        if self.withholds(SENSOR_ID_FIELD) && !query.sensor_ids.is_empty() {
            // The caller knows sensors only by their pseudonyms.
            query.sensor_ids = self.resolve_pseudonyms(plane, dataset, &query.sensor_ids)?;
        }
        // A measure that is withheld and one that does not exist get the
        // same answer, listing only what is disclosed, so a caller learns
        // nothing about fields it may not see.
        let disclosed: Vec<String> = dataset
            .measure_names()
            .into_iter()
            .filter(|m| !self.withholds(m))
            .collect();
        if let Some(unknown) = query.measures.iter().find(|m| !disclosed.contains(m)) {
            return Err(DisclosureError::NotDisclosed {
                agreement,
                field: unknown.clone(),
                disclosed: disclosed.join(", "),
            });
        }
        if query.measures.is_empty() {
            if disclosed.is_empty() {
                return Err(DisclosureError::NothingDisclosed {
                    agreement,
                    dataset: dataset.id.clone(),
                });
            }
            query.measures = disclosed;
        }
        let Some((bucket, group)) = aggregate else {
            return Ok(AnswerPlan {
                query,
                aggregate: None,
                terms: None,
            });
        };
        // Refused here, before anything is recorded as allowed or any
        // privacy budget is spent, rather than when the answer starts.
        plane.check_aggregate_size(&ReadingQuestion {
            query: query.clone(),
            aggregate: Some((bucket, group)),
        })?;
        let Some((min_group, terms)) = self.aggregate_only.clone() else {
            // Raw reads are allowed: aggregates of them reveal nothing more.
            return Ok(AnswerPlan {
                query,
                aggregate: Some(AggregateSpec::plain(bucket, group)),
                terms: None,
            });
        };
        if group == Group::PerSensor {
            if self.personal {
                return Err(DisclosureError::PerSensorOfPersonal {
                    agreement,
                    dataset: dataset.id.clone(),
                });
            }
            if !terms.per_sensor {
                return Err(DisclosureError::PerSensorNotGranted { agreement });
            }
        }
        let cell_ns = terms.cell.whole_nanoseconds();
        if cell_ns <= 0 || bucket.whole_nanoseconds() % cell_ns != 0 {
            return Err(DisclosureError::OffGrid {
                agreement,
                bucket: show_span(bucket),
                cell: show_span(terms.cell),
            });
        }
        // Whole buckets only, and only buckets whose cells have all closed
        // and settled.
        query.from = floor_to(query.from, bucket);
        let settled = floor_to(now - terms.settle, bucket);
        query.until = ceil_to(query.until, bucket).min(settled).max(query.from);
        // Checked at the finest cell and the largest minimum of every
        // aggregate-only agreement on this dataset, so answers under two
        // agreements cannot be subtracted to isolate a thin cell; and with
        // per-sensor buckets available, no sensor's part of a cell may be
        // thin either.
        let (grid_cell, grid_min, per_sensor_parts) = match self.policy {
            Some(policy) => (
                gcd_span(terms.cell, policy.cell),
                min_group.max(policy.min_group),
                !self.personal && (policy.per_sensor || terms.per_sensor),
            ),
            None => (terms.cell, min_group, !self.personal && terms.per_sensor),
        };

        let mut clamp = None;
        let mut epsilon_spent = 0.0;
        let mut budget_left = 0.0;
        if let (true, Some(noise)) = (self.personal, &terms.noise) {
            let positions = dataset.measure_names();
            let mut by_position = vec![None; positions.len()];
            for measure in &query.measures {
                let Some(bounds) = noise.bounds.get(measure) else {
                    return Err(DisclosureError::NoNoiseBounds {
                        agreement,
                        measure: measure.clone(),
                        dataset: dataset.id.clone(),
                        available: noise.bounds.keys().cloned().collect::<Vec<_>>().join(", "),
                    });
                };
                if let Some(i) = positions.iter().position(|m| m == measure) {
                    by_position[i] = Some(*bounds);
                }
                self.noise
                    .insert(measure.clone(), MeasureNoise::new(noise.epsilon, *bounds));
            }
            let asked = noise.epsilon * query.measures.len() as f64;
            // The budget is the consumer's, per dataset: a second agreement
            // on the same data is not a fresh budget.
            match plane
                .budgets
                .charge(&dataset.id, self.consumer, asked, noise.budget)?
            {
                Ok(left) => {
                    epsilon_spent = asked;
                    budget_left = left;
                }
                Err(overdrawn) => {
                    return Err(DisclosureError::BudgetSpent {
                        agreement,
                        asked: overdrawn.asked,
                        left: overdrawn.left,
                    });
                }
            }
            clamp = Some(by_position);
        }
        // The audit entry of the call carries these parameters
        // ([`AnswerPlan::describe`]); the log line is for debugging only,
        // so a partner cannot fill the log by asking.
        tracing::debug!(
            agreement = %agreement,
            consumer = self.consumer,
            dataset = %dataset.id,
            from = %crate::governance::body::show_instant(query.from),
            until = %crate::governance::body::show_instant(query.until),
            bucket = %show_span(bucket),
            cell = %show_span(grid_cell),
            grouping = ?group,
            measures = %query.measures.join(","),
            min_group = grid_min,
            epsilon = epsilon_spent,
            "aggregate-only answer"
        );
        Ok(AnswerPlan {
            terms: Some(pb::AnswerTerms {
                cell: show_span(terms.cell),
                from: Some(wire::timestamp(query.from)),
                until: Some(wire::timestamp(query.until)),
                min_group_size: grid_min,
                epsilon_spent,
                budget_left,
            }),
            aggregate: Some(AggregateSpec {
                bucket,
                group,
                grid: Some(Grid {
                    cell: grid_cell,
                    min_group: grid_min,
                    per_sensor_parts,
                }),
                clamp,
            }),
            query,
        })
    }

    /// The real ids of the sensors whose pseudonyms are `asked` (unknown
    /// pseudonyms match nothing, like unknown ids).
    fn resolve_pseudonyms(
        &self,
        plane: &DataPlane,
        dataset: &Dataset,
        asked: &[String],
    ) -> Result<Vec<String>, DisclosureError> {
        let sensors = plane.readings.sensors(&dataset.id).map_err(|e| match e {
            crate::data::IngestError::Store(e) => DisclosureError::Store(e),
            other => DisclosureError::Store(StoreError::Backend(other.to_string())),
        })?;
        let asked: std::collections::HashSet<&String> = asked.iter().collect();
        let mut real = Vec::new();
        for sensor in sensors {
            if asked.contains(&self.pseudonyms.of(self.agreement, &sensor.sensor_id)) {
                real.push(sensor.sensor_id);
            }
        }
        if real.is_empty() {
            // Ask for a sensor that cannot exist rather than for all.
            real.push(format!("{}none", pseudonym::PREFIX));
        }
        Ok(real)
    }

    /// A sensor id as the caller may see it.
    fn sensor_id(&self, id: String) -> String {
        if self.withholds(SENSOR_ID_FIELD) {
            self.pseudonyms.of(self.agreement, &id)
        } else {
            id
        }
    }

    /// A reading as the caller may see it.
    pub fn reading(&self, mut reading: Reading) -> Reading {
        reading
            .values
            .retain(|name, _| !self.withheld.contains(&field_root(name)));
        if self.withholds(LOCATION_FIELD) {
            reading.location = None;
        }
        reading.sensor_id = self.sensor_id(reading.sensor_id);
        reading
    }

    /// A bucket as the caller may see it.
    pub fn bucket(&self, mut bucket: Bucket) -> Result<Bucket, DisclosureError> {
        bucket.sensor_id = bucket.sensor_id.map(|id| self.sensor_id(id));
        if self.aggregate_only.is_some() {
            bucket.distinct_sensors = None;
            if self.personal {
                bucket.min = None;
                bucket.max = None;
            }
            if let Some(noise) = self.noise.get(&bucket.measure) {
                noise.apply(&mut bucket)?;
            }
        }
        Ok(bucket)
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

/// The greatest common divisor of two spans, to the millisecond.
fn gcd_span(a: Duration, b: Duration) -> Duration {
    fn gcd(a: i128, b: i128) -> i128 {
        if b == 0 { a.abs() } else { gcd(b, a % b) }
    }
    Duration::milliseconds(
        i64::try_from(gcd(a.whole_milliseconds(), b.whole_milliseconds())).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn ranges_snap_to_whole_epoch_aligned_buckets() {
        let at = datetime!(2026-03-01 10:40:00.001 UTC);
        assert_eq!(
            floor_to(at, Duration::HOUR),
            datetime!(2026-03-01 10:00 UTC)
        );
        assert_eq!(ceil_to(at, Duration::HOUR), datetime!(2026-03-01 11:00 UTC));
        let whole = datetime!(2026-03-01 10:00 UTC);
        assert_eq!(ceil_to(whole, Duration::HOUR), whole);
        assert_eq!(floor_to(at, Duration::DAY), datetime!(2026-03-01 00:00 UTC));
        // The end of time does not overflow.
        let last = datetime!(9999-12-31 23:59:59 UTC);
        assert_eq!(
            ceil_to(last, Duration::DAY),
            datetime!(9999-12-31 00:00 UTC)
        );
        assert_eq!(
            gcd_span(Duration::HOUR, Duration::minutes(90)),
            Duration::minutes(30)
        );
    }
}
