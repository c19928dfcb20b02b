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

/// Connects to the local API at `endpoint` (e.g. `http://127.0.0.1:7080`).
pub async fn connect(endpoint: &str, token: &str) -> anyhow::Result<Local> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("`{endpoint}` is not a URL"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .context("the token has characters a header cannot carry")?;
    Ok(LocalClient::with_interceptor(channel, BearerToken(bearer)))
}
