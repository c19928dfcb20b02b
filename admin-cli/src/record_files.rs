//! Pilot results and procurement outcomes from a data owner's own files
//! (`samvirke records pilots|procurements put FILE`): CSV, JSON or TOML,
//! read into records and checked with the node's own validation before
//! anything is sent.
//!
//! All or nothing on validation: every record of the file is read and
//! checked first, and every record's first problem is reported (up to
//! [`MAX_PROBLEMS`]),
//! each naming the record (its CSV line or its index in the file, and its
//! id) and the field; if there is any, nothing is sent. Then the records
//! are stored one by one (a put replaces a record with the same id, so
//! sending a file again is safe); a refusal by the node stops there and
//! says how many were stored.
//!
//! Shapes:
//! - JSON: an array of objects, or one object;
//! - TOML: `[[pilot]]` or `[[procurement]]` tables;
//! - CSV: a header row naming the fields; lists (`municipalities`,
//!   `technology`, `cpv_codes`, `suppliers`, ...) separated by `;`; pilot
//!   KPIs as `name=value unit; ...`; complaints and attachments only in
//!   JSON and TOML.
//!
//! Dates are `YYYY`, `YYYY-MM` or `YYYY-MM-DD`; phases, procedures and
//! statuses are the words `samvirke records ... list` prints
//! (`demonstration`, `framework-mini-tender`, `awarded`).

use std::path::Path;

use anyhow::{Context, bail};
use samvirke_node::data::records::{validate_pilot, validate_procurement};
use samvirke_proto::v1::{
    Attachment, Complaint, Kpi, PartialDate, Pilot, PilotPhase, Procedure, Procurement,
    ProcurementStatus,
};
use serde::Deserialize;

/// Problems listed before the rest are only counted.
pub const MAX_PROBLEMS: usize = 50;
/// Most records one file may hold.
pub const MAX_RECORDS: usize = 100_000;

/// A file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordFormat {
    Csv,
    Json,
    Toml,
}

impl RecordFormat {
    /// The format a file's extension says, or `given`.
    pub fn of(path: &Path, given: Option<RecordFormat>) -> anyhow::Result<RecordFormat> {
        if let Some(format) = given {
            return Ok(format);
        }
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Ok(RecordFormat::Csv),
            Some("json") => Ok(RecordFormat::Json),
            Some("toml") => Ok(RecordFormat::Toml),
            _ => bail!(
                "{}: cannot tell the format from the file name; give --format csv, json or toml",
                path.display()
            ),
        }
    }
}

/// One record as read, before checks: where it is and its fields.
struct Raw<T> {
    /// "line 3" or "record 2".
    place: String,
    /// The id, when the record names one (for messages).
    id: String,
    record: Result<T, String>,
}

impl<T> Raw<T> {
    fn problem(&self, reason: &str) -> String {
        if self.id.is_empty() {
            format!("{}: {reason}", self.place)
        } else {
            format!("{} (id `{}`): {reason}", self.place, self.id)
        }
    }
}

/// Reads `text` as records of type `F` in `format`; `table` is the TOML
/// array name (`pilot`, `procurement`).
fn read_raw<F: for<'de> Deserialize<'de>>(
    text: &str,
    format: RecordFormat,
    table: &str,
    from_csv: impl Fn(&csv::StringRecord, &csv::StringRecord) -> Result<F, String>,
) -> anyhow::Result<Vec<Raw<F>>> {
    let id_of_json = |v: &serde_json::Value| v["id"].as_str().unwrap_or_default().to_string();
    let raws = match format {
        RecordFormat::Json => {
            let value: serde_json::Value =
                serde_json::from_str(text).context("the file is not JSON")?;
            let items = match value {
                serde_json::Value::Array(items) => items,
                object @ serde_json::Value::Object(_) => vec![object],
                _ => bail!("the JSON file must hold an object or an array of objects"),
            };
            check_count(items.len())?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| Raw {
                    place: format!("record {}", i + 1),
                    id: id_of_json(&item),
                    record: serde_json::from_value(item).map_err(|e| e.to_string()),
                })
                .collect()
        }
        RecordFormat::Toml => {
            let mut document: toml::Table = toml::from_str(text).context("the file is not TOML")?;
            let Some(items) = document.remove(table) else {
                bail!("the TOML file has no [[{table}]] tables");
            };
            if let Some(other) = document.keys().next() {
                bail!("the TOML file has `{other}` beside [[{table}]]; only [[{table}]] tables");
            }
            let toml::Value::Array(items) = items else {
                bail!("`{table}` must be [[{table}]] tables");
            };
            check_count(items.len())?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| Raw {
                    place: format!("[[{table}]] number {}", i + 1),
                    id: item
                        .get("id")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_string(),
                    record: item
                        .try_into()
                        .map_err(|e: toml::de::Error| e.message().trim_end().to_string()),
                })
                .collect()
        }
        RecordFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            let header = reader.headers().context("the CSV header row")?.clone();
            let mut raws = Vec::new();
            for row in reader.records() {
                let row = row.context("the CSV file")?;
                check_count(raws.len() + 1)?;
                let line = row.position().map_or(0, |p| p.line());
                let id = header
                    .iter()
                    .position(|h| h == "id")
                    .and_then(|i| row.get(i))
                    .unwrap_or_default()
                    .to_string();
                raws.push(Raw {
                    place: format!("line {line}"),
                    id,
                    record: from_csv(&header, &row),
                });
            }
            raws
        }
    };
    Ok(raws)
}

