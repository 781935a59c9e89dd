//! runnel's batch-reprocessor: backfills. It recomputes a job over the Parquet history into
//! a batch view (Lambda's batch layer, [`recompute`]) and replays it over the history and
//! then the live log with the live operator (Kappa).
//!
//! - `recompute`: the DataFusion batch plan over the history's files, split among workers,
//!   into a batch view.
//!   Its batch views (`views/<job>/<version>/`: Parquet files and a manifest with the view's
//!   horizon, replaced atomically) are defined in `runnel_jobs::view`, where serving reads
//!   them.
//! - `replay`: a job version run by the stream-processor's own tasks over the hybrid source
//!   until it has caught up with the live log, then made active (`runnel_jobs`).
//!
//! Each backfill first registers its job version in the job catalog (`runnel_jobs`), which
//! the running services read: a version defined only in the backfill's config is then
//! served, and run live once active, by services whose config does not declare it.
//!
//! The service itself has no standing work: [`run`] opens the log and waits for shutdown;
//! backfills run from the CLI (`runnel backfill`).
#![warn(missing_docs)]

pub mod recompute;
pub mod replay;

use std::sync::Arc;

use object_store::path::Path;
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

/// Everything a backfill can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The history could not be read.
    #[error(transparent)]
    Archive(Box<runnel_archive::ArchiveError>),
    /// An object-store operation failed.
    #[error("{operation} {path}: {source}")]
    Store {
        /// What was being done.
        operation: &'static str,
        /// The object.
        path: String,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A batch view's manifest, or another JSON object of the backfills, is unreadable.
    #[error("{path}: {message}")]
    ViewInvalid {
        /// The object.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing a Parquet file failed.
    #[error("parquet file {path}: {message}")]
    Parquet {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// An Arrow operation failed.
    #[error("arrow: {0}")]
    Arrow(String),
    /// DataFusion refused the history table or its query.
    #[error("datafusion: {0}")]
    DataFusion(String),
    /// The replay's stream-processor tasks failed.
    #[error(transparent)]
    StreamProcessor(Box<runnel_stream_processor::StreamProcessorError>),
    /// A log operation failed.
    #[error("log topic `{0}`: {1}")]
    Log(String, #[source] Box<LogError>),
    /// The backfill asked for is not built.
    #[error("{0}")]
    Unsupported(String),
    /// The job version could not be registered in the job catalog (`runnel_jobs`): it is
    /// registered with another definition, or its SQL cannot be read.
    #[error(transparent)]
    Catalog(Box<runnel_jobs::JobsError>),
    /// A recompute's range was refused before anything was read or written: it needs more
    /// chunks than `batch-reprocessor.max-recompute-chunks`, or its windows cannot be
    /// represented. The message names the range, the chunk count and the event times (with
    /// their files and offsets) that widened it.
    #[error("{0}")]
    RangeRefused(String),
    /// A recompute's new generation holds fewer windows or events than the one it would
    /// replace, and shrinking was not allowed (`RecomputeRequest::allow_shrink`). The
    /// previous generation is kept; the new one's files are deleted.
    #[error(
        "job `{job}` version {version}: the new generation {generation} holds {windows} \
         windows from {events} events over {range}, fewer than generation \
         {previous_generation} it would replace ({previous_windows} windows from \
         {previous_events} events over {previous_range}); it was not written and generation \
         {previous_generation} stays"
    )]
    WouldShrink {
        /// The job's name.
        job: String,
        /// The job's version.
        version: u32,
        /// The refused generation.
        generation: u64,
        /// Windows (result rows) the refused generation holds.
        windows: u64,
        /// Events the refused generation counted.
        events: u64,
        /// The refused generation's range, `[from, horizon)`.
        range: String,
        /// The generation that stays.
        previous_generation: u64,
        /// Windows the generation that stays holds.
        previous_windows: u64,
        /// Events the generation that stays counted.
        previous_events: u64,
        /// The range of the generation that stays.
        previous_range: String,
    },
    /// The job's engine failed.
    #[error("job `{job}`: {source}")]
    Engine {
        /// The job's id.
        job: String,
        /// The engine's error.
        #[source]
        source: runnel_engine::EngineError,
    },
}

/// Reads the JSON object at `path`; `None` if there is none.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn object_store::ObjectStore,
    path: &Path,
) -> Result<Option<T>, BatchError> {
    runnel_jobs::get_json(store, path)
        .await
        .map_err(BatchError::from)
}

/// Writes `value` as JSON at `path`, replacing what was there in one put.
pub(crate) async fn put_json<T: serde::Serialize>(
    store: &dyn object_store::ObjectStore,
    path: &Path,
    value: &T,
) -> Result<(), BatchError> {
    runnel_jobs::put_json(store, path, value)
        .await
        .map_err(BatchError::from)
}

/// Registers `job` in the job catalog (or checks that it is registered with the same
/// definition), so that running services whose config does not declare it know it.
pub(crate) async fn register_version(
    store: &dyn object_store::ObjectStore,
    job: &runnel_config::JobConfig,
) -> Result<(), BatchError> {
    let version = runnel_jobs::RegisteredVersion::of(job, runnel_time::now_millis())?;
    if runnel_jobs::register(store, &version).await? == runnel_jobs::Registration::Registered {
        tracing::info!(job = %job.id(), "registered the job version in the job catalog");
    }
    Ok(())
}

impl From<runnel_jobs::JobsError> for BatchError {
    fn from(error: runnel_jobs::JobsError) -> Self {
        match error {
            runnel_jobs::JobsError::Store {
                operation,
                path,
                source,
            } => BatchError::Store {
                operation,
                path,
                source,
            },
            runnel_jobs::JobsError::Invalid { path, message } => {
                BatchError::ViewInvalid { path, message }
            }
            other => BatchError::Catalog(Box::new(other)),
        }
    }
}

impl BatchError {
    pub(crate) fn store(operation: &'static str, path: &Path, source: object_store::Error) -> Self {
        Self::Store {
            operation,
            path: path.to_string(),
            source: Box::new(source),
        }
    }
}

/// Runs the batch-reprocessor service until `shutdown` is cancelled, on the log that `config` selects.
///
/// # Errors
///
/// [`BatchReprocessorError::OpenStorage`] if the log cannot be opened or a topic cannot be created.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), BatchReprocessorError> {
    let Some(log) = runnel_server_common::open_storage_waiting(&config, &shutdown)
        .await
        .map_err(BatchReprocessorError::OpenStorage)?
    else {
        return Ok(());
    };
    let result = run_with_log(config, Arc::clone(&log), shutdown).await;
    log.close().await;
    result
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
        "runs no standing work: backfills run from the CLI (`runnel backfill`)",
        &config,
        log,
        shutdown,
    )
    .instrument(info_span!("service", service = SERVICE_NAME))
    .await;
    Ok(())
}
