//! The OpenAPI 3.0 document at `/api/v1/openapi.json`, written out by
//! hand. Its parameters come from the same tables that check requests
//! ([`super::params`]), so the document cannot drift from what the API
//! accepts.

use serde_json::{Map, Value, json};

use super::formats::{
    ASK_BUCKET_COLUMNS, ASK_READING_COLUMNS, BUCKET_COLUMNS, DATASET_COLUMNS, PILOT_COLUMNS,
    PROCUREMENT_COLUMNS, READING_COLUMNS, STATUS_COLUMNS,
};
use super::params::{self, Kind, Param};
use super::routes;

fn schema_of(kind: Kind) -> Value {
    match kind {
        Kind::Text => json!({ "type": "string" }),
        Kind::Integer => json!({ "type": "integer" }),
        Kind::Number => json!({ "type": "number" }),
        Kind::Boolean => json!({ "type": "boolean" }),
        Kind::Time => json!({
            "type": "string",
            "description": "RFC 3339 (2026-01-01T06:00:00Z) or a date (2026-01-01, 00:00 UTC)",
        }),
        Kind::Choice(words) => json!({ "type": "string", "enum": words }),
    }
}

fn parameter(param: &Param) -> Value {
    let schema = if param.repeat {
        json!({ "type": "array", "items": schema_of(param.kind) })
    } else {
        schema_of(param.kind)
    };
    json!({
        "name": param.name,
        "in": "query",
        "required": param.required,
        "description": param.doc,
        "schema": schema,
        "style": "form",
        "explode": true,
    })
}

fn error(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } },
    })
}

fn csv(columns: &[&str]) -> Value {
    json!({
        "schema": { "type": "string" },
        "example": columns.join(","),
    })
}

/// The responses every data endpoint may give besides its answer.
fn errors() -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "400".into(),
        error("A parameter is missing or malformed; the message names it."),
    );
    out.insert(
        "401".into(),
        error("No bearer token, or an unknown one (with WWW-Authenticate: Bearer)."),
    );
    out.insert(
        "403".into(),
        error("The token lacks the read role, or an agreement refuses the question."),
    );
    out.insert(
        "429".into(),
        error("Too many calls in progress for this token or this node; retry later."),
    );
    out.insert(
        "503".into(),
        error("The node cannot answer now (store or audit log unavailable, or timeout)."),
    );
    out
}

fn operation(
    summary: &str,
    description: &str,
    tables: &[&[Param]],
    path_id: bool,
    ok: Value,
    not_found: bool,
) -> Value {
    let mut parameters: Vec<Value> = Vec::new();
    if path_id {
        parameters.push(json!({
            "name": "id",
            "in": "path",
            "required": true,
            "description": "The dataset id, e.g. aarhus-air-quality.",
            "schema": { "type": "string" },
        }));
    }
    parameters.extend(tables.iter().flat_map(|t| t.iter()).map(parameter));
    let mut responses = errors();
    responses.insert("200".into(), ok);
    if not_found {
        responses.insert(
            "404".into(),
            error("No such dataset in this node's catalog."),
        );
    }
    json!({
        "get": {
            "summary": summary,
            "description": description,
            "parameters": parameters,
            "responses": responses,
        }
    })
}

fn answer(description: &str, json_schema: Value, csv_columns: &[&str], geojson: bool) -> Value {
    let mut content = Map::new();
    content.insert("application/json".into(), json!({ "schema": json_schema }));
    content.insert(
        "application/x-ndjson".into(),
        json!({ "schema": { "type": "string" }, "description": "One JSON object per line." }),
    );
    content.insert("text/csv".into(), csv(csv_columns));
    if geojson {
        content.insert(
            "application/geo+json".into(),
            json!({ "schema": { "$ref": "#/components/schemas/FeatureCollection" } }),
        );
    }
    json!({ "description": description, "content": content })
}

