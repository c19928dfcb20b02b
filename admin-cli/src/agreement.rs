//! `samvirke agreement`: data-sharing agreements as files, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use samvirke_node::governance::{
    Agreement, AgreementBody, Consumers, DocumentType, LegalBasis, Operation, Roster, Scope,
};
use samvirke_node::identity::signing_key_text;
use time::OffsetDateTime;

use crate::files::{self, SignArgs};

#[derive(Debug, Subcommand)]
pub enum AgreementCommand {
    /// Draft an agreement: who shares what with whom, for which purpose, until when.
    Draft(Box<DraftArgs>),
    /// Add your signature to an agreement file.
    Sign(SignArgs),
    /// Check every signature, and who still has to sign, against the roster.
    Verify(RosterArgs),
    /// Show an agreement for people: terms, signers, status now.
    Show(RosterArgs),
}

#[derive(Debug, Args)]
pub struct DraftArgs {
    /// Fellowship id, e.g. digit.
    #[arg(long)]
    fellowship: String,
    /// Municipality code of the member that shares.
    #[arg(long)]
    provider: u32,
    /// Municipality code of a consumer (repeatable).
    #[arg(long = "consumer", required_unless_present = "all_members")]
    consumers: Vec<u32>,
    /// Every current member of the fellowship may consume.
    #[arg(long, conflicts_with = "consumers")]
    all_members: bool,
    /// Dataset id covered (repeatable).
    #[arg(long = "dataset")]
    datasets: Vec<String>,
    /// Dataset kind covered: sensor, pilot, procurement (repeatable).
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Dataset keyword covered (repeatable).
    #[arg(long = "keyword")]
    keywords: Vec<String>,
    /// Allowed operation: catalog, read, aggregate (repeatable).
    #[arg(long = "operation", required = true)]
    operations: Vec<String>,
    /// Smallest group an aggregate may describe (required with aggregate).
    #[arg(long)]
    min_group_size: Option<u32>,
    /// Purpose of the sharing, in words.
    #[arg(long)]
    purpose: String,
    /// Legal basis code, e.g. "GDPR art. 6(1)(e)".
    #[arg(long)]
    legal_basis_code: String,
    /// Legal basis in words.
    #[arg(long)]
    legal_basis_text: String,
    /// Field that must never leave the provider (repeatable).
    #[arg(long = "exclude-field")]
    excluded_fields: Vec<String>,
    /// In force from (RFC 3339, or YYYY-MM-DD for 00:00 UTC).
    #[arg(long)]
    valid_from: String,
    /// In force until (RFC 3339, or YYYY-MM-DD for 00:00 UTC).
    #[arg(long)]
    valid_until: String,
    /// Where to write the draft.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RosterArgs {
    file: PathBuf,
    /// The fellowship's current roster, to name signers and find who is missing.
    #[arg(long, value_name = "FILE")]
    roster: PathBuf,
}

fn load(path: &Path) -> anyhow::Result<Agreement> {
    Agreement::parse(&files::read(path)?)
        .with_context(|| format!("{} is not a valid agreement", path.display()))
}

