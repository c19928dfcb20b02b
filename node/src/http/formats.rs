//! Renderings of answers as JSON, NDJSON, CSV and GeoJSON, in the shapes
//! analysts already get from `samvirke query readings` and `samvirke ask`
//! (so a script can move between the CLI and the HTTP API unchanged):
//!
//! - a reading is `{sensor_id, at, values, lat?, lon?}`; its CSV header is
//!   `sensor_id,timestamp,lat,lon,<measure>...` (the `ingest csv` form);
//! - a bucket is `{start, sensor_id, measure, count, min, max, avg, sum,
//!   distinct_sensors}` (withheld values null or an empty cell);
//! - a federated row carries `municipality, name, dataset` (and
//!   `agreement` in JSON) before its own fields; in CSV readings are in
//!   long form, one measure value per row, as spreadsheets read best;
//! - numbers are written in the shortest form that reads back to the same
//!   value; times are RFC 3339 in UTC.
//!
//! Streamed answers are rendered chunk by chunk ([`Readings`], [`Asked`]):
//! each chunk becomes one piece of the response body at once.

use bytes::Bytes;
use http::HeaderMap;
use samvirke_proto::v1::{self as pb, ask_event};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::ApiError;
use super::params::{FORMATS, Params};
use crate::federate::ask::outcome_word;

/// A response format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON document (an array, or an object for federated answers).
    Json,
    /// One JSON object per line.
    Ndjson,
    /// CSV with a header row.
    Csv,
    /// A GeoJSON FeatureCollection of points (raw readings only).
    Geojson,
}

impl Format {
    /// The `format` parameter, else the Accept header, else JSON.
    pub fn negotiate(params: &Params, headers: &HeaderMap) -> Result<Format, ApiError> {
        if let Some(word) = params.choice("format", FORMATS)? {
            return Ok(match word.as_str() {
                "csv" => Format::Csv,
                "ndjson" => Format::Ndjson,
                "geojson" => Format::Geojson,
                _ => Format::Json,
            });
        }
        let accept = headers
            .get_all(http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let wants = |media: &str| {
            accept
                .split(',')
                .any(|part| part.split(';').next().map(str::trim) == Some(media))
        };
        Ok(if wants("text/csv") {
            Format::Csv
        } else if wants("application/x-ndjson") {
            Format::Ndjson
        } else if wants("application/geo+json") {
            Format::Geojson
        } else {
            Format::Json
        })
    }

    /// The Content-Type of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8; header=present",
            Format::Geojson => "application/geo+json",
        }
    }
}

// ---- Values --------------------------------------------------------------

/// A protobuf timestamp as RFC 3339 in UTC; empty when absent.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return String::new();
    };
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{}s after 1970-01-01T00:00:00Z", ts.seconds))
}

/// A JSON number, or null for a value JSON cannot carry (NaN, infinity).
fn number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// A reading's values, by measure name.
fn values_json(reading: &pb::Reading) -> Value {
    let mut values: Vec<(&String, &f64)> = reading.values.iter().collect();
    values.sort_by(|a, b| a.0.cmp(b.0));
    Value::Object(
        values
            .into_iter()
            .map(|(name, value)| (name.clone(), number(*value)))
            .collect(),
    )
}

/// A reading in the `ingest json` shape.
pub fn reading_json(reading: &pb::Reading) -> Value {
    let mut object = Map::new();
    object.insert("sensor_id".into(), json!(reading.sensor_id));
    object.insert("at".into(), json!(rfc3339(reading.at.as_ref())));
    object.insert("values".into(), values_json(reading));
    if let Some(location) = reading.location {
        object.insert("lat".into(), number(location.lat));
        object.insert("lon".into(), number(location.lon));
    }
    Value::Object(object)
}

/// A reading as a GeoJSON Point feature, if it has a location.
pub fn reading_feature(reading: &pb::Reading) -> Option<Value> {
    let location = reading.location?;
    Some(json!({
        "type": "Feature",
        "geometry": {
            "type": "Point",
            "coordinates": [number(location.lon), number(location.lat)],
        },
        "properties": {
            "sensor_id": reading.sensor_id,
            "at": rfc3339(reading.at.as_ref()),
            "values": values_json(reading),
        },
    }))
}

