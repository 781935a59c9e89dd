//! runnel's stream-processor service: runs the configured windowed SQL jobs on the live log, checkpoints them for exactly-once results and publishes results (issues 3 and 5).
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
pub const SERVICE_NAME: &str = "stream-processor";

/// Everything the stream-processor service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StreamProcessorError {
    /// The log could not be opened, or a stream's topic could not be created.
    #[error("open storage: {0}")]
    OpenStorage(#[source] LogError),
}

/// Runs the stream-processor service until `shutdown` is cancelled, on the log that `config` selects.
///
/// # Errors
///
/// [`StreamProcessorError::OpenStorage`] if the log cannot be opened or a topic cannot be created.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamProcessorError> {
    let log = runnel_server_common::open_storage(&config)
        .await
        .map_err(StreamProcessorError::OpenStorage)?;
    run_with_log(config, log, shutdown).await
}

/// Runs the stream-processor service on a log that is already open, until `shutdown` is cancelled.
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
) -> Result<(), StreamProcessorError> {
    runnel_server_common::hold_until_shutdown(
        SERVICE_NAME,
        "window engine and job runner not built yet (issues 3 and 5)",
        &config,
        log,
        shutdown,
    )
    .instrument(info_span!("service", service = SERVICE_NAME))
    .await;
    Ok(())
}
