//! `samvirke ask`: one question to the fellowship, through the analyst's
//! own node (`Local/Ask`). The node finds, from the agreements in force,
//! which partners, datasets and agreements the question goes to; answers
//! stream back as they arrive and print at once, each row tagged with the
//! municipality and dataset it came from. Aggregates over all sensors also
//! come combined over every municipality that answered in full. The
//! answer ends with one status line per partner and dataset.
//!
//! Rows print in long form (one measure value per row), which is what
//! spreadsheets, pandas and R read without reshaping: readings as
//! `municipality,name,dataset,sensor_id,at,lat,lon,measure,value`, buckets
//! as `municipality,name,dataset,start,sensor_id,measure,count,min,max,
//! avg,sum`. With `--format table` the statuses follow the rows on stdout;
//! with csv, json and geojson stdout holds only the data and the statuses
//! go to stderr, with progress for long answers.

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};
use samvirke_proto::v1::{
    self as pb, AskRequest, AskRows, CombinedBucket, PartnerOutcome, PartnerStatus, ask_event,
    ask_request,
};
use serde_json::{Value, json};

use crate::api::NodeArgs;
use crate::output::{self, Table};
use crate::query::QueryShape;
use crate::records::{PilotFilterArgs, ProcurementFilterArgs, pilot_filter, procurement_filter};

#[derive(Debug, Subcommand)]
pub enum AskCommand {
    /// Readings or aggregates (--bucket) of every partner dataset the
    /// question picks: a keyword (e.g. air-quality) or dataset ids.
    ///
    /// Example: daily average PM2.5 per municipality and over the whole
    /// fellowship:
    ///   samvirke ask readings --keyword air-quality --measure pm2_5
    ///     --from 2026-03-01 --until 2026-03-08 --bucket 1d --fellowship govtech-midtjylland
    Readings(ReadingsArgs),
    /// Search what the partners' catalogs show this node.
    Catalog(CatalogArgs),
    /// Pilot results of the partners' pilot datasets.
    Pilots(PilotsArgs),
    /// Procurement outcomes of the partners' procurement datasets.
    Procurements(ProcurementsArgs),
}

/// `--format` of `ask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AskFormat {
    /// Aligned columns for people; statuses follow on stdout.
    Table,
    /// CSV in long form.
    Csv,
    /// One JSON object per line.
    Json,
    /// A GeoJSON FeatureCollection of points (raw readings only).
    Geojson,
}

/// Who is asked, and how long they have.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// Ask only this partner (municipality code; repeat for several).
    #[arg(long = "partner", value_name = "CODE")]
    partners: Vec<u32>,
    /// Ask the current members of this fellowship (e.g. digit).
    #[arg(long)]
    fellowship: Option<String>,
    /// Ask under this agreement only (UUID).
    #[arg(long, value_name = "UUID")]
    agreement: Option<String>,
    /// Seconds every partner has to answer in full; later is "timed out".
    #[arg(long, value_name = "SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=120))]
    deadline: u32,
    /// Leave this node's own data out (a question to a fellowship or to
    /// every partner includes it by default).
    #[arg(long)]
    exclude_own: bool,
    #[arg(long, value_enum, default_value_t = AskFormat::Table)]
    format: AskFormat,
    #[command(flatten)]
    node: NodeArgs,
}

