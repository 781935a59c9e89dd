//! The HTTP endpoint of the jobs' status: `GET /metrics` in Prometheus' text exposition
//! format (version 0.0.4) and `GET /status` as JSON, both from one
//! [`StatusRegistry::snapshot`] per request.
//!
//! Series are labelled `job` and `partition` (the job's source partition), so their number
//! is bounded by the configured jobs and their streams' partitions; `events_per_second` is
//! per job.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use runnel_metrics::{Exposition, Labels, MetricType, MetricsListener, TableFamily, Value};
use tokio_util::sync::CancellationToken;

use crate::StreamProcessorError;
use crate::status::{JobState, JobStatus, PartitionStatus, StatusRegistry};

/// The metrics endpoint, bound and ready to serve.
pub(crate) struct MetricsServer {
    listener: MetricsListener,
}

impl MetricsServer {
    /// Binds `address` (`stream-processor.metrics-listen`; port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::MetricsListen`].
    pub(crate) async fn bind(address: &str) -> Result<MetricsServer, StreamProcessorError> {
        let listener = MetricsListener::bind(address).await.map_err(|source| {
            StreamProcessorError::MetricsListen {
                address: address.to_string(),
                source,
            }
        })?;
        Ok(MetricsServer { listener })
    }

    /// Serves `/metrics` and `/status` from `registry` until `shutdown` is cancelled.
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::MetricsServe`].
    pub(crate) async fn serve(
        self,
        registry: Arc<StatusRegistry>,
        shutdown: CancellationToken,
    ) -> Result<(), StreamProcessorError> {
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/status", get(status))
            .with_state(registry);
        self.listener
            .serve(router, "metrics listening", shutdown)
            .await
            .map_err(StreamProcessorError::MetricsServe)
    }
}

async fn metrics(State(registry): State<Arc<StatusRegistry>>) -> Exposition {
    encode(&registry.snapshot(), runnel_time::now_millis())
}

async fn status(State(registry): State<Arc<StatusRegistry>>) -> Json<Vec<JobStatus>> {
    Json(registry.snapshot())
}

/// The families with a sample per task (job and source partition); the context is the
/// wall clock, epoch milliseconds.
const PARTITION_FAMILIES: &[TableFamily<PartitionStatus, i64>] = &[
    TableFamily {
        name: "runnel_job_watermark_ms",
        metric_type: MetricType::Gauge,
        help: "The task's watermark in epoch milliseconds: its largest event time minus the job's max-out-of-orderness.",
        value: |partition, _| partition.watermark_ms.map(Value::from),
    },
    TableFamily {
        name: "runnel_job_watermark_delay_seconds",
        metric_type: MetricType::Gauge,
        help: "How far the task's watermark is behind the wall clock, in seconds.",
        value: |partition, now_ms| {
            partition
                .watermark_ms
                .map(|watermark| (now_ms.saturating_sub(watermark) as f64 / 1000.0).into())
        },
    },
    TableFamily {
        name: "runnel_job_source_offset",
        metric_type: MetricType::Gauge,
        help: "The next source offset the task processes; every offset below it is done.",
        value: |partition, _| Some(partition.source_offset.into()),
    },
    TableFamily {
        name: "runnel_job_log_end_offset",
        metric_type: MetricType::Gauge,
        help: "The source partition's end offset, read from the log about once a second.",
        value: |partition, _| Some(partition.end_offset.into()),
    },
    TableFamily {
        name: "runnel_job_lag_records",
        metric_type: MetricType::Gauge,
        help: "Source records appended but not processed yet (log end offset minus source offset).",
        value: |partition, _| Some(partition.lag_records.into()),
    },
    TableFamily {
        name: "runnel_job_events_total",
        metric_type: MetricType::Counter,
        help: "Source records processed by this process.",
        value: |partition, _| Some(partition.events_total.into()),
    },
    TableFamily {
        name: "runnel_job_late_events_total",
        metric_type: MetricType::Counter,
        help: "Events too late to count (one per event and window), sent to the job's late topic.",
        value: |partition, _| Some(partition.late_events_total.into()),
    },
    TableFamily {
        name: "runnel_job_results_total",
        metric_type: MetricType::Counter,
        help: "Result records (upserts) emitted to the job's results topic by this process.",
        value: |partition, _| Some(partition.results_total.into()),
    },
    TableFamily {
        name: "runnel_job_errors_total",
        metric_type: MetricType::Counter,
        help: "Events whose expressions failed or whose event time was unusable, sent to the job's late topic with their reason, by this process.",
        value: |partition, _| Some(partition.errors_total.into()),
    },
    TableFamily {
        name: "runnel_job_last_checkpoint_epoch",
        metric_type: MetricType::Gauge,
        help: "The epoch of the task's newest checkpoint, taken or restored.",
        value: |partition, _| {
            partition
                .last_checkpoint
                .as_ref()
                .map(|checkpoint| checkpoint.epoch.into())
        },
    },
    TableFamily {
        name: "runnel_job_last_checkpoint_timestamp_seconds",
        metric_type: MetricType::Gauge,
        help: "When the task's newest checkpoint taken by this process was complete, in Unix seconds.",
        value: |partition, _| {
            partition
                .last_checkpoint
                .as_ref()?
                .completed_at_ms
                .map(|at| (at as f64 / 1000.0).into())
        },
    },
    TableFamily {
        name: "runnel_job_checkpoint_duration_seconds",
        metric_type: MetricType::Gauge,
        help: "How long the task's newest checkpoint taken by this process took (snapshot, writes, offset commit).",
        value: |partition, _| Some(partition.last_checkpoint.as_ref()?.duration_seconds?.into()),
    },
];

/// The families with a sample per job.
const JOB_FAMILIES: &[TableFamily<JobStatus>] = &[
    TableFamily {
        name: "runnel_job_events_per_second",
        metric_type: MetricType::Gauge,
        help: "Source records processed per second over the last ten seconds, over the job's partitions.",
        value: |job, ()| Some(job.events_per_second.into()),
    },
    TableFamily {
        name: "runnel_job_failed",
        metric_type: MetricType::Gauge,
        help: "1 while the job is stopped after a failure (restarting or failed for good), else 0.",
        value: |job, ()| Some((job.state != JobState::Running).into()),
    },
    TableFamily {
        name: "runnel_job_restarts_total",
        metric_type: MetricType::Counter,
        help: "Times the job was restarted after a failure by this process.",
        value: |job, ()| Some(job.restarts.into()),
    },
];

/// Encodes `jobs` in the text exposition format; `now_ms` (epoch ms) is the wall clock the
/// watermark delay is measured against.
pub(crate) fn encode(jobs: &[JobStatus], now_ms: i64) -> Exposition {
    let mut partition_rows = Vec::new();
    let mut job_rows = Vec::with_capacity(jobs.len());
    for job in jobs {
        let labels = Labels::new().with("job", &job.job);
        for partition in &job.partitions {
            let partition_labels = labels.clone().with("partition", partition.partition);
            partition_rows.push((partition_labels, partition));
        }
        job_rows.push((labels, job));
    }
    let mut exposition = Exposition::new();
    exposition.table(PARTITION_FAMILIES, &partition_rows, &now_ms);
    exposition.table(JOB_FAMILIES, &job_rows, &());
    exposition
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::CheckpointStatus;

    fn partition(number: u32) -> PartitionStatus {
        PartitionStatus {
            partition: number,
            watermark_ms: None,
            source_offset: 0,
            end_offset: 0,
            lag_records: 0,
            events_total: 0,
            events_per_second: 0.0,
            late_events_total: 0,
            results_total: 0,
            errors_total: 0,
            last_checkpoint: None,
            other_offsets: Vec::new(),
        }
    }

    #[test]
    fn the_exposition_format_has_help_type_and_one_sample_per_known_series() {
        let mut first = partition(0);
        first.watermark_ms = Some(1_795_305_598_000);
        first.source_offset = 120;
        first.end_offset = 150;
        first.lag_records = 30;
        first.events_total = 120;
        first.events_per_second = 12.5;
        first.late_events_total = 2;
        first.results_total = 40;
        first.errors_total = 1;
        first.last_checkpoint = Some(CheckpointStatus {
            epoch: 7,
            source_offset: 100,
            completed_at_ms: Some(1_795_305_600_250),
            duration_seconds: Some(0.015),
        });
        let jobs = vec![JobStatus {
            job: "views \"v2\"\\x".to_string(),
            stream: "clicks".to_string(),
            watermark_ms: None,
            lag_records: 30,
            events_total: 120,
            events_per_second: 12.5,
            late_events_total: 2,
            results_total: 40,
            errors_total: 1,
            state: JobState::Failed,
            restarts: 3,
            last_error: Some("partition 0 at offset 120: boom".to_string()),
            partitions: vec![first, partition(1)],
            routed: Vec::new(),
        }];
        let text = encode(&jobs, 1_795_305_600_500).into_text();
        let job = r#"job="views \"v2\"\\x""#;
        let expected = format!(
            r#"# HELP runnel_job_watermark_ms The task's watermark in epoch milliseconds: its largest event time minus the job's max-out-of-orderness.
# TYPE runnel_job_watermark_ms gauge
runnel_job_watermark_ms{{{job},partition="0"}} 1795305598000
# HELP runnel_job_watermark_delay_seconds How far the task's watermark is behind the wall clock, in seconds.
# TYPE runnel_job_watermark_delay_seconds gauge
runnel_job_watermark_delay_seconds{{{job},partition="0"}} 2.5
# HELP runnel_job_source_offset The next source offset the task processes; every offset below it is done.
# TYPE runnel_job_source_offset gauge
runnel_job_source_offset{{{job},partition="0"}} 120
runnel_job_source_offset{{{job},partition="1"}} 0
# HELP runnel_job_log_end_offset The source partition's end offset, read from the log about once a second.
# TYPE runnel_job_log_end_offset gauge
runnel_job_log_end_offset{{{job},partition="0"}} 150
runnel_job_log_end_offset{{{job},partition="1"}} 0
# HELP runnel_job_lag_records Source records appended but not processed yet (log end offset minus source offset).
# TYPE runnel_job_lag_records gauge
runnel_job_lag_records{{{job},partition="0"}} 30
runnel_job_lag_records{{{job},partition="1"}} 0
# HELP runnel_job_events_total Source records processed by this process.
# TYPE runnel_job_events_total counter
runnel_job_events_total{{{job},partition="0"}} 120
runnel_job_events_total{{{job},partition="1"}} 0
# HELP runnel_job_late_events_total Events too late to count (one per event and window), sent to the job's late topic.
# TYPE runnel_job_late_events_total counter
runnel_job_late_events_total{{{job},partition="0"}} 2
runnel_job_late_events_total{{{job},partition="1"}} 0
# HELP runnel_job_results_total Result records (upserts) emitted to the job's results topic by this process.
# TYPE runnel_job_results_total counter
runnel_job_results_total{{{job},partition="0"}} 40
runnel_job_results_total{{{job},partition="1"}} 0
# HELP runnel_job_errors_total Events whose expressions failed or whose event time was unusable, sent to the job's late topic with their reason, by this process.
# TYPE runnel_job_errors_total counter
runnel_job_errors_total{{{job},partition="0"}} 1
runnel_job_errors_total{{{job},partition="1"}} 0
# HELP runnel_job_last_checkpoint_epoch The epoch of the task's newest checkpoint, taken or restored.
# TYPE runnel_job_last_checkpoint_epoch gauge
runnel_job_last_checkpoint_epoch{{{job},partition="0"}} 7
# HELP runnel_job_last_checkpoint_timestamp_seconds When the task's newest checkpoint taken by this process was complete, in Unix seconds.
# TYPE runnel_job_last_checkpoint_timestamp_seconds gauge
runnel_job_last_checkpoint_timestamp_seconds{{{job},partition="0"}} 1795305600.25
# HELP runnel_job_checkpoint_duration_seconds How long the task's newest checkpoint taken by this process took (snapshot, writes, offset commit).
# TYPE runnel_job_checkpoint_duration_seconds gauge
runnel_job_checkpoint_duration_seconds{{{job},partition="0"}} 0.015
# HELP runnel_job_events_per_second Source records processed per second over the last ten seconds, over the job's partitions.
# TYPE runnel_job_events_per_second gauge
runnel_job_events_per_second{{{job}}} 12.5
# HELP runnel_job_failed 1 while the job is stopped after a failure (restarting or failed for good), else 0.
# TYPE runnel_job_failed gauge
runnel_job_failed{{{job}}} 1
# HELP runnel_job_restarts_total Times the job was restarted after a failure by this process.
# TYPE runnel_job_restarts_total counter
runnel_job_restarts_total{{{job}}} 3
"#
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn no_jobs_still_declares_every_family() {
        let text = encode(&[], 0).into_text();
        assert_eq!(
            text.lines().count(),
            2 * (PARTITION_FAMILIES.len() + JOB_FAMILIES.len())
        );
        assert!(text.lines().all(|line| line.starts_with('#')), "{text}");
    }
}
