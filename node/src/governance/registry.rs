//! What this node has accepted: the latest roster of every fellowship it
//! follows and the agreements it holds, in memory for the per-call
//! authorisation and in the store so they survive restarts.
//!
//! Every document enters through an [`Import`] session, whether an operator
//! pushed it or a partner offered it during anti-entropy. A session holds
//! the registry's import lock (imports are serialised), works on a copy of
//! the [`GovernanceView`], writes and flushes the store, and only then swaps
//! the new view in. Readers (the authorisation of every peer call) take a
//! snapshot `Arc` under a lock held for a pointer copy: no lock is ever held
//! across I/O on the authorisation path.
//!
//! The import rules beyond signatures and chains:
//! - a roster that changes a member's own entry (its signing key,
//!   certificate, endpoint or node, or removes it) is applied only if that
//!   member signed it too, with the key the current roster lists for it
//!   (for this node's own entry: the key this node actually holds), so a
//!   secretariat key can admit and remove members but never speak for
//!   one, at any node. Otherwise the roster is quarantined, the operator
//!   alerted (ERROR log once, `Status` alerts) and the node keeps its
//!   current roster and keeps serving. An operator may accept such a
//!   roster explicitly (a member's lost key), logged;
//! - an agreement this node provides counts as signed by this node only
//!   with the key it holds, and must pass the data plane's check
//!   ([`ProviderCheck`]: excluded fields must name real fields);
//! - agreements are held per (provider, id), so no member can squat an id
//!   another member's agreement uses; a provider may hold at most
//!   [`MAX_AGREEMENTS_PER_PROVIDER`] agreements per fellowship here;
//! - partners may offer only documents of fellowships they belong to, and
//!   only agreements this node is a party to; one offer is looked at up to
//!   [`MAX_OFFERED`] documents, an agreement with more signatures than its
//!   parties could make is refused before any is checked, and an offer of
//!   what is already held costs no signature check; refusals are logged as
//!   one line per offer;
//! - an operator may re-pin a fellowship's roster (a forked chain), logged;
//! - a new agreement must name consumers the roster lists and that have
//!   not left by its start or by now ([`AgreementBody::check_consumers`]),
//!   whether an operator imports it or a partner offers it;
//! - a roster a partner offers for a fellowship not pinned here is noted
//!   once per serial with what to check ([`UnpinnedOffer`]); this node's
//!   own membership ending is logged once per serial
//!   ([`Registry::report_own_membership`]). Both show in `Status`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use ed25519_dalek::VerifyingKey;
use samvirke_proto::v1 as pb;
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

use super::agreement::{
    Agreement, AgreementBody, AgreementError, Consumers, DatasetRef, Operation,
};
use super::authorize::{
    AccessRequest, AgreementKey, Denial, GovernanceView, Grant, GridPolicy, authorize, key_of,
};
use super::document::{DocumentDigest, DocumentType, Signature, SignedDocument};
use super::roster::{Roster, RosterChange, RosterError, accept_first, accept_next, diff};
use crate::clock::SharedClock;
use crate::identity::{Fingerprint, signing_key_text};
use crate::store::{
    Entry, ExclusiveGuard, ExclusiveSection, Keyspace, Store, StoreError, WriteBatch,
};
use crate::telemetry::untrusted;

/// Most agreements one provider may have in one fellowship on this node:
/// enough for any real municipality, and a bound on what one member can
/// make every other member store and exchange.
pub const MAX_AGREEMENTS_PER_PROVIDER: usize = 500;
/// Documents one offer (a sync page) may bring; more are not looked at.
pub const MAX_OFFERED: usize = 256;
/// Audit entries one offer may cause for refused documents (the rest are
/// counted in the WARN line).
pub const MAX_REFUSALS_RECORDED: usize = 16;

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
        "roster serial {serial} of `{fellowship}` quarantined: it changes a member's own entry \
         ({changes}) without that member's signature (this node's entry needs the key this node \
         holds). The node keeps serial {current}. If the member agreed, it signs the roster \
         with its current key (samvirke roster sign FILE --key keys/signing.pem) and it is \
         pushed again; if the member's key was lost, an operator accepts it explicitly \
         (samvirke push FILE --accept-own-entry-change); otherwise the secretariat issues a \
         serial {serial} without the change"
    )]
    Quarantined {
        fellowship: String,
        serial: u64,
        current: u64,
        changes: String,
    },
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
        "agreement {id} rejected: this node holds an agreement of the same provider with the same \
         id and different terms; the terms of a signed agreement never change, draft a new one"
    )]
    Conflict { id: Uuid },
    #[error(
        "agreement {id} rejected: its provider ({provider}) has not signed it; an agreement is \
         imported once the provider has signed"
    )]
    NoProviderSignature { id: Uuid, provider: String },
    #[error(
        "agreement {id} rejected: this node is its provider, but it is not signed with the key \
         this node holds ({key}); sign it with this node's keys/signing.pem"
    )]
    NotSignedByThisNode { id: Uuid, key: String },
    #[error(
        "agreement {id} rejected: {provider} already has {MAX_AGREEMENTS_PER_PROVIDER} agreements \
         in `{fellowship}` on this node"
    )]
    TooManyAgreements {
        id: Uuid,
        provider: String,
        fellowship: String,
    },
    #[error(
        "agreement {id} rejected: this node is not a party to it (not its provider nor a \
         consumer); partners send agreements only to their parties"
    )]
    NotAParty { id: Uuid },
    #[error("agreement {id} rejected: {reason}")]
    Unacceptable { id: Uuid, reason: String },
    #[error("agreement {id} rejected: {problem}")]
    Consumer {
        id: Uuid,
        problem: super::agreement::ConsumerProblem,
    },
    #[error(
        "agreement {id} rejected: it carries {count} signatures, more than its parties and the \
         secretariat can make"
    )]
    TooManySignatures { id: Uuid, count: usize },
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

/// How an operator imports a roster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RosterImport {
    /// Pin a fellowship's first roster (operators only).
    pub trust_anchor: bool,
    /// Replace the fellowship's roster chain with this roster, signed by
    /// its own secretariat key, whatever the chain says (a forked roster).
    pub repin: bool,
    /// Apply a roster that changes this node's own entry without its
    /// signature (its key was lost); otherwise such a roster is quarantined.
    pub accept_own_entry_change: bool,
}

impl RosterImport {
    /// What a partner's offer may do: follow the chain, nothing more.
    pub const FROM_PARTNER: RosterImport = RosterImport {
        trust_anchor: false,
        repin: false,
        accept_own_entry_change: false,
    };
}

/// What the data plane says about an agreement this node provides, before
/// it is accepted: whether the node can honour its terms exactly.
pub trait ProviderCheck: Send + Sync + std::fmt::Debug {
    /// Refuses terms this node cannot honour (e.g. an excluded field that
    /// names no field of any covered dataset: a typo would let it leave).
    fn check(&self, terms: &AgreementBody) -> Result<(), String>;
}

/// A roster this node refused to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRoster {
    pub fellowship: String,
    pub serial: u64,
    pub digest: DocumentDigest,
    /// The changes to this node's own entry, in words.
    pub changes: String,
}

/// A partner node to exchange documents with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    pub code: u32,
    pub name: String,
    pub endpoint: String,
    /// The fingerprint the partner's server certificate must have.
    pub fingerprint: Fingerprint,
    /// The fellowships the partner is a current member of, with this node.
    pub fellowships: BTreeSet<String>,
}

/// An agreement in force under which this node, as a consumer, may ask
/// its provider: what a federated question is routed by.
#[derive(Debug, Clone)]
pub struct UsableAgreement {
    pub id: Uuid,
    pub fellowship: String,
    pub provider: u32,
    pub provider_name: String,
    pub provider_endpoint: String,
    /// The fingerprint the provider's server certificate must have.
    pub provider_fingerprint: Fingerprint,
    /// The key the provider signs receipts with.
    pub provider_key: VerifyingKey,
    pub operations: Vec<Operation>,
    pub scope: super::agreement::Scope,
    pub aggregate: super::agreement::AggregateTerms,
    pub min_group_size: Option<u32>,
    pub valid_until: OffsetDateTime,
}

impl UsableAgreement {
    pub fn allows(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }
}

