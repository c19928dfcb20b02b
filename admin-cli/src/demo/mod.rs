//! `samvirke demo`: three municipalities (Aarhus 751, Vejle 630,
//! Albertslund 165) run real nodes on loopback with fresh development PKI
//! in a temporary directory; each calls the others' `Hello` over mutual TLS.
//! Then governance: the GovTech Midtjylland secretariat signs a roster of
//! Aarhus and Vejle, Aarhus and Vejle sign an agreement (Aarhus shares air
//! quality aggregates with Vejle), both are built with the same library
//! code the CLI uses and imported through the local API; the agreement
//! reaches Vejle by anti-entropy, and the demo shows one allowed and two
//! denied calls with their reasons. It keeps serving until Ctrl-C, or exits
//! at once with `--exit` (status 1 if any step went otherwise).

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use samvirke_node::config::LogFormat;
use samvirke_node::devnet::{DevFederation, DevNode};
use samvirke_node::identity::signing_key_text;
use samvirke_node::peer::client;
use samvirke_node::provision::{TLS_CERT_FILE, TLS_KEY_FILE, TRUST_ROOTS_FILE};
use samvirke_node::telemetry;
use samvirke_proto::v1::HelloRequest;

mod data;
mod governance;

/// The demo fellowship's municipalities: Aarhus, Vejle, Albertslund.
pub const DEMO_MUNICIPALITIES: [u32; 3] = [751, 630, 165];

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Exit after the calls instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    // Node logs (denials are logged as warnings) would drown the story the
    // demo tells; SAMVIRKE_LOG=info shows them.
    telemetry::init(LogFormat::Text, "error");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let workdir = tempfile::Builder::new()
        .prefix("samvirke-demo-")
        .tempdir()
        .context("creating the demo directory")?;
    let federation = DevFederation::start(workdir.path(), &DEMO_MUNICIPALITIES).await?;

    println!("Samvirke demo federation");
    println!(
        "  3 nodes on loopback; fresh development PKI and stores in {}",
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
            "      signing key {}  tls {}",
            abbreviate(&signing_key_text(&id.verifying_key())),
            abbreviate(&id.tls.fingerprint.to_string())
        );
    }

    println!();
    let mut failures = 0usize;
    data::publish(&federation).await?;
    let governed = governance::show(&federation, workdir.path()).await?;
    failures += governed.failures;
    failures += hellos(&federation).await;
    failures += data::query(&federation, &governed.agreement).await?;

    if !args.exit {
        let aarhus = &federation.nodes[0];
        let vejle = &federation.nodes[1];
        println!();
        println!("Serving until Ctrl-C. Call Vejle as Aarhus with grpcurl:");
        println!(
            "  grpcurl -cacert {} -cert {} -key {} {} samvirke.v1.Peer/Hello",
            aarhus.dir.join(TRUST_ROOTS_FILE).display(),
            aarhus.dir.join(TLS_CERT_FILE).display(),
            aarhus.dir.join(TLS_KEY_FILE).display(),
            vejle.running.peer_addr
        );
        println!("Aarhus's local API (admin token below):");
        println!(
            "  grpcurl -plaintext -H 'authorization: Bearer {}' {} samvirke.v1.Local/Status",
            aarhus.admin_token.as_str(),
            aarhus.running.local_addr
        );
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        println!("Stopping the demo federation.");
    }
    federation.shutdown().await?;
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Every node calls every other's Hello over mutual TLS. Members of the
/// GovTech Midtjylland roster (Aarhus and Vejle) learn who the other is;
/// Albertslund, which is in no roster they hold, and the nodes it calls,
/// learn only that the TLS handshake worked and that the caller is not a
/// member. Returns how many calls went otherwise.
async fn hellos(federation: &DevFederation) -> usize {
    println!();
    println!(
        "Hello over mutual TLS (each node calls the other two; only members learn who answered):"
    );
    let members = governance::MEMBERS;
    let mut failures = 0;
    for caller in &federation.nodes {
        for target in &federation.nodes {
            if std::ptr::eq(caller, target) {
                continue;
            }
            let both_members = [caller, target]
                .iter()
                .all(|n| members.contains(&n.running.identity.municipality_code));
            let route = format!(
                "{} -> {}",
                caller.running.identity.municipality_name,
                target.running.identity.municipality_name
            );
            match (hello(caller, target).await, both_members) {
                (Ok(line), true) => println!("  as expected  {line}"),
                (Err(reason), false) if reason.contains("PermissionDenied") => println!(
                    "  as expected  {route}: refused, not a member of a fellowship the answering \
                     node follows"
                ),
                (Ok(line), false) => {
                    failures += 1;
                    println!("  FAIL  {line} (a non-member learnt who answered)");
                }
                (Err(reason), _) => {
                    failures += 1;
                    println!("  FAIL  {route}: {reason}");
                }
            }
        }
    }
    failures
}

/// Calls `target`'s Hello as `caller` and checks the answer: the right
/// node answered, and it saw the caller's own certificate.
async fn hello(caller: &DevNode, target: &DevNode) -> Result<String, String> {
    let mut peer = client::connect(
        &target.running.peer_endpoint(),
        &caller.running.identity.tls,
    )
    .await
    .map_err(|e| e.to_string())?;
    let answer = peer
        .hello(HelloRequest {
            caller: Some(caller.running.identity.to_proto()),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
        .into_inner();
    let node = answer.node.ok_or("the answer carried no identity")?;
    let expected = target.running.identity.to_proto();
    if node != expected {
        return Err(format!(
            "answered as {} ({}), expected {} ({})",
            node.municipality_name,
            node.municipality_code,
            expected.municipality_name,
            expected.municipality_code
        ));
    }
    let own = caller.running.identity.tls.fingerprint.to_string();
    if answer.caller_certificate_fingerprint != own {
        return Err(format!(
            "server saw certificate {}, caller's is {own}",
            answer.caller_certificate_fingerprint
        ));
    }
    Ok(format!(
        "{} -> {}: answered as {} ({}), node {}, saw caller as {}",
        caller.running.identity.municipality_name,
        target.running.identity.municipality_name,
        node.municipality_name,
        node.municipality_code,
        node.node_id,
        abbreviate(&answer.caller_certificate_fingerprint)
    ))
}

/// `sha256:0123456789ab...` shortened for a terminal line.
fn abbreviate(text: &str) -> String {
    match text.split_once(':') {
        // Peers supply some of these strings: cut by characters, not bytes.
        Some((kind, hex)) if hex.chars().count() > 16 => {
            format!("{kind}:{}...", hex.chars().take(16).collect::<String>())
        }
        _ => text.to_string(),
    }
}
