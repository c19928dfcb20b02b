//! Backup and restore of a running node, end to end (devnet: real nodes,
//! real sled stores, real mutual TLS on loopback, the real local API):
//!
//! - a node holding its own readings, a roster, an agreement, receipts of
//!   a federated answer and an audit log is backed up while an ingest into
//!   it keeps running; the backup's manifest counts match what it holds;
//!   files are 0600, the directory 0700, and no private key is in it;
//! - the backup restores into a fresh data directory, a node started on it
//!   counts exactly the snapshot's readings (the sensor index agrees with
//!   the readings: the snapshot caught no half-written batch), lists the
//!   same receipts and governance, and its audit chain verifies;
//! - attacks and accidents: a backup without a valid admin token, into a
//!   non-empty directory, a restore into a non-empty data directory, a
//!   flipped byte, an audit entry rewritten with every digest recomputed,
//!   and a backup presented as another node's are all refused, naming
//!   what is wrong, and nothing is written.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use samvirke_node::audit::verify_export;
use samvirke_node::backup::{self, BackupError, BackupRequest, Manifest};
use samvirke_node::data::{Reading, generate, sensor_dataset};
use samvirke_node::governance::{Consumers, DecisionRule, Scope};
use samvirke_node::identity::signing_key_text;
use samvirke_node::server::{Listeners, Node};
use samvirke_node::wire;
use samvirke_proto::v1 as pb;
use samvirke_tests::{
    GovernanceFixture, count_readings, file_mode, ingest, ingest_batches, local_client,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::macros::datetime;

const AARHUS: u32 = 751;
const VEJLE: u32 = 630;
const NOW: OffsetDateTime = datetime!(2026-03-10 12:00 UTC);
const FROM: OffsetDateTime = datetime!(2026-03-01 00:00 UTC);
const UNTIL: OffsetDateTime = datetime!(2026-03-02 00:00 UTC);

/// Publishes the air-quality dataset of `code` and ingests a day of it.
async fn publish_air(fx: &GovernanceFixture, code: u32) -> String {
    let mut admin = fx.admin(code).await;
    let dataset = sensor_dataset("air-quality", code).expect("air-quality dataset");
    admin
        .publish_dataset(wire::dataset_to_proto(&dataset))
        .await
        .expect("publish the air-quality dataset");
    let readings: Vec<Reading> = generate("air-quality", code, 4, FROM, UNTIL, 7)
        .expect("generate")
        .collect();
    ingest(&mut admin, ingest_batches(&dataset.id, &readings, 200))
        .await
        .expect("ingest");
    dataset.id
}

/// Vejle, a member of a fellowship with Aarhus, with an agreement to read
/// Aarhus' air quality, asks once so it holds receipts.
async fn vejle_with_everything(fx: &GovernanceFixture) -> String {
    let aarhus_air = publish_air(fx, AARHUS).await;
    let vejle_air = publish_air(fx, VEJLE).await;
    fx.import_everywhere(&fx.anchor(DecisionRule::Quorum(1), &[AARHUS, VEJLE]))
        .await;
    let mut terms = fx.terms(AARHUS, Consumers::Named(vec![VEJLE]));
    terms.scope = Scope {
        datasets: vec![aarhus_air.clone()],
        kinds: Vec::new(),
        keywords: Vec::new(),
    };
    terms.valid_from = datetime!(2026-01-01 00:00 UTC);
    terms.valid_until = datetime!(2027-01-01 00:00 UTC);
    let agreement = fx.agreement(&terms, &[AARHUS, VEJLE]);
    for code in [AARHUS, VEJLE] {
        fx.import_agreement(code, &agreement.to_bytes())
            .await
            .unwrap_or_else(|s| panic!("{code} imports the agreement: {s:?}"));
    }
    let ask = pb::AskRequest {
        question: Some(pb::ask_request::Question::Readings(pb::ReadingQuery {
            dataset_id: aarhus_air,
            from: Some(wire::timestamp(FROM)),
            until: Some(wire::timestamp(UNTIL)),
            measures: vec!["pm2_5".to_string()],
            ..Default::default()
        })),
        target: Some(pb::AskTarget {
            partners: vec![AARHUS],
            ..Default::default()
        }),
        deadline_ms: 10_000,
        ..Default::default()
    };
    let answer = samvirke_tests::ask_all(&mut fx.admin(VEJLE).await, ask)
        .await
        .expect("Vejle's question is answered");
    assert!(answer.done.is_some());
    vejle_air
}

async fn receipts(client: &mut samvirke_tests::TokenLocalClient) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list_receipts(pb::ListReceiptsRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("ListReceipts")
        .into_inner()
        .receipts
        .into_iter()
        .map(|r| format!("{:?}", r.body))
        .collect();
    ids.sort();
    ids
}

fn shared_clock(fx: &GovernanceFixture) -> samvirke_node::clock::SharedClock {
    fx.clock.clone()
}

fn entries(manifest: &Manifest, keyspace: &str) -> u64 {
    manifest
        .store
        .keyspaces
        .get(keyspace)
        .map_or(0, |k| k.entries)
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            assert_eq!(file_mode(&path), 0o700, "{} is private", path.display());
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_backed_up_under_ingest_restores_to_equal_counts_and_a_verifying_audit_chain() {
    let fx = GovernanceFixture::start(&[AARHUS, VEJLE], NOW).await;
    let vejle_air = vejle_with_everything(&fx).await;
    let vejle = fx.node(VEJLE);
    let work = tempfile::tempdir().expect("tempdir");

    // An ingest that keeps running while the backup is taken: 96 new
    // readings after another, each four hours earlier than the last.
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicU64::new(0));
    let ingesting = {
        let stop = Arc::clone(&stop);
        let batches = Arc::clone(&batches);
        let mut client = fx.admin(VEJLE).await;
        let dataset = vejle_air.clone();
        tokio::spawn(async move {
            let mut until = FROM;
            while !stop.load(Ordering::Relaxed) {
                let from = until - Duration::from_secs(4 * 3600);
                let readings: Vec<Reading> = generate("air-quality", VEJLE, 4, from, until, 9)
                    .expect("generate")
                    .collect();
                ingest(&mut client, ingest_batches(&dataset, &readings, 50))
                    .await
                    .expect("ingest goes on during the backup");
                batches.fetch_add(1, Ordering::Relaxed);
                until = from;
            }
        })
    };
    while batches.load(Ordering::Relaxed) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let to = work.path().join("backup");
    let request = BackupRequest {
        endpoint: vejle.running.local_endpoint(),
        token: vejle.admin_token.clone(),
        to: to.clone(),
        include_keys: false,
    };
    let manifest = backup::fetch(&vejle.config, &request)
        .await
        .expect("the backup is taken");
    let during = batches.load(Ordering::Relaxed);
    // Ingest kept going after the snapshot too.
    while batches.load(Ordering::Relaxed) < during + 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    ingesting.await.expect("the ingest task");

    let mut original = fx.admin(VEJLE).await;
    let final_count = count_readings(&mut original, &vejle_air).await;
    let snapshot_readings = entries(&manifest, "readings");
    assert!(
        snapshot_readings > 24 * 6 * 4 && snapshot_readings < final_count,
        "the snapshot holds the first day and part of the running ingest: {snapshot_readings} \
         of {final_count}"
    );
    for keyspace in ["rosters", "agreements", "receipts", "datasets", "sensors"] {
        assert!(entries(&manifest, keyspace) > 0, "{keyspace} are backed up");
    }
    assert!(manifest.store.audit_entries > 0);
    assert_eq!(
        manifest.signing_key,
        signing_key_text(&vejle.running.identity.verifying_key())
    );
    assert!(!manifest.keys_included);
    let backed_up = files(&to);
    for file in &backed_up {
        assert_eq!(file_mode(file), 0o600, "{} is private", file.display());
    }
    let names: Vec<String> = backed_up
        .iter()
        .map(|p| p.strip_prefix(&to).expect("inside").display().to_string())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("keys/")), "{names:?}");
    assert!(names.contains(&"config/node.toml".to_string()), "{names:?}");
    let signing_key = std::fs::read(&vejle.config.node.signing_key).expect("key file");
    for file in &backed_up {
        let bytes = std::fs::read(file).expect("read");
        assert!(
            !bytes
                .windows(signing_key.len().min(64))
                .any(|w| w == &signing_key[..signing_key.len().min(64)]),
            "{} holds the signing key",
            file.display()
        );
    }

    // Restore into a fresh directory and start a node on it.
    let data_dir = work.path().join("restored");
    let restored = backup::restore(
        &to,
        &data_dir,
        Some(&signing_key_text(&vejle.running.identity.verifying_key())),
    )
    .expect("the backup restores");
    assert_eq!(restored.audit_verified, manifest.store.audit_entries);
    assert_eq!(restored.entries.get("readings"), Some(&snapshot_readings));
    let mut config = vejle.config.clone();
    config.node.data_dir = data_dir.clone();
    let node = Node::open(config.clone())
        .expect("a node opens the restored store")
        .with_clock(shared_clock(&fx))
        .expect("clock");
    let listeners = Listeners::bind(&config).await.expect("bind");
    let running = node.spawn(listeners);
    let token = vejle.admin_token.to_string();
    let mut client = local_client(&running.local_endpoint(), Some(&token)).await;
    assert_eq!(
        count_readings(&mut client, &vejle_air).await,
        snapshot_readings,
        "the restored sensor index counts exactly the restored readings"
    );
    assert_eq!(receipts(&mut client).await, receipts(&mut original).await);
    let governance = |r: pb::ListGovernanceResponse| {
        let mut ids: Vec<String> = r.agreements.iter().map(|a| a.id.clone()).collect();
        ids.sort();
        (r.rosters.len(), ids)
    };
    let listing = |mut c: samvirke_tests::TokenLocalClient| async move {
        c.list_governance(pb::ListGovernanceRequest::default())
            .await
            .expect("ListGovernance")
            .into_inner()
    };
    assert_eq!(
        governance(listing(client.clone()).await),
        governance(listing(original.clone()).await)
    );
    let mut export = Vec::new();
    let mut stream = client
        .export_audit(pb::ExportAuditRequest { from: 1, to: 0 })
        .await
        .expect("ExportAudit")
        .into_inner();
    while let Some(chunk) = stream.message().await.expect("export") {
        export.extend_from_slice(&chunk.data);
    }
    let verified = verify_export(&export, &vejle.running.identity.verifying_key())
        .expect("the restored node's audit chain verifies");
    assert!(verified.last >= manifest.store.audit_entries);
    running.shutdown().await.expect("shutdown");

    refusals(&fx, &to, work.path()).await;
}

