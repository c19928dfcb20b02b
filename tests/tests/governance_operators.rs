//! What operators of real nodes see and are refused, end to end: real
//! nodes (devnet, sled stores, mutual TLS on loopback) sharing one manual
//! clock, documents built and signed the way the `samvirke` CLI builds them.
//!
//! Covered:
//! - an agreement naming a consumer who is not a member, or who left, is
//!   refused at `Local/ImportAgreement` with the consumer and the reason;
//! - `Local/ListGovernance` in pages: two thousand agreements listed
//!   through page tokens, none lost or duplicated, no page over its limits;
//!   a token the node did not give is refused;
//! - a node whose own membership ended says so in `Status` (memberships
//!   and alerts), naming itself, the fellowship, the date and the serial;
//! - a roster a partner offers for a fellowship this node has not pinned
//!   is named in `Status` with its digest and what to do, until pinned.

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use prost::Message;
use samvirke_node::governance::roster::Member;
use samvirke_node::governance::{Consumers, DecisionRule, Roster};
use samvirke_node::identity::{Fingerprint, generate_signing_key};
use samvirke_node::local::{LIST_PAGE_BYTES, LIST_PAGE_DEFAULT, LIST_PAGE_MAX};
use samvirke_proto::v1 as pb;
use samvirke_tests::{FELLOWSHIP, GovernanceFixture, assert_status, eventually};
use time::OffsetDateTime;
use time::macros::{date, datetime};
use tonic::Code;

const GREVE: u32 = 253;
const HOLBAEK: u32 = 316;
const ROSKILDE: u32 = 265;

/// Inside the fixture's default agreement window (2024-01-01..2026-01-01).
const NOW: OffsetDateTime = datetime!(2025-06-01 09:00 UTC);

