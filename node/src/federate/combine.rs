//! Aggregates combined over several municipalities: for each bucket start
//! and measure, the counts and sums of every source that answered in full
//! are added, minima and maxima taken, and the average is the combined sum
//! over the combined count (never an average of averages).
//!
//! Each source's buckets are collected apart ([`SourceBuckets`]) and added
//! to the combination only when that source is complete, so a partner that
//! timed out half-way never leaves half an answer in the combined figures.
//! What a question keeps is bounded over all its sources together
//! ([`CombineBudget`]: [`MAX_CELLS`] buckets, each of a measure the
//! question asked for and a bounded name), so a partner streaming many
//! buckets, or many datasets, cannot make this node hold more; beyond it
//! the combination is given up with a note, and the per-municipality
//! answers are unaffected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use samvirke_proto::v1 as pb;

/// Most buckets one question keeps for combining, over all its sources
/// (and most cells it combines).
pub const MAX_CELLS: usize = 200_000;

/// Longest measure name kept (catalog field names are at most 64).
const MAX_MEASURE_CHARS: usize = 64;

/// What one question may keep for combining, shared by its sources.
#[derive(Debug)]
pub struct CombineBudget {
    buckets_left: AtomicUsize,
    /// The measures asked for; empty: any.
    measures: BTreeSet<String>,
}

impl CombineBudget {
    /// A budget of [`MAX_CELLS`] buckets of `measures` (empty: any).
    pub fn new(measures: &[String]) -> Arc<CombineBudget> {
        Arc::new(CombineBudget {
            buckets_left: AtomicUsize::new(MAX_CELLS),
            measures: measures.iter().cloned().collect(),
        })
    }

    /// Takes one bucket's place; false when the budget is spent.
    fn take(&self) -> bool {
        self.buckets_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }

    fn wants(&self, measure: &str) -> bool {
        measure.len() <= MAX_MEASURE_CHARS
            && (self.measures.is_empty() || self.measures.contains(measure))
    }
}

/// The part of a bucket combining needs.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    key: Key,
    count: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Cell {
    count: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
    /// False once a source withheld its extremes for this cell.
    extremes: bool,
    municipalities: BTreeSet<u32>,
}

type Key = (i64, i32, String);

fn key_of(bucket: &pb::Bucket) -> Key {
    let start = bucket.start.unwrap_or_default();
    (start.seconds, start.nanos, bucket.measure.clone())
}

/// One source's buckets, kept until it is known to be complete.
#[derive(Debug)]
pub struct SourceBuckets {
    parts: Vec<Part>,
    overflow: bool,
    budget: Arc<CombineBudget>,
}

impl SourceBuckets {
    /// A source of a question whose budget is `budget`.
    pub fn new(budget: Arc<CombineBudget>) -> SourceBuckets {
        SourceBuckets {
            parts: Vec::new(),
            overflow: false,
            budget,
        }
    }

    /// Adds buckets grouped over all sensors, of measures asked for
    /// (others are not combined).
    pub fn add(&mut self, buckets: &[pb::Bucket]) {
        if self.overflow {
            return;
        }
        for bucket in buckets
            .iter()
            .filter(|b| b.sensor_id.is_empty() && self.budget.wants(&b.measure))
        {
            if !self.budget.take() {
                self.overflow = true;
                self.parts = Vec::new();
                return;
            }
            self.parts.push(Part {
                key: key_of(bucket),
                count: bucket.count,
                sum: bucket.sum,
                min: bucket.min,
                max: bucket.max,
            });
        }
    }
}

/// The combination of complete sources.
#[derive(Debug, Default)]
pub struct Combined {
    cells: BTreeMap<Key, Cell>,
    sources: BTreeSet<u32>,
    overflow: bool,
    left_out: Vec<String>,
}

impl Combined {
    /// Adds a complete source of municipality `code`.
    pub fn add_source(&mut self, code: u32, source: SourceBuckets) {
        if source.overflow {
            self.overflow = true;
        }
        if self.overflow {
            return;
        }
        self.sources.insert(code);
        for bucket in source.parts {
            let key = bucket.key;
            if !self.cells.contains_key(&key) && self.cells.len() >= MAX_CELLS {
                self.overflow = true;
                return;
            }
            let cell = self.cells.entry(key).or_insert(Cell {
                count: 0,
                sum: 0.0,
                min: None,
                max: None,
                extremes: true,
                municipalities: BTreeSet::new(),
            });
            // A partner's counts are its own to state, but never wrap.
            cell.count = cell.count.saturating_add(bucket.count);
            cell.sum += bucket.sum;
            match (bucket.min, bucket.max) {
                (Some(min), Some(max)) if cell.extremes => {
                    cell.min = Some(cell.min.map_or(min, |m| m.min(min)));
                    cell.max = Some(cell.max.map_or(max, |m| m.max(max)));
                }
                _ => {
                    cell.extremes = false;
                    cell.min = None;
                    cell.max = None;
                }
            }
            cell.municipalities.insert(code);
        }
    }

