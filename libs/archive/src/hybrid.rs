//! The hybrid source: one partition's records from the Parquet history, then from the live
//! log, as Arrow batches of [`StreamSchema::with_position`].
//!
//! The seam is by offset. The history is read file by file in the manifest's order; when
//! the listed files run out the manifest is read again (the archiver may have added files
//! meanwhile), and when it has nothing more the source opens a log reader at the offset after
//! the last archived one. Every offset therefore comes from exactly one side: no gap, no
//! duplicate. If the log no longer holds that offset (retention ran past an archiver that was
//! behind), the source fails with [`ArchiveError::HistoryGap`] rather than skip.
//!
//! Records that the archiver could not decode are in neither the history nor the output;
//! the live side skips them the same way, so both sides yield the same rows.
//!
//! A damaged record on the live side is [`ArchiveError::CorruptLog`], naming the offset
//! (and, from the log, the repair): the source stays there, and a later `next_batch` reads
//! the offset again, so a caller that waits for a repair and retries goes on past it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use futures::StreamExt;
use object_store::ObjectStore;
use runnel_events::StreamSchema;
use runnel_events::decode::EventDecoder;
use runnel_log::{Log, LogError, PartitionReader, StartOffset};
use tracing::{debug, warn};

use crate::ArchiveError;
use crate::manifest::{FileEntry, load_manifest};
use crate::parquet_file::{HistoryBatches, HistoryRead, open_history_file};

/// Where a hybrid source starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HybridStart {
    /// The oldest archived record (or the log's oldest, if nothing is archived).
    Earliest,
    /// This offset: the first row yielded has it (or the next decodable one).
    Offset(u64),
    /// The first archived file whose largest event time is at or after this instant (epoch
    /// milliseconds), found from the manifest without opening files. Everything from that
    /// file's first offset on is yielded, including events before the instant in it or later
    /// (events are not sorted by event time); if no file qualifies, the source starts after
    /// the history, on the log.
    EventTime(i64),
}

/// Which side the source is reading.
enum Phase {
    History {
        /// Files still to read, in offset order.
        files: VecDeque<FileEntry>,
        /// The file being read.
        current: Option<Box<(FileEntry, HistoryBatches)>>,
    },
    Live(Box<dyn PartitionReader>),
}

/// Reads one partition of a stream: its history, then its live log.
pub struct HybridSource {
    store: Arc<dyn ObjectStore>,
    log: Arc<dyn Log>,
    prefix: String,
    schema: StreamSchema,
    decoder: EventDecoder,
    partition: u32,
    batch_rows: usize,
    next_offset: u64,
    phase: Phase,
}

impl std::fmt::Debug for HybridSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridSource")
            .field("stream", &self.schema.name())
            .field("partition", &self.partition)
            .field("next_offset", &self.next_offset)
            .field("live", &self.is_live())
            .finish()
    }
}

