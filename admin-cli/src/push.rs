//! `samvirke push FILE`: import a roster or agreement into a node through
//! its local API (admin token). The node checks everything again and says
//! why it refuses.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use samvirke_node::governance::files::DocumentKind;
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
    #[arg(long)]
    trust_anchor: bool,
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
            let answer = client
                .import_roster(ImportRosterRequest {
                    document,
                    trust_anchor: args.trust_anchor,
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