async fn status(fx: &GovernanceFixture, code: u32) -> pb::StatusResponse {
    fx.admin(code)
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agreement_naming_a_non_member_or_a_departed_consumer_is_refused_at_import() {
    let fx = GovernanceFixture::start(&[GREVE, HOLBAEK, ROSKILDE], NOW).await;
    // Roskilde left on 2025-03-01, before now.
    let mut members = fx.members(&[GREVE, HOLBAEK, ROSKILDE]);
    for member in &mut members {
        if member.code == ROSKILDE {
            member.left = Some(date!(2025 - 03 - 01));
        }
    }
    let roster = fx.sign_roster(
        &fx.first_roster(DecisionRule::Secretariat, members),
        &[&fx.secretariat],
    );
    fx.import_roster(GREVE, &roster.to_bytes(), true)
        .await
        .expect("pin the roster at Greve");

    // 999 is no member of DIGIT at all.
    let stranger = fx.agreement(
        &fx.terms(GREVE, Consumers::Named(vec![HOLBAEK, 999])),
        &[GREVE],
    );
    let message = assert_status(
        fx.import_agreement(GREVE, &stranger.to_bytes()).await,
        &[Code::FailedPrecondition],
        &[
            &stranger.id().to_string(),
            "consumer 999 is not a member of `digit`",
        ],
    );
    assert!(message.contains("roster serial 1"), "{message}");

    // Roskilde left on 2025-03-01: named with its name and the date.
    let departed = fx.agreement(&fx.terms(GREVE, Consumers::Named(vec![ROSKILDE])), &[GREVE]);
    assert_status(
        fx.import_agreement(GREVE, &departed.to_bytes()).await,
        &[Code::FailedPrecondition],
        &["consumer 265", "left `digit` on 2025-03-01"],
    );

    // Leaving on or before valid_from is refused even before the date.
    fx.set_now(datetime!(2023-06-01 00:00 UTC));
    let mut terms = fx.terms(GREVE, Consumers::Named(vec![ROSKILDE]));
    terms.valid_from = datetime!(2025-03-01 00:00 UTC);
    terms.valid_until = datetime!(2026-03-01 00:00 UTC);
    let never = fx.agreement(&terms, &[GREVE]);
    assert_status(
        fx.import_agreement(GREVE, &never.to_bytes()).await,
        &[Code::FailedPrecondition],
        &[
            "consumer 265",
            "left `digit` on 2025-03-01",
            "before the agreement is in force",
        ],
    );
    fx.set_now(NOW);

    // Current members pass; nothing refused was kept.
    let fine = fx.agreement(&fx.terms(GREVE, Consumers::Named(vec![HOLBAEK])), &[GREVE]);
    fx.import_agreement(GREVE, &fine.to_bytes())
        .await
        .expect("Holbæk is a current member");
    let listed = fx.list(GREVE).await;
    assert_eq!(listed.agreements.len(), 1);
    assert_eq!(listed.agreements[0].id, fine.id().to_string());
    fx.shutdown().await;
}

/// A roster member with a fresh key that runs no node: a provider of
/// agreements for the paging test.
fn paper_member(code: u32) -> (Member, SigningKey) {
    let key = generate_signing_key().expect("key");
    let member = Member {
        code,
        name: format!("Kommune {code}"),
        node_id: uuid::Uuid::now_v7(),
        endpoint: format!("https://samvirke-{code}.example.dk:7443"),
        signing_key: key.verifying_key(),
        tls_fingerprint: Fingerprint::of_der(format!("certificate of {code}").as_bytes()),
        joined: date!(2016 - 01 - 01),
        left: None,
    };
    (member, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_agreements_list_through_pages_none_lost_or_duplicated() {
    let fx = GovernanceFixture::start(&[GREVE], NOW).await;
    // Four providers, each at the per-provider cap of 500 agreements.
    let providers: Vec<(Member, SigningKey)> =
        [101, 147, 151, 153].into_iter().map(paper_member).collect();
    let mut members = fx.members(&[GREVE]);
    members.extend(providers.iter().map(|(m, _)| m.clone()));
    let roster = fx.sign_roster(
        &fx.first_roster(DecisionRule::Secretariat, members),
        &[&fx.secretariat],
    );
    fx.import_roster(GREVE, &roster.to_bytes(), true)
        .await
        .expect("pin the roster");
    let mut expected = BTreeSet::new();
    let mut files = Vec::new();
    for (member, key) in &providers {
        for _ in 0..samvirke_node::governance::registry::MAX_AGREEMENTS_PER_PROVIDER {
            let agreement = fx.sign_agreement(&fx.terms(member.code, Consumers::All), &[key]);
            expected.insert(agreement.id().to_string());
            files.push(agreement.to_bytes());
        }
    }
    assert_eq!(expected.len(), 2000);
    // The path partners' offers take (verified, one flush per page).
    let registry = std::sync::Arc::clone(&fx.node(GREVE).running.registry);
    let changed = tokio::task::spawn_blocking(move || {
        let fellowships: BTreeSet<String> = [FELLOWSHIP.to_string()].into();
        files
            .chunks(samvirke_node::governance::registry::MAX_OFFERED)
            .map(|page| {
                registry
                    .import_offer(101, &fellowships, &[], page)
                    .expect("import")
            })
            .sum::<usize>()
    })
    .await
    .expect("import task");
    assert_eq!(changed, 2000);

    for (page_size, limit) in [
        (0, LIST_PAGE_DEFAULT),
        (LIST_PAGE_MAX, LIST_PAGE_MAX),
        (50_000, LIST_PAGE_MAX),
        (7, 7),
    ] {
        let (all, pages) = fx.list_pages(GREVE, page_size).await;
        let listed: Vec<&str> = all.agreements.iter().map(|a| a.id.as_str()).collect();
        let unique: BTreeSet<String> = listed.iter().map(|id| id.to_string()).collect();
        assert_eq!(listed.len(), 2000, "page size {page_size}: none duplicated");
        assert_eq!(unique, expected, "page size {page_size}: none lost");
        assert_eq!(all.rosters.len(), 1);
        for page in &pages {
            let items = page.rosters.len() + page.agreements.len();
            assert!(
                items <= limit as usize,
                "page size {page_size}: {items} items"
            );
            assert!(page.encoded_len() <= LIST_PAGE_BYTES + 1024);
        }
        let needed = 2001usize.div_ceil(limit as usize);
        assert_eq!(pages.len(), needed, "page size {page_size}: full pages");
    }

    assert_status(
        fx.admin(GREVE)
            .await
            .list_governance(pb::ListGovernanceRequest {
                page_size: 10,
                page_token: "a:101:not-an-id".to_string(),
            })
            .await,
        &[Code::InvalidArgument],
        &["page_token", "start again with an empty token"],
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_membership_ended_says_so_in_its_status() {
    let fx = GovernanceFixture::start(&[GREVE, HOLBAEK], NOW).await;
    let serial_1 = fx.anchor(DecisionRule::Secretariat, &[GREVE, HOLBAEK]);
    fx.import_everywhere(&serial_1).await;
    let before = status(&fx, HOLBAEK).await;
    assert_eq!(before.memberships.len(), 1);
    assert!(before.memberships[0].current, "{:?}", before.memberships);
    assert!(before.alerts.is_empty(), "{:?}", before.alerts);

    // Holbæk left on 2025-05-01, as serial 2 says.
    let serial_2: Roster = fx.sign_roster(
        &fx.next_roster(&serial_1, |body| {
            body.mark_left(HOLBAEK, date!(2025 - 05 - 01))
                .expect("left");
        }),
        &[&fx.secretariat],
    );
    fx.import_roster(HOLBAEK, &serial_2.to_bytes(), false)
        .await
        .expect("serial 2 at Holbæk");
    let after = status(&fx, HOLBAEK).await;
    let membership = &after.memberships[0];
    assert_eq!(
        (
            membership.fellowship.as_str(),
            membership.serial,
            membership.current,
            membership.listed,
            membership.left.as_str()
        ),
        ("digit", 2, false, true, "2025-05-01")
    );
    let name = &fx.member(HOLBAEK).name;
    let said = format!(
        "this node (316 {name}) left fellowship digit on 2025-05-01 per roster serial 2: \
         partners will refuse its calls"
    );
    assert_eq!(membership.detail, said);
    assert_eq!(
        after.alerts.iter().filter(|a| **a == said).count(),
        1,
        "{:?}",
        after.alerts
    );
    // Greve still is a member, and says nothing of it.
    let greve = status(&fx, GREVE).await;
    eventually("serial 2 reaches Greve", || async {
        (fx.list(GREVE).await.rosters[0].serial == 2).then_some(())
    })
    .await;
    assert!(greve.alerts.iter().all(|a| !a.contains("left fellowship")));
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_offered_for_a_fellowship_not_pinned_here_is_named_with_its_digest() {
    let fx = GovernanceFixture::start(&[GREVE, HOLBAEK], NOW).await;
    let serial_1 = fx.anchor(DecisionRule::Secretariat, &[GREVE, HOLBAEK]);
    // Pinned at Greve only: Greve offers it to Holbæk, which never pinned it.
    fx.import_roster(GREVE, &serial_1.to_bytes(), true)
        .await
        .expect("pin at Greve");
    let offer = eventually("Holbæk names the unpinned roster", || async {
        status(&fx, HOLBAEK)
            .await
            .unpinned_rosters
            .into_iter()
            .next()
    })
    .await;
    assert_eq!((offer.fellowship.as_str(), offer.serial), (FELLOWSHIP, 1));
    assert_eq!(offer.digest, serial_1.digest().to_string());
    assert!(offer.partner.contains("certificate"), "{}", offer.partner);
    assert!(
        offer.detail.contains(&format!(
            "roster serial 1 for digit offered by partner {} is not pinned here: check digest {} \
             with the secretariat, then `samvirke push FILE --trust-anchor`",
            offer.partner,
            serial_1.digest()
        )),
        "{}",
        offer.detail
    );
    let alerts = status(&fx, HOLBAEK).await.alerts;
    assert_eq!(
        alerts.iter().filter(|a| **a == offer.detail).count(),
        1,
        "{alerts:?}"
    );

    // Once pinned, the notice is gone.
    fx.import_roster(HOLBAEK, &serial_1.to_bytes(), true)
        .await
        .expect("pin at Holbæk");
    let after = status(&fx, HOLBAEK).await;
    assert!(after.unpinned_rosters.is_empty(), "{after:?}");
    assert!(after.alerts.iter().all(|a| !a.contains("not pinned here")));
    fx.shutdown().await;
}
