//! Mappings: where the sensor id, time, location and measures are in a
//! JSON body that someone else's software shaped (an OS2iot payload
//! decoder's output, an MQTT message), configured per HTTP-push endpoint
//! or MQTT subscription as `mapping` (documented in
//! `deploy/node.example.toml`).
//!
//! This module owns the mapping's config form ([`RawMapping`]), its
//! checks, the small path syntax ([`JsonPath`]) and turning one body into
//! readings ([`Mapping::map`]). It stores nothing: doors hand what it
//! returns to the pipeline.
//!
//! A body that is an array maps element by element; an object is one
//! element. Either every element maps or the body is refused as a whole,
//! with an error naming the element index, the field, the path and the
//! reason, so a sender never has half a body stored.
//!
//! Per element:
//! - **sensor id**: a path (a string, or an integer written as text), a
//!   fixed value, or (MQTT) a segment of the topic;
//! - **time**: a path to an RFC 3339 string (or Unix seconds or
//!   milliseconds, by `time_format`); without a path, the time the body
//!   was received;
//! - **location** (optional): a path to a GeoJSON Point
//!   (`{"type": "Point", "coordinates": [longitude, latitude]}`, also
//!   inside an NGSI-LD `GeoProperty`), or paths to a latitude and a
//!   longitude, or a fixed place. A location path absent from a body
//!   leaves that reading without a location; one present but malformed
//!   refuses the body;
//! - **measures**: measure name -> path to a number. A path may end in
//!   `.value` for NGSI-LD properties (`{"type": "Property", "value":
//!   21.4}`). A measure absent (or `null`) in an element is left out of
//!   that reading; an element with none of them is refused, as is a
//!   value that is not a number.
//!
//! Path syntax: keys separated by dots, each optionally followed by array
//! indices in brackets, e.g. `deviceId`, `temperature.value`,
//! `data[0].values[2]`, `[1].id`; an optional leading `$.` is ignored.
//! Keys containing `.`, `[` or `]` cannot be addressed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::data::readings::Reading;

/// Longest path accepted in a mapping, in bytes.
const MAX_PATH_LEN: usize = 256;
/// Most measures one mapping may name.
const MAX_MEASURES: usize = 64;

// ---- Config form -----------------------------------------------------------

/// A `mapping` table as written in the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapping {
    /// Path to the sensor id.
    #[serde(default)]
    pub sensor_id: Option<String>,
    /// A fixed sensor id for every reading.
    #[serde(default)]
    pub sensor_id_value: Option<String>,
    /// (MQTT) the topic segment holding the sensor id, from 0.
    #[serde(default)]
    pub sensor_id_topic_segment: Option<usize>,
    /// Path to the time; absent: the time of receipt.
    #[serde(default)]
    pub time: Option<String>,
    /// How the value at `time` is written.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Path to a GeoJSON Point (or an NGSI-LD GeoProperty holding one).
    #[serde(default)]
    pub location: Option<String>,
    /// Paths to a latitude and a longitude, in WGS84 degrees.
    #[serde(default)]
    pub latitude: Option<String>,
    #[serde(default)]
    pub longitude: Option<String>,
    /// A fixed place for every reading.
    #[serde(default)]
    pub location_value: Option<RawPlace>,
    /// Measure name -> path to its number.
    #[serde(default)]
    pub measures: BTreeMap<String, String>,
}

/// A fixed place: `{ latitude = 56.15, longitude = 10.21 }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlace {
    pub latitude: f64,
    pub longitude: f64,
}

/// How a time value is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// A string such as `2026-01-01T10:00:00Z` (the default).
    #[default]
    Rfc3339,
    /// A number of seconds since 1970-01-01 UTC.
    UnixSeconds,
    /// A number of milliseconds since 1970-01-01 UTC.
    UnixMillis,
}

/// A mapping key that does not make sense; `key` is relative to the
/// mapping table (e.g. `measures.temperature`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct MappingConfigError {
    pub key: String,
    pub reason: String,
}

