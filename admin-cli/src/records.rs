//! `samvirke records`: pilot results and procurement outcomes on a node:
//! list them with filters, store a data owner's own from a file
//! ([`crate::record_files`]), or load the fixture records for a demo.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::{ArgAction, Args, Subcommand, ValueEnum};
use samvirke_node::data::record_fixtures;
use samvirke_proto::v1::{
    Pilot, PilotFilter, PilotPhase, Procedure, Procurement, ProcurementFilter,
};

use crate::api::{self, NodeArgs};
use crate::output::{self, ListFormat};

#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Pilot results.
    #[command(subcommand)]
    Pilots(PilotsCommand),
    /// Procurement outcomes.
    #[command(subcommand)]
    Procurements(ProcurementsCommand),
    /// Store every fixture pilot and procurement record (replacing same ids).
    LoadFixtures(LoadFixturesArgs),
}

#[derive(Debug, Subcommand)]
pub enum PilotsCommand {
    /// List pilot results; filters combine (all must match).
    List(PilotListArgs),
    /// Store the pilots of a CSV, JSON or TOML file (replacing same ids).
    /// Every record is checked first; if any has a problem, each is listed
    /// by line or index, id and field, and nothing is stored.
    #[command(after_help = PILOT_FILE_EXAMPLE)]
    Put(PutArgs),
}

/// An example of the files `records pilots put` reads, shown in `--help`.
const PILOT_FILE_EXAMPLE: &str = r#"CSV (lists separated by `;`, KPIs as `name=value unit`):
  id,title,municipalities,phase,technology,started,ended,budget_dkk,kpis,findings
  aarhus-lights,Adaptive street lights,751;746,test,LoRaWAN;LED,2024-05,,1200000,energy_saved=31 percent,Works
JSON: [{"id": "aarhus-lights", "title": "...", "phase": "test", "municipalities": [751],
        "started": "2024-05", "kpis": [{"name": "energy_saved", "value": 31, "unit": "percent"}]}]
TOML: [[pilot]] tables with the same keys.
Required: id, title, phase (idea, test, demonstration, scaling, operation, stopped).
Dates: YYYY, YYYY-MM or YYYY-MM-DD."#;

/// An example of the files `records procurements put` reads.
const PROCUREMENT_FILE_EXAMPLE: &str = r#"CSV (lists separated by `;`):
  id,title,buyer_municipalities,procedure,cpv_codes,suppliers,value_dkk,awarded,bids,status
  aarhus-esdh-2025,ESDH system,751,open,48000000-8,KMD,5400000,2025-02,3,awarded
JSON: [{"id": "aarhus-esdh-2025", "title": "...", "procedure": "open", "suppliers": ["KMD"],
        "complaints": [{"body": "Klagenaevnet for Udbud", "outcome": "dismissed"}]}]
TOML: [[procurement]] tables with the same keys.
Required: id, title, procedure (open, restricted, negotiation, framework-mini-tender,
framework-agreement). Status: planned, in-tender, negotiating, awarded, cancelled.
Complaints only in JSON and TOML. Dates: YYYY, YYYY-MM or YYYY-MM-DD."#;

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The CSV, JSON or TOML file.
    file: std::path::PathBuf,
    /// The records dataset (kind pilot or procurement) the records go into.
    #[arg(long, value_name = "ID")]
    dataset: String,
    /// The file's format; default: from its extension.
    #[arg(long, value_enum)]
    format: Option<crate::record_files::RecordFormat>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Subcommand)]