pub fn run(command: AgreementCommand) -> anyhow::Result<ExitCode> {
    match command {
        AgreementCommand::Draft(args) => draft(*args)?,
        AgreementCommand::Sign(args) => {
            let mut agreement = load(&args.file)?;
            let key = files::signing_key(&args.key)?;
            agreement.sign(&key)?;
            files::write(&args.file, &agreement.to_bytes())?;
            println!(
                "Signed agreement {} as {}",
                agreement.id(),
                signing_key_text(&key.verifying_key())
            );
        }
        AgreementCommand::Verify(args) => {
            let agreement = load(&args.file)?;
            let roster = files::roster(&args.roster)?;
            agreement
                .document()
                .valid_signers(DocumentType::Agreement)
                .with_context(|| format!("{} fails verification", args.file.display()))?;
            let status = agreement.signature_status(&roster);
            if !status.unknown_signers.is_empty() {
                bail!(
                    "signed by keys the roster of `{}` does not list: {}",
                    roster.fellowship(),
                    status.unknown_signers.join(", ")
                );
            }
            println!(
                "OK: every signature on agreement {} verifies; signed by {:?}",
                agreement.id(),
                status.signed_by
            );
            if !status.missing.is_empty() {
                println!("still to sign: {:?}", status.missing);
            }
            println!(
                "status now: {}",
                agreement.status_at(&roster, OffsetDateTime::now_utc())
            );
        }
        AgreementCommand::Show(args) => show(&load(&args.file)?, &files::roster(&args.roster)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn draft(args: DraftArgs) -> anyhow::Result<()> {
    let operations = args
        .operations
        .iter()
        .map(|op| {
            op.parse::<Operation>()
                .map_err(|e| anyhow::anyhow!("--operation: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = AgreementBody {
        id: AgreementBody::new_id(),
        fellowship: args.fellowship,
        provider: args.provider,
        consumers: if args.all_members {
            Consumers::All
        } else {
            Consumers::Named(args.consumers)
        },
        scope: Scope {
            datasets: args.datasets,
            kinds: args.kinds,
            keywords: args.keywords,
        },
        operations,
        min_group_size: args.min_group_size,
        purpose: args.purpose,
        legal_basis: LegalBasis {
            code: args.legal_basis_code,
            text: args.legal_basis_text,
        },
        excluded_fields: args.excluded_fields,
        valid_from: files::instant(&args.valid_from).context("--valid-from")?,
        valid_until: files::instant(&args.valid_until).context("--valid-until")?,
    };
    let draft = body.to_draft()?;
    if args.out.exists() {
        bail!("{} exists; refusing to overwrite", args.out.display());
    }
    files::write(&args.out, &draft.to_bytes())?;
    println!(
        "Wrote draft agreement {} to {}; the provider and every named consumer must sign it.",
        body.id,
        args.out.display()
    );
    Ok(())
}

fn show(agreement: &Agreement, roster: &Roster) {
    let terms = agreement.body();
    let name = |code: u32| match roster.member(code) {
        Some(m) => format!("{} {code}", m.name),
        None => format!("{code} (not in the roster)"),
    };
    println!("Agreement {}", terms.id);
    println!("  fellowship    {}", terms.fellowship);
    println!("  provider      {}", name(terms.provider));
    match &terms.consumers {
        Consumers::All => println!("  consumers     all current members"),
        Consumers::Named(codes) => println!(
            "  consumers     {}",
            codes
                .iter()
                .map(|c| name(*c))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    println!("  scope         {}", terms.scope);
    println!(
        "  operations    {}",
        terms
            .operations
            .iter()
            .map(|o| o.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(size) = terms.min_group_size {
        println!("  min group     {size}");
    }
    println!("  purpose       {}", terms.purpose);
    println!(
        "  legal basis   {}: {}",
        terms.legal_basis.code, terms.legal_basis.text
    );
    if !terms.excluded_fields.is_empty() {
        println!("  never leaves  {}", terms.excluded_fields.join(", "));
    }
    println!(
        "  valid         {} .. {}",
        terms.valid_from, terms.valid_until
    );
    let status = agreement.signature_status(roster);
    println!(
        "  signed by     {}",
        if status.signed_by.is_empty() {
            "nobody yet".to_string()
        } else {
            status
                .signed_by
                .iter()
                .map(|c| name(*c))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if !status.missing.is_empty() {
        println!(
            "  missing       {}",
            status
                .missing
                .iter()
                .map(|c| name(*c))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for key in &status.unknown_signers {
        println!("  unknown key   {key}");
    }
    for key in &status.bad {
        println!("  BAD signature {key}");
    }
    println!(
        "  status now    {}",
        agreement.status_at(roster, OffsetDateTime::now_utc())
    );
}