/// The node's accepted governance documents.
#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn Store>,
    clock: SharedClock,
    view: RwLock<Arc<GovernanceView>>,
    /// Serialises imports; held across store I/O, never taken by readers.
    imports: Mutex<()>,
    quarantine: Mutex<BTreeMap<(String, u64), QuarantinedRoster>>,
    provider_check: RwLock<Option<Arc<dyn ProviderCheck>>>,
    /// Where what partners' offers change or are refused is recorded.
    audit: RwLock<Option<Arc<crate::audit::AuditLog>>>,
    changes: watch::Sender<u64>,
    /// Whose registry this is (for reloading the view).
    own_code: u32,
    own_key: VerifyingKey,
    /// Forks already reported (partner, fellowship, digest), so a fork is
    /// logged once, not every round.
    forks_reported: Mutex<BTreeSet<(String, String, String)>>,
    /// Documents a partner offered that were refused and recorded, by
    /// SHA-256 of (partner, bytes), so the audit gets each refusal once.
    refusals_recorded: Mutex<std::collections::HashSet<[u8; 32]>>,
    /// Roster serials partners offered for fellowships not pinned here,
    /// so each is logged once and shown in `Status`, not refused silently
    /// every round.
    unpinned: Mutex<BTreeMap<(String, u64), UnpinnedOffer>>,
    /// Ends of this node's own membership already logged, by fellowship
    /// and roster serial, so an ended membership is said once per serial.
    memberships_reported: Mutex<BTreeSet<(String, u64)>>,
    /// The fingerprints of the stored documents the view and quarantine
    /// were last loaded from (`None`: unknown). A re-read that finds the
    /// same documents parses nothing and wakes no one.
    loaded: Mutex<Option<Fingerprints>>,
}

/// Most unpinned roster offers remembered: a bound on what callers can
/// make this node keep.
const MAX_UNPINNED: usize = 64;

/// A roster serial a partner offered for a fellowship this node has not
/// pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpinnedOffer {
    pub fellowship: String,
    pub serial: u64,
    /// The digest the partner gave (`sha256:<hex>`).
    pub digest: String,
    /// Who offered it, in words.
    pub partner: String,
}

impl UnpinnedOffer {
    /// What the operator should do, in one sentence.
    pub fn detail(&self) -> String {
        format!(
            "roster serial {} for {} offered by partner {} is not pinned here: check digest {} \
             with the secretariat, then `samvirke push FILE --trust-anchor`",
            self.serial, self.fellowship, self.partner, self.digest
        )
    }
}

/// This node's own entry in the roster of one fellowship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnMembership {
    pub fellowship: String,
    pub serial: u64,
    /// Whether the roster lists this node at all.
    pub listed: bool,
    /// Whether this node is a current member now.
    pub current: bool,
    pub left: Option<time::Date>,
    /// A sentence for the operator.
    pub detail: String,
}

/// Where a page of [`Registry::list_page`] starts: after this roster (by
/// fellowship) or this agreement (by provider and id). Rosters come first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListCursor {
    Roster(String),
    Agreement(u32, Uuid),
}

impl ListCursor {
    /// The cursor as a page token.
    pub fn to_token(&self) -> String {
        match self {
            ListCursor::Roster(fellowship) => format!("r:{fellowship}"),
            ListCursor::Agreement(provider, id) => format!("a:{provider}:{id}"),
        }
    }

    /// Reads a page token made by [`ListCursor::to_token`].
    pub fn from_token(token: &str) -> Result<ListCursor, String> {
        let bad = || {
            format!(
                "page_token `{}` is not one this node gave; start again with an empty token",
                untrusted(token)
            )
        };
        match token.split_once(':') {
            Some(("r", fellowship)) if !fellowship.is_empty() => {
                Ok(ListCursor::Roster(fellowship.to_string()))
            }
            Some(("a", rest)) => {
                let (provider, id) = rest.split_once(':').ok_or_else(bad)?;
                Ok(ListCursor::Agreement(
                    provider.parse().map_err(|_| bad())?,
                    id.parse().map_err(|_| bad())?,
                ))
            }
            _ => Err(bad()),
        }
    }
}

/// One page of rosters and agreements.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub rosters: Vec<pb::RosterInfo>,
    pub agreements: Vec<pb::AgreementInfo>,
    /// Where the next page starts; `None` on the last.
    pub next: Option<ListCursor>,
}

pub(crate) fn roster_key(fellowship: &str, serial: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(fellowship.len() + 9);
    key.extend_from_slice(fellowship.as_bytes());
    key.push(0);
    key.extend_from_slice(&serial.to_be_bytes());
    key
}

fn agreement_key(key: AgreementKey) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&key.provider.to_be_bytes());
    bytes.extend_from_slice(key.id.as_bytes());
    bytes
}

impl Registry {
    /// Loads every accepted document from `store` for the node of
    /// `own_code` holding `own_key`. Documents were checked when imported;
    /// they are parsed again here, and a file that no longer parses is
    /// reported rather than trusted.
    pub fn open(
        store: Arc<dyn Store>,
        own_code: u32,
        own_key: VerifyingKey,
        clock: SharedClock,
    ) -> Result<Registry, ImportError> {
        let stored = StoredGovernance::read(store.as_ref())?;
        let fingerprints = stored.fingerprints();
        let (view, quarantine) = stored.parse(store.as_ref(), own_code, &own_key)?;
        let (changes, _) = watch::channel(0);
        Ok(Registry {
            store,
            clock,
            view: RwLock::new(Arc::new(view)),
            imports: Mutex::new(()),
            quarantine: Mutex::new(quarantine),
            forks_reported: Mutex::new(BTreeSet::new()),
            refusals_recorded: Mutex::new(std::collections::HashSet::new()),
            unpinned: Mutex::new(BTreeMap::new()),
            memberships_reported: Mutex::new(BTreeSet::new()),
            loaded: Mutex::new(Some(fingerprints)),
            provider_check: RwLock::new(None),
            audit: RwLock::new(None),
            changes,
            own_code,
            own_key,
        })
    }

    /// Sets the data plane's check of agreements this node provides.
    pub fn set_provider_check(&self, check: Arc<dyn ProviderCheck>) {
        *self
            .provider_check
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(check);
    }

    /// Whether partner `from` offering `bytes` was refused for the first
    /// time (recently: the memory is bounded).
    fn first_refusal_of(&self, from: u32, bytes: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(from.to_be_bytes());
        hasher.update(bytes);
        let key: [u8; 32] = hasher.finalize().into();
        let mut recorded = self
            .refusals_recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if recorded.len() >= 4_096 {
            recorded.clear();
        }
        recorded.insert(key)
    }

    /// Sets the audit log that records what partners' offers change.
    pub fn set_audit(&self, audit: Arc<crate::audit::AuditLog>) {
        *self
            .audit
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(audit);
    }

