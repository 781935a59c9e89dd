//! Job status: per job and source partition, what its task has done so far.
//!
//! Each task reports into its own cell (a mutex it takes once per batch, once a second for
//! the log's end offset, and once per checkpoint), so reporting costs nothing per event and
//! tasks never wait for each other. [`StatusRegistry::snapshot`] copies every cell into
//! plain [`JobStatus`] / [`PartitionStatus`] values: what the `/metrics` and `/status`
//! endpoints (`metrics`) render, and what the serving layer reports as its job list.
//!
//! Counters (`events_total`, `results_total`) count what this process did since its start;
//! `late_events_total` is the operator's own count, which a checkpoint carries over a
//! restart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The span over which `events_per_second` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The status of one job: its partitions' status and their totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    /// The job's name.
    pub job: String,
    /// The stream the job reads.
    pub stream: String,
    /// The job's watermark (epoch ms): the smallest of its partitions', or `None` while
    /// some partition has none yet.
    pub watermark_ms: Option<i64>,
    /// Records in the log not processed yet, over all partitions.
    pub lag_records: u64,
    /// Source records processed by this process, over all partitions.
    pub events_total: u64,
    /// Source records processed per second over the last ten seconds or so, over all
    /// partitions.
    pub events_per_second: f64,
    /// Events too late to count (one per event and window), over all partitions.
    pub late_events_total: u64,
    /// Result records (upserts) emitted by this process, over all partitions.
    pub results_total: u64,
    /// Events whose expressions failed or whose event time was unusable, sent to the
    /// late topic with their reason, over all partitions.
    pub errors_total: u64,
    /// Whether the job runs, waits to restart after a failure, or has failed for good.
    pub state: JobState,
    /// Times the job was restarted after a failure by this process.
    pub restarts: u32,
    /// The last failure: what failed, where (partition and offset) and why.
    pub last_error: Option<String>,
    /// Each source partition's status, by partition number. For a job read through its
    /// repartition topic, the partitions are the topic's and their offsets are in it.
    pub partitions: Vec<PartitionStatus>,
    /// For a job read through its repartition topic: per stream partition its router runs
    /// on here, the next stream offset it will route (every offset below it is in the topic).
    pub routed: Vec<RoutedPartition>,
}

/// How far a router has copied its stream partition into the job's repartition topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RoutedPartition {
    /// The stream partition.
    pub partition: u32,
    /// The next offset the router will route.
    pub source_offset: u64,
    /// Stream records this process's router has routed since it started (undecodable ones
    /// included).
    pub routed_total: u64,
}

/// Whether a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Its tasks run.
    Running,
    /// A task failed; the job restarts from its checkpoints after a backoff.
    Restarting,
    /// A task failed again after `stream-processor.max-job-restarts` restarts; the job
    /// stays stopped until the service restarts. The other jobs go on.
    Failed,
}

impl JobState {
    /// The state's name, as `/status` and `ListJobs` give it.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Restarting => "restarting",
            JobState::Failed => "failed",
        }
    }
}

/// The status of one job's task on one source partition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    /// The source partition.
    pub partition: u32,
    /// The task's watermark (epoch ms): the largest event time seen minus the job's
    /// `max-out-of-orderness`; `None` before the first event.
    pub watermark_ms: Option<i64>,
    /// The next source offset the task will process: every offset below it is done.
    pub source_offset: u64,
    /// The partition's end offset (the offset the next appended record will get), as last
    /// read from the log (about once a second).
    pub end_offset: u64,
    /// `end_offset - source_offset`: records appended but not processed yet.
    pub lag_records: u64,
    /// Source records processed by this process (undecodable ones included).
    pub events_total: u64,
    /// Source records processed per second over the last ten seconds or so.
    pub events_per_second: f64,
    /// Events too late to count (one per event and window), including those counted
    /// before the checkpoint the task restored.
    pub late_events_total: u64,
    /// Result records (upserts) emitted by this process.
    pub results_total: u64,
    /// Events whose expressions failed or whose event time was unusable, sent to the
    /// late topic with their reason, by this process.
    pub errors_total: u64,
    /// The newest checkpoint, taken or restored by this process.
    pub last_checkpoint: Option<CheckpointStatus>,
    /// A direct join task's other input (a table's changelog, a second stream, a window
    /// join's right stream), which it reads whole: per partition, the next offset it will
    /// read. Empty for any other task.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_offsets: Vec<u64>,
}

