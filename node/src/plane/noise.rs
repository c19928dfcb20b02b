//! Calibrated noise for aggregates of datasets classified `personal`, and
//! the privacy budget each consumer has under an agreement.
//!
//! An agreement may ask for noise (`[aggregate.noise]`: `epsilon` per
//! answer and measure, a total `budget`, and a range per measure). Then an
//! aggregate-only answer about a personal dataset releases, per bucket and
//! measure, a count and a sum with Laplace noise, and the average computed
//! from them; never a minimum or a maximum.
//!
//! Why it is sound, and what it protects:
//! - The unit of privacy is one reading (event-level differential
//!   privacy): adding or removing one reading changes a bucket's count by 1
//!   and its sum by at most `max(|lower|, |upper|)`, since values are
//!   clamped to the agreement's range before they are summed.
//! - Each of count and sum gets half the answer's epsilon (sequential
//!   composition); buckets of one answer are disjoint in time, so one answer
//!   costs epsilon per measure (parallel composition).
//! - The noise is sampled by OpenDP's discrete Laplace mechanism (exact
//!   sampling, immune to the floating-point attacks on naive Laplace
//!   samplers), with OpenSSL's random generator.
//! - Every answer is charged before it is computed, against a budget per
//!   (dataset, consumer) kept in the store: asking the same thing again
//!   and averaging costs budget too, a second agreement on the same data
//!   is not a fresh budget, and when it is spent the consumer is refused
//!   (RESOURCE_EXHAUSTED).
//!
//! What it does not protect: a household that contributes many readings
//! to one bucket is protected per reading, not as a whole (a user-level
//! guarantee needs a bound on readings per sensor and bucket, which
//! sensor data does not have); and whether a bucket is released at all
//! follows the grid's minimum group size on true counts.

use std::sync::{Arc, Mutex};

use opendp::domains::AtomDomain;
use opendp::measurements::make_laplace;
use opendp::measures::MaxDivergence;
use opendp::metrics::AbsoluteDistance;

use crate::data::aggregate::Bucket;
use crate::store::{Keyspace, Store, StoreError};

/// Why noise could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("the noise mechanism could not be built: {0}")]
    Mechanism(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Laplace noise for one measure's count and sum, at a fixed epsilon.
#[derive(Debug, Clone)]
pub struct MeasureNoise {
    epsilon: f64,
    /// Range values are clamped to before summing.
    bounds: (f64, f64),
}

impl MeasureNoise {
    /// Noise spending `epsilon` per bucket on values clamped to `bounds`.
    pub fn new(epsilon: f64, bounds: (f64, f64)) -> MeasureNoise {
        MeasureNoise { epsilon, bounds }
    }

    /// How much one reading can change a clamped sum.
    fn sum_sensitivity(&self) -> f64 {
        self.bounds.0.abs().max(self.bounds.1.abs())
    }

    /// Replaces the bucket's count, sum and average by noisy ones and
    /// clears what noise does not protect (min, max, distinct sensors).
    pub fn apply(&self, bucket: &mut Bucket) -> Result<(), NoiseError> {
        let half = self.epsilon / 2.0;
        let count_noise = make_laplace::<_, _, MaxDivergence>(
            AtomDomain::<i64>::default(),
            AbsoluteDistance::<i64>::default(),
            1.0 / half,
            None,
        )
        .map_err(|e| NoiseError::Mechanism(e.to_string()))?;
        let sum_noise = make_laplace::<_, _, MaxDivergence>(
            AtomDomain::<f64>::new_non_nan(),
            AbsoluteDistance::<f64>::default(),
            self.sum_sensitivity() / half,
            None,
        )
        .map_err(|e| NoiseError::Mechanism(e.to_string()))?;
        let count = count_noise
            .invoke(&i64::try_from(bucket.count).unwrap_or(i64::MAX))
            .map_err(|e| NoiseError::Mechanism(e.to_string()))?;
        let sum = sum_noise
            .invoke(&bucket.sum)
            .map_err(|e| NoiseError::Mechanism(e.to_string()))?;
        bucket.count = u64::try_from(count).unwrap_or(0);
        bucket.sum = sum;
        // Post-processing: no further privacy cost.
        bucket.avg = if bucket.count > 0 {
            (sum / bucket.count as f64).clamp(self.bounds.0, self.bounds.1)
        } else {
            0.0
        };
        bucket.min = None;
        bucket.max = None;
        bucket.distinct_sensors = None;
        Ok(())
    }
}

/// Privacy budget spent per (dataset, consumer), in the store: a consumer
/// holding several agreements on one dataset spends from one budget.
#[derive(Debug)]
pub struct Budgets {
    store: Arc<dyn Store>,
    /// Charges are read-modify-write: one at a time.
    lock: Mutex<()>,
}

/// A charge refused: what is left is less than what was asked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overdrawn {
    pub left: f64,
    pub asked: f64,
}