fn array_of(name: &str) -> Value {
    json!({ "type": "array", "items": { "$ref": format!("#/components/schemas/{name}") } })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    paths.insert(
        routes::DATASETS.into(),
        operation(
            "This node's dataset catalog",
            "Every dataset this node publishes (DCAT-AP fields where they fit).",
            &[params::DATASETS],
            false,
            answer("The catalog.", array_of("Dataset"), &DATASET_COLUMNS, false),
            false,
        ),
    );
    let reading_columns: Vec<&str> = READING_COLUMNS
        .iter()
        .copied()
        .chain(["<measure>..."])
        .collect();
    paths.insert(
        routes::READINGS.into(),
        operation(
            "Readings or aggregates of one of this node's sensor datasets",
            "Raw readings in [from, until), or with `bucket` time buckets (over all sensors, \
             or per sensor with `per_sensor`). The answer streams: a JSON array, NDJSON, CSV \
             with a header row (raw readings: sensor_id,timestamp,lat,lon and one column per \
             measure; buckets: start,sensor_id,measure,count,min,max,avg,sum,distinct_sensors) \
             or, for raw readings, a GeoJSON FeatureCollection of the located readings. An \
             answer cut off midway ends with a broken transfer, never a truncated document.",
            &[params::READINGS],
            true,
            answer(
                "Readings (or buckets with `bucket`).",
                json!({ "type": "array", "items": { "oneOf": [
                    { "$ref": "#/components/schemas/Reading" },
                    { "$ref": "#/components/schemas/Bucket" },
                ] } }),
                &reading_columns,
                true,
            ),
            true,
        ),
    );
    paths.insert(
        routes::PILOTS.into(),
        operation(
            "Pilot results",
            "This node's pilot records matching the filters.",
            &[params::PILOTS],
            false,
            answer("Pilots.", array_of("Pilot"), &PILOT_COLUMNS, false),
            false,
        ),
    );
    paths.insert(
        routes::PROCUREMENTS.into(),
        operation(
            "Procurement outcomes",
            "This node's procurement records matching the filters.",
            &[params::PROCUREMENTS],
            false,
            answer(
                "Procurements.",
                array_of("Procurement"),
                &PROCUREMENT_COLUMNS,
                false,
            ),
            false,
        ),
    );
    let mut ask_csv = ASK_READING_COLUMNS.join(",");
    ask_csv.push_str(" (with bucket: ");
    ask_csv.push_str(&ASK_BUCKET_COLUMNS.join(","));
    ask_csv.push_str("; part=status: ");
    ask_csv.push_str(&STATUS_COLUMNS.join(","));
    ask_csv.push(')');
    let mut ask_answer = answer(
        "The federated answer.",
        json!({ "$ref": "#/components/schemas/AskAnswer" }),
        &[],
        true,
    );
    ask_answer["content"]["text/csv"] =
        json!({ "schema": { "type": "string" }, "example": ask_csv });
    paths.insert(
        routes::ASK_READINGS.into(),
        operation(
            "Ask the fellowship: readings or aggregates from every partner that lets this node",
            "The federated question of `samvirke ask readings`: every target partner's \
             covered datasets are asked under an agreement in force, within `deadline`. Rows \
             are tagged with municipality, name and dataset. JSON answers one object \
             {rows, combined, combined_note, partners, summary}; NDJSON one row per line, \
             then combined buckets, {\"partner\":...} lines and a last {\"summary\":...}; CSV \
             the rows in long form (one measure value per row) followed by the combined \
             buckets as rows of municipality `all`; GeoJSON the located readings with \
             `partners` and `summary` beside `features`. For tools that load one table per \
             query (Excel, Power BI), `part=status` asks the same question and answers only \
             the per-partner statuses. Every question is recorded in the audit log.",
            &[params::READINGS, params::ASK],
            false,
            ask_answer,
            false,
        ),
    );
    let dcat = operation(
        "The catalog as DCAT-AP-DK JSON-LD",
        "This node's catalog (scope=local) or also what the fellowship lets it see \
         (scope=fellowship) as a DCAT-AP-DK 2.0 document for opendata.dk and other DCAT \
         harvesters: a dcat:Catalog with its dcat:Datasets, one foaf:Agent per municipality \
         (publisher type LocalAuthority), and dcat:Distributions whose accessURLs point at \
         this API. Vocabularies are the EU Publications Office's (data themes, frequency, \
         access rights from the classification, file types, licences).",
        &[params::CATALOG],
        false,
        json!({
            "description": "The catalog.",
            "content": { "application/ld+json": { "schema": { "type": "object" } } },
        }),
        false,
    );
    paths.insert(routes::CATALOG_DCAT.into(), dcat);
    paths.insert(
        routes::OPENAPI.into(),
        json!({ "get": {
            "summary": "This document",
            "security": [],
            "responses": { "200": {
                "description": "The OpenAPI document.",
                "content": { "application/json": { "schema": { "type": "object" } } },
            } },
        } }),
    );

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Samvirke node HTTP API",
            "version": crate::SOFTWARE_VERSION,
            "description": "A municipality's Samvirke node for analysts' tools (Power BI, \
                Excel, Grafana Infinity): its catalog, readings and aggregates, pilot and \
                procurement records, and questions to the fellowship, as JSON, NDJSON, CSV \
                and GeoJSON. Authenticate with a local API token of role read (or admin): \
                `Authorization: Bearer svk_...`. Errors answer {\"error\": \"...\"}.",
        },
        "security": [ { "bearer": [] } ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "svk_<64 hex>" },
            },
            "schemas": schemas(),
        },
    })
}

