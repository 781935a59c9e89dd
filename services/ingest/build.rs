//! Compiles `proto/runnel/ingest/v1/ingest.proto` (at the repository root) into the gRPC
//! server and client, with protox: no `protoc` needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = "runnel/ingest/v1/ingest.proto";
    println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    let descriptors = protox::compile([file], [&proto_root])?;
    tonic_prost_build::configure()
        // Events stay `Bytes`, sliced from the request without a copy per event.
        .bytes(".runnel.ingest.v1.JsonEvents.events")
        .compile_fds(descriptors)?;
    Ok(())
}
