//! runnel's stream-processor service: the configured windowed SQL jobs, live on the log.
//!
//! Each job runs as one task per partition of its source stream (`task`): a window
//! operator fed by that partition alone, as Kafka Streams runs a task per partition, so the
//! task's output depends only on its partition's records. Results go to `<job>.results` as
//! upserts and late events to `<job>.late` (`output`); each task checkpoints its operator
//! state and source offset to the object store (`checkpoint`) and resumes from there after
//! a crash, re-emitting the same records.
//!
//! Each task reports its progress (watermark, offsets and lag, counts, last checkpoint) to a
//! shared [`StatusRegistry`] (`status`), which an HTTP endpoint on
//! `stream-processor.metrics-listen` serves as Prometheus metrics (`GET /metrics`) and JSON
//! (`GET /status`) (`metrics`), and which the serving layer can read through
//! [`run_with_status`].
//!
//! A job that does not group by its stream's key reads through `<job>.repartition`: a
//! router per source partition (`router`) copies each event there keyed by its group, and
//! the window tasks read that topic, one operator input per source partition.
//!
//! Several instances share a job's partitions (`assignment`): each joins the job's group
//! over `<job>.members` and runs the tasks of the partitions it is assigned; a partition
//! that moves is checkpointed by its old owner before the new one restores it.
//!
//! Besides its config's `[[jobs]]`, the service runs each job's active version when only the
//! job catalog (`runnel_jobs`, registered by a backfill) has it, reading the catalog every
//! `stream-processor.job-poll-interval`: a replay in another process that makes a new version
//! active is followed with no restart, and the previous registered version is stopped.
#![warn(missing_docs)]

mod assignment;
mod join;
mod metrics;
mod router;
mod status;
mod task;
mod window_join;

use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_config::Config;
use runnel_jobs::checkpoint::JobFailure;
use runnel_jobs::{Job, late_topic, members_topic, results_topic};
use runnel_log::{Log, LogError};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

pub use status::{
    CheckpointStatus, JobState, JobStatus, PartitionStatus, RoutedPartition, StatusRegistry,
};

/// The service's name in logs.
pub const SERVICE_NAME: &str = "stream-processor";

