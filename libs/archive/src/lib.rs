//! The Parquet history of every stream, and the readers that join it to the live log.
//!
//! - [`archiver`]: copies each partition of a stream's log topic into Parquet files on an
//!   object store, under `<prefix>/<stream>/date=YYYY-MM-DD/<partition>-<first>-<last>.parquet`
//!   (the date is the ingest date of the file's first record). Columns are the declared
//!   fields plus `_partition`, `_offset` and `_ingest_time`; pages are zstd-compressed.
//!   Crash-safe and idempotent: see the module's docs.
//! - [`manifest`]: the per-stream list of files with their offset ranges and event-time
//!   bounds, replaced atomically.
//! - [`hybrid`]: one reader per partition that yields the history (via the manifest) and
//!   then the live log from the next offset, as Arrow batches.
//! - [`open_object_store`]: the object store a `file://`, `s3://` or `memory://` URL names.
//! - [`status`]: the archiver's status per partition (corrupt ranges waiting for a repair),
//!   served as `/metrics` and `/status`.
#![warn(missing_docs)]

pub mod archiver;
pub mod hybrid;
pub mod manifest;
mod page_header;
pub mod parquet_file;
pub mod status;
mod store;

pub use archiver::{
    ARCHIVER_GROUP, ArchiveOptions, ArchiveSummary, archive_until_caught_up, run_archiver,
    run_archiver_with_status,
};
pub use hybrid::{HybridSource, HybridStart};
pub use manifest::{FileEntry, Manifest, load_manifest};
pub use status::{ArchiverStatus, FlushOutcome};
pub use store::open_object_store;

use object_store::path::Path;
use runnel_log::LogError;

/// Everything the history can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The object-store URL is not one runnel can open.
    #[error("object store `{url}`: {message}")]
    StoreUrl {
        /// The URL from config.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// An object-store operation failed.
    #[error("{operation} {path}: {source}")]
    Store {
        /// What was being done: read, write, list, delete.
        operation: &'static str,
        /// The object.
        path: String,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
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
    /// Writing or reading a Parquet file failed.
    #[error("parquet file {path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// Parquet's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Building an Arrow batch failed.
    #[error("stream `{stream}`: {source}")]
    Arrow {
        /// The stream.
        stream: String,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// Log records could not be decoded at all.
    #[error(transparent)]
    Decode(#[from] runnel_events::decode::DecodeError),
    /// A manifest does not parse, or breaks its invariants.
    #[error("manifest of stream `{stream}`: {message}")]
    ManifestInvalid {
        /// The stream.
        stream: String,
        /// What is wrong.
        message: String,
    },
    /// An archived file does not hold what the manifest says.
    #[error("history file {path}: {message}")]
    FileInvalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The history ends before the log begins: records in between are in neither.
    #[error(
        "stream `{stream}` partition {partition}: history ends before offset {archived_until} \
         but the log's oldest retained offset is {log_earliest}; offsets in between are lost"
    )]
    HistoryGap {
        /// The stream.
        stream: String,
        /// The partition.
        partition: u32,
        /// The next offset the history would need.
        archived_until: u64,
        /// The log's earliest offset.
        log_earliest: u64,
    },
    /// A partition's log cannot be read at an offset: a damaged record. It stays so until an
    /// operator repairs the partition (`runnel log repair`), which the log's error says how.
    #[error(
        "stream `{stream}` partition {partition}: the log is unreadable at offset {offset}: {source}"
    )]
    CorruptLog {
        /// The stream.
        stream: String,
        /// The partition.
        partition: u32,
        /// The first offset that cannot be read.
        offset: u64,
        /// The log's error ([`LogError::Corrupt`]).
        #[source]
        source: Box<LogError>,
    },
    /// The stream is not declared in config.
    #[error("unknown stream `{0}`")]
    UnknownStream(String),
    /// A background task panicked or was cancelled abnormally.
    #[error("archiver task of stream `{stream}`: {message}")]
    Task {
        /// The stream.
        stream: String,
        /// What happened.
        message: String,
    },
}

impl ArchiveError {
    pub(crate) fn store(operation: &'static str, path: &Path, source: object_store::Error) -> Self {
        Self::Store {
            operation,
            path: path.to_string(),
            source: Box::new(source),
        }
    }

    pub(crate) fn log(topic: &str, source: LogError) -> Self {
        Self::Log {
            topic: topic.to_string(),
            source: Box::new(source),
        }
    }
}
