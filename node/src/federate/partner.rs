//! Calling one partner for one sub-question: a request signed by this
//! node over the partner's pinned channel, its answer passed on as it
//! arrives, and the partner's receipt checked (signed by the provider's
//! key in the roster, describing the request sent and the answer received)
//! and kept. Failures are classified as an analyst reads them
//! ([`Failure`]).

use std::time::Instant;

use prost::Message;
use samvirke_proto::v1::peer_client::PeerClient;
use samvirke_proto::v1::{self as pb, PartnerOutcome};
use tonic::Code;
use tonic::transport::Channel;

use super::Federation;
use crate::governance::registry::UsableAgreement;
use crate::partners::SignedRequest;
use crate::peer::{CATALOG, LIST_PILOTS, LIST_PROCUREMENTS, QUERY_READINGS};
use crate::proof::receipt::{self, Expected};
use crate::proof::{StreamDigest, digest_text};

/// Why a sub-question got no complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub outcome: PartnerOutcome,
    pub detail: String,
}

impl Failure {
    pub fn new(outcome: PartnerOutcome, detail: impl Into<String>) -> Failure {
        Failure {
            outcome,
            detail: detail.into(),
        }
    }

    /// A partner's refusal or error, as its status says. A refusal's text
    /// is the partner's, passed on verbatim (cut to a sane length).
    pub fn from_status(status: &tonic::Status) -> Failure {
        let message = crate::telemetry::untrusted(status.message());
        match status.code() {
            Code::PermissionDenied | Code::Unauthenticated => {
                Failure::new(PartnerOutcome::Denied, message)
            }
            Code::Unavailable => Failure::new(PartnerOutcome::Unavailable, message),
            Code::DeadlineExceeded => Failure::new(PartnerOutcome::TimedOut, message),
            // The connection broke under the answer (the partner's node
            // went away): tonic reports the transport's error as UNKNOWN.
            Code::Unknown if broken_connection(status) => Failure::new(
                PartnerOutcome::Unavailable,
                format!("the connection broke during the answer: {message}"),
            ),
            code => Failure::new(PartnerOutcome::Failed, format!("{code:?}: {message}")),
        }
    }
}

/// Whether `status` reports a broken connection rather than an answer.
fn broken_connection(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    let mut source = status.source();
    while let Some(error) = source {
        if error.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        source = error.source();
    }
    status.message().starts_with("h2 protocol error")
        || status.message().contains("transport error")
}

/// How far a receipt's time may be from when this node got the answer
/// (clocks differ, answers take time).
const RECEIPT_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// What one sub-question brought so far (kept across a timeout).
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub rows: u64,
    pub bytes: u64,
    pub receipt_id: String,
}

impl Federation {
    fn client(&self, agreement: &UsableAgreement) -> Result<PeerClient<Channel>, Failure> {
        self.pool
            .client(&agreement.provider_endpoint, agreement.provider_fingerprint)
            .map_err(|e| Failure::new(PartnerOutcome::Unavailable, e.to_string()))
    }

    /// Notes how long `provider` took to start answering (metrics and the
    /// status page's last latency).
    fn observe(&self, provider: u32, started: Instant, failed: Option<&tonic::Status>) {
        self.pool.metrics().observe(
            provider,
            started.elapsed(),
            failed.map(|s| format!("{:?}: {}", s.code(), s.message())),
            self.pool.now(),
        );
    }

    async fn sign<T: Message>(
        &self,
        method: &str,
        agreement: &UsableAgreement,
        message: T,
    ) -> Result<SignedRequest<T>, Failure> {
        self.pool
            .signed(method, agreement.provider, agreement.id, message)
            .await
            .map_err(|e| Failure::new(PartnerOutcome::Failed, e.to_string()))
    }

