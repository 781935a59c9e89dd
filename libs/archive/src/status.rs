//! The archiver's status, per stream and partition, for operators: `GET /metrics` in
//! Prometheus' text format (version 0.0.4) and `GET /status` as JSON ([`router`]).
//!
//! The archiver reports into an [`ArchiverStatus`]: what each partition has archived, and
//! whether it is stopped at a corrupt range of the log, waiting for a repair. Series are
//! labelled `stream` and `partition`, so their number is bounded by the declared streams.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// Times the archiver found the partition's log corrupt since the process started.
    pub corruptions_total: u64,
    /// Set while the state is [`PartitionState::Corrupt`].
    pub corrupt: Option<CorruptRange>,
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

/// The archiver's status, shared by its tasks and the endpoint that serves it.
#[derive(Debug, Default)]
pub struct ArchiverStatus {
    inner: Mutex<Inner>,
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
                corruptions_total: 0,
                corrupt: None,
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

    /// A file of `rows` rows was written; everything before `archived_until` is archived.
    pub(crate) fn archived(&self, stream: &str, partition: u32, rows: u64, archived_until: u64) {
        self.with_partition(stream, partition, |status| {
            status.files_total += 1;
            status.rows_total += rows;
            status.archived_until = archived_until;
        });
    }

    /// The partition is stopped at `corrupt`; returns whether that is news (it was not
    /// already stopped at that offset), so that the caller says so once.
    pub(crate) fn corrupt(&self, stream: &str, partition: u32, corrupt: CorruptRange) -> bool {
        self.with_partition(stream, partition, |status| {
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
        })
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
        render(&self.snapshot())
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

/// One metric family of partitions.
struct PartitionFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&PartitionArchiveStatus) -> u64,
}

const PARTITION_FAMILIES: &[PartitionFamily] = &[
    PartitionFamily {
        name: "runnel_archiver_partition_corrupt",
        kind: "gauge",
        help: "1 while the partition's archiver is stopped at a corrupt range of the log, waiting for `runnel log repair`.",
        value: |status| u64::from(status.state == PartitionState::Corrupt),
    },
    PartitionFamily {
        name: "runnel_archiver_corrupt_offset",
        kind: "gauge",
        help: "The first offset the archiver cannot read while the partition is corrupt (absent otherwise).",
        value: |status| {
            status
                .corrupt
                .as_ref()
                .map_or(u64::MAX, |corrupt| corrupt.offset)
        },
    },
    PartitionFamily {
        name: "runnel_archiver_corruptions_total",
        kind: "counter",
        help: "Times the archiver found the partition's log corrupt.",
        value: |status| status.corruptions_total,
    },
    PartitionFamily {
        name: "runnel_archiver_archived_until_offset",
        kind: "gauge",
        help: "The next offset to archive: every offset before it is in the history.",
        value: |status| status.archived_until,
    },
    PartitionFamily {
        name: "runnel_archiver_files_total",
        kind: "counter",
        help: "Parquet files written.",
        value: |status| status.files_total,
    },
    PartitionFamily {
        name: "runnel_archiver_rows_total",
        kind: "counter",
        help: "Rows written to Parquet files.",
        value: |status| status.rows_total,
    },
];

/// Renders `snapshot` in the text exposition format.
fn render(snapshot: &ArchiverSnapshot) -> String {
    let mut out = String::new();
    for family in PARTITION_FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for status in &snapshot.partitions {
            let value = (family.value)(status);
            if value == u64::MAX {
                continue;
            }
            let _ = writeln!(
                out,
                "{}{{stream=\"{}\",partition=\"{}\"}} {value}",
                family.name,
                escape_label(&status.stream),
                status.partition
            );
        }
    }
    let name = "runnel_archiver_stream_errors_total";
    let _ = writeln!(
        out,
        "# HELP {name} Failures (object store, I/O) that made the archiver retry the stream."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for stream in &snapshot.streams {
        let _ = writeln!(
            out,
            "{name}{{stream=\"{}\"}} {}",
            escape_label(&stream.stream),
            stream.errors_total
        );
    }
    out
}

/// A label value with `\`, `"` and line feeds escaped.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

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

async fn metrics(State(status): State<Arc<ArchiverStatus>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, TEXT_FORMAT)],
        status.render_metrics(),
    )
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
        status.archived("clicks", 0, 5, 15);
        let text = status.render_metrics();
        for line in [
            "runnel_archiver_partition_corrupt{stream=\"clicks\",partition=\"0\"} 0",
            "runnel_archiver_partition_corrupt{stream=\"clicks\",partition=\"1\"} 1",
            "runnel_archiver_corrupt_offset{stream=\"clicks\",partition=\"1\"} 7",
            "runnel_archiver_corruptions_total{stream=\"clicks\",partition=\"1\"} 1",
            "runnel_archiver_rows_total{stream=\"clicks\",partition=\"0\"} 5",
            "runnel_archiver_archived_until_offset{stream=\"clicks\",partition=\"0\"} 15",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("runnel_archiver_corrupt_offset{stream=\"clicks\",partition=\"0\"}")
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