    /// Records governance changes and refusals brought by partner `from`
    /// (one group commit for the lot).
    fn record_offer(&self, from: u32, events: Vec<(&'static str, String)>) {
        let Some(audit) = self
            .audit
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
        else {
            return;
        };
        let entries = events
            .into_iter()
            .map(|(outcome, detail)| crate::audit::Entry {
                event: "governance".to_string(),
                outcome: outcome.to_string(),
                caller: Some(from),
                operation: "sync offer".to_string(),
                detail: crate::audit::chain::bounded(&untrusted(&detail)),
                ..crate::audit::Entry::default()
            })
            .collect();
        if let Err(error) = audit.append_all_blocking(entries) {
            tracing::error!(%error, "governance changes could not be recorded in the audit log");
        }
    }

    fn provider_check(&self) -> Option<Arc<dyn ProviderCheck>> {
        self.provider_check
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The accepted documents as of now: a consistent snapshot, cheap to
    /// take, never blocked by an import in progress.
    pub fn snapshot(&self) -> Arc<GovernanceView> {
        Arc::clone(
            &self
                .view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// A number that grows whenever the registry changes.
    pub fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    /// A receiver that changes whenever the registry does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Reads every roster, agreement and quarantined roster again from the
    /// store: another node process sharing the store imported something.
    /// Waits for an import of this process in progress to finish.
    pub fn reload(&self) -> Result<(), ImportError> {
        let _import = self
            .imports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.reload_holding_import_lock()
    }

    /// [`Registry::reload`] for a caller that holds `imports`.
    fn reload_holding_import_lock(&self) -> Result<(), ImportError> {
        let stored = StoredGovernance::read(self.store.as_ref())?;
        let fingerprints = stored.fingerprints();
        let before = *self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if before == Some(fingerprints) {
            return Ok(());
        }
        let (fresh, quarantine) =
            stored.parse(self.store.as_ref(), self.own_code, &self.own_key)?;
        *self
            .quarantine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = quarantine;
        // Only a change of rosters or agreements is news to the view's
        // readers (and to anti-entropy, which starts a round on news).
        if before.map(|b| b.documents) != Some(fingerprints.documents) {
            *self
                .view
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
            self.changes.send_modify(|generation| *generation += 1);
        }
        *self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fingerprints);
        Ok(())
    }

    /// Starts an import session (waits for one in progress to finish, in
    /// this process or, on a shared store, in another).
    fn session(&self) -> Result<Import<'_>, ImportError> {
        let guard = self
            .imports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let exclusive = self.store.exclusive(ExclusiveSection::GovernanceImport)?;
        if exclusive.is_some() {
            // Another process may have imported since this one last read:
            // judge against what the store holds now, not what the change
            // feed has delivered so far.
            self.reload_holding_import_lock()?;
        }
        Ok(Import {
            registry: self,
            exclusive,
            _guard: guard,
            view: (*self.snapshot()).clone(),
            rosters: WriteBatch::default(),
            agreements: WriteBatch::default(),
            quarantine: WriteBatch::default(),
            changed: false,
        })
    }

    /// Imports a roster file as an operator asks (see [`RosterImport`]).
    pub fn import_roster(
        &self,
        bytes: &[u8],
        mode: RosterImport,
    ) -> Result<(Imported, Roster), ImportError> {
        let mut session = self.session()?;
        // Committed even when refused: a quarantined roster is kept.
        let outcome = session.roster(bytes, mode);
        session.commit()?;
        outcome
    }

    /// Imports an agreement file, or more signatures for one already held.
    pub fn import_agreement(&self, bytes: &[u8]) -> Result<(Imported, Agreement), ImportError> {
        let mut session = self.session()?;
        let outcome = session.agreement(bytes, false)?;
        session.commit()?;
        Ok(outcome)
    }

    /// Imports documents partner `from` (municipality `from_code`) sent, of
    /// the fellowships it is a current member of (`fellowships`); others
    /// are ignored. Each is judged on its own, in one session (one flush);
    /// a refused one is logged and does not stop the rest. Returns how many
    /// changed something.
    pub fn import_offer(
        &self,
        from: u32,
        fellowships: &BTreeSet<String>,
        rosters: &[Vec<u8>],
        agreements: &[Vec<u8>],
    ) -> Result<usize, StoreError> {
        let mut session = self.session().map_err(|error| match error {
            ImportError::Store(error) => error,
            // A held document that no longer parses: the store is damaged.
            other => StoreError::Backend(format!("re-reading governance documents: {other}")),
        })?;
        let mut changed = 0;
        // One line per offer, not per document: a partner could offer
        // thousands of refusable documents in one page. The audit gets
        // every change and the first few refusals of an offer.
        let mut refused = 0usize;
        let mut first_refusal = None;
        let mut journal: Vec<(&'static str, String)> = Vec::new();
        let mut refusals_recorded = 0;
        let mut count = |outcome: Result<(Imported, String), ImportError>,
                         what: &str,
                         bytes: &[u8]| match outcome {
            Ok((Imported::Changed, document)) => {
                changed += 1;
                journal.push(("accepted", document));
            }
            Ok((Imported::Unchanged, _)) => {}
            Err(error) => {
                if !matches!(error, ImportError::Quarantined { .. }) {
                    refused += 1;
                    if first_refusal.is_none() {
                        first_refusal = Some(format!("{what}: {error}"));
                    }
                }
                // A partner offers what it holds every round: a document
                // is recorded as refused once, not every round.
                if refusals_recorded < MAX_REFUSALS_RECORDED && self.first_refusal_of(from, bytes) {
                    refusals_recorded += 1;
                    journal.push(("refused", format!("{what}: {error}")));
                }
            }
        };
        let skipped = (rosters.len() + agreements.len()).saturating_sub(MAX_OFFERED);
        let rosters = &rosters[..rosters.len().min(MAX_OFFERED)];
        let agreements = &agreements[..agreements.len().min(MAX_OFFERED - rosters.len())];
        for bytes in rosters {
            let outcome =
                match Roster::parse(bytes) {
                    Ok(roster) if !fellowships.contains(roster.fellowship()) => {
                        // Not refused as a partner's overreach when this
                        // node simply has not pinned the fellowship yet:
                        // its operator is told what to do, once.
                        self.note_unpinned_offers(
                            &format!("municipality {from}"),
                            &[pb::RosterHead {
                                fellowship: roster.fellowship().to_string(),
                                serial: roster.serial(),
                                digest: roster.digest().to_string(),
                            }],
                        );
                        continue;
                    }
                    Ok(_) => session.roster(bytes, RosterImport::FROM_PARTNER).map(
                        |(imported, roster)| {
                            (
                                imported,
                                format!(
                                    "roster `{}` serial {}",
                                    roster.fellowship(),
                                    roster.serial()
                                ),
                            )
                        },
                    ),
                    Err(error) => Err(error.into()),
                };
            count(outcome, "roster", bytes);
        }
        for bytes in agreements {
            let outcome = match Agreement::parse(bytes) {
                Ok(agreement) if !fellowships.contains(&agreement.body().fellowship) => continue,
                Ok(_) => session.agreement(bytes, true).map(|(imported, agreement)| {
                    (
                        imported,
                        format!(
                            "agreement {} of provider {}",
                            agreement.id(),
                            agreement.body().provider
                        ),
                    )
                }),
                Err(error) => Err(error.into()),
            };
            count(outcome, "agreement", bytes);
        }
        session.commit()?;
        if !journal.is_empty() {
            self.record_offer(from, journal);
        }
        if (refused > 0 || skipped > 0)
            && let Some(suppressed) = crate::telemetry::refusals().admit(&format!("partner {from}"))
        {
            tracing::warn!(
                partner = from,
                refused,
                skipped_over_limit = skipped,
                first = %untrusted(first_refusal.as_deref().unwrap_or("")),
                suppressed_since_last = suppressed,
                "a partner offered governance documents this node refused"
            );
        }
        Ok(changed)
    }

    /// The one authorisation check for peer requests, at the clock's "now".
    pub fn authorize(&self, request: &AccessRequest) -> Result<Grant, Denial> {
        authorize(&self.snapshot(), request, self.now())
    }

    /// The combined grid of this node's aggregate-only agreements on
    /// `dataset` (see [`GridPolicy`]).
    pub fn grid_policy(&self, dataset: &DatasetRef) -> Option<GridPolicy> {
        self.snapshot().grid_policy(dataset, self.now())
    }

    /// The fellowships in which the holder of `fingerprint` is a current
    /// member, by this node's rosters, and its municipality code.
    pub fn membership_of(&self, fingerprint: &Fingerprint) -> Option<(u32, BTreeSet<String>)> {
        let now = self.now();
        let view = self.snapshot();
        let mut code = None;
        let fellowships: BTreeSet<String> = view
            .rosters()
            .filter_map(|roster| {
                let member = roster
                    .member_by_fingerprint(fingerprint)
                    .filter(|member| member.is_current(now))?;
                code = Some(member.code);
                Some(roster.fellowship().to_string())
            })
            .collect();
        code.map(|code| (code, fellowships))
    }

    /// The municipality code of a former member holding `fingerprint` and
    /// the fellowships whose roster here lists it as no longer current.
    /// Such a node is told of its departure and nothing else.
    pub fn former_membership_of(
        &self,
        fingerprint: &Fingerprint,
    ) -> Option<(u32, BTreeSet<String>)> {
        let now = self.now();
        let view = self.snapshot();
        let mut code = None;
        let fellowships: BTreeSet<String> = view
            .rosters()
            .filter_map(|roster| {
                let member = roster
                    .member_by_fingerprint(fingerprint)
                    .filter(|member| !member.is_current(now))?;
                code = Some(member.code);
                Some(roster.fellowship().to_string())
            })
            .collect();
        code.map(|code| (code, fellowships))
    }

    /// The stored serials of `fellowship` from `from` up to and including
    /// the first that lists `code` as not current (or not at all): what a
    /// former member needs to learn it left, and none of the serials after.
    pub fn departure_chain(
        &self,
        fellowship: &str,
        code: u32,
        from: u64,
        budget: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let now = self.now();
        let departed_in = |bytes: &[u8]| {
            Roster::parse(bytes)
                .map(|roster| !roster.member(code).is_some_and(|m| m.is_current(now)))
                .unwrap_or(true)
        };
        // A serial it holds already tells it: nothing to add.
        if let Some(held) = self.store.get(
            Keyspace::Rosters,
            &roster_key(fellowship, from.saturating_sub(1)),
        )? && departed_in(&held)
        {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut taken = 0;
        for entry in self.store.range(
            Keyspace::Rosters,
            (
                Bound::Included(roster_key(fellowship, from)),
                Bound::Included(roster_key(fellowship, u64::MAX)),
            ),
        ) {
            let (_, bytes) = entry?;
            if !out.is_empty() && taken + bytes.len() > budget {
                break;
            }
            let departed = departed_in(&bytes);
            taken += bytes.len();
            out.push(bytes);
            if departed {
                break;
            }
        }
        Ok(out)
    }

    /// The agreements in force now under which this node is a consumer
    /// (fully signed by current keys, within their dates, provider and this
    /// node current members, roster not refused as stale), by provider and
    /// id.
    pub fn usable_agreements(&self) -> Vec<UsableAgreement> {
        let now = self.now();
        let view = self.snapshot();
        let own = view.own_code();
        let mut out: Vec<UsableAgreement> = view
            .held_agreements()
            .filter_map(|held| {
                let terms = held.agreement.body();
                if terms.provider == own || !terms.has_consumer(own) {
                    return None;
                }
                let roster = view.roster(&terms.fellowship)?;
                let provider = roster
                    .member(terms.provider)
                    .filter(|m| m.is_current(now))?;
                roster.member(own).filter(|m| m.is_current(now))?;
                if roster.is_stale(now)
                    && roster.body().on_stale == super::roster::StalePolicy::Refuse
                {
                    return None;
                }
                if !held
                    .agreement
                    .status_with(held.signatures.clone(), roster, now)
                    .is_active()
                {
                    return None;
                }
                Some(UsableAgreement {
                    id: held.agreement.id(),
                    fellowship: terms.fellowship.clone(),
                    provider: provider.code,
                    provider_name: provider.name.clone(),
                    provider_endpoint: provider.endpoint.clone(),
                    provider_fingerprint: provider.tls_fingerprint,
                    provider_key: provider.signing_key,
                    operations: terms.operations.clone(),
                    scope: terms.scope.clone(),
                    aggregate: terms.aggregate.clone(),
                    min_group_size: terms.min_group_size,
                    valid_until: terms.valid_until,
                })
            })
            .collect();
        out.sort_by_key(|a| (a.provider, a.id));
        out
    }

    /// How many agreements in force this node provides to `consumer`.
    pub fn agreements_provided_to(&self, consumer: u32) -> usize {
        let now = self.now();
        let view = self.snapshot();
        let own = view.own_code();
        view.held_agreements()
            .filter(|held| {
                let terms = held.agreement.body();
                terms.provider == own
                    && terms.has_consumer(consumer)
                    && view.roster(&terms.fellowship).is_some_and(|roster| {
                        roster.member(consumer).is_some_and(|m| m.is_current(now))
                            && held
                                .agreement
                                .status_with(held.signatures.clone(), roster, now)
                                .is_active()
                    })
            })
            .count()
    }

    /// The signing key the roster of `fellowship` lists for `code`.
    pub fn member_key(&self, fellowship: &str, code: u32) -> Option<VerifyingKey> {
        self.snapshot()
            .roster(fellowship)
            .and_then(|roster| roster.member(code))
            .map(|member| member.signing_key)
    }

    /// Current members of the fellowships this node is a current member
    /// of, other than this node, one entry per endpoint.
    pub fn partners(&self) -> Vec<Partner> {
        let now = self.now();
        let view = self.snapshot();
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
                        fingerprint: member.tls_fingerprint,
                        fellowships: BTreeSet::new(),
                    })
                    .fellowships
                    .insert(roster.fellowship().to_string());
            }
        }
        partners.into_values().collect()
    }