/// Everything the stream-processor service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StreamProcessorError {
    /// The log could not be opened, or a stream's topic could not be created.
    #[error("open storage: {0}")]
    OpenStorage(#[source] LogError),
    /// The object store could not be opened.
    #[error("open the object store: {0}")]
    OpenStore(#[source] runnel_archive::ArchiveError),
    /// A job's configuration or SQL is not valid.
    #[error("job `{job}`: {message}")]
    Job {
        /// The job.
        job: String,
        /// What is wrong.
        message: String,
    },
    /// The window engine failed.
    #[error("job `{job}`: {source}")]
    Engine {
        /// The job.
        job: String,
        /// The engine's error.
        #[source]
        source: runnel_engine::EngineError,
    },
    /// A log operation failed.
    #[error("log topic `{topic}`: {source}")]
    Log {
        /// The topic.
        topic: String,
        /// The log's error.
        #[source]
        source: Box<LogError>,
    },
    /// What the stages share failed: a checkpoint (unreadable or inconsistent), a job's
    /// definition, a result record, the job catalog.
    #[error(transparent)]
    Jobs(#[from] runnel_jobs::JobsError),
    /// The stream's history (or the log behind it) could not be read.
    #[error("read the stream's history and log: {0}")]
    History(#[source] runnel_archive::ArchiveError),
    /// Log records could not be decoded at all.
    #[error(transparent)]
    Decode(#[from] runnel_events::decode::DecodeError),
    /// Building or encoding an Arrow batch failed.
    #[error("encode output: {0}")]
    Encode(#[source] arrow::error::ArrowError),
    /// The metrics endpoint's address could not be bound.
    #[error("listen on {address} (stream-processor.metrics-listen): {source}")]
    MetricsListen {
        /// `stream-processor.metrics-listen`.
        address: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics endpoint failed while serving.
    #[error("serve metrics: {0}")]
    MetricsServe(#[source] std::io::Error),
    /// A task stopped on an error that is not about one event (the log, the object store,
    /// the operator's state): the job is restarted from its checkpoints, within limits.
    #[error("job `{job}` partition {partition} at source offset {offset}: {source}")]
    TaskFailed {
        /// The job.
        job: String,
        /// The source partition (or repartition-topic partition) of the task.
        partition: u32,
        /// The next offset the task was to process.
        offset: u64,
        /// What failed.
        #[source]
        source: Box<StreamProcessorError>,
    },
    /// A task panicked.
    #[error("task of job `{job}` partition {partition}: {message}")]
    Task {
        /// The job.
        job: String,
        /// The partition.
        partition: u32,
        /// What happened.
        message: String,
    },
}

impl StreamProcessorError {
    pub(crate) fn log(topic: &str, source: LogError) -> Self {
        Self::Log {
            topic: topic.to_string(),
            source: Box::new(source),
        }
    }
}

/// How a failed job is restarted (`stream-processor.max-job-restarts`,
/// `stream-processor.job-restart-backoff`).
#[derive(Debug, Clone, Copy)]
struct RestartPolicy {
    max_restarts: u32,
    backoff: Duration,
    /// The shortest wait: with static membership on Kafka, the session timeout. A static
    /// member that rejoins sooner gets its old assignment back without a rebalance; if a
    /// cooperative rebalance was under way (its failed job never finished a revocation),
    /// the partitions that were moving would stay with nobody. Once the session has expired
    /// the coordinator has dropped the member, and the rejoin is a fresh join.
    min_delay: Duration,
}

impl RestartPolicy {
    /// The backoff doubles per restart in a row up to this many times the first.
    const MAX_BACKOFF_FACTOR: u32 = 64;

    fn of(config: &Config) -> RestartPolicy {
        let kafka = &config.storage.log.kafka;
        let static_member = config.storage.log.backend == runnel_config::LogBackend::Kafka
            && kafka.group_instance_id.is_some();
        RestartPolicy {
            max_restarts: config.stream_processor.max_job_restarts,
            backoff: config.stream_processor.job_restart_backoff,
            min_delay: if static_member {
                kafka.session_timeout
            } else {
                Duration::ZERO
            },
        }
    }

    /// The wait before the restart that follows `restarts_in_row` restarts.
    fn delay(&self, restarts_in_row: u32) -> Duration {
        let factor = 1_u32
            .checked_shl(restarts_in_row)
            .unwrap_or(u32::MAX)
            .min(Self::MAX_BACKOFF_FACTOR);
        self.backoff.saturating_mul(factor).max(self.min_delay)
    }

    /// A job that ran this long before failing counts its restarts afresh.
    fn healthy_after(&self) -> Duration {
        self.backoff.saturating_mul(Self::MAX_BACKOFF_FACTOR)
    }
}

/// Runs `job` until `shutdown`, restarting it from its checkpoints after a failure, at most
/// `policy.max_restarts` times in a row; then reports it failed (status, metrics, and
/// `_failed.json` beside its checkpoints for `ListJobs`) and returns, leaving the other jobs
/// and the service running. An event's own failure never comes here: the operator sends
/// that event to the late topic.
async fn supervise_job(
    job: Arc<Job>,
    partitions: u32,
    context: task::TaskContext,
    policy: RestartPolicy,
    shutdown: CancellationToken,
) {
    let stream = job.stream.name().to_string();
    let (mut restarts_in_row, mut restarts) = (0_u32, 0_u32);
    loop {
        context.status.job_running(&job.name, &stream);
        if let Err(error) = runnel_jobs::checkpoint::clear_job_failure(
            context.store.as_ref(),
            &context.checkpoint_prefix,
            &job.name,
        )
        .await
        {
            warn!(%error, "could not remove the record of the job's earlier failure");
        }
        let started = Instant::now();
        let error = match assignment::run_job(
            Arc::clone(&job),
            partitions,
            context.clone(),
            shutdown.clone(),
        )
        .await
        {
            Ok(()) => return,
            Err(error) => error,
        };
        let message = error.to_string();
        if shutdown.is_cancelled() {
            error!(error = %message, "job failed while stopping");
            return;
        }
        if started.elapsed() >= policy.healthy_after() {
            restarts_in_row = 0;
        }
        if restarts_in_row >= policy.max_restarts {
            error!(
                error = %message,
                restarts,
                "job failed again after stream-processor.max-job-restarts restarts in a row; it stays stopped until the service restarts, the other jobs go on"
            );
            let failure = JobFailure {
                error: message.clone(),
                restarts,
                failed_at_ms: runnel_time::now_millis(),
            };
            if let Err(error) = runnel_jobs::checkpoint::record_job_failure(
                context.store.as_ref(),
                &context.checkpoint_prefix,
                &job.name,
                &failure,
            )
            .await
            {
                warn!(%error, "could not record the job's failure for other processes");
            }
            // Last, so that whoever sees the job failed here finds the record too.
            context
                .status
                .job_failed(&job.name, &stream, message, JobState::Failed, restarts);
            return;
        }
        let delay = policy.delay(restarts_in_row);
        restarts_in_row += 1;
        restarts += 1;
        warn!(
            error = %message,
            retry_in = ?delay,
            restart = restarts_in_row,
            max_restarts = policy.max_restarts,
            "job failed; restarting it from its checkpoints"
        );
        context
            .status
            .job_failed(&job.name, &stream, message, JobState::Restarting, restarts);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Ensures `job`'s topics and starts its supervisor in `jobs`, stopped by `shutdown`.
async fn start_job(
    job: Arc<Job>,
    config: &Config,
    context: &task::TaskContext,
    jobs: &mut tokio::task::JoinSet<()>,
    shutdown: CancellationToken,
) -> Result<(), StreamProcessorError> {
    let log = &context.log;
    let stream = job.stream.name().to_string();
    let partitions = log
        .partition_count(&stream)
        .await
        .map_err(|source| StreamProcessorError::log(&stream, source))?;
    let mut topics = vec![
        results_topic(&job.name),
        late_topic(&job.name),
        members_topic(&job.name),
    ];
    if job.repartition {
        topics.push(runnel_jobs::repartition_topic(&job.name));
    }
    for topic in topics {
        log.ensure_topic(&topic, partitions)
            .await
            .map_err(|source| StreamProcessorError::log(&topic, source))?;
    }
    info!(
        job = %job.name,
        stream,
        partitions,
        repartition = job.repartition,
        "starting job"
    );
    let span = info_span!("job", job = %job.name);
    jobs.spawn(
        supervise_job(
            job,
            partitions,
            context.clone(),
            RestartPolicy::of(config),
            shutdown,
        )
        .instrument(span),
    );
    Ok(())
}

/// The job versions this service runs because the job catalog makes them active, though
/// its config does not declare them (`stream-processor.run-registered-versions`).
#[derive(Default)]
struct RegisteredJobs {
    /// Running ones, by version id, with the token that stops each.
    running: std::collections::BTreeMap<String, CancellationToken>,
    /// What was last reported about a version that cannot run or a conflict, so that each
    /// is logged once.
    reported: std::collections::BTreeSet<String>,
}

impl RegisteredJobs {
    /// Reads the job catalog: starts each job's active version when only the catalog has
    /// it, and stops the ones that are no longer active (they checkpoint as they stop).
    async fn follow(
        &mut self,
        config: &Config,
        context: &task::TaskContext,
        jobs: &mut tokio::task::JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        let store = context.store.as_ref();
        let catalog = match runnel_jobs::Catalog::load(store, config).await {
            Ok(catalog) => catalog,
            Err(error) => {
                warn!(%error, "could not read the job catalog; trying again");
                return;
            }
        };
        for conflict in &catalog.conflicts {
            let message = conflict.to_string();
            if self.reported.insert(message.clone()) {
                error!(error = %message, "a declared job version differs from its registration; running the declared one");
            }
        }
        let mut wanted = std::collections::BTreeMap::new();
        for name in catalog.job_names() {
            let active = match catalog.active_version(store, &name).await {
                Ok(Some(active)) => active,
                Ok(None) => continue,
                Err(error) => {
                    warn!(job = %name, %error, "could not read the job's active version; trying again");
                    return;
                }
            };
            if let Some(version) = catalog.versions.get(&(name.clone(), active))
                && !version.declared
            {
                wanted.insert(version.job.id(), version.job.clone());
            }
        }
        let stale: Vec<String> = self
            .running
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in stale {
            if let Some(stop) = self.running.remove(&id) {
                info!(job = %id, "stopping a registered job version that is no longer active");
                stop.cancel();
            }
        }
        for (id, job_config) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            let job = match Job::compile(config, &job_config) {
                Ok(job) => Arc::new(job),
                Err(error) => {
                    if self.reported.insert(format!("{id}: {error}")) {
                        error!(job = %id, %error, "the job catalog's active version does not compile here (is its stream declared in this config?); not running it");
                    }
                    continue;
                }
            };
            let stop = shutdown.child_token();
            match start_job(job, config, context, jobs, stop.clone()).await {
                Ok(()) => {
                    info!(job = %id, "running a job version registered in the job catalog, now active");
                    self.running.insert(id, stop);
                }
                Err(error) => {
                    warn!(job = %id, %error, "could not start the registered job version; trying again")
                }
            }
        }
    }
}

/// Runs the stream-processor service until `shutdown` is cancelled, on the log that
/// `config` selects.
///
/// # Errors
///
/// [`StreamProcessorError::OpenStorage`], and the errors of [`run_with_log`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), StreamProcessorError> {
    let Some(log) = runnel_server_common::open_storage_waiting(&config, &shutdown)
        .await
        .map_err(StreamProcessorError::OpenStorage)?
    else {
        return Ok(());
    };
    let result = run_with_log(config, Arc::clone(&log), shutdown).await;
    log.close().await;
    result
}

/// Runs every configured job, and the job catalog's active versions (see the crate docs), on
/// a log that is already open, until `shutdown` is cancelled. A job whose task fails is restarted from its checkpoints, within
/// `stream-processor.max-job-restarts`, then reported failed; the other jobs go on.
///
/// # Errors
///
/// The errors of [`run_with_status`].
pub async fn run_with_log(
    config: Config,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) -> Result<(), StreamProcessorError> {
    run_with_status(config, log, Arc::new(StatusRegistry::new()), shutdown).await
}

/// Runs every configured job on a log that is already open, reporting their status to
/// `status` (which the caller may read meanwhile, as the serving layer does), until
/// `shutdown` is cancelled. A failed job is restarted and then given up as
/// [`run_with_log`] says; a given-up job is [`JobState::Failed`] in `status`.
///
/// The status is also served over HTTP on `stream-processor.metrics-listen`, from before the
/// first task starts until the service stops.
///
/// # Errors
///
/// [`StreamProcessorError::MetricsListen`], a job that does not compile, an object store
/// that does not open, and a task that panicked.
pub async fn run_with_status(
    config: Config,
    log: Arc<dyn Log>,
    status: Arc<StatusRegistry>,
    shutdown: CancellationToken,
) -> Result<(), StreamProcessorError> {
    async move {
        let metrics_server =
            metrics::MetricsServer::bind(&config.stream_processor.metrics_listen).await?;
        let metrics_shutdown = shutdown.child_token();
        // The endpoint stops with the service, whatever stops it (dropping the guard
        // cancels its token, also on an early return).
        let _metrics_guard = metrics_shutdown.clone().drop_guard();
        let metrics_task = tokio::spawn(
            metrics_server
                .serve(Arc::clone(&status), metrics_shutdown.clone())
                .in_current_span(),
        );
        if config.stream_processor.exactly_once
            && config.storage.log.backend != runnel_config::LogBackend::Kafka
        {
            return Err(StreamProcessorError::Job {
                job: "(every job)".to_string(),
                message: "stream-processor.exactly-once needs the Kafka log backend (its \
                          transactions); on the embedded log a restart re-emits the same \
                          upserts, and no zombie can write, as one process holds a \
                          partition's lock"
                    .to_string(),
            });
        }
        let store = runnel_archive::open_object_store(
            &config.object_store_url(),
            &config.storage.object_store_options,
        )
        .map_err(StreamProcessorError::OpenStore)?;
        let context = task::TaskContext {
            log: Arc::clone(&log),
            store,
            checkpoint_prefix: config.stream_processor.checkpoint_prefix.clone(),
            checkpoints_to_keep: config.stream_processor.checkpoints_to_keep,
            checkpoint_interval: config.stream_processor.checkpoint_interval,
            read_batch_records: config.stream_processor.read_batch_records,
            history_prefix: config.archive.prefix.clone(),
            status: Arc::clone(&status),
            exactly_once: config.stream_processor.exactly_once,
        };
        let jobs_shutdown = shutdown.child_token();
        let mut jobs = tokio::task::JoinSet::new();
        for job_config in &config.jobs {
            let job = Arc::new(Job::compile(&config, job_config)?);
            start_job(
                job,
                &config,
                &context,
                &mut jobs,
                jobs_shutdown.clone(),
            )
            .await?;
        }
        let follow_catalog = config.stream_processor.run_registered_versions;
        if jobs.is_empty() && !follow_catalog {
            info!("no jobs configured (`jobs = []`); declare them with [[jobs]] in a config file, see config/runnel.toml; waiting for shutdown");
        }
        let mut registered = RegisteredJobs::default();
        let mut catalog_poll = tokio::time::interval(config.stream_processor.job_poll_interval);
        catalog_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first_error = None;
        let mut shutdown_requested = std::pin::pin!(shutdown.cancelled());
        loop {
            tokio::select! {
                () = &mut shutdown_requested, if !jobs_shutdown.is_cancelled() => {
                    jobs_shutdown.cancel();
                }
                _ = catalog_poll.tick(), if follow_catalog && !jobs_shutdown.is_cancelled() => {
                    registered
                        .follow(&config, &context, &mut jobs, &jobs_shutdown)
                        .await;
                }
                Some(joined) = jobs.join_next() => {
                    // A job's failures are its supervisor's: only a panic comes here.
                    if let Err(join_error) = joined {
                        jobs_shutdown.cancel();
                        first_error.get_or_insert(StreamProcessorError::Task {
                            job: "?".to_string(),
                            partition: 0,
                            message: join_error.to_string(),
                        });
                    }
                }
                else => {}
            }
            if jobs.is_empty() && (jobs_shutdown.is_cancelled() || first_error.is_some()) {
                break;
            }
        }
        metrics_shutdown.cancel();
        let served = match metrics_task.await {
            Ok(served) => served,
            Err(join_error) => Err(StreamProcessorError::MetricsServe(std::io::Error::other(
                join_error.to_string(),
            ))),
        };
        match (first_error, served) {
            (Some(error), _) | (None, Err(error)) => Err(error),
            (None, Ok(())) => {
                info!("stream-processor stopped");
                Ok(())
            }
        }
    }
    .instrument(info_span!("service", service = SERVICE_NAME))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_member_waits_out_its_session_before_it_rejoins() {
        let mut config = Config::embedded_defaults();
        let backoff = config.stream_processor.job_restart_backoff;
        assert_eq!(RestartPolicy::of(&config).delay(0), backoff);
        config.storage.log.backend = runnel_config::LogBackend::Kafka;
        assert_eq!(
            RestartPolicy::of(&config).delay(0),
            backoff,
            "a dynamic member"
        );
        config.storage.log.kafka.group_instance_id = Some("stream-processor-1".to_string());
        config.storage.log.kafka.session_timeout = Duration::from_secs(10);
        let policy = RestartPolicy::of(&config);
        assert_eq!(policy.delay(0), Duration::from_secs(10));
        assert_eq!(
            policy.delay(6),
            backoff.saturating_mul(64).max(Duration::from_secs(10)),
            "the backoff still doubles past it"
        );
    }
}
