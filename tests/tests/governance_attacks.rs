//! Governance under attack, end to end on real nodes (devnet, real mutual
//! TLS, real stores) sharing one manual clock: Aarhus (751), Vejle (630)
//! and Silkeborg (740) in one fellowship.
//!
//! - Whoever holds the secretariat key signs a roster serial that replaces
//!   Aarhus's own signing key, and "signs as provider" with the new key:
//!   every node quarantines the roster (it changes a member's entry without
//!   that member's signature); Aarhus, offered it by a compromised partner,
//!   alerts its operator, keeps its roster and keeps serving its genuine
//!   agreements, and never accepts the forged consent.
//! - The secretariat swaps Vejle's certificate fingerprint for one it
//!   holds: quarantined at Aarhus, and the swapped-in certificate opens
//!   nothing; signed by Vejle, the same change is applied.
//! - The same rotation signed by Aarhus itself is applied; once Aarhus runs
//!   with its new key, agreements it re-signs are in force again.
//! - A member floods governance: hundreds of maximum-size agreements that
//!   need several sync pages, and documents far over the size limit sent
//!   straight to its partners' sync endpoint. The roster serial that
//!   removes it still reaches every node, and every node then refuses it.
//! - An operator resolves a forked roster with an explicit re-pin.
//! - A member cannot squat the id of another member's agreement.

use samvirke_node::clock::SharedClock;
use samvirke_node::devnet::DevNode;
use samvirke_node::governance::roster::MemberUpdate;
use samvirke_node::governance::{
    Agreement, AgreementBody, Consumers, DecisionRule, Operation, Roster,
};
use samvirke_node::identity::{generate_signing_key, write_signing_key};
use samvirke_node::server::{Listeners, Node};
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_tests::{GovernanceFixture, assert_denied, assert_status, eventually};
use time::OffsetDateTime;
use time::macros::{date, datetime};
use tonic::Code;

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const SILKEBORG: u32 = 740;
const NOW: OffsetDateTime = datetime!(2025-06-01 09:00 UTC);
const DATASET: &str = "aarhus-air-quality";

async fn fellowship() -> (GovernanceFixture, Roster) {
    let fx = GovernanceFixture::start(&[AARHUS, VEJLE, SILKEBORG], NOW).await;
    let serial_1 = fx.anchor(DecisionRule::Secretariat, &[AARHUS, VEJLE, SILKEBORG]);
    fx.import_everywhere(&serial_1).await;
    let mut admin = fx.admin(AARHUS).await;
    admin
        .publish_dataset(wire::dataset_to_proto(
            &samvirke_node::data::sensor_dataset("air-quality", AARHUS).expect("dataset"),
        ))
        .await
        .expect("publish");
    (fx, serial_1)
}

/// Aarhus shares its air quality with Vejle (read), signed by both.
async fn genuine_agreement(fx: &GovernanceFixture) -> Agreement {
    let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
    terms.scope.datasets = vec![DATASET.to_string()];
    terms.valid_until = datetime!(2027-01-01 00:00 UTC);
    let agreement = fx.agreement(&terms, &[AARHUS, VEJLE]);
    fx.import_agreement(AARHUS, &agreement.to_bytes())
        .await
        .expect("the genuine agreement");
    agreement
}