pub enum ProcurementsCommand {
    /// List procurement outcomes; filters combine (all must match).
    List(ProcurementListArgs),
    /// Store the procurements of a CSV, JSON or TOML file (replacing same
    /// ids). Every record is checked first; if any has a problem, each is
    /// listed by line or index, id and field, and nothing is stored.
    #[command(after_help = PROCUREMENT_FILE_EXAMPLE)]
    Put(PutArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhaseArg {
    Idea,
    Test,
    Demonstration,
    Scaling,
    Operation,
    Stopped,
}

impl From<PhaseArg> for PilotPhase {
    fn from(phase: PhaseArg) -> PilotPhase {
        match phase {
            PhaseArg::Idea => PilotPhase::Idea,
            PhaseArg::Test => PilotPhase::Test,
            PhaseArg::Demonstration => PilotPhase::Demonstration,
            PhaseArg::Scaling => PilotPhase::Scaling,
            PhaseArg::Operation => PilotPhase::Operation,
            PhaseArg::Stopped => PilotPhase::Stopped,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProcedureArg {
    Open,
    Restricted,
    Negotiation,
    FrameworkMiniTender,
    FrameworkAgreement,
}

impl From<ProcedureArg> for Procedure {
    fn from(procedure: ProcedureArg) -> Procedure {
        match procedure {
            ProcedureArg::Open => Procedure::Open,
            ProcedureArg::Restricted => Procedure::Restricted,
            ProcedureArg::Negotiation => Procedure::Negotiation,
            ProcedureArg::FrameworkMiniTender => Procedure::FrameworkMiniTender,
            ProcedureArg::FrameworkAgreement => Procedure::FrameworkAgreement,
        }
    }
}

/// Filters of pilot results (shared with `ask pilots`).
#[derive(Debug, Clone, Args)]
pub struct PilotFilterArgs {
    /// Only records of this pilot dataset.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Only pilots in this phase.
    #[arg(long, value_enum)]
    phase: Option<PhaseArg>,
    /// Only pilots with a technology containing this text (any case).
    #[arg(long)]
    technology: Option<String>,
    /// Only pilots a municipality (kommunekode) takes part in.
    #[arg(long, value_name = "CODE")]
    municipality: Option<u32>,
    /// Only pilots started in this year.
    #[arg(long)]
    year: Option<i32>,
}

#[derive(Debug, Args)]
pub struct PilotListArgs {
    #[command(flatten)]
    filter: PilotFilterArgs,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    node: NodeArgs,
}

/// Filters of procurement outcomes (shared with `ask procurements`).
#[derive(Debug, Clone, Args)]
pub struct ProcurementFilterArgs {
    /// Only records of this procurement dataset.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Only procurements with a supplier containing this text (any case).
    #[arg(long)]
    supplier: Option<String>,
    /// Only procurements this municipality (kommunekode) bought in.
    #[arg(long, value_name = "CODE")]
    buyer: Option<u32>,
    /// Only procurements run by this fellowship (e.g. digit).
    #[arg(long = "buyer-fellowship", value_name = "FELLOWSHIP")]
    buyer_fellowship: Option<String>,
    /// Only this procedure.
    #[arg(long, value_enum)]
    procedure: Option<ProcedureArg>,
    /// Only procurements awarded in this year.
    #[arg(long)]
    year: Option<i32>,
    /// Only contracts worth at least this many DKK.
    #[arg(long, value_name = "DKK")]
    min_value: Option<i64>,
    /// Only contracts worth at most this many DKK.
    #[arg(long, value_name = "DKK")]
    max_value: Option<i64>,
    /// Only procurements with a CPV code starting with this (e.g. 48 for software).
    #[arg(long, value_name = "PREFIX")]
    cpv: Option<String>,
    /// Only procurements with (true) or without (false) complaints.
    #[arg(long, value_name = "true|false", action = ArgAction::Set,
          value_parser = clap::value_parser!(bool))]
    has_complaint: Option<bool>,
}

#[derive(Debug, Args)]
pub struct ProcurementListArgs {
    #[command(flatten)]
    filter: ProcurementFilterArgs,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct LoadFixturesArgs {
    /// The pilot dataset (kind pilot) the fixture pilots go into.
    #[arg(long, value_name = "ID")]
    pilots_dataset: String,
    /// The procurement dataset (kind procurement) the fixture procurements go into.
    #[arg(long, value_name = "ID")]
    procurements_dataset: String,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn run(command: RecordsCommand) -> anyhow::Result<ExitCode> {
    match command {
        RecordsCommand::Pilots(PilotsCommand::List(args)) => api::block_on(list_pilots(args)),
        RecordsCommand::Procurements(ProcurementsCommand::List(args)) => {
            api::block_on(list_procurements(args))
        }
        RecordsCommand::LoadFixtures(args) => api::block_on(load_fixtures(args)),
        RecordsCommand::Pilots(PilotsCommand::Put(args)) => api::block_on(put_file(args, true)),
        RecordsCommand::Procurements(ProcurementsCommand::Put(args)) => {
            api::block_on(put_file(args, false))
        }
    }
}

/// Exit status when the file has problems (nothing stored).
const EXIT_BAD_FILE: u8 = 3;

async fn put_file(args: PutArgs, pilots: bool) -> anyhow::Result<ExitCode> {
    use crate::record_files::{RecordFormat, read_pilots, read_procurements, report};
    let format = RecordFormat::of(&args.file, args.format)?;
    let text = crate::files::read_text(&args.file)?;
    let what = if pilots { "pilot" } else { "procurement" };
    let read = if pilots {
        read_pilots(&text, format, &args.dataset)?.map(|p| (p, Vec::new()))
    } else {
        read_procurements(&text, format, &args.dataset)?.map(|p| (Vec::new(), p))
    };
    let (pilot_records, procurement_records) = match read {
        Ok(records) => records,
        Err(problems) => {
            eprint!("{}", report(&args.file, &problems));
            return Ok(ExitCode::from(EXIT_BAD_FILE));
        }
    };
    let total = pilot_records.len() + procurement_records.len();
    if total == 0 {
        bail!("{}: no {what} records in the file", args.file.display());
    }
    let mut client = args.node.connect().await?;
    let mut loaded = Loaded::default();
    let stored_so_far = |loaded: &Loaded| loaded.new + loaded.replaced;
    for pilot in pilot_records {
        let id = pilot.id.clone();
        let answer = client.put_pilot(pilot).await.map_err(|status| {
            args.node
                .refused(&format!("store pilot `{id}`"), &status)
                .context(format!(
                    "{} of {total} records stored before it",
                    stored_so_far(&loaded)
                ))
        })?;
        count(&mut loaded, answer.into_inner().replaced);
    }
    for procurement in procurement_records {
        let id = procurement.id.clone();
        let answer = client
            .put_procurement(procurement)
            .await
            .map_err(|status| {
                args.node
                    .refused(&format!("store procurement `{id}`"), &status)
                    .context(format!(
                        "{} of {total} records stored before it",
                        stored_so_far(&loaded)
                    ))
            })?;
        count(&mut loaded, answer.into_inner().replaced);
    }
    println!(
        "{what}s: {} stored in `{}` ({} new, {} replaced)",
        loaded.new + loaded.replaced,
        args.dataset,
        loaded.new,
        loaded.replaced
    );
    Ok(ExitCode::SUCCESS)
}

/// The pilot filter the arguments describe.
pub fn pilot_filter(args: &PilotFilterArgs) -> PilotFilter {
    PilotFilter {
        dataset_id: args.dataset.clone().unwrap_or_default(),
        phase: args.phase.map_or(PilotPhase::Unspecified, PilotPhase::from) as i32,
        technology: args.technology.clone().unwrap_or_default(),
        municipality: args.municipality.unwrap_or(0),
        year: args.year.unwrap_or(0),
    }
}

/// The procurement filter the arguments describe.
pub fn procurement_filter(args: &ProcurementFilterArgs) -> ProcurementFilter {
    ProcurementFilter {
        dataset_id: args.dataset.clone().unwrap_or_default(),
        supplier: args.supplier.clone().unwrap_or_default(),
        buyer_municipality: args.buyer.unwrap_or(0),
        buyer_fellowship: args.buyer_fellowship.clone().unwrap_or_default(),
        procedure: args
            .procedure
            .map_or(Procedure::Unspecified, Procedure::from) as i32,
        year: args.year.unwrap_or(0),
        min_value_dkk: args.min_value.unwrap_or(0),
        max_value_dkk: args.max_value.unwrap_or(0),
        cpv_code: args.cpv.clone().unwrap_or_default(),
        has_complaint: args.has_complaint,
    }
}

async fn list_pilots(args: PilotListArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let pilots = client
        .list_pilots(pilot_filter(&args.filter))
        .await
        .map_err(|status| args.node.refused("list pilots", &status))?
        .into_inner()
        .pilots;
    let mut out = std::io::stdout().lock();
    output::finish_output(print_pilots(&mut out, &pilots, args.format))?;
    Ok(ExitCode::SUCCESS)
}

async fn list_procurements(args: ProcurementListArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let procurements = client
        .list_procurements(procurement_filter(&args.filter))
        .await
        .map_err(|status| args.node.refused("list procurements", &status))?
        .into_inner()
        .procurements;
    let mut out = std::io::stdout().lock();
    output::finish_output(print_procurements(&mut out, &procurements, args.format))?;
    Ok(ExitCode::SUCCESS)
}

fn print_pilots(out: &mut impl Write, pilots: &[Pilot], format: ListFormat) -> anyhow::Result<()> {
    match format {
        ListFormat::Json => {
            for pilot in pilots {
                output::json_line(out, &output::pilot_json(pilot))?;
            }
        }
        ListFormat::Table => {
            let rows: Vec<Vec<String>> = pilots.iter().map(output::pilot_cells).collect();
            let right = (0..output::PILOT_COLUMNS.len()).map(|i| i == 6).collect();
            output::print_table(out, &output::PILOT_COLUMNS, right, &rows)?;
        }
    }
    Ok(())
}

fn print_procurements(
    out: &mut impl Write,
    procurements: &[Procurement],
    format: ListFormat,
) -> anyhow::Result<()> {
    match format {
        ListFormat::Json => {
            for procurement in procurements {
                output::json_line(out, &output::procurement_json(procurement))?;
            }
        }
        ListFormat::Table => {
            let rows: Vec<Vec<String>> =
                procurements.iter().map(output::procurement_cells).collect();
            let right = (0..output::PROCUREMENT_COLUMNS.len())
                .map(|i| i == 5 || i == 7)
                .collect();
            output::print_table(out, &output::PROCUREMENT_COLUMNS, right, &rows)?;
        }
    }
    Ok(())
}

/// New and replaced records of one kind.
#[derive(Debug, Default)]
struct Loaded {
    new: usize,
    replaced: usize,
}

async fn load_fixtures(args: LoadFixturesArgs) -> anyhow::Result<ExitCode> {
    let pilots = record_fixtures::fixture_pilots(&args.pilots_dataset);
    let procurements = record_fixtures::fixture_procurements(&args.procurements_dataset);
    if pilots.is_empty() || procurements.is_empty() {
        bail!("the compiled-in record fixtures did not load (a build defect)");
    }
    let mut client = args.node.connect().await?;
    let mut loaded = Loaded::default();
    for pilot in pilots {
        let id = pilot.id.clone();
        let answer = client
            .put_pilot(pilot)
            .await
            .map_err(|status| args.node.refused(&format!("store pilot `{id}`"), &status))?
            .into_inner();
        count(&mut loaded, answer.replaced);
    }
    println!(
        "pilots: {} stored in `{}` ({} new, {} replaced)",
        loaded.new + loaded.replaced,
        args.pilots_dataset,
        loaded.new,
        loaded.replaced
    );
    let mut loaded = Loaded::default();
    for procurement in procurements {
        let id = procurement.id.clone();
        let answer = client
            .put_procurement(procurement)
            .await
            .map_err(|status| {
                args.node
                    .refused(&format!("store procurement `{id}`"), &status)
            })?
            .into_inner();
        count(&mut loaded, answer.replaced);
    }
    println!(
        "procurements: {} stored in `{}` ({} new, {} replaced)",
        loaded.new + loaded.replaced,
        args.procurements_dataset,
        loaded.new,
        loaded.replaced
    );
    Ok(ExitCode::SUCCESS)
}

fn count(loaded: &mut Loaded, replaced: bool) {
    if replaced {
        loaded.replaced += 1;
    } else {
        loaded.new += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use samvirke_proto::v1::{Complaint, Kpi, PartialDate};

    fn pilot() -> Pilot {
        Pilot {
            id: "aarhus-drones".to_string(),
            dataset_id: "digit-pilots".to_string(),
            title: "Drone inspection of bridges".to_string(),
            owner: String::new(),
            municipalities: vec![751, 746],
            phase: PilotPhase::Test as i32,
            technology: vec!["drones".to_string(), "computer vision".to_string()],
            started: Some(PartialDate {
                year: 2024,
                month: 5,
                day: 0,
            }),
            ended: None,
            budget_dkk: 1_200_000,
            kpis: vec![Kpi {
                name: "inspection hours saved".to_string(),
                value: 120.5,
                unit: "h".to_string(),
            }],
            findings: "Works in calm weather.".to_string(),
            attachments: Vec::new(),
        }
    }

    fn procurement() -> Procurement {
        Procurement {
            id: "digit-esdh-2023".to_string(),
            dataset_id: "digit-procurements".to_string(),
            title: "Case management system".to_string(),
            buyer_fellowship: "digit".to_string(),
            buyer_count: 12,
            procedure: Procedure::FrameworkMiniTender as i32,
            cpv_codes: vec!["48000000".to_string()],
            suppliers: vec!["Acme A/S".to_string()],
            value_dkk: 45_000_000,
            awarded: Some(PartialDate {
                year: 2023,
                month: 11,
                day: 3,
            }),
            complaints: vec![Complaint {
                body: "Klagenaevnet for Udbud".to_string(),
                summary: "Award criteria unclear".to_string(),
                outcome: "dismissed".to_string(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn pilots_print_as_table_and_json() {
        let mut out = Vec::new();
        print_pilots(&mut out, &[pilot()], ListFormat::Table).expect("table");
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("id             title"), "{text}");
        assert!(
            lines[1].contains("test   751,746         drones,computer vision  2024-05"),
            "{text}"
        );
        assert!(lines[1].ends_with("1200000"), "{text}");

        let mut out = Vec::new();
        print_pilots(&mut out, &[pilot()], ListFormat::Json).expect("json");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("valid");
        assert_eq!(value["phase"], "test");
        assert_eq!(value["started"], "2024-05");
        assert_eq!(value["ended"], serde_json::Value::Null);
        assert_eq!(value["municipalities"][1], 746);
        assert_eq!(value["kpis"][0]["value"], 120.5);
    }

    #[test]
    fn procurements_print_as_table_and_json() {
        let mut out = Vec::new();
        print_procurements(&mut out, &[procurement()], ListFormat::Table).expect("table");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains("digit; 12 municipalities  framework-mini-tender  Acme A/S    45000000  2023-11-03           1"),
            "{text}"
        );
        let mut out = Vec::new();
        print_procurements(&mut out, &[procurement()], ListFormat::Json).expect("json");
        let value: serde_json::Value = serde_json::from_slice(&out).expect("valid");
        assert_eq!(value["procedure"], "framework-mini-tender");
        assert_eq!(value["status"], "unspecified");
        assert_eq!(value["complaints"][0]["outcome"], "dismissed");
        assert_eq!(value["awarded"], "2023-11-03");
    }

    #[test]
    fn every_fixture_record_prints() {
        let pilots = record_fixtures::fixture_pilots("digit-pilots");
        let procurements = record_fixtures::fixture_procurements("digit-procurements");
        assert!(!pilots.is_empty() && !procurements.is_empty());
        let mut out = Vec::new();
        print_pilots(&mut out, &pilots, ListFormat::Table).expect("table");
        assert_eq!(
            out.iter().filter(|b| **b == b'\n').count(),
            pilots.len() + 1
        );
        let mut out = Vec::new();
        print_procurements(&mut out, &procurements, ListFormat::Json).expect("json");
        let text = String::from_utf8(out).expect("utf8");
        for (line, procurement) in text.lines().zip(&procurements) {
            let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert_eq!(value["id"], procurement.id.as_str());
            assert_eq!(value["dataset_id"], "digit-procurements");
        }
        assert_eq!(text.lines().count(), procurements.len());
    }

    #[test]
    fn filters_carry_every_option() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(subcommand)]
            command: RecordsCommand,
        }
        let cli = Cli::try_parse_from([
            "r",
            "procurements",
            "list",
            "--supplier",
            "acme",
            "--buyer",
            "751",
            "--buyer-fellowship",
            "digit",
            "--procedure",
            "framework-mini-tender",
            "--year",
            "2023",
            "--min-value",
            "1000",
            "--max-value",
            "2000",
            "--cpv",
            "48",
            "--has-complaint",
            "false",
            "--token",
            "t",
        ])
        .expect("parses");
        let RecordsCommand::Procurements(ProcurementsCommand::List(args)) = cli.command else {
            panic!("procurements list");
        };
        let filter = procurement_filter(&args.filter);
        assert_eq!(filter.procedure, Procedure::FrameworkMiniTender as i32);
        assert_eq!(filter.has_complaint, Some(false));
        assert_eq!((filter.min_value_dkk, filter.max_value_dkk), (1000, 2000));
        assert_eq!(filter.buyer_municipality, 751);
        assert_eq!(filter.cpv_code, "48");

        let cli =
            Cli::try_parse_from(["r", "pilots", "list", "--phase", "scaling", "--token", "t"])
                .expect("parses");
        let RecordsCommand::Pilots(PilotsCommand::List(args)) = cli.command else {
            panic!("pilots list");
        };
        let filter = pilot_filter(&args.filter);
        assert_eq!(filter.phase, PilotPhase::Scaling as i32);
        assert_eq!(filter.year, 0);
        assert!(
            Cli::try_parse_from([
                "r",
                "procurements",
                "list",
                "--has-complaint",
                "maybe",
                "--token",
                "t"
            ])
            .is_err()
        );
    }
}
