//! `samvirke roster`: fellowship rosters as files, offline.
//!
//! Editing a draft (an unsigned file) changes it in place. Editing a signed
//! roster makes the draft of its next serial (chained to it by digest),
//! written to `--out`, because a signed roster is a record that never
//! changes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use samvirke_node::governance::files::IdentityCard;
use samvirke_node::governance::roster::MemberUpdate;
use samvirke_node::governance::{DecisionRule, Roster, RosterBody, accept_first, accept_next};
use samvirke_node::identity::{parse_signing_key_text, signing_key_text};
use time::OffsetDateTime;

use crate::files::{self, SignArgs};

#[derive(Debug, Subcommand)]
pub enum RosterCommand {
    /// Draft serial 1 of a fellowship's roster.
    New(NewArgs),
    /// Add a member from its identity card (`samvirke identity show`).
    AddMember(AddMemberArgs),
    /// Record that a member leaves on a date (refused from that day on).
    RemoveMember(RemoveMemberArgs),
    /// Replace a member's keys or endpoint from a new identity card (rotation).
    UpdateMember(UpdateMemberArgs),
    /// Show what a roster says (and what it changes), then add your signature.
    Sign(RosterSignArgs),
    /// Check a roster's signatures: as a trust anchor, or as the successor of --previous.
    Verify(VerifyArgs),
    /// Show a roster for people: fields, members, signers.
    Show(ShowArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Fellowship id, e.g. digit.
    #[arg(long)]
    fellowship: String,
    /// Fellowship name.
    #[arg(long)]
    name: String,
    /// Secretariat public key (`ed25519:...`, as `samvirke key new` prints).
    #[arg(long)]
    secretariat_key: String,
    /// Decision rule for later serials: secretariat, quorum:N or unanimous.
    #[arg(long, default_value = "secretariat")]
    rule: String,
    /// Where to write the draft.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct EditTarget {
    /// The roster file (a draft, or the signed roster to follow).
    file: PathBuf,
    /// Where to write the result (required when FILE is signed).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AddMemberArgs {
    #[command(flatten)]
    target: EditTarget,
    /// The member's identity card file.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
    /// Date the member joined (YYYY-MM-DD).
    #[arg(long)]
    joined: String,
}

#[derive(Debug, Args)]
pub struct RemoveMemberArgs {
    #[command(flatten)]
    target: EditTarget,
    /// The member's municipality code.
    #[arg(long)]
    code: u32,
    /// Date from which the member is refused (YYYY-MM-DD).
    #[arg(long)]
    left: String,
}

#[derive(Debug, Args)]
pub struct UpdateMemberArgs {
    #[command(flatten)]
    target: EditTarget,
    /// The member's new identity card file.
    #[arg(long, value_name = "FILE")]
    identity: PathBuf,
}

#[derive(Debug, Args)]
pub struct RosterSignArgs {
    #[command(flatten)]
    sign: SignArgs,
    /// The roster this one replaces, to show exactly what it changes.
    #[arg(long, value_name = "FILE")]
    previous: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    file: PathBuf,
    /// The roster this one replaces; without it, FILE is checked as a trust anchor.
    #[arg(long, value_name = "FILE")]
    previous: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    file: PathBuf,
}

/// Applies `edit` to the roster at `target`: to the draft itself, or to
/// the next serial's draft when the file is signed.
fn edit(
    target: &EditTarget,
    change: impl FnOnce(&mut RosterBody) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let roster = files::roster(&target.file)?;
    let signed = !roster.document().signatures.is_empty();
    let mut body = if signed {
        roster.next_draft(OffsetDateTime::now_utc())
    } else {
        roster.body().clone()
    };
    change(&mut body)?;
    let out = match (&target.out, signed) {
        (Some(out), _) => out.clone(),
        (None, false) => target.file.clone(),
        (None, true) => bail!(
            "{} is signed and never changes; give --out for the draft of serial {}",
            target.file.display(),
            body.serial
        ),
    };
    let draft = body.to_draft()?;
    files::write(&out, &draft.to_bytes())?;
    println!(
        "Wrote draft serial {} of `{}` to {} ({} members); it needs signatures as rule `{}` demands.",
        body.serial,
        body.fellowship,
        out.display(),
        body.members.len(),
        roster.rule()
    );
    Ok(())
}

pub fn run(command: RosterCommand) -> anyhow::Result<ExitCode> {
    match command {
        RosterCommand::New(args) => {
            let key = parse_signing_key_text(&args.secretariat_key)
                .map_err(|e| anyhow::anyhow!("--secretariat-key: {e}"))?;
            let rule: DecisionRule = args
                .rule
                .parse()
                .map_err(|e| anyhow::anyhow!("--rule: {e}"))?;
            let body = RosterBody::first(
                args.fellowship,
                args.name,
                key,
                rule,
                OffsetDateTime::now_utc(),
                Vec::new(),
            );
            let draft = body.to_draft()?;
            if args.out.exists() {
                bail!("{} exists; refusing to overwrite", args.out.display());
            }
            files::write(&args.out, &draft.to_bytes())?;
            println!(
                "Wrote draft serial 1 of `{}` to {}",
                body.fellowship,
                args.out.display()
            );
        }
        RosterCommand::AddMember(args) => {
            let card = IdentityCard::parse(&files::read_text(&args.identity)?)?;
            let joined = files::date(&args.joined)?;
            edit(&args.target, |body| {
                Ok(body.add_member(card.to_member(joined)?)?)
            })?;
        }
        RosterCommand::RemoveMember(args) => {
            let left = files::date(&args.left)?;
            edit(&args.target, |body| Ok(body.mark_left(args.code, left)?))?;
        }
        RosterCommand::UpdateMember(args) => {
            let card = IdentityCard::parse(&files::read_text(&args.identity)?)?;
            let member = card.to_member(files::date("1970-01-01")?)?;
            edit(&args.target, |body| {
                Ok(body.update_member(
                    card.code,
                    MemberUpdate {
                        signing_key: Some(member.signing_key),
                        tls_fingerprint: Some(member.tls_fingerprint),
                        endpoint: Some(member.endpoint),
                    },
                )?)
            })?;
        }
        RosterCommand::Sign(args) => {
            let RosterSignArgs { sign, previous } = args;
            let mut roster = files::roster(&sign.file)?;
            let key = files::signing_key(&sign.key)?;
            let previous = previous.as_deref().map(files::roster).transpose()?;
            print_for_signing(&roster, previous.as_ref())?;
            let signer = signer_name(previous.as_ref().unwrap_or(&roster), &key.verifying_key());
            files::confirm(
                &format!(
                    "Sign serial {} of `{}` (digest {}) as {signer}?",
                    roster.serial(),
                    roster.fellowship(),
                    roster.digest()
                ),
                sign.yes,
            )?;
            roster.sign(&key)?;
            files::write(&sign.file, &roster.to_bytes())?;
            println!("Signed {} as {signer}", sign.file.display());
        }
        RosterCommand::Verify(args) => {
            let roster = files::roster(&args.file)?;
            let now = OffsetDateTime::now_utc();
            let what = format!(
                "serial {} of `{}`, {} signatures, digest {}",
                roster.serial(),
                roster.fellowship(),
                roster.document().signatures.len(),
                roster.digest()
            );
            match &args.previous {
                None => {
                    accept_first(&roster, now).with_context(|| {
                        format!("{} is not a valid trust anchor", args.file.display())
                    })?;
                    // Without the roster it replaces, only what the file
                    // says about itself can be checked: a node following
                    // the fellowship would still refuse a later serial
                    // whose signers do not satisfy the previous rule.
                    println!("Checked {what}:");
                    println!(
                        "  checked:     every signature verifies, and the secretariat key the \
                         roster names signed it (enough for a first roster, pinned with \
                         `samvirke push FILE --trust-anchor`)"
                    );
                    if roster.serial() > 1 {
                        println!(
                            "  NOT checked: whether the signers satisfy the decision rule of \
                             serial {} and follow its digest, which nodes of the fellowship \
                             demand - pass --previous FILE (serial {}) to check that",
                            roster.serial() - 1,
                            roster.serial() - 1
                        );
                    } else {
                        println!(
                            "  NOT checked: that this secretariat key is the fellowship's;                              compare the digest with the secretariat before pinning"
                        );
                    }
                }
                Some(previous) => {
                    let previous_roster = files::roster(previous)?;
                    accept_next(&previous_roster, &roster, now).with_context(|| {
                        format!(
                            "{} may not follow {}",
                            args.file.display(),
                            previous.display()
                        )
                    })?;
                    println!("OK: {what}");
                    println!(
                        "  checked: every signature verifies, it follows serial {} (digest {}),                          and its signers satisfy that serial's rule {}",
                        previous_roster.serial(),
                        previous_roster.digest(),
                        previous_roster.rule()
                    );
                }
            }
        }
        RosterCommand::Show(args) => show(&files::roster(&args.file)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// What a signer must see before signing: the roster's identity and, with
/// the roster it replaces, every change; without it, every member.
fn print_for_signing(roster: &Roster, previous: Option<&Roster>) -> anyhow::Result<()> {
    let body = roster.body();
    println!(
        "Roster of `{}` ({}), serial {}, rule {}, digest {}",
        body.fellowship,
        body.name,
        body.serial,
        body.rule,
        roster.digest()
    );
    match previous {
        Some(previous) => {
            if body.previous != Some(previous.digest()) {
                bail!(
                    "this roster does not follow the given previous roster (serial {}, digest {}):                      it names previous = {}",
                    previous.serial(),
                    previous.digest(),
                    body.previous
                        .map(|d| d.to_string())
                        .unwrap_or_else(|| "nothing".to_string())
                );
            }
            let changes = samvirke_node::governance::roster::diff(previous.body(), body);
            if changes.is_empty() {
                println!("  changes against serial {}: none", previous.serial());
            } else {
                println!("  changes against serial {}:", previous.serial());
                for change in changes {
                    println!("    - {change}");
                }
            }
        }
        None => {
            if body.serial > 1 {
                println!(
                    "  (give --previous FILE to see what serial {} changes; the whole roster follows)",
                    body.serial
                );
            }
            show(roster);
        }
    }
    Ok(())
}

fn signer_name(roster: &Roster, key: &ed25519_dalek::VerifyingKey) -> String {
    if key == roster.secretariat_key() {
        return "the secretariat".to_string();
    }
    match roster.member_by_key(key) {
        Some(member) => format!("{} {}", member.name, member.code),
        None => format!("{} (not in this roster)", signing_key_text(key)),
    }
}

fn show(roster: &Roster) {
    let now = OffsetDateTime::now_utc();
    let body = roster.body();
    println!("Roster of `{}` ({})", body.fellowship, body.name);
    println!("  serial       {}", body.serial);
    if let Some(previous) = &body.previous {
        println!("  previous     {previous}");
    }
    println!("  digest       {}", roster.digest());
    println!("  rule         {}", body.rule);
    println!("  secretariat  {}", signing_key_text(&body.secretariat_key));
    println!("  issued       {}", crate::output::rfc3339(body.issued));
    println!("  members ({}):", body.members.len());
    for member in &body.members {
        let status = match member.left {
            Some(left) if !member.is_current(now) => format!("left {left}"),
            Some(left) => format!("leaves {left}"),
            None => "member".to_string(),
        };
        println!(
            "    {:>3} {:<24} {status:<16} joined {}  {}",
            member.code, member.name, member.joined, member.endpoint
        );
        println!(
            "        key {}  tls {}",
            signing_key_text(&member.signing_key),
            member.tls_fingerprint
        );
    }
    let checks = roster
        .document()
        .check_signatures(samvirke_node::governance::DocumentType::Roster);
    if checks.is_empty() {
        println!("  signatures:  none (draft)");
    } else {
        println!("  signatures:");
        for check in checks {
            println!(
                "    {} {}",
                if check.valid { "valid" } else { "BAD  " },
                signer_name(roster, &check.signer)
            );
        }
    }
    println!(
        "  (whether the signatures satisfy the rule is judged against the roster this one \
         replaces: samvirke roster verify FILE --previous PREVIOUS)"
    );
}
