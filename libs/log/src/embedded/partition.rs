//! A partition: its segments, crash recovery on open, and the writer thread.
//!
//! One writer thread per partition owns the active segment's write handle. Appends queue
//! on a channel; the thread takes everything queued, writes it with one `write`, fsyncs once
//! (group commit), publishes the new durable end and only then acknowledges. Readers see
//! durable records only, and wait on a `watch` of the high watermark rather than polling.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use runnel_config::EmbeddedLogConfig;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::format::{self, IndexEntry};
use super::segment::{FrameCursor, Segment, is_torn_tail, scan_segment, segment_paths, sync_dir};
use crate::{LogError, ProduceRecord};

/// The most bytes of records one group commit writes.
const MAX_GROUP_COMMIT_BYTES: usize = 32 << 20;

/// State of a partition shared by its writer thread, its readers and the log.
#[derive(Debug)]
pub(crate) struct PartitionShared {
    pub(crate) topic: Arc<str>,
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    /// Ordered by base offset; the last one is the active segment.
    /// Invariant: never empty, and each segment's base is the previous one's next offset.
    pub(crate) segments: RwLock<Vec<Arc<Segment>>>,
    /// The offset after the last durable record.
    pub(crate) high_watermark: watch::Sender<u64>,
    /// Retention deletes no segment holding this offset or a later one: the smallest offset
    /// committed by the consumer groups that hold retention (`retention-holds`) on this
    /// partition; `u64::MAX` when none has committed.
    pub(crate) retention_floor: std::sync::atomic::AtomicU64,
}

impl PartitionShared {
    pub(crate) fn earliest_offset(&self) -> u64 {
        self.segments
            .read()
            .expect("segments lock is never poisoned")[0]
            .base_offset
    }

    pub(crate) fn latest_offset(&self) -> u64 {
        *self.high_watermark.borrow()
    }

    /// Returns the segment holding `offset` (the active one if `offset` is the next to be written).
    pub(crate) fn segment_for(&self, offset: u64) -> Result<Arc<Segment>, LogError> {
        let segments = self
            .segments
            .read()
            .expect("segments lock is never poisoned");
        let latest = self.latest_offset();
        let earliest = segments[0].base_offset;
        if offset < earliest || offset > latest {
            return Err(self.out_of_range(offset, earliest, latest));
        }
        let idx = segments.partition_point(|segment| segment.base_offset <= offset);
        Ok(Arc::clone(&segments[idx - 1]))
    }

    /// Returns the segment that starts at `base_offset`, if there is one.
    pub(crate) fn segment_starting_at(&self, base_offset: u64) -> Option<Arc<Segment>> {
        let segments = self
            .segments
            .read()
            .expect("segments lock is never poisoned");
        segments
            .iter()
            .find(|segment| segment.base_offset == base_offset)
            .cloned()
    }

    pub(crate) fn out_of_range(&self, offset: u64, earliest: u64, latest: u64) -> LogError {
        LogError::OffsetOutOfRange {
            topic: self.topic.to_string(),
            partition: self.id,
            offset,
            earliest,
            latest,
        }
    }

    /// Returns the first offset whose record has a timestamp at or after `timestamp`.
    pub(crate) fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>, LogError> {
        let segments: Vec<Arc<Segment>> = self
            .segments
            .read()
            .expect("segments lock is never poisoned")
            .clone();
        for segment in segments {
            if segment.max_timestamp.load(Ordering::Acquire) < timestamp {
                continue;
            }
            let mut cursor = FrameCursor::default();
            let mut position = segment.position_for_timestamp(timestamp);
            let limit = segment.durable_size();
            while let Some((frame, _)) = cursor
                .frame_at(&segment.file, position, limit)
                .map_err(|error| error.into_corrupt(&segment.log_path))?
            {
                if frame.timestamp >= timestamp {
                    return Ok(Some(frame.offset));
                }
                position += frame.frame_len as u64;
            }
        }
        Ok(None)
    }
}

/// A request to the writer thread.
pub(crate) enum Command {
    /// Append these records; reply with the offset of the first.
    Append {
        records: Vec<ProduceRecord>,
        reply: oneshot::Sender<Result<u64, LogError>>,
    },
    /// Apply retention now; reply with the number of segments deleted.
    EnforceRetention {
        reply: oneshot::Sender<Result<usize, LogError>>,
    },
}

