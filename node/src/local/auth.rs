//! Bearer tokens and roles for the local API.
//!
//! A token is 32 random bytes shown once as `svk_<64 hex>`; the config keeps
//! only its SHA-256. Tokens are machine-made and high-entropy, so a plain
//! hash is enough (a password hash would only slow every call). The hash
//! is also the lookup key, so nothing ever compares secrets byte by byte.
//!
//! Roles: `read` (query), `ingest` (write data), `admin` (governance,
//! configuration). `admin` implies the other two.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::TokenConfig;

/// Prefix that makes a Samvirke token recognisable in logs, scanners and
/// secret-detection tools.
pub const TOKEN_PREFIX: &str = "svk_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Query data and status.
    Read,
    /// Publish datasets and write data.
    Ingest,
    /// Manage governance documents and the node; implies read and ingest.
    Admin,
}

impl Role {
    /// The role's name as config files and messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Ingest => "ingest",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SHA-256 of a token, the only form in which a node stores it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hash of a presented token.
    pub fn of_token(token: &str) -> TokenHash {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Parses 64 hex digits, as written in `[[local.tokens]] sha256`.
    pub fn from_hex(text: &str) -> Result<TokenHash, String> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out)
            .map_err(|_| "expected 64 hexadecimal digits (a SHA-256)".to_string())?;
        Ok(TokenHash(out))
    }

    /// The hash as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

/// A freshly generated token: the secret to hand out once, and its hash.
pub struct NewToken {
    pub secret: Zeroizing<String>,
    pub hash: TokenHash,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Makes a new random token.
pub fn generate_token() -> Result<NewToken, getrandom::Error> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut())?;
    let secret = Zeroizing::new(format!("{TOKEN_PREFIX}{}", hex::encode(bytes.as_ref())));
    let hash = TokenHash::of_token(&secret);
    Ok(NewToken { secret, hash })
}

/// Why a local call was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send the header `authorization: Bearer <token>`")]
    MissingToken,
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
    #[error("unknown or revoked token")]
    UnknownToken,
    #[error("token `{token}` lacks role `{needed}`, which {method} requires")]
    MissingRole {
        token: String,
        needed: Role,
        method: &'static str,
    },
}

/// The holder of a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name from the config (never the secret).
    pub name: String,
    pub roles: Vec<Role>,
}

impl Principal {
    /// Whether the principal holds `role` (admin holds every role).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

/// The tokens a node accepts, keyed by hash.
#[derive(Debug, Default)]
pub struct TokenRegistry {
    by_hash: HashMap<TokenHash, Arc<Principal>>,
}

impl TokenRegistry {
    /// A registry of the configured tokens.
    pub fn new(tokens: &[TokenConfig]) -> TokenRegistry {
        TokenRegistry {
            by_hash: tokens
                .iter()
                .map(|t| {
                    (
                        t.hash,
                        Arc::new(Principal {
                            name: t.name.clone(),
                            roles: t.roles.clone(),
                        }),
                    )
                })
                .collect(),
        }
    }

    /// Checks the request's bearer token holds `needed`; `method` names the
    /// RPC for the message.
    pub fn authorize<T>(
        &self,
        request: &tonic::Request<T>,
        needed: Role,
        method: &'static str,
    ) -> Result<Arc<Principal>, AuthError> {
        let header = request
            .metadata()
            .get("authorization")
            .ok_or(AuthError::MissingToken)?
            .to_str()
            .map_err(|_| AuthError::Malformed)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Malformed)?;
        let principal = self
            .by_hash
            .get(&TokenHash::of_token(token))
            .ok_or(AuthError::UnknownToken)?;
        if !principal.has(needed) {
            return Err(AuthError::MissingRole {
                token: principal.name.clone(),
                needed,
                method,
            });
        }
        Ok(Arc::clone(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (TokenRegistry, String, String) {
        let admin = generate_token().expect("token");
        let ingest = generate_token().expect("token");
        let registry = TokenRegistry::new(&[
            TokenConfig {
                name: "operator".into(),
                hash: admin.hash,
                roles: vec![Role::Admin],
            },
            TokenConfig {
                name: "os2iot".into(),
                hash: ingest.hash,
                roles: vec![Role::Ingest],
            },
        ]);
        (
            registry,
            admin.secret.to_string(),
            ingest.secret.to_string(),
        )
    }

    fn request(header: Option<&str>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(value) = header {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn roles_are_enforced_and_admin_implies_all() {
        let (registry, admin, ingest) = registry();
        let as_admin = request(Some(&format!("Bearer {admin}")));
        assert_eq!(
            registry
                .authorize(&as_admin, Role::Read, "Status")
                .expect("admin reads")
                .name,
            "operator"
        );
        let as_ingest = request(Some(&format!("Bearer {ingest}")));
        let err = registry
            .authorize(&as_ingest, Role::Read, "Status")
            .expect_err("ingest cannot read");
        assert!(matches!(
            err,
            AuthError::MissingRole {
                needed: Role::Read,
                ..
            }
        ));
        assert!(err.to_string().contains("os2iot"));
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_refused() {
        let (registry, _, _) = registry();
        assert!(matches!(
            registry.authorize(&request(None), Role::Read, "Status"),
            Err(AuthError::MissingToken)
        ));
        assert!(matches!(
            registry.authorize(&request(Some("Basic abc")), Role::Read, "Status"),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            registry.authorize(&request(Some("Bearer svk_00")), Role::Read, "Status"),
            Err(AuthError::UnknownToken)
        ));
    }
}