fn config_error(key: &str, reason: impl Into<String>) -> MappingConfigError {
    MappingConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

// ---- Paths -----------------------------------------------------------------

/// A parsed path into a JSON value (see the module doc for the syntax).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

impl JsonPath {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        if text.len() > MAX_PATH_LEN {
            return Err(format!("a path is at most {MAX_PATH_LEN} bytes"));
        }
        let body = text.strip_prefix("$.").unwrap_or(text);
        if body.is_empty() {
            return Err("a path must not be empty".to_string());
        }
        let mut steps = Vec::new();
        for (n, segment) in body.split('.').enumerate() {
            let (key, mut rest) = match segment.find('[') {
                Some(at) => segment.split_at(at),
                None => (segment, ""),
            };
            if key.contains(']') {
                return Err(format!("`{segment}`: `]` without `[`"));
            }
            if key.is_empty() && (n > 0 || rest.is_empty()) {
                return Err(format!(
                    "`{text}`: empty key (two dots in a row, or a dot at an end)"
                ));
            }
            if !key.is_empty() {
                steps.push(Step::Key(key.to_string()));
            }
            while !rest.is_empty() {
                let inner = rest
                    .strip_prefix('[')
                    .and_then(|r| r.split_once(']'))
                    .ok_or_else(|| format!("`{segment}`: expected `[index]`"))?;
                let index: usize = inner
                    .0
                    .parse()
                    .map_err(|_| format!("`[{}]` is not an array index", inner.0))?;
                steps.push(Step::Index(index));
                rest = inner.1;
            }
        }
        Ok(JsonPath {
            text: text.to_string(),
            steps,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `value`; `None` if any step is missing
    /// (a key not in an object, an index past an array's end, a step into
    /// something that is neither).
    pub fn find<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        self.steps
            .iter()
            .try_fold(value, |at, step| match (step, at) {
                (Step::Key(key), Value::Object(map)) => map.get(key),
                (Step::Index(i), Value::Array(items)) => items.get(*i),
                _ => None,
            })
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---- The checked mapping ---------------------------------------------------

/// Where a reading's sensor id comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum SensorIdSource {
    Path(JsonPath),
    Fixed(String),
    /// A segment of the MQTT topic, from 0.
    TopicSegment(usize),
}

/// Where a reading's location comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum LocationSource {
    None,
    Point(JsonPath),
    LatLon {
        latitude: JsonPath,
        longitude: JsonPath,
    },
    Fixed {
        latitude: f64,
        longitude: f64,
    },
}

/// A checked mapping, ready to map bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    sensor_id: SensorIdSource,
    time: Option<JsonPath>,
    time_format: TimeFormat,
    location: LocationSource,
    measures: Vec<(String, JsonPath)>,
}

impl Mapping {
    /// Checks `raw`. `topics` says whether the body comes with a topic
    /// (MQTT), so `sensor_id_topic_segment` may be used.
    pub fn from_raw(raw: RawMapping, topics: bool) -> Result<Mapping, MappingConfigError> {
        let path = |key: &str, text: &str| {
            JsonPath::parse(text).map_err(|reason| config_error(key, reason))
        };
        let sensor_id = match (
            &raw.sensor_id,
            &raw.sensor_id_value,
            raw.sensor_id_topic_segment,
        ) {
            (Some(p), None, None) => SensorIdSource::Path(path("sensor_id", p)?),
            (None, Some(fixed), None) => {
                if fixed.trim().is_empty() {
                    return Err(config_error("sensor_id_value", "must not be empty"));
                }
                SensorIdSource::Fixed(fixed.clone())
            }
            (None, None, Some(segment)) => {
                if !topics {
                    return Err(config_error(
                        "sensor_id_topic_segment",
                        "only MQTT messages come with a topic; use sensor_id or sensor_id_value",
                    ));
                }
                SensorIdSource::TopicSegment(segment)
            }
            (None, None, None) => {
                return Err(config_error(
                    "sensor_id",
                    "say where the sensor id is: sensor_id (a path), sensor_id_value (fixed)\
                     or, for MQTT, sensor_id_topic_segment",
                ));
            }
            _ => {
                return Err(config_error(
                    "sensor_id",
                    "give only one of sensor_id, sensor_id_value, sensor_id_topic_segment",
                ));
            }
        };
        let time = raw.time.as_deref().map(|t| path("time", t)).transpose()?;
        if time.is_none() && raw.time_format != TimeFormat::Rfc3339 {
            return Err(config_error(
                "time_format",
                "is set but `time` is not; without a time path readings take the time of receipt",
            ));
        }
        let location = match (
            &raw.location,
            &raw.latitude,
            &raw.longitude,
            raw.location_value,
        ) {
            (None, None, None, None) => LocationSource::None,
            (Some(p), None, None, None) => LocationSource::Point(path("location", p)?),
            (None, Some(lat), Some(lon), None) => LocationSource::LatLon {
                latitude: path("latitude", lat)?,
                longitude: path("longitude", lon)?,
            },
            (None, Some(_), None, None) => {
                return Err(config_error(
                    "longitude",
                    "latitude is set, longitude is not",
                ));
            }
            (None, None, Some(_), None) => {
                return Err(config_error(
                    "latitude",
                    "longitude is set, latitude is not",
                ));
            }
            (None, None, None, Some(place)) => {
                if !(-90.0..=90.0).contains(&place.latitude) {
                    return Err(config_error(
                        "location_value.latitude",
                        format!("{} is outside -90..=90", place.latitude),
                    ));
                }
                if !(-180.0..=180.0).contains(&place.longitude) {
                    return Err(config_error(
                        "location_value.longitude",
                        format!("{} is outside -180..=180", place.longitude),
                    ));
                }
                LocationSource::Fixed {
                    latitude: place.latitude,
                    longitude: place.longitude,
                }
            }
            _ => {
                return Err(config_error(
                    "location",
                    "give only one of location, latitude + longitude, location_value",
                ));
            }
        };
        if raw.measures.is_empty() {
            return Err(config_error(
                "measures",
                "name at least one measure and its path, e.g. measures = { temperature = \"temperature.value\" }",
            ));
        }
        if raw.measures.len() > MAX_MEASURES {
            return Err(config_error(
                "measures",
                format!("at most {MAX_MEASURES} measures per mapping"),
            ));
        }
        let mut measures = Vec::with_capacity(raw.measures.len());
        for (name, text) in &raw.measures {
            if name.trim().is_empty() {
                return Err(config_error("measures", "a measure name must not be empty"));
            }
            measures.push((name.clone(), path(&format!("measures.{name}"), text)?));
        }
        Ok(Mapping {
            sensor_id,
            time,
            time_format: raw.time_format,
            location,
            measures,
        })
    }

    /// Maps `body` (received at `received`, on `topic` for MQTT) to
    /// readings: one per element of an array body, one for an object.
    pub fn map(
        &self,
        body: &[u8],
        topic: Option<&str>,
        received: OffsetDateTime,
    ) -> Result<Vec<Reading>, MapError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| MapError {
            element: None,
            field: "body".to_string(),
            path: None,
            reason: Reason::NotJson(e.to_string()),
        })?;
        match &value {
            Value::Array(items) => {
                if items.is_empty() {
                    return Err(MapError {
                        element: None,
                        field: "body".to_string(),
                        path: None,
                        reason: Reason::EmptyArray,
                    });
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.element(item, topic, received)
                            .map_err(|e| e.at_element(i))
                    })
                    .collect()
            }
            other => Ok(vec![self.element(other, topic, received)?]),
        }
    }

    fn element(
        &self,
        value: &Value,
        topic: Option<&str>,
        received: OffsetDateTime,
    ) -> Result<Reading, MapError> {
        let sensor_id = match &self.sensor_id {
            SensorIdSource::Fixed(id) => id.clone(),
            SensorIdSource::Path(path) => match path.find(value) {
                None | Some(Value::Null) => {
                    return Err(MapError::field("sensor_id", path, Reason::Missing));
                }
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) if n.is_u64() || n.is_i64() => n.to_string(),
                Some(other) => {
                    return Err(MapError::field(
                        "sensor_id",
                        path,
                        Reason::NotText(kind(other)),
                    ));
                }
            },
            SensorIdSource::TopicSegment(segment) => topic
                .and_then(|t| t.split('/').nth(*segment))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .ok_or_else(|| MapError {
                    element: None,
                    field: "sensor_id".to_string(),
                    path: None,
                    reason: Reason::NoTopicSegment {
                        segment: *segment,
                        topic: topic.unwrap_or("").to_string(),
                    },
                })?,
        };
        let at = match &self.time {
            None => received,
            Some(path) => match path.find(value) {
                None | Some(Value::Null) => {
                    return Err(MapError::field("time", path, Reason::Missing));
                }
                Some(found) => self
                    .time_of(found)
                    .map_err(|reason| MapError::field("time", path, reason))?,
            },
        };
        let location = match &self.location {
            LocationSource::None => None,
            LocationSource::Fixed {
                latitude,
                longitude,
            } => Some((*latitude, *longitude)),
            LocationSource::Point(path) => match path.find(value) {
                None | Some(Value::Null) => None,
                Some(found) => {
                    Some(point(found).map_err(|reason| MapError::field("location", path, reason))?)
                }
            },
            LocationSource::LatLon {
                latitude,
                longitude,
            } => match (latitude.find(value), longitude.find(value)) {
                (None | Some(Value::Null), None | Some(Value::Null)) => None,
                (lat, lon) => Some((
                    coordinate(lat).map_err(|r| MapError::field("latitude", latitude, r))?,
                    coordinate(lon).map_err(|r| MapError::field("longitude", longitude, r))?,
                )),
            },
        };
        let mut values = BTreeMap::new();
        for (name, path) in &self.measures {
            match path.find(value) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => {
                    let number = n.as_f64().ok_or_else(|| {
                        MapError::field(
                            &format!("measures.{name}"),
                            path,
                            Reason::NotNumber("a number out of range"),
                        )
                    })?;
                    values.insert(name.clone(), number);
                }
                Some(other) => {
                    return Err(MapError::field(
                        &format!("measures.{name}"),
                        path,
                        Reason::NotNumber(kind(other)),
                    ));
                }
            }
        }
        if values.is_empty() {
            return Err(MapError {
                element: None,
                field: "measures".to_string(),
                path: None,
                reason: Reason::NoMeasure(
                    self.measures
                        .iter()
                        .map(|(_, p)| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            });
        }
        Ok(Reading {
            sensor_id,
            at,
            values,
            location,
        })
    }

    fn time_of(&self, value: &Value) -> Result<OffsetDateTime, Reason> {
        match (self.time_format, value) {
            (TimeFormat::Rfc3339, Value::String(text)) => OffsetDateTime::parse(text, &Rfc3339)
                .map_err(|e| {
                    Reason::BadTime(format!("`{}` is not an RFC 3339 time ({e})", cut(text)))
                }),
            (TimeFormat::Rfc3339, other) => Err(Reason::BadTime(format!(
                "expected an RFC 3339 string such as 2026-01-01T10:00:00Z, found {}",
                kind(other)
            ))),
            (format, Value::Number(n)) => {
                let nanos_per = match format {
                    TimeFormat::UnixSeconds => 1_000_000_000i128,
                    _ => 1_000_000i128,
                };
                let nanos = if let Some(i) = n.as_i64() {
                    i128::from(i).checked_mul(nanos_per)
                } else {
                    // Fractions are kept to the nanosecond (the store keeps
                    // milliseconds).
                    n.as_f64()
                        .filter(|f| f.is_finite() && f.abs() < 1e15)
                        .map(|f| (f * nanos_per as f64) as i128)
                };
                nanos
                    .and_then(|n| OffsetDateTime::from_unix_timestamp_nanos(n).ok())
                    .ok_or_else(|| Reason::BadTime(format!("{n} is not a representable time")))
            }
            (format, other) => Err(Reason::BadTime(format!(
                "expected a number of {} since 1970, found {}",
                if format == TimeFormat::UnixSeconds {
                    "seconds"
                } else {
                    "milliseconds"
                },
                kind(other)
            ))),
        }
    }
}

