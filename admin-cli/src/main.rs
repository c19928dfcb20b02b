//! `samvirke`: the admin CLI for fellowship secretariats and municipal IT
//! operators. It works offline on files (node directories, keys,
//! certificates) and runs the demo federation. Each subcommand lives in its
//! own module; the work itself is done by the `samvirke_node` library.
#![forbid(unsafe_code)]

mod demo;
mod identity;
mod init;
mod pki;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Samvirke admin CLI: set up nodes, make development PKI, show identities
/// and run the demo federation.
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
