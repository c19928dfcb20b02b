//! A client for a node's local API that sends the bearer token on every
//! call; used by `push` and the demo.

use anyhow::Context;
use samvirke_proto::v1::local_client::LocalClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to each request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The local API client type.
pub type Local = LocalClient<InterceptedService<Channel, BearerToken>>;

/// A bearer token from the command line or `SAMVIRKE_TOKEN`. Its `Debug`
/// never shows the secret, so no argument dump can leak it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// The secret, for the authorization header only.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Token {
    type Err = String;

    fn from_str(text: &str) -> Result<Token, String> {
        Ok(Token(text.to_string()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Connects to the local API at `endpoint` (e.g. `http://127.0.0.1:7080`).
pub async fn connect(endpoint: &str, token: &str) -> anyhow::Result<Local> {
    if let Some(rest) = endpoint.strip_prefix("http://") {
        let host = rest.split([':', '/']).next().unwrap_or_default();
        let loopback =
            host == "localhost" || host.starts_with("127.") || host == "[::1]" || host.is_empty();
        if !loopback {
            eprintln!(
                "warning: sending the token to {endpoint} without TLS; use https:// \
                 (local.tls = true on the node) or a loopback address"
            );
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("`{endpoint}` is not a URL"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let mut bearer: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .context("the token has characters a header cannot carry")?;
    bearer.set_sensitive(true);
    Ok(LocalClient::with_interceptor(channel, BearerToken(bearer)))
}

/// Every roster and agreement the node holds: `ListGovernance` page after
/// page until the node says there is no more. A node that hands back a
/// token it gave before would loop forever; that is an error instead.
pub async fn list_governance(
    client: &mut Local,
) -> Result<samvirke_proto::v1::ListGovernanceResponse, tonic::Status> {
    use samvirke_proto::v1::{ListGovernanceRequest, ListGovernanceResponse};
    let mut all = ListGovernanceResponse::default();
    let mut seen = std::collections::HashSet::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_governance(ListGovernanceRequest {
                page_size: 0,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        all.rosters.extend(page.rosters);
        all.agreements.extend(page.agreements);
        all.quarantined.extend(page.quarantined);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        if !seen.insert(page.next_page_token.clone()) {
            return Err(tonic::Status::internal(format!(
                "the node gave page token `{}` twice; its listing does not advance",
                page.next_page_token
            )));
        }
        token = page.next_page_token;
    }
}
