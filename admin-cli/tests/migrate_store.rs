//! `samvirke-node migrate-store` moves the demo's Aarhus node from sled to
//! PostgreSQL: the real demo runs and keeps its nodes' directories, the
//! real binary moves Aarhus's store into a fresh database on the
//! development server, and then the node is opened on the database as an
//! operator would after changing `[store]`: every dataset has the readings
//! it had, records and governance are there, and the audit chain exported
//! through the node's local API verifies against the node's key, with
//! every entry it had before. Moving into a database that is not empty,
//! or out of a directory that is not a store, is refused.

use std::path::Path;
use std::process::Command;

use samvirke_node::audit::chain::verify_export;
use samvirke_node::config::Config;
use samvirke_node::data::ReadingStore;
use samvirke_node::dev_postgres::DevPostgres;
use samvirke_node::store::{Keyspace, SledStore, Store};
use samvirke_proto::v1 as pb;

const CLI: &str = env!("CARGO_BIN_EXE_samvirke");

/// Readings per dataset id, and audit entries, of a store.
fn tally(store: std::sync::Arc<dyn Store>) -> (Vec<(String, u64)>, u64) {
    let audit = store
        .last(Keyspace::Audit)
        .expect("the audit head")
        .map(|(key, _)| u64::from_be_bytes(key.try_into().expect("a sequence key")))
        .unwrap_or(0);
    let readings = ReadingStore::new(store);
    let counts = readings
        .catalog()
        .list()
        .expect("the catalog")
        .into_iter()
        .filter(|d| d.kind == samvirke_node::data::DatasetKind::Sensor)
        .map(|d| {
            let n = readings.count(&d.id).expect("count");
            (d.id, n)
        })
        .collect();
    (counts, audit)
}

fn run(program: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_demo_node_moves_to_postgres_with_equal_counts_and_a_verifying_audit_chain() {
    let node_binary = samvirke_tests::workspace_binary(Path::new(CLI), "samvirke-node");
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = dir.path().join("demo");
    let (ok, out) = run(
        Path::new(CLI),
        &[
            "demo",
            "--exit",
            "--keep",
            demo.to_str().expect("utf-8 path"),
        ],
    );
    assert!(ok && out.contains("Every step went as expected."), "{out}");

    let aarhus = demo.join("751");
    let data = aarhus.join("data");
    let (before, audit_before) = tally(std::sync::Arc::new(
        SledStore::open(&data).expect("Aarhus's sled store"),
    ));
    assert!(
        before.iter().any(|(_, n)| *n > 1000) && audit_before > 10,
        "the demo left data to move: {before:?}, {audit_before} audit entries"
    );

    let server = DevPostgres::shared().expect("development PostgreSQL");
    let url = server.create_database("moved").expect("a fresh database");
    let from = format!("sled:{}", data.display());
    let to = format!("postgres:{url}");
    let (ok, out) = run(
        &node_binary,
        &["migrate-store", "--from", &from, "--to", &to],
    );
    assert!(ok, "{out}");
    let total: u64 = before.iter().map(|(_, n)| n).sum();
    assert!(
        out.contains(&format!("{total} readings in {} datasets", before.len()))
            && out.contains(&format!("{audit_before} audit entries (chain verified)")),
        "{out}"
    );

    // Again into the same database: refused, nothing changed.
    let (ok, out) = run(
        &node_binary,
        &["migrate-store", "--from", &from, "--to", &to],
    );
    assert!(!ok && out.contains("not empty"), "{out}");
    // A source that is not a store: refused.
    let (ok, out) = run(
        &node_binary,
        &["migrate-store", "--from", "sled:/proc", "--to", &to],
    );
    assert!(!ok && out.contains("not a Samvirke store"), "{out}");

    // The node on the moved store, as its operator configures it.
    let config_path = aarhus.join("node.toml");
    let mut text = std::fs::read_to_string(&config_path).expect("node.toml");
    // The demo showed its admin tokens once; the operator makes another.
    let token = samvirke_node::local::auth::generate_token().expect("a token");
    text.push_str(&format!(
        "\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\n\n[[local.tokens]]\nname = \"operator\"\n\
         sha256 = \"{}\"\nroles = [\"admin\"]\n",
        token.hash.to_hex()
    ));
    std::fs::write(&config_path, text).expect("write node.toml");
    let config = Config::load(&config_path).expect("the config loads");
    let store = samvirke_node::server::open_store(&config).expect("the moved store opens");
    assert_eq!(store.backend_name(), "postgres");
    let (after, audit_after) = tally(store);
    assert_eq!(after, before, "readings per dataset after the move");
    assert_eq!(audit_after, audit_before, "audit entries after the move");

    // The audit chain, exported by the node running on PostgreSQL.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let export = runtime.block_on(async {
        let node = samvirke_node::server::Node::open(config.clone()).expect("the node opens");
        let key = node.identity().verifying_key();
        let listeners = samvirke_node::server::Listeners::bind(&config)
            .await
            .expect("bind");
        let running = node.spawn(listeners);
        let mut client =
            samvirke_tests::local_client(&running.local_endpoint(), Some(token.secret.as_str()))
                .await;
        let mut stream = client
            .export_audit(pb::ExportAuditRequest { from: 1, to: 0 })
            .await
            .expect("ExportAudit")
            .into_inner();
        let mut file = Vec::new();
        while let Some(chunk) = stream.message().await.expect("the export stream") {
            file.extend_from_slice(&chunk.data);
        }
        running.shutdown().await.expect("the node stops");
        (file, key)
    });
    let verified = verify_export(&export.0, &export.1).expect("the moved chain verifies");
    assert_eq!(verified.first, 1);
    assert!(
        verified.last >= audit_before,
        "every entry moved is in the chain: {} < {audit_before}",
        verified.last
    );
}
