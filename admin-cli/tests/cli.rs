//! The `samvirke` binary as an operator uses it: create a CA, initialise a
//! node with a dev certificate, show its identity, make tokens, and run the
//! demo federation to completion.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn samvirke(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_samvirke"))
        .args(args)
        .output()
        .expect("run samvirke")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn ca_init_and_identity_show_produce_a_roster_ready_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca");
    let node = dir.path().join("aarhus");
    let ca_arg = ca.to_str().expect("utf-8 path");
    let node_arg = node.to_str().expect("utf-8 path");

    let made_ca = samvirke(&["pki", "ca", "--out", ca_arg]);
    assert!(made_ca.status.success(), "{made_ca:?}");
    assert_eq!(mode(&ca.join("ca.key")), 0o600);

    let init = samvirke(&[
        "init",
        "--dir",
        node_arg,
        "--code",
        "751",
        "--advertise",
        "https://samvirke.aarhus.example:7443",
        "--dev-ca",
        ca_arg,
        "--host",
        "samvirke.aarhus.example",
    ]);
    assert!(init.status.success(), "{init:?}");
    let init_text = stdout(&init);
    assert!(init_text.contains("Aarhus Kommune"), "{init_text}");
    assert!(
        init_text.contains("svk_"),
        "admin token shown once: {init_text}"
    );
    assert_eq!(mode(&node.join("keys/signing.pem")), 0o600);
    assert_eq!(mode(&node.join("tls/node.key")), 0o600);

    let config = node.join("node.toml");
    let show = samvirke(&[
        "identity",
        "show",
        "--config",
        config.to_str().expect("utf-8 path"),
    ]);
    assert!(show.status.success(), "{show:?}");
    let text = stdout(&show);
    assert!(text.contains("code = 751"), "{text}");
    assert!(text.contains("name = \"Aarhus Kommune\""), "{text}");
    assert!(
        text.contains("endpoint = \"https://samvirke.aarhus.example:7443\""),
        "{text}"
    );
    let key_line = text
        .lines()
        .find(|l| l.starts_with("signing_key = \"ed25519:"))
        .expect("signing key line");
    assert_eq!(key_line.len(), "signing_key = \"ed25519:\"".len() + 64);
    assert!(
        text.lines()
            .any(|l| l.starts_with("tls_fingerprint = \"sha256:")),
        "{text}"
    );
    // Nothing secret on screen: the private key PEM never appears.
    assert!(!text.contains("PRIVATE KEY"));

    // A second init into the same directory must not overwrite the keys.
    let again = samvirke(&["init", "--dir", node_arg, "--code", "751"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
}

#[test]
fn token_new_prints_a_config_entry_whose_hash_matches_the_token() {
    let output = samvirke(&["token", "new", "--name", "os2iot", "--role", "ingest"]);
    assert!(output.status.success(), "{output:?}");
    let text = stdout(&output);
    let token = text
        .split_whitespace()
        .find(|w| w.starts_with("svk_"))
        .expect("token printed");
    let hash = samvirke_node::local::auth::TokenHash::of_token(token).to_hex();
    assert!(text.contains(&format!("sha256 = \"{hash}\"")), "{text}");
    assert!(text.contains("roles = [\"ingest\"]"), "{text}");
}

#[test]
fn the_demo_federation_tells_its_story_and_exits_cleanly() {
    let output = samvirke(&["demo", "--exit"]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}\n{output:?}");
    // Every step of the story checks what happened against what should.
    assert_eq!(text.matches("[as expected]").count(), 16, "{text}");
    assert!(text.contains("Every step went as expected."), "{text}");
    assert!(!text.contains("[UNEXPECTED]"), "{text}");
    for name in [
        "Aarhus Kommune",
        "Vejle Kommune",
        "Silkeborg Kommune",
        "Albertslund Kommune",
    ] {
        assert!(text.contains(name), "{text}");
    }
    // The analyst's question reaches the partners, one of which is down.
    assert!(text.contains("unavailable"), "{text}");
    assert!(text.contains("OK: receipt"), "{text}");
    assert!(text.contains("form an unbroken chain"), "{text}");
}
