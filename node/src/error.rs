//! The one place where module errors become gRPC statuses, so every RPC
//! answers the same problem with the same code:
//!
//! | problem | code |
//! |---|---|
//! | no or unknown bearer token | `UNAUTHENTICATED` |
//! | token without the role | `PERMISSION_DENIED` |
//! | no client certificate on the peer API | `UNAUTHENTICATED` |
//! | storage failure | `INTERNAL` (details logged, not sent) |

use tonic::Status;

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
        Status::unauthenticated(error.to_string())
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        // Paths and backend details help the operator, not the caller.
        tracing::error!(error = %error, "storage failure while serving a call");
        Status::internal("storage failure on the serving node; its operator has the details")
    }
}