async fn alerts(fx: &GovernanceFixture, code: u32) -> Vec<String> {
    fx.admin(code)
        .await
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .alerts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secretariat_cannot_replace_a_members_key_or_speak_for_it() {
    let (fx, serial_1) = fellowship().await;
    let genuine = genuine_agreement(&fx).await;
    let attacker = generate_signing_key().expect("key");

    // Serial 2: Aarhus's signing key replaced, signed by the secretariat
    // alone (the rule `secretariat` is satisfied).
    let forged_roster = fx.sign_roster(
        &fx.next_roster(&serial_1, |body| {
            body.update_member(
                AARHUS,
                MemberUpdate {
                    signing_key: Some(attacker.verifying_key()),
                    ..MemberUpdate::default()
                },
            )
            .expect("replace the key");
        }),
        &[&fx.secretariat],
    );
    // Aarhus's operator is not fooled by a direct import.
    let refused = assert_status(
        fx.import_roster(AARHUS, &forged_roster.to_bytes(), false)
            .await,
        &[Code::FailedPrecondition],
        &[
            "quarantined",
            "changes a member's own entry",
            "signing_key",
            "without that member's signature",
            "this node's entry needs the key this node holds",
        ],
    );
    assert!(refused.contains("keeps serial 1"), "{refused}");
    // Nor is any other member: Vejle cannot hold a roster that speaks for
    // Aarhus without Aarhus's signature either.
    assert_status(
        fx.import_roster(VEJLE, &forged_roster.to_bytes(), false)
            .await,
        &[Code::FailedPrecondition],
        &["quarantined", "member Aarhus Kommune 751", "keeps serial 1"],
    );
    // So an agreement "signed as provider Aarhus" with the attacker's key
    // is refused at Vejle too: its roster still lists Aarhus's real key.
    let mut terms: AgreementBody = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
    terms.scope.datasets = vec![DATASET.to_string()];
    terms.purpose = "Forged consent".to_string();
    let forged = fx.sign_agreement(&terms, &[&attacker, fx.key(VEJLE)]);
    fx.import_agreement(VEJLE, &forged.to_bytes())
        .await
        .expect_err("Vejle refuses consent Aarhus did not sign");

    // The attack from a compromised member: Vejle's node pushes the forged
    // roster and agreement straight at Aarhus's sync endpoint.
    fx.peer(VEJLE, AARHUS)
        .await
        .sync_governance(pb::SyncGovernanceRequest {
            rosters: vec![pb::SignedDocumentBytes {
                content: forged_roster.to_bytes(),
            }],
            agreements: vec![pb::SignedDocumentBytes {
                content: forged.to_bytes(),
            }],
            ..Default::default()
        })
        .await
        .expect("the offer itself is answered");

    // Aarhus alerts its operator, keeps serial 1 and never holds the forgery.
    let alert = eventually("Aarhus raises a quarantine alert", || async {
        alerts(&fx, AARHUS)
            .await
            .into_iter()
            .find(|a| a.contains("quarantined"))
    })
    .await;
    assert!(alert.contains("serial 2 of `digit`"), "{alert}");
    let listed = fx.list(AARHUS).await;
    assert_eq!(listed.rosters[0].serial, 1);
    assert_eq!(listed.quarantined.len(), 1);
    assert!(
        listed.quarantined[0].changes.contains("signing_key"),
        "{:?}",
        listed.quarantined
    );
    assert!(
        listed
            .agreements
            .iter()
            .all(|a| a.id != forged.id().to_string())
    );
    // Another round of anti-entropy changes nothing.
    assert_eq!(fx.list(AARHUS).await.rosters[0].serial, 1);

    // The forged agreement opens nothing; the genuine one still works.
    assert_denied(
        fx.check(VEJLE, AARHUS, &forged, Operation::Read, DATASET)
            .await,
        &["is not known here, or does not name you"],
    );
    fx.check(VEJLE, AARHUS, &genuine, Operation::Read, DATASET)
        .await
        .expect("Aarhus's genuine agreement keeps working");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secretariat_cannot_swap_a_members_certificate() {
    let (fx, serial_1) = fellowship().await;
    let genuine = genuine_agreement(&fx).await;
    // A certificate from the federation CA for "Vejle", which the attacker
    // holds (a CA operator, or whoever stole a renewal).
    let swapped_in = fx.renewed_certificate(VEJLE);
    let swap = |signers: &[&ed25519_dalek::SigningKey]| {
        fx.sign_roster(
            &fx.next_roster(&serial_1, |body| {
                body.update_member(
                    VEJLE,
                    MemberUpdate {
                        tls_fingerprint: Some(swapped_in.fingerprint),
                        ..MemberUpdate::default()
                    },
                )
                .expect("swap the fingerprint");
            }),
            signers,
        )
    };
    let ask = pb::CheckAccessRequest {
        agreement_id: genuine.id().to_string(),
        operation: pb::Operation::Read as i32,
        dataset_id: DATASET.to_string(),
        claimed_member_code: VEJLE,
    };

    // Signed by the secretariat alone: quarantined at Aarhus.
    assert_status(
        fx.import_roster(AARHUS, &swap(&[&fx.secretariat]).to_bytes(), false)
            .await,
        &[Code::FailedPrecondition],
        &["quarantined", "member Vejle Kommune 630", "tls_fingerprint"],
    );
    assert_denied(
        fx.check_as(&swapped_in, AARHUS, ask.clone()).await,
        &["is not that of a current member"],
    );
    fx.check(VEJLE, AARHUS, &genuine, Operation::Read, DATASET)
        .await
        .expect("Vejle's listed certificate keeps working");

    // Signed by Vejle too (a real renewal): applied, and the renewed
    // certificate is Vejle from now on.
    fx.import_roster(
        AARHUS,
        &swap(&[&fx.secretariat, fx.key(VEJLE)]).to_bytes(),
        false,
    )
    .await
    .expect("a renewal Vejle signed");
    let grant = fx
        .check_as(&swapped_in, AARHUS, ask)
        .await
        .expect("the renewed certificate");
    assert_eq!(grant.caller_member_code, VEJLE);
    fx.shutdown().await;
}

/// Stops the node of `code` and starts it again from its directory on the
/// same addresses and clock (an operator restarting it after a change).
async fn restart(fx: &mut GovernanceFixture, code: u32) {
    let at = fx
        .fed
        .nodes
        .iter()
        .position(|n| n.running.identity.municipality_code == code)
        .expect("the node");
    let node = fx.fed.nodes.remove(at);
    let (peer, local) = (node.running.peer_addr, node.running.local_addr);
    node.running.shutdown().await.expect("shutdown");
    let clock: SharedClock = fx.clock.clone();
    let opened = Node::open(node.config.clone())
        .expect("open")
        .with_clock(clock)
        .expect("clock");
    let listeners = Listeners {
        peer: tokio::net::TcpListener::bind(peer)
            .await
            .expect("peer port"),
        local: tokio::net::TcpListener::bind(local)
            .await
            .expect("local port"),
        http: None,
        admin: None,
    };
    fx.fed.nodes.insert(
        at,
        DevNode {
            dir: node.dir,
            config: node.config,
            admin_token: node.admin_token,
            running: opened.spawn(listeners),
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_signs_the_roster_that_rotates_its_own_key() {
    let (mut fx, serial_1) = fellowship().await;
    let genuine = genuine_agreement(&fx).await;
    let new_key = generate_signing_key().expect("key");
    // The rotation, signed by the secretariat and by Aarhus's current key.
    let rotation = fx.sign_roster(
        &fx.next_roster(&serial_1, |body| {
            body.update_member(
                AARHUS,
                MemberUpdate {
                    signing_key: Some(new_key.verifying_key()),
                    ..MemberUpdate::default()
                },
            )
            .expect("rotate");
        }),
        &[&fx.secretariat, fx.key(AARHUS)],
    );
    // Imported at Vejle; it reaches Aarhus and is applied there.
    fx.import_roster(VEJLE, &rotation.to_bytes(), false)
        .await
        .expect("serial 2 at Vejle");
    eventually("Aarhus applies the rotation it signed", || async {
        (fx.list(AARHUS).await.rosters[0].serial == 2).then_some(())
    })
    .await;
    // Until Aarhus runs with its new key it cannot show its consent.
    let alert = alerts(&fx, AARHUS).await.join("\n");
    assert!(alert.contains("lists signing key"), "{alert}");
    assert_denied(
        fx.check(VEJLE, AARHUS, &genuine, Operation::Read, DATASET)
            .await,
        &["not in force"],
    );

    // The operator installs the new key and restarts the node.
    let key_file = fx.node(AARHUS).config.node.signing_key.clone();
    std::fs::remove_file(&key_file).expect("remove the old key");
    write_signing_key(&key_file, &new_key).expect("install the new key");
    restart(&mut fx, AARHUS).await;
    assert!(alerts(&fx, AARHUS).await.is_empty());
    // Both parties sign the agreement again with their current keys.
    let mut terms = genuine.body().clone();
    terms.id = AgreementBody::new_id();
    let renewed = fx.sign_agreement(&terms, &[&new_key, fx.key(VEJLE)]);
    fx.import_agreement(AARHUS, &renewed.to_bytes())
        .await
        .expect("the renewed agreement");
    fx.check(VEJLE, AARHUS, &renewed, Operation::Read, DATASET)
        .await
        .expect("in force under the rotated key");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_governance_flood_does_not_stop_its_own_removal() {
    let (fx, serial_1) = fellowship().await;
    // Silkeborg offers its data to every member; Vejle is allowed today.
    let mut admin = fx.admin(SILKEBORG).await;
    admin
        .publish_dataset(wire::dataset_to_proto(
            &samvirke_node::data::sensor_dataset("noise", SILKEBORG).expect("dataset"),
        ))
        .await
        .expect("publish");
    let mut terms = fx.terms(SILKEBORG, Consumers::All);
    terms.scope.datasets = vec!["silkeborg-noise".to_string()];
    terms.valid_until = datetime!(2027-01-01 00:00 UTC);
    let offer = fx.agreement(&terms, &[SILKEBORG]);
    fx.import_agreement(SILKEBORG, &offer.to_bytes())
        .await
        .expect("Silkeborg's offer");
    fx.check(VEJLE, SILKEBORG, &offer, Operation::Read, "silkeborg-noise")
        .await
        .expect("Vejle is a member today");
    // Aarhus shares with Vejle too, while Vejle is a member (an agreement
    // naming a consumer that has left is refused at import).
    let genuine = genuine_agreement(&fx).await;

    // The flood, part 1: 450 agreements of the largest allowed purpose,
    // valid and offered to all members (so every node may take them),
    // pushed straight at Aarhus's sync endpoint: over a megabyte, more than
    // one sync page between Aarhus and Silkeborg.
    let purpose = "x".repeat(2_000);
    let flood: Vec<pb::SignedDocumentBytes> = (0..450)
        .map(|_| {
            let mut terms = fx.terms(VEJLE, Consumers::All);
            terms.scope.datasets = vec!["vejle-anything".to_string()];
            terms.purpose = purpose.clone();
            pb::SignedDocumentBytes {
                content: fx.agreement(&terms, &[VEJLE]).to_bytes(),
            }
        })
        .collect();
    assert!(flood.iter().map(|d| d.content.len()).sum::<usize>() > 1 << 20);
    // A node looks at most MAX_OFFERED documents per offer: two offers.
    let mut to_aarhus = fx.peer(VEJLE, AARHUS).await;
    for page in flood.chunks(samvirke_node::governance::registry::MAX_OFFERED) {
        to_aarhus
            .sync_governance(pb::SyncGovernanceRequest {
                agreements: page.to_vec(),
                ..Default::default()
            })
            .await
            .expect("Aarhus takes the valid flood");
    }
    // Part 2: documents far over the size limit, at both partners, as
    // close to the message limit as fits.
    let huge = {
        let mut terms = fx.terms(VEJLE, Consumers::All);
        terms.purpose = "y".repeat(100);
        let text = String::from_utf8(fx.agreement(&terms, &[VEJLE]).to_bytes()).expect("utf8");
        text.replace(&"y".repeat(100), &"y".repeat(1_200_000))
            .into_bytes()
    };
    for target in [SILKEBORG, AARHUS] {
        let document = pb::SignedDocumentBytes {
            content: huge.clone(),
        };
        fx.peer(VEJLE, target)
            .await
            .sync_governance(pb::SyncGovernanceRequest {
                agreements: vec![document.clone(), document.clone()],
                rosters: vec![document],
                ..Default::default()
            })
            .await
            // The page is answered; the documents are refused one by one.
            .expect("the sync call itself is answered");
    }
    eventually("every node holds Vejle's 450 agreements", || async {
        let counts = [
            fx.list(AARHUS).await.agreements.len(),
            fx.list(SILKEBORG).await.agreements.len(),
        ];
        (counts[0] >= 451 && counts[1] >= 451).then_some(())
    })
    .await;

    // The secretariat removes Vejle as of today, at Aarhus only.
    let today = NOW.date();
    let removal = fx.sign_roster(
        &fx.next_roster(&serial_1, |body| {
            body.mark_left(VEJLE, today).expect("left");
        }),
        &[&fx.secretariat],
    );
    fx.import_roster(AARHUS, &removal.to_bytes(), false)
        .await
        .expect("serial 2 at Aarhus");
    eventually("the removal reaches Silkeborg", || async {
        (fx.list(SILKEBORG).await.rosters[0].serial == 2).then_some(())
    })
    .await;
    let message = assert_denied(
        fx.check(VEJLE, SILKEBORG, &offer, Operation::Read, "silkeborg-noise")
            .await,
        &["is not that of a current member"],
    );
    assert!(!message.contains("digit"), "{message}");
    assert_denied(
        fx.check(VEJLE, AARHUS, &genuine, Operation::Read, DATASET)
            .await,
        &["is not that of a current member"],
    );
    // Vejle's own node sees the serial too and is told it is out.
    eventually("Vejle learns it left", || async {
        alerts(&fx, VEJLE).await.into_iter().find(|a| {
            a.contains("left fellowship digit on 2025-06-01 per roster serial 2")
                && a.contains("partners will refuse its calls")
        })
    })
    .await;
    assert_eq!(today, date!(2025 - 06 - 01));
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_resolves_a_forked_roster_by_re_pinning() {
    // Silkeborg alone (no partner to sync with, so the fork stays put).
    let fx = GovernanceFixture::start(&[SILKEBORG], NOW).await;
    let serial_1 = fx.anchor(DecisionRule::Secretariat, &[SILKEBORG]);
    fx.import_everywhere(&serial_1).await;
    // Two different serial 2s: Silkeborg got one; the secretariat went on
    // from the other.
    let fork_a = fx.sign_roster(
        &fx.next_roster(&serial_1, |body| body.name = "DIGIT (a)".to_string()),
        &[&fx.secretariat],
    );
    let fork_b = fx.sign_roster(
        &fx.next_roster(&serial_1, |body| body.name = "DIGIT (b)".to_string()),
        &[&fx.secretariat],
    );
    let serial_3 = fx.sign_roster(
        &fx.next_roster(&fork_b, |body| body.name = "DIGIT".to_string()),
        &[&fx.secretariat],
    );
    fx.import_roster(SILKEBORG, &fork_a.to_bytes(), false)
        .await
        .expect("fork a");
    // Silkeborg cannot follow: serial 3 does not continue its chain.
    assert_status(
        fx.import_roster(SILKEBORG, &serial_3.to_bytes(), false)
            .await,
        &[Code::FailedPrecondition],
        &["does not continue the chain"],
    );
    let repin = |roster: &Roster| pb::ImportRosterRequest {
        document: Some(pb::SignedDocumentBytes {
            content: roster.to_bytes(),
        }),
        repin: true,
        ..Default::default()
    };
    // Re-pinning needs a roster its own secretariat signed.
    let unsigned = fx.sign_roster(
        &fx.next_roster(&serial_3, |body| body.name = "Forged".to_string()),
        &[fx.key(SILKEBORG)],
    );
    assert_status(
        fx.admin(SILKEBORG)
            .await
            .import_roster(repin(&unsigned))
            .await,
        &[Code::FailedPrecondition],
        &["not signed by its own secretariat key"],
    );
    // Re-pinning the secretariat's current roster resolves it, on record.
    let repinned = fx
        .admin(SILKEBORG)
        .await
        .import_roster(repin(&serial_3))
        .await
        .expect("re-pin")
        .into_inner();
    assert!(repinned.changed);
    let held = fx.list(SILKEBORG).await;
    assert_eq!(
        (held.rosters[0].serial, held.rosters[0].name.as_str()),
        (3, "DIGIT")
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agreement_id_cannot_be_squatted_by_another_member() {
    let (fx, _) = fellowship().await;
    let genuine = genuine_agreement(&fx).await;
    // Vejle drafts an agreement of its own under Aarhus's agreement id
    // (ids are visible to every party) and imports it at both nodes
    // first, hoping the genuine one is then refused as a conflict.
    let mut terms = fx.terms(VEJLE, Consumers::Named(vec![AARHUS]));
    terms.id = genuine.id();
    terms.scope.datasets = vec!["vejle-anything".to_string()];
    let squat = fx.agreement(&terms, &[VEJLE, AARHUS]);
    for code in [VEJLE, AARHUS] {
        fx.import_agreement(code, &squat.to_bytes())
            .await
            .expect("a provider may use any fresh id of its own");
    }
    // Both stand, each under its own provider; the genuine one is in force
    // at Aarhus and reaches Vejle intact.
    fx.check(VEJLE, AARHUS, &genuine, Operation::Read, DATASET)
        .await
        .expect("the genuine agreement still works");
    eventually("Vejle holds both agreements of that id", || async {
        let held = fx.list(VEJLE).await.agreements;
        let providers: Vec<u32> = held
            .iter()
            .filter(|a| a.id == genuine.id().to_string())
            .map(|a| a.provider)
            .collect();
        (providers.len() == 2).then_some(())
    })
    .await;
    fx.shutdown().await;
}
