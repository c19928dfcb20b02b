//! `samvirke init`: create a node directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use samvirke_node::fixtures;
use samvirke_node::pki::{DevCa, loopback_hosts};
use samvirke_node::provision::{NodeSpec, init_node_dir, install_dev_certificate};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create the node in.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Municipality code (kommunekode), e.g. 751 for Aarhus.
    #[arg(long)]
    code: u32,
    /// Municipality name; defaults to the name for known codes.
    #[arg(long)]
    name: Option<String>,
    /// Peer listener address.
    #[arg(long, default_value = "0.0.0.0:7443")]
    peer_listen: String,
    /// Local listener address.
    #[arg(long, default_value = "127.0.0.1:7080")]
    local_listen: String,
    /// Admin listener address (Prometheus metrics, health, status page;
    /// plaintext, keep it on loopback); an empty value turns it off.
    #[arg(long, default_value = samvirke_node::config::DEFAULT_ADMIN_LISTEN)]
    admin_listen: String,
    /// URL partners use to reach this node, e.g. https://samvirke.aarhus.dk:7443.
    #[arg(long)]
    advertise: Option<String>,
    /// Issue a certificate from this development CA directory (see `samvirke pki ca`).
    #[arg(long, value_name = "CA_DIR")]
    dev_ca: Option<PathBuf>,
    /// Host names or IP addresses for the dev certificate (repeatable);
    /// loopback names are always included.
    #[arg(long = "host")]
    hosts: Vec<String>,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let name = match (args.name, fixtures::municipality(args.code)) {
        (Some(name), _) => name,
        (None, Some(known)) => known.name,
        (None, None) => bail!(
            "municipality code {} is not in the built-in list; give --name",
            args.code
        ),
    };
    let spec = NodeSpec {
        municipality_code: args.code,
        municipality_name: name.clone(),
        peer_listen: args.peer_listen,
        local_listen: args.local_listen,
        advertised_endpoint: args.advertise,
    };
    let made = init_node_dir(&args.dir, &spec)?;
    append_admin_section(&made.config_path, &args.admin_listen)?;
    println!("Created node directory {}", made.dir.display());
    println!("  municipality   {} {}", spec.municipality_code, name);
    println!("  node id        {}", made.node_id);
    println!("  signing key    {}", made.signing_public_key);
    println!("  config         {}", made.config_path.display());
    if let Some(ca_dir) = args.dev_ca {
        let ca = DevCa::load(&ca_dir)
            .with_context(|| format!("loading the development CA in {}", ca_dir.display()))?;
        let mut hosts = loopback_hosts();
        hosts.extend(args.hosts);
        install_dev_certificate(&made.dir, &name, &ca, &hosts)?;
        println!("  TLS            dev certificate for {}", hosts.join(", "));
    } else {
        println!(
            "  TLS            none yet: put tls/node.crt, tls/node.key and tls/trust-roots.pem \
             in place (your CA, or `samvirke pki issue --node-dir`)"
        );
    }
    println!();
    println!("Admin token for the local API (shown once; only its hash is stored):");
    println!("  {}", made.admin_token.as_str());
    println!();
    println!(
        "Start the node with: samvirke-node --config {}",
        made.config_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Adds the `[admin]` section (`deploy/node.example.toml` documents it).
fn append_admin_section(config: &std::path::Path, listen: &str) -> anyhow::Result<()> {
    let mut text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    text.push_str(&format!(
        "\n# Prometheus /metrics, /healthz, /readyz and the status page at /.\n\
         # Plaintext and unauthenticated: keep it on loopback. \"\" turns it off.\n\
         [admin]\nlisten = {}\n",
        toml::Value::String(listen.to_string())
    ));
    std::fs::write(config, text).with_context(|| format!("writing {}", config.display()))?;
    Ok(())
}
