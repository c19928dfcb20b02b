//! `samvirke receipts`: the receipts partners signed for the answers this
//! node received. `list` and `show` ask the node; `show --out` saves a
//! receipt as a file; `verify` checks such a file offline against the
//! fellowship's roster (the provider's key), so either side can prove what
//! was asked and what was answered.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use samvirke_node::governance::Roster;
use samvirke_node::proof::receipt;
use samvirke_proto::v1::{GetReceiptRequest, ListReceiptsRequest, Receipt};
use serde_json::json;

use crate::api::{self, NodeArgs};
use crate::output::{self, ListFormat};

#[derive(Debug, Subcommand)]
pub enum ReceiptsCommand {
    /// The receipts kept, oldest first.
    List(ListArgs),
    /// One receipt, in full (and saved as a file with --out).
    Show(ShowArgs),
    /// Check a receipt file offline with the provider's key from a roster.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only receipts of this provider (municipality code).
    #[arg(long, value_name = "CODE")]
    provider: Option<u32>,
    /// At most this many (up to 1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Receipts after this id.
    #[arg(long, value_name = "ID")]
    after: Option<String>,
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The receipt id.
    id: String,
    /// Also write the receipt to this file (for `receipts verify`).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A receipt file from `receipts show --out`.
    file: PathBuf,
    /// The roster of the agreement's fellowship (lists the provider's key).
    #[arg(long, value_name = "FILE")]
    roster: PathBuf,
}

pub fn run(command: ReceiptsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReceiptsCommand::List(args) => api::block_on(list(args)),
        ReceiptsCommand::Show(args) => api::block_on(show(args)),
        ReceiptsCommand::Verify(args) => verify(args),
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let response = client
        .list_receipts(ListReceiptsRequest {
            provider: args.provider.unwrap_or(0),
            limit: args.limit,
            after: args.after.clone().unwrap_or_default(),
        })
        .await
        .map_err(|status| args.node.refused("list its receipts", &status))?
        .into_inner();
    let mut out = io::stdout().lock();
    let bodies: Vec<_> = response
        .receipts
        .iter()
        .map(|r| r.body.clone().unwrap_or_default())
        .collect();
    let result: io::Result<()> = match args.format {
        ListFormat::Json => bodies.iter().try_for_each(|b| {
            output::json_line(
                &mut out,
                &json!({
                    "id": b.id,
                    "provider": b.provider,
                    "agreement": b.agreement_id,
                    "method": b.method,
                    "rows": b.rows,
                    "bytes": b.bytes,
                    "at": output::show_timestamp(b.at.as_ref()),
                }),
            )
        }),
        ListFormat::Table => {
            let headers = [
                "id",
                "provider",
                "at",
                "method",
                "rows",
                "bytes",
                "agreement",
            ];
            let rows: Vec<Vec<String>> = bodies
                .iter()
                .map(|b| {
                    vec![
                        b.id.clone(),
                        b.provider.to_string(),
                        output::show_timestamp(b.at.as_ref()),
                        b.method
                            .trim_start_matches("/samvirke.v1.Peer/")
                            .to_string(),
                        b.rows.to_string(),
                        b.bytes.to_string(),
                        b.agreement_id.clone(),
                    ]
                })
                .collect();
            let right = headers
                .iter()
                .map(|h| matches!(*h, "provider" | "rows" | "bytes"))
                .collect();
            output::print_table(&mut out, &headers, right, &rows)
        }
    };
    output::finish_output(result.map_err(Into::into))?;
    if response.more {
        let last = bodies.last().map(|b| b.id.as_str()).unwrap_or("");
        let _ = writeln!(io::stderr(), "more receipts follow: --after {last}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let mut client = args.node.connect().await?;
    let receipt = client
        .get_receipt(GetReceiptRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(|status| args.node.refused("show the receipt", &status))?
        .into_inner();
    let file = receipt::to_file(&receipt);
    if let Some(path) = &args.out {
        std::fs::write(path, &file).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("receipt written to {}", path.display());
    }
    output::finish_output(
        io::stdout()
            .lock()
            .write_all(file.as_bytes())
            .map_err(Into::into),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The provider's key in `roster`, checked against the receipt.
fn check(receipt: &Receipt, roster: &Roster) -> anyhow::Result<String> {
    let body = receipt.body.clone().unwrap_or_default();
    let Some(provider) = roster.member(body.provider) else {
        bail!(
            "the roster of `{}` (serial {}) lists no member {}, the receipt's provider",
            roster.fellowship(),
            roster.serial(),
            body.provider
        );
    };
    receipt::verify(receipt, &provider.signing_key, None).map_err(|e| {
        anyhow::anyhow!(
            "NOT VALID: {e} (provider {} {} in `{}` serial {})",
            provider.code,
            provider.name,
            roster.fellowship(),
            roster.serial()
        )
    })?;
    Ok(format!(
        "OK: receipt {} was signed by {} ({}), provider in `{}` serial {}: {} {} rows, {} bytes \
         to member {} under agreement {} at {}; request {}, answer {}",
        body.id,
        provider.name,
        provider.code,
        roster.fellowship(),
        roster.serial(),
        body.method.trim_start_matches("/samvirke.v1.Peer/"),
        body.rows,
        body.bytes,
        body.consumer,
        body.agreement_id,
        output::show_timestamp(body.at.as_ref()),
        body.request_digest,
        body.response_digest
    ))
}

/// Checks the receipt file `file` against the roster file `roster`;
/// returns the verdict in words, or why it is not valid.
pub fn verify_file(file: &std::path::Path, roster: &std::path::Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let receipt = receipt::from_file(&text)
        .map_err(|e| anyhow::anyhow!("NOT VALID: {}: {e}", file.display()))?;
    let roster_bytes =
        std::fs::read(roster).with_context(|| format!("reading {}", roster.display()))?;
    let roster = Roster::parse(&roster_bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a roster: {e}", roster.display()))?;
    check(&receipt, &roster)
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    println!("{}", verify_file(&args.file, &args.roster)?);
    Ok(ExitCode::SUCCESS)
}