    /// Checks and keeps the receipt of an answer whose digest is `sent`.
    fn keep_receipt(
        &self,
        agreement: &UsableAgreement,
        method: &str,
        request_digest: &[u8; 32],
        nonce: &[u8; 16],
        sent: &StreamDigest,
        receipt: Option<pb::Receipt>,
    ) -> Result<String, Failure> {
        let bad = |why: String| {
            Failure::new(
                PartnerOutcome::Failed,
                format!("the partner's receipt does not hold: {why}"),
            )
        };
        let receipt = receipt.ok_or_else(|| bad("the answer carries no receipt".to_string()))?;
        receipt::verify(&receipt, &agreement.provider_key, Some(&self.receipt_roots))
            .map_err(|e| bad(e.to_string()))?;
        let body = receipt
            .body
            .as_ref()
            .ok_or_else(|| bad("no body".to_string()))?;
        receipt::check_describes(
            body,
            &Expected {
                provider: agreement.provider,
                consumer: self.identity.municipality_code,
                agreement_id: &agreement.id.to_string(),
                method,
                request_digest: &digest_text(request_digest),
                response_digest: &digest_text(&sent.finish()),
                request_nonce: &hex::encode(nonce),
                rows: sent.rows,
                bytes: sent.bytes,
                received_at: self.pool.now(),
                skew: RECEIPT_CLOCK_SKEW,
            },
        )
        .map_err(|e| bad(e.to_string()))?;
        self.receipts
            .keep(&receipt)
            .map_err(|e| Failure::new(PartnerOutcome::Failed, e.to_string()))?;
        Ok(body.id.clone())
    }

    /// Calls a unary data method of the partner with `message`, signed,
    /// and checks and keeps the receipt of its answer.
    async fn unary<Q, A, F, Fut>(
        &self,
        agreement: &UsableAgreement,
        method: &'static str,
        message: Q,
        call: F,
        tally: &mut Tally,
    ) -> Result<A, Failure>
    where
        Q: Message,
        A: Message + Receipted,
        F: FnOnce(PeerClient<Channel>, tonic::Request<Q>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<A>, tonic::Status>>,
    {
        let client = self.client(agreement)?;
        let signed = self.sign(method, agreement, message).await?;
        let started = Instant::now();
        let answered = call(client, signed.request).await;
        self.observe(agreement.provider, started, answered.as_ref().err());
        let mut answer = answered.map_err(|s| Failure::from_status(&s))?.into_inner();
        // The receipt signs the answer as sent without it.
        let receipt = answer.take_receipt();
        let mut sent = StreamDigest::default();
        sent.add(&answer);
        sent.rows = answer.rows() as u64;
        tally.rows = sent.rows;
        tally.bytes = sent.bytes;
        tally.receipt_id = self.keep_receipt(
            agreement,
            method,
            &signed.digest,
            &signed.nonce,
            &sent,
            receipt,
        )?;
        Ok(answer)
    }

    /// The partner's catalog under `agreement` (every dataset it lets this
    /// node see), with the receipt kept.
    pub async fn partner_catalog(
        &self,
        agreement: &UsableAgreement,
        tally: &mut Tally,
    ) -> Result<Vec<pb::Dataset>, Failure> {
        let message = pb::PeerCatalogRequest {
            agreement_id: agreement.id.to_string(),
        };
        let answer = self
            .unary(
                agreement,
                CATALOG,
                message,
                |mut client, request| async move { client.catalog(request).await },
                tally,
            )
            .await?;
        Ok(answer.datasets)
    }

    /// Readings or aggregates of `query` (naming the dataset) under
    /// `agreement`, each chunk handed to `each` as it arrives.
    pub async fn partner_readings(
        &self,
        agreement: &UsableAgreement,
        query: pb::ReadingQuery,
        tally: &mut Tally,
        each: &mut impl AsyncChunkSink,
    ) -> Result<(), Failure> {
        let mut client = self.client(agreement)?;
        let signed = self
            .sign(
                QUERY_READINGS,
                agreement,
                pb::PeerReadingQuery {
                    agreement_id: agreement.id.to_string(),
                    query: Some(query),
                },
            )
            .await?;
        let started = Instant::now();
        let answered = client.query_readings(signed.request).await;
        self.observe(agreement.provider, started, answered.as_ref().err());
        let mut stream = answered.map_err(|s| Failure::from_status(&s))?.into_inner();
        let mut sent = StreamDigest::default();
        let mut receipt = None;
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| Failure::from_status(&s))?
        {
            if receipt.is_some() {
                return Err(Failure::new(
                    PartnerOutcome::Failed,
                    "the partner sent data after its receipt",
                ));
            }
            if chunk.receipt.is_some() {
                receipt = chunk.receipt;
                continue;
            }
            sent.add(&chunk);
            sent.rows += crate::plane::answer::rows_of(&chunk);
            tally.rows = sent.rows;
            tally.bytes = sent.bytes;
            if !each.take(chunk).await {
                return Err(Failure::new(
                    PartnerOutcome::Failed,
                    "the analyst stopped reading",
                ));
            }
        }
        tally.receipt_id = self.keep_receipt(
            agreement,
            QUERY_READINGS,
            &signed.digest,
            &signed.nonce,
            &sent,
            receipt,
        )?;
        Ok(())
    }