fn check_count(count: usize) -> anyhow::Result<()> {
    if count > MAX_RECORDS {
        bail!("the file holds more than {MAX_RECORDS} records; split it");
    }
    Ok(())
}

/// Reads and checks every record; all problems, or the records.
fn checked<F, T: Clone>(
    raws: Vec<Raw<F>>,
    convert: impl Fn(F) -> Result<T, String>,
    validate: impl Fn(&T) -> Result<(), String>,
) -> Result<Vec<T>, Vec<String>> {
    let mut problems = Vec::new();
    let mut records = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for raw in raws {
        let outcome = match &raw.record {
            Err(reason) => Err(reason.clone()),
            Ok(_) => Ok(()),
        };
        let place = raw.place.clone();
        let id = raw.id.clone();
        let problem = |reason: &str| raw.problem(reason);
        match outcome {
            Err(reason) => problems.push(problem(&reason)),
            Ok(()) => {
                let message = problem("");
                let Ok(fields) = raw.record else { continue };
                match convert(fields).and_then(|record| validate(&record).map(|()| record)) {
                    Err(reason) => problems.push(format!("{message}{reason}")),
                    Ok(record) => {
                        if let Some(first) = seen.insert(id.clone(), place.clone()) {
                            problems.push(format!(
                                "{message}the id is also used at {first}; ids must be unique"
                            ));
                        }
                        records.push(record);
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(records)
    } else {
        Err(problems)
    }
}

/// The report of a file with problems.
pub fn report(file: &Path, problems: &[String]) -> String {
    let mut text = format!(
        "{}: {} problem{}; nothing was stored:\n",
        file.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for problem in problems.iter().take(MAX_PROBLEMS) {
        text.push_str("  ");
        text.push_str(problem);
        text.push('\n');
    }
    if problems.len() > MAX_PROBLEMS {
        text.push_str(&format!(
            "  ... and {} more\n",
            problems.len() - MAX_PROBLEMS
        ));
    }
    text
}

// ---- Words and dates ----------------------------------------------------------------

fn date(field: &str, text: &str) -> Result<Option<PartialDate>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || format!("{field}: `{text}` is not YYYY, YYYY-MM or YYYY-MM-DD");
    let parts: Vec<&str> = text.split('-').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    let year: i32 = parts[0].parse().map_err(|_| bad())?;
    let month: u32 = parts
        .get(1)
        .map_or(Ok(0), |m| m.parse())
        .map_err(|_| bad())?;
    let day: u32 = parts
        .get(2)
        .map_or(Ok(0), |d| d.parse())
        .map_err(|_| bad())?;
    Ok(Some(PartialDate { year, month, day }))
}

/// A word (`framework-mini-tender`) as the enum value named
/// `PREFIX` + `FRAMEWORK_MINI_TENDER`.
fn word<E>(
    field: &str,
    text: &str,
    prefix: &str,
    parse: impl Fn(&str) -> Option<E>,
    words: &[&str],
) -> Result<Option<E>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let name = format!("{prefix}{}", text.to_ascii_uppercase().replace('-', "_"));
    parse(&name)
        .map(Some)
        .ok_or_else(|| format!("{field}: `{text}` is not one of {}", words.join(", ")))
}

const PHASES: &[&str] = &[
    "idea",
    "test",
    "demonstration",
    "scaling",
    "operation",
    "stopped",
];
const PROCEDURES: &[&str] = &[
    "open",
    "restricted",
    "negotiation",
    "framework-mini-tender",
    "framework-agreement",
];
const STATUSES: &[&str] = &[
    "planned",
    "in-tender",
    "negotiating",
    "awarded",
    "cancelled",
];

fn list(text: &str) -> Vec<String> {
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn numbers<T: std::str::FromStr>(field: &str, text: &str) -> Result<Vec<T>, String> {
    list(text)
        .into_iter()
        .map(|n| {
            n.parse()
                .map_err(|_| format!("{field}: `{n}` is not a whole number"))
        })
        .collect()
}

fn number<T: std::str::FromStr + Default>(field: &str, text: &str) -> Result<T, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(T::default());
    }
    text.parse()
        .map_err(|_| format!("{field}: `{text}` is not a whole number"))
}

/// `name=value unit; ...`
fn kpis(text: &str) -> Result<Vec<KpiFile>, String> {
    list(text)
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let bad = || format!("kpis[{i}]: `{item}` is not `name=value unit`");
            let (name, rest) = item.split_once('=').ok_or_else(bad)?;
            let rest = rest.trim();
            let (value, unit) = rest.split_once(' ').unwrap_or((rest, ""));
            Ok(KpiFile {
                name: name.trim().to_string(),
                value: value.parse().map_err(|_| bad())?,
                unit: unit.trim().to_string(),
            })
        })
        .collect()
}

