//! Conversions between the protobuf messages of the data plane and the
//! node's own types ([`crate::data`]), in one place so the local and peer
//! services read and write data the same way. Reading a message checks
//! what protobuf cannot express (enums spelt as text, required times) and
//! names the field at fault; the domain types then check meaning.

use std::collections::BTreeMap;

use samvirke_proto::v1 as pb;
use time::{Duration, OffsetDateTime};

use crate::data::aggregate::{Bucket, Group, parse_bucket};
use crate::data::catalog::{
    Classification, Dataset, DatasetKind, FieldType, SchemaField, TemporalExtent,
};
use crate::data::geo::{Area, BoundingBox};
use crate::data::query::{Order, ReadingQuery};
use crate::data::readings::Reading;

/// A message field that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct WireError {
    pub field: String,
    pub reason: String,
}

fn wire_error(field: impl Into<String>, reason: impl Into<String>) -> WireError {
    WireError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A protobuf timestamp from a time.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).unwrap_or(0),
    }
}

/// A time from a protobuf timestamp.
pub fn time_of(field: &str, at: &prost_types::Timestamp) -> Result<OffsetDateTime, WireError> {
    let nanos = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|_| wire_error(field, "timestamp out of range"))
}

fn required_time(
    field: &str,
    at: Option<&prost_types::Timestamp>,
) -> Result<OffsetDateTime, WireError> {
    time_of(field, at.ok_or_else(|| wire_error(field, "missing"))?)
}

fn parse_enum<T>(field: &str, text: &str, all: &[(&str, T)]) -> Result<T, WireError>
where
    T: Copy,
{
    all.iter()
        .find(|(name, _)| *name == text)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|(name, _)| *name).collect();
            wire_error(
                field,
                format!("`{text}` is not one of {}", names.join(", ")),
            )
        })
}

// ---- Catalog ------------------------------------------------------------

