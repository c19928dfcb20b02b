//! What every peer call goes through around its answer, so that each one is
//! accounted for: the caller's signed request is checked, the decision is
//! written to the audit log (and is durable) before anything leaves, the
//! answer gets a signed receipt, and the answer is recorded before that
//! receipt leaves.
//!
//! A data call (Catalog, QueryReadings, ListPilots, ListProcurements):
//!
//! 1. [`Accounts::open`] notes who called (certificate fingerprint), the
//!    method, and the digest of the request message as decoded;
//! 2. the service authorises it ([`crate::governance::authorize`]); then
//!    [`Accounts::check_signature`] checks the request's signature with
//!    the key the roster lists for the caller, its time and its nonce
//!    ([`crate::proof::request`]);
//! 3. a unary answer is recorded with [`Accounts::answered`], which writes
//!    one `peer_call` entry (allowed, rows, bytes, request and response
//!    digests, receipt id) and returns the signed receipt; a streamed
//!    answer is recorded as `peer_call` allowed before its first chunk
//!    ([`Accounts::allowed`]) and as `peer_answer` when it ends
//!    ([`Accounts::stream_end`]), whose receipt is the stream's last chunk;
//! 4. a refusal at any step ([`Accounts::refused`]) is written as
//!    `peer_call` denied, with the full reason for this node's operator,
//!    logged (at most a few lines per caller per minute) naming caller,
//!    agreement, operation, dataset and reason, and answered with only what
//!    the caller is entitled to know.
//!
//! So the audit holds exactly one `peer_call` entry per call. If the audit
//! log cannot record, the call is refused with nothing sent (fail closed).

use std::sync::Arc;

use prost::Message;
use samvirke_proto::v1 as pb;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::admin::metrics::{DenialMetrics, count_denial};
use crate::audit::{AuditLog, Entry};
use crate::clock::SharedClock;
use crate::governance::{Denial, Grant};
use crate::identity::Fingerprint;
use crate::plane::DisclosureError;
use crate::plane::answer::{AnswerEnd, Ending};
use crate::proof::batch::{BatchSigner, VerifiedRoots};
use crate::proof::request::{self, Replays, RequestError, SignedParts};
use crate::proof::{StreamDigest, digest_text, message_digest, receipt};
use crate::telemetry::{RateLimitedLog, refusals, untrusted};

use super::PeerAuthError;

/// Roots of request batches remembered as verified.
const VERIFIED_ROOTS: usize = 4_096;

/// A refusal: what the caller is told, and the whole reason for this
/// node's operator (audit and log).
#[derive(Debug)]
pub struct Refusal {
    pub status: Status,
    pub detail: String,
    /// Which check refused, as one fixed word (the metrics' `reason`
    /// label): `governance` (no agreement covers it), `membership` (the
    /// certificate is no current member's), `disclosure` (more than the
    /// agreement discloses), `signature` (the signed request does not
    /// hold), `rate_limit`, or `other`.
    pub reason: &'static str,
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Refusal {
        Refusal {
            detail: status.message().to_string(),
            status,
            reason: "other",
        }
    }
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Refusal {
        Refusal {
            detail: denial.to_string(),
            status: denial.into(),
            reason: "governance",
        }
    }
}

impl From<DisclosureError> for Refusal {
    fn from(error: DisclosureError) -> Refusal {
        Refusal {
            detail: error.to_string(),
            status: error.into(),
            reason: "disclosure",
        }
    }
}

impl From<PeerAuthError> for Refusal {
    fn from(error: PeerAuthError) -> Refusal {
        Refusal {
            detail: error.to_string(),
            status: error.into(),
            reason: "membership",
        }
    }
}

impl From<RequestError> for Refusal {
    fn from(error: RequestError) -> Refusal {
        let (status, reason) = match error {
            RequestError::TooMany => (Status::resource_exhausted(error.to_string()), "rate_limit"),
            RequestError::Unrecorded => (Status::unavailable(error.to_string()), "unavailable"),
            _ => (Status::unauthenticated(error.to_string()), "signature"),
        };
        Refusal {
            detail: error.to_string(),
            status,
            reason,
        }
    }
}

/// One peer call being accounted for.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    pub caller: Option<Fingerprint>,
    /// The caller's code, once the roster has told it.
    pub caller_code: Option<u32>,
    pub agreement: String,
    pub operation: &'static str,
    pub dataset: String,
    pub request_digest: [u8; 32],
    /// What the allowed answer is, when the entry should say more than the
    /// operation (an aggregate-only answer's parameters).
    pub detail: String,
    signed: Option<Result<SignedParts, RequestError>>,
}

