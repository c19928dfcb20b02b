//! Shared helpers for the Samvirke end-to-end tests in `tests/tests/`.
//!
//! Nothing here is a mock: the helpers start real nodes (real sled stores,
//! real keys, real mutual TLS on `127.0.0.1:0`) and talk to them the way a
//! partner node, a municipal application or a stock gRPC tool would:
//!
//! - [`local_client`]: a `samvirke.v1.Local` client that sends
//!   `authorization: Bearer <token>` on every call;
//! - [`node_client_tls`], [`client_tls`], [`tls_channel`]: gRPC channels
//!   over TLS, presenting a node's certificate, a foreign one or none;
//! - [`rustls_client_config`], [`raw_tls_exchange`],
//!   [`raw_plaintext_exchange`]: conversations below gRPC, to see exactly
//!   what the peer listener does with a client;
//! - [`start_node`]: one node with extra `[[local.tokens]]` entries;
//! - [`health_status`], [`list_services`]: the standard health and
//!   reflection services as grpcurl would call them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use samvirke_node::config::Config;
use samvirke_node::identity::TlsMaterial;
use samvirke_node::local::auth::generate_token;
use samvirke_node::peer::client::error_chain;
use samvirke_node::pki::{DevCa, IssuedCertificate, loopback_hosts};
use samvirke_node::provision::{CONFIG_FILE, NodeSpec, init_node_dir, install_dev_certificate};
use samvirke_node::server::{Listeners, Node, RunningNode};
use samvirke_proto::v1::local_client::LocalClient;
use samvirke_proto::v1::peer_client::PeerClient;
use samvirke_proto::v1::{HelloRequest, HelloResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Upper bound for any single network step in a test (connect, handshake,
/// call). Generous, so a slow CI machine does not fail a test; its only job
/// is to turn a hang into a failure.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---- Local API -------------------------------------------------------------

/// A tonic interceptor that adds `authorization: Bearer <token>` to every
/// call, or nothing when built without a token.
#[derive(Debug, Clone)]
pub struct BearerToken {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerToken {
    /// An interceptor sending `token`, or no header at all for `None`.
    pub fn new(token: Option<&str>) -> BearerToken {
        BearerToken {
            header: token.map(|token| {
                format!("Bearer {token}")
                    .parse()
                    .expect("a bearer token is printable ASCII")
            }),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A `samvirke.v1.Local` client whose calls carry a bearer token.
pub type TokenLocalClient = LocalClient<InterceptedService<Channel, BearerToken>>;

/// A plaintext channel to `endpoint` (`http://127.0.0.1:PORT`), connected.
pub async fn plaintext_channel(endpoint: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(IO_TIMEOUT)
        .timeout(IO_TIMEOUT)
        .connect()
        .await
}

/// A local API client for `endpoint` that sends `token` (or no
/// `authorization` header at all for `None`).
pub async fn local_client(endpoint: &str, token: Option<&str>) -> TokenLocalClient {
    let channel = plaintext_channel(endpoint)
        .await
        .expect("the local listener accepts plaintext connections");
    LocalClient::with_interceptor(channel, BearerToken::new(token))
}

// ---- TLS channels ----------------------------------------------------------

/// A client TLS config trusting `ca_pem`, presenting `identity` (certificate
/// chain PEM, key PEM) if given.
pub fn client_tls(ca_pem: &str, identity: Option<(&str, &str)>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    match identity {
        Some((certificate, key)) => config.identity(Identity::from_pem(certificate, key)),
        None => config,
    }
}

/// The client TLS config a node uses to call partners, exactly as
/// `samvirke_node::peer::client::connect` builds it.
pub fn node_client_tls(tls: &TlsMaterial) -> ClientTlsConfig {
    client_tls(
        &tls.trust_roots_pem,
        Some((&tls.certificate_chain_pem, tls.private_key_pem())),
    )
}

/// A connected gRPC channel to `endpoint` over `tls`.
pub async fn tls_channel(
    endpoint: &str,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(endpoint.to_string())?
        .tls_config(tls)?
        .connect_timeout(IO_TIMEOUT)
        .timeout(IO_TIMEOUT)
        .connect()
        .await
}

/// The hello request a node sends about itself.
pub fn hello_request(caller: Option<&samvirke_node::identity::NodeIdentity>) -> HelloRequest {
    HelloRequest {
        caller: caller.map(|identity| identity.to_proto()),
    }
}

/// Calls `Peer/Hello` on a channel that may not even have connected; any
/// failure (connect, handshake, call) comes back as its error chain.
pub async fn hello_over(
    channel: Result<Channel, tonic::transport::Error>,
) -> Result<HelloResponse, String> {
    let channel = channel.map_err(|e| format!("connect: {}", error_chain(&e)))?;
    let mut client = PeerClient::new(channel);
    match tokio::time::timeout(IO_TIMEOUT, client.hello(hello_request(None))).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("call: {status}")),
        Err(_) => Err("call: timed out".to_string()),
    }
}

// ---- Raw TLS ---------------------------------------------------------------

/// A rustls client config (ring provider) trusting `ca_pem`, presenting
/// `identity` (certificate chain PEM, key PEM) if given, offering ALPN `h2`.
pub fn rustls_client_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(certificate.expect("CA PEM parses"))
            .expect("CA certificate is a usable root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((certificate, key)) => {
            let chain = CertificateDer::pem_slice_iter(certificate.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("certificate PEM parses");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key PEM parses");
            builder
                .with_client_auth_cert(chain, key)
                .expect("certificate and key match")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Whether `bytes` start with an HTTP/2 SETTINGS frame header (3 bytes
/// length, type 0x04): what an HTTP/2 server sends first.
pub fn is_http2_settings(bytes: &[u8]) -> bool {
    bytes.len() >= 9 && bytes[3] == 0x04
}

/// TLS record content type of an alert.
pub const TLS_ALERT_RECORD: u8 = 0x15;

/// What the server did with a raw TLS client.
#[derive(Debug)]
pub enum RawTlsOutcome {
    /// The client-side handshake failed (the server aborted it).
    HandshakeFailed(std::io::Error),
    /// The handshake completed on the client side, but the first write or
    /// read failed: in TLS 1.3 that is how a rejected client certificate
    /// shows (the server's alert arrives after the client's Finished).
    RefusedAfterHandshake(std::io::Error),
    /// The server closed the connection without sending anything.
    Closed,
    /// The server sent application data: it accepted the client.
    ApplicationData(Vec<u8>),
}

impl RawTlsOutcome {
    /// Whether the server refused the client, in whichever way.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, RawTlsOutcome::ApplicationData(_))
    }

    /// The TLS alert the server sent, if the refusal came as one.
    pub fn alert(&self) -> Option<rustls::AlertDescription> {
        let error = match self {
            RawTlsOutcome::HandshakeFailed(e) | RawTlsOutcome::RefusedAfterHandshake(e) => e,
            RawTlsOutcome::Closed | RawTlsOutcome::ApplicationData(_) => return None,
        };
        match error.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        }
    }
}

/// The HTTP/2 client connection preface followed by an empty SETTINGS frame:
/// what a gRPC client sends first, and what makes an HTTP/2 server answer.
const HTTP2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Opens a TLS connection to `address` (verifying the server as
/// `127.0.0.1`), sends the HTTP/2 preface and reads the first answer.
/// Panics if the server neither answers nor refuses within [`IO_TIMEOUT`].
pub async fn raw_tls_exchange(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> RawTlsOutcome {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("the peer listener accepts TCP connections");
        let server_name = ServerName::IpAddress(address.ip().into());
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut tls = match connector.connect(server_name, tcp).await {
            Ok(tls) => tls,
            Err(e) => return RawTlsOutcome::HandshakeFailed(e),
        };
        if let Err(e) = tls.write_all(HTTP2_PREFACE_AND_SETTINGS).await {
            return RawTlsOutcome::RefusedAfterHandshake(e);
        }
        if let Err(e) = tls.flush().await {
            return RawTlsOutcome::RefusedAfterHandshake(e);
        }
        let mut buffer = vec![0u8; 1024];
        match tls.read(&mut buffer).await {
            Ok(0) => RawTlsOutcome::Closed,
            Ok(n) => {
                buffer.truncate(n);
                RawTlsOutcome::ApplicationData(buffer)
            }
            Err(e) => RawTlsOutcome::RefusedAfterHandshake(e),
        }
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .expect("the server must answer or refuse a TLS client promptly")
}

/// Sends the HTTP/2 preface in plaintext to `address` and returns the first
/// bytes that come back (empty if the server just closes). An HTTP/2 server
/// answers with a SETTINGS frame; a TLS server with at most a TLS alert.
pub async fn raw_plaintext_exchange(address: SocketAddr) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(address).await?;
        tcp.write_all(HTTP2_PREFACE_AND_SETTINGS).await?;
        let mut answer = vec![0u8; 1024];
        let n = tcp.read(&mut answer).await?;
        answer.truncate(n);
        Ok(answer)
    };
    tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .expect("the server must answer or close a plaintext client promptly")
}

/// A node certificate from a freshly made CA that no federation trusts,
/// valid for the loopback names (so only its issuer is wrong).
pub fn foreign_certificate(common_name: &str) -> IssuedCertificate {
    DevCa::generate("Some other CA")
        .expect("generate a foreign CA")
        .issue_node(common_name, &loopback_hosts())
        .expect("issue a foreign certificate")
}

// ---- Nodes -----------------------------------------------------------------

/// A node started by [`start_node`].
#[derive(Debug)]
pub struct StartedNode {
    /// The node directory.
    pub dir: PathBuf,
    /// The loaded config.
    pub config: Config,
    /// The admin token `init` made.
    pub admin_token: String,
    /// The secrets of the extra tokens, in the order they were asked for.
    pub extra_tokens: Vec<String>,
    /// The node, serving.
    pub running: RunningNode,
}

/// Provisions a node for `code` in `dir` with a certificate from `ca`, adds
/// one `[[local.tokens]]` entry per `(name, roles)` in `extra_tokens`, and
/// starts it on `127.0.0.1:0`.
pub async fn start_node(
    dir: &Path,
    ca: &DevCa,
    code: u32,
    extra_tokens: &[(&str, &[&str])],
) -> StartedNode {
    let name = samvirke_node::fixtures::municipality(code)
        .expect("a fixture municipality")
        .name;
    let spec = NodeSpec {
        municipality_code: code,
        municipality_name: name.clone(),
        peer_listen: "127.0.0.1:0".to_string(),
        local_listen: "127.0.0.1:0".to_string(),
        advertised_endpoint: None,
    };
    let made = init_node_dir(dir, &spec).expect("init node dir");
    install_dev_certificate(dir, &name, ca, &loopback_hosts()).expect("install certificate");

    let mut secrets = Vec::with_capacity(extra_tokens.len());
    let mut text = std::fs::read_to_string(dir.join(CONFIG_FILE)).expect("read node.toml");
    for (token_name, roles) in extra_tokens {
        let token = generate_token().expect("generate token");
        let roles = roles
            .iter()
            .map(|role| format!("\"{role}\""))
            .collect::<Vec<_>>()
            .join(", ");
        text.push_str(&format!(
            "\n[[local.tokens]]\nname = \"{token_name}\"\nsha256 = \"{}\"\nroles = [{roles}]\n",
            token.hash.to_hex()
        ));
        secrets.push(token.secret.to_string());
    }
    std::fs::write(dir.join(CONFIG_FILE), text).expect("write node.toml");

    let config = Config::load(&made.config_path).expect("the config loads");
    let node = Node::open(config.clone()).expect("open node");
    let listeners = Listeners::bind(&config).await.expect("bind listeners");
    StartedNode {
        dir: dir.to_path_buf(),
        config,
        admin_token: made.admin_token.to_string(),
        extra_tokens: secrets,
        running: node.spawn(listeners),
    }
}

/// The permission bits (`& 0o777`) of `path`.
pub fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("metadata of {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ---- Health and reflection -------------------------------------------------

/// `grpc.health.v1.Health/Check` for `service` ("" is the whole server).
pub async fn health_status(channel: Channel, service: &str) -> Result<ServingStatus, Status> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// The service names server reflection (`grpc.reflection.v1`) lists.
pub async fn list_services(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection stream opens")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection answers")
        .expect("reflection sends one response per request");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("expected a ListServices response, got {other:?}"),
    }
}
