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
//!
//! A direct join job's tasks each read the job's other input whole (a table's changelog, a
//! second stream, a window join's right stream): they have caught up once they have also read
//! it to its end as it was when the replay started (the tasks report how far,
//! `PartitionStatus::other_offsets`). A repartitioned join job's routers read the changelog;
//! their progress in it is not watched.
//!
//! A job read through its repartition topic replays the same way: its routers read the
//! history and then the log as direct tasks do. It has caught up once every router has
//! routed the stream's end as it was when the replay started, and then every window task
//! has read its repartition partition to that topic's end as it was at that moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use object_store::ObjectStore;
use runnel_config::{Config, JobConfig};
use runnel_jobs::Job;
use runnel_log::Log;
use runnel_stream_processor::StatusRegistry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::BatchError;
use runnel_jobs::{ActiveVersion, save_active};
use runnel_time::now_millis;

/// How often the replay's progress is read from its tasks.
const POLL: Duration = Duration::from_millis(100);

/// Counters of a replay's progress, for a progress bar.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    /// Events this replay processed, and those left up to the log's end as it was when the
    /// replay started.
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
/// The stream-processor's errors; log and store failures.
pub async fn replay(
    config: &Config,
    job_config: &JobConfig,
    log: Arc<dyn Log>,
    store: Arc<dyn ObjectStore>,
    progress: Arc<ReplayProgress>,
    stop_when_caught_up: bool,
    shutdown: CancellationToken,
) -> Result<ReplayOutcome, BatchError> {
    let job = Job::compile(config, job_config)?;
    crate::register_version(store.as_ref(), job_config).await?;
    let stream = job.stream.name().to_string();
    let ends = end_offsets(log.as_ref(), &stream).await?;
    // A direct join job's tasks each read its other input whole: they have caught up once
    // they have read it to its end as it was when the replay started, too.
    let other_ends = match job.other_input() {
        Some(other) if !job.repartition => {
            Some(end_offsets(log.as_ref(), other.stream.name()).await?)
        }
        _ => None,
    };
    // A repartitioned job's window tasks read the repartition topic: the ends they must
    // reach are that topic's, read once the routers have routed the stream's `ends`.
    let mut repartition_ends: Option<Vec<u64>> = None;
    let mut replay_config = config.clone();
    replay_config.jobs = vec![job_config.clone()];
    // The replay's tasks report here; their HTTP endpoint must not take a service's port.
    replay_config.stream_processor.metrics_listen = "127.0.0.1:0".to_string();
    // Nor a service's static group membership: a second member under the same id would
    // fence the service's out of the job's group.
    replay_config.storage.log.kafka.group_instance_id = None;
    // It runs its one version, not the ones the job catalog makes active meanwhile.
    replay_config.stream_processor.run_registered_versions = false;
    let status = Arc::new(StatusRegistry::new());
    let tasks_shutdown = shutdown.child_token();
    let mut service = tokio::spawn(runnel_stream_processor::run_with_status(
        replay_config,
        Arc::clone(&log),
        Arc::clone(&status),
        tasks_shutdown.clone(),
    ));
    info!(job = %job.name, ?ends, "replaying until the log's end as it is now");
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
        // Progress over the stream's offsets: the window tasks' own for a direct job, the
        // routers' for a repartitioned one. Done: records this replay processed; total: those
        // and the ones left up to `ends`.
        let read: Vec<(u32, u64, u64)> = if job.repartition {
            job_status
                .routed
                .iter()
                .map(|routed| (routed.partition, routed.source_offset, routed.routed_total))
                .collect()
        } else {
            job_status
                .partitions
                .iter()
                .map(|partition| {
                    (
                        partition.partition,
                        partition.source_offset,
                        partition.events_total,
                    )
                })
                .collect()
        };
        let mut done = 0;
        let mut left = 0;
        let mut caught_up = read.len() == ends.len();
        for &(partition, offset, processed) in &read {
            let end = ends.get(partition as usize).copied().unwrap_or_default();
            done += processed;
            left += end.saturating_sub(offset);
            caught_up &= offset >= end;
        }
        progress.events_total.store(done + left, Ordering::Relaxed);
        progress.events_done.store(done, Ordering::Relaxed);
        if let Some(other_ends) = &other_ends {
            caught_up &= job_status.partitions.iter().all(|partition| {
                partition.other_offsets.len() == other_ends.len()
                    && partition
                        .other_offsets
                        .iter()
                        .zip(other_ends)
                        .all(|(offset, end)| offset >= end)
            });
        }
        if caught_up && job.repartition {
            let topic = job.input_topic();
            let topic_ends = match &repartition_ends {
                Some(topic_ends) => topic_ends,
                None => repartition_ends.insert(end_offsets(log.as_ref(), &topic).await?),
            };
            caught_up = job_status.partitions.len() == topic_ends.len()
                && job_status.partitions.iter().all(|partition| {
                    partition.source_offset
                        >= topic_ends
                            .get(partition.partition as usize)
                            .copied()
                            .unwrap_or_default()
                });
        }
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

/// The end offset (the next offset to be written) of each partition of `topic`.
async fn end_offsets(log: &dyn Log, topic: &str) -> Result<Vec<u64>, BatchError> {
    let log_error = |source| BatchError::Log(topic.to_string(), Box::new(source));
    let partitions = log.partition_count(topic).await.map_err(log_error)?;
    let mut ends = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        ends.push(
            log.latest_offset(topic, partition)
                .await
                .map_err(log_error)?,
        );
    }
    Ok(ends)
}
