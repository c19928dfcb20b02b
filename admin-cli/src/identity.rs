//! `samvirke identity show`: a node's public identity card, in the fixed
//! text form `samvirke roster add-member --identity` reads.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use samvirke_node::config::Config;
use samvirke_node::governance::files::IdentityCard;
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
    let card = IdentityCard {
        code: config.node.municipality_code,
        name: config.node.municipality_name.clone(),
        node_id: config.node.node_id,
        endpoint: config.peer.advertised_endpoint.clone(),
        signing_key: signing_key_text(&signing_key),
        tls_fingerprint: certificate_fingerprint(&config.peer.tls_certificate)?.to_string(),
    };
    print!("{}", card.render());
    Ok(ExitCode::SUCCESS)
}
