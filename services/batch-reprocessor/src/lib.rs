//! runnel's batch-reprocessor service: replays jobs over the history and the live log (Kappa) and recomputes them over the Parquet history into batch views (Lambda) (issue 6).
//!
//! Not built yet: [`run`] opens the log (running its recovery) with every declared stream's
//! topic, says at WARN what is missing, and waits for shutdown.
#![warn(missing_docs)]

use std::sync::Arc;

use runnel_config::Config;
use runnel_log::{Log, LogError};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

/// The service's name in logs.
pub const SERVICE_NAME: &str = "batch-reprocessor";

/// Everything the batch-reprocessor service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BatchReprocessorError {
    /// The log could not be opened, or a stream's topic could not be created.
    #[error("open storage: {0}")]
    OpenStorage(#[source] LogError),
}

/// Runs the batch-reprocessor service until `shutdown` is cancelled, on the log that `config` selects.
///
/// # Errors
///
/// [`BatchReprocessorError::OpenStorage`] if the log cannot be opened or a topic cannot be created.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), BatchReprocessorError> {
    let log = runnel_server_common::open_storage(&config)
        .await
        .map_err(BatchReprocessorError::OpenStorage)?;
    run_with_log(config, log, shutdown).await
}

/// Runs the batch-reprocessor service on a log that is already open, until `shutdown` is cancelled.
///
/// This is how `runnel all` runs every service in one process over one shared log; the
/// caller has ensured the declared streams' topics (`runnel_server_common::open_storage`).
///
/// # Errors
///
/// None yet; the signature leaves room for the service's own failures.
pub async fn run_with_log(
    config: Config,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) -> Result<(), BatchReprocessorError> {
    runnel_server_common::hold_until_shutdown(
        SERVICE_NAME,
        "replay and recompute not built yet (issue 6)",
        &config,
        log,
        shutdown,
    )
    .instrument(info_span!("service", service = SERVICE_NAME))
    .await;
    Ok(())
}
