//! `samvirke identity show`: a node's public identity in the fixed text
//! form a roster member entry takes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use samvirke_node::config::Config;
use samvirke_node::identity::{certificate_fingerprint, read_signing_key, signing_key_text};

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Print municipality, node id, endpoint, signing key and certificate fingerprint.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The node's config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub fn run(command: IdentityCommand) -> anyhow::Result<ExitCode> {
    let IdentityCommand::Show(args) = command;
    let config = Config::load(&args.config)?;
    let signing_key = read_signing_key(&config.node.signing_key)?.verifying_key();
    let fingerprint = certificate_fingerprint(&config.peer.tls_certificate)?;
    let endpoint = match &config.peer.advertised_endpoint {
        Some(url) => format!("endpoint = {}", toml::Value::String(url.clone())),
        None => "# endpoint = \"https://...\"  (set peer.advertised_endpoint)".to_string(),
    };
    println!("# Samvirke node identity: paste into a roster member entry");
    println!("code = {}", config.node.municipality_code);
    println!(
        "name = {}",
        toml::Value::String(config.node.municipality_name.clone())
    );
    println!("node_id = \"{}\"", config.node.node_id);
    println!("{endpoint}");
    println!("signing_key = \"{}\"", signing_key_text(&signing_key));
    println!("tls_fingerprint = \"{fingerprint}\"");
    Ok(ExitCode::SUCCESS)
}
