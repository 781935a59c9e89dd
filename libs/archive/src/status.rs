//! The archiver's status, per stream and partition, for operators: `GET /metrics` in
//! Prometheus' text format (version 0.0.4) and `GET /status` as JSON ([`router`]).
//!
//! The archiver reports into an [`ArchiverStatus`]: what each partition has archived, and
//! whether it is stopped at a corrupt range of the log, waiting for a repair; the files and
//! rows it wrote; how far the log's end is ahead of the history (its lag). Series are
//! labelled `stream` and `partition`, so their number is bounded by the declared streams.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use runnel_metrics::{Exposition, Labels, MetricType, TableFamily};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a partition's archiver is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionState {
    /// Reading the log and writing files.
    Archiving,
    /// Stopped at a range of the log it cannot read, until an operator repairs it.
    Corrupt,
}

/// Where a partition's archiver is stopped by corruption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorruptRange {
    /// The first offset the archiver cannot read.
    pub offset: u64,
    /// The log file holding it, when the log names one.
    pub path: Option<String>,
    /// The byte position in that file.
    pub position: Option<u64>,
    /// The log's error, with what is affected and how to recover.
    pub error: String,
    /// The commands an operator runs.
    pub repair: String,
    /// When the archiver stopped, epoch milliseconds.
    pub since_ms: i64,
    /// How many times it has looked again since.
    pub rechecks: u64,
}

/// One partition of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionArchiveStatus {
    /// The stream.
    pub stream: String,
    /// The partition.
    pub partition: u32,
    /// What the archiver is doing.
    pub state: PartitionState,
    /// The next offset to archive: the history holds, or has skipped, every offset before it.
    pub archived_until: u64,
    /// Files written since the process started.
    pub files_total: u64,
    /// Rows written since the process started.
    pub rows_total: u64,
    /// Bytes of the files written since the process started.
    pub bytes_total: u64,
    /// The partition's end offset in the log (the offset of its next record), read from
    /// the log about once a second while archiving; `None` until first read.
    pub log_end_offset: Option<u64>,
    /// Times the archiver found the partition's log corrupt since the process started.
    pub corruptions_total: u64,
    /// Set while the state is [`PartitionState::Corrupt`].
    pub corrupt: Option<CorruptRange>,
    /// The newest flush request ([`ArchiverStatus::request_flush`]) the partition has
    /// answered: it finished its file at or after the log's end as it was when asked.
    pub flushed_generation: u64,
}

/// One stream: the errors that made the archiver retry it whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamArchiveStatus {
    /// The stream.
    pub stream: String,
    /// Failures (object store, I/O) retried with backoff since the process started.
    pub errors_total: u64,
    /// The last failure, until the stream's next successful start.
    pub last_error: Option<String>,
}

/// Everything, as `/status` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiverSnapshot {
    /// Streams, by name.
    pub streams: Vec<StreamArchiveStatus>,
    /// Partitions, by stream and partition.
    pub partitions: Vec<PartitionArchiveStatus>,
}

/// The archiver's status, shared by its tasks and the endpoint that serves it; also how a
/// caller asks the running archiver to flush ([`ArchiverStatus::request_flush`]).
#[derive(Debug, Default)]
pub struct ArchiverStatus {
    inner: Mutex<Inner>,
    /// The newest flush request's generation (0: none yet).
    flush_requested: AtomicU64,
    /// Woken when a partition answers a flush request or stops at corruption.
    flush_answered: tokio::sync::Notify,
}

/// What a flush request got: each partition the archiver runs, and whether it flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushOutcome {
    /// The request's generation.
    pub generation: u64,
    /// Every partition the archiver has reported, with `flushed_generation` at or above
    /// `generation` for those that flushed.
    pub partitions: Vec<PartitionArchiveStatus>,
}

impl FlushOutcome {
    /// Whether every partition flushed.
    pub fn complete(&self) -> bool {
        self.partitions
            .iter()
            .all(|partition| partition.flushed_generation >= self.generation)
    }
}

#[derive(Debug, Default)]
struct Inner {
    streams: BTreeMap<String, StreamArchiveStatus>,
    partitions: BTreeMap<(String, u32), PartitionArchiveStatus>,
}

impl ArchiverStatus {
    /// An empty status.
    pub fn new() -> Arc<ArchiverStatus> {
        Arc::new(ArchiverStatus::default())
    }