/// A dataset from its message.
pub fn dataset_from_proto(message: pb::Dataset) -> Result<Dataset, WireError> {
    let kind = parse_enum(
        "kind",
        &message.kind,
        &[
            ("sensor", DatasetKind::Sensor),
            ("pilot", DatasetKind::Pilot),
            ("procurement", DatasetKind::Procurement),
        ],
    )?;
    let classification = parse_enum(
        "classification",
        &message.classification,
        &[
            ("open", Classification::Open),
            ("internal", Classification::Internal),
            ("confidential", Classification::Confidential),
            ("personal", Classification::Personal),
        ],
    )?;
    let schema = message
        .schema
        .into_iter()
        .enumerate()
        .map(|(i, field)| {
            Ok(SchemaField {
                field_type: parse_enum(
                    &format!("schema[{i}].type"),
                    &field.r#type,
                    &[
                        ("number", FieldType::Number),
                        ("text", FieldType::Text),
                        ("bool", FieldType::Bool),
                        ("timestamp", FieldType::Timestamp),
                    ],
                )?,
                name: field.name,
                unit: field.unit,
                personal: field.personal,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let temporal = match message.temporal {
        None => TemporalExtent::default(),
        Some(range) => TemporalExtent {
            from: range
                .from
                .as_ref()
                .map(|t| time_of("temporal.from", t))
                .transpose()?,
            until: range
                .until
                .as_ref()
                .map(|t| time_of("temporal.until", t))
                .transpose()?,
        },
    };
    Ok(Dataset {
        id: message.id,
        title: message.title,
        description: message.description,
        kind,
        owner: message.owner,
        theme: message.theme,
        keywords: message.keywords,
        license: message.license,
        spatial: message.spatial.map(bbox_from_proto),
        temporal,
        classification,
        schema,
        update_interval_s: message.update_interval_seconds,
    })
}

/// The message of a dataset.
pub fn dataset_to_proto(dataset: &Dataset) -> pb::Dataset {
    pb::Dataset {
        id: dataset.id.clone(),
        title: dataset.title.clone(),
        description: dataset.description.clone(),
        kind: dataset.kind.as_str().to_string(),
        owner: dataset.owner,
        theme: dataset.theme.clone(),
        keywords: dataset.keywords.clone(),
        license: dataset.license.clone(),
        spatial: dataset.spatial.map(bbox_to_proto),
        temporal: (dataset.temporal != TemporalExtent::default()).then(|| pb::TimeRange {
            from: dataset.temporal.from.map(timestamp),
            until: dataset.temporal.until.map(timestamp),
        }),
        classification: dataset.classification.as_str().to_string(),
        schema: dataset
            .schema
            .iter()
            .map(|field| pb::SchemaField {
                name: field.name.clone(),
                r#type: field.field_type.as_str().to_string(),
                unit: field.unit.clone(),
                personal: field.personal,
            })
            .collect(),
        update_interval_seconds: dataset.update_interval_s,
    }
}

fn bbox_from_proto(b: pb::BoundingBox) -> BoundingBox {
    BoundingBox {
        min_lat: b.min_lat,
        min_lon: b.min_lon,
        max_lat: b.max_lat,
        max_lon: b.max_lon,
    }
}

fn bbox_to_proto(b: BoundingBox) -> pb::BoundingBox {
    pb::BoundingBox {
        min_lat: b.min_lat,
        min_lon: b.min_lon,
        max_lat: b.max_lat,
        max_lon: b.max_lon,
    }
}

// ---- Readings -----------------------------------------------------------

/// A reading from its message; `field` prefixes error paths (`readings[3]`).
pub fn reading_from_proto(field: &str, message: pb::Reading) -> Result<Reading, WireError> {
    Ok(Reading {
        at: required_time(&format!("{field}.at"), message.at.as_ref())?,
        sensor_id: message.sensor_id,
        values: message.values.into_iter().collect::<BTreeMap<_, _>>(),
        location: message.location.map(|l| (l.lat, l.lon)),
    })
}

/// The message of a reading.
pub fn reading_to_proto(reading: Reading) -> pb::Reading {
    pb::Reading {
        at: Some(timestamp(reading.at)),
        sensor_id: reading.sensor_id,
        values: reading.values.into_iter().collect(),
        location: reading.location.map(|(lat, lon)| pb::Location { lat, lon }),
    }
}

/// The message of an aggregate bucket.
pub fn bucket_to_proto(bucket: Bucket) -> pb::Bucket {
    pb::Bucket {
        start: Some(timestamp(bucket.start)),
        sensor_id: bucket.sensor_id.unwrap_or_default(),
        measure: bucket.measure,
        count: bucket.count,
        min: bucket.min,
        max: bucket.max,
        sum: bucket.sum,
        avg: bucket.avg,
        distinct_sensors: bucket.distinct_sensors,
    }
}

/// What a readings question asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingQuestion {
    pub query: ReadingQuery,
    /// Bucket size and grouping, for an aggregate question.
    pub aggregate: Option<(Duration, Group)>,
}

/// A readings question from its message.
pub fn query_from_proto(message: pb::ReadingQuery) -> Result<ReadingQuestion, WireError> {
    if message.dataset_id.is_empty() {
        return Err(wire_error("dataset_id", "missing"));
    }
    let area = match message.area {
        None => None,
        Some(pb::reading_query::Area::Bbox(b)) => Some(Area::BoundingBox(bbox_from_proto(b))),
        Some(pb::reading_query::Area::Radius(r)) => Some(Area::Radius {
            lat: r.lat,
            lon: r.lon,
            km: r.km,
        }),
    };
    let order = match pb::Order::try_from(message.order) {
        Ok(pb::Order::Ascending) => Order::Ascending,
        Ok(pb::Order::Descending) => Order::Descending,
        Err(_) => return Err(wire_error("order", "unknown order")),
    };
    let aggregate = if message.bucket.is_empty() {
        None
    } else {
        let size = parse_bucket(&message.bucket).map_err(|e| wire_error("bucket", e.reason))?;
        let group = match pb::Grouping::try_from(message.grouping) {
            Ok(pb::Grouping::AllSensors) => Group::AllSensors,
            Ok(pb::Grouping::PerSensor) => Group::PerSensor,
            Err(_) => return Err(wire_error("grouping", "unknown grouping")),
        };
        Some((size, group))
    };
    Ok(ReadingQuestion {
        query: ReadingQuery {
            from: required_time("from", message.from.as_ref())?,
            until: required_time("until", message.until.as_ref())?,
            dataset: message.dataset_id,
            sensor_ids: message.sensor_ids,
            area,
            measures: message.measures,
            order,
            limit: u64::from(message.limit),
        },
        aggregate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_text_names_the_field_and_the_choices() {
        let message = pb::Dataset {
            kind: "video".into(),
            ..Default::default()
        };
        let err = dataset_from_proto(message).expect_err("bad kind");
        assert_eq!(err.field, "kind");
        assert!(err.reason.contains("sensor, pilot, procurement"), "{err}");
    }

    #[test]
    fn a_query_without_times_names_the_missing_field() {
        let err = query_from_proto(pb::ReadingQuery {
            dataset_id: "aarhus-air-quality".into(),
            ..Default::default()
        })
        .expect_err("no from");
        assert_eq!(err.field, "from");
    }

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        let at =
            OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).expect("time");
        assert_eq!(time_of("at", &timestamp(at)).expect("back"), at);
    }
}
