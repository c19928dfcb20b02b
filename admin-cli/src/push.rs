//! `samvirke push FILE`: import a roster or agreement into a node through
//! its local API (admin token). The node checks everything again and says
//! why it refuses.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use samvirke_node::governance::files::DocumentKind;
use samvirke_node::identity::signing_key_text;
use samvirke_proto::v1::{ImportAgreementRequest, ImportRosterRequest, SignedDocumentBytes};

use crate::local::Token;
use crate::{files, local};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The roster or agreement file.
    file: PathBuf,
    /// The node's local API, e.g. http://127.0.0.1:7080.
    #[arg(long)]
    node: String,
    /// An admin token for that node.
    #[arg(long, env = "SAMVIRKE_TOKEN", hide_env_values = true)]
    token: Token,
    /// Pin this roster as the fellowship's trust anchor (first import only).
    /// Prints its digest and secretariat key to compare, out of band, with
    /// what the secretariat gave you, and asks before pinning.
    #[arg(long)]
    trust_anchor: bool,
    /// Replace the fellowship's roster chain on the node with this roster
    /// (signed by its secretariat): how a forked roster is resolved. Asks
    /// first, like --trust-anchor; the node logs it.
    #[arg(long, conflicts_with = "trust_anchor")]
    repin: bool,
    /// Apply a roster that changes this node's own entry although the node
    /// did not sign it (only when the node's signing key was lost). The
    /// node logs it.
    #[arg(long)]
    accept_own_entry_change: bool,
    /// Do not ask before pinning (for scripts; read what is printed first).
    #[arg(long)]
    yes: bool,
}

pub fn run(args: PushArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(push(args))
}

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let content = files::read(&args.file)?;
    let kind = DocumentKind::detect(&content)?;
    let mut client = local::connect(&args.node, args.token.secret()).await?;
    let document = Some(SignedDocumentBytes { content });
    let refused = |status: tonic::Status| {
        anyhow::anyhow!(
            "{} refused it ({:?}): {}",
            args.node,
            status.code(),
            status.message()
        )
    };
    match kind {
        DocumentKind::Roster => {
            if args.trust_anchor || args.repin {
                let roster = files::roster(&args.file)?;
                println!(
                    "Roster of `{}` ({}), serial {}, {} members",
                    roster.fellowship(),
                    roster.name(),
                    roster.serial(),
                    roster.members().len()
                );
                println!("  digest           {}", roster.digest());
                println!(
                    "  secretariat key  {}",
                    signing_key_text(roster.secretariat_key())
                );
                println!(
                    "Compare both with what the secretariat gave you out of band (by phone, in \
                     person): everything this node will trust in `{}` follows from this roster.",
                    roster.fellowship()
                );
                files::confirm(
                    &format!(
                        "{} this roster on {}?",
                        if args.repin {
                            "Re-pin (replacing the chain held there)"
                        } else {
                            "Pin"
                        },
                        args.node
                    ),
                    args.yes,
                )?;
            }
            let answer = client
                .import_roster(ImportRosterRequest {
                    document,
                    trust_anchor: args.trust_anchor,
                    repin: args.repin,
                    accept_own_entry_change: args.accept_own_entry_change,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let roster = answer.roster.unwrap_or_default();
            println!(
                "{}: roster `{}` serial {} ({} members)",
                if answer.changed {
                    "accepted"
                } else {
                    "already held"
                },
                roster.fellowship,
                roster.serial,
                roster.members.len()
            );
        }
        DocumentKind::Agreement => {
            let answer = client
                .import_agreement(ImportAgreementRequest { document })
                .await
                .map_err(refused)?
                .into_inner();
            let agreement = answer.agreement.unwrap_or_default();
            println!(
                "{}: agreement {} ({}: {})",
                if answer.changed {
                    "accepted"
                } else {
                    "already held"
                },
                agreement.id,
                agreement.status,
                agreement.status_detail
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
