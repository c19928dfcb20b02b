//! Anti-entropy: how rosters and agreements spread between nodes without
//! a central server, even while a member tries to stop them.
//!
//! Each node runs [`run`]: a round compares documents with every partner
//! (the current members of the fellowships this node belongs to), each
//! partner on its own task with its own timeout, so one partner can delay
//! only its own exchange. A round starts at once whenever the registry
//! changes, and otherwise every `sync_interval`, to catch up with partners
//! that were down.
//!
//! One exchange is a series of pages ([`sync_with`]). Every page carries
//! every shared roster head and the roster serials the other side lacks
//! first, so a roster (a revocation among them) always gets through,
//! whatever else is waiting. Agreements follow in key order, one range of
//! keys per page and about [`PAGE_BYTES`] of documents per message, with a
//! cursor, so neither many agreements nor large ones can make a message
//! exceed the transport's limit, and documents one side refuses cannot
//! stall the pages behind them. Only agreements the other side is a party
//! to are described or sent: members learn nothing of agreements between
//! others.
//!
//! Every document is verified on arrival exactly as an operator import is,
//! so a partner can delay news but never forge it. Failures are logged at
//! WARN with the partner and the reason when a partner's state changes
//! (not every round), and its recovery at INFO.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use samvirke_proto::v1::{
    self as pb, SignedDocumentBytes, SyncGovernanceRequest, SyncGovernanceResponse,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::agreement::Agreement;
use super::authorize::{AgreementKey, GovernanceView, key_of};
use super::registry::{Partner, Registry, is_party};
use crate::identity::signing_key_text;
use crate::partners::PartnerPool as PeerPool;
use crate::store::StoreError;

/// Documents per message, in bytes (the transport refuses 4 MiB).
pub const PAGE_BYTES: usize = 1024 * 1024;
/// Agreement heads per summary, in bytes.
const HEADS_BYTES: usize = 512 * 1024;
/// How long one page may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages per exchange with one partner; the next round continues.
const MAX_PAGES: usize = 64;
/// A cursor past every agreement key (keys start with digits).
const END_OF_KEYS: &str = "~";

/// Runs anti-entropy rounds until `stop` is cancelled.
pub async fn run(
    registry: Arc<Registry>,
    pool: PeerPool,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut changes = registry.subscribe();
    let mut health = PartnerHealth::default();
    loop {
        changes.mark_unchanged();
        round(&registry, &pool, &mut health).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// The last outcome with each partner, so a failure is reported when it
/// starts or changes, not every round.
#[derive(Debug, Default)]
pub struct PartnerHealth {
    last: HashMap<String, Option<String>>,
}

impl PartnerHealth {
    fn record(&mut self, partner: &Partner, outcome: Result<usize, String>) {
        let previous = self.last.get(&partner.endpoint).cloned().flatten();
        match outcome {
            Ok(learnt) => {
                if learnt > 0 {
                    tracing::info!(
                        partner = partner.code,
                        documents = learnt,
                        "learnt governance documents from partner"
                    );
                }
                if previous.is_some() {
                    tracing::info!(
                        partner = partner.code,
                        endpoint = %partner.endpoint,
                        "governance sync with partner works again"
                    );
                }
                self.last.insert(partner.endpoint.clone(), None);
            }
            Err(reason) => {
                if previous.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(
                        partner = partner.code,
                        name = %partner.name,
                        endpoint = %partner.endpoint,
                        %reason,
                        "governance sync with partner failed; retrying every round"
                    );
                } else {
                    tracing::debug!(partner = partner.code, %reason, "governance sync still failing");
                }
                self.last.insert(partner.endpoint.clone(), Some(reason));
            }
        }
    }
}

/// One round: every partner at once, each with its own timeout (the
/// pool's call timeout per page), so one slow partner does not hold up
/// the rest.
pub async fn round(registry: &Arc<Registry>, pool: &PeerPool, health: &mut PartnerHealth) {
    // Every round, so a left date that passes is noticed without an import.
    registry.report_own_membership();
    let mut calls = JoinSet::new();
    for partner in registry.partners() {
        let registry = Arc::clone(registry);
        let pool = pool.clone();
        calls.spawn(async move {
            let outcome = sync_with(&registry, &pool, &partner).await;
            (partner, outcome)
        });
    }
    while let Some(joined) = calls.join_next().await {
        if let Ok((partner, outcome)) = joined {
            health.record(&partner, outcome);
        }
    }
}

/// The text form of an agreement key, sorting as the key does.
pub fn key_text(key: AgreementKey) -> String {
    format!("{:010}/{}", key.provider, key.id.hyphenated())
}

/// Whether `key` lies in the page range `(after, until]` (empty `after`:
/// from the first; empty `until`: to the last).
fn in_range(key: &str, after: &str, until: &str) -> bool {
    (after.is_empty() || key > after) && (until.is_empty() || key <= until)
}

/// The agreements of `view` that `partner` (of `fellowships`) is a party
/// to, by key text, in key order.
fn shared_agreements<'a>(
    view: &'a GovernanceView,
    partner: u32,
    fellowships: &BTreeSet<String>,
) -> BTreeMap<String, &'a Agreement> {
    view.agreements()
        .filter(|a| fellowships.contains(&a.body().fellowship) && is_party(a, partner))
        .map(|a| (key_text(key_of(a)), a))
        .collect()
}

