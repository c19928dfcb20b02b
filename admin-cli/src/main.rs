//! `samvirke`: the admin CLI for fellowship secretariats and municipal IT
//! operators. It works offline on files (node directories, keys,
//! certificates) and runs the demo federation. Each subcommand lives in its
//! own module; the work itself is done by the `samvirke_node` library.
#![forbid(unsafe_code)]

mod agreement;
mod api;
mod ask;
mod audit;
mod dataset;
mod demo;
mod fellowship;
mod files;
mod gen_readings;
mod governance;
mod identity;
mod ingest;
mod init;
mod key;
mod local;
mod output;
mod pki;
mod push;
mod query;
mod receipts;
mod record_files;
mod records;
mod roster;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Samvirke admin CLI: set up nodes, make development PKI, manage rosters
/// and agreements on files, push them to nodes, and run the demo federation.
#[derive(Debug, Parser)]
#[command(name = "samvirke", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a node directory: signing key, config, first admin token.
    Init(init::InitArgs),
    /// Development PKI: a CA and node certificates.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Show a node's identity in the fixed form a roster entry uses.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Local API tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Signing keys for fellowship secretariats.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Fellowship rosters (offline, on files).
    #[command(subcommand)]
    Roster(roster::RosterCommand),
    /// Data-sharing agreements (offline, on files).
    #[command(subcommand)]
    Agreement(agreement::AgreementCommand),
    /// Import a roster or agreement file into a node.
    Push(push::PushArgs),
    /// What a node holds: rosters with their members, agreements with their status.
    #[command(subcommand)]
    Governance(governance::GovernanceCommand),
    /// Start a four-municipality demo federation on loopback and tell its story.
    Demo(demo::DemoArgs),
    /// Publish, update and list datasets in a node's catalog.
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
    /// Send sensor readings from a CSV or JSON file to a node.
    #[command(subcommand)]
    Ingest(ingest::IngestCommand),
    /// Ask a node for readings or aggregates.
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// Pilot results and procurement outcomes on a node.
    #[command(subcommand)]
    Records(records::RecordsCommand),
    /// Write deterministic synthetic readings as CSV (offline).
    GenReadings(gen_readings::GenArgs),
    /// Ask the fellowship one question through your own node: readings,
    /// aggregates, catalog, pilots or procurements of every partner whose
    /// agreement covers it.
    #[command(subcommand)]
    Ask(ask::AskCommand),
    /// The partners this node can ask, and the agreements each way.
    Partners(fellowship::PartnersArgs),
    /// What the agreements in force let this node see of its partners.
    Catalog(fellowship::CatalogArgs),
    /// Receipts partners signed for this node's answers; verify them offline.
    #[command(subcommand)]
    Receipts(receipts::ReceiptsCommand),
    /// The node's tamper-evident audit log: tail, export, verify offline.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => init::run(args),
        Command::Pki(command) => pki::run(command),
        Command::Identity(command) => identity::run(command),
        Command::Token(command) => token::run(command),
        Command::Key(command) => key::run(command),
        Command::Roster(command) => roster::run(command),
        Command::Agreement(command) => agreement::run(command),
        Command::Push(args) => push::run(args),
        Command::Governance(command) => governance::run(command),
        Command::Demo(args) => demo::run(args),
        Command::Dataset(command) => dataset::run(command),
        Command::Ingest(command) => ingest::run(command),
        Command::Query(command) => query::run(command),
        Command::Records(command) => records::run(command),
        Command::GenReadings(args) => gen_readings::run(args),
        Command::Ask(command) => ask::run(command),
        Command::Partners(args) => fellowship::partners(args),
        Command::Catalog(args) => fellowship::catalog(args),
        Command::Receipts(command) => receipts::run(command),
        Command::Audit(command) => audit::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("samvirke: {error:#}");
            ExitCode::FAILURE
        }
    }
}