    /// The status that [`crate::run_archiver`] reports into: one per process, so that the
    /// service running the archiver serves it without holding it.
    pub fn process() -> Arc<ArchiverStatus> {
        static PROCESS: OnceLock<Arc<ArchiverStatus>> = OnceLock::new();
        Arc::clone(PROCESS.get_or_init(ArchiverStatus::new))
    }

    /// A copy of everything.
    pub fn snapshot(&self) -> ArchiverSnapshot {
        let inner = self.lock();
        ArchiverSnapshot {
            streams: inner.streams.values().cloned().collect(),
            partitions: inner.partitions.values().cloned().collect(),
        }
    }

    /// The partition's status, if the archiver has reported it.
    pub fn partition(&self, stream: &str, partition: u32) -> Option<PartitionArchiveStatus> {
        self.lock()
            .partitions
            .get(&(stream.to_string(), partition))
            .cloned()
    }

    /// Asks every partition's archiver to finish its open file once it has read to the log's
    /// end as it is now, so that the history holds every record appended before this call;
    /// returns the request's generation for [`ArchiverStatus::wait_flushed`].
    pub fn request_flush(&self) -> u64 {
        self.flush_requested.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The newest flush request, if it is newer than `answered`.
    pub(crate) fn flush_wanted(&self, answered: u64) -> Option<u64> {
        let requested = self.flush_requested.load(Ordering::SeqCst);
        (requested > answered).then_some(requested)
    }

    /// The partition finished its file at the end the request `generation` asked for.
    pub(crate) fn flushed(&self, stream: &str, partition: u32, generation: u64) {
        self.with_partition(stream, partition, |status| {
            status.flushed_generation = status.flushed_generation.max(generation);
        });
        self.flush_answered.notify_waiters();
    }

    /// Waits until every partition the archiver runs has answered flush request
    /// `generation`, or is stopped at corruption (it cannot answer until repaired), or
    /// `timeout` passed; returns where each partition stands.
    pub async fn wait_flushed(
        &self,
        generation: u64,
        timeout: std::time::Duration,
    ) -> FlushOutcome {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let answered = self.flush_answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let partitions: Vec<PartitionArchiveStatus> =
                self.lock().partitions.values().cloned().collect();
            let waiting = partitions.iter().any(|partition| {
                partition.flushed_generation < generation
                    && partition.state == PartitionState::Archiving
            });
            if !waiting || tokio::time::timeout_at(deadline, answered).await.is_err() {
                return FlushOutcome {
                    generation,
                    partitions: if waiting {
                        self.lock().partitions.values().cloned().collect()
                    } else {
                        partitions
                    },
                };
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("status lock is never poisoned")
    }

    fn with_partition<T>(
        &self,
        stream: &str,
        partition: u32,
        update: impl FnOnce(&mut PartitionArchiveStatus) -> T,
    ) -> T {
        let mut inner = self.lock();
        let entry = inner
            .partitions
            .entry((stream.to_string(), partition))
            .or_insert_with(|| PartitionArchiveStatus {
                stream: stream.to_string(),
                partition,
                state: PartitionState::Archiving,
                archived_until: 0,
                files_total: 0,
                rows_total: 0,
                bytes_total: 0,
                log_end_offset: None,
                corruptions_total: 0,
                corrupt: None,
                flushed_generation: 0,
            });
        update(entry)
    }

    /// The partition reads the log from `archived_until`; returns whether it was corrupt
    /// before (and so has just resumed).
    pub(crate) fn archiving(&self, stream: &str, partition: u32, archived_until: u64) -> bool {
        self.with_partition(stream, partition, |status| {
            status.archived_until = archived_until;
            status.state = PartitionState::Archiving;
            status.corrupt.take().is_some()
        })
    }

    /// A file of `rows` rows and `bytes` bytes was written; everything before
    /// `archived_until` is archived.
    pub(crate) fn archived(
        &self,
        stream: &str,
        partition: u32,
        rows: u64,
        bytes: u64,
        archived_until: u64,
    ) {
        self.with_partition(stream, partition, |status| {
            status.files_total += 1;
            status.rows_total += rows;
            status.bytes_total += bytes;
            status.archived_until = archived_until;
        });
    }

    /// The partition's log ends at `end_offset` (the offset of its next record).
    pub(crate) fn log_end(&self, stream: &str, partition: u32, end_offset: u64) {
        self.with_partition(stream, partition, |status| {
            status.log_end_offset = Some(end_offset);
        });
    }

    /// The partition is stopped at `corrupt`; returns whether that is news (it was not
    /// already stopped at that offset), so that the caller says so once.
    pub(crate) fn corrupt(&self, stream: &str, partition: u32, corrupt: CorruptRange) -> bool {
        let news = self.with_partition(stream, partition, |status| {
            status.state = PartitionState::Corrupt;
            match &mut status.corrupt {
                Some(known) if known.offset == corrupt.offset => {
                    known.rechecks += 1;
                    known.error = corrupt.error;
                    false
                }
                _ => {
                    status.corruptions_total += 1;
                    status.corrupt = Some(corrupt);
                    true
                }
            }
        });
        // A flush waiting for this partition stops waiting.
        self.flush_answered.notify_waiters();
        news
    }

    /// A stream's archiving failed and will be retried.
    pub(crate) fn stream_failed(&self, stream: &str, error: String) {
        let mut inner = self.lock();
        let entry = stream_entry(&mut inner, stream);
        entry.errors_total += 1;
        entry.last_error = Some(error);
    }

    /// A stream's archiving (re)started: its partitions are read.
    pub(crate) fn stream_started(&self, stream: &str) {
        let mut inner = self.lock();
        stream_entry(&mut inner, stream).last_error = None;
    }

    /// The Prometheus text exposition of the status.
    pub fn render_metrics(&self) -> String {
        let mut exposition = Exposition::new();
        self.encode_metrics(&mut exposition);
        exposition.into_text()
    }

    /// Writes the status's metric families into `exposition` (beside a service's own).
    pub fn encode_metrics(&self, exposition: &mut Exposition) {
        let snapshot = self.snapshot();
        let partition_rows: Vec<(Labels, &PartitionArchiveStatus)> = snapshot
            .partitions
            .iter()
            .map(|status| {
                let labels = Labels::new()
                    .with("stream", &status.stream)
                    .with("partition", status.partition);
                (labels, status)
            })
            .collect();
        exposition.table(PARTITION_FAMILIES, &partition_rows, &());
        let stream_rows: Vec<(Labels, &StreamArchiveStatus)> = snapshot
            .streams
            .iter()
            .map(|stream| (Labels::new().with("stream", &stream.stream), stream))
            .collect();
        exposition.table(STREAM_FAMILIES, &stream_rows, &());
    }
}

fn stream_entry<'a>(inner: &'a mut Inner, stream: &str) -> &'a mut StreamArchiveStatus {
    inner
        .streams
        .entry(stream.to_string())
        .or_insert_with(|| StreamArchiveStatus {
            stream: stream.to_string(),
            errors_total: 0,
            last_error: None,
        })
}

