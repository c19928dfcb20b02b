//! A node's life outside its APIs, end to end on real devnet nodes:
//!
//! - graceful shutdown returns `Ok`, closes both ports, cuts off clients
//!   that were connected, and releases the store so the node can be
//!   opened again;
//! - private key files (CA key, signing keys, TLS keys) are mode 0600, and
//!   key and data directories are not readable by others.

use std::io::ErrorKind;

use samvirke_node::devnet::DevFederation;
use samvirke_node::server::Node;
use samvirke_proto::v1::StatusRequest;
use samvirke_tests::{
    IO_TIMEOUT, file_mode, hello_over, local_client, node_client_tls, tls_channel,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_both_ports_and_releases_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fed = DevFederation::start(dir.path(), &[751, 630])
        .await
        .expect("start the development federation");
    fed.pin_fellowship("devnet").expect("pin a roster of both");
    let partner = fed.nodes.remove(1);
    let node = fed.nodes.remove(0);
    let peer_addr = node.running.peer_addr;
    let local_addr = node.running.local_addr;

    // Clients with open connections on both listeners, as partners and
    // local apps would have when the operator stops the node.
    let mut local = local_client(
        &node.running.local_endpoint(),
        Some(node.admin_token.as_str()),
    )
    .await;
    local
        .status(StatusRequest {})
        .await
        .expect("status before shutdown");
    let peer_channel = tls_channel(
        &node.running.peer_endpoint(),
        node_client_tls(&partner.running.identity.tls),
    )
    .await
    .expect("mTLS channel before shutdown");
    hello_over(Ok(peer_channel.clone()))
        .await
        .expect("hello before shutdown");

    tokio::time::timeout(IO_TIMEOUT, node.running.shutdown())
        .await
        .expect("shutdown finishes even with clients connected")
        .expect("shutdown returns Ok");

    for (name, address) in [("peer", peer_addr), ("local", local_addr)] {
        let error = tokio::net::TcpStream::connect(address)
            .await
            .expect_err("the port is closed after shutdown");
        assert_eq!(
            error.kind(),
            ErrorKind::ConnectionRefused,
            "{name} listener {address}: {error}"
        );
    }
    local
        .status(StatusRequest {})
        .await
        .expect_err("a connected local client is cut off");
    hello_over(Ok(peer_channel))
        .await
        .expect_err("a connected partner is cut off");

    // The sled store was flushed and closed: the node opens again.
    let reopened = Node::open(node.config.clone()).expect("the store is released on shutdown");
    assert_eq!(reopened.identity().node_id, node.config.node.node_id);

    partner.running.shutdown().await.expect("partner shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_keys_are_mode_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = DevFederation::start(dir.path(), &[751, 630, 165])
        .await
        .expect("start the development federation");

    assert_eq!(
        file_mode(&dir.path().join("ca").join("ca.key")),
        0o600,
        "ca/ca.key"
    );
    for node in &fed.nodes {
        for key in ["keys/signing.pem", "tls/node.key"] {
            let path = node.dir.join(key);
            assert_eq!(file_mode(&path), 0o600, "{}", path.display());
        }
        let keys = node.dir.join("keys");
        assert_eq!(file_mode(&keys) & 0o077, 0, "{}", keys.display());
        let data = &node.config.node.data_dir;
        assert_eq!(file_mode(data) & 0o077, 0, "{}", data.display());
    }

    fed.shutdown().await.expect("shutdown");
}