/// The first four columns of a readings CSV; the measures follow.
pub const READING_COLUMNS: [&str; 4] = ["sensor_id", "timestamp", "lat", "lon"];

/// Columns of the bucket CSV.
pub const BUCKET_COLUMNS: [&str; 9] = [
    "start",
    "sensor_id",
    "measure",
    "count",
    "min",
    "max",
    "avg",
    "sum",
    "distinct_sensors",
];

fn reading_cells(reading: &pb::Reading, measures: &[String]) -> Vec<String> {
    let (lat, lon) = match reading.location {
        Some(l) => (l.lat.to_string(), l.lon.to_string()),
        None => (String::new(), String::new()),
    };
    let mut cells = vec![
        reading.sensor_id.clone(),
        rfc3339(reading.at.as_ref()),
        lat,
        lon,
    ];
    cells.extend(measures.iter().map(|m| {
        reading
            .values
            .get(m)
            .map(f64::to_string)
            .unwrap_or_default()
    }));
    cells
}

fn bucket_cells(bucket: &pb::Bucket) -> Vec<String> {
    vec![
        rfc3339(bucket.start.as_ref()),
        bucket.sensor_id.clone(),
        bucket.measure.clone(),
        bucket.count.to_string(),
        bucket.min.map(|v| v.to_string()).unwrap_or_default(),
        bucket.max.map(|v| v.to_string()).unwrap_or_default(),
        bucket.avg.to_string(),
        bucket.sum.to_string(),
        bucket
            .distinct_sensors
            .map(|d| d.to_string())
            .unwrap_or_default(),
    ]
}

/// A bucket as JSON; `sensor_id` is null when grouped over all sensors.
pub fn bucket_json(bucket: &pb::Bucket) -> Value {
    json!({
        "start": rfc3339(bucket.start.as_ref()),
        "sensor_id": if bucket.sensor_id.is_empty() { Value::Null } else { json!(bucket.sensor_id) },
        "measure": bucket.measure,
        "count": bucket.count,
        "min": bucket.min.map(number).unwrap_or(Value::Null),
        "max": bucket.max.map(number).unwrap_or(Value::Null),
        "avg": number(bucket.avg),
        "sum": number(bucket.sum),
        "distinct_sensors": bucket.distinct_sensors,
    })
}

