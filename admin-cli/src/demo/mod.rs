//! `samvirke demo`: a small fellowship on one machine, told as a story a
//! municipal IT lead can follow without reading code.
//!
//! Four municipalities run real nodes on loopback with fresh development
//! PKI in a temporary directory: Aarhus (751), Vejle (630) and Silkeborg
//! (740), members of GovTech Midtjylland, and Albertslund (165), which is
//! not. The chapters:
//!
//! 1. [`data`]: each publishes sensor datasets with generated readings;
//!    Aarhus also its pilot results and procurement outcomes.
//! 2. [`governance`]: the secretariat signs the roster; the members sign
//!    three agreements (what each shares, with whom, how); documents spread
//!    by anti-entropy; who may even say hello to whom.
//! 3. [`analyst`]: an analyst at Vejle asks the fellowship questions through
//!    Vejle's own node (`samvirke ask`): what can I see, daily PM2.5 per
//!    municipality and combined, the same with Silkeborg's node stopped,
//!    pilots and procurements, and a question the agreements do not allow.
//! 4. [`proof`]: a receipt Aarhus signed is checked offline against the
//!    roster, and Aarhus's audit log is exported and checked offline.
//!
//! Each step says what is expected and whether it happened; `--exit` ends
//! after the story with status 1 if anything went otherwise, else the
//! federation keeps serving until Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use samvirke_node::config::LogFormat;
use samvirke_node::devnet::DevFederation;
use samvirke_node::identity::signing_key_text;
use samvirke_node::provision::{TLS_CERT_FILE, TLS_KEY_FILE, TRUST_ROOTS_FILE};
use samvirke_node::telemetry;

mod analyst;
mod data;
mod governance;
mod proof;

use samvirke_node::devnet::DEMO_MUNICIPALITIES;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit after the story instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// Keep the nodes' directories (config, keys, stores) in DIR, which
    /// must be new or empty, instead of a temporary directory removed at
    /// the end: to look at them or move a store afterwards.
    #[arg(long, value_name = "DIR")]
    keep: Option<std::path::PathBuf>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    // Node logs (refusals are logged as warnings) would drown the story;
    // SAMVIRKE_LOG=info shows them.
    telemetry::init(LogFormat::Text, "error");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(demo(args))
}

/// Counts the steps that went otherwise than the story says they should,
/// and prints each step's outcome.
#[derive(Debug, Default)]
pub struct Story {
    failures: usize,
}

impl Story {
    /// A chapter heading.
    pub fn chapter(&self, title: &str) {
        println!();
        println!("== {title}");
    }

    /// A step that went as expected.
    pub fn expected(&self, line: impl std::fmt::Display) {
        println!("  [as expected] {line}");
    }

    /// A step that did not.
    pub fn unexpected(&mut self, line: impl std::fmt::Display) {
        self.failures += 1;
        println!("  [UNEXPECTED]  {line}");
    }

    /// Either, by `ok`.
    pub fn check(&mut self, ok: bool, line: impl std::fmt::Display) {
        if ok {
            self.expected(line);
        } else {
            self.unexpected(line);
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let workdir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            if std::fs::read_dir(dir)?.next().is_some() {
                anyhow::bail!("--keep {}: the directory is not empty", dir.display());
            }
            Workdir::Kept(dir.clone())
        }
        None => Workdir::Temporary(
            tempfile::Builder::new()
                .prefix("samvirke-demo-")
                .tempdir()
                .context("creating the demo directory")?,
        ),
    };
    let mut federation = DevFederation::start(workdir.path(), &DEMO_MUNICIPALITIES).await?;
    let mut story = Story::default();

    println!("Samvirke demo: a fellowship shares data without giving it away");
    println!(
        "  {} nodes on this machine, each with its own store, keys and certificate (from a fresh \
         development CA) in {}",
        federation.nodes.len(),
        workdir.path().display()
    );
    println!();
    for node in &federation.nodes {
        let id = &node.running.identity;
        println!(
            "  {:>3} {:<22} peer {}  local {}",
            id.municipality_code,
            id.municipality_name,
            node.running.peer_endpoint(),
            node.running.local_endpoint()
        );
        println!(
            "      signing key {}  certificate {}",
            abbreviate(&signing_key_text(&id.verifying_key())),
            abbreviate(&id.tls.fingerprint.to_string())
        );
    }

    story.chapter("1. Each municipality publishes its data on its own node");
    data::publish(&federation).await?;

    story.chapter("2. The fellowship agrees who may see what");
    let governed = governance::show(&federation, workdir.path(), &mut story).await?;

    story.chapter("3. An analyst at Vejle asks the fellowship, from Vejle's own node");
    let asked = analyst::show(&mut federation, &governed, &mut story).await?;

    story.chapter("4. Proof: what was asked and answered can be shown to anyone");
    proof::show(&federation, &governed, &asked, workdir.path(), &mut story).await?;

    println!();
    if story.failures == 0 {
        println!("Every step went as expected.");
    } else {
        println!(
            "{} steps went otherwise than expected (marked UNEXPECTED).",
            story.failures
        );
    }

    if !args.exit {
        let aarhus = &federation.nodes[0];
        let vejle = &federation.nodes[1];
        println!();
        println!("Serving until Ctrl-C. Ask the fellowship from Vejle yourself:");
        println!(
            "  samvirke ask readings --node {} --token {} --keyword air-quality --measure pm2_5 \
             --from {} --until {} --bucket 1d",
            vejle.running.local_endpoint(),
            vejle.admin_token.as_str(),
            governed.period.0.date(),
            governed.period.1.date()
        );
        println!("Call Vejle as Aarhus with grpcurl:");
        println!(
            "  grpcurl -cacert {} -cert {} -key {} {} samvirke.v1.Peer/Hello",
            aarhus.dir.join(TRUST_ROOTS_FILE).display(),
            aarhus.dir.join(TLS_CERT_FILE).display(),
            aarhus.dir.join(TLS_KEY_FILE).display(),
            vejle.running.peer_addr
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        println!("Stopping the demo federation.");
    }
    federation.shutdown().await?;
    Ok(if story.failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where the demo's nodes live.
#[derive(Debug)]
enum Workdir {
    Temporary(tempfile::TempDir),
    Kept(std::path::PathBuf),
}

impl Workdir {
    fn path(&self) -> &std::path::Path {
        match self {
            Workdir::Temporary(dir) => dir.path(),
            Workdir::Kept(dir) => dir,
        }
    }
}

/// `sha256:0123456789ab...` shortened for a terminal line.
pub fn abbreviate(text: &str) -> String {
    match text.split_once(':') {
        // Peers supply some of these strings: cut by characters, not bytes.
        Some((kind, hex)) if hex.chars().count() > 16 => {
            format!("{kind}:{}...", hex.chars().take(16).collect::<String>())
        }
        _ => text.to_string(),
    }
}
