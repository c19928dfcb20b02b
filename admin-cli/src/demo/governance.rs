//! Chapter 2 of the demo: the GovTech Midtjylland secretariat signs a
//! roster of Aarhus, Vejle and Silkeborg, which each member's operator pins
//! (`samvirke push ROSTER --trust-anchor` does the same); members sign
//! three data-sharing agreements, each imported at one node and carried to
//! the others by anti-entropy; then every node says hello to every other,
//! and only members learn who answered.
//!
//! The documents are built with the library code the `samvirke roster` and
//! `samvirke agreement` commands use, and reach the nodes only through
//! their local API.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use samvirke_node::devnet::{DevFederation, DevNode};
use samvirke_node::governance::agreement::{AggregateTerms, Agreement};
use samvirke_node::governance::files::IdentityCard;
use samvirke_node::governance::{
    AgreementBody, Consumers, DecisionRule, LegalBasis, Operation, RosterBody, Scope,
};
use samvirke_node::identity::{generate_signing_key, write_signing_key};
use samvirke_node::peer::client;
use samvirke_proto::v1::{
    HelloRequest, ImportAgreementRequest, ImportRosterRequest, SignedDocumentBytes,
};
use time::OffsetDateTime;

use super::Story;
use super::data::{PILOTS, PROCUREMENTS, midnight_before};
use crate::local;

pub const FELLOWSHIP: &str = "govtech-midtjylland";
/// The members of the demo roster: Aarhus, Vejle, Silkeborg.
pub const MEMBERS: [u32; 3] = [751, 630, 740];
/// How long the demo waits for anti-entropy to carry the agreements.
const SPREAD_DEADLINE: Duration = Duration::from_secs(15);

/// What the governance chapter leaves for the others.
#[derive(Debug)]
pub struct Governed {
    /// The roster file, as an auditor would be given it.
    pub roster_file: PathBuf,
    /// Aarhus to Vejle: air quality, aggregates only.
    pub aarhus_air: String,
    /// Silkeborg to every member: air quality, readings without location.
    pub silkeborg_air: String,
    /// Aarhus to Vejle: pilots and procurements, without pilot budgets.
    pub aarhus_records: String,
    /// Two whole days the analyst asks about.
    pub period: (OffsetDateTime, OffsetDateTime),
}

fn node(federation: &DevFederation, code: u32) -> anyhow::Result<&DevNode> {
    federation
        .nodes
        .iter()
        .find(|n| n.running.identity.municipality_code == code)
        .with_context(|| format!("the demo has no node {code}"))
}

fn legal_basis() -> LegalBasis {
    LegalBasis {
        code: "GDPR art. 6(1)(e)".to_string(),
        text: "Task in the public interest: municipal environmental monitoring and joint \
               procurement"
            .to_string(),
    }
}

/// An agreement of `provider`, signed by every party in `signers`.
fn agreement(body: AgreementBody, signers: &[&DevNode]) -> anyhow::Result<Agreement> {
    let mut agreement = body.to_draft()?;
    for signer in signers {
        agreement.sign(signer.running.identity.signing_key())?;
    }
    Ok(agreement)
}

async fn import(node: &DevNode, agreement: &Agreement) -> anyhow::Result<()> {
    let mut api = local::connect(&node.running.local_endpoint(), &node.admin_token).await?;
    api.import_agreement(ImportAgreementRequest {
        document: Some(SignedDocumentBytes {
            content: agreement.to_bytes(),
        }),
    })
    .await
    .with_context(|| format!("importing agreement {}", agreement.id()))?;
    Ok(())
}