/// A task's newest checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointStatus {
    /// The checkpoint's epoch.
    pub epoch: u64,
    /// The source offset it resumes from.
    pub source_offset: u64,
    /// When it was complete (epoch ms); `None` for the checkpoint restored at start.
    pub completed_at_ms: Option<i64>,
    /// How long taking it took (snapshot, writes, offset commit) in seconds; `None` for
    /// the checkpoint restored at start.
    pub duration_seconds: Option<f64>,
}

/// The status of every running job, shared by the tasks that report into it and the
/// readers that take snapshots.
///
/// Create one with [`StatusRegistry::new`] and pass it to
/// [`run_with_status`](crate::run_with_status) to read the jobs' status from outside the
/// service (as the serving layer does in `runnel all`).
#[derive(Debug, Default)]
pub struct StatusRegistry {
    /// Jobs in the order they were registered.
    jobs: Mutex<Vec<RegisteredJob>>,
}

#[derive(Debug, Clone)]
struct RegisteredJob {
    name: String,
    stream: String,
    state: JobState,
    restarts: u32,
    last_error: Option<String>,
    /// Ascending by partition.
    partitions: Vec<(u32, Arc<Mutex<PartitionState>>)>,
    /// Routers' progress: stream partition to the next offset to route and the records
    /// routed since the router started.
    routed: std::collections::BTreeMap<u32, (u64, u64)>,
}

/// One task's cell.
#[derive(Debug)]
struct PartitionState {
    watermark: Option<i64>,
    source_offset: u64,
    end_offset: u64,
    events_total: u64,
    late_events_total: u64,
    results_total: u64,
    errors_total: u64,
    last_checkpoint: Option<CheckpointStatus>,
    other_offsets: Vec<u64>,
    /// `(when, events_total then)`, oldest first: the samples `events_per_second` is
    /// measured over. Invariant: not empty.
    rate_samples: VecDeque<(Instant, u64)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A reporter never panics while holding the lock, and every state it leaves is valid.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StatusRegistry {
    /// Returns an empty registry.
    pub fn new() -> StatusRegistry {
        StatusRegistry::default()
    }

    /// Returns a cell for `job`'s task on `partition` of `stream`, replacing any earlier
    /// one for the same task (a task restarted with the same registry starts afresh).
    pub(crate) fn register(&self, job: &str, stream: &str, partition: u32) -> PartitionReporter {
        let state = Arc::new(Mutex::new(PartitionState {
            watermark: None,
            source_offset: 0,
            end_offset: 0,
            events_total: 0,
            late_events_total: 0,
            results_total: 0,
            errors_total: 0,
            last_checkpoint: None,
            other_offsets: Vec::new(),
            rate_samples: VecDeque::from([(Instant::now(), 0)]),
        }));
        let mut jobs = lock(&self.jobs);
        let registered = registered_job(&mut jobs, job, stream);
        match registered
            .partitions
            .binary_search_by_key(&partition, |(number, _)| *number)
        {
            Ok(at) => registered.partitions[at].1 = Arc::clone(&state),
            Err(at) => registered
                .partitions
                .insert(at, (partition, Arc::clone(&state))),
        }
        PartitionReporter { state }
    }

    /// Lists `job` (reading `stream`) as running, with no partitions yet.
    pub(crate) fn job_running(&self, job: &str, stream: &str) {
        let mut jobs = lock(&self.jobs);
        registered_job(&mut jobs, job, stream).state = JobState::Running;
    }

    /// `job` failed with `error`; it is `state` now (restarting or failed) after `restarts`
    /// restarts. Its partitions are no longer listed: no task of it runs.
    pub(crate) fn job_failed(
        &self,
        job: &str,
        stream: &str,
        error: String,
        state: JobState,
        restarts: u32,
    ) {
        let mut jobs = lock(&self.jobs);
        let registered = registered_job(&mut jobs, job, stream);
        registered.state = state;
        registered.restarts = restarts;
        registered.last_error = Some(error);
        registered.partitions.clear();
        registered.routed.clear();
    }

    /// `job`'s router of stream `partition` has routed every offset below `source_offset`;
    /// its first report after it starts (or restarts) is where it starts from.
    pub(crate) fn routed(&self, job: &str, partition: u32, source_offset: u64, first: bool) {
        let mut jobs = lock(&self.jobs);
        if let Some(registered) = jobs.iter_mut().find(|registered| registered.name == job) {
            let entry = registered
                .routed
                .entry(partition)
                .or_insert((source_offset, 0));
            if first {
                entry.0 = source_offset;
            }
            entry.1 += source_offset.saturating_sub(entry.0);
            entry.0 = entry.0.max(source_offset);
        }
    }

    /// Removes `job`'s task on `partition` (it moved to another instance). The job stays
    /// listed, with the partitions it still runs here.
    pub(crate) fn unregister(&self, job: &str, partition: u32) {
        let mut jobs = lock(&self.jobs);
        if let Some(registered) = jobs.iter_mut().find(|registered| registered.name == job) {
            registered
                .partitions
                .retain(|(number, _)| *number != partition);
        }
    }

    /// Returns the status of every job, in the order the jobs started.
    pub fn snapshot(&self) -> Vec<JobStatus> {
        self.snapshot_at(Instant::now())
    }

    /// Returns the status of `job`, if it runs.
    pub fn job(&self, job: &str) -> Option<JobStatus> {
        self.snapshot().into_iter().find(|status| status.job == job)
    }

    fn snapshot_at(&self, now: Instant) -> Vec<JobStatus> {
        // The cells are copied after the registry's lock is released, so a snapshot holds
        // one task's lock at a time, briefly.
        let registered: Vec<RegisteredJob> = lock(&self.jobs).clone();
        registered
            .into_iter()
            .map(|job| {
                let partitions: Vec<PartitionStatus> = job
                    .partitions
                    .iter()
                    .map(|(partition, state)| lock(state).status(*partition, now))
                    .collect();
                JobStatus::from_partitions(job, partitions)
            })
            .collect()
    }
}

/// Finds `job` in `jobs`, listing it (running, reading `stream`) if it is not there yet.
fn registered_job<'a>(
    jobs: &'a mut Vec<RegisteredJob>,
    job: &str,
    stream: &str,
) -> &'a mut RegisteredJob {
    let index = match jobs.iter().position(|registered| registered.name == job) {
        Some(index) => index,
        None => {
            jobs.push(RegisteredJob {
                name: job.to_string(),
                stream: stream.to_string(),
                state: JobState::Running,
                restarts: 0,
                last_error: None,
                partitions: Vec::new(),
                routed: std::collections::BTreeMap::new(),
            });
            jobs.len() - 1
        }
    };
    let registered = &mut jobs[index];
    registered.stream = stream.to_string();
    registered
}