/// Which partner datasets the question goes to.
#[derive(Debug, Clone, Args)]
pub struct SelectArgs {
    /// Only datasets with this keyword (e.g. air-quality).
    #[arg(long)]
    keyword: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReadingsArgs {
    /// Only this dataset (repeat for several).
    #[arg(long = "dataset", value_name = "ID")]
    datasets: Vec<String>,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    shape: QueryShape,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Text in a dataset's id, title, description or keywords (any case).
    #[arg(long)]
    text: Option<String>,
    /// Only datasets with this keyword.
    #[arg(long)]
    keyword: Option<String>,
    /// Only datasets of this theme (e.g. environment).
    #[arg(long)]
    theme: Option<String>,
    /// Only datasets of this kind: sensor, pilot or procurement.
    #[arg(long)]
    kind: Option<String>,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct PilotsArgs {
    #[command(flatten)]
    filter: PilotFilterArgs,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    target: TargetArgs,
}

#[derive(Debug, Args)]
pub struct ProcurementsArgs {
    #[command(flatten)]
    filter: ProcurementFilterArgs,
    #[command(flatten)]
    select: SelectArgs,
    #[command(flatten)]
    target: TargetArgs,
}

pub fn run(command: AskCommand) -> anyhow::Result<ExitCode> {
    let (request, target, kind) = match command {
        AskCommand::Readings(args) => {
            args.shape.check()?;
            let kind = if args.shape.bucket.is_some() {
                RowKind::Buckets
            } else {
                RowKind::Readings
            };
            let query = args.shape.to_query(String::new());
            (
                request(
                    ask_request::Question::Readings(query),
                    args.datasets,
                    &args.select,
                    &args.target,
                ),
                args.target,
                kind,
            )
        }
        AskCommand::Catalog(args) => {
            let search = pb::CatalogSearch {
                text: args.text.unwrap_or_default(),
                keyword: args.keyword.unwrap_or_default(),
                theme: args.theme.unwrap_or_default(),
                kind: args.kind.unwrap_or_default(),
            };
            (
                request(
                    ask_request::Question::Catalog(search),
                    Vec::new(),
                    &SelectArgs { keyword: None },
                    &args.target,
                ),
                args.target,
                RowKind::Datasets,
            )
        }
        AskCommand::Pilots(args) => (
            request(
                ask_request::Question::Pilots(pilot_filter(&args.filter)),
                Vec::new(),
                &args.select,
                &args.target,
            ),
            args.target,
            RowKind::Pilots,
        ),
        AskCommand::Procurements(args) => (
            request(
                ask_request::Question::Procurements(procurement_filter(&args.filter)),
                Vec::new(),
                &args.select,
                &args.target,
            ),
            args.target,
            RowKind::Procurements,
        ),
    };
    if target.format == AskFormat::Geojson && kind != RowKind::Readings {
        bail!(
            "--format geojson draws raw readings as points; use --format table, csv or json for \
             {}",
            kind.plural()
        );
    }
    crate::api::block_on(ask(request, target, kind))
}

fn request(
    question: ask_request::Question,
    datasets: Vec<String>,
    select: &SelectArgs,
    target: &TargetArgs,
) -> AskRequest {
    AskRequest {
        question: Some(question),
        datasets: Some(pb::DatasetSelector {
            ids: datasets,
            keyword: select.keyword.clone().unwrap_or_default(),
        }),
        target: Some(pb::AskTarget {
            partners: target.partners.clone(),
            fellowship: target.fellowship.clone().unwrap_or_default(),
        }),
        agreement_id: target.agreement.clone().unwrap_or_default(),
        deadline_ms: target.deadline * 1000,
        exclude_own: target.exclude_own,
    }
}

/// What rows an answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Readings,
    Buckets,
    Datasets,
    Pilots,
    Procurements,
}

impl RowKind {
    fn plural(self) -> &'static str {
        match self {
            RowKind::Readings => "readings",
            RowKind::Buckets => "aggregates",
            RowKind::Datasets => "datasets",
            RowKind::Pilots => "pilots",
            RowKind::Procurements => "procurements",
        }
    }

    fn columns(self) -> Vec<&'static str> {
        let tail: &[&str] = match self {
            RowKind::Readings => &["sensor_id", "at", "lat", "lon", "measure", "value"],
            RowKind::Buckets => &[
                "start",
                "sensor_id",
                "measure",
                "count",
                "min",
                "max",
                "avg",
                "sum",
            ],
            RowKind::Datasets => &["kind", "theme", "title", "keywords"],
            RowKind::Pilots => &output::PILOT_COLUMNS[..],
            RowKind::Procurements => &output::PROCUREMENT_COLUMNS[..],
        };
        ["municipality", "name", "dataset"]
            .into_iter()
            .chain(tail.iter().copied())
            .collect()
    }

    /// Columns from the fourth on that hold numbers (right-aligned).
    fn numeric(self, column: &str) -> bool {
        matches!(
            column,
            "municipality" | "lat" | "lon" | "value" | "count" | "min" | "max" | "avg" | "sum"
        ) || (self == RowKind::Pilots && column == "budget_dkk")
            || (self == RowKind::Procurements && column == "value_dkk")
    }
}