fn budget_key(dataset: &str, consumer: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(dataset.len() + 5);
    key.extend_from_slice(&consumer.to_be_bytes());
    key.push(0);
    key.extend_from_slice(dataset.as_bytes());
    key
}

impl Budgets {
    pub fn new(store: Arc<dyn Store>) -> Budgets {
        Budgets {
            store,
            lock: Mutex::new(()),
        }
    }

    /// What `consumer` has spent on `dataset`.
    pub fn spent(&self, dataset: &str, consumer: u32) -> Result<f64, StoreError> {
        Ok(self
            .store
            .get(Keyspace::Budgets, &budget_key(dataset, consumer))?
            .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
            .map(|bytes| f64::from_bits(u64::from_be_bytes(bytes)))
            .unwrap_or(0.0))
    }

    /// Charges `epsilon` to `consumer` on `dataset`, durably, if the
    /// `budget` allows; returns what is left after the charge.
    pub fn charge(
        &self,
        dataset: &str,
        consumer: u32,
        epsilon: f64,
        budget: f64,
    ) -> Result<Result<f64, Overdrawn>, StoreError> {
        let _guard = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = budget_key(dataset, consumer);
        // Compare-and-swap, so that node processes sharing one store never
        // both spend the same remainder: a charge made meanwhile by another
        // process is read back and the check made again.
        loop {
            let stored = self.store.get(Keyspace::Budgets, &key)?;
            let spent = stored
                .as_deref()
                .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                .map(|bytes| f64::from_bits(u64::from_be_bytes(bytes)))
                .unwrap_or(0.0);
            let left = budget - spent;
            // A little slack for the sums of floating-point charges.
            if epsilon > left + 1e-9 {
                return Ok(Err(Overdrawn {
                    left: left.max(0.0),
                    asked: epsilon,
                }));
            }
            let charged = (spent + epsilon).to_bits().to_be_bytes().to_vec();
            if self
                .store
                .compare_and_swap(Keyspace::Budgets, &key, stored.as_deref(), charged)?
            {
                self.store.flush()?;
                return Ok(Ok((left - epsilon).max(0.0)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn bucket(count: u64, sum: f64) -> Bucket {
        Bucket {
            start: time::macros::datetime!(2026-01-01 00:00 UTC),
            sensor_id: None,
            measure: "kwh".to_string(),
            count,
            min: Some(0.1),
            max: Some(9.9),
            sum,
            avg: sum / count as f64,
            distinct_sensors: Some(12),
        }
    }

    #[test]
    fn noise_changes_counts_and_sums_and_withholds_extremes() {
        let noise = MeasureNoise::new(1.0, (0.0, 10.0));
        let mut changed = 0;
        for _ in 0..50 {
            let mut b = bucket(500, 2_500.0);
            noise.apply(&mut b).expect("noise");
            assert_eq!((b.min, b.max, b.distinct_sensors), (None, None, None));
            assert!((0.0..=10.0).contains(&b.avg), "{}", b.avg);
            // Scale 20 on the sum: far beyond 2000 away is (almost) impossible.
            assert!((b.sum - 2_500.0).abs() < 2_000.0, "{}", b.sum);
            if b.count != 500 || b.sum != 2_500.0 {
                changed += 1;
            }
        }
        assert!(
            changed > 40,
            "noise must almost always change something: {changed}"
        );
    }

    #[test]
    fn budgets_are_charged_durably_and_refuse_overdrafts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let budgets = Budgets::new(Arc::clone(&store));
        let id = "aarhus-household-power";
        assert_eq!(budgets.charge(id, 630, 1.0, 2.5).expect("io"), Ok(1.5));
        assert_eq!(budgets.charge(id, 630, 1.0, 2.5).expect("io"), Ok(0.5));
        assert_eq!(
            budgets.charge(id, 630, 1.0, 2.5).expect("io"),
            Err(Overdrawn {
                left: 0.5,
                asked: 1.0
            })
        );
        // Another consumer has its own budget.
        assert_eq!(budgets.charge(id, 165, 1.0, 2.5).expect("io"), Ok(1.5));
        drop(budgets);
        let again = Budgets::new(store);
        assert_eq!(again.spent(id, 630).expect("io"), 2.0);
    }
}