    /// The stored serials `from..=to` of `fellowship`'s roster, in order,
    /// stopping once `budget` bytes are taken (at least one is always
    /// returned, so a chain always moves).
    pub fn roster_chain(
        &self,
        fellowship: &str,
        from: u64,
        to: u64,
        budget: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let mut taken = 0;
        for entry in self.store.range(
            Keyspace::Rosters,
            (
                Bound::Included(roster_key(fellowship, from)),
                Bound::Included(roster_key(fellowship, to)),
            ),
        ) {
            let (_, bytes) = entry?;
            if !out.is_empty() && taken + bytes.len() > budget {
                break;
            }
            taken += bytes.len();
            out.push(bytes);
        }
        Ok(out)
    }

    /// Rosters refused because they change this node's own entry unsigned.
    pub fn quarantined(&self) -> Vec<QuarantinedRoster> {
        self.quarantine_lock().values().cloned().collect()
    }

    /// Whether this is the first time `partner` was seen holding the
    /// forked serial with `digest` of `fellowship`.
    pub fn first_report_of_fork(&self, partner: &str, fellowship: &str, digest: &str) -> bool {
        let mut reported = self
            .forks_reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A partner can make up digests: keep the memory bounded.
        if reported.len() >= 1_024 {
            reported.clear();
        }
        reported.insert((
            partner.to_string(),
            fellowship.to_string(),
            crate::telemetry::untrusted(digest),
        ))
    }

    fn quarantine_lock(&self) -> MutexGuard<'_, BTreeMap<(String, u64), QuarantinedRoster>> {
        self.quarantine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Things the operator must know now, in words: quarantined rosters,
    /// stale rosters, this node's own membership ended, a roster listing
    /// another signing key for this node.
    pub fn alerts(&self) -> Vec<String> {
        let now = self.now();
        let view = self.snapshot();
        let mut alerts = Vec::new();
        for q in self.quarantined() {
            alerts.push(format!(
                "roster serial {} of `{}` ({}) is quarantined: it changes a member's entry ({}) \
                 without that member's signature; the node keeps its current roster",
                q.serial, q.fellowship, q.digest, q.changes
            ));
        }
        let mut rosters: Vec<&Roster> = view.rosters().collect();
        rosters.sort_by(|a, b| a.fellowship().cmp(b.fellowship()));
        for roster in rosters {
            if roster.is_stale(now)
                && let Some(review_by) = roster.body().review_by
            {
                alerts.push(format!(
                    "the roster of `{}` (serial {}) was due for review on {}; no newer serial has \
                     reached this node{}",
                    roster.fellowship(),
                    roster.serial(),
                    super::body::ymd(review_by),
                    if roster.body().on_stale == super::roster::StalePolicy::Refuse {
                        "; data calls under its agreements are refused"
                    } else {
                        ""
                    }
                ));
            }
            match roster.member(view.own_code()) {
                Some(own) if !own.is_current(now) => {}
                Some(own) if own.signing_key != *view.own_key() => alerts.push(format!(
                    "the roster of `{}` lists signing key {} for this node, but it holds {}; \
                     agreements it provides are not in force",
                    roster.fellowship(),
                    signing_key_text(&own.signing_key),
                    signing_key_text(view.own_key())
                )),
                _ => {}
            }
        }
        alerts.extend(
            self.own_memberships()
                .into_iter()
                .filter(|m| !m.current)
                .map(|m| m.detail),
        );
        alerts.extend(self.unpinned_offers().iter().map(UnpinnedOffer::detail));
        alerts
    }

    /// Every roster and agreement with its status now, for people.
    pub fn list(&self) -> (Vec<pb::RosterInfo>, Vec<pb::AgreementInfo>) {
        let now = self.now();
        let view = self.snapshot();
        let mut rosters: Vec<pb::RosterInfo> =
            view.rosters().map(|r| roster_info(r, now)).collect();
        rosters.sort_by(|a, b| a.fellowship.cmp(&b.fellowship));
        let mut agreements: Vec<pb::AgreementInfo> = view
            .held_agreements()
            .map(|held| {
                agreement_info(
                    &held.agreement,
                    Some(&held.signatures),
                    view.roster(&held.agreement.body().fellowship),
                    now,
                )
            })
            .collect();
        agreements.sort_by(|a, b| (a.provider, &a.id).cmp(&(b.provider, &b.id)));
        (rosters, agreements)
    }

    /// At most `max_items` rosters and agreements after `after` (from the
    /// start with `None`), in the order of [`Registry::list`], ending
    /// before the page's encoded size would pass `max_bytes` (a page holds
    /// at least one item, whatever its size).
    pub fn list_page(
        &self,
        after: Option<&ListCursor>,
        max_items: usize,
        max_bytes: usize,
    ) -> ListPage {
        use prost::Message;
        let now = self.now();
        let view = self.snapshot();
        let mut rosters: Vec<&Roster> = match after {
            Some(ListCursor::Agreement(..)) => Vec::new(),
            Some(ListCursor::Roster(last)) => view
                .rosters()
                .filter(|r| r.fellowship() > last.as_str())
                .collect(),
            None => view.rosters().collect(),
        };
        rosters.sort_by(|a, b| a.fellowship().cmp(b.fellowship()));
        let mut keys: Vec<(u32, Uuid)> = view
            .held_agreements()
            .map(|held| (held.agreement.body().provider, held.agreement.id()))
            .filter(|key| match after {
                Some(ListCursor::Agreement(provider, id)) => *key > (*provider, *id),
                _ => true,
            })
            .collect();
        keys.sort();
        let mut page = ListPage::default();
        let mut size = 0usize;
        let mut last: Option<ListCursor> = None;
        let max_items = max_items.max(1);
        // Each item costs its encoding plus a tag and a length prefix.
        let fits = |size: usize, len: usize, items: usize| {
            items == 0 || (items < max_items && size + len + 6 <= max_bytes)
        };
        for roster in rosters {
            let info = roster_info(roster, now);
            let len = info.encoded_len();
            if !fits(size, len, page.rosters.len()) {
                page.next = last;
                return page;
            }
            size += len + 6;
            last = Some(ListCursor::Roster(roster.fellowship().to_string()));
            page.rosters.push(info);
        }
        for (provider, id) in keys {
            let Some(held) = view.held(provider, id) else {
                continue;
            };
            let info = agreement_info(
                &held.agreement,
                Some(&held.signatures),
                view.roster(&held.agreement.body().fellowship),
                now,
            );
            let len = info.encoded_len();
            if !fits(size, len, page.rosters.len() + page.agreements.len()) {
                page.next = last;
                return page;
            }
            size += len + 6;
            last = Some(ListCursor::Agreement(provider, id));
            page.agreements.push(info);
        }
        page
    }