/// A dataset's measures: its `number` fields, in schema order.
pub fn measures(dataset: &pb::Dataset) -> Vec<String> {
    dataset
        .schema
        .iter()
        .filter(|f| f.r#type == "number")
        .map(|f| f.name.clone())
        .collect()
}

/// A dataset as JSON, with the proto's field names.
pub fn dataset_json(dataset: &pb::Dataset) -> Value {
    json!({
        "id": dataset.id,
        "title": dataset.title,
        "description": dataset.description,
        "kind": dataset.kind,
        "owner": dataset.owner,
        "theme": dataset.theme,
        "keywords": dataset.keywords,
        "license": dataset.license,
        "spatial": dataset.spatial.map(|b| json!({
            "min_lat": number(b.min_lat),
            "min_lon": number(b.min_lon),
            "max_lat": number(b.max_lat),
            "max_lon": number(b.max_lon),
        })),
        "temporal": dataset.temporal.as_ref().map(|t| json!({
            "from": t.from.as_ref().map(|ts| rfc3339(Some(ts))),
            "until": t.until.as_ref().map(|ts| rfc3339(Some(ts))),
        })),
        "classification": dataset.classification,
        "schema": dataset.schema.iter().map(|f| json!({
            "name": f.name,
            "type": f.r#type,
            "unit": f.unit,
            "personal": f.personal,
        })).collect::<Vec<_>>(),
        "update_interval_seconds": dataset.update_interval_seconds,
    })
}

/// Columns of the datasets CSV.
pub const DATASET_COLUMNS: [&str; 10] = [
    "id",
    "title",
    "kind",
    "owner",
    "theme",
    "keywords",
    "license",
    "classification",
    "measures",
    "update_interval_seconds",
];

fn dataset_cells(dataset: &pb::Dataset) -> Vec<String> {
    vec![
        dataset.id.clone(),
        dataset.title.clone(),
        dataset.kind.clone(),
        dataset.owner.to_string(),
        dataset.theme.clone(),
        dataset.keywords.join(","),
        dataset.license.clone(),
        dataset.classification.clone(),
        measures(dataset).join(","),
        dataset.update_interval_seconds.to_string(),
    ]
}

fn show_date(date: Option<&pb::PartialDate>) -> String {
    match date {
        None => String::new(),
        Some(d) if d.year == 0 => String::new(),
        Some(d) => match (d.month, d.day) {
            (0, _) => format!("{}", d.year),
            (m, 0) => format!("{}-{m:02}", d.year),
            (m, d2) => format!("{}-{m:02}-{d2:02}", d.year),
        },
    }
}

fn date_json(date: Option<&pb::PartialDate>) -> Value {
    match show_date(date) {
        text if text.is_empty() => Value::Null,
        text => json!(text),
    }
}

/// `PILOT_PHASE_DEMONSTRATION` as `demonstration`.
fn enum_word(name: Option<&str>, prefix: &str, number: i32) -> String {
    match name {
        Some(name) => name
            .strip_prefix(prefix)
            .unwrap_or(name)
            .to_ascii_lowercase()
            .replace('_', "-"),
        None => format!("unknown({number})"),
    }
}

/// A pilot phase in lowercase words (`demonstration`).
pub fn phase_word(phase: i32) -> String {
    enum_word(
        pb::PilotPhase::try_from(phase)
            .ok()
            .map(|p| p.as_str_name()),
        "PILOT_PHASE_",
        phase,
    )
}

/// A procedure in lowercase words (`framework-mini-tender`).
pub fn procedure_word(procedure: i32) -> String {
    enum_word(
        pb::Procedure::try_from(procedure)
            .ok()
            .map(|p| p.as_str_name()),
        "PROCEDURE_",
        procedure,
    )
}

/// A procurement status in lowercase words (`in-tender`).
pub fn status_word(status: i32) -> String {
    enum_word(
        pb::ProcurementStatus::try_from(status)
            .ok()
            .map(|s| s.as_str_name()),
        "PROCUREMENT_STATUS_",
        status,
    )
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A pilot as JSON (the `samvirke records pilots list --format json` shape).
pub fn pilot_json(pilot: &pb::Pilot) -> Value {
    json!({
        "id": pilot.id,
        "dataset_id": pilot.dataset_id,
        "title": pilot.title,
        "owner": pilot.owner,
        "municipalities": pilot.municipalities,
        "phase": phase_word(pilot.phase),
        "technology": pilot.technology,
        "started": date_json(pilot.started.as_ref()),
        "ended": date_json(pilot.ended.as_ref()),
        "budget_dkk": pilot.budget_dkk,
        "kpis": pilot.kpis.iter().map(|k| json!({
            "name": k.name,
            "value": number(k.value),
            "unit": k.unit,
        })).collect::<Vec<_>>(),
        "findings": pilot.findings,
        "attachments": pilot.attachments.iter().map(|a| json!({
            "name": a.name,
            "sha256": a.sha256,
            "media_type": a.media_type,
        })).collect::<Vec<_>>(),
    })
}

/// Columns of the pilots CSV.
pub const PILOT_COLUMNS: [&str; 11] = [
    "id",
    "dataset_id",
    "title",
    "owner",
    "municipalities",
    "phase",
    "technology",
    "started",
    "ended",
    "budget_dkk",
    "findings",
];

fn pilot_cells(pilot: &pb::Pilot) -> Vec<String> {
    vec![
        pilot.id.clone(),
        pilot.dataset_id.clone(),
        pilot.title.clone(),
        pilot.owner.clone(),
        join(&pilot.municipalities),
        phase_word(pilot.phase),
        pilot.technology.join(","),
        show_date(pilot.started.as_ref()),
        show_date(pilot.ended.as_ref()),
        pilot.budget_dkk.to_string(),
        pilot.findings.clone(),
    ]
}

/// A procurement as JSON (the `samvirke records procurements list --format json`
/// shape).
pub fn procurement_json(p: &pb::Procurement) -> Value {
    json!({
        "id": p.id,
        "dataset_id": p.dataset_id,
        "title": p.title,
        "buyer_municipalities": p.buyer_municipalities,
        "buyer_fellowship": p.buyer_fellowship,
        "buyer_organisation": p.buyer_organisation,
        "buyer_count": p.buyer_count,
        "procedure": procedure_word(p.procedure),
        "procedure_detail": p.procedure_detail,
        "cpv_codes": p.cpv_codes,
        "suppliers": p.suppliers,
        "value_dkk": p.value_dkk,
        "awarded": date_json(p.awarded.as_ref()),
        "contract_start": date_json(p.contract_start.as_ref()),
        "contract_end": date_json(p.contract_end.as_ref()),
        "bids": p.bids,
        "complaints": p.complaints.iter().map(|c| json!({
            "body": c.body,
            "summary": c.summary,
            "outcome": c.outcome,
        })).collect::<Vec<_>>(),
        "status": status_word(p.status),
        "notes": p.notes,
    })
}

/// Columns of the procurements CSV.
pub const PROCUREMENT_COLUMNS: [&str; 15] = [
    "id",
    "dataset_id",
    "title",
    "buyer_municipalities",
    "buyer_fellowship",
    "buyer_organisation",
    "procedure",
    "cpv_codes",
    "suppliers",
    "value_dkk",
    "awarded",
    "contract_start",
    "contract_end",
    "complaints",
    "status",
];

fn procurement_cells(p: &pb::Procurement) -> Vec<String> {
    vec![
        p.id.clone(),
        p.dataset_id.clone(),
        p.title.clone(),
        join(&p.buyer_municipalities),
        p.buyer_fellowship.clone(),
        p.buyer_organisation.clone(),
        procedure_word(p.procedure),
        p.cpv_codes.join(","),
        p.suppliers.join(","),
        p.value_dkk.to_string(),
        show_date(p.awarded.as_ref()),
        show_date(p.contract_start.as_ref()),
        show_date(p.contract_end.as_ref()),
        p.complaints.len().to_string(),
        status_word(p.status),
    ]
}

// ---- Whole lists ---------------------------------------------------------

/// CSV lines of `rows` (no header unless it is among them).
pub fn csv_lines<I, R>(rows: I) -> Bytes
where
    I: IntoIterator<Item = R>,
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        // Writing into memory cannot fail but for a bug in csv; the row
        // is then left out rather than the answer failing.
        if let Err(error) = writer.write_record(row) {
            tracing::error!(%error, "a CSV row could not be written");
        }
    }
    Bytes::from(writer.into_inner().unwrap_or_default())
}

