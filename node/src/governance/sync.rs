//! Anti-entropy: how rosters and agreements spread between nodes without
//! a central server.
//!
//! Each node runs [`run`]: a round compares summaries with every partner
//! (the current members of the fellowships this node belongs to), imports
//! what the partner has that is newer, and offers back what the partner
//! lacks. A round starts at once whenever the registry changes (an
//! operator import, or a document learnt from a partner), and otherwise
//! every `sync_interval`, to catch up with partners that were down. Every
//! document is verified on arrival exactly as an operator import is, so a
//! partner can delay news but never forge it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use samvirke_proto::v1::{SignedDocumentBytes, SyncGovernanceRequest};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::registry::{Offer, Partner, Registry};
use crate::peer::client::PeerPool;

/// Runs anti-entropy rounds until `stop` is cancelled.
pub async fn run(
    registry: Arc<Registry>,
    pool: PeerPool,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut changes = registry.subscribe();
    loop {
        changes.mark_unchanged();
        round(&registry, &pool).await;
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

/// One round: every partner at once, each with its own timeout (the
/// pool's call timeout), so one slow partner does not hold up the rest.
pub async fn round(registry: &Arc<Registry>, pool: &PeerPool) {
    let mut calls = JoinSet::new();
    for partner in registry.partners() {
        let registry = Arc::clone(registry);
        let pool = pool.clone();
        calls.spawn(async move {
            if let Err(reason) = sync_with(&registry, &pool, &partner).await {
                tracing::debug!(
                    partner = partner.code,
                    endpoint = %partner.endpoint,
                    %reason,
                    "governance sync with partner failed"
                );
            }
        });
    }
    while calls.join_next().await.is_some() {}
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

/// Compares with one partner: take what it has, then give what it lacks.
async fn sync_with(
    registry: &Arc<Registry>,
    pool: &PeerPool,
    partner: &Partner,
) -> Result<(), String> {
    let mut client = pool.client(&partner.endpoint).map_err(|e| e.to_string())?;
    let answer = client
        .sync_governance(SyncGovernanceRequest {
            summary: Some(registry.summary(&partner.fellowships)),
            rosters: Vec::new(),
            agreements: Vec::new(),
        })
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?
        .into_inner();
    let learnt = {
        let registry = Arc::clone(registry);
        let endpoint = partner.endpoint.clone();
        let fellowships = partner.fellowships.clone();
        let (rosters, agreements) = (contents(answer.rosters), contents(answer.agreements));
        // Imports verify signatures and fsync: keep them off the async workers.
        tokio::task::spawn_blocking(move || {
            registry.import_offer(&endpoint, &fellowships, &rosters, &agreements)
        })
        .await
        .map_err(|e| e.to_string())?
    };
    if learnt > 0 {
        tracing::info!(
            partner = partner.code,
            documents = learnt,
            "learnt governance documents from partner"
        );
    }
    let Some(theirs) = answer.summary else {
        return Ok(());
    };
    let offer: Offer = registry
        .offer_for(&theirs, &partner.fellowships)
        .map_err(|e| e.to_string())?;
    if offer.is_empty() {
        return Ok(());
    }
    client
        .sync_governance(SyncGovernanceRequest {
            summary: Some(registry.summary(&partner.fellowships)),
            rosters: documents(offer.rosters),
            agreements: documents(offer.agreements),
        })
        .await
        .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
    Ok(())
}

/// The server side of one exchange: import what the caller offers, answer
/// with what it lacks among the fellowships it belongs to.
pub fn answer(
    registry: &Registry,
    caller: &str,
    caller_fellowships: &BTreeSet<String>,
    request: SyncGovernanceRequest,
) -> Result<samvirke_proto::v1::SyncGovernanceResponse, crate::store::StoreError> {
    registry.import_offer(
        caller,
        caller_fellowships,
        &contents(request.rosters),
        &contents(request.agreements),
    );
    let offer = match &request.summary {
        Some(theirs) => registry.offer_for(theirs, caller_fellowships)?,
        None => Offer::default(),
    };
    Ok(samvirke_proto::v1::SyncGovernanceResponse {
        rosters: documents(offer.rosters),
        agreements: documents(offer.agreements),
        summary: Some(registry.summary(caller_fellowships)),
    })
}
