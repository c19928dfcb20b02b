//! Compiles the `samvirke.v1` protobuf package with `protox` (a pure-Rust
//! protobuf compiler), so building needs no system `protoc`, and writes the
//! encoded file descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "samvirke/v1/common.proto",
    "samvirke/v1/governance.proto",
    "samvirke/v1/data.proto",
    "samvirke/v1/federate.proto",
    "samvirke/v1/audit.proto",
    "samvirke/v1/peer.proto",
    "samvirke/v1/local.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=samvirke");
    let descriptors = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("samvirke_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Ordered maps: a message encodes to the same bytes on every node,
        // so digests of requests and answers (signed requests, receipts)
        // can be recomputed by the other side.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
