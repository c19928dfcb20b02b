//! `samvirke pki`: development CA and node certificates.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use samvirke_node::identity::certificate_fingerprint;
use samvirke_node::pki::{CA_CERT_FILE, DevCa, loopback_hosts};
use samvirke_node::provision::{TLS_CERT_FILE, install_dev_certificate};

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a development CA (ca.crt, ca.key) in a directory.
    Ca(CaArgs),
    /// Issue a node certificate from a development CA.
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct CaArgs {
    /// Directory for ca.crt and ca.key (created; an existing key is never overwritten).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "Samvirke development CA")]
    name: String,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory of the development CA.
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// Common name for the certificate, usually the municipality name.
    #[arg(long)]
    name: String,
    /// DNS name or IP address the node is reached at (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Also valid for localhost, 127.0.0.1 and ::1.
    #[arg(long)]
    loopback: bool,
    /// Install into this node directory (tls/node.crt, tls/node.key, tls/trust-roots.pem).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["cert", "key"])]
    node_dir: Option<PathBuf>,
    /// Write the certificate here (with --key).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Write the private key here, mode 0600 (with --cert).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

pub fn run(command: PkiCommand) -> anyhow::Result<ExitCode> {
    match command {
        PkiCommand::Ca(args) => {
            let ca = DevCa::generate(&args.name)?;
            ca.write(&args.out)?;
            println!(
                "Development CA `{}` written to {} (ca.key is 0600; keep it off shared disks)",
                args.name,
                args.out.display()
            );
        }
        PkiCommand::Issue(args) => {
            let ca = DevCa::load(&args.ca)
                .with_context(|| format!("loading the development CA in {}", args.ca.display()))?;
            let mut hosts = if args.loopback {
                loopback_hosts()
            } else {
                Vec::new()
            };
            hosts.extend(args.hosts);
            if hosts.is_empty() {
                bail!("name at least one --host, or pass --loopback");
            }
            let certificate = match (args.node_dir, args.cert, args.key) {
                (Some(dir), _, _) => {
                    install_dev_certificate(&dir, &args.name, &ca, &hosts)?;
                    dir.join(TLS_CERT_FILE)
                }
                (None, Some(cert), Some(key)) => {
                    ca.issue_node(&args.name, &hosts)?.write(&cert, &key)?;
                    cert
                }
                _ => bail!("give --node-dir DIR, or --cert FILE and --key FILE"),
            };
            println!(
                "Issued `{}` for {} -> {}",
                args.name,
                hosts.join(", "),
                certificate.display()
            );
            println!("  fingerprint  {}", certificate_fingerprint(&certificate)?);
            println!("  trust root   {}", args.ca.join(CA_CERT_FILE).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
