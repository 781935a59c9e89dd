//! `runnel archive`: the archiver on its own, outside the ingest service.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use runnel_config::Config;
use tracing::info;

use crate::client::{ClientArgs, flush_ingest_archiver};

/// Arguments of `runnel archive`.
#[derive(Debug, Args)]
pub(crate) struct ArchiveArgs {
    /// Archives up to the log's end as it is now, finishes the files there and exits,
    /// printing what it wrote. Without it, archives until Ctrl-C and serves the archiver's
    /// status on `archive.metrics-listen` (`GET /metrics`, `GET /status`). Only where no
    /// other archiver runs (the ingest service runs one): use --flush then.
    #[arg(long, conflicts_with = "flush")]
    once: bool,
    /// Asks the running ingest service's archiver (over gRPC, `FlushArchive`) to finish its
    /// open files once it has read the log's end as it is now, waits, and prints where each
    /// partition stands: after it, the history holds every event acknowledged before.
    #[arg(long)]
    flush: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs the archiver over every declared stream of `config`.
pub(crate) async fn run(args: ArchiveArgs, config: &Config) -> anyhow::Result<()> {
    if args.flush {
        return flush(config, &args.client).await;
    }
    // Installed before opening the log, so Ctrl-C during a slow open still stops cleanly.
    let shutdown = runnel_server_common::shutdown_on_signal().context("install signal handlers")?;
    let log = runnel_server_common::open_storage(config)
        .await
        .context("open storage")?;
    let url = config.object_store_url();
    let store = runnel_archive::open_object_store(&url, &config.storage.object_store_options)
        .context("open the object store")?;
    if args.once {
        let summary = runnel_archive::archive_until_caught_up(config, log, store)
            .await
            .context("archive")?;
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "archived {} rows into {} files ({} adopted after a crash, {} undecodable records \
             sent to dead-letter topics)",
            summary.rows, summary.files, summary.adopted, summary.undecodable
        )
        .context("write to stdout")?;
    } else {
        let address = &config.archive.metrics_listen;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listen on archive.metrics-listen ({address})"))?;
        let local_addr = listener
            .local_addr()
            .with_context(|| format!("read the address of {address}"))?;
        info!(address = %local_addr, "archiver status listening (GET /metrics, GET /status)");
        let status = runnel_archive::ArchiverStatus::process();
        let server = tokio::spawn(runnel_archive::status::serve(
            listener,
            Arc::clone(&status),
            shutdown.clone(),
        ));
        let archived =
            runnel_archive::run_archiver_with_status(config, log, store, status, shutdown.clone())
                .await
                .context("archive");
        shutdown.cancel();
        server
            .await
            .context("run the status endpoint")?
            .context("serve the status endpoint")?;
        archived?;
    }
    Ok(())
}

/// `runnel archive --flush`: the ingest service's archiver finishes its files now.
async fn flush(config: &Config, client: &ClientArgs) -> anyhow::Result<()> {
    let response = flush_ingest_archiver(config, client).await?;
    let mut stdout = std::io::stdout().lock();
    let mut pending = 0;
    for partition in &response.partitions {
        if partition.flushed {
            continue;
        }
        pending += 1;
        writeln!(
            stdout,
            "{} partition {}: archived until offset {}, not flushed: {}",
            partition.stream, partition.partition, partition.archived_until, partition.reason
        )
        .context("write to stdout")?;
    }
    writeln!(
        stdout,
        "flushed {} of {} partitions: the history holds every event they had when asked",
        response.partitions.len() - pending,
        response.partitions.len()
    )
    .context("write to stdout")?;
    if pending > 0 {
        anyhow::bail!("{pending} partitions did not flush (see above)");
    }
    Ok(())
}