impl HybridSource {
    /// Opens a reader of `partition` of `schema`'s stream, with the history under `prefix` in
    /// `store`, yielding batches of at most `batch_rows` rows.
    ///
    /// # Errors
    ///
    /// An unreadable manifest; [`ArchiveError::HistoryGap`] if `start` is an offset before
    /// the history's first one, or if the history ends before the log begins; log failures.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        log: Arc<dyn Log>,
        schema: &StreamSchema,
        partition: u32,
        start: HybridStart,
        batch_rows: usize,
    ) -> Result<Self, ArchiveError> {
        let manifest = load_manifest(store.as_ref(), prefix, schema.name()).await?;
        let files: Vec<FileEntry> = manifest
            .as_ref()
            .map(|manifest| manifest.partition_files(partition).cloned().collect())
            .unwrap_or_default();
        let topic = schema.name();
        let after_history = match files.last() {
            Some(last) => last.next_offset(),
            None => log
                .earliest_offset(topic, partition)
                .await
                .map_err(|source| ArchiveError::log(topic, source))?,
        };
        let start_offset = match start {
            HybridStart::Earliest => files
                .first()
                .map_or(after_history, |first| first.first_offset),
            HybridStart::Offset(offset) => {
                if let Some(first) = files.first()
                    && offset < first.first_offset
                {
                    return Err(ArchiveError::HistoryGap {
                        stream: topic.to_string(),
                        partition,
                        archived_until: offset,
                        log_earliest: first.first_offset,
                    });
                }
                offset
            }
            HybridStart::EventTime(instant) => files
                .iter()
                .find(|file| file.max_event_time.is_none_or(|max| max >= instant))
                .map_or(after_history, |file| file.first_offset),
        };
        let queue: VecDeque<FileEntry> = files
            .into_iter()
            .filter(|file| file.last_offset >= start_offset)
            .collect();
        debug!(
            stream = topic,
            partition,
            start_offset,
            files = queue.len(),
            "hybrid source opened"
        );
        Ok(Self {
            store,
            log,
            prefix: prefix.to_string(),
            schema: schema.clone(),
            decoder: EventDecoder::new(schema),
            partition,
            batch_rows: batch_rows.max(1),
            next_offset: start_offset,
            phase: Phase::History {
                files: queue,
                current: None,
            },
        })
    }

    /// The offset of the next record the source will yield (or skip, if undecodable).
    pub fn position(&self) -> u64 {
        self.next_offset
    }

    /// Whether the source has passed the seam and reads the live log.
    pub fn is_live(&self) -> bool {
        matches!(self.phase, Phase::Live(_))
    }

    /// Returns the next batch, or `None` if the source is on the live log and no record
    /// arrived within `max_wait`. History batches come without waiting.
    ///
    /// Cancel-safe on the live side only: dropping the future while a history file is being
    /// read may lose that read's batch.
    ///
    /// # Errors
    ///
    /// Object-store, Parquet and log failures; a history file whose schema is not the
    /// stream's; [`ArchiveError::HistoryGap`] at the seam.
    pub async fn next_batch(
        &mut self,
        max_wait: Duration,
    ) -> Result<Option<RecordBatch>, ArchiveError> {
        loop {
            match &mut self.phase {
                Phase::History { files, current } => {
                    let Some(reading) = current else {
                        match files.pop_front() {
                            Some(file) => {
                                let stream = open_history_file(
                                    &self.store,
                                    &file,
                                    &HistoryRead::whole(self.batch_rows),
                                )
                                .await?;
                                *current = Some(Box::new((file, stream)));
                            }
                            None => {
                                if !self.extend_history().await? {
                                    self.go_live().await?;
                                }
                            }
                        }
                        continue;
                    };
                    let (file, stream) = &mut **reading;
                    match stream.next().await {
                        Some(read) => {
                            let batch = read.map_err(|source| ArchiveError::Parquet {
                                path: file.path.clone(),
                                source,
                            })?;
                            let batch =
                                rows_from(&self.schema, &mut self.next_offset, &file.path, batch)?;
                            if batch.num_rows() > 0 {
                                return Ok(Some(batch));
                            }
                        }
                        None => {
                            self.next_offset = self.next_offset.max(file.next_offset());
                            *current = None;
                        }
                    }
                }
                Phase::Live(reader) => {
                    let records = match reader.next_batch(self.batch_rows, max_wait).await {
                        Ok(records) => records,
                        Err(source) => return Err(self.log_error(source)),
                    };
                    let Some(last) = records.last() else {
                        return Ok(None);
                    };
                    self.next_offset = last.offset + 1;
                    let decoded = self.decoder.decode(&records)?;
                    for bad in &decoded.undecodable {
                        warn!(
                            partition = bad.partition,
                            offset = bad.offset,
                            reason = %bad.reason,
                            "undecodable record skipped"
                        );
                    }
                    if decoded.batch.num_rows() > 0 {
                        return Ok(Some(decoded.batch));
                    }
                }
            }
        }
    }

    /// Reads the manifest again and queues files that continue the history; returns whether
    /// there were any.
    async fn extend_history(&mut self) -> Result<bool, ArchiveError> {
        let Some(manifest) =
            load_manifest(self.store.as_ref(), &self.prefix, self.schema.name()).await?
        else {
            return Ok(false);
        };
        let more: VecDeque<FileEntry> = manifest
            .partition_files(self.partition)
            .filter(|file| file.last_offset >= self.next_offset)
            .cloned()
            .collect();
        let found = !more.is_empty();
        if let Phase::History { files, .. } = &mut self.phase {
            *files = more;
        }
        Ok(found)
    }

    /// Crosses the seam: a log reader at the next offset.
    async fn go_live(&mut self) -> Result<(), ArchiveError> {
        let topic = self.schema.name();
        match self
            .log
            .reader(topic, self.partition, StartOffset::At(self.next_offset))
            .await
        {
            Ok(reader) => {
                debug!(
                    stream = topic,
                    partition = self.partition,
                    offset = self.next_offset,
                    "hybrid source continues on the live log"
                );
                self.phase = Phase::Live(reader);
                Ok(())
            }
            Err(LogError::OffsetOutOfRange { .. }) => {
                let log_earliest = self
                    .log
                    .earliest_offset(topic, self.partition)
                    .await
                    .map_err(|source| ArchiveError::log(topic, source))?;
                Err(ArchiveError::HistoryGap {
                    stream: topic.to_string(),
                    partition: self.partition,
                    archived_until: self.next_offset,
                    log_earliest,
                })
            }
            Err(source) => Err(self.log_error(source)),
        }
    }

    /// The error of a log read at the source's position.
    fn log_error(&self, source: LogError) -> ArchiveError {
        match source {
            LogError::Corrupt { .. } => ArchiveError::CorruptLog {
                stream: self.schema.name().to_string(),
                partition: self.partition,
                offset: self.next_offset,
                source: Box::new(source),
            },
            source => ArchiveError::log(self.schema.name(), source),
        }
    }
}

/// Drops rows before `next_offset` (the start may fall inside a file), gives the batch the
/// stream's schema (checking the file's columns against it) and moves `next_offset` past it.
fn rows_from(
    schema: &StreamSchema,
    next_offset: &mut u64,
    path: &str,
    batch: RecordBatch,
) -> Result<RecordBatch, ArchiveError> {
    let schema = schema.with_position();
    let invalid = |message: String| ArchiveError::FileInvalid {
        path: path.to_string(),
        message,
    };
    let batch = RecordBatch::try_new(Arc::clone(schema), batch.columns().to_vec())
        .map_err(|error| invalid(format!("columns are not the stream's: {error}")))?;
    let offsets = batch
        .column(schema.fields().len() - 2)
        .as_primitive::<Int64Type>();
    let Some(&last) = offsets.values().last() else {
        return Ok(batch);
    };
    let next = i64::try_from(*next_offset).unwrap_or(i64::MAX);
    let batch = if offsets.values().first().is_some_and(|&first| first < next) {
        let skip = offsets.values().partition_point(|&offset| offset < next);
        batch.slice(skip, batch.num_rows() - skip)
    } else {
        batch
    };
    if let Ok(last) = u64::try_from(last) {
        *next_offset = (*next_offset).max(last + 1);
    }
    Ok(batch)
}
