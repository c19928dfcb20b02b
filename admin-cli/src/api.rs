//! What the data commands share about talking to a node's local API: the
//! `--node`/`--token` arguments, the async runtime, and errors that say
//! which node refused what and why.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use samvirke_proto::v1::{Dataset, ListDatasetsRequest};

use crate::local::{self, Local, Token};

/// The node to talk to.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The node's local API.
    #[arg(long, default_value = "http://127.0.0.1:7080")]
    pub node: String,
    /// A local API token for that node (role ingest to write, read to read).
    #[arg(long, env = "SAMVIRKE_TOKEN", hide_env_values = true)]
    pub token: Token,
}

impl NodeArgs {
    /// Connects to the node.
    pub async fn connect(&self) -> anyhow::Result<Local> {
        local::connect(&self.node, self.token.secret()).await
    }

    /// An error for a refused call: which node, what, the status and its message.
    pub fn refused(&self, what: &str, status: &tonic::Status) -> anyhow::Error {
        if status.code() == tonic::Code::Unimplemented {
            return anyhow::anyhow!(
                "{} cannot {what}: it does not implement that call yet (UNIMPLEMENTED: {})",
                self.node,
                status.message()
            );
        }
        anyhow::anyhow!(
            "{} refused to {what} ({:?}): {}",
            self.node,
            status.code(),
            status.message()
        )
    }

    /// The node's whole catalog.
    pub async fn datasets(&self, client: &mut Local) -> anyhow::Result<Vec<Dataset>> {
        Ok(client
            .list_datasets(ListDatasetsRequest {})
            .await
            .map_err(|status| self.refused("list its datasets", &status))?
            .into_inner()
            .datasets)
    }

    /// The dataset `id` from the node's catalog; the error lists what is there.
    pub async fn dataset(&self, client: &mut Local, id: &str) -> anyhow::Result<Dataset> {
        let datasets = self.datasets(client).await?;
        if let Some(found) = datasets.iter().find(|d| d.id == id) {
            return Ok(found.clone());
        }
        let known: Vec<&str> = datasets.iter().map(|d| d.id.as_str()).collect();
        if known.is_empty() {
            bail!(
                "dataset `{id}` is not in {}'s catalog, which is empty",
                self.node
            );
        }
        bail!(
            "dataset `{id}` is not in {}'s catalog; it has: {}",
            self.node,
            known.join(", ")
        )
    }
}

/// Runs an async command on a fresh runtime.
pub fn block_on(
    future: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(future)
}
