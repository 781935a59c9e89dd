//! The `runnel-batch-reprocessor` binary: parses flags, loads config and runs the batch-reprocessor service.

use anyhow::Context;
use clap::Parser;
use runnel_server_common::ServiceFlags;

/// runnel's batch-reprocessor service.
///
/// Backfills (replay over the history and the live log, recompute over the Parquet history into batch views) run from `runnel backfill`; the service has no standing work: it opens the log, ensures every declared stream's topic and waits for Ctrl-C.
#[derive(Debug, Parser)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    service: ServiceFlags,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let (config, shutdown) = runnel_server_common::start_service(
        runnel_batch_reprocessor::SERVICE_NAME,
        &flags.service,
    )?;
    runnel_batch_reprocessor::run(config, shutdown)
        .await
        .context("run batch-reprocessor service")
}
