//! What this node has accepted: the latest roster of every fellowship it
//! follows and the agreements it holds, in memory for the per-call
//! authorisation and in the store so they survive restarts.
//!
//! Every document enters through [`Registry::import_roster`] or
//! [`Registry::import_agreement`], whether an operator pushed it or a
//! partner offered it during anti-entropy; the only difference is that an
//! operator may pin a fellowship's first roster (`trust_anchor`), and a
//! partner never can. Imports are checked, written and flushed before they
//! take effect, and each change wakes the anti-entropy loop so partners
//! hear of it within moments.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use ed25519_dalek::VerifyingKey;
use samvirke_proto::v1 as pb;
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use super::agreement::{Agreement, AgreementError, Consumers, Operation};
use super::authorize::{AccessRequest, Denial, GovernanceView, Grant, authorize};
use super::document::{DocumentType, Signature, SignedDocument};
use super::roster::{Roster, RosterError, accept_first, accept_next};
use crate::clock::SharedClock;
use crate::identity::{Fingerprint, signing_key_text};
use crate::store::{Keyspace, Store, StoreError, WriteBatch};

/// Why a roster or agreement was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("roster rejected: {0}")]
    Roster(#[from] RosterError),
    #[error("agreement rejected: {0}")]
    Agreement(#[from] AgreementError),
    #[error(
        "roster rejected: fellowship `{0}` has no trust anchor on this node; an operator must \
         import its first roster explicitly (samvirke push FILE --trust-anchor)"
    )]
    NotAnchored(String),
    #[error(
        "agreement rejected: unknown fellowship `{0}`; import the fellowship's roster on this \
         node first"
    )]
    UnknownFellowship(String),
    #[error(
        "agreement {id} rejected: bad signature by {signer}; the file was changed after signing"
    )]
    BadSignature { id: Uuid, signer: String },
    #[error(
        "agreement {id} rejected: signature by {signer}, which is not the current key of the \
         provider or a consumer in the roster of `{fellowship}`"
    )]
    SignerNotEntitled {
        id: Uuid,
        signer: String,
        fellowship: String,
    },
    #[error(
        "agreement {id} rejected: this node holds an agreement with the same id and different \
         terms; the terms of a signed agreement never change, draft a new one"
    )]
    Conflict { id: Uuid },
    #[error(
        "agreement {id} rejected: its provider ({provider}) has not signed it; an agreement is \
         imported once the provider has signed"
    )]
    NoProviderSignature { id: Uuid, provider: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The result of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// The node now holds something it did not before.
    Changed,
    /// The node already held exactly this.
    Unchanged,
}

/// Documents one node should send another, as file bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Roster files, each fellowship's serials in ascending order.
    pub rosters: Vec<Vec<u8>>,
    pub agreements: Vec<Vec<u8>>,
}

impl Offer {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.rosters.is_empty() && self.agreements.is_empty()
    }
}

/// A partner node to exchange documents with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    pub code: u32,
    pub name: String,
    pub endpoint: String,
    /// The fellowships the partner is a current member of, with this node.
    pub fellowships: BTreeSet<String>,
}

/// The node's accepted governance documents.
#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn Store>,
    clock: SharedClock,
    view: RwLock<GovernanceView>,
    changes: watch::Sender<u64>,
}

fn roster_key(fellowship: &str, serial: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(fellowship.len() + 9);
    key.extend_from_slice(fellowship.as_bytes());
    key.push(0);
    key.extend_from_slice(&serial.to_be_bytes());
    key
}