    /// This node's own entry in the roster of every fellowship held here,
    /// by fellowship.
    pub fn own_memberships(&self) -> Vec<OwnMembership> {
        let now = self.now();
        let view = self.snapshot();
        let own = view.own_code();
        let mut rosters: Vec<&Roster> = view.rosters().collect();
        rosters.sort_by(|a, b| a.fellowship().cmp(b.fellowship()));
        rosters
            .into_iter()
            .map(|roster| {
                let (fellowship, serial) = (roster.fellowship().to_string(), roster.serial());
                let Some(entry) = roster.member(own) else {
                    return OwnMembership {
                        detail: format!(
                            "this node ({own}) is not listed in roster serial {serial} of \
                             fellowship {fellowship}: partners will refuse its calls there"
                        ),
                        fellowship,
                        serial,
                        listed: false,
                        current: false,
                        left: None,
                    };
                };
                let who = format!("this node ({own} {})", entry.name);
                let current = entry.is_current(now);
                let detail = match entry.left {
                    Some(left) if !current && now >= super::body::start_of(left) => format!(
                        "{who} left fellowship {fellowship} on {} per roster serial {serial}: \
                         partners will refuse its calls",
                        super::body::ymd(left)
                    ),
                    _ if !current => format!(
                        "{who} joins fellowship {fellowship} on {} per roster serial {serial}; \
                         until then partners refuse its calls",
                        super::body::ymd(entry.joined)
                    ),
                    Some(left) => format!(
                        "{who} is a member of fellowship {fellowship} until {} per roster \
                         serial {serial}",
                        super::body::ymd(left)
                    ),
                    None => format!(
                        "{who} is a member of fellowship {fellowship} since {} per roster \
                         serial {serial}",
                        super::body::ymd(entry.joined)
                    ),
                };
                OwnMembership {
                    fellowship,
                    serial,
                    listed: true,
                    current,
                    left: entry.left,
                    detail,
                }
            })
            .collect()
    }

    /// Logs, once per fellowship and roster serial, that this node's own
    /// membership has ended (or that the roster does not list it). Called
    /// every sync round, so a left date passing is noticed without an
    /// import; a line per round would only bury it.
    pub fn report_own_membership(&self) {
        for membership in self.own_memberships() {
            let ended = !membership.listed
                || (!membership.current
                    && membership
                        .left
                        .is_some_and(|left| self.now() >= super::body::start_of(left)));
            if !ended {
                continue;
            }
            let fresh = self
                .memberships_reported
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert((membership.fellowship.clone(), membership.serial));
            if fresh {
                tracing::error!(
                    fellowship = %membership.fellowship,
                    serial = membership.serial,
                    "{}",
                    membership.detail
                );
            }
        }
    }

    /// Notes roster heads a partner (`partner`, in words) offered for
    /// fellowships not pinned here: logged at WARN once per fellowship and
    /// serial, kept for `Status` until the fellowship is pinned.
    pub fn note_unpinned_offers(&self, partner: &str, heads: &[pb::RosterHead]) {
        let view = self.snapshot();
        let well_formed = |head: &pb::RosterHead| {
            !head.fellowship.is_empty()
                && head.fellowship.len() <= 64
                && head
                    .fellowship
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && head.digest.len() <= 80
                && head
                    .digest
                    .strip_prefix("sha256:")
                    .is_some_and(|hex| hex.chars().all(|c| c.is_ascii_hexdigit()))
        };
        let mut held = self
            .unpinned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for head in heads.iter().take(16) {
            if !well_formed(head) || view.roster(&head.fellowship).is_some() {
                continue;
            }
            let key = (head.fellowship.clone(), head.serial);
            if held.contains_key(&key) || held.len() >= MAX_UNPINNED {
                continue;
            }
            let offer = UnpinnedOffer {
                fellowship: head.fellowship.clone(),
                serial: head.serial,
                digest: head.digest.clone(),
                partner: untrusted(partner).to_string(),
            };
            tracing::warn!(
                fellowship = %offer.fellowship,
                serial = offer.serial,
                digest = %offer.digest,
                "{}",
                offer.detail()
            );
            held.insert(key, offer);
        }
    }

    /// Roster offers for fellowships still not pinned here.
    pub fn unpinned_offers(&self) -> Vec<UnpinnedOffer> {
        let view = self.snapshot();
        let mut held = self
            .unpinned
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.retain(|(fellowship, _), _| view.roster(fellowship).is_none());
        held.values().cloned().collect()
    }

    /// The report of one roster, now.
    pub fn roster_info(&self, roster: &Roster) -> pb::RosterInfo {
        roster_info(roster, self.now())
    }

    /// The report of one agreement, now, against the roster this node holds.
    pub fn agreement_info(&self, agreement: &Agreement) -> pb::AgreementInfo {
        let view = self.snapshot();
        let held = view
            .held(agreement.body().provider, agreement.id())
            .filter(|held| held.agreement.digest() == agreement.digest());
        agreement_info(
            agreement,
            held.map(|held| &held.signatures),
            view.roster(&agreement.body().fellowship),
            self.now(),
        )
    }
}

/// The changes `candidate` makes to members' entries in `current` that
/// only those members may consent to, and that the member did not sign:
/// its signature must be by the key `current` lists for it (this node's
/// own entry: by the key this node holds, `own_key`).
fn unconsented_changes(
    own_code: u32,
    own_key: &VerifyingKey,
    current: &Roster,
    candidate: &Roster,
) -> Vec<RosterChange> {
    diff(current.body(), candidate.body())
        .into_iter()
        .filter(|change| change.speaks_for_member())
        .filter(|change| {
            let Some(code) = change.member_code() else {
                return false;
            };
            let consenting_key = if code == own_code {
                Some(*own_key)
            } else {
                current.member(code).map(|m| m.signing_key)
            };
            !consenting_key.is_some_and(|key| candidate.signed_by(&key))
        })
        .collect()
}

/// Rosters held back, by (fellowship, serial).
type Quarantine = BTreeMap<(String, u64), QuarantinedRoster>;

/// SHA-256 fingerprints of the stored governance entries (keyspace, key,
/// value): the documents that make the view, and the quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprints {
    documents: [u8; 32],
    quarantine: [u8; 32],
}

/// Every stored governance entry, read but not yet parsed.
struct StoredGovernance {
    rosters: Vec<Entry>,
    agreements: Vec<Entry>,
    quarantine: Vec<Entry>,
}

impl StoredGovernance {
    fn read(store: &dyn Store) -> Result<StoredGovernance, StoreError> {
        let all = |space| store.scan_prefix(space, b"").collect::<Result<Vec<_>, _>>();
        Ok(StoredGovernance {
            rosters: all(Keyspace::Rosters)?,
            agreements: all(Keyspace::Agreements)?,
            quarantine: all(Keyspace::Quarantine)?,
        })
    }

    fn fingerprints(&self) -> Fingerprints {
        use sha2::Digest;
        let hash = |spaces: &[(Keyspace, &Vec<Entry>)]| {
            let mut hasher = sha2::Sha256::new();
            for (space, entries) in spaces {
                for (key, value) in entries.iter() {
                    // Lengths first, so entries cannot run into each other.
                    hasher.update(space.name().as_bytes());
                    hasher.update([0]);
                    hasher.update((key.len() as u64).to_be_bytes());
                    hasher.update(key);
                    hasher.update((value.len() as u64).to_be_bytes());
                    hasher.update(value);
                }
            }
            <[u8; 32]>::from(hasher.finalize())
        };
        Fingerprints {
            documents: hash(&[
                (Keyspace::Rosters, &self.rosters),
                (Keyspace::Agreements, &self.agreements),
            ]),
            quarantine: hash(&[(Keyspace::Quarantine, &self.quarantine)]),
        }
    }