    /// Pilot results of one dataset under `agreement`.
    pub async fn partner_pilots(
        &self,
        agreement: &UsableAgreement,
        filter: pb::PilotFilter,
        tally: &mut Tally,
    ) -> Result<Vec<pb::Pilot>, Failure> {
        let message = pb::PeerPilotQuery {
            agreement_id: agreement.id.to_string(),
            filter: Some(filter),
        };
        let answer = self
            .unary(
                agreement,
                LIST_PILOTS,
                message,
                |mut client, request| async move { client.list_pilots(request).await },
                tally,
            )
            .await?;
        Ok(answer.pilots)
    }

    /// Procurement outcomes of one dataset under `agreement`.
    pub async fn partner_procurements(
        &self,
        agreement: &UsableAgreement,
        filter: pb::ProcurementFilter,
        tally: &mut Tally,
    ) -> Result<Vec<pb::Procurement>, Failure> {
        let message = pb::PeerProcurementQuery {
            agreement_id: agreement.id.to_string(),
            filter: Some(filter),
        };
        let answer = self
            .unary(
                agreement,
                LIST_PROCUREMENTS,
                message,
                |mut client, request| async move { client.list_procurements(request).await },
                tally,
            )
            .await?;
        Ok(answer.procurements)
    }

    /// Calls the partner's Hello and measures the round trip.
    pub async fn probe(
        &self,
        partner: &crate::governance::registry::Partner,
    ) -> Result<u32, String> {
        let mut client = self
            .pool
            .client(&partner.endpoint, partner.fingerprint)
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let answered = client
            .hello(pb::HelloRequest {
                caller: Some(self.identity.to_proto()),
            })
            .await;
        self.observe(partner.code, started, answered.as_ref().err());
        answered.map_err(|s| {
            format!(
                "{:?}: {}",
                s.code(),
                crate::telemetry::untrusted(s.message())
            )
        })?;
        Ok(u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX))
    }
}

/// Where a streamed answer's chunks go; `false` when no one reads on.
pub trait AsyncChunkSink: Send {
    fn take(&mut self, chunk: pb::ReadingChunk) -> impl std::future::Future<Output = bool> + Send;
}

/// A unary peer answer that carries the provider's receipt.
trait Receipted {
    /// Takes the receipt out (it signs the answer without itself).
    fn take_receipt(&mut self) -> Option<pb::Receipt>;
    /// The rows the answer holds.
    fn rows(&self) -> usize;
}

impl Receipted for pb::PeerCatalogResponse {
    fn take_receipt(&mut self) -> Option<pb::Receipt> {
        self.receipt.take()
    }
    fn rows(&self) -> usize {
        self.datasets.len()
    }
}

impl Receipted for pb::ListPeerPilotsResponse {
    fn take_receipt(&mut self) -> Option<pb::Receipt> {
        self.receipt.take()
    }
    fn rows(&self) -> usize {
        self.pilots.len()
    }
}

impl Receipted for pb::ListPeerProcurementsResponse {
    fn take_receipt(&mut self) -> Option<pb::Receipt> {
        self.receipt.take()
    }
    fn rows(&self) -> usize {
        self.procurements.len()
    }
}
