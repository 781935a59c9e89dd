//! The `runnel-ingest` binary: parses flags, loads config and runs the ingest service.

use anyhow::Context;
use clap::Parser;
use runnel_server_common::ServiceFlags;

/// runnel's ingest service.
///
/// Accepts events over gRPC (`runnel.ingest.v1.Ingest`) and HTTP (`POST /v1/streams/{stream}/events`) on `ingest.listen`, validates them against their stream's schema and appends them to the log; rejected events go to `<stream>.dead-letter`. Runs until Ctrl-C.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    service: ServiceFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let (config, shutdown) =
        runnel_server_common::start_service(runnel_ingest::SERVICE_NAME, &flags.service)?;
    runnel_ingest::run(config, shutdown)
        .await
        .context("run ingest service")
}