fn head_of(agreement: &Agreement) -> pb::AgreementHead {
    pb::AgreementHead {
        id: agreement.id().to_string(),
        digest: agreement.digest().to_string(),
        signatures: u32::try_from(agreement.document().signatures.len()).unwrap_or(u32::MAX),
        signers: agreement
            .document()
            .signatures
            .iter()
            .map(|s| signing_key_text(&s.signer))
            .collect(),
        provider: agreement.body().provider,
    }
}

fn head_key(head: &pb::AgreementHead) -> String {
    match uuid::Uuid::parse_str(&head.id) {
        Ok(id) => key_text(AgreementKey {
            provider: head.provider,
            id,
        }),
        Err(_) => String::new(),
    }
}

fn roster_heads(view: &GovernanceView, fellowships: &BTreeSet<String>) -> Vec<pb::RosterHead> {
    let mut heads: Vec<pb::RosterHead> = view
        .rosters()
        .filter(|r| fellowships.contains(r.fellowship()))
        .map(|r| pb::RosterHead {
            fellowship: r.fellowship().to_string(),
            serial: r.serial(),
            digest: r.digest().to_string(),
        })
        .collect();
    heads.sort_by(|a, b| a.fellowship.cmp(&b.fellowship));
    heads
}

/// Agreement heads for `partner` from `after` on, up to about
/// [`HEADS_BYTES`]; returns them and the last key covered (empty: to the
/// end).
fn heads_page(
    shared: &BTreeMap<String, &Agreement>,
    after: &str,
) -> (Vec<pb::AgreementHead>, String) {
    let mut heads = Vec::new();
    let mut size = 0;
    let mut range = shared.range::<str, _>((
        if after.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(after)
        },
        std::ops::Bound::Unbounded,
    ));
    for (key, agreement) in range.by_ref() {
        let head = head_of(agreement);
        size += head.id.len() + head.digest.len() + head.signers.len() * 72 + 16;
        heads.push(head);
        if size >= HEADS_BYTES {
            // Stop here; the page covers up to this key.
            let until = key.clone();
            return (heads, until);
        }
    }
    (heads, String::new())
}

/// Roster files of `fellowships` that a holder of `theirs` lacks: the
/// serials above theirs, within `budget` (at least one per fellowship
/// behind). Also reports a fork (same serial, other digest) at ERROR.
fn rosters_lacking(
    registry: &Registry,
    view: &GovernanceView,
    theirs: &[pb::RosterHead],
    fellowships: &BTreeSet<String>,
    budget: usize,
    partner: &str,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut out = Vec::new();
    let mut taken = 0;
    // One head per shared fellowship is all a summary can mean; the rest
    // of a padded summary is ignored.
    let mut seen = BTreeSet::new();
    for head in theirs {
        if !fellowships.contains(&head.fellowship) || !seen.insert(head.fellowship.as_str()) {
            continue;
        }
        let Some(ours) = view.roster(&head.fellowship) else {
            continue;
        };
        if head.serial == ours.serial()
            && head.digest != ours.digest().to_string()
            && registry.first_report_of_fork(partner, &head.fellowship, &head.digest)
        {
            tracing::error!(
                fellowship = %head.fellowship,
                serial = head.serial,
                partner,
                "a partner holds a different roster with the same serial: the fellowship's \
                 roster has forked; ask the secretariat for the right chain, then re-pin it \
                 (samvirke push FILE --repin)"
            );
        }
        if head.serial >= ours.serial() {
            continue;
        }
        let chain = registry.roster_chain(
            &head.fellowship,
            head.serial.saturating_add(1),
            ours.serial(),
            budget.saturating_sub(taken).max(1),
        )?;
        taken += chain.iter().map(Vec::len).sum::<usize>();
        out.extend(chain);
        if taken >= budget {
            break;
        }
    }
    Ok(out)
}

