//! `samvirke token new`: make a local API token and the config entry for it.

use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use samvirke_node::local::auth::{Role, generate_token};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Generate a token; print it once with the `[[local.tokens]]` entry to add.
    New(NewArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// A name for the token's holder, shown in logs (e.g. "os2iot", "analyst-anna").
    #[arg(long)]
    name: String,
    /// Role to grant (repeatable): read, ingest, admin.
    #[arg(long = "role", value_enum, required = true)]
    roles: Vec<Role>,
}

pub fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    let TokenCommand::New(args) = command;
    if args.name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    let token = generate_token()?;
    let roles: Vec<String> = args.roles.iter().map(|r| format!("\"{r}\"")).collect();
    println!("Token (give it to its holder; it is not stored anywhere):");
    println!("  {}", token.secret.as_str());
    println!();
    println!("Add to the node's config and restart the node:");
    println!("[[local.tokens]]");
    println!("name = {}", toml::Value::String(args.name));
    println!("sha256 = \"{}\"", token.hash.to_hex());
    println!("roles = [{}]", roles.join(", "));
    Ok(ExitCode::SUCCESS)
}
