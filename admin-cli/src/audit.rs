//! `samvirke audit`: the node's tamper-evident audit log. `tail` and
//! `export` ask the node (admin token); `verify` checks an export file
//! offline with the node's public signing key: every entry's hash chain,
//! and the node's signed checkpoint at the end. It names the first entry
//! that fails.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use samvirke_node::audit::verify_export;
use samvirke_node::identity::parse_signing_key_text;
use samvirke_proto::v1::{ExportAuditRequest, TailAuditRequest};

use crate::api::{self, NodeArgs};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// The last entries, oldest first (admin token).
    Tail(TailArgs),
    /// Write entries FROM..=TO and a signed checkpoint to FILE (admin token).
    Export(ExportArgs),
    /// Check an export file offline with the node's signing key.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// How many entries (at most 1000).
    #[arg(short = 'n', long, default_value_t = 20)]
    count: u32,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// First entry (entries are numbered from 1).
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Last entry (default: the newest).
    #[arg(long)]
    to: Option<u64>,
    /// Where to write the export.
    file: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An export file from `audit export`.
    file: PathBuf,
    /// The node's signing key: `ed25519:<hex>` (as rosters list it) or a
    /// file holding that text.
    #[arg(long)]
    key: String,
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Tail(args) => api::block_on(tail(args)),
        AuditCommand::Export(args) => api::block_on(export(args)),
        AuditCommand::Verify(args) => verify(args),
    }
}

async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let response = client
        .tail_audit(TailAuditRequest { count: args.count })
        .await
        .map_err(|status| args.node.refused("show its audit log", &status))?
        .into_inner();
    let mut out = io::stdout().lock();
    let result: io::Result<()> = response
        .entries
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"));
    crate::output::finish_output(result.map_err(Into::into))?;
    Ok(ExitCode::SUCCESS)
}

async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let mut stream = client
        .export_audit(ExportAuditRequest {
            from: args.from,
            to: args.to.unwrap_or(0),
        })
        .await
        .map_err(|status| args.node.refused("export its audit log", &status))?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|status| args.node.refused("finish the export", &status))?
    {
        data.extend_from_slice(&chunk.data);
    }
    std::fs::write(&args.file, &data)
        .with_context(|| format!("writing {}", args.file.display()))?;
    let entries = data
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        .saturating_sub(1);
    eprintln!(
        "{} entries and a signed checkpoint written to {}",
        entries,
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Checks the export file `file` with the node key `key` (`ed25519:<hex>`
/// or a file holding it); returns the verdict in words, or why it is not
/// valid (naming the first entry that fails).
pub fn verify_file(file: &std::path::Path, key: &str) -> anyhow::Result<String> {
    let key_text = if key.starts_with("ed25519:") {
        key.to_string()
    } else {
        std::fs::read_to_string(key)
            .with_context(|| format!("reading the key file {key}"))?
            .trim()
            .to_string()
    };
    let key = parse_signing_key_text(&key_text).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    match verify_export(&data, &key) {
        Ok(verified) => Ok(format!(
            "OK: entries {}..={} ({} entries) form an unbroken chain; the checkpoint for entry \
             {} (head {}) is signed by node {} at {}, when its chain held {} entries{}",
            verified.first,
            verified.last,
            verified.entries.len(),
            verified.checkpoint.seq,
            verified.checkpoint.head,
            verified.checkpoint.node,
            crate::output::rfc3339(verified.checkpoint.at),
            verified.checkpoint.chain,
            match verified.checkpoint.chain - verified.checkpoint.seq {
                0 => " (the export reaches its end)".to_string(),
                n => format!(" ({n} later entries are not in this export)"),
            }
        )),
        Err(error) => bail!("NOT VALID: {}: {error}", file.display()),
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    println!("{}", verify_file(&args.file, &args.key)?);
    Ok(ExitCode::SUCCESS)
}