/// A partition as the log holds it: the shared state and the writer's channel.
///
/// Each partition has its own writer thread: simple, and fine for tens of partitions; a
/// log with thousands would want a shared pool of writers.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) shared: Arc<PartitionShared>,
    commands: Mutex<Option<Sender<Command>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Partition {
    /// Opens (recovering) or creates the partition in `dir`, and starts its writer thread.
    pub(crate) fn open(
        topic: Arc<str>,
        id: u32,
        dir: PathBuf,
        config: &EmbeddedLogConfig,
    ) -> Result<Partition, LogError> {
        std::fs::create_dir_all(&dir).map_err(LogError::io("create partition folder", &dir))?;
        let (segments, write_file) = recover_segments(&dir, config)?;
        let active = Arc::clone(
            segments
                .last()
                .expect("recovery returns at least one segment"),
        );
        let (high_watermark, _) = watch::channel(active.next_offset());
        let shared = Arc::new(PartitionShared {
            topic,
            id,
            dir,
            segments: RwLock::new(segments),
            high_watermark,
            retention_floor: std::sync::atomic::AtomicU64::new(u64::MAX),
        });
        let (sender, receiver) = std::sync::mpsc::channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            config: config.clone(),
            file: write_file,
            size: active.durable_size(),
            next_offset: active.next_offset(),
            max_timestamp: active.max_timestamp.load(Ordering::Acquire),
            bytes_since_index: if active.durable_size() == 0 {
                u64::MAX
            } else {
                0
            },
            active,
            poisoned: None,
            buf: Vec::new(),
            last_retention: Instant::now(),
        };
        let thread_name = format!("log-{}-{}", shared.topic, id);
        let writer_thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || writer.run(receiver))
            .map_err(LogError::io("spawn writer thread for", &shared.dir))?;
        Ok(Partition {
            shared,
            commands: Mutex::new(Some(sender)),
            writer_thread: Mutex::new(Some(writer_thread)),
        })
    }

    pub(crate) fn send(&self, command: Command) -> Result<(), LogError> {
        let commands = self
            .commands
            .lock()
            .expect("commands lock is never poisoned");
        match commands.as_ref() {
            Some(sender) => sender.send(command).map_err(|_| LogError::Closed),
            None => Err(LogError::Closed),
        }
    }

    /// Stops the writer thread after it has handled what is queued, and waits for it.
    pub(crate) fn close(&self) {
        drop(
            self.commands
                .lock()
                .expect("commands lock is never poisoned")
                .take(),
        );
        let handle = self
            .writer_thread
            .lock()
            .expect("writer_thread lock is never poisoned")
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            warn!(topic = %self.shared.topic, partition = self.shared.id, "log writer thread panicked");
        }
    }
}

