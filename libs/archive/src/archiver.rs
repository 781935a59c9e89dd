//! The archiver: each stream's log partitions, copied into Parquet files on the object store.
//!
//! # Files
//!
//! One task per partition reads the log from the partition's next unarchived offset,
//! decodes the records ([`runnel_events::decode`]) and writes them into one Parquet file at
//! a time. A file *rolls* (is finished and a new one begun) before a record when:
//! - the file's records reach `target_file_bytes` of log values;
//! - the record's ingest date (UTC) differs from the file's first record's, so a file sits in
//!   exactly one `date=` folder;
//! - the record's ingest time is `max_file_age` or more after the file's first record's.
//!
//! These rules look only at the records, so the same log gives the same files. One rule
//! looks at the clock: when the archiver has caught up with the log and the open file's first
//! record is `max_file_age` old, the file is finished, so a quiet stream still reaches the
//! history.
//!
//! Rows reach the Parquet writer in slices of [`WRITE_CHUNK_ROWS`] counted from the start of
//! the file, whatever batches the log returned, so the bytes of a file depend only on its
//! records.
//!
//! # Crash safety
//!
//! A finished file is written whole in one put under its final name, then the manifest is
//! replaced with one naming it, then the partition's next offset is committed for consumer
//! group [`ARCHIVER_GROUP`] (which holds back the embedded log's retention). A crash can
//! interrupt this anywhere:
//! - before the file's put: nothing of it exists; the restart reads the same records again;
//! - after the put, before the manifest: on start, every `.parquet` file under the stream's
//!   folder that the manifest does not name is examined. One that starts exactly where its
//!   partition's history ends is *adopted* (its footer carries its [`FileEntry`]); any other
//!   is deleted. Adoption keeps the file that was already written, so the history is the same
//!   as without the crash;
//! - after the manifest, before the commit: the commit is only a retention hold; the
//!   archiver resumes from the manifest.
//!
//! # Corruption
//!
//! A partition whose log cannot be read at some offset ([`LogError::Corrupt`]: a bad frame
//! in the embedded log) stops there, alone: its state becomes corrupt in the
//! [`ArchiverStatus`] (file, byte, offset, the repair commands), an ERROR names the repair
//! once, and the task looks again every `poll-interval` (at least every second) until the
//! offset reads, e.g. after `runnel log repair`; the other partitions and streams go on.
//! Offsets a repair skipped are covered by the file that spans them (like undecodable
//! records), so ranges stay contiguous. Other failures (object store, I/O) retry the stream
//! with a growing pause.
//!
//! Records that cannot be decoded are appended to the stream's dead-letter topic (with
//! headers `runnel-source-offset`, `runnel-source-partition` and `runnel-reason`) and left
//! out of the file; the file's offset range still covers them, so ranges stay contiguous.
//! After a crash such a record may reach the dead-letter topic twice.
//!
//! Encoding runs on the async task that reads the partition: a slice of rows takes a few
//! milliseconds at most.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use runnel_config::{ArchiveConfig, Config};
use runnel_events::StreamSchema;
use runnel_events::decode::{EventDecoder, event_time_range};
use runnel_log::{Header, Log, LogError, ProduceRecord, Record, StartOffset};
use runnel_time::now_millis;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::ArchiveError;
use crate::manifest::{
    FILE_ENTRY_METADATA_KEY, FileEntry, Manifest, ManifestField, load_manifest, save_manifest,
    stream_dir,
};
use crate::parquet_file::StoreFile;
use crate::status::{ArchiverStatus, CorruptRange};

/// The consumer group under which the archiver commits, per partition, the offset after the
/// last archived record.
pub const ARCHIVER_GROUP: &str = "runnel-archiver";

/// Rows are handed to the Parquet writer in slices of this many, counted from the file's
/// first row, so that page boundaries do not depend on how the log was read.
pub const WRITE_CHUNK_ROWS: usize = 8192;

/// How many records one log read asks for.
const READ_BATCH_RECORDS: usize = 16_384;

/// The longest pause before the service's archiver retries a stream after an error.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The shortest pause between two looks at a partition stopped by corruption.
const MIN_CORRUPT_RECHECK: Duration = Duration::from_secs(1);

/// How often a partition's task reads the log's end offset, for the status's lag.
const LOG_END_INTERVAL: Duration = Duration::from_secs(1);

/// How the archiver writes files; see [`ArchiveConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveOptions {
    /// Object-store folder of the history.
    pub prefix: String,
    /// A file rolls once its records reach this many bytes of log values.
    pub target_file_bytes: u64,
    /// A file rolls once its records span this much ingest time.
    pub max_file_age: Duration,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
    /// How long a log read waits for records.
    pub poll_interval: Duration,
}