    /// Notes a source that is not in the combination, and why.
    pub fn leave_out(&mut self, what: String) {
        self.left_out.push(what);
    }

    /// Whether anything was combined.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && !self.overflow
    }

    /// The combined buckets, in start and measure order.
    pub fn finish(self) -> pb::CombinedBuckets {
        let mut note = Vec::new();
        if self.overflow {
            note.push(format!(
                "not combined: more than {MAX_CELLS} buckets; ask for larger buckets or a shorter \
                 range"
            ));
        }
        if !self.left_out.is_empty() {
            note.push(format!("left out: {}", self.left_out.join("; ")));
        }
        let buckets = if self.overflow {
            Vec::new()
        } else {
            self.cells
                .into_iter()
                .map(|((seconds, nanos, measure), cell)| pb::CombinedBucket {
                    start: Some(prost_types::Timestamp { seconds, nanos }),
                    measure,
                    count: cell.count,
                    sum: cell.sum,
                    avg: if cell.count == 0 {
                        0.0
                    } else {
                        cell.sum / cell.count as f64
                    },
                    min: cell.min,
                    max: cell.max,
                    municipalities: cell.municipalities.into_iter().collect(),
                })
                .collect()
        };
        pb::CombinedBuckets {
            buckets,
            note: note.join(". "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(
        start: i64,
        measure: &str,
        count: u64,
        sum: f64,
        extremes: Option<(f64, f64)>,
    ) -> pb::Bucket {
        pb::Bucket {
            start: Some(prost_types::Timestamp {
                seconds: start,
                nanos: 0,
            }),
            measure: measure.to_string(),
            count,
            sum,
            avg: sum / count as f64,
            min: extremes.map(|e| e.0),
            max: extremes.map(|e| e.1),
            ..Default::default()
        }
    }

    #[test]
    fn sums_and_counts_add_and_the_average_is_of_the_whole() {
        let budget = CombineBudget::new(&[]);
        let mut aarhus = SourceBuckets::new(Arc::clone(&budget));
        aarhus.add(&[
            bucket(0, "pm2_5", 10, 100.0, Some((5.0, 15.0))),
            bucket(3600, "pm2_5", 10, 50.0, Some((1.0, 9.0))),
        ]);
        let mut vejle = SourceBuckets::new(budget);
        vejle.add(&[
            bucket(0, "pm2_5", 30, 60.0, Some((0.5, 4.0))),
            bucket(3600, "pm2_5", 5, 25.0, None),
        ]);
        let mut combined = Combined::default();
        combined.add_source(751, aarhus);
        combined.add_source(630, vejle);
        let out = combined.finish();
        assert_eq!(out.buckets.len(), 2);
        let first = &out.buckets[0];
        assert_eq!((first.count, first.sum), (40, 160.0));
        assert_eq!(first.avg, 4.0);
        assert_eq!((first.min, first.max), (Some(0.5), Some(15.0)));
        assert_eq!(first.municipalities, vec![630, 751]);
        // A source without extremes leaves the cell without them.
        assert_eq!((out.buckets[1].min, out.buckets[1].max), (None, None));
        assert_eq!(out.buckets[1].count, 15);
    }

    #[test]
    fn per_sensor_buckets_are_not_combined() {
        let mut source = SourceBuckets::new(CombineBudget::new(&[]));
        let mut per_sensor = bucket(0, "pm10", 6, 6.0, None);
        per_sensor.sensor_id = "s-1".to_string();
        source.add(&[per_sensor]);
        let mut combined = Combined::default();
        combined.add_source(751, source);
        assert!(combined.finish().buckets.is_empty());
    }

    #[test]
    fn one_budget_bounds_every_source_of_a_question_and_only_measures_asked_count() {
        let budget = CombineBudget::new(&["pm2_5".to_string()]);
        let mut first = SourceBuckets::new(Arc::clone(&budget));
        let mut second = SourceBuckets::new(Arc::clone(&budget));
        // Measures not asked for, and absurd names, take no place.
        first.add(&[
            bucket(0, "no2", 1, 1.0, None),
            bucket(0, &"x".repeat(100_000), 1, 1.0, None),
        ]);
        assert!(first.parts.is_empty() && !first.overflow);
        let many: Vec<pb::Bucket> = (0..MAX_CELLS as i64 - 1)
            .map(|i| bucket(i * 60, "pm2_5", 1, 1.0, None))
            .collect();
        first.add(&many);
        assert!(!first.overflow);
        // The second source gets what is left of the same budget: one.
        second.add(&[
            bucket(0, "pm2_5", 1, 1.0, None),
            bucket(60, "pm2_5", 1, 1.0, None),
        ]);
        assert!(second.overflow);
        assert!(
            second.parts.is_empty(),
            "an overflowing source keeps nothing"
        );
        let mut combined = Combined::default();
        combined.add_source(751, first);
        combined.add_source(630, second);
        let out = combined.finish();
        assert!(out.buckets.is_empty());
        assert!(out.note.contains("not combined"), "{}", out.note);
    }
}