impl JobStatus {
    fn from_partitions(job: RegisteredJob, partitions: Vec<PartitionStatus>) -> Self {
        let watermark_ms = partitions
            .iter()
            .map(|partition| partition.watermark_ms)
            .try_fold(i64::MAX, |min, watermark| Some(min.min(watermark?)))
            .filter(|_| !partitions.is_empty());
        JobStatus {
            job: job.name,
            stream: job.stream,
            state: job.state,
            restarts: job.restarts,
            last_error: job.last_error,
            errors_total: partitions.iter().map(|p| p.errors_total).sum(),
            watermark_ms,
            lag_records: partitions.iter().map(|p| p.lag_records).sum(),
            events_total: partitions.iter().map(|p| p.events_total).sum(),
            events_per_second: partitions.iter().map(|p| p.events_per_second).sum(),
            late_events_total: partitions.iter().map(|p| p.late_events_total).sum(),
            results_total: partitions.iter().map(|p| p.results_total).sum(),
            partitions,
            routed: job
                .routed
                .iter()
                .map(
                    |(&partition, &(source_offset, routed_total))| RoutedPartition {
                        partition,
                        source_offset,
                        routed_total,
                    },
                )
                .collect(),
        }
    }
}

impl PartitionState {
    fn status(&self, partition: u32, now: Instant) -> PartitionStatus {
        PartitionStatus {
            partition,
            watermark_ms: self.watermark,
            source_offset: self.source_offset,
            end_offset: self.end_offset,
            lag_records: self.end_offset.saturating_sub(self.source_offset),
            events_total: self.events_total,
            events_per_second: self.rate(now),
            late_events_total: self.late_events_total,
            results_total: self.results_total,
            errors_total: self.errors_total,
            last_checkpoint: self.last_checkpoint.clone(),
            other_offsets: self.other_offsets.clone(),
        }
    }

