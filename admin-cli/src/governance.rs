//! `samvirke governance list`: the rosters and agreements a node holds, as
//! its operator needs them: each roster's members (and who left when), and
//! each agreement's state in words: in force, expiring soon, waiting for
//! whose signatures, not yet valid, or expired.

use std::collections::HashMap;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use samvirke_proto::v1::{AgreementInfo, RosterInfo};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::api::{self, NodeArgs};
use crate::local;
use crate::output::{self, ListFormat};

/// How close the end of an agreement in force must be to be called out.
const EXPIRING_WITHIN: Duration = Duration::days(30);

#[derive(Debug, Subcommand)]
pub enum GovernanceCommand {
    /// Rosters (members, left dates) and agreements (status now) a node holds.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    node: NodeArgs,
}

pub fn run(command: GovernanceCommand) -> anyhow::Result<ExitCode> {
    match command {
        GovernanceCommand::List(args) => list(args),
    }
}

fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    api::block_on(async move {
        let mut client = args.node.connect().await?;
        let held = local::list_governance(&mut client)
            .await
            .map_err(|status| {
                args.node
                    .refused("list its rosters and agreements", &status)
            })?;
        let now = OffsetDateTime::now_utc();
        let names = member_names(&held.rosters);
        let mut out = io::stdout().lock();
        let result = match args.format {
            ListFormat::Json => print_json(&mut out, &held.rosters, &held.agreements, &names, now),
            ListFormat::Table => {
                print_tables(&mut out, &held.rosters, &held.agreements, &names, now)
            }
        };
        output::finish_output(result.map_err(Into::into))?;
        for q in &held.quarantined {
            eprintln!(
                "quarantined: roster serial {} of `{}` ({}): {}",
                q.serial, q.fellowship, q.digest, q.changes
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Member names by (fellowship, code), to name parties in statuses.
fn member_names(rosters: &[RosterInfo]) -> HashMap<(String, u32), String> {
    rosters
        .iter()
        .flat_map(|r| {
            r.members
                .iter()
                .map(|m| ((r.fellowship.clone(), m.code), m.name.clone()))
        })
        .collect()
}

/// The status of an agreement in words, now; the node's own words when it
/// reports a state this command does not know.
fn agreement_status(
    agreement: &AgreementInfo,
    names: &HashMap<(String, u32), String>,
    now: OffsetDateTime,
) -> String {
    let name = |code: u32| match names.get(&(agreement.fellowship.clone(), code)) {
        Some(name) => format!("{code} {name}"),
        None => code.to_string(),
    };
    match agreement.status.as_str() {
        "active" => match OffsetDateTime::parse(&agreement.valid_until, &Rfc3339) {
            Ok(until) if until - now <= EXPIRING_WITHIN => {
                format!("expiring within 30 days: in force until {}", show(until))
            }
            _ => "in force".to_string(),
        },
        "pending signatures" => {
            let missing: Vec<String> = agreement
                .missing_signatures
                .iter()
                .map(|c| name(*c))
                .collect();
            format!(
                "waiting for signatures: not signed by {}",
                if missing.is_empty() {
                    "?".to_string()
                } else {
                    missing.join(", ")
                }
            )
        }
        "not yet valid" => format!("not yet valid: from {}", agreement.valid_from),
        "expired" => format!("expired: on {}", agreement.valid_until),
        _ => format!("{}: {}", agreement.status, agreement.status_detail),
    }
}

/// An instant as RFC 3339 (`2026-01-01T00:00:00Z`).
fn show(at: OffsetDateTime) -> String {
    output::rfc3339(at)
}

fn print_tables(
    out: &mut impl Write,
    rosters: &[RosterInfo],
    agreements: &[AgreementInfo],
    names: &HashMap<(String, u32), String>,
    now: OffsetDateTime,
) -> io::Result<()> {
    writeln!(out, "Rosters")?;
    let mut rows = Vec::new();
    for roster in rosters {
        for (i, member) in roster.members.iter().enumerate() {
            let first = i == 0;
            rows.push(vec![
                if first {
                    roster.fellowship.clone()
                } else {
                    String::new()
                },
                if first {
                    roster.serial.to_string()
                } else {
                    String::new()
                },
                member.code.to_string(),
                member.name.clone(),
                if member.left.is_empty() {
                    String::new()
                } else if member.current {
                    format!("leaves {}", member.left)
                } else {
                    format!("left {}", member.left)
                },
            ]);
        }
        if roster.members.is_empty() {
            rows.push(vec![
                roster.fellowship.clone(),
                roster.serial.to_string(),
                String::new(),
                "(no members)".to_string(),
                String::new(),
            ]);
        }
    }
    output::print_table(
        out,
        &["fellowship", "serial", "member", "name", "left"],
        vec![false, true, true, false, false],
        &rows,
    )?;
    writeln!(out)?;
    writeln!(out, "Agreements")?;
    let rows: Vec<Vec<String>> = agreements
        .iter()
        .map(|a| {
            vec![
                a.fellowship.clone(),
                a.provider.to_string(),
                a.id.clone(),
                if a.all_members {
                    "all members".to_string()
                } else {
                    a.consumers
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                a.valid_until.clone(),
                agreement_status(a, names, now),
            ]
        })
        .collect();
    output::print_table(
        out,
        &[
            "fellowship",
            "provider",
            "agreement",
            "consumers",
            "valid until",
            "status",
        ],
        vec![false, true, false, false, false, false],
        &rows,
    )
}

fn print_json(
    out: &mut impl Write,
    rosters: &[RosterInfo],
    agreements: &[AgreementInfo],
    names: &HashMap<(String, u32), String>,
    now: OffsetDateTime,
) -> io::Result<()> {
    for roster in rosters {
        output::json_line(
            out,
            &json!({
                "roster": roster.fellowship,
                "serial": roster.serial,
                "digest": roster.digest,
                "members": roster.members.iter().map(|m| json!({
                    "code": m.code,
                    "name": m.name,
                    "left": if m.left.is_empty() { json!(null) } else { json!(m.left) },
                    "current": m.current,
                })).collect::<Vec<_>>(),
            }),
        )?;
    }
    for a in agreements {
        output::json_line(
            out,
            &json!({
                "agreement": a.id,
                "fellowship": a.fellowship,
                "provider": a.provider,
                "consumers": if a.all_members { json!("all") } else { json!(a.consumers) },
                "valid_from": a.valid_from,
                "valid_until": a.valid_until,
                "status": agreement_status(a, names, now),
                "missing_signatures": a.missing_signatures,
            }),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn agreement(status: &str, until: &str) -> AgreementInfo {
        AgreementInfo {
            fellowship: "digit".to_string(),
            status: status.to_string(),
            valid_from: "2025-01-01T00:00:00Z".to_string(),
            valid_until: until.to_string(),
            missing_signatures: vec![316],
            ..AgreementInfo::default()
        }
    }

    #[test]
    fn statuses_say_what_an_operator_must_know() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let names: HashMap<(String, u32), String> =
            [(("digit".to_string(), 316), "Holbaek Kommune".to_string())].into();
        let status = |a: AgreementInfo| agreement_status(&a, &names, now);
        assert_eq!(
            status(agreement("active", "2027-01-01T00:00:00Z")),
            "in force"
        );
        assert_eq!(
            status(agreement("active", "2026-01-20T00:00:00Z")),
            "expiring within 30 days: in force until 2026-01-20T00:00:00Z"
        );
        assert_eq!(
            status(agreement("pending signatures", "2027-01-01T00:00:00Z")),
            "waiting for signatures: not signed by 316 Holbaek Kommune"
        );
        assert_eq!(
            status(agreement("not yet valid", "2027-01-01T00:00:00Z")),
            "not yet valid: from 2025-01-01T00:00:00Z"
        );
        assert_eq!(
            status(agreement("expired", "2025-06-01T00:00:00Z")),
            "expired: on 2025-06-01T00:00:00Z"
        );
    }
}
