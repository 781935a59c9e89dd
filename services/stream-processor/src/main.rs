//! The `runnel-stream-processor` binary: parses flags, loads config and runs the stream-processor service.

use anyhow::Context;
use clap::Parser;
use runnel_server_common::ServiceFlags;

/// runnel's stream-processor service.
///
/// Will run the configured windowed SQL jobs on the live log, checkpoint them for exactly-once results and publish results to `<job>.results` (issues 3 and 5). Not built yet: today it opens the log, ensures every declared stream's topic and waits for Ctrl-C.
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
        runnel_server_common::start_service(runnel_stream_processor::SERVICE_NAME, &flags.service)?;
    runnel_stream_processor::run(config, shutdown)
        .await
        .context("run stream-processor service")
}
