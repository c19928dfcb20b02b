//! The governance part of the demo: a signed roster and agreement, spread
//! by anti-entropy, and peer calls allowed or denied by them.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use samvirke_node::devnet::{DevFederation, DevNode};
use samvirke_node::governance::files::IdentityCard;
use samvirke_node::governance::{
    AgreementBody, Consumers, DecisionRule, LegalBasis, Operation, RosterBody, Scope,
};
use samvirke_node::identity::{generate_signing_key, write_signing_key};
use samvirke_node::peer::client;
use samvirke_proto::v1::{
    CheckAccessRequest, ImportAgreementRequest, ImportRosterRequest, ListGovernanceRequest,
    Operation as WireOperation, SignedDocumentBytes,
};
use time::OffsetDateTime;

use crate::local;

/// The dataset Aarhus shares in the demo.
pub const DATASET: &str = "aarhus-air-quality";

/// The members of the demo roster: Aarhus and Vejle (Albertslund is in
/// another fellowship, whose roster these nodes do not hold).
pub const MEMBERS: [u32; 2] = [751, 630];
/// How long the demo waits for anti-entropy to carry the agreement.
const SPREAD_DEADLINE: Duration = Duration::from_secs(10);

/// What the governance story leaves for the data story.
#[derive(Debug)]
pub struct Outcome {
    /// Steps that went otherwise than expected.
    pub failures: usize,
    /// The air-quality agreement (Aarhus to Vejle, aggregates only).
    pub agreement: String,
}

/// Runs the governance story.
pub async fn show(federation: &DevFederation, dir: &Path) -> anyhow::Result<Outcome> {
    let [aarhus, vejle, albertslund] = &federation.nodes[..] else {
        bail!("the demo needs exactly three nodes");
    };
    let now = OffsetDateTime::now_utc();
    println!("Governance: GovTech Midtjylland (Aarhus, Vejle); Albertslund is not a member.");

    // The secretariat's key lives with the secretariat, not on any node.
    let secretariat = generate_signing_key()?;
    write_signing_key(&dir.join("govtech-secretariat.pem"), &secretariat)?;

    let member = |node: &DevNode| {
        IdentityCard::of_node(&node.running.identity, &node.running.peer_endpoint())
            .to_member(time::macros::date!(2020 - 01 - 01))
    };
    let mut roster = RosterBody::first(
        "govtech-midtjylland",
        "GovTech Midtjylland",
        secretariat.verifying_key(),
        DecisionRule::Quorum(1),
        now,
        vec![member(aarhus)?, member(vejle)?],
    )
    .to_draft()?;
    roster.sign(&secretariat)?;
    println!(
        "  roster serial {} signed by the secretariat (rule quorum:1), digest {}",
        roster.serial(),
        roster.digest()
    );

    let mut agreement = AgreementBody {
        id: AgreementBody::new_id(),
        fellowship: "govtech-midtjylland".to_string(),
        provider: aarhus.running.identity.municipality_code,
        consumers: Consumers::Named(vec![vejle.running.identity.municipality_code]),
        scope: Scope {
            datasets: vec![DATASET.to_string()],
            kinds: Vec::new(),
            keywords: Vec::new(),
        },
        operations: vec![Operation::Catalog, Operation::Aggregate],
        min_group_size: Some(5),
        purpose: "Compare air quality in Aarhus and Vejle for the joint clean-air pilot"
            .to_string(),
        legal_basis: LegalBasis {
            code: "GDPR art. 6(1)(e)".to_string(),
            text: "Task in the public interest: municipal environmental monitoring".to_string(),
        },
        excluded_fields: Vec::new(),
        valid_from: now - time::Duration::days(1),
        valid_until: now + time::Duration::days(365),
        aggregate: Default::default(),
    }
    .to_draft()?;
    agreement.sign(aarhus.running.identity.signing_key())?;
    agreement.sign(vejle.running.identity.signing_key())?;
    println!(
        "  agreement {} (Aarhus shares `{DATASET}` with Vejle: catalog and aggregates of 5 or more) \
         signed by Aarhus and Vejle",
        agreement.id()
    );

    // Each member's operator pins the roster; only Aarhus imports the agreement.
    for node in [aarhus, vejle] {
        let mut api = local::connect(&node.running.local_endpoint(), &node.admin_token).await?;
        api.import_roster(ImportRosterRequest {
            document: Some(SignedDocumentBytes {
                content: roster.to_bytes(),
            }),
            trust_anchor: true,
            ..Default::default()
        })
        .await
        .context("importing the roster")?;
    }
    let mut aarhus_api =
        local::connect(&aarhus.running.local_endpoint(), &aarhus.admin_token).await?;
    let imported = aarhus_api
        .import_agreement(ImportAgreementRequest {
            document: Some(SignedDocumentBytes {
                content: agreement.to_bytes(),
            }),
        })
        .await
        .context("importing the agreement")?
        .into_inner();
    let status = imported
        .agreement
        .map(|a| a.status_detail)
        .unwrap_or_default();
    println!("  imported at Aarhus: {status}");

    let mut failures = 0;
    let started = Instant::now();
    let mut vejle_api = local::connect(&vejle.running.local_endpoint(), &vejle.admin_token).await?;
    let id = agreement.id().to_string();
    loop {
        let held = vejle_api
            .list_governance(ListGovernanceRequest {})
            .await?
            .into_inner()
            .agreements
            .into_iter()
            .any(|a| a.id == id && a.status == "active");
        if held {
            println!(
                "  anti-entropy: the agreement is active at Vejle after {} ms, with no central server",
                started.elapsed().as_millis()
            );
            break;
        }
        if started.elapsed() > SPREAD_DEADLINE {
            failures += 1;
            println!("  FAIL  the agreement did not reach Vejle within {SPREAD_DEADLINE:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!();
    println!("Peer calls to Aarhus under agreement {id}:");
    let calls = [
        (vejle, WireOperation::Aggregate, true),
        (vejle, WireOperation::Read, false),
        (albertslund, WireOperation::Aggregate, false),
    ];
    for (caller, operation, expect_allowed) in calls {
        let mut peer = client::connect(
            &aarhus.running.peer_endpoint(),
            &caller.running.identity.tls,
        )
        .await?;
        let answer = peer
            .check_access(CheckAccessRequest {
                agreement_id: id.clone(),
                operation: operation as i32,
                dataset_id: DATASET.to_string(),
                claimed_member_code: caller.running.identity.municipality_code,
            })
            .await;
        let who = &caller.running.identity.municipality_name;
        let what = operation
            .as_str_name()
            .trim_start_matches("OPERATION_")
            .to_lowercase();
        let line = match &answer {
            Ok(grant) => format!(
                "{who} asks to {what} `{DATASET}`: ALLOWED (aggregates of groups of {} or more)",
                grant.get_ref().min_group_size
            ),
            Err(status) => format!(
                "{who} asks to {what} `{DATASET}`: DENIED ({:?}): {}",
                status.code(),
                status.message()
            ),
        };
        if answer.is_ok() == expect_allowed {
            println!("  ok    {line}");
        } else {
            failures += 1;
            println!("  FAIL  {line}");
        }
    }
    Ok(Outcome {
        failures,
        agreement: id,
    })
}