/// Runs the governance chapter.
pub async fn show(
    federation: &DevFederation,
    dir: &Path,
    story: &mut Story,
) -> anyhow::Result<Governed> {
    let (aarhus, vejle, silkeborg) = (
        node(federation, 751)?,
        node(federation, 630)?,
        node(federation, 740)?,
    );
    let now = OffsetDateTime::now_utc();

    // The secretariat's key lives with the secretariat, not on any node.
    let secretariat = generate_signing_key()?;
    write_signing_key(&dir.join("govtech-secretariat.pem"), &secretariat)?;
    let member = |node: &DevNode| {
        IdentityCard::of_node(&node.running.identity, &node.running.peer_endpoint())
            .to_member(time::macros::date!(2020 - 01 - 01))
    };
    let mut roster = RosterBody::first(
        FELLOWSHIP,
        "GovTech Midtjylland",
        secretariat.verifying_key(),
        DecisionRule::Quorum(1),
        now,
        vec![member(aarhus)?, member(vejle)?, member(silkeborg)?],
    )
    .to_draft()?;
    roster.sign(&secretariat)?;
    let roster_file = dir.join("govtech-midtjylland-roster.toml");
    std::fs::write(&roster_file, roster.to_bytes()).context("writing the roster file")?;
    println!(
        "  The secretariat signs roster serial {} of GovTech Midtjylland: Aarhus, Vejle and \
         Silkeborg, each with its node's signing key and certificate fingerprint.",
        roster.serial()
    );
    println!(
        "  Each member's operator compares its digest {} with the secretariat and pins it \
         (samvirke push ROSTER --trust-anchor). Albertslund is not a member.",
        super::abbreviate(&roster.digest().to_string())
    );
    for node in [aarhus, vejle, silkeborg] {
        let mut api = local::connect(&node.running.local_endpoint(), &node.admin_token).await?;
        api.import_roster(ImportRosterRequest {
            document: Some(SignedDocumentBytes {
                content: roster.to_bytes(),
            }),
            trust_anchor: true,
            ..Default::default()
        })
        .await
        .context("pinning the roster")?;
    }

    let valid_from = now - time::Duration::days(1);
    let valid_until = now + time::Duration::days(365);
    let aarhus_air = agreement(
        AgreementBody {
            id: AgreementBody::new_id(),
            fellowship: FELLOWSHIP.to_string(),
            provider: 751,
            consumers: Consumers::Named(vec![630]),
            scope: Scope {
                datasets: vec!["aarhus-air-quality".to_string()],
                ..Scope::default()
            },
            operations: vec![Operation::Catalog, Operation::Aggregate],
            min_group_size: Some(5),
            purpose: "Compare air quality for the joint clean-air pilot".to_string(),
            legal_basis: legal_basis(),
            excluded_fields: Vec::new(),
            valid_from,
            valid_until,
            aggregate: AggregateTerms::default(),
        },
        &[aarhus, vejle],
    )?;
    let silkeborg_air = agreement(
        AgreementBody {
            id: AgreementBody::new_id(),
            fellowship: FELLOWSHIP.to_string(),
            provider: 740,
            consumers: Consumers::All,
            scope: Scope {
                datasets: vec!["silkeborg-air-quality".to_string()],
                ..Scope::default()
            },
            operations: vec![Operation::Catalog, Operation::Read],
            min_group_size: None,
            purpose: "Open air-quality data for the fellowship's members".to_string(),
            legal_basis: legal_basis(),
            excluded_fields: vec!["location".to_string()],
            valid_from,
            valid_until,
            aggregate: AggregateTerms::default(),
        },
        &[silkeborg],
    )?;
    let aarhus_records = agreement(
        AgreementBody {
            id: AgreementBody::new_id(),
            fellowship: FELLOWSHIP.to_string(),
            provider: 751,
            consumers: Consumers::Named(vec![630]),
            scope: Scope {
                datasets: vec![PILOTS.to_string(), PROCUREMENTS.to_string()],
                ..Scope::default()
            },
            operations: vec![Operation::Catalog, Operation::Read],
            min_group_size: None,
            purpose: "Learn from each other's pilots and joint tenders".to_string(),
            legal_basis: LegalBasis {
                code: "Offentlighedsloven".to_string(),
                text: "Records of public procurement and projects; no personal data".to_string(),
            },
            excluded_fields: vec!["budget_dkk".to_string()],
            valid_from,
            valid_until,
            aggregate: AggregateTerms::default(),
        },
        &[aarhus, vejle],
    )?;
    println!("  Three agreements, each signed by the provider (and a named consumer):");
    println!(
        "    A  Aarhus -> Vejle: `aarhus-air-quality`, aggregates only: buckets on a fixed 1 h \
         grid, released only where every hour holds 5 or more readings and sensors; no raw \
         readings, no per-sensor series (signed by Aarhus and Vejle)"
    );
    println!(
        "    B  Silkeborg -> every member: `silkeborg-air-quality`, raw readings, but the \
         sensors' `location` never leaves Silkeborg (signed by Silkeborg)"
    );
    println!(
        "    C  Aarhus -> Vejle: pilot results and procurement outcomes, but the pilots' \
         `budget_dkk` never leaves Aarhus (signed by Aarhus and Vejle)"
    );
    // Each is imported at one node only; anti-entropy does the rest.
    import(aarhus, &aarhus_air).await?;
    import(silkeborg, &silkeborg_air).await?;
    import(vejle, &aarhus_records).await?;
    println!(
        "  A is imported at Aarhus, B at Silkeborg, C at Vejle; nodes pass documents on to the \
         other parties themselves (anti-entropy), with no central server."
    );
    // In force means held by every party: the consumer to ask, the
    // provider to answer. Vejle is party to all three, Aarhus provides A
    // and C, Silkeborg provides B.
    let parties = [
        (
            vejle,
            vec![aarhus_air.id(), silkeborg_air.id(), aarhus_records.id()],
        ),
        (aarhus, vec![aarhus_air.id(), aarhus_records.id()]),
        (silkeborg, vec![silkeborg_air.id()]),
    ];
    let started = Instant::now();
    let mut missing = Vec::new();
    for (node, wanted) in &parties {
        let mut api = local::connect(&node.running.local_endpoint(), &node.admin_token).await?;
        loop {
            let held = local::list_governance(&mut api).await?.agreements;
            let absent: Vec<String> = wanted
                .iter()
                .map(|id| id.to_string())
                .filter(|id| !held.iter().any(|a| &a.id == id && a.status == "active"))
                .collect();
            if absent.is_empty() {
                break;
            }
            if started.elapsed() > SPREAD_DEADLINE {
                missing.push(format!(
                    "{} lacks {}",
                    node.config.node.municipality_name,
                    absent.join(", ")
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if missing.is_empty() {
        story.expected(format!(
            "all three agreements are in force at every party (Vejle, Aarhus, Silkeborg) after {} ms",
            started.elapsed().as_millis()
        ));
    } else {
        story.unexpected(format!(
            "agreements did not reach their parties within {} s: {}",
            SPREAD_DEADLINE.as_secs(),
            missing.join("; ")
        ));
    }

    hellos(federation, story).await;
    Ok(Governed {
        roster_file,
        aarhus_air: aarhus_air.id().to_string(),
        silkeborg_air: silkeborg_air.id().to_string(),
        aarhus_records: aarhus_records.id().to_string(),
        period: (midnight_before(2), midnight_before(0)),
    })
}

/// Every node says hello to every other over mutual TLS. All certificates
/// come from one CA, so every handshake works; the roster decides who
/// learns anything.
async fn hellos(federation: &DevFederation, story: &mut Story) {
    println!("  Hello over mutual TLS, every node to every other:");
    let mut members_greeted = 0;
    let mut outsider_refused = 0;
    let mut refused_outsider = 0;
    let mut odd = Vec::new();
    for caller in &federation.nodes {
        for target in &federation.nodes {
            if std::ptr::eq(caller, target) {
                continue;
            }
            let code = |n: &DevNode| n.running.identity.municipality_code;
            let (from_member, to_member) = (
                MEMBERS.contains(&code(caller)),
                MEMBERS.contains(&code(target)),
            );
            let answer = hello(caller, target).await;
            match (answer, from_member, to_member) {
                (Ok(()), true, true) => members_greeted += 1,
                (Err(why), false, true) if why.contains("PermissionDenied") => {
                    outsider_refused += 1
                }
                (Err(why), true, false) if why.contains("PermissionDenied") => {
                    refused_outsider += 1
                }
                (outcome, _, _) => odd.push(format!(
                    "{} -> {}: {outcome:?}",
                    caller.running.identity.municipality_name,
                    target.running.identity.municipality_name
                )),
            }
        }
    }
    story.check(
        members_greeted == 6,
        format!(
            "members greet each other: {members_greeted} of 6 hellos answered with the node's \
             identity"
        ),
    );
    story.check(
        outsider_refused == 3 && refused_outsider == 3,
        format!(
            "Albertslund is refused by all three members ({outsider_refused} of 3), and refuses \
             them ({refused_outsider} of 3): the TLS handshake works (same CA) but a node \
             answers only members of a fellowship it follows, saying nothing more"
        ),
    );
    for line in odd {
        story.unexpected(line);
    }
}

async fn hello(caller: &DevNode, target: &DevNode) -> Result<(), String> {
    let mut peer = client::connect(
        &target.running.peer_endpoint(),
        &caller.running.identity.tls,
    )
    .await
    .map_err(|e| e.to_string())?;
    let answer = peer
        .hello(HelloRequest {
            caller: Some(caller.running.identity.to_proto()),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    if answer.node != Some(target.running.identity.to_proto()) {
        return Err("answered as another node".to_string());
    }
    Ok(())
}