/// A whole list as one body: JSON array, NDJSON or CSV with `columns`.
/// GeoJSON is refused by the caller before.
pub fn list<T>(
    format: Format,
    items: &[T],
    columns: &[&str],
    json: fn(&T) -> Value,
    cells: fn(&T) -> Vec<String>,
) -> Bytes {
    match format {
        Format::Csv => csv_lines(
            std::iter::once(columns.iter().map(|c| c.to_string()).collect::<Vec<_>>())
                .chain(items.iter().map(cells)),
        ),
        Format::Ndjson => {
            let mut out = Vec::new();
            for item in items {
                out.extend_from_slice(json(item).to_string().as_bytes());
                out.push(b'\n');
            }
            Bytes::from(out)
        }
        Format::Json | Format::Geojson => {
            Bytes::from(Value::Array(items.iter().map(json).collect()).to_string())
        }
    }
}

/// The datasets list.
pub fn datasets(format: Format, datasets: &[pb::Dataset]) -> Bytes {
    list(
        format,
        datasets,
        &DATASET_COLUMNS,
        dataset_json,
        dataset_cells,
    )
}

/// The pilots list.
pub fn pilots(format: Format, pilots: &[pb::Pilot]) -> Bytes {
    list(format, pilots, &PILOT_COLUMNS, pilot_json, pilot_cells)
}

/// The procurements list.
pub fn procurements(format: Format, procurements: &[pb::Procurement]) -> Bytes {
    list(
        format,
        procurements,
        &PROCUREMENT_COLUMNS,
        procurement_json,
        procurement_cells,
    )
}

// ---- Streamed readings ---------------------------------------------------

