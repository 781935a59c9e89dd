//! The `runnel-serving` binary: parses flags, loads config and runs the serving service.

use anyhow::Context;
use clap::Parser;
use runnel_server_common::ServiceFlags;

/// runnel's serving service.
///
/// Will answer gRPC queries on job results, merging the batch view and the speed view, with live subscriptions (issue 7). Not built yet: today it opens the log, ensures every declared stream's topic and waits for Ctrl-C.
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
        runnel_server_common::start_service(runnel_serving::SERVICE_NAME, &flags.service)?;
    runnel_serving::run(config, shutdown)
        .await
        .context("run serving service")
}