/// The ways a backup or restore can go wrong, on the backup just taken.
async fn refusals(fx: &GovernanceFixture, good: &Path, work: &Path) {
    let vejle = fx.node(VEJLE);

    // No valid admin token: refused, nothing written.
    let empty = work.join("no-token");
    let request = BackupRequest {
        endpoint: vejle.running.local_endpoint(),
        token: zeroize::Zeroizing::new("not-a-token".to_string()),
        to: empty.clone(),
        include_keys: false,
    };
    let err = backup::fetch(&vejle.config, &request)
        .await
        .expect_err("a wrong token");
    assert!(err.to_string().contains("Unauthenticated"), "{err}");
    assert!(!empty.exists() || std::fs::read_dir(&empty).expect("dir").next().is_none());

    // Into a directory that holds something: refused before asking.
    let request = BackupRequest {
        include_keys: false,
        to: good.to_path_buf(),
        token: vejle.admin_token.clone(),
        ..request
    };
    let err = backup::fetch(&vejle.config, &request)
        .await
        .expect_err("a non-empty target");
    assert!(matches!(err, BackupError::TargetNotEmpty { .. }), "{err}");

    // With --include-keys the keys come along, 0600, exactly as they are.
    let with_keys = work.join("with-keys");
    let request = BackupRequest {
        to: with_keys.clone(),
        include_keys: true,
        ..request
    };
    let manifest = backup::fetch(&vejle.config, &request)
        .await
        .expect("a backup with keys");
    assert!(manifest.keys_included);
    for (file, source) in [
        ("keys/signing.pem", &vejle.config.node.signing_key),
        ("keys/tls.key", &vejle.config.peer.tls_key),
    ] {
        let path = with_keys.join(file);
        assert_eq!(file_mode(&path), 0o600, "{file}");
        assert_eq!(
            std::fs::read(&path).expect("key"),
            std::fs::read(source).expect("source")
        );
    }

    // A restore into a data directory that is not empty: refused, untouched.
    let busy = work.join("busy");
    std::fs::create_dir_all(&busy).expect("mkdir");
    std::fs::write(busy.join("notes.txt"), b"mine").expect("write");
    let err = backup::restore(good, &busy, None).expect_err("non-empty data dir");
    assert!(matches!(err, BackupError::DataDirNotEmpty { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&busy).expect("dir").count(), 1);

    // A copy of the backup to damage.
    let copy = |name: &str| {
        let dir = work.join(name);
        std::fs::create_dir_all(dir.join("config")).expect("mkdir");
        for file in files(good) {
            let relative = file.strip_prefix(good).expect("inside");
            std::fs::copy(&file, dir.join(relative)).expect("copy");
        }
        dir
    };
    let snapshot_of = |dir: &Path| dir.join(backup::STORE_FILE);

    // One flipped byte in the middle of the snapshot.
    let flipped = copy("flipped");
    let mut bytes = std::fs::read(snapshot_of(&flipped)).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(snapshot_of(&flipped), &bytes).expect("write");
    let target = work.join("restore-flipped");
    let err = backup::restore(&flipped, &target, None).expect_err("a flipped byte");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert!(!target.exists(), "nothing is written");

    // A changed config file.
    let changed = copy("changed-config");
    std::fs::write(changed.join("config/node.toml"), b"# changed").expect("write");
    let err = backup::restore(&changed, &work.join("restore-changed"), None)
        .expect_err("a changed config");
    assert!(err.to_string().contains("config/node.toml"), "{err}");

    // An audit entry rewritten, with the file's and the keyspaces' digests
    // recomputed in the manifest: only the signed checkpoint catches it.
    let forged = copy("forged");
    let mut manifest = backup::read_manifest(&forged).expect("manifest");
    let bytes = std::fs::read(snapshot_of(&forged)).expect("read");
    let rewritten = rewrite_audit(
        &bytes,
        b"\"outcome\":\"allowed\"",
        b"\"outcome\":\"refused\"",
    );
    let (digests, total) = digests(&rewritten);
    manifest.store.sha256 = total;
    manifest.store.bytes = rewritten.len() as u64;
    for (name, sha) in digests {
        if let Some(k) = manifest.store.keyspaces.get_mut(&name) {
            k.sha256 = sha;
        }
    }
    std::fs::write(snapshot_of(&forged), &rewritten).expect("write");
    std::fs::remove_file(forged.join(backup::MANIFEST_FILE)).expect("rm");
    backup::write_manifest(&forged, &manifest).expect("manifest");
    let target = work.join("restore-forged");
    let err = backup::restore(&forged, &target, None).expect_err("a rewritten audit entry");
    assert!(matches!(err, BackupError::Audit { .. }), "{err}");
    assert!(!target.exists(), "nothing is written");

    // The backup presented as another node's.
    let aarhus_key = signing_key_text(&fx.node(AARHUS).running.identity.verifying_key());
    let err = backup::restore(good, &work.join("restore-other"), Some(&aarhus_key))
        .expect_err("another node's key");
    assert!(
        err.to_string().contains("made by the node with key"),
        "{err}"
    );
}

const MAGIC_LEN: usize = b"SAMVIRKE-SNAPSHOT 1\n".len();
/// Position of the audit keyspace in `Keyspace::ALL`.
const AUDIT: u8 = 5;

/// The snapshot's records: (keyspace number, key, value).
fn records(bytes: &[u8]) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = MAGIC_LEN;
    let field = |at: &mut usize| {
        let length = u32::from_be_bytes(bytes[*at..*at + 4].try_into().expect("4")) as usize;
        let field = bytes[*at + 4..*at + 4 + length].to_vec();
        *at += 4 + length;
        field
    };
    while bytes[at] != 0xFF {
        let space = bytes[at];
        at += 1;
        let key = field(&mut at);
        let value = field(&mut at);
        out.push((space, key, value));
    }
    out
}