/// Renders a streamed readings (or buckets) answer piece by piece.
#[derive(Debug)]
pub struct Readings {
    format: Format,
    buckets: bool,
    /// The measure columns of the readings CSV.
    measures: Vec<String>,
    /// Items written so far (for commas between JSON items).
    written: u64,
}

impl Readings {
    /// A renderer of readings with `measures` columns, or of buckets.
    pub fn new(format: Format, buckets: bool, measures: Vec<String>) -> Readings {
        Readings {
            format,
            buckets,
            measures,
            written: 0,
        }
    }

    /// What comes before the first chunk.
    pub fn head(&self) -> Bytes {
        match (self.format, self.buckets) {
            (Format::Csv, false) => csv_lines([READING_COLUMNS
                .iter()
                .map(|c| c.to_string())
                .chain(self.measures.iter().cloned())
                .collect::<Vec<_>>()]),
            (Format::Csv, true) => csv_lines([BUCKET_COLUMNS]),
            (Format::Json, _) => Bytes::from_static(b"["),
            (Format::Geojson, _) => {
                Bytes::from_static(b"{\"type\":\"FeatureCollection\",\"features\":[")
            }
            (Format::Ndjson, _) => Bytes::new(),
        }
    }

    /// One chunk of the answer.
    pub fn chunk(&mut self, chunk: &pb::ReadingChunk) -> Bytes {
        match self.format {
            Format::Csv => csv_lines(
                chunk
                    .readings
                    .iter()
                    .map(|r| reading_cells(r, &self.measures))
                    .chain(chunk.buckets.iter().map(bucket_cells)),
            ),
            Format::Json | Format::Ndjson => {
                let values = chunk
                    .readings
                    .iter()
                    .map(reading_json)
                    .chain(chunk.buckets.iter().map(bucket_json));
                self.items(values)
            }
            Format::Geojson => {
                let features = chunk.readings.iter().filter_map(reading_feature);
                self.items(features)
            }
        }
    }

    /// JSON items: comma-separated in an array, or one per line.
    fn items(&mut self, values: impl Iterator<Item = Value>) -> Bytes {
        let mut out = Vec::new();
        for value in values {
            match self.format {
                Format::Ndjson => {
                    out.extend_from_slice(value.to_string().as_bytes());
                    out.push(b'\n');
                }
                _ => {
                    if self.written > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(value.to_string().as_bytes());
                }
            }
            self.written += 1;
        }
        Bytes::from(out)
    }

    /// What comes after the last chunk.
    pub fn tail(&self) -> Bytes {
        match self.format {
            Format::Json => Bytes::from_static(b"]\n"),
            Format::Geojson => Bytes::from_static(b"]}\n"),
            Format::Csv | Format::Ndjson => Bytes::new(),
        }
    }
}

// ---- Streamed federated answers -----------------------------------------

/// Long-form reading columns of a federated answer.
pub const ASK_READING_COLUMNS: [&str; 9] = [
    "municipality",
    "name",
    "dataset",
    "sensor_id",
    "at",
    "lat",
    "lon",
    "measure",
    "value",
];

/// Bucket columns of a federated answer (combined buckets have
/// municipality `all`).
pub const ASK_BUCKET_COLUMNS: [&str; 11] = [
    "municipality",
    "name",
    "dataset",
    "start",
    "sensor_id",
    "measure",
    "count",
    "min",
    "max",
    "avg",
    "sum",
];

/// Columns of the per-partner status table.
pub const STATUS_COLUMNS: [&str; 10] = [
    "municipality",
    "name",
    "dataset",
    "status",
    "rows",
    "bytes",
    "latency_ms",
    "agreement",
    "receipt",
    "detail",
];

pub fn source_json(source: &pb::AskSource) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("municipality".into(), json!(source.municipality));
    object.insert("name".into(), json!(source.name));
    object.insert("dataset".into(), json!(source.dataset_id));
    if !source.agreement_id.is_empty() {
        object.insert("agreement".into(), json!(source.agreement_id));
    }
    object
}

fn tagged(source: &pb::AskSource, value: Value) -> Value {
    let mut object = source_json(source);
    if let Value::Object(fields) = value {
        object.extend(fields);
    }
    Value::Object(object)
}

