//! What each listener tells stock gRPC tools about itself: the standard
//! health service (`grpc.health.v1`) and server reflection, in both the
//! current (`grpc.reflection.v1`) and the older (`grpc.reflection.v1alpha`)
//! protocol, which many clients (grpcio's reflection client among them)
//! still speak only.
//!
//! Each listener has its own health reporter naming only the service it
//! serves, so the peer listener never reports the local API (or the other
//! way round). At shutdown [`ListenerHealth::stopping`] reports
//! NOT_SERVING and then ends every `Health/Watch` stream: a watch never
//! ends on its own, and an open one would otherwise hold the graceful
//! drain (and the final flush) until the service manager kills the node.

use samvirke_proto::v1::FILE_DESCRIPTOR_SET;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// The health service's own name.
pub const HEALTH_SERVICE_NAME: &str = "grpc.health.v1.Health";
/// The reflection services' names.
pub const REFLECTION_SERVICE_NAME: &str = "grpc.reflection.v1.ServerReflection";
pub const REFLECTION_V1ALPHA_SERVICE_NAME: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Why reflection could not be set up (a descriptor set that does not
/// decode: a build problem, not a runtime one).
#[derive(Debug, thiserror::Error)]
#[error("reflection setup failed: {0}")]
pub struct ReflectionError(String);

/// The health of one listener's service.
#[derive(Debug, Clone)]
pub struct ListenerHealth {
    reporter: HealthReporter,
    service: &'static str,
}

impl ListenerHealth {
    /// A reporter for `service` (and the server as a whole, `""`), and
    /// the health service to serve next to it.
    pub fn new(service: &'static str) -> (ListenerHealth, HealthServer<impl Health>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        (ListenerHealth { reporter, service }, server)
    }

    /// Reports the listener as serving.
    pub async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Reports NOT_SERVING, then ends every watch (dropping a status's
    /// sender ends the streams that watch it), so that open watches do
    /// not hold the shutdown.
    pub async fn stopping(&self) {
        self.set(ServingStatus::NotServing).await;
        let mut reporter = self.reporter.clone();
        for service in ["", self.service] {
            reporter.clear_service_status(service).await;
        }
    }

    async fn set(&self, status: ServingStatus) {
        for service in ["", self.service] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// Reflection (v1 and v1alpha) listing `service` plus health and
/// reflection: each listener advertises only what it serves.
pub fn reflection(
    service: &'static str,
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ReflectionError,
> {
    // Both reflection services list both reflection protocols, so each
    // must also describe both: by default a builder registers only its own
    // protocol's file, and a client resolving every listed service (the
    // stock Python client does) got NOT_FOUND for the other one.
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .with_service_name(service)
            .with_service_name(HEALTH_SERVICE_NAME)
            .with_service_name(REFLECTION_SERVICE_NAME)
            .with_service_name(REFLECTION_V1ALPHA_SERVICE_NAME)
    };
    let v1 = builder()
        .build_v1()
        .map_err(|e| ReflectionError(e.to_string()))?;
    let v1alpha = builder()
        .build_v1alpha()
        .map_err(|e| ReflectionError(e.to_string()))?;
    Ok((v1, v1alpha))
}