/// A GeoJSON Point, or an NGSI-LD GeoProperty holding one, as
/// (latitude, longitude). GeoJSON writes longitude first.
fn point(value: &Value) -> Result<(f64, f64), Reason> {
    let point = match value.get("type").and_then(Value::as_str) {
        Some("GeoProperty") => value.get("value").unwrap_or(&Value::Null),
        _ => value,
    };
    if point.get("type").and_then(Value::as_str) != Some("Point") {
        return Err(Reason::BadLocation(
            "expected a GeoJSON Point {\"type\": \"Point\", \"coordinates\": [longitude, latitude]}"
                .to_string(),
        ));
    }
    match point.get("coordinates").and_then(Value::as_array) {
        Some(c) if c.len() >= 2 => match (c[0].as_f64(), c[1].as_f64()) {
            (Some(longitude), Some(latitude)) => Ok((latitude, longitude)),
            _ => Err(Reason::BadLocation(
                "coordinates must be numbers [longitude, latitude]".to_string(),
            )),
        },
        _ => Err(Reason::BadLocation(
            "a Point needs \"coordinates\": [longitude, latitude]".to_string(),
        )),
    }
}

fn coordinate(value: Option<&Value>) -> Result<f64, Reason> {
    match value {
        None | Some(Value::Null) => Err(Reason::Missing),
        Some(Value::Number(n)) => n.as_f64().ok_or(Reason::NotNumber("a number out of range")),
        Some(other) => Err(Reason::NotNumber(kind(other))),
    }
}

