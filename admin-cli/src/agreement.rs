//! `samvirke agreement`: data-sharing agreements as files, offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use samvirke_node::governance::agreement::{AggregateTerms, NoiseTerms};
use samvirke_node::governance::body::{parse_span, show_span};
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
    /// Show an agreement's terms, then add your signature.
    Sign(AgreementSignArgs),
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
    /// Width of the fixed grid aggregate-only answers are built from, e.g.
    /// 1h (the default) or 1d; buckets are whole multiples of it.
    #[arg(long, value_name = "SPAN")]
    cell: Option<String>,
    /// How long after a grid cell ends before it is answered (default 1h;
    /// 0s to answer as soon as it ends).
    #[arg(long, value_name = "SPAN")]
    settle: Option<String>,
    /// Allow aggregates per sensor (never for datasets classified personal).
    #[arg(long)]
    per_sensor: bool,
    /// Calibrated noise on aggregates of personal datasets: privacy loss per
    /// answer and measure (e.g. 0.5). Needs --privacy-budget and --noise-range.
    #[arg(long, requires_all = ["privacy_budget", "noise_ranges"])]
    noise_epsilon: Option<f64>,
    /// Total privacy loss each consumer may spend under the agreement.
    #[arg(long, requires = "noise_epsilon")]
    privacy_budget: Option<f64>,
    /// A measure's value range for noise, as MEASURE=LOWER:UPPER (repeatable).
    #[arg(
        long = "noise-range",
        value_name = "MEASURE=LOWER:UPPER",
        requires = "noise_epsilon"
    )]
    noise_ranges: Vec<String>,
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
    /// The fellowship's current roster: the provider and every named
    /// consumer must be members there, not gone by --valid-from or today.
    #[arg(long, value_name = "FILE")]
    roster: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgreementSignArgs {
    #[command(flatten)]
    sign: SignArgs,
    /// The fellowship's roster, to show parties by name.
    #[arg(long, value_name = "FILE")]
    roster: Option<PathBuf>,
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
            let AgreementSignArgs { sign, roster } = args;
            let mut agreement = load(&sign.file)?;
            let key = files::signing_key(&sign.key)?;
            let roster = roster.as_deref().map(files::roster).transpose()?;
            print_terms(&agreement, roster.as_ref());
            files::confirm(
                &format!(
                    "Sign agreement {} (digest {}) as {}?",
                    agreement.id(),
                    agreement.digest(),
                    signing_key_text(&key.verifying_key())
                ),
                sign.yes,
            )?;
            agreement.sign(&key)?;
            files::write(&sign.file, &agreement.to_bytes())?;
            println!(
                "Signed agreement {} as {}",
                agreement.id(),
                signing_key_text(&key.verifying_key())
            );
        }
        AgreementCommand::Verify(args) => {
            let agreement = load(&args.file)?;
            let roster = files::roster(&args.roster)?;
            check_parties(agreement.body(), &roster, &args.roster)
                .with_context(|| format!("{} fails verification", args.file.display()))?;
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

/// Parses `MEASURE=LOWER:UPPER`.
fn noise_range(text: &str) -> anyhow::Result<(String, (f64, f64))> {
    let parse = || -> Option<(String, (f64, f64))> {
        let (measure, range) = text.split_once('=')?;
        let (lower, upper) = range.split_once(':')?;
        Some((
            measure.trim().to_string(),
            (lower.trim().parse().ok()?, upper.trim().parse().ok()?),
        ))
    };
    parse().ok_or_else(|| {
        anyhow::anyhow!("--noise-range `{text}`: expected MEASURE=LOWER:UPPER, e.g. kwh=0:50")
    })
}

fn draft(args: DraftArgs) -> anyhow::Result<()> {
    let mut aggregate = AggregateTerms::default();
    if let Some(cell) = &args.cell {
        aggregate.cell = parse_span(cell).map_err(|e| anyhow::anyhow!("--cell: {e}"))?;
    }
    if let Some(settle) = &args.settle {
        aggregate.settle = if settle == "0s" {
            time::Duration::ZERO
        } else {
            parse_span(settle).map_err(|e| anyhow::anyhow!("--settle: {e}"))?
        };
    }
    aggregate.per_sensor = args.per_sensor;
    if let (Some(epsilon), Some(budget)) = (args.noise_epsilon, args.privacy_budget) {
        aggregate.noise = Some(NoiseTerms {
            epsilon,
            budget,
            bounds: args
                .noise_ranges
                .iter()
                .map(|r| noise_range(r))
                .collect::<anyhow::Result<_>>()?,
        });
    }
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
        aggregate,
    };
    if let Some(path) = &args.roster {
        check_parties(&body, &files::roster(path)?, path)
            .context("the agreement cannot be drafted")?;
    }
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

/// Checks that `roster` (read from `path`) is the agreement's fellowship's
/// and that its provider and every named consumer can be parties: the
/// same check a node makes when the agreement is imported.
fn check_parties(terms: &AgreementBody, roster: &Roster, path: &Path) -> anyhow::Result<()> {
    if roster.fellowship() != terms.fellowship {
        bail!(
            "the agreement is of fellowship `{}`, but {} is the roster of `{}`",
            terms.fellowship,
            path.display(),
            roster.fellowship()
        );
    }
    if roster.member(terms.provider).is_none() {
        bail!(
            "provider {} is not a member of `{}` (roster serial {} does not list it)",
            terms.provider,
            terms.fellowship,
            roster.serial()
        );
    }
    terms.check_consumers(roster, OffsetDateTime::now_utc())?;
    Ok(())
}

fn show(agreement: &Agreement, roster: &Roster) {
    print_terms(agreement, Some(roster));
    let name = |code: u32| match roster.member(code) {
        Some(m) => format!("{} {code}", m.name),
        None => format!("{code} (not in the roster)"),
    };
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

/// The terms of an agreement for a person about to sign or check it.
fn print_terms(agreement: &Agreement, roster: Option<&Roster>) {
    let terms = agreement.body();
    let name = |code: u32| match roster.and_then(|r| r.member(code)) {
        Some(m) => format!("{} {code}", m.name),
        None if roster.is_some() => format!("{code} (not in the roster)"),
        None => format!("municipality {code}"),
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
        show_instant(terms.valid_from),
        show_instant(terms.valid_until)
    );
    if terms.allows(Operation::Aggregate) {
        let grid = &terms.aggregate;
        println!(
            "  aggregates    from a fixed grid of {} cells, answered {} after a cell ends, {}",
            show_span(grid.cell),
            if grid.settle.is_zero() {
                "at once".to_string()
            } else {
                show_span(grid.settle)
            },
            if grid.per_sensor {
                "per sensor allowed (not for personal datasets)"
            } else {
                "over all sensors only"
            }
        );
        if let Some(noise) = &grid.noise {
            let ranges: Vec<String> = noise
                .bounds
                .iter()
                .map(|(m, (lo, hi))| format!("{m} {lo}..{hi}"))
                .collect();
            println!(
                "  noise         personal datasets: epsilon {} per answer and measure, budget {} \
                 per consumer, ranges {}",
                noise.epsilon,
                noise.budget,
                ranges.join(", ")
            );
        }
    }
    println!("  digest        {}", agreement.digest());
}

fn show_instant(at: OffsetDateTime) -> String {
    crate::output::rfc3339(at)
}
