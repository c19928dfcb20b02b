//! The one place where module errors become gRPC statuses, so every RPC
//! answers the same problem with the same code:
//!
//! | problem | code |
//! |---|---|
//! | no or unknown bearer token | `UNAUTHENTICATED` |
//! | token without the role | `PERMISSION_DENIED` |
//! | no client certificate on the peer API | `UNAUTHENTICATED` |
//! | peer certificate of no current member | `PERMISSION_DENIED` |
//! | request refused by roster or agreement | `PERMISSION_DENIED`, with the reason |
//! | malformed roster or agreement | `INVALID_ARGUMENT` |
//! | valid document not acceptable here and now | `FAILED_PRECONDITION` |
//! | bad dataset, reading, query or record | `INVALID_ARGUMENT`, naming the field |
//! | ingest batch out of order in its session | `FAILED_PRECONDITION`, with the next one |
//! | unknown dataset | `NOT_FOUND` |
//! | dataset id already published | `ALREADY_EXISTS` |
//! | answer an agreement does not disclose | `PERMISSION_DENIED` |
//! | unsigned, stale or replayed peer request | `UNAUTHENTICATED` |
//! | audit log cannot record | `UNAVAILABLE` (nothing answered) |
//! | bad question to the fellowship | `INVALID_ARGUMENT`, naming the field |
//! | storage failure | `INTERNAL` (details logged, not sent) |
//! | a backup while another runs | `RESOURCE_EXHAUSTED` |

use tonic::Status;

use crate::data::records::RecordError;
use crate::data::{CatalogError, IngestError, QueryError};
use crate::governance::registry::ImportError;
use crate::governance::{Denial, RosterError};
use crate::local::auth::AuthError;
use crate::peer::PeerAuthError;
use crate::plane::{DisclosureError, PlacementError};
use crate::store::StoreError;
use crate::telemetry::{refusals, untrusted};

/// Logs a refusal at WARN, at most a few lines per caller per minute.
fn log_refusal(caller: &str, what: &str, reason: &str) {
    if let Some(suppressed) = refusals().admit(caller) {
        tracing::warn!(
            caller = %untrusted(caller),
            reason = %untrusted(reason),
            suppressed_since_last = suppressed,
            "{what}"
        );
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        match &error {
            AuthError::MissingToken | AuthError::Malformed | AuthError::UnknownToken => {
                log_refusal(
                    "local, no valid token",
                    "local call refused",
                    &error.to_string(),
                );
                Status::unauthenticated(error.to_string())
            }
            AuthError::MissingRole { token, .. } => {
                log_refusal(
                    &format!("token {token}"),
                    "local call denied",
                    &error.to_string(),
                );
                Status::permission_denied(error.to_string())
            }
        }
    }
}

// Peer refusals (these three) are logged and audited, with the call's
// caller, agreement, operation and dataset, by `peer::call::Accounts`.

impl From<PeerAuthError> for Status {
    fn from(error: PeerAuthError) -> Status {
        match error {
            PeerAuthError::NoClientCertificate => Status::unauthenticated(error.to_string()),
            PeerAuthError::NotAMember(_) => Status::permission_denied(error.to_string()),
        }
    }
}

impl From<Denial> for Status {
    fn from(denial: Denial) -> Status {
        // The operator's log and audit have the whole reason; the caller
        // gets only what it is entitled to know.
        Status::permission_denied(denial.public())
    }
}