impl Call {
    /// Notes what the call is about, once known.
    pub fn about(&mut self, agreement: &str, operation: &'static str, dataset: &str) {
        self.agreement = agreement.to_string();
        self.operation = operation;
        self.dataset = dataset.to_string();
    }

    /// Notes the grant that allowed it.
    pub fn granted(&mut self, grant: &Grant) {
        self.caller_code = Some(grant.caller_code);
        self.agreement = grant.agreement_id.to_string();
    }

    fn entry(&self, event: &str, outcome: &str) -> Entry {
        Entry {
            event: event.to_string(),
            outcome: outcome.to_string(),
            caller: self.caller_code,
            fingerprint: self.caller.map(|f| f.to_string()).unwrap_or_default(),
            agreement: crate::audit::chain::bounded(&untrusted(&self.agreement)),
            operation: format!(
                "{}{}{}",
                self.method,
                if self.operation.is_empty() { "" } else { " " },
                self.operation
            ),
            dataset: crate::audit::chain::bounded(&untrusted(&self.dataset)),
            request: digest_text(&self.request_digest),
            detail: crate::audit::chain::bounded(&self.detail),
            ..Entry::default()
        }
    }
}

/// The peer service's accounting: audit log, replay memory, receipts.
#[derive(Debug)]
pub struct Accounts {
    audit: Arc<AuditLog>,
    replays: Replays,
    roots: VerifiedRoots,
    receipts: BatchSigner,
    own_code: u32,
    clock: SharedClock,
    /// Bounds the refusal entries one caller can add to the audit log.
    denied_entries: RateLimitedLog,
    /// Refusals by reason (metrics).
    denials: DenialMetrics,
}

/// Refusals of one caller recorded one by one per minute; past this they
/// are counted into the caller's next entry.
pub const DENIED_ENTRIES_PER_MINUTE: u32 = 600;

impl Accounts {
    pub fn new(
        audit: Arc<AuditLog>,
        replays: Replays,
        receipts: BatchSigner,
        own_code: u32,
        clock: SharedClock,
    ) -> Accounts {
        Accounts {
            audit,
            replays,
            roots: VerifiedRoots::new(VERIFIED_ROOTS),
            denied_entries: RateLimitedLog::with_limit(DENIED_ENTRIES_PER_MINUTE),
            receipts,
            own_code,
            clock,
            denials: DenialMetrics::default(),
        }
    }

    /// Refusals counted by reason.
    pub fn denials(&self) -> &DenialMetrics {
        &self.denials
    }

    /// The audit log (for the services that record other events).
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Starts accounting for `request` to `method`. `signed`: whether the
    /// method must be signed (data calls).
    pub fn open<T: Message>(
        &self,
        request: &Request<T>,
        method: &'static str,
        signed: bool,
    ) -> Call {
        Call {
            method,
            caller: super::caller_fingerprint(request).ok(),
            caller_code: None,
            agreement: String::new(),
            operation: "",
            dataset: String::new(),
            request_digest: message_digest(request.get_ref()),
            detail: String::new(),
            signed: signed.then(|| request::read(request.metadata())),
        }
    }

    /// Checks the call's signature against the key the roster lists for
    /// the caller, and its time and nonce.
    pub fn check_signature(&self, call: &mut Call, grant: &Grant) -> Result<(), Refusal> {
        call.granted(grant);
        let parts = match call.signed.as_ref() {
            Some(Ok(parts)) => parts,
            Some(Err(error)) => return Err(error.clone().into()),
            None => return Ok(()),
        };
        if parts.caller != grant.caller_code {
            return Err(RequestError::CallerMismatch {
                signed: parts.caller,
                actual: grant.caller_code,
            }
            .into());
        }
        request::verify(
            parts,
            &grant.caller_key,
            call.method,
            &call.request_digest,
            grant.agreement_id,
            self.own_code,
            Some(&self.roots),
        )?;
        self.replays.admit(parts, self.clock.now())?;
        Ok(())
    }

    async fn append(&self, entry: Entry) -> Result<u64, Status> {
        self.audit.append(entry).await.map_err(|error| {
            tracing::error!(%error, "the audit log could not record a peer call");
            Status::unavailable(
                "this node cannot record the call in its audit log, so it answers nothing; its \
                 operator has the details",
            )
        })
    }

