//! Replay (Kappa): one version of a job run by the live stream-processor's own tasks, from
//! its checkpoints or from the first archived event, over the hybrid source (the Parquet
//! history, then the live log). Same operator, same input order: the same results, versions
//! and late events as the live run over the same log.
//!
//! The run is resumable for free: the tasks checkpoint as they go (where the live service
//! would), so an interrupted replay continues from there. It has caught up once every
//! partition has processed the log's end as it was when the replay started; then the version
//! is made active (`jobs/<job>/active.json`) and, unless told to stop there, it keeps running
//! live. A stream-processor service that declares the same version shares its partitions
//! through the job's group and resumes from the same checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use object_store::ObjectStore;
use runnel_config::{Config, JobConfig};
use runnel_log::Log;
use runnel_stream_processor::{Job, StatusRegistry};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::BatchError;
use crate::active::{ActiveVersion, save_active};
use runnel_events::validate::now_millis;

/// How often the replay's progress is read from its tasks.
const POLL: Duration = Duration::from_millis(100);

/// Counters of a replay's progress, for a progress bar.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    /// Events from where each partition started to the log's end when the replay started.
    pub events_total: AtomicU64,
    /// Of those, events processed.
    pub events_done: AtomicU64,
    /// Whether every partition has caught up (and the version was made active).
    pub caught_up: AtomicBool,
}

/// How a replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Caught up, made active, and stopped there (`stop_when_caught_up`).
    CaughtUp,
    /// Stopped by `shutdown` (after catching up if `progress.caught_up` says so).
    Stopped,
}

/// Replays version `job_config` of a job on `log`; see the module docs. With
/// `stop_when_caught_up` it returns once caught up; otherwise it runs until `shutdown`.
///
/// # Errors
///
/// A job read through a repartition topic (its routers read the log only, so a replay could
/// not reach the history: not built yet); the stream-processor's errors; store failures.
pub async fn replay(
    config: &Config,
    job_config: &JobConfig,
    log: Arc<dyn Log>,
    store: Arc<dyn ObjectStore>,
    progress: Arc<ReplayProgress>,
    stop_when_caught_up: bool,
    shutdown: CancellationToken,
) -> Result<ReplayOutcome, BatchError> {
    let job = Job::compile(config, job_config)
        .map_err(|error| BatchError::StreamProcessor(Box::new(error)))?;
    if job.repartition {
        return Err(BatchError::Unsupported(format!(
            "job `{}` does not group by its stream's key, so it reads through a repartition \
             topic whose routers read the log only: replaying it over the history is not built \
             yet",
            job.name
        )));
    }
    let stream = job.stream.name().to_string();
    let partitions = log
        .partition_count(&stream)
        .await
        .map_err(|source| BatchError::Log(stream.clone(), Box::new(source)))?;
    let mut ends = Vec::new();
    for partition in 0..partitions {
        ends.push(
            log.latest_offset(&stream, partition)
                .await
                .map_err(|source| BatchError::Log(stream.clone(), Box::new(source)))?,
        );
    }
    let mut replay_config = config.clone();
    replay_config.jobs = vec![job_config.clone()];
    // The replay's tasks report here; their HTTP endpoint must not take a service's port.
    replay_config.stream_processor.metrics_listen = "127.0.0.1:0".to_string();
    let status = Arc::new(StatusRegistry::new());
    let tasks_shutdown = shutdown.child_token();
    let mut service = tokio::spawn(runnel_stream_processor::run_with_status(
        replay_config,
        log,
        Arc::clone(&status),
        tasks_shutdown.clone(),
    ));
    info!(job = %job.name, ?ends, "replaying until the log's end as it is now");
    let mut starts: BTreeMap<u32, u64> = BTreeMap::new();
    let mut outcome = ReplayOutcome::Stopped;
    loop {
        tokio::select! {
            joined = &mut service => {
                return match joined {
                    Ok(Ok(())) => Ok(outcome),
                    Ok(Err(error)) => Err(BatchError::StreamProcessor(Box::new(error))),
                    Err(join_error) => Err(BatchError::Unsupported(format!("the replay's tasks panicked: {join_error}"))),
                };
            }
            () = tokio::time::sleep(POLL) => {}
        }
        if progress.caught_up.load(Ordering::Relaxed) {
            continue;
        }
        let Some(job_status) = status.job(&job.name) else {
            continue;
        };
        if job_status.state == runnel_stream_processor::JobState::Failed {
            // Its restarts ran out: the replay cannot finish; say why.
            tasks_shutdown.cancel();
            let message = job_status
                .last_error
                .unwrap_or_else(|| "failed".to_string());
            return Err(BatchError::StreamProcessor(Box::new(
                runnel_stream_processor::StreamProcessorError::Job {
                    job: job.name.clone(),
                    message,
                },
            )));
        }
        let mut done = 0;
        let mut total = 0;
        let mut caught_up = job_status.partitions.len() == ends.len();
        for partition in &job_status.partitions {
            let end = ends
                .get(partition.partition as usize)
                .copied()
                .unwrap_or_default();
            let start = *starts
                .entry(partition.partition)
                .or_insert(partition.source_offset.min(end));
            total += end - start;
            done += partition.source_offset.clamp(start, end) - start;
            caught_up &= partition.source_offset >= end;
        }
        progress.events_total.store(total, Ordering::Relaxed);
        progress.events_done.store(done, Ordering::Relaxed);
        if caught_up {
            save_active(
                store.as_ref(),
                &ActiveVersion {
                    job: job.job_name.clone(),
                    version: job.version,
                    activated_at_ms: now_millis(),
                },
            )
            .await?;
            progress.caught_up.store(true, Ordering::Relaxed);
            info!(job = %job.name, version = job.version, "caught up with the live log; this version is now active");
            if stop_when_caught_up {
                outcome = ReplayOutcome::CaughtUp;
                tasks_shutdown.cancel();
            }
        }
    }
}
