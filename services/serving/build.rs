//! Compiles `proto/runnel/serving/v1/serving.proto` (at the repository root) into the gRPC
//! server and client with protox (no `protoc` needed), and writes its encoded descriptor set
//! for the reflection service.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = "runnel/serving/v1/serving.proto";
    println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    let descriptors = protox::compile([file], [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("serving_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
