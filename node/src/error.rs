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
//! | storage failure | `INTERNAL` (details logged, not sent) |

use tonic::Status;

use crate::governance::registry::ImportError;
use crate::governance::{Denial, RosterError};
use crate::local::auth::AuthError;
use crate::peer::PeerAuthError;
use crate::store::StoreError;

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        match &error {
            AuthError::MissingToken | AuthError::Malformed | AuthError::UnknownToken => {
                tracing::warn!(reason = %error, "local call refused");
                Status::unauthenticated(error.to_string())
            }
            AuthError::MissingRole { .. } => {
                tracing::warn!(reason = %error, "local call denied");
                Status::permission_denied(error.to_string())
            }
        }
    }
}

impl From<PeerAuthError> for Status {
    fn from(error: PeerAuthError) -> Status {
        tracing::warn!(reason = %error, "peer call refused");
        match error {
            PeerAuthError::NoClientCertificate => Status::unauthenticated(error.to_string()),
            PeerAuthError::NotAMember(_) => Status::permission_denied(error.to_string()),
        }
    }
}

impl From<Denial> for Status {
    fn from(denial: Denial) -> Status {
        tracing::warn!(reason = %denial, "peer request denied");
        Status::permission_denied(denial.to_string())
    }
}

impl From<ImportError> for Status {
    fn from(error: ImportError) -> Status {
        tracing::warn!(%error, "governance document refused");
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