impl From<&ArchiveConfig> for ArchiveOptions {
    fn from(config: &ArchiveConfig) -> Self {
        Self {
            prefix: config.prefix.clone(),
            target_file_bytes: config.target_file_bytes,
            max_file_age: config.max_file_age,
            row_group_rows: config.row_group_rows,
            zstd_level: config.zstd_level,
            poll_interval: config.poll_interval,
        }
    }
}

/// What one archiving run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveSummary {
    /// Files written (not counting adopted ones).
    pub files: u64,
    /// Rows written.
    pub rows: u64,
    /// Records that could not be decoded and went to the dead-letter topic.
    pub undecodable: u64,
    /// Files adopted after a crash.
    pub adopted: u64,
}

impl ArchiveSummary {
    fn add(&mut self, other: ArchiveSummary) {
        self.files += other.files;
        self.rows += other.rows;
        self.undecodable += other.undecodable;
        self.adopted += other.adopted;
    }
}

/// Runs the archiver over every declared stream until `shutdown` is cancelled, reporting
/// into the process's [`ArchiverStatus::process`].
///
/// A stream whose archiving fails (object store down, say) is logged at ERROR and retried
/// with a growing pause, from its manifest; the other streams go on. A partition whose log
/// is corrupt waits for a repair (see the module docs); the others go on.
///
/// # Errors
///
/// None today: failures are retried. The signature leaves room for fatal ones.
pub async fn run_archiver(
    config: &Config,
    log: Arc<dyn Log>,
    store: Arc<dyn ObjectStore>,
    shutdown: CancellationToken,
) -> Result<(), ArchiveError> {
    run_archiver_with_status(config, log, store, ArchiverStatus::process(), shutdown).await
}