    /// The governance view and quarantine these entries make (re-keying
    /// agreements stored by an older release in `store`).
    fn parse(
        self,
        store: &dyn Store,
        own_code: u32,
        own_key: &VerifyingKey,
    ) -> Result<(GovernanceView, Quarantine), ImportError> {
        let mut view = GovernanceView::new(own_code, *own_key);
        let mut latest: BTreeMap<String, Roster> = BTreeMap::new();
        for (_, bytes) in self.rosters {
            let roster = Roster::parse(&bytes)?;
            // Keys sort by fellowship, then serial: the last one wins.
            latest.insert(roster.fellowship().to_string(), roster);
        }
        for roster in latest.into_values() {
            view.insert_roster(roster);
        }
        let mut rekey = WriteBatch::default();
        for (key, bytes) in self.agreements {
            let agreement = Agreement::parse(&bytes)?;
            if key.len() == 16 {
                // Written before agreements were keyed by provider.
                rekey.delete(key);
                rekey.put(agreement_key(key_of(&agreement)), bytes);
            }
            view.insert_agreement(agreement);
        }
        if !rekey.ops.is_empty() {
            tracing::info!(
                agreements = rekey.ops.len() / 2,
                "re-keying stored agreements by provider and id"
            );
            store.write(Keyspace::Agreements, rekey)?;
            store.flush()?;
        }
        let mut quarantine = BTreeMap::new();
        for (_, bytes) in self.quarantine {
            let roster = Roster::parse(&bytes)?;
            let changes = view
                .roster(roster.fellowship())
                .map(|current| unconsented_changes(own_code, own_key, current, &roster))
                .unwrap_or_default();
            quarantine.insert(
                (roster.fellowship().to_string(), roster.serial()),
                QuarantinedRoster {
                    fellowship: roster.fellowship().to_string(),
                    serial: roster.serial(),
                    digest: roster.digest(),
                    changes: describe(&changes),
                },
            );
        }
        Ok((view, quarantine))
    }
}

fn describe(changes: &[RosterChange]) -> String {
    changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One import session: see the module documentation.
struct Import<'a> {
    registry: &'a Registry,
    /// The cross-process hold on imports, on a shared store (declared
    /// first: released before the in-process lock).
    exclusive: Option<ExclusiveGuard>,
    _guard: MutexGuard<'a, ()>,
    view: GovernanceView,
    rosters: WriteBatch,
    agreements: WriteBatch,
    quarantine: WriteBatch,
    changed: bool,
}

