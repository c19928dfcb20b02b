//! `samvirke`: the admin CLI for fellowship secretariats and municipal IT
//! operators. It works offline on files (node directories, keys,
//! certificates) and runs the demo federation. Each subcommand lives in its
//! own module; the work itself is done by the `samvirke_node` library.
#![forbid(unsafe_code)]

mod agreement;
mod demo;
mod files;
mod identity;
mod init;
mod key;
mod local;
mod pki;
mod push;
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
    /// Start a three-node demo federation on loopback.
    Demo(demo::DemoArgs),
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
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("samvirke: {error:#}");
            ExitCode::FAILURE
        }
    }
}