/// [`run_archiver`], reporting into `status`.
///
/// # Errors
///
/// None today: failures are retried. The signature leaves room for fatal ones.
pub async fn run_archiver_with_status(
    config: &Config,
    log: Arc<dyn Log>,
    store: Arc<dyn ObjectStore>,
    status: Arc<ArchiverStatus>,
    shutdown: CancellationToken,
) -> Result<(), ArchiveError> {
    let options = ArchiveOptions::from(&config.archive);
    let mut tasks = tokio::task::JoinSet::new();
    for stream in &config.streams {
        let schema = StreamSchema::new(stream);
        let (log, store, options, status, shutdown) = (
            Arc::clone(&log),
            Arc::clone(&store),
            options.clone(),
            Arc::clone(&status),
            shutdown.clone(),
        );
        let span = info_span!("archiver", stream = %stream.name);
        tasks.spawn(
            async move {
                let mut delay = options.poll_interval.max(Duration::from_millis(100));
                loop {
                    let result = archive_stream(
                        &schema,
                        Arc::clone(&log),
                        Arc::clone(&store),
                        &options,
                        &status,
                        Until::Shutdown(shutdown.clone()),
                    )
                    .await;
                    match result {
                        Ok(_) => return,
                        Err(error) => {
                            status.stream_failed(schema.name(), error.to_string());
                            error!(%error, retry_in = ?delay, "archiving failed; retrying");
                        }
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
            .instrument(span),
        );
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Archives every declared stream up to the log's end as it is when called, finishing the
/// last files there, and returns what was written.
///
/// This is `runnel archive --once`, and what tests and benchmarks use: on a log that does
/// not change meanwhile, the files are the same whether or not an earlier run was killed.
///
/// A partition whose log is corrupt stops at the corruption (its open file is not
/// written); every other partition and stream is archived to the end before the error.
///
/// # Errors
///
/// Log, object-store and Parquet failures; an invalid manifest; a gap between the history
/// and the log; [`ArchiveError::CorruptLog`] (the first) after the rest is archived.
pub async fn archive_until_caught_up(
    config: &Config,
    log: Arc<dyn Log>,
    store: Arc<dyn ObjectStore>,
) -> Result<ArchiveSummary, ArchiveError> {
    let options = ArchiveOptions::from(&config.archive);
    let status = ArchiverStatus::new();
    let mut summary = ArchiveSummary::default();
    let mut corrupt = None;
    for stream in &config.streams {
        let schema = StreamSchema::new(stream);
        let archived = archive_stream(
            &schema,
            Arc::clone(&log),
            Arc::clone(&store),
            &options,
            &status,
            Until::CaughtUp,
        )
        .instrument(info_span!("archiver", stream = %stream.name))
        .await;
        match archived {
            Ok(stream_summary) => summary.add(stream_summary),
            Err(error @ ArchiveError::CorruptLog { .. }) => {
                corrupt.get_or_insert(error);
            }
            Err(error) => return Err(error),
        }
    }
    match corrupt {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

/// When an archiving run stops.
#[derive(Debug, Clone)]
enum Until {
    /// At the log's end as it was when the run began, finishing the open files.
    CaughtUp,
    /// When the token is cancelled, dropping the open files (they are rewritten next time).
    Shutdown(CancellationToken),
}

/// What every partition task of one stream shares.
struct StreamArchive {
    status: Arc<ArchiverStatus>,
    schema: StreamSchema,
    decoder: EventDecoder,
    log: Arc<dyn Log>,
    store: Arc<dyn ObjectStore>,
    options: ArchiveOptions,
    props: WriterProperties,
    manifest: Mutex<Manifest>,
}

/// Recovers a stream's manifest, then archives each partition in its own task.
async fn archive_stream(
    schema: &StreamSchema,
    log: Arc<dyn Log>,
    store: Arc<dyn ObjectStore>,
    options: &ArchiveOptions,
    status: &Arc<ArchiverStatus>,
    until: Until,
) -> Result<ArchiveSummary, ArchiveError> {
    let topic = schema.name();
    let partitions = log
        .partition_count(topic)
        .await
        .map_err(|source| ArchiveError::log(topic, source))?;
    let mut starts = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        starts.push(
            log.earliest_offset(topic, partition)
                .await
                .map_err(|source| ArchiveError::log(topic, source))?,
        );
    }
    let (manifest, adopted) = recover(&store, &options.prefix, schema, &starts).await?;
    let next: Vec<u64> = (0..partitions)
        .map(|partition| {
            manifest
                .next_offset(partition)
                .unwrap_or(starts[partition as usize])
        })
        .collect();
    // Hold the log's retention at what is not archived yet.
    let holds: Vec<(u32, u64)> = next
        .iter()
        .enumerate()
        .map(|(partition, &offset)| (partition as u32, offset))
        .collect();
    log.commit_offsets(ARCHIVER_GROUP, topic, &holds)
        .await
        .map_err(|source| ArchiveError::log(topic, source))?;
    let ends = match &until {
        Until::CaughtUp => {
            let mut ends = Vec::with_capacity(partitions as usize);
            for partition in 0..partitions {
                ends.push(Some(
                    log.latest_offset(topic, partition)
                        .await
                        .map_err(|source| ArchiveError::log(topic, source))?,
                ));
            }
            ends
        }
        Until::Shutdown(_) => vec![None; partitions as usize],
    };
    status.stream_started(topic);
    let shared = Arc::new(StreamArchive {
        status: Arc::clone(status),
        schema: schema.clone(),
        decoder: EventDecoder::new(schema),
        log,
        store,
        props: writer_properties(options)?,
        options: options.clone(),
        manifest: Mutex::new(manifest),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        let task = PartitionArchiver {
            shared: Arc::clone(&shared),
            partition,
            next_offset: next[partition as usize],
            file_start: next[partition as usize],
            end: ends[partition as usize],
            file: None,
            summary: ArchiveSummary::default(),
            flushed: 0,
            flush_target: None,
        };
        let shutdown = match &until {
            Until::CaughtUp => None,
            Until::Shutdown(token) => Some(token.clone()),
        };
        tasks.spawn(
            task.run(shutdown)
                .instrument(info_span!("partition", partition)),
        );
    }
    let mut summary = ArchiveSummary {
        adopted,
        ..ArchiveSummary::default()
    };
    let mut first_error = None;
    let mut corrupt = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(partition_summary)) => summary.add(partition_summary),
            // One partition's corruption does not stop the others.
            Ok(Err(error @ ArchiveError::CorruptLog { .. })) => {
                corrupt.get_or_insert(error);
            }
            Ok(Err(error)) => {
                if first_error.is_none() {
                    // Stop the other partitions: the stream is retried as a whole.
                    tasks.abort_all();
                    first_error = Some(error);
                }
            }
            Err(join_error) if join_error.is_cancelled() => {}
            Err(join_error) => {
                first_error.get_or_insert(ArchiveError::Task {
                    stream: topic.to_string(),
                    message: join_error.to_string(),
                });
            }
        }
    }
    match first_error.or(corrupt) {
        Some(error) => Err(error),
        None => Ok(summary),
    }
}

fn writer_properties(options: &ArchiveOptions) -> Result<WriterProperties, ArchiveError> {
    let level = ZstdLevel::try_new(options.zstd_level).map_err(|source| ArchiveError::Parquet {
        path: String::new(),
        source,
    })?;
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(options.row_group_rows))
        .set_created_by(format!("runnel {}", env!("CARGO_PKG_VERSION")))
        .build())
}

/// The declared fields as the manifest records them.
fn manifest_fields(schema: &StreamSchema) -> Vec<ManifestField> {
    schema
        .declared()
        .fields()
        .iter()
        .map(|field| ManifestField {
            name: field.name().clone(),
            data_type: field.data_type().to_string(),
        })
        .collect()
}

/// Loads the manifest, adopts files written just before a crash and deletes other files the
/// manifest does not name. Returns the manifest and how many files were adopted.
async fn recover(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    schema: &StreamSchema,
    log_starts: &[u64],
) -> Result<(Manifest, u64), ArchiveError> {
    let stream = schema.name();
    let fields = manifest_fields(schema);
    let mut manifest = match load_manifest(store.as_ref(), prefix, stream).await? {
        Some(manifest) => {
            if manifest.fields != fields {
                return Err(ArchiveError::ManifestInvalid {
                    stream: stream.to_string(),
                    message: format!(
                        "the history was written with fields {:?}, but the stream now declares \
                         {:?}; schema changes are not supported yet",
                        manifest.fields, fields
                    ),
                });
            }
            manifest
        }
        None => Manifest::empty(stream, fields),
    };
    let known: HashSet<String> = manifest
        .files
        .iter()
        .map(|file| file.path.clone())
        .collect();
    let dir = stream_dir(prefix, stream);
    let mut orphans: Vec<(u32, u64, object_store::ObjectMeta)> = Vec::new();
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|source| ArchiveError::store("list", &dir, source))?;
    for meta in listed {
        let path = meta.location.to_string();
        if !path.ends_with(".parquet") || known.contains(&path) {
            continue;
        }
        match parse_file_name(&meta.location) {
            Some((partition, first)) => orphans.push((partition, first, meta)),
            None => warn!(%path, "a .parquet file that the archiver did not name; left alone"),
        }
    }
    orphans.sort_by_key(|(partition, first, _)| (*partition, *first));
    let mut adopted = 0;
    for (partition, first, meta) in orphans {
        let expected = manifest
            .next_offset(partition)
            .or_else(|| log_starts.get(partition as usize).copied());
        if Some(first) == expected {
            let entry = read_file_entry(store, &meta).await?;
            info!(path = %meta.location, "adopting a file written before a crash");
            manifest.push(entry)?;
            adopted += 1;
        } else {
            info!(path = %meta.location, "deleting a file the manifest does not name");
            store
                .delete(&meta.location)
                .await
                .map_err(|source| ArchiveError::store("delete", &meta.location, source))?;
        }
    }
    if adopted > 0 {
        save_manifest(store.as_ref(), prefix, &mut manifest).await?;
    }
    Ok((manifest, adopted))
}

/// `(partition, first_offset)` from `.../<partition>-<first>-<last>.parquet`.
fn parse_file_name(path: &Path) -> Option<(u32, u64)> {
    let name = path.filename()?.strip_suffix(".parquet")?;
    let mut parts = name.splitn(3, '-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let _last: u64 = parts.next()?.parse().ok()?;
    Some((partition, first))
}

/// Reads the [`FileEntry`] a file carries in its footer.
async fn read_file_entry(
    store: &Arc<dyn ObjectStore>,
    meta: &object_store::ObjectMeta,
) -> Result<FileEntry, ArchiveError> {
    let path = meta.location.to_string();
    let reader = StoreFile::new(Arc::clone(store), meta.location.clone(), meta.size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|source| ArchiveError::Parquet {
            path: path.clone(),
            source,
        })?;
    let invalid = |message: &str| ArchiveError::FileInvalid {
        path: path.clone(),
        message: message.to_string(),
    };
    let json = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| {
            pairs
                .iter()
                .find(|pair| pair.key == FILE_ENTRY_METADATA_KEY)
        })
        .and_then(|pair| pair.value.clone())
        .ok_or_else(|| invalid("no runnel file entry in the footer"))?;
    let mut entry: FileEntry = serde_json::from_str(&json)
        .map_err(|error| invalid(&format!("footer file entry: {error}")))?;
    if entry.path != path {
        return Err(invalid(&format!("its footer names {}", entry.path)));
    }
    entry.bytes = meta.size;
    Ok(entry)
}

/// Archives one partition.
struct PartitionArchiver {
    shared: Arc<StreamArchive>,
    partition: u32,
    /// The next offset to read; the open file holds everything before it.
    next_offset: u64,
    /// The first offset of the next file: the one after the last finished file. Offsets a
    /// repair skipped between it and the file's first record belong to that file.
    file_start: u64,
    /// Where a caught-up run stops (exclusive).
    end: Option<u64>,
    file: Option<FileBuilder>,
    summary: ArchiveSummary,
    /// The newest flush request answered.
    flushed: u64,
    /// A flush request being answered: its generation and the log's end when it was seen.
    flush_target: Option<(u64, u64)>,
}

impl PartitionArchiver {
    /// Archives until the end (caught-up runs) or shutdown; a corrupt log stops a caught-up
    /// run and makes a service's run wait for a repair.
    async fn run(
        mut self,
        shutdown: Option<CancellationToken>,
    ) -> Result<ArchiveSummary, ArchiveError> {
        let stream = self.shared.schema.name().to_string();
        self.shared
            .status
            .archiving(&stream, self.partition, self.next_offset);
        loop {
            let error = match self.archive(shutdown.as_ref()).await {
                Ok(summary) => return Ok(summary),
                Err(error @ ArchiveError::CorruptLog { .. }) => error,
                Err(error) => return Err(error),
            };
            let Some(shutdown) = &shutdown else {
                error!(%error, "archiving stopped at a corrupt range of the log");
                return Err(error);
            };
            self.report_corrupt(&error);
            if !self.wait_until_readable(shutdown).await? {
                return Ok(self.summary);
            }
            self.shared
                .status
                .archiving(&stream, self.partition, self.next_offset);
            info!(
                offset = self.next_offset,
                "the log reads again at the corrupt offset; archiving resumes"
            );
        }
    }

    /// Records a corrupt range in the status, and logs it at ERROR the first time.
    fn report_corrupt(&self, error: &ArchiveError) {
        let ArchiveError::CorruptLog { source, offset, .. } = error else {
            return;
        };
        let (path, position) = match source.as_ref() {
            LogError::Corrupt { path, position, .. } => {
                (Some(path.display().to_string()), Some(*position))
            }
            _ => (None, None),
        };
        let stream = self.shared.schema.name();
        let corrupt = CorruptRange {
            offset: *offset,
            path,
            position,
            error: source.to_string(),
            repair: repair_commands(stream, self.partition, *offset),
            since_ms: now_millis(),
            rechecks: 0,
        };
        if self.shared.status.corrupt(stream, self.partition, corrupt) {
            error!(
                %error,
                offset,
                repair = %repair_commands(stream, self.partition, *offset),
                "archiving of the partition stopped at a corrupt range of the log; it waits for a repair while the other partitions go on"
            );
        }
    }

    /// Waits until the partition reads at `next_offset` again, looking every poll interval
    /// (at least every [`MIN_CORRUPT_RECHECK`]); `false` if `shutdown` came first.
    async fn wait_until_readable(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<bool, ArchiveError> {
        let recheck = self.shared.options.poll_interval.max(MIN_CORRUPT_RECHECK);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep(recheck) => {}
            }
            match probe(&self.shared, self.partition, self.next_offset).await {
                Ok(()) => return Ok(true),
                Err(error @ ArchiveError::CorruptLog { .. }) => self.report_corrupt(&error),
                Err(error) => return Err(error),
            }
        }
    }

    /// The error of a log read at `offset`: [`ArchiveError::CorruptLog`] for corruption.
    fn log_error(&self, source: LogError, offset: u64) -> ArchiveError {
        log_error(self.shared.schema.name(), self.partition, offset, source)
    }

    /// Archives from `next_offset` until the end (caught-up runs) or shutdown.
    async fn archive(
        &mut self,
        shutdown: Option<&CancellationToken>,
    ) -> Result<ArchiveSummary, ArchiveError> {
        let mut reader = open_reader(&self.shared, self.partition, self.next_offset).await?;
        debug!(from = self.next_offset, end = ?self.end, "archiving");
        let mut log_end_read: Option<tokio::time::Instant> = None;
        loop {
            if log_end_read.is_none_or(|read| read.elapsed() >= LOG_END_INTERVAL) {
                log_end_read = Some(tokio::time::Instant::now());
                report_log_end(&self.shared, self.partition).await;
            }
            self.answer_flush().await?;
            let max = match self.end {
                Some(end) if self.next_offset >= end => {
                    if let Some(file) = self.file.take() {
                        self.finish(file).await?;
                    }
                    return Ok(self.summary);
                }
                Some(end) => usize::try_from(end - self.next_offset)
                    .unwrap_or(usize::MAX)
                    .min(READ_BATCH_RECORDS),
                None => READ_BATCH_RECORDS,
            };
            let wait = self.shared.options.poll_interval;
            let records = match shutdown {
                Some(token) => tokio::select! {
                    () = token.cancelled() => return Ok(self.summary),
                    read = reader.next_batch(max, wait) => read,
                },
                None => reader.next_batch(max, wait).await,
            }
            .map_err(|source| self.log_error(source, reader.position()))?;
            if records.is_empty() {
                // Offsets a repair skipped at the end of what is there.
                self.next_offset = self.next_offset.max(reader.position());
                let aged = self.file.as_ref().is_some_and(|file| {
                    file.first_ingest_time + age_millis(&self.shared.options) <= now_millis()
                });
                if aged && let Some(file) = self.file.take() {
                    self.finish(file).await?;
                }
                continue;
            }
            self.absorb(&records).await?;
            self.next_offset = self.next_offset.max(reader.position());
        }
    }

    /// Answers a flush request ([`ArchiverStatus::request_flush`]): once the partition has
    /// read to the log's end as it was when the request was seen, the open file is finished
    /// (rolled early) and the request answered.
    async fn answer_flush(&mut self) -> Result<(), ArchiveError> {
        if self.flush_target.is_none()
            && let Some(generation) = self.shared.status.flush_wanted(self.flushed)
        {
            let topic = self.shared.schema.name();
            let end = self
                .shared
                .log
                .latest_offset(topic, self.partition)
                .await
                .map_err(|source| ArchiveError::log(topic, source))?;
            self.flush_target = Some((generation, end));
        }
        let Some((generation, end)) = self.flush_target else {
            return Ok(());
        };
        if self.next_offset < end {
            return Ok(());
        }
        if let Some(file) = self.file.take() {
            self.finish(file).await?;
        }
        self.flush_target = None;
        self.flushed = generation;
        self.shared
            .status
            .flushed(self.shared.schema.name(), self.partition, generation);
        debug!(generation, end, "flushed");
        Ok(())
    }

    /// Adds `records` to the open file, rolling files where the rules say.
    async fn absorb(&mut self, records: &[Record]) -> Result<(), ArchiveError> {
        let target = self.shared.options.target_file_bytes;
        let max_age = age_millis(&self.shared.options);
        let mut run_start = 0;
        for (index, record) in records.iter().enumerate() {
            let cut_before = self.file.as_ref().is_some_and(|file| {
                record.timestamp - file.first_ingest_time >= max_age
                    || utc_day(record.timestamp) != file.day
            });
            if cut_before {
                self.add_run(&records[run_start..index]).await?;
                run_start = index;
                if let Some(file) = self.file.take() {
                    self.finish(file).await?;
                }
            }
            let file = match &mut self.file {
                Some(file) => file,
                None => self.file.insert(FileBuilder::new(
                    &self.shared,
                    self.partition,
                    self.file_start,
                    record,
                )?),
            };
            file.note(record);
            if file.raw_bytes >= target {
                self.add_run(&records[run_start..=index]).await?;
                run_start = index + 1;
                if let Some(file) = self.file.take() {
                    self.finish(file).await?;
                }
            }
        }
        self.add_run(&records[run_start..]).await?;
        if let Some(last) = records.last() {
            self.next_offset = last.offset + 1;
        }
        Ok(())
    }

    /// Decodes a run of records already noted in the open file and writes its rows.
    async fn add_run(&mut self, records: &[Record]) -> Result<(), ArchiveError> {
        if records.is_empty() {
            return Ok(());
        }
        let decoded = self.shared.decoder.decode(records)?;
        if !decoded.undecodable.is_empty() {
            self.dead_letter(records, &decoded.undecodable).await?;
            self.summary.undecodable += decoded.undecodable.len() as u64;
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        file.write(&self.shared, decoded.batch)
    }

    async fn dead_letter(
        &mut self,
        records: &[Record],
        undecodable: &[runnel_events::decode::Undecodable],
    ) -> Result<(), ArchiveError> {
        let topic = runnel_events::dead_letter_topic(self.shared.schema.name());
        let first = records.first().map_or(0, |record| record.offset);
        let mut produce = Vec::with_capacity(undecodable.len());
        for bad in undecodable {
            let Some(record) = usize::try_from(bad.offset - first)
                .ok()
                .and_then(|index| records.get(index))
            else {
                continue;
            };
            warn!(offset = bad.offset, reason = %bad.reason, "undecodable record sent to the dead-letter topic");
            let header = |key: &str, value: String| Header {
                key: key.to_string(),
                value: Bytes::from(value),
            };
            produce.push(ProduceRecord {
                key: record.key.clone(),
                value: record.value.clone(),
                timestamp: record.timestamp,
                headers: vec![
                    header("runnel-source-partition", self.partition.to_string()),
                    header("runnel-source-offset", bad.offset.to_string()),
                    header("runnel-reason", bad.reason.clone()),
                ],
                partition: Some(0),
            });
        }
        let log = &self.shared.log;
        if let Err(LogError::UnknownTopic(_)) = log.partition_count(&topic).await {
            log.ensure_topic(&topic, 1)
                .await
                .map_err(|source| ArchiveError::log(&topic, source))?;
        }
        log.append(&topic, produce)
            .await
            .map_err(|source| ArchiveError::log(&topic, source))?;
        Ok(())
    }

    /// Writes a finished file, then the manifest naming it, then the retention hold.
    async fn finish(&mut self, file: FileBuilder) -> Result<(), ArchiveError> {
        let shared = Arc::clone(&self.shared);
        let (bytes, entry) = file.close(&shared)?;
        let path = Path::from(entry.path.as_str());
        shared
            .store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|source| ArchiveError::store("write", &path, source))?;
        let next = entry.next_offset();
        let (rows, bytes) = (entry.rows, entry.bytes);
        self.file_start = next;
        {
            let mut manifest = shared.manifest.lock().await;
            manifest.push(entry)?;
            save_manifest(shared.store.as_ref(), &shared.options.prefix, &mut manifest).await?;
        }
        let topic = shared.schema.name();
        shared
            .log
            .commit_offsets(ARCHIVER_GROUP, topic, &[(self.partition, next)])
            .await
            .map_err(|source| ArchiveError::log(topic, source))?;
        debug!(%path, rows, "archived");
        shared
            .status
            .archived(topic, self.partition, rows, bytes, next);
        self.summary.files += 1;
        self.summary.rows += rows;
        Ok(())
    }
}

