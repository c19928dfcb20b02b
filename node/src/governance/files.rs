//! Governance files as operators and secretariats handle them, shared by
//! the `samvirke` CLI and the demo so both build documents the same way:
//!
//! - the **identity card** a node operator sends the secretariat (the
//!   output of `samvirke identity show`), turned into a roster [`Member`];
//! - telling a roster file from an agreement file ([`DocumentKind`]).

use serde::Deserialize;
use time::Date;
use uuid::Uuid;

use super::agreement::AGREEMENT_KIND;
use super::document::SignedDocument;
use super::roster::{Member, ROSTER_KIND};
use crate::identity::{Fingerprint, NodeIdentity, parse_signing_key_text, signing_key_text};

/// Problems with an identity card or a document file's kind.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("identity card: {0}")]
    Card(String),
    #[error("not a Samvirke roster or agreement: {0}")]
    UnknownKind(String),
}

/// What `samvirke identity show` prints: a member's public facts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityCard {
    pub code: u32,
    pub name: String,
    pub node_id: Uuid,
    #[serde(default)]
    pub endpoint: Option<String>,
    pub signing_key: String,
    pub tls_fingerprint: String,
}

impl IdentityCard {
    /// Parses the card text.
    pub fn parse(text: &str) -> Result<IdentityCard, FileError> {
        toml::from_str(text).map_err(|e| FileError::Card(e.to_string().trim_end().to_string()))
    }

    /// The card of a running node reachable at `endpoint`.
    pub fn of_node(identity: &NodeIdentity, endpoint: &str) -> IdentityCard {
        IdentityCard {
            code: identity.municipality_code,
            name: identity.municipality_name.clone(),
            node_id: identity.node_id,
            endpoint: Some(endpoint.to_string()),
            signing_key: signing_key_text(&identity.verifying_key()),
            tls_fingerprint: identity.tls.fingerprint.to_string(),
        }
    }

    /// The card as text, in the form `samvirke identity show` prints.
    pub fn render(&self) -> String {
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        let endpoint = match &self.endpoint {
            Some(url) => format!("endpoint = {}", quote(url)),
            None => "# endpoint = \"https://...\"  (set peer.advertised_endpoint)".to_string(),
        };
        format!(
            "# Samvirke node identity: paste into a roster member entry\n\
             code = {}\nname = {}\nnode_id = \"{}\"\n{endpoint}\n\
             signing_key = \"{}\"\ntls_fingerprint = \"{}\"\n",
            self.code,
            quote(&self.name),
            self.node_id,
            self.signing_key,
            self.tls_fingerprint
        )
    }

    /// A roster member joining on `joined`.
    pub fn to_member(&self, joined: Date) -> Result<Member, FileError> {
        let endpoint = self.endpoint.clone().ok_or_else(|| {
            FileError::Card(
                "no endpoint: the node must set peer.advertised_endpoint so partners can reach it"
                    .to_string(),
            )
        })?;
        Ok(Member {
            code: self.code,
            name: self.name.clone(),
            node_id: self.node_id,
            endpoint,
            signing_key: parse_signing_key_text(&self.signing_key)
                .map_err(|e| FileError::Card(format!("signing_key: {e}")))?,
            tls_fingerprint: self
                .tls_fingerprint
                .parse::<Fingerprint>()
                .map_err(|e| FileError::Card(format!("tls_fingerprint: {e}")))?,
            joined,
            left: None,
        })
    }
}

/// Which kind of governance document a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    Roster,
    Agreement,
}

impl DocumentKind {
    /// Reads the `kind` the file's body declares.
    pub fn detect(bytes: &[u8]) -> Result<DocumentKind, FileError> {
        let document =
            SignedDocument::parse(bytes).map_err(|e| FileError::UnknownKind(e.to_string()))?;
        let table: toml::Table = toml::from_str(&document.body)
            .map_err(|e| FileError::UnknownKind(e.to_string().trim_end().to_string()))?;
        match table.get("kind").and_then(toml::Value::as_str) {
            Some(ROSTER_KIND) => Ok(DocumentKind::Roster),
            Some(AGREEMENT_KIND) => Ok(DocumentKind::Agreement),
            Some(other) => Err(FileError::UnknownKind(format!("kind `{other}`"))),
            None => Err(FileError::UnknownKind("the body has no `kind`".to_string())),
        }
    }
}
