//! The peer listener's transport security, end to end: real devnet nodes on
//! `127.0.0.1:0` with real mutual TLS.
//!
//! - `Peer/Hello` between federation nodes names both sides correctly;
//! - a client certificate from another CA, no client certificate, and
//!   plaintext are all refused, both through gRPC and below it (the TLS
//!   alert a raw rustls client gets; the TLS alert a raw HTTP/2 preface
//!   gets), and the listener keeps serving its partners afterwards;
//! - each listener serves only its own API;
//! - health and reflection on both listeners: each reports and lists only
//!   its own service, in reflection v1 and v1alpha;
//! - a shutdown with open `Health/Watch` streams ends them and stops
//!   promptly.

use rustls::AlertDescription;
use samvirke_node::devnet::DevFederation;
use samvirke_node::peer::client::connect;
use samvirke_proto::v1::StatusRequest;
use samvirke_proto::v1::local_client::LocalClient;
use samvirke_proto::v1::peer_client::PeerClient;
use samvirke_tests::{
    BearerToken, RawTlsOutcome, TLS_ALERT_RECORD, client_tls, foreign_certificate, health_status,
    hello_over, hello_request, is_http2_settings, list_services, list_services_v1alpha,
    node_client_tls, plaintext_channel, raw_plaintext_exchange, raw_tls_exchange,
    rustls_client_config, tls_channel,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const CODES: [u32; 3] = [751, 630, 165];

/// The three nodes, members of one fellowship (only members learn who a
/// node is from `Hello`).
async fn federation(dir: &tempfile::TempDir) -> DevFederation {
    let fed = DevFederation::start(dir.path(), &CODES)
        .await
        .expect("start the development federation");
    fed.pin_fellowship("devnet")
        .expect("pin a roster of all three");
    fed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_over_mutual_tls_names_the_server_and_the_callers_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;

    for caller in &fed.nodes {
        for target in &fed.nodes {
            if caller.config.node.node_id == target.config.node.node_id {
                continue;
            }
            let caller_identity = &caller.running.identity;
            let mut client = connect(&target.running.peer_endpoint(), &caller_identity.tls)
                .await
                .expect("a federation node connects to its partner over mTLS");
            let answer = client
                .hello(hello_request(Some(caller_identity)))
                .await
                .expect("hello succeeds between federation nodes")
                .into_inner();

            assert_eq!(
                answer.node,
                Some(target.running.identity.to_proto()),
                "the answer names the node that was called"
            );
            assert_eq!(
                answer.caller_certificate_fingerprint,
                caller_identity.tls.fingerprint.to_string(),
                "the server saw the caller's certificate"
            );
            assert_ne!(
                answer.caller_certificate_fingerprint,
                target.running.identity.tls.fingerprint.to_string()
            );
            assert!(
                answer.server_time.is_some(),
                "hello carries the server time"
            );
        }
    }

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tls_with_a_federation_certificate_gets_an_http2_answer() {
    // The control for the raw-TLS refusal tests below: the same helper with
    // a certificate the federation trusts gets application data back.
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let tls = &fed.nodes[0].running.identity.tls;
    let config = rustls_client_config(
        fed.ca.certificate_pem(),
        Some((&tls.certificate_chain_pem, tls.private_key_pem())),
    );

    match raw_tls_exchange(fed.nodes[1].running.peer_addr, config).await {
        RawTlsOutcome::ApplicationData(bytes) => assert!(
            is_http2_settings(&bytes),
            "the server's first frame is SETTINGS: {bytes:?}"
        ),
        other => panic!("a federation certificate must be accepted, got {other:?}"),
    }

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let target = &fed.nodes[1].running;
    let foreign = foreign_certificate("Intruder Kommune");

    // gRPC: same trust root as a real node, only the client certificate's
    // issuer differs.
    let foreign_tls = client_tls(
        fed.ca.certificate_pem(),
        Some((&foreign.certificate_pem, &foreign.key_pem)),
    );
    let refused = hello_over(tls_channel(&target.peer_endpoint(), foreign_tls).await).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA must not get an answer: {refused:?}"
    );

    // Raw TLS: never application data.
    let config = rustls_client_config(
        fed.ca.certificate_pem(),
        Some((&foreign.certificate_pem, &foreign.key_pem)),
    );
    let outcome = raw_tls_exchange(target.peer_addr, config).await;
    assert!(
        outcome.is_refusal(),
        "the server must refuse a foreign certificate at the TLS layer: {outcome:?}"
    );
    // And it is the server refusing our certificate, not our client
    // refusing the server.
    assert_eq!(
        outcome.alert(),
        Some(AlertDescription::UnknownCA),
        "{outcome:?}"
    );

    // The listener survived the bad clients and still serves partners.
    let partner_tls = node_client_tls(&fed.nodes[0].running.identity.tls);
    let answer = hello_over(tls_channel(&target.peer_endpoint(), partner_tls).await)
        .await
        .expect("a federation node is still served after refusals");
    assert_eq!(answer.node, Some(target.identity.to_proto()));

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let target = &fed.nodes[2].running;

    // gRPC: trusts the server, presents nothing.
    let anonymous = client_tls(fed.ca.certificate_pem(), None);
    let refused = hello_over(tls_channel(&target.peer_endpoint(), anonymous).await).await;
    assert!(
        refused.is_err(),
        "a client without a certificate must not get an answer: {refused:?}"
    );

    // Raw TLS: never application data.
    let config = rustls_client_config(fed.ca.certificate_pem(), None);
    let outcome = raw_tls_exchange(target.peer_addr, config).await;
    assert!(
        outcome.is_refusal(),
        "the server must demand a client certificate at the TLS layer: {outcome:?}"
    );
    assert_eq!(
        outcome.alert(),
        Some(AlertDescription::CertificateRequired),
        "{outcome:?}"
    );

    let partner_tls = node_client_tls(&fed.nodes[0].running.identity.tls);
    let answer = hello_over(tls_channel(&target.peer_endpoint(), partner_tls).await)
        .await
        .expect("a federation node is still served after refusals");
    assert_eq!(answer.node, Some(target.identity.to_proto()));

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let target = &fed.nodes[0].running;

    let plaintext_endpoint = format!("http://{}", target.peer_addr);
    let refused = hello_over(plaintext_channel(&plaintext_endpoint).await).await;
    assert!(
        refused.is_err(),
        "plaintext must not reach the peer API: {refused:?}"
    );

    // Below gRPC: the peer listener answers an HTTP/2 preface with at most
    // a TLS alert, never with HTTP/2 (a handler refusing the call would
    // also make the gRPC call fail, so the call alone proves too little).
    // The plaintext local listener is the control: it does answer HTTP/2.
    let answer = raw_plaintext_exchange(target.peer_addr).await;
    if let Ok(bytes) = &answer {
        assert!(
            !is_http2_settings(bytes),
            "the peer listener spoke HTTP/2 in plaintext: {bytes:?}"
        );
        assert!(
            bytes.is_empty() || bytes[0] == TLS_ALERT_RECORD,
            "the peer listener answers plaintext with a TLS alert or nothing: {bytes:?}"
        );
    }
    let control = raw_plaintext_exchange(target.local_addr)
        .await
        .expect("the local listener answers plaintext HTTP/2");
    assert!(is_http2_settings(&control), "{control:?}");

    let partner_tls = node_client_tls(&fed.nodes[1].running.identity.tls);
    let answer = hello_over(tls_channel(&target.peer_endpoint(), partner_tls).await)
        .await
        .expect("a federation node is still served after a plaintext client");
    assert_eq!(answer.node, Some(target.identity.to_proto()));

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_serves_only_its_own_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let node = &fed.nodes[0];

    // The local API is not reachable on the peer listener, even for a
    // trusted partner holding a valid admin token.
    let peer_channel = tls_channel(
        &node.running.peer_endpoint(),
        node_client_tls(&fed.nodes[1].running.identity.tls),
    )
    .await
    .expect("mTLS channel to the peer listener");
    let status = LocalClient::with_interceptor(
        peer_channel,
        BearerToken::new(Some(node.admin_token.as_str())),
    )
    .status(StatusRequest {})
    .await
    .expect_err("the peer listener must not serve samvirke.v1.Local");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    // The peer API is not reachable on the local listener.
    let local_channel = plaintext_channel(&node.running.local_endpoint())
        .await
        .expect("plaintext channel to the local listener");
    let status = PeerClient::new(local_channel)
        .hello(hello_request(None))
        .await
        .expect_err("the local listener must not serve samvirke.v1.Peer");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_listener_health_reports_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let channel = tls_channel(
        &fed.nodes[0].running.peer_endpoint(),
        node_client_tls(&fed.nodes[1].running.identity.tls),
    )
    .await
    .expect("mTLS channel to the peer listener");

    for service in ["", "samvirke.v1.Peer"] {
        let status = health_status(channel.clone(), service)
            .await
            .unwrap_or_else(|e| panic!("health check of `{service}`: {e}"));
        assert_eq!(status, ServingStatus::Serving, "service `{service}`");
    }
    let unknown = health_status(channel.clone(), "samvirke.v1.NoSuchService")
        .await
        .expect_err("health does not invent services");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    // Nor does it report the other listener's API.
    let local = health_status(channel, "samvirke.v1.Local")
        .await
        .expect_err("the peer listener does not serve the local API");
    assert_eq!(local.code(), Code::NotFound, "{local:?}");

    // And the local listener the other way round.
    let local_channel = plaintext_channel(&fed.nodes[0].running.local_endpoint())
        .await
        .expect("plaintext channel to the local listener");
    for service in ["", "samvirke.v1.Local"] {
        let status = health_status(local_channel.clone(), service)
            .await
            .unwrap_or_else(|e| panic!("local health check of `{service}`: {e}"));
        assert_eq!(status, ServingStatus::Serving, "service `{service}`");
    }
    let peer = health_status(local_channel, "samvirke.v1.Peer")
        .await
        .expect_err("the local listener does not serve the peer API");
    assert_eq!(peer.code(), Code::NotFound, "{peer:?}");

    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_reflection_protocols_list_each_listeners_own_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let peer_channel = tls_channel(
        &fed.nodes[0].running.peer_endpoint(),
        node_client_tls(&fed.nodes[1].running.identity.tls),
    )
    .await
    .expect("mTLS channel to the peer listener");
    let local_channel = plaintext_channel(&fed.nodes[0].running.local_endpoint())
        .await
        .expect("plaintext channel to the local listener");
    for (channel, own, other) in [
        (peer_channel, "samvirke.v1.Peer", "samvirke.v1.Local"),
        (local_channel, "samvirke.v1.Local", "samvirke.v1.Peer"),
    ] {
        let v1 = list_services(channel.clone()).await;
        let v1alpha = list_services_v1alpha(channel).await;
        for services in [&v1, &v1alpha] {
            for name in [
                own,
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ] {
                assert!(services.iter().any(|s| s == name), "{name}: {services:?}");
            }
            assert!(!services.iter().any(|s| s == other), "{services:?}");
        }
    }
    fed.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_ends_open_health_watches_and_stops_promptly() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let local_channel = plaintext_channel(&fed.nodes[0].running.local_endpoint())
        .await
        .expect("plaintext channel to the local listener");
    let peer_channel = tls_channel(
        &fed.nodes[0].running.peer_endpoint(),
        node_client_tls(&fed.nodes[1].running.identity.tls),
    )
    .await
    .expect("mTLS channel to the peer listener");
    let mut watches = Vec::new();
    for (channel, service) in [
        (local_channel.clone(), ""),
        (local_channel, "samvirke.v1.Local"),
        (peer_channel, "samvirke.v1.Peer"),
    ] {
        let mut stream = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("Health/Watch opens")
            .into_inner();
        let first = stream
            .message()
            .await
            .expect("a first status")
            .expect("the watch is open");
        assert_eq!(first.status(), ServingStatus::Serving);
        watches.push(stream);
    }
    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(5), fed.shutdown())
        .await
        .expect("the nodes stop within 5 s with health watches open")
        .expect("shutdown");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Each watch heard NOT_SERVING (or was closed) and then ended.
    for mut stream in watches {
        let mut statuses = Vec::new();
        while let Ok(Some(message)) = stream.message().await {
            statuses.push(message.status());
        }
        assert!(
            statuses.iter().all(|s| *s == ServingStatus::NotServing),
            "{statuses:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_listener_reflection_lists_the_peer_service_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fed = federation(&dir).await;
    let channel = tls_channel(
        &fed.nodes[0].running.peer_endpoint(),
        node_client_tls(&fed.nodes[1].running.identity.tls),
    )
    .await
    .expect("mTLS channel to the peer listener");

    let services = list_services(channel).await;
    assert!(
        services.iter().any(|s| s == "samvirke.v1.Peer"),
        "{services:?}"
    );
    assert!(
        services.iter().any(|s| s == "grpc.health.v1.Health"),
        "{services:?}"
    );
    assert!(
        !services.iter().any(|s| s == "samvirke.v1.Local"),
        "the peer listener must not advertise the local API: {services:?}"
    );

    fed.shutdown().await.expect("shutdown");
}