impl Registry {
    /// Loads every accepted document from `store`. Documents were checked
    /// when imported; they are parsed again here, and a file that no
    /// longer parses is reported rather than trusted.
    pub fn open(
        store: Arc<dyn Store>,
        own_code: u32,
        clock: SharedClock,
    ) -> Result<Registry, ImportError> {
        let mut view = GovernanceView::new(own_code);
        let mut latest: BTreeMap<String, Roster> = BTreeMap::new();
        for entry in store.scan_prefix(Keyspace::Rosters, b"") {
            let (_, bytes) = entry?;
            let roster = Roster::parse(&bytes)?;
            // Keys sort by fellowship, then serial: the last one wins.
            latest.insert(roster.fellowship().to_string(), roster);
        }
        for roster in latest.into_values() {
            view.insert_roster(roster);
        }
        for entry in store.scan_prefix(Keyspace::Agreements, b"") {
            let (_, bytes) = entry?;
            view.insert_agreement(Agreement::parse(&bytes)?);
        }
        let (changes, _) = watch::channel(0);
        Ok(Registry {
            store,
            clock,
            view: RwLock::new(view),
            changes,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, GovernanceView> {
        self.view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, GovernanceView> {
        self.view
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// A receiver that changes whenever the registry does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Imports a roster file. `trust_anchor` pins a fellowship's first
    /// roster (operators only); later serials must follow the chain.
    pub fn import_roster(
        &self,
        bytes: &[u8],
        trust_anchor: bool,
    ) -> Result<(Imported, Roster), ImportError> {
        let roster = Roster::parse(bytes)?;
        let now = self.now();
        let mut view = self.write();
        match view.roster(roster.fellowship()) {
            None if !trust_anchor => {
                return Err(ImportError::NotAnchored(roster.fellowship().to_string()));
            }
            None => accept_first(&roster, now)?,
            Some(current) if current.digest() == roster.digest() => {
                return Ok((Imported::Unchanged, current.clone()));
            }
            Some(current) => accept_next(current, &roster, now)?,
        }
        let mut batch = WriteBatch::default();
        batch.put(
            roster_key(roster.fellowship(), roster.serial()),
            roster.to_bytes(),
        );
        self.store.write(Keyspace::Rosters, batch)?;
        self.store.flush()?;
        tracing::info!(
            fellowship = roster.fellowship(),
            serial = roster.serial(),
            digest = %roster.digest(),
            trust_anchor,
            "roster accepted"
        );
        view.insert_roster(roster.clone());
        drop(view);
        self.changed();
        Ok((Imported::Changed, roster))
    }

    /// Imports an agreement file, or more signatures for one already held.
    /// Every signature must verify and come from a party to the agreement
    /// (by its current key in the roster); missing signatures are allowed,
    /// the agreement simply is not in force until they arrive.
    pub fn import_agreement(&self, bytes: &[u8]) -> Result<(Imported, Agreement), ImportError> {
        let agreement = Agreement::parse(bytes)?;
        let id = agreement.id();
        let mut view = self.write();
        let fellowship = agreement.body().fellowship.clone();
        let roster = view
            .roster(&fellowship)
            .ok_or_else(|| ImportError::UnknownFellowship(fellowship.clone()))?;
        // Keep every valid signature by a party's current key (and the
        // secretariat's, which is harmless); drop valid signatures by keys
        // the roster no longer lists, so a member that rotated its key can
        // re-sign and the stale signature stops blocking the agreement.
        let mut offered = Vec::new();
        for (check, signature) in agreement
            .document()
            .check_signatures(DocumentType::Agreement)
            .into_iter()
            .zip(&agreement.document().signatures)
        {
            let signer = signing_key_text(&check.signer);
            if !check.valid {
                return Err(ImportError::BadSignature { id, signer });
            }
            if counts_for(&agreement, roster, &check.signer) {
                offered.push(signature.clone());
            } else if roster.member_by_key(&check.signer).is_some() {
                // A current member that is not a party to this agreement.
                return Err(ImportError::SignerNotEntitled {
                    id,
                    signer,
                    fellowship,
                });
            } else {
                tracing::info!(agreement = %id, %signer, "dropping a signature by a key the roster no longer lists");
            }
        }
        if offered.is_empty() && !agreement.document().signatures.is_empty() {
            let signer = agreement
                .document()
                .signatures
                .iter()
                .map(|s| signing_key_text(&s.signer))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ImportError::SignerNotEntitled {
                id,
                signer,
                fellowship,
            });
        }
        let held = view.agreement(id);
        let mut signatures: Vec<Signature> = match held {
            None => Vec::new(),
            Some(held) if held.digest() != agreement.digest() => {
                return Err(ImportError::Conflict { id });
            }
            Some(held) => held
                .document()
                .signatures
                .iter()
                .filter(|s| counts_for(held, roster, &s.signer))
                .cloned()
                .collect(),
        };
        for signature in offered {
            if !signatures.iter().any(|s| s.signer == signature.signer) {
                signatures.push(signature);
            }
        }
        if let Some(held) = held
            && same_signers(&held.document().signatures, &signatures)
        {
            return Ok((Imported::Unchanged, held.clone()));
        }
        let provider = agreement.body().provider;
        let provider_signed = roster
            .member(provider)
            .is_some_and(|m| signatures.iter().any(|s| s.signer == m.signing_key));
        if !provider_signed {
            return Err(ImportError::NoProviderSignature {
                id,
                provider: roster.party(provider).to_string(),
            });
        }
        let merged = Agreement::from_document(SignedDocument {
            body: agreement.document().body.clone(),
            signatures,
        })?;
        let mut batch = WriteBatch::default();
        batch.put(id.as_bytes().to_vec(), merged.to_bytes());
        self.store.write(Keyspace::Agreements, batch)?;
        self.store.flush()?;
        tracing::info!(
            agreement = %id,
            fellowship = %merged.body().fellowship,
            signatures = merged.document().signatures.len(),
            "agreement accepted"
        );
        view.insert_agreement(merged.clone());
        drop(view);
        self.changed();
        Ok((Imported::Changed, merged))
    }

    /// The one authorisation check for peer requests, at the clock's "now".
    pub fn authorize(&self, request: &AccessRequest) -> Result<Grant, Denial> {
        authorize(&self.read(), request, self.now())
    }

    /// The fellowships in which the holder of `fingerprint` is a current
    /// member, by this node's rosters.
    pub fn fellowships_of(&self, fingerprint: &Fingerprint) -> BTreeSet<String> {
        let now = self.now();
        self.read()
            .rosters()
            .filter(|roster| {
                roster
                    .member_by_fingerprint(fingerprint)
                    .is_some_and(|member| member.is_current(now))
            })
            .map(|roster| roster.fellowship().to_string())
            .collect()
    }

    /// Current members of the fellowships this node is a current member
    /// of, other than this node, one entry per endpoint.
    pub fn partners(&self) -> Vec<Partner> {
        let now = self.now();
        let view = self.read();
        let own = view.own_code();
        let mut partners: BTreeMap<String, Partner> = BTreeMap::new();
        for roster in view.rosters() {
            if !roster.member(own).is_some_and(|m| m.is_current(now)) {
                continue;
            }
            for member in roster.current_members(now).filter(|m| m.code != own) {
                partners
                    .entry(member.endpoint.clone())
                    .or_insert_with(|| Partner {
                        code: member.code,
                        name: member.name.clone(),
                        endpoint: member.endpoint.clone(),
                        fellowships: BTreeSet::new(),
                    })
                    .fellowships
                    .insert(roster.fellowship().to_string());
            }
        }
        partners.into_values().collect()
    }

    /// What this node holds of `fellowships`, for a partner of those
    /// fellowships to compare with (it learns nothing of the others).
    pub fn summary(&self, fellowships: &BTreeSet<String>) -> pb::GovernanceSummary {
        let view = self.read();
        let mut rosters: Vec<pb::RosterHead> = view
            .rosters()
            .filter(|r| fellowships.contains(r.fellowship()))
            .map(|r| pb::RosterHead {
                fellowship: r.fellowship().to_string(),
                serial: r.serial(),
                digest: r.digest().to_string(),
            })
            .collect();
        rosters.sort_by(|a, b| a.fellowship.cmp(&b.fellowship));
        let mut agreements: Vec<pb::AgreementHead> = view
            .agreements()
            .filter(|a| fellowships.contains(&a.body().fellowship))
            .map(|a| pb::AgreementHead {
                id: a.id().to_string(),
                digest: a.digest().to_string(),
                signatures: u32::try_from(a.document().signatures.len()).unwrap_or(u32::MAX),
                signers: a
                    .document()
                    .signatures
                    .iter()
                    .map(|s| signing_key_text(&s.signer))
                    .collect(),
            })
            .collect();
        agreements.sort_by(|a, b| a.id.cmp(&b.id));
        pb::GovernanceSummary {
            rosters,
            agreements,
        }
    }

    /// The documents of `fellowships` that a holder of `theirs` lacks:
    /// roster serials above theirs, and agreements they do not hold or hold
    /// with fewer signatures.
    pub fn offer_for(
        &self,
        theirs: &pb::GovernanceSummary,
        fellowships: &BTreeSet<String>,
    ) -> Result<Offer, StoreError> {
        let view = self.read();
        let mut offer = Offer::default();
        let their_rosters: BTreeMap<&str, u64> = theirs
            .rosters
            .iter()
            .map(|h| (h.fellowship.as_str(), h.serial))
            .collect();
        for roster in view.rosters() {
            let fellowship = roster.fellowship();
            // A partner follows a fellowship only from a trust anchor its
            // operator pinned; documents of others would be refused.
            let Some(&their_serial) = their_rosters.get(fellowship) else {
                continue;
            };
            if their_serial == roster.serial() {
                let theirs_digest = theirs
                    .rosters
                    .iter()
                    .find(|h| h.fellowship == fellowship)
                    .map(|h| h.digest.as_str());
                if theirs_digest.is_some_and(|d| d != roster.digest().to_string()) {
                    tracing::error!(
                        fellowship,
                        serial = their_serial,
                        "a partner holds a different roster with the same serial: the \
                         fellowship's roster has forked; ask the secretariat"
                    );
                }
            }
            if !fellowships.contains(fellowship) || their_serial >= roster.serial() {
                continue;
            }
            let from = roster_key(fellowship, their_serial.saturating_add(1));
            let to = roster_key(fellowship, roster.serial());
            for entry in self.store.range(
                Keyspace::Rosters,
                (
                    std::ops::Bound::Included(from),
                    std::ops::Bound::Included(to),
                ),
            ) {
                offer.rosters.push(entry?.1);
            }
        }
        let their_agreements: BTreeMap<&str, &pb::AgreementHead> = theirs
            .agreements
            .iter()
            .map(|h| (h.id.as_str(), h))
            .collect();
        for agreement in view.agreements() {
            let fellowship = agreement.body().fellowship.as_str();
            if !fellowships.contains(fellowship) || !their_rosters.contains_key(fellowship) {
                continue;
            }
            let id = agreement.id().to_string();
            let send = match their_agreements.get(id.as_str()) {
                None => true,
                // Same terms: send if we hold a signature they lack.
                Some(head) => {
                    head.digest == agreement.digest().to_string()
                        && agreement
                            .document()
                            .signatures
                            .iter()
                            .any(|s| !head.signers.contains(&signing_key_text(&s.signer)))
                }
            };
            if send {
                offer.agreements.push(agreement.to_bytes());
            }
        }
        Ok(offer)
    }

    /// Imports documents a partner sent, of the fellowships it is a
    /// current member of (`fellowships`); others are ignored. Each is judged
    /// on its own; one that is refused is logged and does not stop the rest.
    pub fn import_offer(
        &self,
        from: &str,
        fellowships: &BTreeSet<String>,
        rosters: &[Vec<u8>],
        agreements: &[Vec<u8>],
    ) -> usize {
        let mut changed = 0;
        let mut count = |outcome: Result<Imported, ImportError>, what: &str| match outcome {
            Ok(Imported::Changed) => changed += 1,
            Ok(Imported::Unchanged) => {}
            Err(error) => tracing::warn!(partner = from, %error, "offered {what} refused"),
        };
        for bytes in rosters {
            let outcome = match Roster::parse(bytes) {
                Ok(roster) if !fellowships.contains(roster.fellowship()) => continue,
                Ok(_) => self
                    .import_roster(bytes, false)
                    .map(|(imported, _)| imported),
                Err(error) => Err(error.into()),
            };
            count(outcome, "roster");
        }
        for bytes in agreements {
            let outcome = match Agreement::parse(bytes) {
                Ok(agreement) if !fellowships.contains(&agreement.body().fellowship) => continue,
                Ok(_) => self.import_agreement(bytes).map(|(imported, _)| imported),
                Err(error) => Err(error.into()),
            };
            count(outcome, "agreement");
        }
        changed
    }

    /// Every roster and agreement with its status now, for people.
    pub fn list(&self) -> (Vec<pb::RosterInfo>, Vec<pb::AgreementInfo>) {
        let now = self.now();
        let view = self.read();
        let mut rosters: Vec<pb::RosterInfo> =
            view.rosters().map(|r| roster_info(r, now)).collect();
        rosters.sort_by(|a, b| a.fellowship.cmp(&b.fellowship));
        let mut agreements: Vec<pb::AgreementInfo> = view
            .agreements()
            .map(|a| agreement_info(a, view.roster(&a.body().fellowship), now))
            .collect();
        agreements.sort_by(|a, b| a.id.cmp(&b.id));
        (rosters, agreements)
    }

    /// The report of one roster, now.
    pub fn roster_info(&self, roster: &Roster) -> pb::RosterInfo {
        roster_info(roster, self.now())
    }

    /// The report of one agreement, now, against the roster this node holds.
    pub fn agreement_info(&self, agreement: &Agreement) -> pb::AgreementInfo {
        let view = self.read();
        agreement_info(
            agreement,
            view.roster(&agreement.body().fellowship),
            self.now(),
        )
    }
}

/// Whether two signature lists have the same signers.
fn same_signers(a: &[Signature], b: &[Signature]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.iter().any(|y| y.signer == x.signer))
}

/// Whether a signature by `key` belongs on `agreement` under `roster`: a
/// party's current key, or the secretariat's.
fn counts_for(agreement: &Agreement, roster: &Roster, key: &VerifyingKey) -> bool {
    key == roster.secretariat_key() || is_party_key(agreement, roster, key)
}

/// Whether `key` is the current key of a party that may sign `agreement`.
fn is_party_key(agreement: &Agreement, roster: &Roster, key: &VerifyingKey) -> bool {
    let Some(member) = roster.member_by_key(key) else {
        return false;
    };
    let terms = agreement.body();
    member.code == terms.provider
        || match &terms.consumers {
            Consumers::All => true,
            Consumers::Named(codes) => codes.contains(&member.code),
        }
}

fn date_text(date: Option<time::Date>) -> String {
    date.map(|d| d.to_string()).unwrap_or_default()
}

fn instant_text(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn roster_info(roster: &Roster, now: OffsetDateTime) -> pb::RosterInfo {
    pb::RosterInfo {
        fellowship: roster.fellowship().to_string(),
        name: roster.name().to_string(),
        serial: roster.serial(),
        digest: roster.digest().to_string(),
        rule: roster.rule().to_string(),
        members: roster
            .members()
            .iter()
            .map(|m| pb::MemberInfo {
                code: m.code,
                name: m.name.clone(),
                endpoint: m.endpoint.clone(),
                signing_key: signing_key_text(&m.signing_key),
                tls_fingerprint: m.tls_fingerprint.to_string(),
                joined: m.joined.to_string(),
                left: date_text(m.left),
                current: m.is_current(now),
            })
            .collect(),
    }
}

/// Maps an operation to its protobuf enum.
pub fn operation_to_proto(operation: Operation) -> pb::Operation {
    match operation {
        Operation::Catalog => pb::Operation::Catalog,
        Operation::Read => pb::Operation::Read,
        Operation::Aggregate => pb::Operation::Aggregate,
    }
}

/// Maps a protobuf operation to ours; `None` for UNSPECIFIED or unknown values.
pub fn operation_from_proto(value: i32) -> Option<Operation> {
    match pb::Operation::try_from(value).ok()? {
        pb::Operation::Catalog => Some(Operation::Catalog),
        pb::Operation::Read => Some(Operation::Read),
        pb::Operation::Aggregate => Some(Operation::Aggregate),
        pb::Operation::Unspecified => None,
    }
}

fn agreement_info(
    agreement: &Agreement,
    roster: Option<&Roster>,
    now: OffsetDateTime,
) -> pb::AgreementInfo {
    let terms = agreement.body();
    let (consumers, all_members) = match &terms.consumers {
        Consumers::All => (Vec::new(), true),
        Consumers::Named(codes) => (codes.clone(), false),
    };
    let (status, detail, signed_by, missing) = match roster {
        Some(roster) => {
            let signatures = agreement.signature_status(roster);
            let status = agreement.status_at(roster, now);
            let short = match &status {
                s if s.is_active() => "active",
                super::agreement::AgreementStatus::NotYetValid { .. } => "not yet valid",
                super::agreement::AgreementStatus::Expired { .. } => "expired",
                super::agreement::AgreementStatus::Draft { .. } => "pending signatures",
                _ => "not in force",
            };
            (
                short.to_string(),
                status.to_string(),
                signatures.signed_by,
                signatures.missing,
            )
        }
        None => (
            "not in force".to_string(),
            format!(
                "the roster of `{}` is unknown on this node",
                terms.fellowship
            ),
            Vec::new(),
            Vec::new(),
        ),
    };
    pb::AgreementInfo {
        id: agreement.id().to_string(),
        fellowship: terms.fellowship.clone(),
        provider: terms.provider,
        consumers,
        all_members,
        operations: terms
            .operations
            .iter()
            .map(|op| operation_to_proto(*op) as i32)
            .collect(),
        purpose: terms.purpose.clone(),
        valid_from: instant_text(terms.valid_from),
        valid_until: instant_text(terms.valid_until),
        status,
        status_detail: detail,
        signed_by,
        missing_signatures: missing,
    }
}
