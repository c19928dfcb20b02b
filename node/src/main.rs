//! `samvirke-node --config FILE`: runs one municipality's Samvirke node.
//! Everything but argument parsing and exit codes lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use samvirke_node::config::{Config, LogFormat};
use samvirke_node::server::{Listeners, Node, NodeError};
use samvirke_node::store::StoreError;
use samvirke_node::telemetry;

/// Exit status for a configuration problem (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// Runs a Samvirke node: the mutual-TLS peer listener for partner
/// municipalities and the local listener for this municipality's own users.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Path to the node's TOML config (see deploy/node.example.toml).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Log format; overrides `log.format` in the config.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("samvirke-node: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(
        args.log_format.unwrap_or(config.log.format),
        &config.log.level,
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("samvirke-node: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "samvirke-node failed");
            eprintln!("samvirke-node: {error}");
            match error {
                // Unreadable or malformed key material is a config problem.
                NodeError::Identity(_)
                | NodeError::Store(StoreError::NotAStore { .. })
                | NodeError::Store(StoreError::NotADirectory { .. }) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn serve(config: Config) -> Result<(), NodeError> {
    let node = Node::open(config)?;
    let listeners = Listeners::bind(node.config()).await?;
    node.run(listeners, shutdown_signal()).await
}

/// Completes on SIGTERM (systemd, container runtimes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
