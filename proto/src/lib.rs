//! The `samvirke.v1` protobuf package: messages and the `Peer` and `Local`
//! gRPC services, generated at build time from `proto/samvirke/v1/*.proto`.
#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all, missing_debug_implementations)]

pub mod v1 {
    tonic::include_proto!("samvirke.v1");

    /// Encoded `FileDescriptorSet` of the whole package, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("samvirke_descriptor");

    /// Fully qualified name of the peer service, as reflection lists it.
    pub const PEER_SERVICE_NAME: &str = "samvirke.v1.Peer";
    /// Fully qualified name of the local service, as reflection lists it.
    pub const LOCAL_SERVICE_NAME: &str = "samvirke.v1.Local";
}
