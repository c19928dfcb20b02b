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
//!   reflection services as grpcurl would call them;
//! - [`GovernanceFixture`]: a development federation on a [`ManualClock`]
//!   with a fellowship secretariat key, building signed rosters and
//!   agreements the way the CLI does, importing them through each node's
//!   local API and asking providers `Peer/CheckAccess` over mutual TLS;
//!   with [`flip_positions`], [`assert_denied`] and [`eventually`].

pub mod node_process;

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

use ed25519_dalek::SigningKey;
use samvirke_node::clock::{Clock, ManualClock, SharedClock};
use samvirke_node::devnet::{DevFederation, DevNode, DevStore};
use samvirke_node::governance::document::SEPARATOR;
use samvirke_node::governance::files::IdentityCard;
use samvirke_node::governance::registry::operation_to_proto;
use samvirke_node::governance::{
    Agreement, AgreementBody, Consumers, DecisionRule, LegalBasis, Member, Operation, Roster,
    RosterBody, Scope,
};
use samvirke_node::identity::{generate_signing_key, write_private_file};
use samvirke_node::peer::client::connect;
use samvirke_proto::v1::{
    CheckAccessRequest, CheckAccessResponse, ImportAgreementRequest, ImportAgreementResponse,
    ImportRosterRequest, ImportRosterResponse, ListGovernanceRequest, ListGovernanceResponse,
    SignedDocumentBytes,
};
use time::OffsetDateTime;
use time::macros::{date, datetime};
use tonic::Code;

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
/// starts it on `127.0.0.1:0` (with the HTTP API on).
pub async fn start_node(
    dir: &Path,
    ca: &DevCa,
    code: u32,
    extra_tokens: &[(&str, &[&str])],
) -> StartedNode {
    start_node_with(dir, ca, code, extra_tokens, "").await
}