    /// Records a refusal (audit, rate-limited log) and returns what the
    /// caller is told.
    pub async fn refused(&self, call: &Call, refusal: Refusal) -> Status {
        let Refusal {
            status,
            detail,
            reason,
        } = refusal;
        count_denial(&self.denials, reason, status.code());
        let caller = call
            .caller
            .map(|f| f.to_string())
            .unwrap_or_else(|| "no certificate".to_string());
        if let Some(suppressed) = refusals().admit(&caller) {
            tracing::warn!(
                caller = call.caller_code.map(|c| c.to_string()).unwrap_or_default(),
                fingerprint = %caller,
                method = call.method,
                agreement = %untrusted(&call.agreement),
                operation = call.operation,
                dataset = %untrusted(&call.dataset),
                code = ?status.code(),
                reason = %untrusted(&detail),
                suppressed_since_last = suppressed,
                "peer call refused"
            );
        }
        // One entry per refusal, up to a rate per caller: past it, refusals
        // are counted and the count goes into the caller's next entry, so
        // a caller that only wants to be refused cannot fill the disk.
        let Some(unrecorded) = self.denied_entries.admit(&caller) else {
            return status;
        };
        let mut entry = call.entry("peer_call", "denied");
        entry.detail = crate::audit::chain::bounded(&untrusted(&detail));
        if unrecorded > 0 {
            entry.detail = crate::audit::chain::bounded(&format!(
                "{}; and {unrecorded} earlier refusals of this caller, past \
                 {DENIED_ENTRIES_PER_MINUTE} a minute, not recorded one by one",
                entry.detail
            ));
        }
        match self.append(entry).await {
            Ok(_) => status,
            Err(unrecorded) => unrecorded,
        }
    }

    /// Records that a streamed answer was allowed; durable before its
    /// first chunk leaves.
    pub async fn allowed(&self, call: &Call) -> Result<u64, Status> {
        self.append(call.entry("peer_call", "allowed")).await
    }

    fn receipt_body(&self, call: &Call, sent: &StreamDigest) -> pb::ReceiptBody {
        pb::ReceiptBody {
            id: Uuid::now_v7().to_string(),
            provider: self.own_code,
            consumer: call.caller_code.unwrap_or_default(),
            agreement_id: call.agreement.clone(),
            method: call.method.to_string(),
            request_digest: digest_text(&call.request_digest),
            response_digest: digest_text(&sent.finish()),
            rows: sent.rows,
            bytes: sent.bytes,
            at: Some(crate::wire::timestamp(self.clock.now())),
            request_nonce: match &call.signed {
                Some(Ok(parts)) => hex::encode(parts.nonce),
                _ => String::new(),
            },
        }
    }

    async fn sign(&self, body: pb::ReceiptBody) -> Result<pb::Receipt, Status> {
        receipt::sign(body, &self.receipts)
            .await
            .map_err(|e| Status::internal(format!("the receipt could not be signed: {e}")))
    }

    /// Records a unary answer (`response`, with no receipt yet, holding
    /// `rows` rows) and returns its signed receipt.
    pub async fn answered<M: Message>(
        &self,
        call: &Call,
        response: &M,
        rows: u64,
    ) -> Result<pb::Receipt, Status> {
        let mut sent = StreamDigest::default();
        sent.add(response);
        sent.rows = rows;
        let body = self.receipt_body(call, &sent);
        let mut entry = call.entry("peer_call", "allowed");
        entry.rows = Some(rows);
        entry.bytes = Some(sent.bytes);
        entry.response = body.response_digest.clone();
        entry.receipt = body.id.clone();
        // Recorded first, then signed: the calls of one audit group commit
        // are released together and their receipts share one signature
        // batch, rather than each taking a signature of its own.
        self.append(entry).await?;
        self.sign(body).await
    }

    /// The end of a streamed answer: records it (`peer_answer`) and, when
    /// it is complete, returns the receipt as the last chunk.
    pub fn stream_end(self: &Arc<Self>, call: Call) -> AnswerEnd {
        let accounts = Arc::clone(self);
        Box::new(move |ending, sent| {
            Box::pin(async move {
                let body = accounts.receipt_body(&call, &sent);
                let (outcome, detail) = match &ending {
                    Ending::Complete => ("completed", String::new()),
                    Ending::Cut(why) => ("cut_off", why.clone()),
                };
                let mut entry = call.entry("peer_answer", outcome);
                entry.rows = Some(sent.rows);
                entry.bytes = Some(sent.bytes);
                entry.response = body.response_digest.clone();
                entry.detail = crate::audit::chain::bounded(&detail);
                if ending != Ending::Complete {
                    accounts.append(entry).await?;
                    return Ok(None);
                }
                entry.receipt = body.id.clone();
                accounts.append(entry).await?;
                let receipt = accounts.sign(body).await?;
                Ok(Some(pb::ReadingChunk {
                    receipt: Some(receipt),
                    ..Default::default()
                }))
            })
        })
    }

    /// Records an allowed call that has no receipt (access checks, hello)
    /// or a governance exchange that changed something.
    pub async fn noted(&self, call: &Call, detail: String) -> Result<u64, Status> {
        let mut entry = call.entry("peer_call", "allowed");
        entry.detail = crate::audit::chain::bounded(&detail);
        self.append(entry).await
    }
}