/// What kind of JSON value `value` is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Sender-chosen text quoted in an error, cut short.
fn cut(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

// ---- Errors ----------------------------------------------------------------

/// Why a body did not map: where (element index for array bodies, field
/// and path) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct MapError {
    /// Index of the element in an array body; `None` for an object body
    /// or a problem with the body as a whole.
    pub element: Option<usize>,
    /// The mapping field: `sensor_id`, `time`, `location`, `latitude`,
    /// `longitude`, `measures.NAME`, `measures`, or `body`.
    pub field: String,
    /// The configured path looked at, if any.
    pub path: Option<String>,
    pub reason: Reason,
}

impl MapError {
    fn field(field: &str, path: &JsonPath, reason: Reason) -> MapError {
        MapError {
            element: None,
            field: field.to_string(),
            path: Some(path.as_str().to_string()),
            reason,
        }
    }

    fn at_element(mut self, index: usize) -> MapError {
        self.element = Some(index);
        self
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(index) = self.element {
            write!(f, "element [{index}]: ")?;
        }
        f.write_str(&self.field)?;
        if let Some(path) = &self.path {
            write!(f, " (path `{path}`)")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for MapError {}

/// The reason part of a [`MapError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reason {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("an empty array holds no readings")]
    EmptyArray,
    #[error("missing")]
    Missing,
    #[error("expected text, found {0}")]
    NotText(&'static str),
    #[error("expected a number, found {0}")]
    NotNumber(&'static str),
    #[error("bad time: {0}")]
    BadTime(String),
    #[error("bad location: {0}")]
    BadLocation(String),
    #[error("none of the measures is present (looked at {0})")]
    NoMeasure(String),
    #[error("topic `{topic}` has no segment {segment} (counting from 0)")]
    NoTopicSegment { segment: usize, topic: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const RECEIVED: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);

    fn mapping(text: &str, topics: bool) -> Result<Mapping, MappingConfigError> {
        let raw: RawMapping = toml::from_str(text).expect("mapping TOML parses");
        Mapping::from_raw(raw, topics)
    }

    fn flat() -> Mapping {
        mapping(
            r#"
            sensor_id = "deviceId"
            location = "location"
            measures = { temperature = "temperature_celcius", humidity = "relative_humidity_percent" }
            "#,
            false,
        )
        .expect("flat mapping")
    }

    fn ngsi() -> Mapping {
        mapping(
            r#"
            sensor_id = "id"
            time = "temperature.observedAt"
            location = "location"
            measures = { temperature = "temperature.value" }
            "#,
            false,
        )
        .expect("NGSI-LD mapping")
    }

    #[test]
    fn paths_parse_keys_and_indices_and_refuse_nonsense() {
        let path = JsonPath::parse("$.data[0].values[2]").expect("parses");
        let value = serde_json::json!({"data": [{"values": [1, 2, 3.5]}]});
        assert_eq!(path.find(&value), Some(&serde_json::json!(3.5)));
        let first = JsonPath::parse("[1].id").expect("parses");
        let array = serde_json::json!([{"id": "a"}, {"id": "b"}]);
        assert_eq!(first.find(&array), Some(&serde_json::json!("b")));
        assert_eq!(JsonPath::parse("a.b").expect("p").find(&array), None);
        for bad in ["", "a..b", "a.", ".a", "a[x]", "a[1", "a]b", "a[-1]", "$."] {
            assert!(JsonPath::parse(bad).is_err(), "`{bad}` is refused");
        }
        assert!(JsonPath::parse(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
    }

    #[test]
    fn a_flat_object_maps_to_one_reading_at_receipt_time() {
        let body = br#"{"deviceId": "elsys-42", "name": "Hal 3", "temperature_celcius": 21.4,
            "relative_humidity_percent": 40,
            "location": {"type": "Point", "coordinates": [10.21, 56.15]}}"#;
        let readings = flat().map(body, None, RECEIVED).expect("maps");
        assert_eq!(readings.len(), 1);
        let r = &readings[0];
        assert_eq!(r.sensor_id, "elsys-42");
        assert_eq!(r.at, RECEIVED);
        assert_eq!(r.values["temperature"], 21.4);
        assert_eq!(r.values["humidity"], 40.0);
        // GeoJSON is [longitude, latitude]; readings keep (latitude, longitude).
        assert_eq!(r.location, Some((56.15, 10.21)));
    }

    #[test]
    fn an_ngsi_ld_array_maps_element_wise_with_values_and_observed_at() {
        let body = br#"[
          {"id": "urn:ngsi-ld:sensor:1", "type": "Sensor",
           "temperature": {"type": "Property", "value": 21.4, "observedAt": "2026-01-01T10:00:00Z"},
           "location": {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [10.2, 56.1]}}},
          {"id": "urn:ngsi-ld:sensor:2", "type": "Sensor",
           "temperature": {"type": "Property", "value": -3, "observedAt": "2026-01-01T10:05:00+01:00"}}
        ]"#;
        let readings = ngsi().map(body, None, RECEIVED).expect("maps");
        assert_eq!(readings.len(), 2);
        assert_eq!(readings[0].sensor_id, "urn:ngsi-ld:sensor:1");
        assert_eq!(readings[0].at, datetime!(2026-01-01 10:00 UTC));
        assert_eq!(readings[0].location, Some((56.1, 10.2)));
        assert_eq!(readings[1].values["temperature"], -3.0);
        assert_eq!(readings[1].at, datetime!(2026-01-01 09:05 UTC));
        // No location in the second element: no location, not an error.
        assert_eq!(readings[1].location, None);
    }

    #[test]
    fn errors_name_the_element_the_field_the_path_and_the_reason() {
        let body = br#"[{"id": "a", "temperature": {"value": 1, "observedAt": "2026-01-01T10:00:00Z"}},
                        {"id": "b", "temperature": {"value": "warm", "observedAt": "2026-01-01T10:00:00Z"}}]"#;
        let err = ngsi()
            .map(body, None, RECEIVED)
            .expect_err("a string measure");
        assert_eq!(err.element, Some(1));
        assert_eq!(err.field, "measures.temperature");
        assert_eq!(
            err.to_string(),
            "element [1]: measures.temperature (path `temperature.value`): expected a number, found a string"
        );

        let err = flat()
            .map(br#"{"temperature_celcius": 20}"#, None, RECEIVED)
            .expect_err("no device id");
        assert_eq!(err.to_string(), "sensor_id (path `deviceId`): missing");

        let err = ngsi()
            .map(
                br#"{"id": "a", "temperature": {"value": 1, "observedAt": "yesterday"}}"#,
                None,
                RECEIVED,
            )
            .expect_err("bad time");
        assert!(
            err.to_string()
                .starts_with("time (path `temperature.observedAt`): bad time: `yesterday`"),
            "{err}"
        );

        let err = flat()
            .map(
                br#"{"deviceId": "a", "name": "no measures"}"#,
                None,
                RECEIVED,
            )
            .expect_err("no measure");
        assert_eq!(err.field, "measures");
        assert!(err.to_string().contains("`temperature_celcius`"), "{err}");

        let err = flat()
            .map(
                br#"{"deviceId": "a", "temperature_celcius": 1, "location": {"lat": 1}}"#,
                None,
                RECEIVED,
            )
            .expect_err("bad point");
        assert_eq!(err.field, "location");

        let err = flat()
            .map(b"{not json", None, RECEIVED)
            .expect_err("not JSON");
        assert!(err.to_string().starts_with("body: not JSON"), "{err}");
        let err = flat().map(b"[]", None, RECEIVED).expect_err("empty");
        assert_eq!(err.reason, Reason::EmptyArray);
        // A sender-controlled id of the wrong kind is named, not stringified.
        let err = flat()
            .map(
                br#"{"deviceId": {"x": 1}, "temperature_celcius": 1}"#,
                None,
                RECEIVED,
            )
            .expect_err("object id");
        assert_eq!(err.reason, Reason::NotText("an object"));
    }

    #[test]
    fn fixed_values_topic_segments_and_unix_times() {
        let m = mapping(
            r#"
            sensor_id_topic_segment = 3
            time = "ts"
            time_format = "unix_millis"
            location_value = { latitude = 56.15, longitude = 10.21 }
            measures = { level = "level" }
            "#,
            true,
        )
        .expect("MQTT mapping");
        let readings = m
            .map(
                br#"{"ts": 1767261600000, "level": 0.5}"#,
                Some("device/1/7/sensor-9"),
                RECEIVED,
            )
            .expect("maps");
        assert_eq!(readings[0].sensor_id, "sensor-9");
        assert_eq!(readings[0].at, datetime!(2026-01-01 10:00 UTC));
        assert_eq!(readings[0].location, Some((56.15, 10.21)));
        let err = m
            .map(br#"{"ts": 1, "level": 0.5}"#, Some("device/1"), RECEIVED)
            .expect_err("short topic");
        assert!(
            err.to_string()
                .contains("topic `device/1` has no segment 3"),
            "{err}"
        );

        let fixed = mapping(
            "sensor_id_value = \"pump-1\"\nlatitude = \"lat\"\nlongitude = \"lon\"\nmeasures = { flow = \"flow\" }",
            false,
        )
        .expect("fixed id");
        let r = fixed
            .map(br#"{"flow": 2, "lat": 55.0, "lon": 12.5}"#, None, RECEIVED)
            .expect("maps");
        assert_eq!(
            (r[0].sensor_id.as_str(), r[0].location),
            ("pump-1", Some((55.0, 12.5)))
        );
        let err = fixed
            .map(br#"{"flow": 2, "lat": 55.0}"#, None, RECEIVED)
            .expect_err("half a place");
        assert_eq!(err.field, "longitude");
    }

    #[test]
    fn config_mistakes_are_named() {
        let cases = [
            ("measures = { t = \"t\" }", "sensor_id"),
            (
                "sensor_id = \"a\"\nsensor_id_value = \"b\"\nmeasures = { t = \"t\" }",
                "sensor_id",
            ),
            ("sensor_id = \"a\"", "measures"),
            (
                "sensor_id = \"a\"\nmeasures = { t = \"t..x\" }",
                "measures.t",
            ),
            (
                "sensor_id_topic_segment = 1\nmeasures = { t = \"t\" }",
                "sensor_id_topic_segment",
            ),
            (
                "sensor_id = \"a\"\nlatitude = \"y\"\nmeasures = { t = \"t\" }",
                "longitude",
            ),
            (
                "sensor_id = \"a\"\ntime_format = \"unix_seconds\"\nmeasures = { t = \"t\" }",
                "time_format",
            ),
            (
                "sensor_id = \"a\"\nlocation_value = { latitude = 91.0, longitude = 0.0 }\nmeasures = { t = \"t\" }",
                "location_value.latitude",
            ),
        ];
        for (text, key) in cases {
            let err = mapping(text, false).expect_err(text);
            assert_eq!(err.key, key, "{text}: {err}");
        }
        // An unknown key (a typo) is a parse error, never ignored.
        assert!(toml::from_str::<RawMapping>("sensorid = \"a\"").is_err());
    }
}
