//! The Samvirke node: everything a municipality's node does, as a library.
//!
//! The `samvirke-node` binary only parses its command line, loads the
//! config and calls [`server::Node::run`]; tests and the `samvirke demo`
//! start the same code in-process on listeners bound to `127.0.0.1:0`.
//!
//! One module per concern, so a change has one obvious home:
//! - [`config`]: load and validate the TOML config, with errors that name the key;
//! - [`identity`]: the node's Ed25519 signing key, TLS key and certificate, fingerprints;
//! - [`governance`]: rosters and agreements (parse, verify signatures) and the one
//!   per-request authorisation decision;
//! - [`pki`]: development PKI (a CA and node certificates) for tests and demos;
//! - [`provision`]: create a node directory (keys, config, first admin token);
//! - [`store`]: the storage trait and its sled implementation;
//! - [`data`]: the dataset catalog and sensor readings (ingest, queries,
//!   aggregation) over the store;
//! - [`ingest`]: the one ingest pipeline every door (gRPC, OS2iot HTTP push,
//!   MQTT) stores readings through: validate, one atomic durable write, ack;
//! - [`peer`]: the mutual-TLS peer service;
//! - [`partners`]: calling partners: pooled channels pinned to the roster's
//!   certificate fingerprints, signed requests;
//! - [`proof`]: signed requests, replay protection and signed receipts;
//! - [`audit`]: the hash-chained audit log, checkpoints, offline verification;
//! - [`local`]: the bearer-token local service for the municipality's own users;
//! - [`http`]: the same local API as JSON, CSV and GeoJSON over HTTP for
//!   analysts' tools (optional `[http]` listener);
//! - [`admin`]: the admin listener: Prometheus metrics, health and
//!   readiness, and the read-only status page;
//! - [`transport`]: accepting connections within limits, TLS handshakes,
//!   idle timeouts, and concurrent calls per caller;
//! - [`server`]: wiring both listeners, health, reflection and shutdown;
//! - [`devnet`]: several nodes on loopback with fresh dev PKI (demo, tests);
//! - [`dev_postgres`]: a throwaway PostgreSQL server for development nodes,
//!   tests and benchmarks;
//! - [`plane`]: the data services' shared state, what an agreement
//!   discloses, and streaming answers with bounded memory and send
//!   timeouts (shared by both services);
//! - [`federate`]: asking partners one question: routing by agreements,
//!   fan-out with deadlines, combined aggregates, receipts kept;
//! - [`wire`]: protobuf <-> domain conversions for the data plane;
//! - [`telemetry`]: logging setup;
//! - [`clock`]: the injected source of "now";
//! - [`fixtures`]: facts about Danish municipalities for demos and tests;
//! - [`error`]: the one mapping from module errors to gRPC statuses.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod backup;
pub mod clock;
pub mod config;
pub mod data;
pub mod dev_postgres;
pub mod devnet;
pub mod error;
pub mod federate;
pub mod fixtures;
pub mod governance;
pub mod health;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod local;
pub mod partners;
pub mod peer;
pub mod pki;
pub mod plane;
pub mod proof;
pub mod provision;
pub mod server;
pub mod store;
pub mod store_move;
pub mod telemetry;
pub mod transport;
pub mod wire;

/// Version of this build, reported by `Hello` and `Status`.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