/// Table cells (`short` numbers) or CSV cells (round-trip numbers) of the
/// rows of one event.
fn rows_of(rows: &AskRows, kind: RowKind, show: fn(f64) -> String) -> Vec<Vec<String>> {
    let source = rows.source.clone().unwrap_or_default();
    let lead = |dataset: &str| {
        vec![
            source.municipality.to_string(),
            source.name.clone(),
            dataset.to_string(),
        ]
    };
    let mut out = Vec::new();
    match kind {
        RowKind::Readings => {
            for reading in &rows.readings {
                let (lat, lon) = match reading.location {
                    Some(l) => (show(l.lat), show(l.lon)),
                    None => (String::new(), String::new()),
                };
                for (measure, value) in &reading.values {
                    let mut row = lead(&source.dataset_id);
                    row.extend([
                        reading.sensor_id.clone(),
                        output::show_timestamp(reading.at.as_ref()),
                        lat.clone(),
                        lon.clone(),
                        measure.clone(),
                        show(*value),
                    ]);
                    out.push(row);
                }
            }
        }
        RowKind::Buckets => {
            for bucket in &rows.buckets {
                let mut row = lead(&source.dataset_id);
                row.extend([
                    output::show_timestamp(bucket.start.as_ref()),
                    bucket.sensor_id.clone(),
                    bucket.measure.clone(),
                    bucket.count.to_string(),
                    bucket.min.map(show).unwrap_or_default(),
                    bucket.max.map(show).unwrap_or_default(),
                    show(bucket.avg),
                    show(bucket.sum),
                ]);
                out.push(row);
            }
        }
        RowKind::Datasets => {
            for dataset in &rows.datasets {
                let mut row = lead(&dataset.id);
                row.extend([
                    dataset.kind.clone(),
                    dataset.theme.clone(),
                    output::cut(&dataset.title, 50),
                    dataset.keywords.join(","),
                ]);
                out.push(row);
            }
        }
        RowKind::Pilots => {
            for pilot in &rows.pilots {
                let mut row = lead(&source.dataset_id);
                row.extend(output::pilot_cells(pilot));
                out.push(row);
            }
        }
        RowKind::Procurements => {
            for procurement in &rows.procurements {
                let mut row = lead(&source.dataset_id);
                row.extend(output::procurement_cells(procurement));
                out.push(row);
            }
        }
    }
    out
}

/// JSON lines of the rows of one event.
fn json_rows(rows: &AskRows, kind: RowKind) -> Vec<Value> {
    let source = rows.source.clone().unwrap_or_default();
    let with = |value: Value| {
        let mut object = source_json(&source);
        if let Value::Object(fields) = value {
            object.extend(fields);
        }
        Value::Object(object)
    };
    match kind {
        RowKind::Readings => rows
            .readings
            .iter()
            .map(|r| with(output::reading_json(r)))
            .collect(),
        RowKind::Buckets => rows
            .buckets
            .iter()
            .map(|b| with(output::bucket_json(b)))
            .collect(),
        RowKind::Datasets => rows
            .datasets
            .iter()
            .map(|d| {
                let mut value = with(output::dataset_json(d));
                if let Value::Object(fields) = &mut value {
                    fields.insert("dataset".into(), json!(d.id));
                }
                value
            })
            .collect(),
        RowKind::Pilots => rows
            .pilots
            .iter()
            .map(|p| with(output::pilot_json(p)))
            .collect(),
        RowKind::Procurements => rows
            .procurements
            .iter()
            .map(|p| with(output::procurement_json(p)))
            .collect(),
    }
}

fn combined_cells(bucket: &CombinedBucket, show: fn(f64) -> String) -> Vec<String> {
    vec![
        "all".to_string(),
        format!("{} municipalities", bucket.municipalities.len()),
        String::new(),
        output::show_timestamp(bucket.start.as_ref()),
        String::new(),
        bucket.measure.clone(),
        bucket.count.to_string(),
        bucket.min.map(show).unwrap_or_default(),
        bucket.max.map(show).unwrap_or_default(),
        show(bucket.avg),
        show(bucket.sum),
    ]
}

pub use samvirke_node::federate::ask::outcome_word;
use samvirke_node::http::formats::{combined_json, source_json};

fn status_cells(status: &PartnerStatus) -> Vec<String> {
    vec![
        status.municipality.to_string(),
        status.name.clone(),
        if status.dataset_id.is_empty() {
            "-".to_string()
        } else {
            status.dataset_id.clone()
        },
        outcome_word(status.outcome).to_string(),
        status.rows.to_string(),
        status.bytes.to_string(),
        format!("{} ms", status.latency_ms),
        if status.receipt_id.is_empty() {
            "-".to_string()
        } else {
            status.receipt_id.clone()
        },
        output::cut(&status.detail, 90),
    ]
}

const STATUS_COLUMNS: [&str; 9] = [
    "municipality",
    "name",
    "dataset",
    "status",
    "rows",
    "bytes",
    "latency",
    "receipt",
    "detail",
];

/// Prints events as they come.
pub struct AskPrinter<W: Write> {
    format: AskFormat,
    kind: RowKind,
    out: W,
    table: Option<Table>,
    csv_header: bool,
    features: u64,
    unlocated: u64,
    rows: u64,
    combined: Vec<CombinedBucket>,
    combined_note: String,
    statuses: Vec<PartnerStatus>,
}