/// A combined bucket as JSON (the `samvirke ask --format json` shape).
pub fn combined_json(bucket: &pb::CombinedBucket) -> Value {
    json!({
        "combined": true,
        "municipalities": bucket.municipalities,
        "start": rfc3339(bucket.start.as_ref()),
        "measure": bucket.measure,
        "count": bucket.count,
        "min": bucket.min.map(number),
        "max": bucket.max.map(number),
        "avg": number(bucket.avg),
        "sum": number(bucket.sum),
    })
}

fn combined_cells(bucket: &pb::CombinedBucket) -> Vec<String> {
    vec![
        "all".to_string(),
        format!("{} municipalities", bucket.municipalities.len()),
        String::new(),
        rfc3339(bucket.start.as_ref()),
        String::new(),
        bucket.measure.clone(),
        bucket.count.to_string(),
        bucket.min.map(|v| v.to_string()).unwrap_or_default(),
        bucket.max.map(|v| v.to_string()).unwrap_or_default(),
        bucket.avg.to_string(),
        bucket.sum.to_string(),
    ]
}

/// A partner's status as JSON.
pub fn status_json(status: &pb::PartnerStatus) -> Value {
    json!({
        "municipality": status.municipality,
        "name": status.name,
        "dataset": status.dataset_id,
        "status": outcome_word(status.outcome),
        "rows": status.rows,
        "bytes": status.bytes,
        "latency_ms": status.latency_ms,
        "agreement": status.agreement_id,
        "receipt": status.receipt_id,
        "detail": status.detail,
    })
}

fn status_cells(status: &pb::PartnerStatus) -> Vec<String> {
    vec![
        status.municipality.to_string(),
        status.name.clone(),
        status.dataset_id.clone(),
        outcome_word(status.outcome).to_string(),
        status.rows.to_string(),
        status.bytes.to_string(),
        status.latency_ms.to_string(),
        status.agreement_id.clone(),
        status.receipt_id.clone(),
        status.detail.clone(),
    ]
}

fn summary_json(summary: &pb::AskSummary) -> Value {
    json!({
        "asked": summary.asked,
        "answered": summary.answered,
        "rows": summary.rows,
        "elapsed_ms": summary.elapsed_ms,
        "audit_seq": summary.audit_seq,
    })
}

/// Renders a federated answer event by event.
///
/// - JSON: `{"rows":[...],"combined":[...],"partners":[...],"summary":{...}}`;
/// - NDJSON: one row per line, then combined buckets (`"combined":true`),
///   then `{"partner":{...}}` lines and a last `{"summary":{...}}`;
/// - CSV: the rows (long form), then the combined buckets as rows of
///   municipality `all`; the statuses are `part=status`;
/// - GeoJSON: a FeatureCollection of the located readings with
///   `partners` and `summary` as foreign members after `features`;
/// - `part=status`: only the statuses, as a CSV table or a JSON array.
#[derive(Debug)]
pub struct Asked {
    format: Format,
    buckets: bool,
    statuses_only: bool,
    /// Rows written so far (for commas between JSON items).
    written: u64,
    /// Whether the combined buckets were written (JSON).
    combined: bool,
    statuses: Vec<pb::PartnerStatus>,
}

impl Asked {
    /// A renderer of a readings (or, with `buckets`, aggregate) answer;
    /// with `statuses_only` just the statuses.
    pub fn new(format: Format, buckets: bool, statuses_only: bool) -> Asked {
        Asked {
            format,
            buckets,
            statuses_only,
            written: 0,
            combined: false,
            statuses: Vec::new(),
        }
    }

    /// What comes first.
    pub fn head(&self) -> Bytes {
        if self.statuses_only {
            return Bytes::new();
        }
        match self.format {
            Format::Csv if self.buckets => csv_lines([ASK_BUCKET_COLUMNS]),
            Format::Csv => csv_lines([ASK_READING_COLUMNS]),
            Format::Json => Bytes::from_static(b"{\"rows\":["),
            Format::Geojson => {
                Bytes::from_static(b"{\"type\":\"FeatureCollection\",\"features\":[")
            }
            Format::Ndjson => Bytes::new(),
        }
    }