impl From<ImportError> for Status {
    fn from(error: ImportError) -> Status {
        tracing::warn!(error = %untrusted(&error.to_string()), "governance document refused");
        match &error {
            ImportError::Store(_) => {
                tracing::error!(%error, "storage failure while importing");
                Status::internal("storage failure on this node; its operator has the details")
            }
            ImportError::Roster(
                RosterError::Document(_) | RosterError::Toml(_) | RosterError::Field(_),
            )
            | ImportError::Agreement(_)
            | ImportError::BadSignature { .. } => Status::invalid_argument(error.to_string()),
            _ => Status::failed_precondition(error.to_string()),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        // Paths and backend details help the operator, not the caller.
        tracing::error!(error = %error, "storage failure while serving a call");
        Status::internal("storage failure on the serving node; its operator has the details")
    }
}

impl From<crate::backup::BackupError> for Status {
    fn from(error: crate::backup::BackupError) -> Status {
        use crate::backup::BackupError;
        match &error {
            BackupError::Busy => Status::resource_exhausted(error.to_string()),
            BackupError::Unavailable => Status::failed_precondition(error.to_string()),
            // Paths and backend details help the operator, not the caller.
            _ => {
                tracing::error!(error = %error, "a backup failed");
                Status::internal("the backup failed on the node; its operator has the details")
            }
        }
    }
}

impl From<CatalogError> for Status {
    fn from(error: CatalogError) -> Status {
        match &error {
            CatalogError::Invalid(_) | CatalogError::IncompatibleChange { .. } => {
                Status::invalid_argument(error.to_string())
            }
            CatalogError::AlreadyExists { .. } => Status::already_exists(error.to_string()),
            CatalogError::Widening { .. } => Status::permission_denied(error.to_string()),
            CatalogError::NotFound { .. } => Status::not_found(error.to_string()),
            CatalogError::Store(_) | CatalogError::Corrupt { .. } | CatalogError::Exhausted => {
                internal(&error)
            }
        }
    }
}

impl From<crate::ingest::PipelineError> for Status {
    fn from(error: crate::ingest::PipelineError) -> Status {
        match error {
            crate::ingest::PipelineError::Ingest(inner) => inner.into(),
            crate::ingest::PipelineError::Session(inner) => inner.into(),
            crate::ingest::PipelineError::Task(_) => internal(&error),
        }
    }
}

impl From<crate::ingest::session::SessionError> for Status {
    fn from(error: crate::ingest::session::SessionError) -> Status {
        use crate::ingest::session::SessionError;
        match &error {
            SessionError::BadId(_) | SessionError::ZeroSequence => {
                Status::invalid_argument(error.to_string())
            }
            SessionError::WrongDataset { .. } | SessionError::OutOfOrder { .. } => {
                Status::failed_precondition(error.to_string())
            }
            SessionError::Corrupt { .. } | SessionError::Store(_) => internal(&error),
        }
    }
}

impl From<IngestError> for Status {
    fn from(error: IngestError) -> Status {
        match error {
            IngestError::UnknownDataset { .. } => Status::not_found(error.to_string()),
            IngestError::NotSensor { .. } | IngestError::BadReading { .. } => {
                Status::invalid_argument(error.to_string())
            }
            IngestError::Catalog(inner) => inner.into(),
            IngestError::Corrupt { .. } | IngestError::Store(_) => internal(&error),
        }
    }
}

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Status {
        match error {
            QueryError::UnknownDataset { .. } => Status::not_found(error.to_string()),
            QueryError::NotSensor { .. } | QueryError::Invalid(_) => {
                Status::invalid_argument(error.to_string())
            }
            QueryError::Catalog(inner) => inner.into(),
            _ => internal(&error),
        }
    }
}

impl From<RecordError> for Status {
    fn from(error: RecordError) -> Status {
        match &error {
            RecordError::Invalid(_) | RecordError::InvalidFilter(_) => {
                Status::invalid_argument(error.to_string())
            }
            RecordError::DatasetMismatch { .. } => Status::failed_precondition(error.to_string()),
            RecordError::Corrupt { .. } | RecordError::Store(_) => internal(&error),
        }
    }
}

impl From<PlacementError> for Status {
    fn from(error: PlacementError) -> Status {
        match error {
            PlacementError::UnknownDataset(_) => Status::not_found(error.to_string()),
            PlacementError::WrongKind { .. } => Status::invalid_argument(error.to_string()),
            PlacementError::Catalog(inner) => inner.into(),
            PlacementError::Record(inner) => inner.into(),
        }
    }
}

impl From<DisclosureError> for Status {
    fn from(error: DisclosureError) -> Status {
        match error {
            DisclosureError::BudgetSpent { .. } => Status::resource_exhausted(error.to_string()),
            DisclosureError::TooManyBuckets(_) => Status::invalid_argument(error.to_string()),
            _ => Status::permission_denied(error.to_string()),
        }
    }
}

impl From<crate::audit::AuditError> for Status {
    fn from(error: crate::audit::AuditError) -> Status {
        match &error {
            crate::audit::AuditError::Range(_) => Status::invalid_argument(error.to_string()),
            crate::audit::AuditError::Stopped => Status::unavailable(error.to_string()),
            _ => internal(&error),
        }
    }
}

impl From<crate::federate::ReceiptStoreError> for Status {
    fn from(error: crate::federate::ReceiptStoreError) -> Status {
        match &error {
            crate::federate::ReceiptStoreError::BadId(_) => {
                Status::invalid_argument(format!("id: {error}"))
            }
            _ => internal(&error),
        }
    }
}

impl From<crate::federate::FederateError> for Status {
    fn from(error: crate::federate::FederateError) -> Status {
        use crate::federate::FederateError;
        match error {
            FederateError::Invalid { .. } => Status::invalid_argument(error.to_string()),
            FederateError::AgreementNotUsable(_) => Status::failed_precondition(error.to_string()),
            FederateError::Audit(_) => {
                tracing::error!(%error, "a federated question could not be recorded");
                Status::unavailable(error.to_string())
            }
            FederateError::Receipts(inner) => inner.into(),
        }
    }
}

/// A failure of this node, not of the request: logged in full, answered
/// without details.
fn internal(error: &dyn std::fmt::Display) -> Status {
    tracing::error!(%error, "failure while serving a call");
    Status::internal("failure on the serving node; its operator has the details")
}
