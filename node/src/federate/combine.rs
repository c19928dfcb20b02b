//! Aggregates combined over several municipalities: for each bucket start
//! and measure, the counts and sums of every source that answered in full
//! are added, minima and maxima taken, and the average is the combined sum
//! over the combined count (never an average of averages).
//!
//! Each source's buckets are collected apart ([`SourceBuckets`]) and added
//! to the combination only when that source is complete, so a partner that
//! timed out half-way never leaves half an answer in the combined figures.
//! Both are bounded ([`MAX_CELLS`]); beyond it the combination is given up
//! with a note, the per-municipality answers are unaffected.

use std::collections::{BTreeMap, BTreeSet};

use samvirke_proto::v1 as pb;

/// Most (bucket start, measure) cells combined in one question.
pub const MAX_CELLS: usize = 200_000;

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
#[derive(Debug, Default)]
pub struct SourceBuckets {
    buckets: Vec<pb::Bucket>,
    overflow: bool,
}

impl SourceBuckets {
    /// Adds buckets grouped over all sensors (others are not combined).
    pub fn add(&mut self, buckets: &[pb::Bucket]) {
        for bucket in buckets.iter().filter(|b| b.sensor_id.is_empty()) {
            if self.buckets.len() >= MAX_CELLS {
                self.overflow = true;
                return;
            }
            self.buckets.push(bucket.clone());
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
        for bucket in source.buckets {
            let key = key_of(&bucket);
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
            cell.count += bucket.count;
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
        let mut aarhus = SourceBuckets::default();
        aarhus.add(&[
            bucket(0, "pm2_5", 10, 100.0, Some((5.0, 15.0))),
            bucket(3600, "pm2_5", 10, 50.0, Some((1.0, 9.0))),
        ]);
        let mut vejle = SourceBuckets::default();
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
        let mut source = SourceBuckets::default();
        let mut per_sensor = bucket(0, "pm10", 6, 6.0, None);
        per_sensor.sensor_id = "s-1".to_string();
        source.add(&[per_sensor]);
        let mut combined = Combined::default();
        combined.add_source(751, source);
        assert!(combined.finish().buckets.is_empty());
    }
}
