//! Fellowship governance: rosters (who is a member, with which keys), data-
//! sharing agreements (who may ask what of whom, until when) and the one
//! function that decides whether a peer request is allowed right now.
//!
//! The rules (`document`, `body`, `roster`, `agreement`, `authorize`) are a
//! pure core: no network, no storage, no clock of their own. The caller
//! passes file bytes in and "now" as an argument, so every rule is testable
//! with fixed keys and fixed dates. Around them, [`registry`] keeps the
//! node's accepted documents (persisted, in a [`authorize::GovernanceView`]
//! behind a lock, consulted by [`authorize::authorize`] on every peer RPC)
//! and [`sync`] spreads them between partner nodes.
//!
//! One file per concern:
//! - [`document`]: the signed-file envelope (exact body bytes + signature
//!   lines) shared by rosters and agreements;
//! - [`body`]: strict reading and deterministic writing of the TOML bodies;
//! - [`roster`]: fellowship membership, drafting the next serial, and the
//!   rules for accepting the first and every later roster;
//! - [`agreement`]: data-sharing agreements, their signatures and status;
//! - [`authorize`]: the per-request decision, with denials a person can act on;
//! - [`files`]: identity cards and file kinds, as the CLI and demo handle them;
//! - [`registry`]: the node's accepted documents, persisted, and the import rules;
//! - [`sync`]: anti-entropy, spreading documents between partner nodes.

pub mod agreement;
pub mod authorize;
pub mod body;
pub mod document;
pub mod files;
pub mod registry;
pub mod roster;
pub mod sync;

pub use agreement::{
    Agreement, AgreementBody, AgreementError, AgreementStatus, ConsumerProblem, Consumers,
    DatasetRef, LegalBasis, Operation, Scope, SignatureStatus,
};
pub use authorize::{AccessRequest, Denial, GovernanceView, Grant, GridPolicy, authorize};
pub use document::{DocumentDigest, DocumentError, DocumentType, SignedDocument};
pub use roster::{
    DecisionRule, Member, Party, Roster, RosterBody, RosterError, accept_first, accept_next,
};
