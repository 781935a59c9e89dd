//! The `runnel-ingest` binary: parses flags, loads config and runs the ingest service.

use anyhow::Context;
use clap::Parser;
use runnel_server_common::ServiceFlags;

/// runnel's ingest service.
///
/// Will accept events over gRPC and HTTP, validate them against their stream's schema, append them to the log and archive the log as Parquet history (issue 4). Not built yet: today it opens the log, ensures every declared stream's topic and waits for Ctrl-C.
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