    /// One event; the summary ends the answer.
    pub fn event(&mut self, event: ask_event::Event) -> Bytes {
        match event {
            ask_event::Event::Rows(rows) if !self.statuses_only => self.rows(&rows),
            ask_event::Event::Rows(_) => Bytes::new(),
            ask_event::Event::Combined(combined) if !self.statuses_only => self.combined(&combined),
            ask_event::Event::Combined(_) => Bytes::new(),
            ask_event::Event::Partner(status) => {
                if self.format == Format::Ndjson && !self.statuses_only {
                    let line = json!({ "partner": status_json(&status) });
                    return Bytes::from(format!("{line}\n"));
                }
                // A few per partner and dataset asked: bounded by the
                // partners' count and MAX_DATASETS_PER_PARTNER.
                self.statuses.push(status);
                Bytes::new()
            }
            ask_event::Event::Done(summary) => self.done(&summary),
        }
    }

    fn rows(&mut self, rows: &pb::AskRows) -> Bytes {
        let source = rows.source.clone().unwrap_or_default();
        match self.format {
            Format::Csv => {
                let lead = || {
                    vec![
                        source.municipality.to_string(),
                        source.name.clone(),
                        source.dataset_id.clone(),
                    ]
                };
                let mut lines = Vec::new();
                for reading in &rows.readings {
                    let (lat, lon) = match reading.location {
                        Some(l) => (l.lat.to_string(), l.lon.to_string()),
                        None => (String::new(), String::new()),
                    };
                    for (measure, value) in &reading.values {
                        let mut row = lead();
                        row.extend([
                            reading.sensor_id.clone(),
                            rfc3339(reading.at.as_ref()),
                            lat.clone(),
                            lon.clone(),
                            measure.clone(),
                            value.to_string(),
                        ]);
                        lines.push(row);
                    }
                }
                for bucket in &rows.buckets {
                    let mut row = lead();
                    row.extend(bucket_cells(bucket).into_iter().take(8));
                    lines.push(row);
                }
                csv_lines(lines)
            }
            Format::Json | Format::Ndjson => {
                let values: Vec<Value> = rows
                    .readings
                    .iter()
                    .map(|r| tagged(&source, reading_json(r)))
                    .chain(rows.buckets.iter().map(|b| tagged(&source, bucket_json(b))))
                    .collect();
                self.items(values)
            }
            Format::Geojson => {
                let features: Vec<Value> = rows
                    .readings
                    .iter()
                    .filter_map(|r| {
                        let mut feature = reading_feature(r)?;
                        if let Some(Value::Object(properties)) = feature.get_mut("properties") {
                            properties.extend(source_json(&source));
                        }
                        Some(feature)
                    })
                    .collect();
                self.items(features)
            }
        }
    }

    fn items(&mut self, values: Vec<Value>) -> Bytes {
        let mut out = Vec::new();
        for value in values {
            if self.format == Format::Ndjson {
                out.extend_from_slice(value.to_string().as_bytes());
                out.push(b'\n');
            } else {
                if self.written > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(value.to_string().as_bytes());
            }
            self.written += 1;
        }
        Bytes::from(out)
    }

    fn combined(&mut self, combined: &pb::CombinedBuckets) -> Bytes {
        match self.format {
            Format::Csv => csv_lines(combined.buckets.iter().map(combined_cells)),
            Format::Ndjson => {
                let mut out = String::new();
                for bucket in &combined.buckets {
                    out.push_str(&combined_json(bucket).to_string());
                    out.push('\n');
                }
                if !combined.note.is_empty() {
                    out.push_str(&json!({ "combined_note": combined.note }).to_string());
                    out.push('\n');
                }
                Bytes::from(out)
            }
            Format::Json => {
                self.combined = true;
                let buckets: Vec<Value> = combined.buckets.iter().map(combined_json).collect();
                Bytes::from(format!(
                    "],\"combined\":{},\"combined_note\":{}",
                    Value::Array(buckets),
                    json!(combined.note)
                ))
            }
            // GeoJSON draws readings; combined buckets have no place.
            Format::Geojson => Bytes::new(),
        }
    }

