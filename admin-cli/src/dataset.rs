//! `samvirke dataset`: publish, update and list a node's catalog entries.
//!
//! A dataset comes from a TOML file whose keys are the `Dataset` message's
//! fields (unknown keys are errors that name the key), or, for demos, from
//! a synthetic sensor kind and a municipality code. The node validates the
//! entry and names the field to fix when it refuses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use samvirke_node::wire;
use samvirke_proto::v1::{BoundingBox, Dataset, SchemaField, TimeRange};
use serde::Deserialize;

use crate::api::{self, NodeArgs};
use crate::files;
use crate::output::{self, ListFormat};

/// The keys every dataset file must have.
const REQUIRED_KEYS: &[&str] = &[
    "id",
    "title",
    "description",
    "kind",
    "owner",
    "theme",
    "license",
    "classification",
    "schema",
];

/// An example of the file `--file` reads, shown in `--help`.
const FILE_EXAMPLE: &str = r#"Dataset file (TOML; keys are the Dataset message's fields; all are
required but keywords, spatial, temporal and, for pilot and procurement
datasets, update_interval_seconds):
  id = "aarhus-air-quality"
  title = "Air quality sensors, Aarhus"
  description = "Particulates and NO2 from street sensors."
  kind = "sensor"                      # sensor, pilot or procurement
  owner = 751                          # kommunekode
  theme = "environment"
  keywords = ["air-quality", "luft"]
  license = "CC-BY-4.0"
  classification = "open"              # open, internal, confidential, personal
  update_interval_seconds = 600        # required (1 or more) for sensor datasets
  [spatial]                            # optional
  min_lat = 56.10
  min_lon = 10.10
  max_lat = 56.20
  max_lon = 10.30
  [temporal]                           # optional; RFC 3339 or YYYY-MM-DD
  from = "2026-01-01T00:00:00Z"
  [[schema]]
  name = "pm2_5"
  type = "number"                      # number, text, bool, timestamp
  unit = "ug/m3"
  personal = false"#;

#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Publish a new dataset in the node's catalog.
    #[command(after_help = FILE_EXAMPLE)]
    Publish(PublishArgs),
    /// Replace a published dataset's entry (a sensor dataset's measures may only grow).
    #[command(after_help = FILE_EXAMPLE)]
    Update(PublishArgs),
    /// List the node's catalog.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The dataset file (TOML).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["sensor_kind", "records_kind"])]
    file: Option<PathBuf>,
    /// Instead of a file: the synthetic sensor dataset of this kind
    /// (air-quality, noise, traffic-count, ...), with --code.
    #[arg(long, conflicts_with_all = ["file", "records_kind"], requires = "code")]
    sensor_kind: Option<String>,
    /// Instead of a file: the municipality's pilot results (`pilot`,
    /// `{town}-pilot-results`) or procurement outcomes (`procurement`,
    /// `{town}-procurement-outcomes`) dataset, with --code.
    #[arg(long, value_enum, conflicts_with = "file", requires = "code")]
    records_kind: Option<RecordsKind>,
    /// The owning municipality's code, with --sensor-kind or --records-kind.
    #[arg(long)]
    code: Option<u32>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn run(command: DatasetCommand) -> anyhow::Result<ExitCode> {
    match command {
        DatasetCommand::Publish(args) => api::block_on(publish(args, false)),
        DatasetCommand::Update(args) => api::block_on(publish(args, true)),
        DatasetCommand::List(args) => api::block_on(list(args)),
    }
}

async fn publish(args: PublishArgs, update: bool) -> anyhow::Result<ExitCode> {
    let dataset = match (&args.file, &args.sensor_kind, args.code) {
        (Some(file), _, _) => {
            let dataset = read_file(file)?;
            check(&dataset)
                .with_context(|| format!("{} is not a valid dataset", file.display()))?;
            dataset
        }
        (None, Some(kind), Some(code)) => sensor_dataset(kind, code)?,
        (None, None, Some(code)) => match args.records_kind {
            Some(kind) => records_dataset(kind, code)?,
            None => bail!("--code goes with --sensor-kind or --records-kind"),
        },
        _ => bail!("give --file, --sensor-kind with --code, or --records-kind with --code"),
    };
    let id = dataset.id.clone();
    let mut client = args.node.connect().await?;
    let stored = if update {
        client.update_dataset(dataset).await
    } else {
        client.publish_dataset(dataset).await
    }
    .map_err(|status| {
        let what = if update { "update" } else { "publish" };
        args.node
            .refused(&format!("{what} dataset `{id}`"), &status)
    })?
    .into_inner();
    println!(
        "{} dataset `{}` ({}, owner {}, {}; measures: {})",
        if update { "updated" } else { "published" },
        stored.id,
        stored.kind,
        stored.owner,
        stored.classification,
        show_measures(&stored)
    );
    Ok(ExitCode::SUCCESS)
}