/// The cells of a CSV row by header name; unknown columns are refused.
fn cells<'a>(
    header: &'a csv::StringRecord,
    row: &'a csv::StringRecord,
    known: &[&str],
) -> Result<std::collections::BTreeMap<&'a str, &'a str>, String> {
    let mut out = std::collections::BTreeMap::new();
    for (name, value) in header.iter().zip(row.iter()) {
        if !known.contains(&name) {
            return Err(format!(
                "column `{name}` is not a field (the fields: {})",
                known.join(", ")
            ));
        }
        out.insert(name, value);
    }
    Ok(out)
}

// ---- Pilots -----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KpiFile {
    name: String,
    value: f64,
    #[serde(default)]
    unit: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentFile {
    name: String,
    sha256: String,
    #[serde(default)]
    media_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PilotFile {
    id: String,
    title: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    municipalities: Vec<u32>,
    phase: String,
    #[serde(default)]
    technology: Vec<String>,
    #[serde(default)]
    started: String,
    #[serde(default)]
    ended: String,
    #[serde(default)]
    budget_dkk: i64,
    #[serde(default)]
    kpis: Vec<KpiFile>,
    #[serde(default)]
    findings: String,
    #[serde(default)]
    attachments: Vec<AttachmentFile>,
}

const PILOT_FIELDS: &[&str] = &[
    "id",
    "title",
    "owner",
    "municipalities",
    "phase",
    "technology",
    "started",
    "ended",
    "budget_dkk",
    "kpis",
    "findings",
];

fn pilot_from_csv(
    header: &csv::StringRecord,
    row: &csv::StringRecord,
) -> Result<PilotFile, String> {
    let c = cells(header, row, PILOT_FIELDS)?;
    let get = |name: &str| c.get(name).copied().unwrap_or_default().to_string();
    for required in ["id", "title", "phase"] {
        if get(required).trim().is_empty() {
            return Err(format!("{required}: missing"));
        }
    }
    Ok(PilotFile {
        id: get("id"),
        title: get("title"),
        owner: get("owner"),
        municipalities: numbers("municipalities", &get("municipalities"))?,
        phase: get("phase"),
        technology: list(&get("technology")),
        started: get("started"),
        ended: get("ended"),
        budget_dkk: number("budget_dkk", &get("budget_dkk"))?,
        kpis: kpis(&get("kpis"))?,
        findings: get("findings"),
        attachments: Vec::new(),
    })
}

fn pilot(dataset: &str, f: PilotFile) -> Result<Pilot, String> {
    let phase = word(
        "phase",
        &f.phase,
        "PILOT_PHASE_",
        PilotPhase::from_str_name,
        PHASES,
    )?
    .ok_or_else(|| format!("phase: missing (one of {})", PHASES.join(", ")))?;
    Ok(Pilot {
        id: f.id,
        dataset_id: dataset.to_string(),
        title: f.title,
        owner: f.owner,
        municipalities: f.municipalities,
        phase: phase as i32,
        technology: f.technology,
        started: date("started", &f.started)?,
        ended: date("ended", &f.ended)?,
        budget_dkk: f.budget_dkk,
        kpis: f
            .kpis
            .into_iter()
            .map(|k| Kpi {
                name: k.name,
                value: k.value,
                unit: k.unit,
            })
            .collect(),
        findings: f.findings,
        attachments: f
            .attachments
            .into_iter()
            .map(|a| Attachment {
                name: a.name,
                sha256: a.sha256,
                media_type: a.media_type,
            })
            .collect(),
    })
}

/// The pilots of a file, checked, for dataset `dataset`; or every problem.
pub fn read_pilots(
    text: &str,
    format: RecordFormat,
    dataset: &str,
) -> anyhow::Result<Result<Vec<Pilot>, Vec<String>>> {
    let raws = read_raw(text, format, "pilot", pilot_from_csv)?;
    Ok(checked(
        raws,
        |f| pilot(dataset, f),
        |p| validate_pilot(p).map_err(|e| e.to_string()),
    ))
}

// ---- Procurements ---------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComplaintFile {
    body: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    outcome: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcurementFile {
    id: String,
    title: String,
    #[serde(default)]
    buyer_municipalities: Vec<u32>,
    #[serde(default)]
    buyer_fellowship: String,
    #[serde(default)]
    buyer_organisation: String,
    #[serde(default)]
    buyer_count: u32,
    procedure: String,
    #[serde(default)]
    procedure_detail: String,
    #[serde(default)]
    cpv_codes: Vec<String>,
    #[serde(default)]
    suppliers: Vec<String>,
    #[serde(default)]
    value_dkk: i64,
    #[serde(default)]
    awarded: String,
    #[serde(default)]
    contract_start: String,
    #[serde(default)]
    contract_end: String,
    #[serde(default)]
    bids: u32,
    #[serde(default)]
    complaints: Vec<ComplaintFile>,
    #[serde(default)]
    status: String,
    #[serde(default)]
    notes: String,
}

const PROCUREMENT_FIELDS: &[&str] = &[
    "id",
    "title",
    "buyer_municipalities",
    "buyer_fellowship",
    "buyer_organisation",
    "buyer_count",
    "procedure",
    "procedure_detail",
    "cpv_codes",
    "suppliers",
    "value_dkk",
    "awarded",
    "contract_start",
    "contract_end",
    "bids",
    "status",
    "notes",
];

fn procurement_from_csv(
    header: &csv::StringRecord,
    row: &csv::StringRecord,
) -> Result<ProcurementFile, String> {
    let c = cells(header, row, PROCUREMENT_FIELDS)?;
    let get = |name: &str| c.get(name).copied().unwrap_or_default().to_string();
    for required in ["id", "title", "procedure"] {
        if get(required).trim().is_empty() {
            return Err(format!("{required}: missing"));
        }
    }
    Ok(ProcurementFile {
        id: get("id"),
        title: get("title"),
        buyer_municipalities: numbers("buyer_municipalities", &get("buyer_municipalities"))?,
        buyer_fellowship: get("buyer_fellowship"),
        buyer_organisation: get("buyer_organisation"),
        buyer_count: number("buyer_count", &get("buyer_count"))?,
        procedure: get("procedure"),
        procedure_detail: get("procedure_detail"),
        cpv_codes: list(&get("cpv_codes")),
        suppliers: list(&get("suppliers")),
        value_dkk: number("value_dkk", &get("value_dkk"))?,
        awarded: get("awarded"),
        contract_start: get("contract_start"),
        contract_end: get("contract_end"),
        bids: number("bids", &get("bids"))?,
        complaints: Vec::new(),
        status: get("status"),
        notes: get("notes"),
    })
}

fn procurement(dataset: &str, f: ProcurementFile) -> Result<Procurement, String> {
    let procedure = word(
        "procedure",
        &f.procedure,
        "PROCEDURE_",
        Procedure::from_str_name,
        PROCEDURES,
    )?
    .ok_or_else(|| format!("procedure: missing (one of {})", PROCEDURES.join(", ")))?;
    let status = word(
        "status",
        &f.status,
        "PROCUREMENT_STATUS_",
        ProcurementStatus::from_str_name,
        STATUSES,
    )?
    .unwrap_or(ProcurementStatus::Unspecified);
    Ok(Procurement {
        id: f.id,
        dataset_id: dataset.to_string(),
        title: f.title,
        buyer_municipalities: f.buyer_municipalities,
        buyer_fellowship: f.buyer_fellowship,
        buyer_organisation: f.buyer_organisation,
        buyer_count: f.buyer_count,
        procedure: procedure as i32,
        procedure_detail: f.procedure_detail,
        cpv_codes: f.cpv_codes,
        suppliers: f.suppliers,
        value_dkk: f.value_dkk,
        awarded: date("awarded", &f.awarded)?,
        contract_start: date("contract_start", &f.contract_start)?,
        contract_end: date("contract_end", &f.contract_end)?,
        bids: f.bids,
        complaints: f
            .complaints
            .into_iter()
            .map(|c| Complaint {
                body: c.body,
                summary: c.summary,
                outcome: c.outcome,
            })
            .collect(),
        status: status as i32,
        notes: f.notes,
    })
}

/// The procurements of a file, checked, for dataset `dataset`; or every
/// problem.
pub fn read_procurements(
    text: &str,
    format: RecordFormat,
    dataset: &str,
) -> anyhow::Result<Result<Vec<Procurement>, Vec<String>>> {
    let raws = read_raw(text, format, "procurement", procurement_from_csv)?;
    Ok(checked(
        raws,
        |f| procurement(dataset, f),
        |p| validate_procurement(p).map_err(|e| e.to_string()),
    ))
}