/// The families with a sample per partition.
const PARTITION_FAMILIES: &[TableFamily<PartitionArchiveStatus>] = &[
    TableFamily {
        name: "runnel_archiver_partition_corrupt",
        metric_type: MetricType::Gauge,
        help: "1 while the partition's archiver is stopped at a corrupt range of the log, waiting for `runnel log repair`.",
        value: |status, ()| Some((status.state == PartitionState::Corrupt).into()),
    },
    TableFamily {
        name: "runnel_archiver_corrupt_offset",
        metric_type: MetricType::Gauge,
        help: "The first offset the archiver cannot read while the partition is corrupt (absent otherwise).",
        value: |status, ()| Some(status.corrupt.as_ref()?.offset.into()),
    },
    TableFamily {
        name: "runnel_archiver_corruptions_total",
        metric_type: MetricType::Counter,
        help: "Times the archiver found the partition's log corrupt.",
        value: |status, ()| Some(status.corruptions_total.into()),
    },
    TableFamily {
        name: "runnel_archiver_archived_until_offset",
        metric_type: MetricType::Gauge,
        help: "The next offset to archive: every offset before it is in the history.",
        value: |status, ()| Some(status.archived_until.into()),
    },
    TableFamily {
        name: "runnel_archiver_log_end_offset",
        metric_type: MetricType::Gauge,
        help: "The partition's end offset in the log, read about once a second.",
        value: |status, ()| Some(status.log_end_offset?.into()),
    },
    TableFamily {
        name: "runnel_archiver_lag_records",
        metric_type: MetricType::Gauge,
        help: "Records in the log not in the history yet (log end offset minus archived-until offset), those of the open file included.",
        value: |status, ()| {
            let end = status.log_end_offset?;
            Some(end.saturating_sub(status.archived_until).into())
        },
    },
    TableFamily {
        name: "runnel_archiver_files_total",
        metric_type: MetricType::Counter,
        help: "Parquet files written.",
        value: |status, ()| Some(status.files_total.into()),
    },
    TableFamily {
        name: "runnel_archiver_rows_total",
        metric_type: MetricType::Counter,
        help: "Rows written to Parquet files.",
        value: |status, ()| Some(status.rows_total.into()),
    },
    TableFamily {
        name: "runnel_archiver_written_bytes_total",
        metric_type: MetricType::Counter,
        help: "Bytes of the Parquet files written.",
        value: |status, ()| Some(status.bytes_total.into()),
    },
];