fn show_measures(dataset: &Dataset) -> String {
    let measures = output::measures(dataset);
    if measures.is_empty() {
        "-".to_string()
    } else {
        measures.join(",")
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let datasets = args.node.datasets(&mut client).await?;
    let mut out = std::io::stdout().lock();
    output::finish_output(print_list(&mut out, &datasets, args.format))?;
    Ok(ExitCode::SUCCESS)
}

fn print_list(
    out: &mut impl std::io::Write,
    datasets: &[Dataset],
    format: ListFormat,
) -> anyhow::Result<()> {
    match format {
        ListFormat::Json => {
            for dataset in datasets {
                output::json_line(out, &output::dataset_json(dataset))?;
            }
        }
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = datasets
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.kind.clone(),
                        d.owner.to_string(),
                        d.classification.clone(),
                        show_measures(d),
                    ]
                })
                .collect();
            output::print_table(
                out,
                &["id", "kind", "owner", "classification", "measures"],
                vec![false, false, true, false, false],
                &rows,
            )?;
        }
    }
    Ok(())
}

// ---- The dataset file ------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetFile {
    id: String,
    title: String,
    description: String,
    kind: String,
    owner: u32,
    theme: String,
    #[serde(default)]
    keywords: Vec<String>,
    license: String,
    spatial: Option<SpatialFile>,
    temporal: Option<TemporalFile>,
    classification: String,
    schema: Vec<SchemaFile>,
    #[serde(default)]
    update_interval_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpatialFile {
    min_lat: f64,
    min_lon: f64,
    max_lat: f64,
    max_lon: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemporalFile {
    from: Option<toml::Value>,
    until: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    name: String,
    #[serde(rename = "type")]
    field_type: String,
    #[serde(default)]
    unit: String,
    #[serde(default)]
    personal: bool,
}

/// Reads a dataset file.
fn read_file(path: &Path) -> anyhow::Result<Dataset> {
    let text = files::read_text(path)?;
    parse_file(&text).with_context(|| format!("{} is not a valid dataset file", path.display()))
}

/// Parses a dataset file's text into the message.
fn parse_file(text: &str) -> anyhow::Result<Dataset> {
    let file: DatasetFile = match toml::from_str(text) {
        Ok(file) => file,
        // serde names only the first missing key: name them all, with the
        // whole list of required keys.
        Err(error) if error.message().starts_with("missing field") => {
            let table: toml::Table = toml::from_str(text)?;
            let missing: Vec<&str> = REQUIRED_KEYS
                .iter()
                .copied()
                .filter(|key| !table.contains_key(*key))
                .collect();
            if missing.is_empty() {
                // A key missing inside a table (a schema field, ...).
                return Err(error.into());
            }
            bail!(
                "missing required key{} {}; a dataset file needs {} (and, for a sensor \
                 dataset, update_interval_seconds); `samvirke dataset publish --help` shows an \
                 example",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", "),
                REQUIRED_KEYS.join(", ")
            );
        }
        Err(error) => return Err(error.into()),
    };
    let time = |key: &str, value: Option<toml::Value>| -> anyhow::Result<_> {
        let text = match value {
            None => return Ok(None),
            Some(toml::Value::String(text)) => text,
            Some(toml::Value::Datetime(at)) => at.to_string(),
            Some(other) => bail!(
                "temporal.{key}: expected an RFC 3339 time or a date, found {}",
                other.type_str()
            ),
        };
        let at = files::instant(&text).with_context(|| format!("temporal.{key}"))?;
        Ok(Some(output::timestamp(at)))
    };
    let temporal = match file.temporal {
        None => None,
        Some(t) => Some(TimeRange {
            from: time("from", t.from)?,
            until: time("until", t.until)?,
        }),
    };
    Ok(Dataset {
        id: file.id,
        title: file.title,
        description: file.description,
        kind: file.kind,
        owner: file.owner,
        theme: file.theme,
        keywords: file.keywords,
        license: file.license,
        spatial: file.spatial.map(|s| BoundingBox {
            min_lat: s.min_lat,
            min_lon: s.min_lon,
            max_lat: s.max_lat,
            max_lon: s.max_lon,
        }),
        temporal,
        classification: file.classification,
        schema: file
            .schema
            .into_iter()
            .map(|f| SchemaField {
                name: f.name,
                r#type: f.field_type,
                unit: f.unit,
                personal: f.personal,
            })
            .collect(),
        update_interval_seconds: file.update_interval_seconds,
    })
}

/// The synthetic sensor dataset of `kind` for municipality `code`.
/// A records dataset's kind, as `--records-kind` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RecordsKind {
    Pilot,
    Procurement,
}

fn records_dataset(kind: RecordsKind, code: u32) -> anyhow::Result<Dataset> {
    let kind = match kind {
        RecordsKind::Pilot => samvirke_node::data::DatasetKind::Pilot,
        RecordsKind::Procurement => samvirke_node::data::DatasetKind::Procurement,
    };
    let dataset = samvirke_node::data::generate::records_dataset(kind, code)?;
    Ok(wire::dataset_to_proto(&dataset))
}

fn sensor_dataset(kind: &str, code: u32) -> anyhow::Result<Dataset> {
    let dataset = samvirke_node::data::generate::sensor_dataset(kind, code)?;
    Ok(wire::dataset_to_proto(&dataset))
}