/// One Parquet file being written, in memory.
struct FileBuilder {
    writer: ArrowWriter<Vec<u8>>,
    /// Rows not yet handed to the writer (fewer than [`WRITE_CHUNK_ROWS`] after each write).
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    partition: u32,
    /// UTC day number (days since the epoch) of the first record's ingest time.
    day: i64,
    first_offset: u64,
    last_offset: u64,
    first_ingest_time: i64,
    last_ingest_time: i64,
    raw_bytes: u64,
    rows: u64,
    event_time: Option<(i64, i64)>,
}

impl FileBuilder {
    /// A file of `partition` from offset `first_offset` (at most `first`'s: the offsets
    /// before it were skipped by a repair), whose first record is `first`.
    fn new(
        shared: &StreamArchive,
        partition: u32,
        first_offset: u64,
        first: &Record,
    ) -> Result<Self, ArchiveError> {
        debug_assert!(first_offset <= first.offset);
        let writer = ArrowWriter::try_new(
            Vec::new(),
            Arc::clone(shared.schema.with_position()),
            Some(shared.props.clone()),
        )
        .map_err(|source| ArchiveError::Parquet {
            path: format!("(new file of partition {partition})"),
            source,
        })?;
        Ok(Self {
            writer,
            pending: Vec::new(),
            pending_rows: 0,
            partition,
            day: utc_day(first.timestamp),
            first_offset,
            last_offset: first.offset,
            first_ingest_time: first.timestamp,
            last_ingest_time: first.timestamp,
            raw_bytes: 0,
            rows: 0,
            event_time: None,
        })
    }