impl<W: Write> AskPrinter<W> {
    fn new(format: AskFormat, kind: RowKind, mut out: W) -> anyhow::Result<AskPrinter<W>> {
        if format == AskFormat::Geojson {
            out.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[")?;
        }
        Ok(AskPrinter {
            format,
            kind,
            out,
            table: None,
            csv_header: false,
            features: 0,
            unlocated: 0,
            rows: 0,
            combined: Vec::new(),
            combined_note: String::new(),
            statuses: Vec::new(),
        })
    }

    fn headers(&self) -> Vec<String> {
        self.kind.columns().iter().map(|c| c.to_string()).collect()
    }

    fn csv_header(&mut self) -> anyhow::Result<()> {
        if !self.csv_header {
            let header: Vec<String> = self.headers();
            self.out.write_all(&csv_bytes(&[header])?)?;
            self.csv_header = true;
        }
        Ok(())
    }

    fn rows(&mut self, rows: &AskRows) -> anyhow::Result<()> {
        match self.format {
            AskFormat::Table => {
                let cells = rows_of(rows, self.kind, output::short_number);
                self.rows += cells.len() as u64;
                if cells.is_empty() {
                    return Ok(());
                }
                if self.table.is_none() {
                    let headers = self.headers();
                    let right = headers.iter().map(|h| self.kind.numeric(h)).collect();
                    // Sources answer one after another: leave room for
                    // longer municipality and dataset names than the first.
                    let mut sample = cells.clone();
                    sample.push(
                        headers
                            .iter()
                            .map(|h| match h.as_str() {
                                "name" => " ".repeat(20),
                                "dataset" => " ".repeat(28),
                                _ => String::new(),
                            })
                            .collect(),
                    );
                    let table = Table::new(&headers, right, &sample);
                    writeln!(self.out, "{}", table.line(&headers))?;
                    self.table = Some(table);
                }
                if let Some(table) = &self.table {
                    for row in &cells {
                        writeln!(self.out, "{}", table.line(row))?;
                    }
                }
                self.out.flush()?;
            }
            AskFormat::Csv => {
                let cells = rows_of(rows, self.kind, |v| v.to_string());
                self.rows += cells.len() as u64;
                self.csv_header()?;
                self.out.write_all(&csv_bytes(&cells)?)?;
                self.out.flush()?;
            }
            AskFormat::Json => {
                for value in json_rows(rows, self.kind) {
                    self.rows += 1;
                    output::json_line(&mut self.out, &value)?;
                }
                self.out.flush()?;
            }
            AskFormat::Geojson => {
                let source = rows.source.clone().unwrap_or_default();
                for reading in &rows.readings {
                    self.rows += 1;
                    match output::reading_feature(reading) {
                        Some(mut feature) => {
                            if let Some(Value::Object(properties)) = feature.get_mut("properties") {
                                properties.extend(source_json(&source));
                            }
                            if self.features > 0 {
                                self.out.write_all(b",")?;
                            }
                            serde_json::to_writer(&mut self.out, &feature)?;
                            self.features += 1;
                        }
                        None => self.unlocated += 1,
                    }
                }
                self.out.flush()?;
            }
        }
        Ok(())
    }

    fn finish(mut self, quiet_statuses: &mut impl Write) -> anyhow::Result<W> {
        match self.format {
            AskFormat::Table => {
                if self.table.is_none() {
                    let headers = self.headers();
                    writeln!(
                        self.out,
                        "{}",
                        Table::new(&headers, vec![false; headers.len()], &[]).line(&headers)
                    )?;
                }
                if !self.combined.is_empty() {
                    writeln!(self.out)?;
                    writeln!(
                        self.out,
                        "Combined over the municipalities that answered in full:"
                    )?;
                    let headers = RowKind::Buckets.columns();
                    let cells: Vec<Vec<String>> = self
                        .combined
                        .iter()
                        .map(|b| combined_cells(b, output::short_number))
                        .collect();
                    let right = headers
                        .iter()
                        .map(|h| RowKind::Buckets.numeric(h))
                        .collect();
                    output::print_table(&mut self.out, &headers, right, &cells)?;
                }
                if !self.combined_note.is_empty() {
                    writeln!(self.out, "Note: {}", self.combined_note)?;
                }
                writeln!(self.out)?;
                print_statuses(&mut self.out, &self.statuses)?;
            }
            AskFormat::Csv => {
                self.csv_header()?;
                let cells: Vec<Vec<String>> = self
                    .combined
                    .iter()
                    .map(|b| combined_cells(b, |v| v.to_string()))
                    .collect();
                self.out.write_all(&csv_bytes(&cells)?)?;
                print_statuses(quiet_statuses, &self.statuses)?;
            }
            AskFormat::Json => {
                for bucket in &self.combined {
                    output::json_line(&mut self.out, &combined_json(bucket))?;
                }
                print_statuses(quiet_statuses, &self.statuses)?;
            }
            AskFormat::Geojson => {
                self.out.write_all(b"]}\n")?;
                if self.unlocated > 0 {
                    writeln!(
                        quiet_statuses,
                        "{} readings without a location were left out",
                        self.unlocated
                    )?;
                }
                print_statuses(quiet_statuses, &self.statuses)?;
            }
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn print_statuses(out: &mut impl Write, statuses: &[PartnerStatus]) -> anyhow::Result<()> {
    let headers = STATUS_COLUMNS;
    let right = STATUS_COLUMNS
        .iter()
        .map(|c| matches!(*c, "municipality" | "rows" | "bytes" | "latency"))
        .collect();
    let cells: Vec<Vec<String>> = statuses.iter().map(status_cells).collect();
    writeln!(out, "Partners:")?;
    output::print_table(out, &headers, right, &cells)?;
    Ok(())
}

/// What an answer came to.
#[derive(Debug, Clone, Default)]
pub struct Answered {
    pub statuses: Vec<PartnerStatus>,
    pub summary: Option<pb::AskSummary>,
    pub combined: Vec<CombinedBucket>,
}

/// Prints an answer as it streams in: rows to `out` in `format`, progress
/// (and, but for tables, the statuses) to `err`. `node` names the node in
/// errors.
pub async fn print_answer(
    stream: &mut tonic::Streaming<pb::AskEvent>,
    format: AskFormat,
    kind: RowKind,
    out: impl Write,
    err: &mut impl Write,
    node: &NodeArgs,
) -> anyhow::Result<Answered> {
    let mut printer = AskPrinter::new(format, kind, out)?;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut summary = None;
    let result: anyhow::Result<()> = async {
        while let Some(event) = stream
            .message()
            .await
            .map_err(|status| node.refused("finish the answer", &status))?
        {
            match event.event {
                Some(ask_event::Event::Rows(rows)) => printer.rows(&rows)?,
                Some(ask_event::Event::Combined(combined)) => {
                    printer.combined = combined.buckets;
                    printer.combined_note = combined.note;
                }
                Some(ask_event::Event::Partner(status)) => printer.statuses.push(status),
                Some(ask_event::Event::Done(done)) => summary = Some(done),
                None => {}
            }
            if last_progress.elapsed() > Duration::from_secs(2) && summary.is_none() {
                last_progress = Instant::now();
                let _ = writeln!(
                    err,
                    "... {} rows so far ({} s)",
                    printer.rows,
                    started.elapsed().as_secs()
                );
            }
        }
        Ok(())
    }
    .await;
    output::finish_output(result)?;
    let answered = Answered {
        statuses: printer.statuses.clone(),
        summary,
        combined: printer.combined.clone(),
    };
    output::finish_output(printer.finish(err).map(|_| ()))?;
    Ok(answered)
}

async fn ask(request: AskRequest, target: TargetArgs, kind: RowKind) -> anyhow::Result<ExitCode> {
    let mut client = target.node.connect().await?;
    let mut stream = client
        .ask(request)
        .await
        .map_err(|status| target.node.refused("ask the fellowship", &status))?
        .into_inner();
    let stdout = io::stdout();
    let mut stderr = io::stderr();
    let answered = print_answer(
        &mut stream,
        target.format,
        kind,
        BufWriter::new(stdout.lock()),
        &mut stderr,
        &target.node,
    )
    .await?;
    let Some(summary) = answered.summary else {
        bail!("the node ended the answer early, without its summary");
    };
    let _ = writeln!(
        stderr,
        "{} of {} asked answered in full; {} rows in {} ms (audit entry {})",
        summary.answered, summary.asked, summary.rows, summary.elapsed_ms, summary.audit_seq
    );
    // A partial answer is an answer; none at all is a failure.
    let any_ok = answered
        .statuses
        .iter()
        .any(|s| s.outcome == PartnerOutcome::Ok as i32);
    Ok(if any_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Rows as CSV text.
fn csv_bytes(rows: &[Vec<String>]) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    for row in rows {
        writer.write_record(row)?;
    }
    writer
        .into_inner()
        .map_err(|e| anyhow::anyhow!("writing CSV: {}", e.error()))
}