impl Import<'_> {
    fn now(&self) -> OffsetDateTime {
        self.registry.now()
    }

    fn roster(
        &mut self,
        bytes: &[u8],
        mode: RosterImport,
    ) -> Result<(Imported, Roster), ImportError> {
        let roster = Roster::parse(bytes)?;
        let now = self.now();
        let own_code = self.view.own_code();
        let own_key = *self.view.own_key();
        let fellowship = roster.fellowship().to_string();
        let current = self.view.roster(&fellowship).cloned();
        match &current {
            None if !(mode.trust_anchor || mode.repin) => {
                return Err(ImportError::NotAnchored(fellowship));
            }
            Some(current) if current.digest() == roster.digest() => {
                return Ok((Imported::Unchanged, current.clone()));
            }
            None => accept_first(&roster, now)?,
            Some(_) if mode.repin => accept_first(&roster, now)?,
            Some(current) => accept_next(current, &roster, now)?,
        }
        if let Some(current) = current.as_ref().filter(|_| !mode.repin) {
            let changes = unconsented_changes(own_code, &own_key, current, &roster);
            if !changes.is_empty() {
                if !mode.accept_own_entry_change {
                    return Err(self.quarantine(current, &roster, &changes));
                }
                tracing::warn!(
                    fellowship = %fellowship,
                    serial = roster.serial(),
                    changes = %describe(&changes),
                    "operator accepted a roster that changes a member's entry without that \
                     member's signature"
                );
            }
        }
        if let Some(own) = roster.member(own_code)
            && own.signing_key != own_key
        {
            tracing::warn!(
                fellowship = %fellowship,
                serial = roster.serial(),
                listed = %signing_key_text(&own.signing_key),
                held = %signing_key_text(&own_key),
                "the roster lists another signing key for this node than the one it holds"
            );
        }
        if mode.repin && current.is_some() {
            // Drop the chain this node followed; the new roster starts one.
            for entry in self.registry.store.scan_prefix(
                Keyspace::Rosters,
                &roster_key(&fellowship, 0)[..fellowship.len() + 1],
            ) {
                self.rosters.delete(entry?.0);
            }
            tracing::warn!(
                fellowship = %fellowship,
                serial = roster.serial(),
                digest = %roster.digest(),
                replaced = current.as_ref().map(|c| c.serial()).unwrap_or_default(),
                "operator re-pinned the fellowship's roster"
            );
        }
        self.rosters
            .put(roster_key(&fellowship, roster.serial()), roster.to_bytes());
        // A roster at or past a quarantined serial settles it.
        let settled: Vec<(String, u64)> = self
            .registry
            .quarantine_lock()
            .keys()
            .filter(|(f, serial)| f == &fellowship && *serial <= roster.serial())
            .cloned()
            .collect();
        for (f, serial) in settled {
            self.quarantine.delete(roster_key(&f, serial));
        }
        tracing::info!(
            fellowship = %fellowship,
            serial = roster.serial(),
            digest = %roster.digest(),
            trust_anchor = mode.trust_anchor,
            "roster accepted"
        );
        self.view.insert_roster(roster.clone());
        self.changed = true;
        Ok((Imported::Changed, roster))
    }

    /// Records `candidate` as quarantined and raises the alert (once per
    /// roster: partners offer it again every round).
    fn quarantine(
        &mut self,
        current: &Roster,
        candidate: &Roster,
        changes: &[RosterChange],
    ) -> ImportError {
        let key = (candidate.fellowship().to_string(), candidate.serial());
        let described = describe(changes);
        let mut held = self.registry.quarantine_lock();
        let fresh = held.get(&key).map(|q| q.digest) != Some(candidate.digest());
        if fresh {
            tracing::error!(
                fellowship = %candidate.fellowship(),
                serial = candidate.serial(),
                digest = %candidate.digest(),
                changes = %described,
                "roster QUARANTINED: it changes a member's entry without that member's \
                 signature; the node keeps its current roster. Check with the secretariat"
            );
            held.insert(
                key.clone(),
                QuarantinedRoster {
                    fellowship: key.0.clone(),
                    serial: key.1,
                    digest: candidate.digest(),
                    changes: described.clone(),
                },
            );
            self.quarantine
                .put(roster_key(&key.0, key.1), candidate.to_bytes());
        }
        ImportError::Quarantined {
            fellowship: key.0,
            serial: key.1,
            current: current.serial(),
            changes: described,
        }
    }

    /// Imports an agreement; `from_partner` applies the partner rules.
    fn agreement(
        &mut self,
        bytes: &[u8],
        from_partner: bool,
    ) -> Result<(Imported, Agreement), ImportError> {
        let agreement = Agreement::parse(bytes)?;
        let id = agreement.id();
        let own_code = self.view.own_code();
        let own_key = *self.view.own_key();
        let terms = agreement.body();
        // Cheap refusals before any signature is checked: more signatures
        // than there are parties (and the secretariat) to make, and an
        // offer of what is already held.
        let signatures = &agreement.document().signatures;
        if signatures.len() > terms.required_signers().len() + 1 {
            return Err(ImportError::TooManySignatures {
                id,
                count: signatures.len(),
            });
        }
        if let Some(held) = self.view.agreement(terms.provider, id)
            && held.digest() == agreement.digest()
            && signatures.iter().all(|offered| {
                held.document()
                    .signatures
                    .iter()
                    .any(|kept| kept.signer == offered.signer)
            })
        {
            return Ok((Imported::Unchanged, held.clone()));
        }
        let fellowship = terms.fellowship.clone();
        let roster = self
            .view
            .roster(&fellowship)
            .ok_or_else(|| ImportError::UnknownFellowship(fellowship.clone()))?;
        let is_party = terms.provider == own_code || terms.has_consumer(own_code);
        if from_partner && !is_party {
            return Err(ImportError::NotAParty { id });
        }
        // A new agreement must name consumers that can use it. One held
        // already keeps collecting signatures after a consumer leaves: the
        // departure is enforced at every call, and refusing the merge would
        // only keep the remaining parties from completing it.
        if self.view.agreement(terms.provider, id).is_none() {
            terms
                .check_consumers(roster, self.now())
                .map_err(|problem| ImportError::Consumer { id, problem })?;
        }
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
            } else if terms.provider == own_code && check.signer == own_key {
                // This node's own signature, under a roster that lists
                // another key for it: kept, and reported below.
                offered.push(signature.clone());
            } else {
                tracing::debug!(agreement = %id, %signer, "dropping a signature by a key the roster no longer lists");
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
        let key = key_of(&agreement);
        let held = self.view.agreement(key.provider, key.id);
        let mut signatures: Vec<Signature> = match held {
            None => Vec::new(),
            Some(held) if held.digest() != agreement.digest() => {
                return Err(ImportError::Conflict { id });
            }
            Some(held) => held
                .document()
                .signatures
                .iter()
                .filter(|s| {
                    counts_for(held, roster, &s.signer)
                        || (terms.provider == own_code && s.signer == own_key)
                })
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
        let provider = terms.provider;
        if provider == own_code {
            if !signatures.iter().any(|s| s.signer == own_key) {
                return Err(ImportError::NotSignedByThisNode {
                    id,
                    key: signing_key_text(&own_key),
                });
            }
            if let Some(check) = self.registry.provider_check() {
                check
                    .check(terms)
                    .map_err(|reason| ImportError::Unacceptable { id, reason })?;
            }
        } else {
            let provider_signed = roster
                .member(provider)
                .is_some_and(|m| signatures.iter().any(|s| s.signer == m.signing_key));
            if !provider_signed {
                return Err(ImportError::NoProviderSignature {
                    id,
                    provider: roster.party(provider).to_string(),
                });
            }
        }
        if held.is_none()
            && self.view.agreements_of(&fellowship, provider) >= MAX_AGREEMENTS_PER_PROVIDER
        {
            return Err(ImportError::TooManyAgreements {
                id,
                provider: roster.party(provider).to_string(),
                fellowship,
            });
        }
        let merged = Agreement::from_document(SignedDocument {
            body: agreement.document().body.clone(),
            signatures,
        })?;
        self.agreements.put(agreement_key(key), merged.to_bytes());
        tracing::info!(
            agreement = %id,
            provider,
            fellowship = %merged.body().fellowship,
            signatures = merged.document().signatures.len(),
            "agreement accepted"
        );
        self.view.insert_agreement(merged.clone());
        self.changed = true;
        Ok((Imported::Changed, merged))
    }

    /// On a shared store, still holding the import lock: notes what is
    /// stored now (this session's writes, nobody else's), so this
    /// process's own change notification re-reads nothing. Best effort:
    /// unknown, the next re-read parses everything once.
    fn remember_stored(&self) {
        if self.exclusive.is_none() {
            return;
        }
        if let Ok(stored) = StoredGovernance::read(self.registry.store.as_ref()) {
            *self
                .registry
                .loaded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stored.fingerprints());
        }
    }

    /// Writes and flushes what the session changed, then publishes the new
    /// view. Nothing is visible to readers before it is durable.
    fn commit(mut self) -> Result<(), StoreError> {
        let store = &self.registry.store;
        let quarantined = !self.quarantine.ops.is_empty();
        if !quarantined && !self.changed {
            return Ok(());
        }
        if let Some(exclusive) = &self.exclusive {
            // Write only while this process still holds the import lock:
            // had it been lost, another process may have imported since
            // this session read the store.
            exclusive.confirm()?;
        }
        *self
            .registry
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        if quarantined {
            store.write(Keyspace::Quarantine, self.quarantine.clone())?;
        }
        if !self.changed {
            store.flush()?;
            self.remember_stored();
            return Ok(());
        }
        // A roster and the agreements it settles land together or not at
        // all.
        store.write_all(vec![
            (Keyspace::Rosters, std::mem::take(&mut self.rosters)),
            (Keyspace::Agreements, std::mem::take(&mut self.agreements)),
        ])?;
        store.flush()?;
        // Settled quarantine entries leave memory with the new roster.
        {
            let mut held = self.registry.quarantine_lock();
            for op in &self.quarantine.ops {
                if let crate::store::WriteOp::Delete { key } = op {
                    held.retain(|(f, serial), _| roster_key(f, *serial) != *key);
                }
            }
        }
        *self
            .registry
            .view
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(self.view.clone());
        self.registry
            .changes
            .send_modify(|generation| *generation += 1);
        self.remember_stored();
        Ok(())
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

/// Whether `code` is a party to `agreement`: its provider, a named
/// consumer, or any member when it is for all.
pub fn is_party(agreement: &Agreement, code: u32) -> bool {
    let terms = agreement.body();
    terms.provider == code || terms.has_consumer(code)
}

fn date_text(date: Option<time::Date>) -> String {
    date.map(super::body::ymd).unwrap_or_default()
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
                joined: super::body::ymd(m.joined),
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

/// The report of one agreement; `judged` is its signature status as the
/// view judged it (this node's own key included), if at hand.
fn agreement_info(
    agreement: &Agreement,
    judged: Option<&super::agreement::SignatureStatus>,
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
            let signatures = judged
                .cloned()
                .unwrap_or_else(|| agreement.signature_status(roster));
            let status = agreement.status_with(signatures.clone(), roster, now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::governance::agreement::tests::greve_air_quality;
    use crate::governance::document::tests::key;
    use crate::governance::roster::DecisionRule;
    use crate::governance::roster::tests::{NOW, SECRETARIAT_SEED, digit_roster, member_seed};
    use crate::store::SledStore;

    const GREVE: u32 = 253;
    const GULDBORGSUND: u32 = 376;
    const VEJLE: u32 = 630;

    /// The registry of the node of `own` with the DIGIT roster pinned.
    fn registry(own: u32) -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let registry = registry_on(store, own);
        pin_digit(&registry);
        (dir, registry)
    }

    /// Pins the DIGIT roster (serial 1) as the operator does.
    fn pin_digit(registry: &Registry) {
        registry
            .import_roster(
                &digit_roster(DecisionRule::Secretariat).to_bytes(),
                RosterImport {
                    trust_anchor: true,
                    ..RosterImport::default()
                },
            )
            .expect("pin the roster");
    }

    /// The registry of the node of `own` on `store`, as it holds it.
    fn registry_on(store: Arc<dyn Store>, own: u32) -> Registry {
        Registry::open(
            store,
            own,
            key(member_seed(own)).verifying_key(),
            Arc::new(ManualClock::new(NOW)),
        )
        .expect("registry")
    }

    /// A fresh agreement of Greve's for all members, signed by Greve.
    fn offer_of_greve() -> Vec<u8> {
        let mut terms = greve_air_quality();
        terms.id = AgreementBody::new_id();
        terms.consumers = Consumers::All;
        terms.excluded_fields.clear();
        let mut agreement = terms.to_draft().expect("draft");
        agreement.sign(&key(member_seed(GREVE))).expect("sign");
        agreement.to_bytes()
    }

    #[test]
    fn one_provider_can_make_a_node_hold_only_so_many_agreements() {
        let (_dir, registry) = registry(VEJLE);
        let fellowships: BTreeSet<String> = ["digit".to_string()].into();
        let flood: Vec<Vec<u8>> = (0..MAX_AGREEMENTS_PER_PROVIDER + 20)
            .map(|_| offer_of_greve())
            .collect();
        // One offer is looked at up to MAX_OFFERED documents.
        let mut changed = 0;
        for page in flood.chunks(MAX_OFFERED) {
            changed += registry
                .import_offer(GREVE, &fellowships, &[], page)
                .expect("import");
        }
        assert_eq!(changed, MAX_AGREEMENTS_PER_PROVIDER);
        let oversized: Vec<Vec<u8>> = (0..MAX_OFFERED + 5).map(|_| offer_of_greve()).collect();
        let (_dir2, fresh) = self::registry(VEJLE);
        assert_eq!(
            fresh
                .import_offer(GREVE, &fellowships, &[], &oversized)
                .expect("import"),
            MAX_OFFERED
        );
        let err = registry
            .import_agreement(&offer_of_greve())
            .expect_err("over the cap");
        assert!(
            matches!(err, ImportError::TooManyAgreements { .. }),
            "{err}"
        );
        assert_eq!(registry.list().1.len(), MAX_AGREEMENTS_PER_PROVIDER);
    }

    #[test]
    fn partners_may_offer_only_agreements_this_node_is_a_party_to() {
        let (_dir, registry) = registry(VEJLE);
        // Greve and Guldborgsund only: Vejle is no party.
        let mut terms = greve_air_quality();
        terms.consumers = Consumers::Named(vec![GULDBORGSUND]);
        terms.excluded_fields.clear();
        let mut agreement = terms.to_draft().expect("draft");
        for code in [GREVE, GULDBORGSUND] {
            agreement.sign(&key(member_seed(code))).expect("sign");
        }
        let fellowships: BTreeSet<String> = ["digit".to_string()].into();
        let changed = registry
            .import_offer(GREVE, &fellowships, &[], &[agreement.to_bytes()])
            .expect("import");
        assert_eq!(changed, 0);
        assert!(registry.list().1.is_empty());
        // An operator may still import it here (to relay it to its parties).
        registry
            .import_agreement(&agreement.to_bytes())
            .expect("operator import");
    }

    #[test]
    fn a_former_member_is_served_the_serials_up_to_its_departure_only() {
        let (_dir, registry) = registry(GREVE);
        let serial_1 = digit_roster(DecisionRule::Secretariat);
        let sign = |body: &crate::governance::roster::RosterBody| {
            let mut roster = body.to_draft().expect("draft");
            roster.sign(&key(SECRETARIAT_SEED)).expect("sign");
            roster
        };
        let mut body = serial_1.next_draft(NOW);
        body.mark_left(VEJLE, NOW.date()).expect("left");
        let serial_2 = sign(&body);
        let mut body = serial_2.next_draft(NOW);
        body.name = "DIGIT, after Vejle".to_string();
        let serial_3 = sign(&body);
        for roster in [&serial_2, &serial_3] {
            registry
                .import_roster(&roster.to_bytes(), RosterImport::default())
                .expect("import");
        }
        let vejle = crate::governance::roster::tests::fingerprint(VEJLE);
        assert!(registry.membership_of(&vejle).is_none());
        let (code, fellowships) = registry.former_membership_of(&vejle).expect("former");
        assert_eq!((code, fellowships.len()), (VEJLE, 1));
        let chain = registry
            .departure_chain("digit", VEJLE, 2, usize::MAX)
            .expect("chain");
        assert_eq!(chain, vec![serial_2.to_bytes()]);
        // Holding serial 2 already, it is sent nothing more.
        assert!(
            registry
                .departure_chain("digit", VEJLE, 3, usize::MAX)
                .expect("chain")
                .is_empty()
        );
        // A current member is no former member.
        let greve = crate::governance::roster::tests::fingerprint(GREVE);
        assert!(registry.former_membership_of(&greve).is_none());
    }

    #[test]
    fn offered_agreements_naming_unknown_or_departed_consumers_are_refused() {
        let (_dir, registry) = registry(VEJLE);
        let fellowships: BTreeSet<String> = ["digit".to_string()].into();
        // 999 is no member; Roskilde (265) left on 2025-01-01, before now.
        for consumers in [vec![VEJLE, 999], vec![VEJLE, 265]] {
            let mut terms = greve_air_quality();
            terms.id = AgreementBody::new_id();
            terms.consumers = Consumers::Named(consumers.clone());
            terms.excluded_fields.clear();
            let mut agreement = terms.to_draft().expect("draft");
            agreement.sign(&key(member_seed(GREVE))).expect("sign");
            let changed = registry
                .import_offer(GREVE, &fellowships, &[], &[agreement.to_bytes()])
                .expect("import");
            assert_eq!(changed, 0, "{consumers:?}");
            let err = registry
                .import_agreement(&agreement.to_bytes())
                .expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, ImportError::Consumer { .. }), "{text}");
            if consumers.contains(&999) {
                assert!(
                    text.contains("consumer 999 is not a member of `digit`"),
                    "{text}"
                );
            } else {
                assert!(
                    text.contains("consumer 265 (Roskilde Kommune) left `digit` on 2025-01-01"),
                    "{text}"
                );
            }
        }
        assert!(registry.list().1.is_empty());
    }

    #[test]
    fn list_pages_keep_to_their_byte_budget_and_miss_nothing() {
        use prost::Message;
        let (_dir, registry) = registry(VEJLE);
        let fellowships: BTreeSet<String> = ["digit".to_string()].into();
        let offers: Vec<Vec<u8>> = (0..40).map(|_| offer_of_greve()).collect();
        registry
            .import_offer(GREVE, &fellowships, &[], &offers)
            .expect("import");
        let budget = 1_000;
        let mut after = None;
        let mut agreements = Vec::new();
        let mut rosters = 0;
        let mut pages = 0;
        loop {
            let page = registry.list_page(after.as_ref(), 1000, budget);
            pages += 1;
            let size: usize = page
                .rosters
                .iter()
                .map(|r| r.encoded_len() + 6)
                .sum::<usize>()
                + page
                    .agreements
                    .iter()
                    .map(|a| a.encoded_len() + 6)
                    .sum::<usize>();
            let items = page.rosters.len() + page.agreements.len();
            assert!(items >= 1);
            assert!(
                size <= budget || items == 1,
                "{size} bytes in {items} items"
            );
            rosters += page.rosters.len();
            agreements.extend(page.agreements.into_iter().map(|a| a.id));
            match page.next {
                Some(next) => {
                    let token = next.to_token();
                    assert_eq!(ListCursor::from_token(&token), Ok(next.clone()));
                    after = Some(next);
                }
                None => break,
            }
        }
        assert!(pages > 5, "{pages} pages");
        assert_eq!(rosters, 1);
        let unique: BTreeSet<&String> = agreements.iter().collect();
        assert_eq!((agreements.len(), unique.len()), (40, 40));
        assert!(ListCursor::from_token("x:1").is_err());
        assert!(ListCursor::from_token("a:12:zz").is_err());
    }

    #[test]
    fn an_ended_own_membership_is_reported_once_per_serial() {
        // Roskilde (265) left on 2025-01-01; now is 2025-03-01.
        let (_dir, registry) = registry(265);
        let memberships = registry.own_memberships();
        assert_eq!(memberships.len(), 1);
        assert!(!memberships[0].current);
        assert_eq!(
            memberships[0].detail,
            "this node (265 Roskilde Kommune) left fellowship digit on 2025-01-01 per roster \
             serial 1: partners will refuse its calls"
        );
        for _ in 0..3 {
            registry.report_own_membership();
        }
        assert_eq!(registry.memberships_reported.lock().expect("lock").len(), 1);
        assert!(registry.alerts().contains(&memberships[0].detail));
        // A current member has nothing to report.
        let (_dir, greve) = self::registry(GREVE);
        greve.report_own_membership();
        assert!(greve.memberships_reported.lock().expect("lock").is_empty());
        assert!(greve.own_memberships()[0].current);
    }

    #[test]
    fn unpinned_roster_offers_are_noted_once_and_dropped_when_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let registry = Registry::open(
            store,
            VEJLE,
            key(member_seed(VEJLE)).verifying_key(),
            Arc::new(ManualClock::new(NOW)),
        )
        .expect("registry");
        let roster = digit_roster(DecisionRule::Secretariat);
        let head = pb::RosterHead {
            fellowship: "digit".to_string(),
            serial: 1,
            digest: roster.digest().to_string(),
        };
        let junk = pb::RosterHead {
            fellowship: "digit\nforged log line".to_string(),
            serial: 1,
            digest: "sha256:00".to_string(),
        };
        // The roster itself offered in a sync page, then its head in
        // summaries, round after round: one notice.
        let changed = registry
            .import_offer(GREVE, &BTreeSet::new(), &[roster.to_bytes()], &[])
            .expect("offer");
        assert_eq!(changed, 0);
        assert_eq!(registry.unpinned_offers().len(), 1);
        for _ in 0..3 {
            registry.note_unpinned_offers("municipality 253", &[head.clone(), junk.clone()]);
        }
        let offers = registry.unpinned_offers();
        assert_eq!(offers.len(), 1);
        assert_eq!(
            offers[0].detail(),
            format!(
                "roster serial 1 for digit offered by partner municipality 253 is not pinned \
                 here: check digest {} with the secretariat, then `samvirke push FILE \
                 --trust-anchor`",
                roster.digest()
            )
        );
        registry
            .import_roster(
                &roster.to_bytes(),
                RosterImport {
                    trust_anchor: true,
                    ..RosterImport::default()
                },
            )
            .expect("pin");
        assert!(registry.unpinned_offers().is_empty());
        // Heads of pinned fellowships are no news.
        registry.note_unpinned_offers("municipality 253", &[head]);
        assert!(registry.unpinned_offers().is_empty());
    }

    /// Two node processes' registries on one PostgreSQL database, the
    /// second not following change notifications (as if they were late):
    /// an import is still judged against what the database holds.
    #[test]
    fn on_a_shared_database_imports_are_judged_against_the_stored_documents() {
        let server = crate::dev_postgres::DevPostgres::shared().expect("development PostgreSQL");
        let url = server.create_database("registry").expect("database");
        let open = |own: u32| {
            let store =
                crate::store::PostgresStore::open(&crate::store::postgres::PostgresOptions {
                    url: url.clone(),
                    password: None,
                    pool_size: 2,
                    ca_file: None,
                })
                .expect("open");
            registry_on(Arc::new(store), own)
        };
        let first = open(VEJLE);
        pin_digit(&first);
        let second = open(VEJLE);
        let serial_1 = digit_roster(DecisionRule::Secretariat);
        let sign = |name: &str| {
            let mut body = serial_1.next_draft(NOW);
            body.name = name.to_string();
            let mut roster = body.to_draft().expect("draft");
            roster.sign(&key(SECRETARIAT_SEED)).expect("sign");
            roster
        };
        let (ours, fork) = (sign("DIGIT"), sign("DIGIT, forked"));
        first
            .import_roster(&ours.to_bytes(), RosterImport::default())
            .expect("serial 2");
        // The second still holds serial 1 in memory; a second serial 2 is
        // a fork of the one the database holds.
        let generation = second.generation();
        let err = second
            .import_roster(&fork.to_bytes(), RosterImport::default())
            .expect_err("a fork of the stored serial 2");
        assert!(matches!(err, ImportError::Roster(_)), "{err}");
        assert_eq!(
            second.snapshot().roster("digit").map(Roster::digest),
            Some(ours.digest())
        );
        assert!(
            second.generation() > generation,
            "the fresh view is published"
        );
        // Re-reading unchanged documents wakes no one.
        let generation = second.generation();
        second.reload().expect("reload");
        assert_eq!(second.generation(), generation);
        let stored: Vec<Vec<u8>> = second
            .store
            .scan_prefix(Keyspace::Rosters, b"")
            .map(|entry| entry.expect("entry").1)
            .collect();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[1], ours.to_bytes());
    }
}
