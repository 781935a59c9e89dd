//! Compiles `proto/runnel/{common,ingest,serving}/v1/*.proto` into gRPC servers and clients,
//! with protox (no `protoc` needed), once for every crate; and writes each service's encoded
//! descriptor set (its file and the files it imports) for its reflection service.

use std::path::PathBuf;

use prost::Message;

const FILES: [&str; 3] = [
    "runnel/common/v1/value.proto",
    "runnel/ingest/v1/ingest.proto",
    "runnel/serving/v1/serving.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    for file in FILES {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for (service, file) in [("ingest", FILES[1]), ("serving", FILES[2])] {
        let descriptors = protox::compile([file], [&proto_root])?;
        std::fs::write(
            out_dir.join(format!("{service}_descriptor.bin")),
            descriptors.encode_to_vec(),
        )?;
    }
    tonic_prost_build::configure()
        // Events stay `Bytes`, sliced from the request without a copy per event.
        .bytes(".runnel.ingest.v1.JsonEvents.events")
        .compile_fds(protox::compile(FILES, [&proto_root])?)?;
    Ok(())
}