/// Whether a holder of `theirs` lacks something of `ours`: the agreement,
/// or a signature on it.
fn lacks(ours: &Agreement, theirs: Option<&pb::AgreementHead>) -> bool {
    match theirs {
        None => true,
        Some(head) => {
            head.digest == ours.digest().to_string()
                && ours
                    .document()
                    .signatures
                    .iter()
                    .any(|s| !head.signers.contains(&signing_key_text(&s.signer)))
        }
    }
}

fn documents(files: Vec<Vec<u8>>) -> Vec<SignedDocumentBytes> {
    files
        .into_iter()
        .map(|content| SignedDocumentBytes { content })
        .collect()
}

fn contents(documents: Vec<SignedDocumentBytes>) -> Vec<Vec<u8>> {
    documents.into_iter().map(|d| d.content).collect()
}

/// Exchanges documents with one partner, page by page. Returns how many
/// documents this node learnt, or why the exchange failed.
async fn sync_with(
    registry: &Arc<Registry>,
    pool: &PeerPool,
    partner: &Partner,
) -> Result<usize, String> {
    let mut client = pool
        .client(&partner.endpoint, partner.fingerprint)
        .map_err(|e| e.to_string())?;
    let mut after = String::new();
    let mut pulled_all = false;
    // Documents the partner lacks, found from its answers, sent in order.
    let mut push_rosters: Vec<Vec<u8>> = Vec::new();
    let mut push_agreements: VecDeque<Vec<u8>> = VecDeque::new();
    // Rosters offered once in this exchange are not offered again (the
    // partner may refuse one, e.g. quarantine it).
    let mut pushed_rosters: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut learnt = 0;
    for _ in 0..MAX_PAGES {
        let view = registry.snapshot();
        let shared = shared_agreements(&view, partner.code, &partner.fellowships);
        let (heads, until) = if pulled_all {
            // Only pushing: an empty range asks for nothing more.
            (Vec::new(), after.clone())
        } else {
            heads_page(&shared, &after)
        };
        let mut offered = std::mem::take(&mut push_rosters);
        let mut size: usize = offered.iter().map(Vec::len).sum();
        let mut agreements = Vec::new();
        while let Some(next) = push_agreements.front() {
            if size + next.len() > PAGE_BYTES && !(offered.is_empty() && agreements.is_empty()) {
                break;
            }
            size += next.len();
            agreements.extend(push_agreements.pop_front());
        }
        offered.shrink_to_fit();
        let request = SyncGovernanceRequest {
            summary: Some(pb::GovernanceSummary {
                rosters: roster_heads(&view, &partner.fellowships),
                agreements: heads,
            }),
            rosters: documents(offered),
            agreements: documents(agreements),
            after: after.clone(),
            until: until.clone(),
        };
        let answer = tokio::time::timeout(PAGE_TIMEOUT, client.sync_governance(request))
            .await
            .map_err(|_| format!("no answer within {} s", PAGE_TIMEOUT.as_secs()))?
            .map_err(|status| {
                format!(
                    "{}: {}",
                    status.code(),
                    crate::telemetry::untrusted(status.message())
                )
            })?
            .into_inner();
        let SyncGovernanceResponse {
            rosters,
            agreements,
            summary,
            next,
            more,
        } = answer;
        if !rosters.is_empty() || !agreements.is_empty() {
            let registry = Arc::clone(registry);
            let fellowships = partner.fellowships.clone();
            let code = partner.code;
            let (rosters, agreements) = (contents(rosters), contents(agreements));
            // Imports verify signatures and fsync: keep them off the async workers.
            learnt += tokio::task::spawn_blocking(move || {
                registry.import_offer(code, &fellowships, &rosters, &agreements)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        }
        // What the partner lacks, by its summary of the same range.
        let theirs = summary.unwrap_or_default();
        let view = registry.snapshot();
        push_rosters = rosters_lacking(
            registry,
            &view,
            &theirs.rosters,
            &partner.fellowships,
            PAGE_BYTES,
            &partner.name,
        )
        .map_err(|e| e.to_string())?;
        push_rosters.retain(|bytes| pushed_rosters.insert(bytes.clone()));
        if !pulled_all {
            let their_heads: HashMap<String, &pb::AgreementHead> = theirs
                .agreements
                .iter()
                .map(|head| (head_key(head), head))
                .collect();
            let shared = shared_agreements(&view, partner.code, &partner.fellowships);
            for (key, agreement) in &shared {
                if in_range(key, &after, &next) && lacks(agreement, their_heads.get(key).copied()) {
                    push_agreements.push_back(agreement.to_bytes());
                }
            }
            if more && !next.is_empty() && next > after {
                after = next;
            } else {
                pulled_all = true;
                // From now on every page asks about an empty range.
                after = END_OF_KEYS.to_string();
            }
        }
        if pulled_all && push_rosters.is_empty() && push_agreements.is_empty() {
            return Ok(learnt);
        }
    }
    Ok(learnt)
}

/// The server side of one page for a former member (municipality
/// `caller`, listed as gone in `fellowships`): the roster serials that tell
/// it it left, and nothing else. What it offers is not looked at, and it
/// learns no agreement and no serial after its departure.
pub fn answer_former_member(
    registry: &Registry,
    caller: u32,
    fellowships: &BTreeSet<String>,
    request: &SyncGovernanceRequest,
) -> Result<SyncGovernanceResponse, StoreError> {
    let theirs = request.summary.clone().unwrap_or_default();
    let mut rosters = Vec::new();
    let mut budget = PAGE_BYTES;
    let mut seen = BTreeSet::new();
    for head in &theirs.rosters {
        if !fellowships.contains(&head.fellowship) || !seen.insert(head.fellowship.as_str()) {
            continue;
        }
        let chain = registry.departure_chain(
            &head.fellowship,
            caller,
            head.serial.saturating_add(1),
            budget.max(1),
        )?;
        budget = budget.saturating_sub(chain.iter().map(Vec::len).sum());
        rosters.extend(chain);
        if budget == 0 {
            break;
        }
    }
    Ok(SyncGovernanceResponse {
        rosters: documents(rosters),
        agreements: Vec::new(),
        summary: Some(pb::GovernanceSummary::default()),
        next: String::new(),
        more: false,
    })
}

/// The server side of one page: import what the caller (municipality
/// `caller`, current member of `caller_fellowships`) offers, answer with
/// what it lacks among the documents it may see.
pub fn answer(
    registry: &Registry,
    caller: u32,
    caller_fellowships: &BTreeSet<String>,
    request: SyncGovernanceRequest,
) -> Result<SyncGovernanceResponse, StoreError> {
    let SyncGovernanceRequest {
        summary,
        rosters,
        agreements,
        after,
        until,
    } = request;
    if !rosters.is_empty() || !agreements.is_empty() {
        registry.import_offer(
            caller,
            caller_fellowships,
            &contents(rosters),
            &contents(agreements),
        )?;
    }
    let theirs = summary.unwrap_or_default();
    let view = registry.snapshot();
    let rosters = rosters_lacking(
        registry,
        &view,
        &theirs.rosters,
        caller_fellowships,
        PAGE_BYTES,
        &caller.to_string(),
    )?;
    let mut budget = PAGE_BYTES.saturating_sub(rosters.iter().map(Vec::len).sum());
    let their_heads: HashMap<String, &pb::AgreementHead> = theirs
        .agreements
        .iter()
        .map(|head| (head_key(head), head))
        .collect();
    let shared = shared_agreements(&view, caller, caller_fellowships);
    let mut sent = Vec::new();
    let mut next = until.clone();
    let mut more = !until.is_empty();
    for (key, agreement) in shared
        .iter()
        .filter(|(key, _)| in_range(key, &after, &until))
    {
        if !lacks(agreement, their_heads.get(key).copied()) {
            continue;
        }
        let bytes = agreement.to_bytes();
        if bytes.len() > budget && !sent.is_empty() {
            // The page ends before this key; the caller asks again from here.
            next = sent_last_key(&shared, key);
            more = true;
            break;
        }
        budget = budget.saturating_sub(bytes.len());
        sent.push(bytes);
    }
    if !more && until.is_empty() {
        next = shared.keys().next_back().cloned().unwrap_or_default();
        if next < after {
            next = after.clone();
        }
    }
    let heads = shared
        .iter()
        .filter(|(key, _)| in_range(key, &after, &next))
        .map(|(_, agreement)| head_of(agreement))
        .collect();
    Ok(SyncGovernanceResponse {
        rosters: documents(rosters),
        agreements: documents(sent),
        summary: Some(pb::GovernanceSummary {
            rosters: roster_heads(&view, caller_fellowships),
            agreements: heads,
        }),
        next,
        more,
    })
}

/// The key just before `key` in `shared`: where a page that could not
/// send `key` ends.
fn sent_last_key(shared: &BTreeMap<String, &Agreement>, key: &str) -> String {
    shared
        .range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Excluded(key)))
        .next_back()
        .map(|(k, _)| k.clone())
        .unwrap_or_default()
}