    /// Counts a record into the file's range and size (its row comes with [`Self::write`]).
    fn note(&mut self, record: &Record) {
        self.last_offset = record.offset;
        self.last_ingest_time = record.timestamp;
        self.raw_bytes += record.value.len() as u64;
    }

    fn path(&self, prefix: &str, stream: &str) -> String {
        format!(
            "{prefix}/{stream}/date={}/{}-{}-{}.parquet",
            utc_date(self.first_ingest_time),
            self.partition,
            self.first_offset,
            self.last_offset
        )
    }

    fn write(&mut self, shared: &StreamArchive, batch: RecordBatch) -> Result<(), ArchiveError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some((min, max)) = event_time_range(&shared.schema, &batch) {
            self.event_time = Some(match self.event_time {
                Some((low, high)) => (low.min(min), high.max(max)),
                None => (min, max),
            });
        }
        self.rows += batch.num_rows() as u64;
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= WRITE_CHUNK_ROWS {
            self.write_pending(shared, false)?;
        }
        Ok(())
    }

    /// Hands whole chunks (and with `all`, the remainder) to the writer.
    fn write_pending(&mut self, shared: &StreamArchive, all: bool) -> Result<(), ArchiveError> {
        let arrow_error = |source| ArchiveError::Arrow {
            stream: shared.schema.name().to_string(),
            source,
        };
        let path = self.path(&shared.options.prefix, shared.schema.name());
        let parquet_error = |source| ArchiveError::Parquet {
            path: path.clone(),
            source,
        };
        let joined = arrow::compute::concat_batches(shared.schema.with_position(), &self.pending)
            .map_err(arrow_error)?;
        let mut start = 0;
        while joined.num_rows() - start >= WRITE_CHUNK_ROWS {
            self.writer
                .write(&joined.slice(start, WRITE_CHUNK_ROWS))
                .map_err(parquet_error)?;
            start += WRITE_CHUNK_ROWS;
        }
        let rest = joined.num_rows() - start;
        if all && rest > 0 {
            self.writer
                .write(&joined.slice(start, rest))
                .map_err(parquet_error)?;
            start += rest;
        }
        self.pending.clear();
        self.pending_rows = joined.num_rows() - start;
        if self.pending_rows > 0 {
            self.pending.push(joined.slice(start, self.pending_rows));
        }
        Ok(())
    }

    /// Finishes the file: its bytes and its manifest entry.
    fn close(mut self, shared: &StreamArchive) -> Result<(Vec<u8>, FileEntry), ArchiveError> {
        self.write_pending(shared, true)?;
        let path = self.path(&shared.options.prefix, shared.schema.name());
        let mut entry = FileEntry {
            path: path.clone(),
            partition: self.partition,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            rows: self.rows,
            bytes: 0,
            min_event_time: self.event_time.map(|(min, _)| min),
            max_event_time: self.event_time.map(|(_, max)| max),
            min_ingest_time: self.first_ingest_time,
            max_ingest_time: self.last_ingest_time,
        };
        let json = serde_json::to_string(&entry).map_err(|error| ArchiveError::FileInvalid {
            path: path.clone(),
            message: format!("serialize the file entry: {error}"),
        })?;
        self.writer
            .append_key_value_metadata(KeyValue::new(FILE_ENTRY_METADATA_KEY.to_string(), json));
        let bytes = self
            .writer
            .into_inner()
            .map_err(|source| ArchiveError::Parquet {
                path: path.clone(),
                source,
            })?;
        entry.bytes = bytes.len() as u64;
        Ok((bytes, entry))
    }
}

