//! `samvirke key new`: an Ed25519 signing key for a fellowship secretariat
//! (members sign with their node's key, made by `samvirke init`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use samvirke_node::identity::{generate_signing_key, signing_key_text, write_signing_key};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a signing key file (PKCS#8 PEM, mode 0600) and print its public key.
    New(NewArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Where to write the private key (never overwritten).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(command: KeyCommand) -> anyhow::Result<ExitCode> {
    let KeyCommand::New(args) = command;
    let key = generate_signing_key()?;
    write_signing_key(&args.out, &key)?;
    println!("Signing key written to {} (mode 0600)", args.out.display());
    println!("public key: {}", signing_key_text(&key.verifying_key()));
    Ok(ExitCode::SUCCESS)
}
