//! Stock clients from outside Rust against real nodes: Python's grpcio
//! with grpcio-reflection (`ProtoReflectionDescriptorDatabase`, which
//! speaks `grpc.reflection.v1alpha` only) lists each listener's services
//! and resolves their descriptors, on the plaintext local listener and,
//! with a partner's certificate, the mutual-TLS peer listener
//! (`tests/python/reflection_list.py`).
//!
//! Needs python3 with grpcio and grpcio-reflection (`.ci/run` installs
//! them); without them the test fails, unless SAMVIRKE_SKIP_PYTHON is set.

use std::path::Path;
use std::process::Command;

use samvirke_node::devnet::DevFederation;
use samvirke_node::provision::{TLS_CERT_FILE, TLS_KEY_FILE, TRUST_ROOTS_FILE};

/// The services (with their method counts) the stock Python client lists
/// at `address`, or `None` when SAMVIRKE_SKIP_PYTHON is set.
async fn python_services(args: Vec<String>) -> Option<Vec<(String, usize)>> {
    if std::env::var_os("SAMVIRKE_SKIP_PYTHON").is_some() {
        eprintln!("SAMVIRKE_SKIP_PYTHON is set: the Python reflection client is not run");
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/reflection_list.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .args(&args)
            .output()
            .expect("python3 runs (set SAMVIRKE_SKIP_PYTHON=1 where there is none)")
    })
    .await
    .expect("the Python task");
    assert!(
        output.status.success(),
        "the Python reflection client failed ({}): {}\n(install it with `python3 -m pip install \
         grpcio grpcio-reflection`, or set SAMVIRKE_SKIP_PYTHON=1)",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let (name, methods) = line.rsplit_once(' ').expect("`service methods`");
                (name.to_string(), methods.parse().expect("a method count"))
            })
            .collect(),
    )
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().expect("a UTF-8 path").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_python_reflection_client_lists_each_listeners_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = DevFederation::start(dir.path(), &[751, 630])
        .await
        .expect("start two nodes");
    let aarhus = &fed.nodes[0];

    // The local listener, plaintext as on loopback.
    let local = aarhus
        .running
        .local_endpoint()
        .trim_start_matches("http://")
        .to_string();
    if let Some(services) = python_services(vec![local]).await {
        let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"samvirke.v1.Local"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
        assert!(!names.contains(&"samvirke.v1.Peer"), "{names:?}");
        let local_methods = services
            .iter()
            .find(|(n, _)| n == "samvirke.v1.Local")
            .map(|(_, m)| *m);
        assert!(
            local_methods.is_some_and(|m| m >= 20),
            "the Local descriptor resolves with its methods: {local_methods:?}"
        );
    }

    // The peer listener over mutual TLS, as Vejle (a certificate of the
    // same CA), verifying Aarhus's certificate for `localhost`.
    let peer = aarhus
        .running
        .peer_endpoint()
        .trim_start_matches("https://")
        .to_string();
    let vejle = &fed.nodes[1].dir;
    if let Some(services) = python_services(vec![
        peer,
        path(&aarhus.dir, TRUST_ROOTS_FILE),
        path(vejle, TLS_CERT_FILE),
        path(vejle, TLS_KEY_FILE),
        "localhost".to_string(),
    ])
    .await
    {
        let names: Vec<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"samvirke.v1.Peer"), "{names:?}");
        assert!(!names.contains(&"samvirke.v1.Local"), "{names:?}");
    }

    fed.shutdown().await.expect("shutdown");
}
