//! The local listener, end to end: bearer-token authentication and roles on
//! `samvirke.v1.Local/Status`, what `Status` reports, and the health and
//! reflection services a stock client sees on the local listener.
//!
//! Nodes are real (devnet, or provisioned here with extra tokens), with
//! real sled stores on `127.0.0.1:0`.

use samvirke_node::devnet::DevFederation;
use samvirke_node::pki::DevCa;
use samvirke_proto::v1::StatusRequest;
use samvirke_proto::v1::local_client::LocalClient;
use samvirke_tests::{
    StartedNode, health_status, list_services, local_client, plaintext_channel, start_node,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

async fn federation(dir: &tempfile::TempDir) -> DevFederation {
    DevFederation::start(dir.path(), &[751, 630, 165])
        .await
        .expect("start the development federation")
}

/// A node with, besides its admin token, `sensors` (ingest only) and
/// `dashboard` (read only).
async fn node_with_limited_tokens(dir: &tempfile::TempDir) -> StartedNode {
    let ca = DevCa::generate("Test CA").expect("CA");
    start_node(
        &dir.path().join("751"),
        &ca,
        751,
        &[("sensors", &["ingest"]), ("dashboard", &["read"])],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_a_token_is_unauthenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;

    let status = local_client(&fed.nodes[0].running.local_endpoint(), None)
        .await
        .status(StatusRequest {})
        .await
        .expect_err("no token, no status");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("authorization: Bearer"),
        "the message tells the caller what to send: {status:?}"
    );

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_a_wrong_or_malformed_token_is_unauthenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let endpoint = fed.nodes[0].running.local_endpoint();

    // Well-formed, but not a token this node knows.
    let wrong = format!("svk_{}", "0".repeat(64));
    let status = local_client(&endpoint, Some(&wrong))
        .await
        .status(StatusRequest {})
        .await
        .expect_err("an unknown token is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Another node's admin token is just as unknown here.
    let status = local_client(&endpoint, Some(fed.nodes[1].admin_token.as_str()))
        .await
        .status(StatusRequest {})
        .await
        .expect_err("a partner's token is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Not a bearer token at all.
    let channel = plaintext_channel(&endpoint).await.expect("channel");
    let mut request = tonic::Request::new(StatusRequest {});
    request.metadata_mut().insert(
        "authorization",
        "Basic YWRtaW46YWRtaW4=".parse().expect("ASCII header"),
    );
    let status = LocalClient::new(channel)
        .status(request)
        .await
        .expect_err("basic auth is refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_read_role_is_permission_denied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with_limited_tokens(&dir).await;
    let endpoint = node.running.local_endpoint();

    let status = local_client(&endpoint, Some(&node.extra_tokens[0]))
        .await
        .status(StatusRequest {})
        .await
        .expect_err("an ingest-only token cannot read status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("`read`"),
        "the message names the missing role: {status:?}"
    );
    assert!(
        status.message().contains("sensors"),
        "the message names the token (not its secret): {status:?}"
    );
    assert!(
        !status.message().contains(node.extra_tokens[0].as_str()),
        "the message must not echo the secret"
    );

    // A read-only token is enough.
    let answer = local_client(&endpoint, Some(&node.extra_tokens[1]))
        .await
        .status(StatusRequest {})
        .await
        .expect("a read token reads status")
        .into_inner();
    assert_eq!(answer.caller_token_name, "dashboard");
    assert_eq!(answer.caller_roles, vec!["read".to_string()]);

    node.running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_the_admin_token_reports_identity_listeners_and_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;

    for node in &fed.nodes {
        let running = &node.running;
        let answer = local_client(&running.local_endpoint(), Some(node.admin_token.as_str()))
            .await
            .status(StatusRequest {})
            .await
            .expect("the admin token reads status")
            .into_inner();

        assert_eq!(answer.node, Some(running.identity.to_proto()));
        assert_eq!(
            answer.node.as_ref().map(|n| n.municipality_code),
            Some(node.config.node.municipality_code)
        );
        assert_eq!(answer.store_schema_version, 1);
        assert_eq!(answer.caller_token_name, "admin");
        assert_eq!(answer.caller_roles, vec!["admin".to_string()]);
        assert!(answer.started_at.is_some());

        let listeners: Vec<(&str, &str, &str)> = answer
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.address.as_str(), l.security.as_str()))
            .collect();
        let peer_addr = running.peer_addr.to_string();
        let local_addr = running.local_addr.to_string();
        let http_addr = running
            .http_addr
            .map(|a| a.to_string())
            .expect("start_node turns the HTTP API on");
        assert_eq!(
            listeners,
            vec![
                ("peer", peer_addr.as_str(), "mtls"),
                ("local", local_addr.as_str(), "plaintext+bearer"),
                ("http", http_addr.as_str(), "plaintext+bearer"),
            ]
        );
        assert_ne!(
            running.peer_addr.port(),
            0,
            "the bound port, not the configured :0"
        );
    }

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_listener_health_reports_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let channel = plaintext_channel(&fed.nodes[0].running.local_endpoint())
        .await
        .expect("plaintext channel to the local listener");

    // Health needs no token: load balancers and probes do not have one.
    for service in ["", "samvirke.v1.Local"] {
        let status = health_status(channel.clone(), service)
            .await
            .unwrap_or_else(|e| panic!("health check of `{service}`: {e}"));
        assert_eq!(status, ServingStatus::Serving, "service `{service}`");
    }

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_listener_reflection_lists_local_and_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let channel = plaintext_channel(&fed.nodes[0].running.local_endpoint())
        .await
        .expect("plaintext channel to the local listener");

    let services = list_services(channel).await;
    for expected in ["samvirke.v1.Local", "grpc.health.v1.Health"] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} missing from {services:?}"
        );
    }
    assert!(
        !services.iter().any(|s| s == "samvirke.v1.Peer"),
        "the local listener must not advertise the peer API: {services:?}"
    );

    fed.shutdown().await.expect("shutdown");
}