fn frame(space: u8, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![space];
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The snapshot with the first audit entry holding `from` changed to `to`.
fn rewrite_audit(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = bytes[..MAGIC_LEN].to_vec();
    let mut done = false;
    for (space, key, mut value) in records(bytes) {
        if space == AUDIT
            && !done
            && let Some(at) = value.windows(from.len()).position(|w| w == from)
        {
            value.splice(at..at + from.len(), to.iter().copied());
            done = true;
        }
        out.extend(frame(space, &key, &value));
    }
    assert!(done, "an audit entry to rewrite");
    out.push(0xFF);
    out
}

/// Per-keyspace SHA-256 of the records, and of the whole file.
fn digests(bytes: &[u8]) -> (Vec<(String, String)>, String) {
    let names = [
        "meta",
        "rosters",
        "agreements",
        "quarantine",
        "budgets",
        "audit",
        "checkpoints",
        "receipts",
        "nonces",
        "datasets",
        "sensors",
        "readings",
        "records",
    ];
    let mut hashes: Vec<Sha256> = names.iter().map(|_| Sha256::new()).collect();
    for (space, key, value) in records(bytes) {
        hashes[space as usize].update(frame(space, &key, &value));
    }
    (
        names
            .iter()
            .zip(hashes)
            .map(|(n, h)| (n.to_string(), hex::encode(h.finalize())))
            .collect(),
        hex::encode(Sha256::digest(bytes)),
    )
}