fn schemas() -> Value {
    let string = json!({ "type": "string" });
    let number = json!({ "type": "number" });
    let integer = json!({ "type": "integer" });
    let nullable_number = json!({ "type": "number", "nullable": true });
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": string },
        },
        "Dataset": {
            "type": "object",
            "properties": {
                "id": string, "title": string, "description": string, "kind": string,
                "owner": integer, "theme": string,
                "keywords": { "type": "array", "items": string },
                "license": string, "classification": string,
                "spatial": { "type": "object", "nullable": true },
                "temporal": { "type": "object", "nullable": true },
                "schema": { "type": "array", "items": { "type": "object", "properties": {
                    "name": string, "type": string, "unit": string,
                    "personal": { "type": "boolean" },
                } } },
                "update_interval_seconds": integer,
            },
        },
        "Reading": {
            "type": "object",
            "properties": {
                "sensor_id": string,
                "at": { "type": "string", "format": "date-time" },
                "values": { "type": "object", "additionalProperties": number },
                "lat": number,
                "lon": number,
            },
        },
        "Bucket": {
            "type": "object",
            "description": format!("CSV columns: {}", BUCKET_COLUMNS.join(",")),
            "properties": {
                "start": { "type": "string", "format": "date-time" },
                "sensor_id": { "type": "string", "nullable": true },
                "measure": string,
                "count": integer,
                "min": nullable_number, "max": nullable_number,
                "avg": number, "sum": number,
                "distinct_sensors": { "type": "integer", "nullable": true },
            },
        },
        "Pilot": { "type": "object", "description": format!("CSV columns: {}", PILOT_COLUMNS.join(",")) },
        "Procurement": { "type": "object", "description": format!("CSV columns: {}", PROCUREMENT_COLUMNS.join(",")) },
        "FeatureCollection": {
            "type": "object",
            "description": "GeoJSON: Point features with properties sensor_id, at, values (and \
                municipality, name, dataset for federated answers).",
            "properties": {
                "type": { "type": "string", "enum": ["FeatureCollection"] },
                "features": { "type": "array", "items": { "type": "object" } },
            },
        },
        "PartnerStatus": {
            "type": "object",
            "properties": {
                "municipality": integer, "name": string, "dataset": string,
                "status": { "type": "string", "enum": [
                    "ok", "denied", "unavailable", "timed out", "not entitled", "failed",
                ] },
                "rows": integer, "bytes": integer, "latency_ms": integer,
                "agreement": string, "receipt": string, "detail": string,
            },
        },
        "AskAnswer": {
            "type": "object",
            "properties": {
                "rows": { "type": "array", "items": { "type": "object", "description":
                    "A reading or bucket with municipality, name, dataset (and agreement)." } },
                "combined": { "type": "array", "items": { "type": "object" } },
                "combined_note": string,
                "partners": { "type": "array", "items": { "$ref": "#/components/schemas/PartnerStatus" } },
                "summary": { "type": "object", "properties": {
                    "asked": integer, "answered": integer, "rows": integer,
                    "elapsed_ms": integer, "audit_seq": integer,
                } },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_parameter_is_described() {
        let doc = document();
        for route in [
            routes::DATASETS,
            routes::READINGS,
            routes::PILOTS,
            routes::PROCUREMENTS,
            routes::ASK_READINGS,
            routes::OPENAPI,
            routes::CATALOG_DCAT,
        ] {
            assert!(doc["paths"][route]["get"].is_object(), "{route}");
        }
        let ask = doc["paths"][routes::ASK_READINGS]["get"]["parameters"]
            .as_array()
            .map(|p| p.len());
        assert_eq!(ask, Some(params::READINGS.len() + params::ASK.len()));
    }
}