    /// Events per second from the newest sample at least `RATE_WINDOW` old (or the oldest
    /// one, early on) to now.
    fn rate(&self, now: Instant) -> f64 {
        let base = self
            .rate_samples
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= RATE_WINDOW)
            .or(self.rate_samples.front());
        let Some(&(at, events)) = base else {
            return 0.0;
        };
        let seconds = now.saturating_duration_since(at).as_secs_f64();
        if seconds < 0.001 {
            return 0.0;
        }
        self.events_total.saturating_sub(events) as f64 / seconds
    }

    /// Adds a rate sample and drops those no rate needs any more.
    fn sample(&mut self, now: Instant) {
        self.rate_samples.push_back((now, self.events_total));
        // Keep one sample at least `RATE_WINDOW` old: drop the oldest while the next one
        // is old enough too.
        while self.rate_samples.len() > 1
            && self
                .rate_samples
                .get(1)
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= RATE_WINDOW)
        {
            self.rate_samples.pop_front();
        }
    }
}

/// How a task reports into its cell of a [`StatusRegistry`].
#[derive(Debug, Clone)]
pub(crate) struct PartitionReporter {
    state: Arc<Mutex<PartitionState>>,
}

fn watermark(operator_watermark: i64) -> Option<i64> {
    // The operator's watermark is `i64::MIN` before its first event.
    (operator_watermark != i64::MIN).then_some(operator_watermark)
}

impl PartitionReporter {
    /// The task starts at `source_offset`, with the operator's `watermark` and
    /// `late_count`, from the checkpoint `restored` (epoch and offset) if any.
    pub(crate) fn started(
        &self,
        source_offset: u64,
        operator_watermark: i64,
        late_count: u64,
        restored: Option<u64>,
    ) {
        let mut state = lock(&self.state);
        state.source_offset = source_offset;
        state.end_offset = state.end_offset.max(source_offset);
        state.watermark = watermark(operator_watermark);
        state.late_events_total = late_count;
        state.last_checkpoint = restored.map(|epoch| CheckpointStatus {
            epoch,
            source_offset,
            completed_at_ms: None,
            duration_seconds: None,
        });
    }

    /// A batch of `records` source records is done: the task continues at
    /// `source_offset`, emitted `results` result records, found `errors` events it could
    /// not use (sent to the late topic with their reason), and its operator is at
    /// `operator_watermark` with `late_count` late events so far.
    pub(crate) fn batch_done(
        &self,
        source_offset: u64,
        records: u64,
        results: u64,
        errors: u64,
        operator_watermark: i64,
        late_count: u64,
    ) {
        let mut state = lock(&self.state);
        state.errors_total += errors;
        state.source_offset = source_offset;
        // The end offset is refreshed about once a second; the task may have read past it.
        state.end_offset = state.end_offset.max(source_offset);
        state.events_total += records;
        state.results_total += results;
        state.watermark = watermark(operator_watermark);
        state.late_events_total = late_count;
    }

    /// The log's end offset of the task's partition is `end_offset`; also samples the event
    /// count for the rate (the task calls this about once a second).
    pub(crate) fn end_offset(&self, end_offset: u64) {
        self.end_offset_at(end_offset, Instant::now());
    }

    fn end_offset_at(&self, end_offset: u64, now: Instant) {
        let mut state = lock(&self.state);
        state.end_offset = end_offset.max(state.source_offset);
        state.sample(now);
    }

    /// A join task's other input is read up to `offsets` (per partition, the next offset).
    pub(crate) fn other_offsets(&self, offsets: &[u64]) {
        let mut state = lock(&self.state);
        state.other_offsets.clear();
        state.other_offsets.extend_from_slice(offsets);
    }