/// Checks a dataset the way the node will, so a file's mistakes are named
/// before anything is sent.
fn check(dataset: &Dataset) -> anyhow::Result<()> {
    let parsed = wire::dataset_from_proto(dataset.clone())?;
    parsed.validate().map_err(|e| {
        // The catalog calls it update_interval_s; the file says _seconds.
        let field = match e.field.as_str() {
            "update_interval_s" => "update_interval_seconds",
            other => other,
        };
        anyhow::anyhow!("{field}: {}", e.reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
id = "aarhus-air-quality"
title = "Air quality sensors, Aarhus"
description = "Particulates and NO2."
kind = "sensor"
owner = 751
theme = "environment"
keywords = ["air-quality"]
license = "CC-BY-4.0"
classification = "open"
update_interval_seconds = 600

[spatial]
min_lat = 56.1
min_lon = 10.1
max_lat = 56.2
max_lon = 10.3

[temporal]
from = 2026-01-01T00:00:00Z
until = "2027-01-01"

[[schema]]
name = "pm2_5"
type = "number"
unit = "ug/m3"

[[schema]]
name = "street"
type = "text"
"#;

    #[test]
    fn a_file_maps_onto_the_message() {
        let dataset = parse_file(FILE).expect("valid");
        assert_eq!(dataset.id, "aarhus-air-quality");
        assert_eq!(dataset.owner, 751);
        assert_eq!(dataset.update_interval_seconds, 600);
        assert_eq!(dataset.spatial.map(|s| s.max_lon), Some(10.3));
        let temporal = dataset.temporal.expect("temporal");
        assert_eq!(temporal.from.map(|t| t.seconds), Some(1_767_225_600));
        assert_eq!(temporal.until.map(|t| t.seconds), Some(1_798_761_600));
        assert_eq!(dataset.schema.len(), 2);
        assert_eq!(dataset.schema[1].r#type, "text");
        assert_eq!(output::measures(&dataset), vec!["pm2_5".to_string()]);
    }

    #[test]
    fn unknown_and_missing_keys_are_named() {
        let err = parse_file(&FILE.replace("theme =", "themes =")).expect_err("unknown");
        assert!(
            format!("{err:#}").contains("unknown field `themes`"),
            "{err:#}"
        );
        let err = parse_file(&FILE.replace("unit = \"ug/m3\"", "units = \"ug/m3\""))
            .expect_err("nested unknown");
        assert!(
            format!("{err:#}").contains("unknown field `units`"),
            "{err:#}"
        );
        let err = parse_file(&FILE.replace("license = \"CC-BY-4.0\"\n", "")).expect_err("missing");
        assert!(
            format!("{err:#}").contains("missing required key license;"),
            "{err:#}"
        );
        let err = parse_file(&FILE.replace("until = \"2027-01-01\"", "until = \"soon\""))
            .expect_err("time");
        assert!(format!("{err:#}").contains("temporal.until"), "{err:#}");
    }

    #[test]
    fn files_are_checked_as_the_node_checks_them() {
        check(&parse_file(FILE).expect("parses")).expect("valid");
        let err = check(
            &parse_file(&FILE.replace("update_interval_seconds = 600\n", "")).expect("parses"),
        )
        .expect_err("sensor without interval");
        assert!(
            err.to_string().starts_with("update_interval_seconds:"),
            "{err}"
        );
        let err = check(
            &parse_file(&FILE.replace("kind = \"sensor\"", "kind = \"sensors\"")).expect("parses"),
        )
        .expect_err("kind");
        assert!(err.to_string().starts_with("kind:"), "{err}");
        let err = check(
            &parse_file(&FILE.replace("type = \"text\"", "type = \"text\"\npersonal = true"))
                .expect("parses"),
        )
        .expect_err("personal in open");
        assert!(err.to_string().starts_with("classification:"), "{err}");
    }

    #[test]
    fn synthetic_sensor_datasets_convert_field_by_field() {
        let dataset = sensor_dataset("air-quality", 751).expect("fixture");
        assert_eq!(dataset.id, "aarhus-air-quality");
        assert_eq!(dataset.kind, "sensor");
        assert_eq!(dataset.classification, "open");
        assert_eq!(
            output::measures(&dataset),
            vec!["pm2_5".to_string(), "pm10".to_string(), "no2".to_string()]
        );
        assert!(dataset.spatial.is_some());
        assert_eq!(dataset.temporal, None);
        assert_eq!(dataset.update_interval_seconds, 600);
        assert!(sensor_dataset("nope", 751).is_err());
        check(&dataset).expect("the generated dataset is valid");
    }

    #[test]
    fn the_list_table_shows_measures() {
        let dataset = sensor_dataset("air-quality", 751).expect("fixture");
        let mut out = Vec::new();
        print_list(&mut out, &[dataset], ListFormat::Table).expect("print");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.starts_with("id                  kind    owner  classification  measures\n"),
            "{text}"
        );
        assert!(
            text.contains("aarhus-air-quality  sensor    751  open            pm2_5,pm10,no2"),
            "{text}"
        );
    }
}