/// Reads `partition`'s end offset into the status, for its lag; a failure only leaves the
/// last one there.
async fn report_log_end(shared: &StreamArchive, partition: u32) {
    let stream = shared.schema.name();
    match shared.log.latest_offset(stream, partition).await {
        Ok(end) => shared.status.log_end(stream, partition, end),
        Err(error) => debug!(%error, "could not read the log's end offset"),
    }
}

/// The error of a log read of `stream`'s `partition` at `offset`:
/// [`ArchiveError::CorruptLog`] for corruption.
fn log_error(stream: &str, partition: u32, offset: u64, source: LogError) -> ArchiveError {
    match source {
        LogError::Corrupt { .. } => ArchiveError::CorruptLog {
            stream: stream.to_string(),
            partition,
            offset,
            source: Box::new(source),
        },
        source => ArchiveError::log(stream, source),
    }
}

/// A reader of `partition` at `offset`.
async fn open_reader(
    shared: &StreamArchive,
    partition: u32,
    offset: u64,
) -> Result<Box<dyn runnel_log::PartitionReader>, ArchiveError> {
    let topic = shared.schema.name();
    match shared
        .log
        .reader(topic, partition, StartOffset::At(offset))
        .await
    {
        Ok(reader) => Ok(reader),
        Err(LogError::OffsetOutOfRange { .. }) => {
            let log_earliest = shared
                .log
                .earliest_offset(topic, partition)
                .await
                .map_err(|source| ArchiveError::log(topic, source))?;
            Err(ArchiveError::HistoryGap {
                stream: topic.to_string(),
                partition,
                archived_until: offset,
                log_earliest,
            })
        }
        Err(source) => Err(log_error(topic, partition, offset, source)),
    }
}