/// The families with a sample per stream.
const STREAM_FAMILIES: &[TableFamily<StreamArchiveStatus>] = &[TableFamily {
    name: "runnel_archiver_stream_errors_total",
    metric_type: MetricType::Counter,
    help: "Failures (object store, I/O) that made the archiver retry the stream.",
    value: |stream, ()| Some(stream.errors_total.into()),
}];

/// Returns the routes `GET /metrics` and `GET /status` over `status`, to serve alone
/// ([`serve`]) or merged into a service's router.
pub fn router(status: Arc<ArchiverStatus>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status_json))
        .with_state(status)
}

/// Serves [`router`] on `listener` until `shutdown` is cancelled.
///
/// # Errors
///
/// The server's I/O errors.
pub async fn serve(
    listener: TcpListener,
    status: Arc<ArchiverStatus>,
    shutdown: CancellationToken,
) -> Result<(), std::io::Error> {
    axum::serve(listener, router(status))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(status): State<Arc<ArchiverStatus>>) -> Exposition {
    let mut exposition = Exposition::new();
    status.encode_metrics(&mut exposition);
    exposition
}

async fn status_json(State(status): State<Arc<ArchiverStatus>>) -> Json<ArchiverSnapshot> {
    Json(status.snapshot())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_partition_shows_in_the_metrics_once_per_range() {
        let status = ArchiverStatus::new();
        status.archiving("clicks", 0, 10);
        status.archiving("clicks", 1, 0);
        let corrupt = |offset| CorruptRange {
            offset,
            path: Some("/log/clicks/1/00000000000000000000.log".to_string()),
            position: Some(410),
            error: "corrupt".to_string(),
            repair: "runnel log repair".to_string(),
            since_ms: 0,
            rechecks: 0,
        };
        assert!(status.corrupt("clicks", 1, corrupt(7)));
        assert!(
            !status.corrupt("clicks", 1, corrupt(7)),
            "the same range again"
        );
        status.archived("clicks", 0, 5, 4096, 15);
        status.log_end("clicks", 0, 20);
        let text = status.render_metrics();
        for line in [
            "runnel_archiver_partition_corrupt{stream=\"clicks\",partition=\"0\"} 0",
            "runnel_archiver_partition_corrupt{stream=\"clicks\",partition=\"1\"} 1",
            "runnel_archiver_corrupt_offset{stream=\"clicks\",partition=\"1\"} 7",
            "runnel_archiver_corruptions_total{stream=\"clicks\",partition=\"1\"} 1",
            "runnel_archiver_rows_total{stream=\"clicks\",partition=\"0\"} 5",
            "runnel_archiver_archived_until_offset{stream=\"clicks\",partition=\"0\"} 15",
            "runnel_archiver_log_end_offset{stream=\"clicks\",partition=\"0\"} 20",
            "runnel_archiver_lag_records{stream=\"clicks\",partition=\"0\"} 5",
            "runnel_archiver_written_bytes_total{stream=\"clicks\",partition=\"0\"} 4096",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("runnel_archiver_corrupt_offset{stream=\"clicks\",partition=\"0\"}")
        );
        assert!(
            !text.contains("runnel_archiver_lag_records{stream=\"clicks\",partition=\"1\"}"),
            "no lag before the log's end is known"
        );
        let partition = status.partition("clicks", 1).expect("reported");
        assert_eq!(partition.corrupt.expect("corrupt").rechecks, 1);
        assert!(
            status.archiving("clicks", 1, 8),
            "resumed after being corrupt"
        );
        assert!(
            status
                .render_metrics()
                .contains("runnel_archiver_partition_corrupt{stream=\"clicks\",partition=\"1\"} 0")
        );
    }
}