/// Lists the segment base offsets in `dir`, sorted, removing leftover temporary files.
fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(LogError::io("list partition folder", dir))?;
    for entry in entries {
        let entry = entry.map_err(LogError::io("list partition folder", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".tmp") {
            std::fs::remove_file(entry.path())
                .map_err(LogError::io("remove leftover temporary file", entry.path()))?;
        } else if let Some(stem) = name.strip_suffix(".log") {
            let base = stem.parse::<u64>().map_err(|_| LogError::Corrupt {
                path: entry.path(),
                position: 0,
                reason: "segment file name is not a base offset".to_string(),
            })?;
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn open_segment_file(path: &Path) -> Result<File, LogError> {
    File::open(path).map_err(LogError::io("open segment", path))
}

/// Opens a segment for reading and returns its length.
fn open_segment_with_len(path: &Path) -> Result<(File, u64), LogError> {
    let file = open_segment_file(path)?;
    let len = file
        .metadata()
        .map_err(LogError::io("stat segment", path))?
        .len();
    Ok((file, len))
}

/// Opens every segment of a partition: sealed ones through their index (rebuilt if missing
/// or inconsistent), the active one by a full scan that truncates a torn tail.
fn recover_segments(
    dir: &Path,
    config: &EmbeddedLogConfig,
) -> Result<(Vec<Arc<Segment>>, File), LogError> {
    let mut bases = list_segments(dir)?;
    if bases.is_empty() {
        let (log_path, _) = segment_paths(dir, 0);
        File::create(&log_path).map_err(LogError::io("create segment", &log_path))?;
        sync_dir(dir)?;
        bases.push(0);
    }
    let mut segments = Vec::with_capacity(bases.len());
    for (idx, base) in bases.iter().copied().enumerate() {
        let next_base = bases.get(idx + 1).copied();
        let segment = match next_base {
            Some(next_base) => open_sealed_segment(dir, base, next_base, config)?,
            None => open_active_segment(dir, base, config)?,
        };
        segments.push(Arc::new(segment));
    }
    let active = segments.last().expect("at least one segment");
    let write_file = OpenOptions::new()
        .write(true)
        .open(&active.log_path)
        .map_err(LogError::io("open segment for append", &active.log_path))?;
    Ok((segments, write_file))
}

/// What is known of a segment's contents when it is opened.
struct SegmentContents {
    size: u64,
    next_offset: u64,
    max_timestamp: i64,
    index: Vec<IndexEntry>,
}

fn new_segment(
    base_offset: u64,
    (log_path, index_path): (PathBuf, PathBuf),
    file: File,
    contents: SegmentContents,
) -> Segment {
    Segment {
        base_offset,
        log_path,
        index_path,
        file,
        durable_size: contents.size.into(),
        next_offset: contents.next_offset.into(),
        max_timestamp: contents.max_timestamp.into(),
        index: RwLock::new(contents.index),
    }
}

fn open_sealed_segment(
    dir: &Path,
    base: u64,
    next_base: u64,
    config: &EmbeddedLogConfig,
) -> Result<Segment, LogError> {
    let (log_path, index_path) = segment_paths(dir, base);
    let (file, file_len) = open_segment_with_len(&log_path)?;
    let loaded = std::fs::read(&index_path)
        .ok()
        .and_then(|bytes| IndexEntry::decode_all(&bytes))
        .and_then(|mut entries| {
            let sentinel = entries.pop()?;
            let consistent = u64::from(sentinel.position) == file_len
                && base + u64::from(sentinel.relative_offset) == next_base
                && entries.windows(2).all(|pair| {
                    pair[0].relative_offset < pair[1].relative_offset
                        && pair[0].position < pair[1].position
                        && pair[0].max_timestamp_before <= pair[1].max_timestamp_before
                })
                && entries
                    .last()
                    .is_none_or(|last| last.position < sentinel.position);
            consistent.then_some((entries, sentinel.max_timestamp_before))
        });
    if let Some((entries, max_timestamp)) = loaded {
        return Ok(new_segment(
            base,
            (log_path, index_path),
            file,
            SegmentContents {
                size: file_len,
                next_offset: next_base,
                max_timestamp,
                index: entries,
            },
        ));
    }
    warn!(path = %log_path.display(), "segment index missing or inconsistent, rebuilding it");
    let scan = scan_segment(
        &file,
        &log_path,
        base,
        file_len,
        config.index_interval_bytes,
    )?;
    if let Some(error) = scan.stopped_by {
        // A sealed segment was fsynced whole before the next one was created.
        return Err(error.into_corrupt(&log_path));
    }
    if scan.next_offset != next_base {
        return Err(LogError::Corrupt {
            path: log_path,
            position: scan.valid_size,
            reason: format!(
                "segment ends at offset {} but the next segment starts at {next_base}",
                scan.next_offset
            ),
        });
    }
    let segment = new_segment(
        base,
        (log_path, index_path),
        file,
        SegmentContents {
            size: file_len,
            next_offset: scan.next_offset,
            max_timestamp: scan.max_timestamp,
            index: scan.index,
        },
    );
    segment.write_sealed_index()?;
    Ok(segment)
}

fn open_active_segment(
    dir: &Path,
    base: u64,
    config: &EmbeddedLogConfig,
) -> Result<Segment, LogError> {
    let (log_path, index_path) = segment_paths(dir, base);
    let (file, file_len) = open_segment_with_len(&log_path)?;
    let scan = scan_segment(
        &file,
        &log_path,
        base,
        file_len,
        config.index_interval_bytes,
    )?;
    if let Some(error) = scan.stopped_by {
        let torn = is_torn_tail(&file, &error, file_len)
            .map_err(LogError::io("read segment", &log_path))?;
        if !torn {
            return Err(error.into_corrupt(&log_path));
        }
        warn!(
            path = %log_path.display(),
            position = scan.valid_size,
            dropped_bytes = file_len - scan.valid_size,
            next_offset = scan.next_offset,
            "truncating torn tail of an unacknowledged append"
        );
        let write_handle = OpenOptions::new()
            .write(true)
            .open(&log_path)
            .map_err(LogError::io("open segment for truncation", &log_path))?;
        write_handle
            .set_len(scan.valid_size)
            .map_err(LogError::io("truncate torn tail of", &log_path))?;
        write_handle
            .sync_all()
            .map_err(LogError::io("fsync", &log_path))?;
    }
    // The active segment's index lives in memory; a stale file from before a crash goes.
    if let Err(error) = std::fs::remove_file(&index_path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        return Err(LogError::io("remove stale index", &index_path)(error));
    }
    Ok(new_segment(
        base,
        (log_path, index_path),
        file,
        SegmentContents {
            size: scan.valid_size,
            next_offset: scan.next_offset,
            max_timestamp: scan.max_timestamp,
            index: scan.index,
        },
    ))
}

/// The writer thread's state. Invariant: `size`, `next_offset` and `max_timestamp` describe
/// the active segment including bytes written but not yet fsynced.
struct Writer {
    shared: Arc<PartitionShared>,
    config: EmbeddedLogConfig,
    file: File,
    active: Arc<Segment>,
    size: u64,
    next_offset: u64,
    max_timestamp: i64,
    bytes_since_index: u64,
    /// Set after a failed write or fsync; the partition then refuses appends until reopened.
    poisoned: Option<String>,
    buf: Vec<u8>,
    last_retention: Instant,
}

type AppendReply = (u64, oneshot::Sender<Result<u64, LogError>>);
type PendingAppend = (Vec<ProduceRecord>, oneshot::Sender<Result<u64, LogError>>);

impl Writer {
    fn run(mut self, receiver: Receiver<Command>) {
        let mut batch: Vec<PendingAppend> = Vec::new();
        loop {
            let wait = self
                .config
                .retention_check_interval
                .saturating_sub(self.last_retention.elapsed());
            let first = match receiver.recv_timeout(wait) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    self.apply_retention_logged();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut deferred = Vec::new();
            let mut batch_bytes = 0usize;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append { records, reply } => {
                        batch_bytes += records.iter().map(format::frame_size).sum::<usize>();
                        batch.push((records, reply));
                    }
                    other => deferred.push(other),
                }
                if batch_bytes < MAX_GROUP_COMMIT_BYTES {
                    next = receiver.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.append_batch(&mut batch);
            }
            for command in deferred {
                if let Command::EnforceRetention { reply } = command {
                    let _ = reply.send(self.apply_retention());
                }
            }
            if self.last_retention.elapsed() >= self.config.retention_check_interval {
                self.apply_retention_logged();
            }
        }
        // On a clean stop the active segment's index is rebuilt on next open; nothing to flush,
        // since every acknowledged byte is already fsynced.
    }

    fn append_batch(&mut self, batch: &mut Vec<PendingAppend>) {
        if let Some(reason) = &self.poisoned {
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(self.poisoned_error(reason)));
            }
            return;
        }
        let mut replies: Vec<AppendReply> = Vec::with_capacity(batch.len());
        let mut new_index = Vec::new();
        self.buf.clear();
        let mut result = Ok(());
        for (records, reply) in batch.drain(..) {
            let first_offset = self.next_offset;
            for record in &records {
                let frame_len = format::frame_size(record) as u64;
                if self.size > 0 && self.size + frame_len > self.config.segment_bytes {
                    result = self.flush(&mut new_index).and_then(|()| self.roll());
                    if result.is_err() {
                        break;
                    }
                }
                if self.bytes_since_index >= u64::from(self.config.index_interval_bytes) {
                    new_index.push(IndexEntry {
                        relative_offset: (self.next_offset - self.active.base_offset) as u32,
                        position: self.size as u32,
                        max_timestamp_before: self.max_timestamp,
                    });
                    self.bytes_since_index = 0;
                }
                format::encode_frame(&mut self.buf, self.next_offset, record);
                self.bytes_since_index += frame_len;
                self.size += frame_len;
                self.next_offset += 1;
                self.max_timestamp = self.max_timestamp.max(record.timestamp);
            }
            replies.push((first_offset, reply));
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = self.flush(&mut new_index);
        }
        match result {
            Ok(()) => {
                for (first_offset, reply) in replies {
                    let _ = reply.send(Ok(first_offset));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                tracing::error!(
                    topic = %self.shared.topic,
                    partition = self.shared.id,
                    %error,
                    "log append failed; the partition refuses writes until the log is reopened"
                );
                for (_, reply) in replies {
                    let _ = reply.send(Err(self.poisoned_error(&reason)));
                }
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(self.poisoned_error(&reason)));
                }
                self.poisoned = Some(reason);
            }
        }
    }

    fn poisoned_error(&self, reason: &str) -> LogError {
        LogError::Poisoned {
            topic: self.shared.topic.to_string(),
            partition: self.shared.id,
            reason: reason.to_string(),
        }
    }

    /// Writes the buffered frames, fsyncs, then publishes them to readers.
    fn flush(&mut self, new_index: &mut Vec<IndexEntry>) -> Result<(), LogError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let position = self.active.durable_size();
        self.file
            .write_all_at(&self.buf, position)
            .map_err(LogError::io("write segment", &self.active.log_path))?;
        self.file
            .sync_data()
            .map_err(LogError::io("fsync segment", &self.active.log_path))?;
        self.buf.clear();
        self.active
            .index
            .write()
            .expect("index lock is never poisoned")
            .append(new_index);
        self.active
            .max_timestamp
            .store(self.max_timestamp, Ordering::Release);
        self.active
            .next_offset
            .store(self.next_offset, Ordering::Release);
        self.active.durable_size.store(self.size, Ordering::Release);
        self.shared.high_watermark.send_replace(self.next_offset);
        Ok(())
    }

    /// Seals the active segment and starts a new one at the next offset.
    fn roll(&mut self) -> Result<(), LogError> {
        self.active.write_sealed_index()?;
        let (log_path, index_path) = segment_paths(&self.shared.dir, self.next_offset);
        let write_file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&log_path)
            .map_err(LogError::io("create segment", &log_path))?;
        let read_file = open_segment_file(&log_path)?;
        sync_dir(&self.shared.dir)?;
        let segment = Arc::new(new_segment(
            self.next_offset,
            (log_path, index_path),
            read_file,
            SegmentContents {
                size: 0,
                next_offset: self.next_offset,
                max_timestamp: i64::MIN,
                index: Vec::new(),
            },
        ));
        self.shared
            .segments
            .write()
            .expect("segments lock is never poisoned")
            .push(Arc::clone(&segment));
        info!(
            topic = %self.shared.topic,
            partition = self.shared.id,
            base_offset = segment.base_offset,
            "rolled to a new segment"
        );
        self.active = segment;
        self.file = write_file;
        self.size = 0;
        self.max_timestamp = i64::MIN;
        self.bytes_since_index = u64::MAX;
        Ok(())
    }

    fn apply_retention_logged(&mut self) {
        if let Err(error) = self.apply_retention() {
            warn!(topic = %self.shared.topic, partition = self.shared.id, %error, "retention failed");
        }
    }

    /// Deletes the oldest sealed segments while the partition is over its size budget or
    /// they are older than the retention age. The active segment always stays, and so does
    /// every segment from the one holding the retention floor on (records a holding group,
    /// such as the archiver, has not consumed yet).
    fn apply_retention(&mut self) -> Result<usize, LogError> {
        self.last_retention = Instant::now();
        let mut deleted = 0;
        loop {
            let candidate = {
                let segments = self
                    .shared
                    .segments
                    .read()
                    .expect("segments lock is never poisoned");
                if segments.len() < 2 {
                    break;
                }
                let total: u64 = segments.iter().map(|segment| segment.durable_size()).sum();
                let oldest = Arc::clone(&segments[0]);
                let modified = oldest
                    .file
                    .metadata()
                    .and_then(|metadata| metadata.modified())
                    .map_err(LogError::io("stat segment", &oldest.log_path))?;
                let age = SystemTime::now()
                    .duration_since(modified)
                    .unwrap_or(Duration::ZERO);
                let over_size = total > self.config.retention_bytes;
                let too_old = age > self.config.retention_age;
                if !(over_size || too_old) {
                    break;
                }
                let floor = self
                    .shared
                    .retention_floor
                    .load(std::sync::atomic::Ordering::Acquire);
                if oldest.next_offset() > floor {
                    debug!(
                        topic = %self.shared.topic,
                        partition = self.shared.id,
                        base_offset = oldest.base_offset,
                        floor,
                        "retention held back: a holding group has not consumed this segment"
                    );
                    break;
                }
                oldest
            };
            self.shared
                .segments
                .write()
                .expect("segments lock is never poisoned")
                .remove(0);
            for path in [&candidate.log_path, &candidate.index_path] {
                if let Err(error) = std::fs::remove_file(path)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    return Err(LogError::io("delete segment", path)(error));
                }
            }
            info!(
                topic = %self.shared.topic,
                partition = self.shared.id,
                base_offset = candidate.base_offset,
                next_offset = candidate.next_offset(),
                "deleted segment by retention"
            );
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.shared.dir)?;
        }
        Ok(deleted)
    }
}