/// Like [`start_node`], with `extra_config` (TOML tables such as
/// `[[ingest.http]]`) appended to the node's config file.
pub async fn start_node_with(
    dir: &Path,
    ca: &DevCa,
    code: u32,
    extra_tokens: &[(&str, &[&str])],
    extra_config: &str,
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
    // The HTTP API for analysts' tools, on a port of its own.
    text.push_str("\n[http]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    text.push_str(extra_config);
    // The store SAMVIRKE_DEV_STORE chooses, like development federations'.
    text.push_str(
        &DevStore::from_env()
            .and_then(|store| store.config_section(&format!("node_{code}")))
            .expect("the node's store"),
    );
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

/// Starts the node whose directory is `dir` again (after its
/// [`RunningNode::shutdown`]), with the config file as it is, on new ports.
pub async fn restart_node(dir: &Path) -> RunningNode {
    let config = Config::load(&dir.join(CONFIG_FILE)).expect("the config loads");
    let node = Node::open(config.clone()).expect("open node");
    let listeners = Listeners::bind(&config).await.expect("bind listeners");
    node.spawn(listeners)
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

/// The service names the older reflection protocol
/// (`grpc.reflection.v1alpha`, what grpcio's client speaks) lists.
pub async fn list_services_v1alpha(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1alpha reflection stream opens")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("v1alpha reflection answers")
        .expect("v1alpha reflection sends one response per request");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("expected a ListServices response, got {other:?}"),
    }
}

// ---- Governance ------------------------------------------------------------

/// The fellowship the governance fixtures build documents for.
pub const FELLOWSHIP: &str = "digit";

/// The dataset [`GovernanceFixture::terms`] covers.
pub const DATASET: &str = "greve-luftkvalitet";

/// A development federation whose nodes share one [`ManualClock`], and a
/// fellowship secretariat key to sign rosters with. Documents are built
/// with the library the `samvirke` CLI uses (identity cards, drafts,
/// signatures) and reach the nodes only through their real local API.
#[derive(Debug)]
pub struct GovernanceFixture {
    /// Where the nodes live; removed when the fixture is dropped.
    pub dir: tempfile::TempDir,
    pub fed: DevFederation,
    /// "Now" for every node of the federation.
    pub clock: Arc<ManualClock>,
    /// The secretariat's signing key (not any node's).
    pub secretariat: SigningKey,
}

impl GovernanceFixture {
    /// Starts one node per municipality code, all reading `now` from one
    /// manual clock.
    pub async fn start(codes: &[u32], now: OffsetDateTime) -> GovernanceFixture {
        let store = DevStore::from_env().expect("SAMVIRKE_DEV_STORE");
        GovernanceFixture::start_on(codes, now, store).await
    }

    /// [`GovernanceFixture::start`] with the nodes' data in `store`.
    pub async fn start_on(
        codes: &[u32],
        now: OffsetDateTime,
        store: DevStore,
    ) -> GovernanceFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(now));
        let shared: SharedClock = clock.clone();
        let fed = DevFederation::start_with_store(dir.path(), codes, Some(shared), store)
            .await
            .expect("start the development federation");
        GovernanceFixture {
            dir,
            fed,
            clock,
            secretariat: generate_signing_key().expect("secretariat key"),
        }
    }

    /// Moves "now" for every node.
    pub fn set_now(&self, now: OffsetDateTime) {
        self.clock.set(now);
    }

    /// The node of municipality `code`.
    pub fn node(&self, code: u32) -> &DevNode {
        self.fed
            .nodes
            .iter()
            .find(|n| n.running.identity.municipality_code == code)
            .unwrap_or_else(|| panic!("no node for municipality {code} in this federation"))
    }

    /// The document-signing key of the node of `code`.
    pub fn key(&self, code: u32) -> &SigningKey {
        self.node(code).running.identity.signing_key()
    }

    /// The roster entry for the node of `code`, from its identity card
    /// (what `samvirke identity show` prints), joined on 2016-01-01.
    pub fn member(&self, code: u32) -> Member {
        let node = self.node(code);
        IdentityCard::of_node(&node.running.identity, &node.running.peer_endpoint())
            .to_member(date!(2016 - 01 - 01))
            .expect("an identity card with an endpoint makes a member")
    }

    /// The roster entries of the nodes of `codes`.
    pub fn members(&self, codes: &[u32]) -> Vec<Member> {
        codes.iter().map(|code| self.member(*code)).collect()
    }

    /// Serial 1 of the fellowship's roster, issued now, unsigned.
    pub fn first_roster(&self, rule: DecisionRule, members: Vec<Member>) -> RosterBody {
        RosterBody::first(
            FELLOWSHIP,
            "DIGIT - Digitaliseringsforeningen (Midtsjaelland)",
            self.secretariat.verifying_key(),
            rule,
            self.clock.now(),
            members,
        )
    }

    /// The draft of the serial after `current`, issued now, changed by `edit`.
    pub fn next_roster(&self, current: &Roster, edit: impl FnOnce(&mut RosterBody)) -> RosterBody {
        let mut body = current.next_draft(self.clock.now());
        edit(&mut body);
        body
    }

    /// `body` signed by each of `signers`, in order.
    pub fn sign_roster(&self, body: &RosterBody, signers: &[&SigningKey]) -> Roster {
        let mut roster = body.to_draft().expect("the roster body renders");
        for key in signers {
            roster.sign(key).expect("sign the roster");
        }
        roster
    }

    /// Serial 1 with `rule` and the members `codes`, signed by the
    /// secretariat (a valid trust anchor).
    pub fn anchor(&self, rule: DecisionRule, codes: &[u32]) -> Roster {
        self.sign_roster(
            &self.first_roster(rule, self.members(codes)),
            &[&self.secretariat],
        )
    }

    /// Agreement terms: `provider` shares dataset [`DATASET`] with
    /// `consumers` for catalog and read, from 2024-01-01 until 2026-01-01
    /// (UTC). Tests change what they are about (excluded fields must name
    /// fields of datasets the provider publishes).
    pub fn terms(&self, provider: u32, consumers: Consumers) -> AgreementBody {
        AgreementBody {
            id: AgreementBody::new_id(),
            fellowship: FELLOWSHIP.to_string(),
            provider,
            consumers,
            scope: Scope {
                datasets: vec![DATASET.to_string()],
                kinds: Vec::new(),
                keywords: Vec::new(),
            },
            operations: vec![Operation::Catalog, Operation::Read],
            min_group_size: None,
            purpose: "Shared air quality monitoring".to_string(),
            legal_basis: LegalBasis {
                code: "GDPR art. 6(1)(e)".to_string(),
                text: "Task carried out in the public interest".to_string(),
            },
            excluded_fields: Vec::new(),
            valid_from: datetime!(2024-01-01 00:00 UTC),
            valid_until: datetime!(2026-01-01 00:00 UTC),
            aggregate: Default::default(),
        }
    }

    /// `terms` signed by each of `signers`, in order.
    pub fn sign_agreement(&self, terms: &AgreementBody, signers: &[&SigningKey]) -> Agreement {
        let mut agreement = terms.to_draft().expect("the agreement terms render");
        for key in signers {
            agreement.sign(key).expect("sign the agreement");
        }
        agreement
    }

    /// `terms` signed by the nodes of `codes`, in order.
    pub fn agreement(&self, terms: &AgreementBody, codes: &[u32]) -> Agreement {
        let keys: Vec<&SigningKey> = codes.iter().map(|code| self.key(*code)).collect();
        self.sign_agreement(terms, &keys)
    }

    /// A local API client for the node of `code`, with its admin token.
    pub async fn admin(&self, code: u32) -> TokenLocalClient {
        let node = self.node(code);
        local_client(
            &node.running.local_endpoint(),
            Some(node.admin_token.as_str()),
        )
        .await
    }

    /// `Local/ImportRoster` of `file` at the node of `code`.
    pub async fn import_roster(
        &self,
        code: u32,
        file: &[u8],
        trust_anchor: bool,
    ) -> Result<ImportRosterResponse, Status> {
        self.admin(code)
            .await
            .import_roster(ImportRosterRequest {
                document: Some(SignedDocumentBytes {
                    content: file.to_vec(),
                }),
                trust_anchor,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Pins `roster` as the trust anchor on every node of the federation.
    pub async fn import_everywhere(&self, roster: &Roster) {
        for node in &self.fed.nodes {
            let code = node.running.identity.municipality_code;
            self.import_roster(code, &roster.to_bytes(), true)
                .await
                .unwrap_or_else(|status| panic!("node {code} refused the roster: {status:?}"));
        }
    }

    /// `Local/ImportAgreement` of `file` at the node of `code`.
    pub async fn import_agreement(
        &self,
        code: u32,
        file: &[u8],
    ) -> Result<ImportAgreementResponse, Status> {
        self.admin(code)
            .await
            .import_agreement(ImportAgreementRequest {
                document: Some(SignedDocumentBytes {
                    content: file.to_vec(),
                }),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `Local/ListGovernance` at the node of `code`, every page of it.
    pub async fn list(&self, code: u32) -> ListGovernanceResponse {
        self.list_pages(code, 0).await.0
    }

    /// `Local/ListGovernance` at the node of `code` in pages of
    /// `page_size` (0: the node's default), followed to the end: all of
    /// it, and each page as it came. Panics if a token repeats (the
    /// listing would never end).
    pub async fn list_pages(
        &self,
        code: u32,
        page_size: u32,
    ) -> (ListGovernanceResponse, Vec<ListGovernanceResponse>) {
        let mut admin = self.admin(code).await;
        let mut all = ListGovernanceResponse::default();
        let mut pages = Vec::new();
        let mut tokens = std::collections::HashSet::new();
        let mut token = String::new();
        loop {
            let page = admin
                .list_governance(ListGovernanceRequest {
                    page_size,
                    page_token: token.clone(),
                })
                .await
                .expect("ListGovernance with the admin token")
                .into_inner();
            all.rosters.extend(page.rosters.iter().cloned());
            all.agreements.extend(page.agreements.iter().cloned());
            all.quarantined.extend(page.quarantined.iter().cloned());
            let next = page.next_page_token.clone();
            pages.push(page);
            if next.is_empty() {
                return (all, pages);
            }
            assert!(tokens.insert(next.clone()), "page token {next} came twice");
            token = next;
        }
    }

    /// The node of `caller` asks the node of `provider`, over mutual TLS
    /// with its own certificate and claiming its own code, whether it may
    /// do `operation` on `dataset` under `agreement`.
    pub async fn check(
        &self,
        caller: u32,
        provider: u32,
        agreement: &Agreement,
        operation: Operation,
        dataset: &str,
    ) -> Result<CheckAccessResponse, Status> {
        let tls = self.node(caller).running.identity.tls.clone();
        self.check_as(
            &tls,
            provider,
            CheckAccessRequest {
                agreement_id: agreement.id().to_string(),
                operation: operation_to_proto(operation) as i32,
                dataset_id: dataset.to_string(),
                claimed_member_code: caller,
            },
        )
        .await
    }

    /// Sends `request` to the provider `provider`'s peer API presenting `tls`.
    pub async fn check_as(
        &self,
        tls: &TlsMaterial,
        provider: u32,
        request: CheckAccessRequest,
    ) -> Result<CheckAccessResponse, Status> {
        let endpoint = self.node(provider).running.peer_endpoint();
        let call = async {
            let mut client = connect(&endpoint, tls)
                .await
                .unwrap_or_else(|e| panic!("mutual TLS to {endpoint}: {e}"));
            client
                .check_access(request)
                .await
                .map(tonic::Response::into_inner)
        };
        tokio::time::timeout(IO_TIMEOUT, call)
            .await
            .expect("CheckAccess answers promptly")
    }

    /// A second certificate for the node of `code`, from the federation's
    /// CA (what a renewal gives an operator), as TLS material a client can
    /// present. The node itself keeps serving with its first one.
    pub fn renewed_certificate(&self, code: u32) -> TlsMaterial {
        let node = self.node(code);
        let dir = self.dir.path().join(format!("renewed-{code}"));
        std::fs::create_dir_all(&dir).expect("create the renewal directory");
        let (certificate, key) = (dir.join("node.crt"), dir.join("node.key"));
        let issued = self
            .fed
            .ca
            .issue_node(&node.running.identity.municipality_name, &loopback_hosts())
            .expect("issue a second node certificate");
        write_private_file(&key, issued.key_pem.as_bytes()).expect("write the key (0600)");
        std::fs::write(&certificate, &issued.certificate_pem).expect("write the certificate");
        TlsMaterial::load(&certificate, &key, &node.config.peer.trust_roots)
            .expect("load the renewed TLS material")
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        self.fed.shutdown().await.expect("shutdown");
    }
}

/// Asserts `result` is `PERMISSION_DENIED` and its message contains every
/// one of `parts`; returns the message.
pub fn assert_denied<T: std::fmt::Debug>(result: Result<T, Status>, parts: &[&str]) -> String {
    assert_status(result, &[Code::PermissionDenied], parts)
}

/// Asserts `result` failed with one of `codes` and a message containing
/// every one of `parts`; returns the message.
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    codes: &[Code],
    parts: &[&str],
) -> String {
    let status = result.expect_err("the call should have been refused");
    assert!(
        codes.contains(&status.code()),
        "expected one of {codes:?}, got {:?}: {}",
        status.code(),
        status.message()
    );
    for part in parts {
        assert!(
            status.message().contains(part),
            "the message should contain `{part}`: {}",
            status.message()
        );
    }
    status.message().to_string()
}

/// Polls `probe` every 50 ms until it returns `Some`, for at most 5 s;
/// panics naming `what` if it never does. The polling is the readiness
/// signal (no sleeps elsewhere).
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 5 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Byte positions to damage in a signed document file: the first bytes,
/// points spread over the body, the separator line, the prefix, key,
/// signature and newline of every signature line, and the last byte.
pub fn flip_positions(file: &[u8]) -> Vec<usize> {
    let len = file.len();
    let separator = SEPARATOR.as_bytes();
    let at = file
        .windows(separator.len())
        .position(|w| w == separator)
        .expect("a signed file has a separator line");
    let mut positions = std::collections::BTreeSet::new();
    positions.extend([0, 1, at / 4, at / 2, 3 * at / 4, at - 1]);
    positions.extend([
        at,
        at + 4,
        at + separator.len() / 2,
        at + separator.len() - 1,
    ]);
    let mut line = at + separator.len();
    while line < len {
        // `sig ed25519:` (12), key (64 hex), space, signature (128 hex), `\n`.
        positions.extend([line, line + 4, line + 12, line + 43, line + 76, line + 77]);
        positions.extend([line + 140, line + 205]);
        line += 206;
    }
    positions.extend((1..10).map(|k| k * len / 10));
    positions.insert(len - 1);
    positions.into_iter().filter(|p| *p < len).collect()
}

/// `file` with the byte at `position` xor 0x01.
pub fn flipped(file: &[u8], position: usize) -> Vec<u8> {
    let mut damaged = file.to_vec();
    damaged[position] ^= 0x01;
    damaged
}

// ---- Data plane ------------------------------------------------------------

/// Everything one streamed `QueryReadings` answer carried, local or peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The readings of every chunk, in stream order.
    pub readings: Vec<samvirke_proto::v1::Reading>,
    /// The buckets of every chunk, in stream order.
    pub buckets: Vec<samvirke_proto::v1::Bucket>,
    /// `suppressed_buckets` of the last chunk (the only one that may carry it).
    pub suppressed: u32,
    /// How many chunks came.
    pub chunks: usize,
    /// The terms an aggregate-only answer states in its first chunk.
    pub terms: Option<samvirke_proto::v1::AnswerTerms>,
    /// The provider's receipt (peer answers: the last chunk, not counted).
    pub receipt: Option<samvirke_proto::v1::Receipt>,
}

/// Drains a `QueryReadings` answer: the call's status, or every chunk until
/// the stream ends or fails. Panics if a chunk other than the last carries
/// `suppressed_buckets`, or if the answer takes longer than 30 s.
pub async fn collect_answer(
    call: impl std::future::Future<
        Output = Result<
            tonic::Response<tonic::Streaming<samvirke_proto::v1::ReadingChunk>>,
            Status,
        >,
    >,
) -> Result<Answer, Status> {
    let drain = async {
        let mut stream = call.await?.into_inner();
        let mut answer = Answer::default();
        while let Some(chunk) = stream.message().await? {
            assert!(answer.receipt.is_none(), "nothing follows the receipt");
            if chunk.receipt.is_some() {
                answer.receipt = chunk.receipt;
                continue;
            }
            assert_eq!(
                answer.suppressed, 0,
                "only the last chunk may carry suppressed_buckets"
            );
            if chunk.terms.is_some() {
                assert_eq!(answer.chunks, 0, "only the first chunk carries the terms");
                answer.terms = chunk.terms;
            }
            answer.chunks += 1;
            answer.readings.extend(chunk.readings);
            answer.buckets.extend(chunk.buckets);
            answer.suppressed = chunk.suppressed_buckets;
        }
        Ok(answer)
    };
    tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("a QueryReadings answer streams within 30 s")
}

/// `Local/QueryReadings` of `query`, drained.
pub async fn local_query(
    client: &mut TokenLocalClient,
    query: samvirke_proto::v1::ReadingQuery,
) -> Result<Answer, Status> {
    collect_answer(client.query_readings(query)).await
}

/// `Peer/QueryReadings` of `query` under `agreement_id`, signed and
/// drained.
pub async fn peer_query(
    client: &mut SignedPeer,
    agreement_id: &str,
    query: samvirke_proto::v1::ReadingQuery,
) -> Result<Answer, Status> {
    collect_answer(client.query_readings(samvirke_proto::v1::PeerReadingQuery {
        agreement_id: agreement_id.to_string(),
        query: Some(query),
    }))
    .await
}

/// A partner's peer client that signs its data requests the way a node
/// does (`samvirke_node::proof::request`), with the node's key, code and
/// clock. Unsigned calls (Hello, SyncGovernance, CheckAccess) go through
/// [`SignedPeer::client`] or `Deref`.
#[derive(Debug, Clone)]
pub struct SignedPeer {
    pub client: PeerClient<Channel>,
    pub key: SigningKey,
    pub code: u32,
    /// The node called (requests are signed for it).
    pub provider: u32,
    pub clock: SharedClock,
}

impl std::ops::Deref for SignedPeer {
    type Target = PeerClient<Channel>;
    fn deref(&self) -> &PeerClient<Channel> {
        &self.client
    }
}

impl std::ops::DerefMut for SignedPeer {
    fn deref_mut(&mut self) -> &mut PeerClient<Channel> {
        &mut self.client
    }
}

impl SignedPeer {
    /// `message` to `method` under `agreement`, signed now.
    pub fn sign<T: prost::Message>(&self, method: &str, agreement: &str, message: T) -> Request<T> {
        let digest = samvirke_node::proof::message_digest(&message);
        let mut request = Request::new(message);
        samvirke_node::proof::request::sign_now(
            request.metadata_mut(),
            &self.key,
            samvirke_node::proof::request::RequestFacts {
                caller: self.code,
                provider: self.provider,
                method,
                digest: &digest,
                agreement: uuid::Uuid::parse_str(agreement).unwrap_or_default(),
                at: self.clock.now(),
            },
        )
        .expect("sign the request");
        request
    }

    pub async fn catalog(
        &mut self,
        message: samvirke_proto::v1::PeerCatalogRequest,
    ) -> Result<tonic::Response<samvirke_proto::v1::PeerCatalogResponse>, Status> {
        let request = self.sign(
            samvirke_node::peer::CATALOG,
            &message.agreement_id.clone(),
            message,
        );
        self.client.catalog(request).await
    }

    pub async fn query_readings(
        &mut self,
        message: samvirke_proto::v1::PeerReadingQuery,
    ) -> Result<tonic::Response<tonic::Streaming<samvirke_proto::v1::ReadingChunk>>, Status> {
        let request = self.sign(
            samvirke_node::peer::QUERY_READINGS,
            &message.agreement_id.clone(),
            message,
        );
        self.client.query_readings(request).await
    }

    pub async fn list_pilots(
        &mut self,
        message: samvirke_proto::v1::PeerPilotQuery,
    ) -> Result<tonic::Response<samvirke_proto::v1::ListPeerPilotsResponse>, Status> {
        let request = self.sign(
            samvirke_node::peer::LIST_PILOTS,
            &message.agreement_id.clone(),
            message,
        );
        self.client.list_pilots(request).await
    }

    pub async fn list_procurements(
        &mut self,
        message: samvirke_proto::v1::PeerProcurementQuery,
    ) -> Result<tonic::Response<samvirke_proto::v1::ListPeerProcurementsResponse>, Status> {
        let request = self.sign(
            samvirke_node::peer::LIST_PROCUREMENTS,
            &message.agreement_id.clone(),
            message,
        );
        self.client.list_procurements(request).await
    }
}

/// `readings` of `dataset_id` as ingest batches of at most `size` readings.
pub fn ingest_batches(
    dataset_id: &str,
    readings: &[samvirke_node::data::Reading],
    size: usize,
) -> Vec<samvirke_proto::v1::IngestReadingsRequest> {
    readings
        .chunks(size.max(1))
        .map(|chunk| samvirke_proto::v1::IngestReadingsRequest {
            dataset_id: dataset_id.to_string(),
            readings: chunk
                .iter()
                .cloned()
                .map(samvirke_node::wire::reading_to_proto)
                .collect(),
        })
        .collect()
}

/// `Local/IngestReadings` streaming `batches`, one message each.
pub async fn ingest(
    client: &mut TokenLocalClient,
    batches: Vec<samvirke_proto::v1::IngestReadingsRequest>,
) -> Result<samvirke_proto::v1::IngestReadingsResponse, Status> {
    let call = client.ingest_readings(tokio_stream::iter(batches));
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("IngestReadings answers within 30 s")
        .map(tonic::Response::into_inner)
}

/// `Local/CountReadings` of `dataset_id`.
pub async fn count_readings(client: &mut TokenLocalClient, dataset_id: &str) -> u64 {
    client
        .count_readings(samvirke_proto::v1::CountReadingsRequest {
            dataset_id: dataset_id.to_string(),
        })
        .await
        .unwrap_or_else(|status| panic!("CountReadings of `{dataset_id}`: {status:?}"))
        .into_inner()
        .count
}

impl GovernanceFixture {
    /// A peer API client from the node of `caller` (presenting its own
    /// certificate, as `samvirke_node::peer::client::connect` does) to the
    /// node of `provider`.
    pub async fn peer(&self, caller: u32, provider: u32) -> SignedPeer {
        let endpoint = self.node(provider).running.peer_endpoint();
        self.peer_at(caller, provider, &endpoint).await
    }

    /// [`GovernanceFixture::peer`] to `provider`'s node serving at
    /// `endpoint` (another process of the same node, say).
    pub async fn peer_at(&self, caller: u32, provider: u32, endpoint: &str) -> SignedPeer {
        let tls = self.node(caller).running.identity.tls.clone();
        let endpoint = endpoint.to_string();
        let client = tokio::time::timeout(IO_TIMEOUT, connect(&endpoint, &tls))
            .await
            .expect("mutual TLS connects promptly")
            .unwrap_or_else(|e| panic!("mutual TLS from {caller} to {endpoint}: {e}"));
        SignedPeer {
            client,
            key: self.key(caller).clone(),
            code: caller,
            provider,
            clock: self.clock.clone(),
        }
    }
}

// ---- Asking the fellowship -------------------------------------------------

/// A node's local API as a test (or the CLI) reaches it: endpoint and
/// admin token.
#[derive(Debug, Clone)]
pub struct LocalApi {
    pub endpoint: String,
    pub token: String,
}

impl LocalApi {
    /// The local API of an in-process node.
    pub fn of(node: &DevNode) -> LocalApi {
        LocalApi {
            endpoint: node.running.local_endpoint(),
            token: node.admin_token.to_string(),
        }
    }

    /// A client sending the admin token.
    pub async fn client(&self) -> TokenLocalClient {
        local_client(&self.endpoint, Some(&self.token)).await
    }

    /// `Local/ImportRoster` of `roster`, pinned as the trust anchor.
    pub async fn pin_roster(&self, roster: &Roster) {
        self.client()
            .await
            .import_roster(ImportRosterRequest {
                document: Some(SignedDocumentBytes {
                    content: roster.to_bytes(),
                }),
                trust_anchor: true,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{} refused the roster: {s:?}", self.endpoint));
    }

    /// `Local/ImportAgreement` of `agreement`; its status here afterwards.
    pub async fn import_agreement(&self, agreement: &Agreement) -> String {
        self.client()
            .await
            .import_agreement(ImportAgreementRequest {
                document: Some(SignedDocumentBytes {
                    content: agreement.to_bytes(),
                }),
            })
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "{} refused agreement {}: {s:?}",
                    self.endpoint,
                    agreement.id()
                )
            })
            .into_inner()
            .agreement
            .expect("ImportAgreement answers with the agreement")
            .status
    }

    /// Publishes `dataset` and ingests `readings` into it (batches of 500),
    /// asserting every reading was stored as new.
    pub async fn publish_with_readings(
        &self,
        dataset: &samvirke_proto::v1::Dataset,
        readings: &[samvirke_node::data::Reading],
    ) {
        let mut client = self.client().await;
        client
            .publish_dataset(dataset.clone())
            .await
            .unwrap_or_else(|s| panic!("publish `{}`: {s:?}", dataset.id));
        let totals = ingest(&mut client, ingest_batches(&dataset.id, readings, 500))
            .await
            .unwrap_or_else(|s| panic!("ingest into `{}`: {s:?}", dataset.id));
        assert_eq!(
            (totals.readings, totals.inserted, totals.replaced),
            (readings.len() as u64, readings.len() as u64, 0),
            "every reading of `{}` is stored once",
            dataset.id
        );
    }
}

/// Readings of known values for an air-quality dataset of municipality
/// `code`: `sensors` sensors every 10 minutes for `steps` steps from
/// `from`. Values differ by municipality, sensor and time; one reading in
/// five lacks `no2`; sensors with an even index have a location near the
/// town hall, the others none.
pub fn air_quality_readings(
    code: u32,
    sensors: u32,
    steps: u32,
    from: OffsetDateTime,
) -> Vec<samvirke_node::data::Reading> {
    let town = samvirke_node::fixtures::municipality(code).expect("a fixture municipality");
    let mut readings = Vec::with_capacity((sensors * steps) as usize);
    for step in 0..steps {
        for sensor in 0..sensors {
            let wobble = f64::from((step * 7 + sensor * 3 + code) % 11) * 0.37;
            let pm2_5 = 3.0 + f64::from(code % 50) * 0.25 + f64::from(sensor) * 1.5 + wobble;
            let mut values = std::collections::BTreeMap::from([
                ("pm2_5".to_string(), pm2_5),
                ("pm10".to_string(), pm2_5 * 1.8 + f64::from(step) * 0.05),
            ]);
            if (step + sensor) % 5 != 0 {
                values.insert(
                    "no2".to_string(),
                    10.0 + f64::from((code + step * 13 + sensor * 5) % 17) * 0.61,
                );
            }
            readings.push(samvirke_node::data::Reading {
                sensor_id: format!("{code}-air-{sensor:02}"),
                at: from + time::Duration::minutes(10 * i64::from(step)),
                values,
                location: (sensor % 2 == 0).then(|| {
                    (
                        town.lat + 0.002 * f64::from(sensor),
                        town.lon - 0.003 * f64::from(sensor),
                    )
                }),
            });
        }
    }
    readings
}

/// Everything one `Local/Ask` answer carried, with its order checked:
/// rows, then at most one combination, then statuses, then the summary.
#[derive(Debug, Default, Clone)]
pub struct AskAnswer {
    pub rows: Vec<samvirke_proto::v1::AskRows>,
    pub combined: Option<samvirke_proto::v1::CombinedBuckets>,
    pub statuses: Vec<samvirke_proto::v1::PartnerStatus>,
    pub done: Option<samvirke_proto::v1::AskSummary>,
}

impl AskAnswer {
    /// Records one event, asserting it comes where the protocol puts it.
    pub fn take(&mut self, event: samvirke_proto::v1::AskEvent) {
        use samvirke_proto::v1::ask_event::Event;
        assert!(
            self.done.is_none(),
            "nothing follows the summary: {event:?}"
        );
        match event.event.expect("every event carries one") {
            Event::Rows(rows) => {
                assert!(
                    self.combined.is_none() && self.statuses.is_empty(),
                    "rows come before the combination and the statuses"
                );
                self.rows.push(rows);
            }
            Event::Combined(combined) => {
                assert!(
                    self.combined.is_none() && self.statuses.is_empty(),
                    "one combination, before the statuses"
                );
                self.combined = Some(combined);
            }
            Event::Partner(status) => self.statuses.push(status),
            Event::Done(done) => self.done = Some(done),
        }
    }

    /// The status of `code`'s dataset `dataset`; panics unless exactly one.
    pub fn status(&self, code: u32, dataset: &str) -> &samvirke_proto::v1::PartnerStatus {
        let found: Vec<_> = self
            .statuses
            .iter()
            .filter(|s| s.municipality == code && s.dataset_id == dataset)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one status for {code} `{dataset}`: {:#?}",
            self.statuses
        );
        found[0]
    }
}

/// `Local/Ask` of `request`, drained to its summary (within 30 s).
pub async fn ask_all(
    client: &mut TokenLocalClient,
    request: samvirke_proto::v1::AskRequest,
) -> Result<AskAnswer, Status> {
    let drain = async {
        let mut stream = client.ask(request).await?.into_inner();
        let mut answer = AskAnswer::default();
        while let Some(event) = stream.message().await? {
            answer.take(event);
        }
        assert!(answer.done.is_some(), "an answer ends with its summary");
        Ok(answer)
    };
    tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("an Ask answer ends within 30 s")
}

/// One reading value in long form: municipality, dataset, sensor, time
/// (seconds, nanos), measure and the value's bits, so rows compare exactly.
pub type ReadingRow = (u32, String, String, (i64, i32), String, u64);

/// The long-form rows of `readings` of dataset `dataset` of `code`.
pub fn reading_rows(
    code: u32,
    dataset: &str,
    readings: &[samvirke_proto::v1::Reading],
) -> Vec<ReadingRow> {
    let mut rows = Vec::new();
    for reading in readings {
        let at = reading.at.expect("a reading has a time");
        for (measure, value) in &reading.values {
            rows.push((
                code,
                dataset.to_string(),
                reading.sensor_id.clone(),
                (at.seconds, at.nanos),
                measure.clone(),
                value.to_bits(),
            ));
        }
    }
    rows
}

/// The binary `name` of this workspace, next to `sibling` (a binary this
/// test's package has, from `env!("CARGO_BIN_EXE_...")`); built first when
/// the test runs alone and it is not there yet.
pub fn workspace_binary(sibling: &Path, name: &str) -> PathBuf {
    let path = sibling.with_file_name(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = std::process::Command::new(cargo)
            .args(["build", "--bin", name])
            .status()
            .unwrap_or_else(|e| panic!("run cargo build --bin {name}: {e}"));
        assert!(status.success(), "building {name} failed");
    }
    assert!(path.exists(), "{} after building", path.display());
    path
}