    fn done(&mut self, summary: &pb::AskSummary) -> Bytes {
        let statuses = || Value::Array(self.statuses.iter().map(status_json).collect());
        if self.statuses_only {
            return match self.format {
                Format::Csv => csv_lines(
                    std::iter::once(STATUS_COLUMNS.iter().map(|c| c.to_string()).collect())
                        .chain(self.statuses.iter().map(status_cells)),
                ),
                Format::Ndjson => {
                    let mut out = String::new();
                    for status in &self.statuses {
                        out.push_str(&status_json(status).to_string());
                        out.push('\n');
                    }
                    Bytes::from(out)
                }
                Format::Json | Format::Geojson => Bytes::from(format!("{}\n", statuses())),
            };
        }
        match self.format {
            Format::Csv => Bytes::new(),
            Format::Ndjson => {
                Bytes::from(format!("{}\n", json!({ "summary": summary_json(summary) })))
            }
            Format::Json => Bytes::from(format!(
                "{}\"partners\":{},\"summary\":{}}}\n",
                if self.combined {
                    ","
                } else {
                    "],\"combined\":[],\"combined_note\":\"\","
                },
                statuses(),
                summary_json(summary)
            )),
            Format::Geojson => Bytes::from(format!(
                "],\"partners\":{},\"summary\":{}}}\n",
                statuses(),
                summary_json(summary)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(sensor: &str, located: bool) -> pb::Reading {
        pb::Reading {
            sensor_id: sensor.to_string(),
            at: Some(crate::wire::timestamp(
                time::macros::datetime!(2026-01-01 0:00 UTC),
            )),
            values: [("no2".to_string(), 0.1 + 0.2)].into_iter().collect(),
            location: located.then_some(pb::Location {
                lat: 56.1,
                lon: 10.2,
            }),
        }
    }

    #[test]
    fn streamed_json_and_geojson_are_whole_documents() {
        let chunk = pb::ReadingChunk {
            readings: vec![reading("a", true), reading("b,c", false)],
            ..Default::default()
        };
        let mut json = Readings::new(Format::Json, false, vec!["no2".into()]);
        let text = [
            json.head(),
            json.chunk(&chunk),
            json.chunk(&chunk),
            json.tail(),
        ]
        .concat();
        let value: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(value.as_array().map(Vec::len), Some(4));
        assert_eq!(value[0]["values"]["no2"], 0.1 + 0.2);

        let mut geo = Readings::new(Format::Geojson, false, Vec::new());
        let text = [geo.head(), geo.chunk(&chunk), geo.tail()].concat();
        let value: Value = serde_json::from_slice(&text).expect("GeoJSON");
        assert_eq!(value["features"].as_array().map(Vec::len), Some(1));
        assert_eq!(value["features"][0]["geometry"]["coordinates"][0], 10.2);

        let mut csv = Readings::new(Format::Csv, false, vec!["no2".into()]);
        let text = [csv.head(), csv.chunk(&chunk)].concat();
        assert_eq!(
            String::from_utf8_lossy(&text),
            "sensor_id,timestamp,lat,lon,no2\n\
             a,2026-01-01T00:00:00Z,56.1,10.2,0.30000000000000004\n\
             \"b,c\",2026-01-01T00:00:00Z,,,0.30000000000000004\n"
        );
    }

    #[test]
    fn a_federated_json_answer_is_one_object() {
        let mut asked = Asked::new(Format::Json, false, false);
        let rows = pb::AskRows {
            source: Some(pb::AskSource {
                municipality: 751,
                name: "Aarhus Kommune".into(),
                dataset_id: "aarhus-air-quality".into(),
                agreement_id: String::new(),
            }),
            readings: vec![reading("a", true)],
            ..Default::default()
        };
        let text = [
            asked.head(),
            asked.event(ask_event::Event::Rows(rows)),
            asked.event(ask_event::Event::Partner(pb::PartnerStatus {
                municipality: 751,
                outcome: pb::PartnerOutcome::Ok as i32,
                ..Default::default()
            })),
            asked.event(ask_event::Event::Done(pb::AskSummary::default())),
        ]
        .concat();
        let value: Value = serde_json::from_slice(&text).expect("JSON");
        assert_eq!(value["rows"][0]["municipality"], 751);
        assert_eq!(value["rows"][0]["dataset"], "aarhus-air-quality");
        assert_eq!(value["partners"][0]["status"], "ok");
        assert_eq!(value["combined"].as_array().map(Vec::len), Some(0));
    }
}