/// Reads one record of `partition` at `offset` (or learns there is none yet).
async fn probe(shared: &StreamArchive, partition: u32, offset: u64) -> Result<(), ArchiveError> {
    let mut reader = open_reader(shared, partition, offset).await?;
    reader
        .next_batch(1, Duration::ZERO)
        .await
        .map_err(|source| log_error(shared.schema.name(), partition, offset, source))?;
    Ok(())
}

/// What an operator runs to recover a partition stopped at `offset`.
fn repair_commands(stream: &str, partition: u32, offset: u64) -> String {
    format!(
        "runnel log check --topic {stream} --partition {partition}; then, with the process that writes {stream}/{partition} stopped: runnel log repair --topic {stream} --partition {partition} --skip-range {offset}-<last bad offset> --yes"
    )
}

fn age_millis(options: &ArchiveOptions) -> i64 {
    i64::try_from(options.max_file_age.as_millis()).unwrap_or(i64::MAX)
}

/// Days since the epoch of an epoch-milliseconds instant, in UTC.
fn utc_day(millis: i64) -> i64 {
    millis.div_euclid(86_400_000)
}

/// `YYYY-MM-DD` of an epoch-milliseconds instant, in UTC.
fn utc_date(millis: i64) -> String {
    match arrow::temporal_conversions::timestamp_ms_to_datetime(millis) {
        Some(datetime) => datetime.format("%Y-%m-%d").to_string(),
        None => "invalid".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_parse_back() {
        let path = Path::from("history/clicks/date=2026-11-22/3-100-199.parquet");
        assert_eq!(parse_file_name(&path), Some((3, 100)));
        assert_eq!(parse_file_name(&Path::from("h/s/x.parquet")), None);
        assert_eq!(parse_file_name(&Path::from("h/s/1-2.parquet")), None);
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(1_763_769_599_999), "2025-11-21");
        assert_eq!(utc_date(1_763_769_600_000), "2025-11-22");
    }
}