    /// Checkpoint `epoch`, resuming from `source_offset`, is complete; it took `duration`.
    pub(crate) fn checkpoint_done(&self, epoch: u64, source_offset: u64, duration: Duration) {
        let mut state = lock(&self.state);
        state.last_checkpoint = Some(CheckpointStatus {
            epoch,
            source_offset,
            completed_at_ms: Some(runnel_time::now_millis()),
            duration_seconds: Some(duration.as_secs_f64()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_add_up_to_their_job_and_the_watermark_is_their_minimum() {
        let registry = StatusRegistry::new();
        let first = registry.register("views", "clicks", 1);
        let zeroth = registry.register("views", "clicks", 0);
        zeroth.started(0, i64::MIN, 0, None);
        first.started(40, 500, 2, Some(3));
        let status = registry.snapshot();
        assert_eq!(status.len(), 1);
        assert_eq!(
            status[0].watermark_ms, None,
            "partition 0 has no watermark yet"
        );
        assert_eq!(
            status[0].partitions[1].last_checkpoint,
            Some(CheckpointStatus {
                epoch: 3,
                source_offset: 40,
                completed_at_ms: None,
                duration_seconds: None
            })
        );

        zeroth.batch_done(10, 10, 4, 0, 1_000, 1);
        zeroth.end_offset(25);
        first.batch_done(50, 10, 1, 2, 700, 3);
        first.end_offset(45); // Older than what the task has read: not a negative lag.
        let status = registry.job("views").expect("registered");
        assert_eq!(status.watermark_ms, Some(700));
        assert_eq!(
            status
                .partitions
                .iter()
                .map(|p| (p.partition, p.source_offset, p.end_offset, p.lag_records))
                .collect::<Vec<_>>(),
            vec![(0, 10, 25, 15), (1, 50, 50, 0)]
        );
        assert_eq!(status.lag_records, 15);
        assert_eq!(status.events_total, 20);
        assert_eq!(status.late_events_total, 4);
        assert_eq!(status.results_total, 5);
        assert_eq!(status.errors_total, 2);
        assert_eq!(status.state, JobState::Running);
        assert!(registry.job("other").is_none());

        // Partition 0 moves to another instance: the job adds up what is left here.
        registry.unregister("views", 0);
        let status = registry.job("views").expect("still listed");
        assert_eq!(status.partitions.len(), 1);
        assert_eq!(status.partitions[0].partition, 1);
        assert_eq!((status.lag_records, status.events_total), (0, 10));
        assert_eq!(status.watermark_ms, Some(700));
    }

    #[test]
    fn a_failed_job_is_listed_with_its_error_and_no_partitions() {
        let registry = StatusRegistry::new();
        registry.job_running("views", "clicks");
        let task = registry.register("views", "clicks", 0);
        task.batch_done(10, 10, 1, 0, 1_000, 0);
        registry.job_failed(
            "views",
            "clicks",
            "partition 0 at offset 10: boom".to_string(),
            JobState::Restarting,
            1,
        );
        let status = registry.job("views").expect("listed");
        assert_eq!(status.state, JobState::Restarting);
        assert_eq!(status.restarts, 1);
        assert_eq!(
            status.last_error.as_deref(),
            Some("partition 0 at offset 10: boom")
        );
        assert!(status.partitions.is_empty());
        registry.job_running("views", "clicks");
        let status = registry.job("views").expect("listed");
        assert_eq!(status.state, JobState::Running);
        // The error stays, for the operator to read, as does the count of restarts.
        assert_eq!(status.restarts, 1);
        assert!(status.last_error.is_some());
    }

    #[test]
    fn the_rate_spans_about_ten_seconds() {
        let registry = StatusRegistry::new();
        let reporter = registry.register("j", "s", 0);
        let start = lock(&reporter.state).rate_samples[0].0;
        // 100 events a second for 30 seconds, then nothing for 5 seconds.
        for second in 1..=30 {
            reporter.batch_done(second * 100, 100, 0, 0, 0, 0);
            reporter.end_offset_at(second * 100, start + Duration::from_secs(second));
        }
        let status = lock(&reporter.state).status(0, start + Duration::from_secs(30));
        assert!(
            (status.events_per_second - 100.0).abs() < 1e-9,
            "{status:?}"
        );
        let status = lock(&reporter.state).status(0, start + Duration::from_secs(35));
        assert!((status.events_per_second - 50.0).abs() < 1e-9, "{status:?}");
        assert!(lock(&reporter.state).rate_samples.len() <= 12);
        // Early on, the rate is measured from the task's start.
        let early = registry.register("j", "s", 1);
        let start = lock(&early.state).rate_samples[0].0;
        early.batch_done(30, 30, 0, 0, 0, 0);
        let status = lock(&early.state).status(1, start + Duration::from_secs(2));
        assert!((status.events_per_second - 15.0).abs() < 1e-9, "{status:?}");
    }
}
