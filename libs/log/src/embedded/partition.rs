//! A partition: its segments, crash recovery, the writer thread and following another
//! process's writes.
//!
//! One process at a time writes a partition. Its first append takes `writer.lock` (an
//! exclusive `flock`, released when the log closes or the process dies), recovers the files
//! (truncating a torn tail) and starts the writer thread. Appends queue on a channel; the
//! thread takes everything queued, writes it with one `write`, fsyncs once (group commit),
//! publishes the new durable end and only then acknowledges.
//!
//! Publishing has two halves: in process, a `watch` of the high watermark that readers wait
//! on; across processes, the `published` file (`format::Published`), rewritten in place
//! after the fsync. A process that does not write the partition *follows* it: its readers
//! re-read `published` every [`FOLLOW_POLL`] while they wait, and read below the end it
//! names, so they too see durable records only.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use runnel_config::EmbeddedLogConfig;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::RetentionHolds;
use super::check::with_repair_hint;
use super::format::{self, IndexEntry, PUBLISHED_BYTES, Published};
use super::lock::try_lock_file;
use super::segment::{
    FrameCursor, ScanResult, Segment, is_torn_tail, scan_segment, segment_paths, sync_dir,
    write_file_atomically,
};
use crate::{LogError, ProduceRecord};

/// The most bytes of records one group commit writes.
const MAX_GROUP_COMMIT_BYTES: usize = 32 << 20;
/// The writer's durable state for other processes (see `format::Published`).
pub(crate) const PUBLISHED_FILE: &str = "published";
/// Held (`flock`) by the process writing the partition.
pub(crate) const WRITER_LOCK_FILE: &str = "writer.lock";
/// How often a waiting reader of a partition another process writes re-reads `published`.
pub(crate) const FOLLOW_POLL: Duration = Duration::from_millis(5);

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
    /// `Some` while this process does not write the partition: what it follows.
    follower: Mutex<Option<Follower>>,
    /// Whether `follower` is `Some`, readable without the lock.
    following: AtomicBool,
}

/// How a process that does not write a partition learns what its writer made durable.
#[derive(Debug)]
struct Follower {
    published_path: PathBuf,
    /// Opened once it exists (a folder from before `published` files has none until a
    /// writer takes the partition over).
    published_file: Option<File>,
    /// What `published` said when last applied.
    last: Option<Published>,
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

    /// Whether another process (or none) writes this partition, so that readers must
    /// [`PartitionShared::refresh`] to see new records.
    pub(crate) fn is_following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }

    /// Catches up with the writer's `published` file: new records, rolled segments and
    /// segments deleted by retention. Does nothing while this process writes the partition.
    pub(crate) fn refresh(&self) -> Result<(), LogError> {
        if !self.is_following() {
            return Ok(());
        }
        let mut guard = self
            .follower
            .lock()
            .expect("follower lock is never poisoned");
        let Some(follower) = guard.as_mut() else {
            return Ok(());
        };
        // A segment can vanish between reading `published` and opening it (retention);
        // the next `published` no longer names it.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(published) = follower.read()? else {
                return Ok(());
            };
            if follower.last == Some(published) {
                return Ok(());
            }
            match self.apply_published(follower.last.as_ref(), &published) {
                Ok(()) => {
                    follower.last = Some(published);
                    return Ok(());
                }
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < 3 => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn apply_published(
        &self,
        previous: Option<&Published>,
        published: &Published,
    ) -> Result<(), LogError> {
        let segments = self
            .segments
            .read()
            .expect("segments lock is never poisoned")
            .clone();
        let active = segments.last().expect("segments are never empty");
        if published.next_offset < self.latest_offset()
            || published.active_base < active.base_offset
        {
            return Err(LogError::Corrupt {
                path: self.dir.join(PUBLISHED_FILE),
                position: 0,
                reason: format!(
                    "the writer published an end (offset {}, segment {}) before what it published \
                     earlier (offset {}, segment {})",
                    published.next_offset,
                    published.active_base,
                    self.latest_offset(),
                    active.base_offset
                ),
            });
        }
        if published.active_base == active.base_offset && previous.is_some() {
            active.publish(
                published.active_size,
                published.next_offset,
                published.max_timestamp,
            );
            if published.earliest > segments[0].base_offset {
                self.segments
                    .write()
                    .expect("segments lock is never poisoned")
                    .retain(|segment| segment.base_offset >= published.earliest);
            }
        } else {
            let loaded = load_followed_segments(&self.dir, Some(published), &segments)?;
            *self
                .segments
                .write()
                .expect("segments lock is never poisoned") = loaded;
        }
        self.high_watermark.send_if_modified(|high_watermark| {
            let changed = *high_watermark != published.next_offset;
            *high_watermark = published.next_offset;
            changed
        });
        Ok(())
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

impl Follower {
    /// Reads `published`; `None` while it does not exist or every read raced a rewrite.
    fn read(&mut self) -> Result<Option<Published>, LogError> {
        if self.published_file.is_none() {
            match File::open(&self.published_path) {
                Ok(file) => self.published_file = Some(file),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(error) => {
                    return Err(LogError::io("open", &self.published_path)(error));
                }
            }
        }
        let file = self.published_file.as_ref().expect("opened above");
        let mut buf = [0u8; PUBLISHED_BYTES];
        for _ in 0..3 {
            match file.read_exact_at(&mut buf, 0) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ok(None);
                }
                Err(error) => return Err(LogError::io("read", &self.published_path)(error)),
            }
            if let Some(published) = Published::decode(&buf) {
                return Ok(Some(published));
            }
        }
        Ok(None)
    }
}

/// A partition as the log holds it: the shared state, and the writer once this process
/// writes it.
///
/// Each written partition has its own writer thread: simple, and fine for tens of
/// partitions; a log with thousands would want a shared pool of writers.
#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) shared: Arc<PartitionShared>,
    config: EmbeddedLogConfig,
    holds: Arc<RetentionHolds>,
    writer: Mutex<WriterSlot>,
}

#[derive(Debug)]
enum WriterSlot {
    /// This process does not write the partition (yet).
    Following,
    /// This process writes the partition.
    Writing {
        commands: Sender<Command>,
        thread: JoinHandle<()>,
        /// The `flock` on `writer.lock`.
        _lock: File,
    },
    /// The log was closed.
    Closed,
}

impl Partition {
    /// Creates an empty partition in `dir`: its first segment and its `published` state.
    pub(crate) fn create(dir: &Path) -> Result<(), LogError> {
        std::fs::create_dir_all(dir).map_err(LogError::io("create partition folder", dir))?;
        let (log_path, _) = segment_paths(dir, 0);
        File::create(&log_path).map_err(LogError::io("create segment", &log_path))?;
        let empty = Published {
            earliest: 0,
            active_base: 0,
            active_size: 0,
            next_offset: 0,
            max_timestamp: i64::MIN,
        };
        write_file_atomically(&dir.join(PUBLISHED_FILE), &empty.encode())?;
        sync_dir(dir)
    }

    /// Opens the partition in `dir` as a follower: the segments as the writer last published
    /// them. The first append takes the writer's part ([`Partition::take_over`]).
    pub(crate) fn open(
        topic: Arc<str>,
        id: u32,
        dir: PathBuf,
        config: &EmbeddedLogConfig,
        holds: Arc<RetentionHolds>,
    ) -> Result<Partition, LogError> {
        let mut follower = Follower {
            published_path: dir.join(PUBLISHED_FILE),
            published_file: None,
            last: None,
        };
        let mut attempt = 0;
        let (segments, published) = loop {
            attempt += 1;
            let published = follower.read()?;
            match load_followed_segments(&dir, published.as_ref(), &[]) {
                Ok(segments) => break (segments, published),
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && attempt < 3 => {}
                Err(error) => return Err(error),
            }
        };
        follower.last = published;
        let active = segments
            .last()
            .expect("loading returns at least one segment");
        let (high_watermark, _) = watch::channel(active.next_offset());
        let shared = Arc::new(PartitionShared {
            topic,
            id,
            dir,
            segments: RwLock::new(segments),
            high_watermark,
            follower: Mutex::new(Some(follower)),
            following: AtomicBool::new(true),
        });
        Ok(Partition {
            shared,
            config: config.clone(),
            holds,
            writer: Mutex::new(WriterSlot::Following),
        })
    }

    /// Whether this process writes the partition.
    pub(crate) fn is_writing(&self) -> bool {
        matches!(
            *self.writer.lock().expect("writer lock is never poisoned"),
            WriterSlot::Writing { .. }
        )
    }

    /// Makes this process the partition's writer, unless it is already: takes `writer.lock`,
    /// recovers the segment files (truncating a torn tail of a writer that died), publishes
    /// their state and starts the writer thread. Blocking.
    ///
    /// # Errors
    ///
    /// [`LogError::PartitionLocked`] while another process writes the partition; recovery
    /// errors; [`LogError::Closed`] after `close`.
    pub(crate) fn take_over(&self) -> Result<(), LogError> {
        let mut slot = self.writer.lock().expect("writer lock is never poisoned");
        match &*slot {
            WriterSlot::Writing { .. } => return Ok(()),
            WriterSlot::Closed => return Err(LogError::Closed),
            WriterSlot::Following => {}
        }
        let shared = &self.shared;
        let lock = lock_writer(shared)?;
        let mut follower = shared
            .follower
            .lock()
            .expect("follower lock is never poisoned");
        let (recovered, write_file) = recover_segments(&shared.dir, &self.config)?;
        let existing = shared
            .segments
            .read()
            .expect("segments lock is never poisoned")
            .clone();
        // Readers hold the segments they follow: keep those objects, with the recovered state.
        let segments: Vec<Arc<Segment>> = recovered
            .into_iter()
            .map(|segment| {
                match existing
                    .iter()
                    .find(|known| known.base_offset == segment.base_offset)
                {
                    Some(known) => {
                        known.assign(&segment);
                        Arc::clone(known)
                    }
                    None => Arc::new(segment),
                }
            })
            .collect();
        let active = Arc::clone(
            segments
                .last()
                .expect("recovery returns at least one segment"),
        );
        let published_path = shared.dir.join(PUBLISHED_FILE);
        let published = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&published_path)
            .map_err(LogError::io("open", &published_path))?;
        let writer = Writer {
            shared: Arc::clone(shared),
            config: self.config.clone(),
            holds: Arc::clone(&self.holds),
            file: write_file,
            published,
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
        *shared
            .segments
            .write()
            .expect("segments lock is never poisoned") = segments;
        writer.publish()?;
        *follower = None;
        shared.following.store(false, Ordering::Release);
        shared.high_watermark.send_if_modified(|high_watermark| {
            let changed = *high_watermark != writer.next_offset;
            *high_watermark = writer.next_offset;
            changed
        });
        drop(follower);
        let (commands, receiver) = std::sync::mpsc::channel();
        let thread_name = format!("log-{}-{}", shared.topic, shared.id);
        let thread = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || writer.run(receiver))
            .map_err(LogError::io("spawn writer thread for", &shared.dir))?;
        debug!(topic = %shared.topic, partition = shared.id, "writing partition");
        *slot = WriterSlot::Writing {
            commands,
            thread,
            _lock: lock,
        };
        Ok(())
    }

    /// Hands a command to the writer thread ([`Partition::take_over`] first).
    pub(crate) fn send(&self, command: Command) -> Result<(), LogError> {
        match &*self.writer.lock().expect("writer lock is never poisoned") {
            WriterSlot::Writing { commands, .. } => {
                commands.send(command).map_err(|_| LogError::Closed)
            }
            WriterSlot::Following | WriterSlot::Closed => Err(LogError::Closed),
        }
    }

    /// Stops the writer thread after it has handled what is queued, waits for it and lets
    /// go of `writer.lock`.
    pub(crate) fn close(&self) {
        let slot = std::mem::replace(
            &mut *self.writer.lock().expect("writer lock is never poisoned"),
            WriterSlot::Closed,
        );
        if let WriterSlot::Writing {
            commands,
            thread,
            _lock,
        } = slot
        {
            drop(commands);
            if thread.join().is_err() {
                warn!(topic = %self.shared.topic, partition = self.shared.id, "log writer thread panicked");
            }
        }
    }
}

/// Takes the partition's writer lock, or fails naming the partition if another process has it.
fn lock_writer(shared: &PartitionShared) -> Result<File, LogError> {
    let path = shared.dir.join(WRITER_LOCK_FILE);
    try_lock_file(&path)?.ok_or_else(|| LogError::PartitionLocked {
        topic: shared.topic.to_string(),
        partition: shared.id,
        path,
    })
}

/// Opens the segments of a partition another process writes, as `published` describes them
/// (every segment file, up to the first bad frame of the newest, when there is no
/// `published` yet). Segments in `known` are kept, the one that was active updated from
/// its sealed index.
fn load_followed_segments(
    dir: &Path,
    published: Option<&Published>,
    known: &[Arc<Segment>],
) -> Result<Vec<Arc<Segment>>, LogError> {
    let mut bases = list_segment_bases(dir)?;
    if let Some(published) = published {
        bases.retain(|base| (published.earliest..=published.active_base).contains(base));
        if bases.last() != Some(&published.active_base) {
            return Err(LogError::Corrupt {
                path: segment_paths(dir, published.active_base).0,
                position: 0,
                reason: "the segment the writer published as active is missing".to_string(),
            });
        }
    }
    if bases.is_empty() {
        return Err(LogError::Corrupt {
            path: dir.to_path_buf(),
            position: 0,
            reason: "the partition folder holds no segment".to_string(),
        });
    }
    let previous_active = known.last().map(|segment| segment.base_offset);
    let mut segments = Vec::with_capacity(bases.len());
    for (idx, base) in bases.iter().copied().enumerate() {
        let known_segment = known.iter().find(|segment| segment.base_offset == base);
        let segment = match (bases.get(idx + 1).copied(), known_segment) {
            (Some(_), Some(segment)) if Some(base) != previous_active => Arc::clone(segment),
            (Some(next_base), Some(segment)) => {
                // The segment this process followed as active has been sealed since.
                let sealed = open_sealed_segment(dir, base, next_base, None)?;
                segment.assign(&sealed);
                Arc::clone(segment)
            }
            (Some(next_base), None) => Arc::new(open_sealed_segment(dir, base, next_base, None)?),
            (None, Some(segment)) => {
                let published = published.expect("a known active segment was published");
                segment.publish(
                    published.active_size,
                    published.next_offset,
                    published.max_timestamp,
                );
                Arc::clone(segment)
            }
            (None, None) => Arc::new(open_followed_active_segment(dir, base, published)?),
        };
        segments.push(segment);
    }
    Ok(segments)
}

/// Opens the newest segment of a partition another process writes, indexed up to the end
/// the writer published (without `published`: up to the first bad frame).
fn open_followed_active_segment(
    dir: &Path,
    base: u64,
    published: Option<&Published>,
) -> Result<Segment, LogError> {
    let (log_path, index_path) = segment_paths(dir, base);
    let (file, file_len) = open_segment_with_len(&log_path)?;
    let limit = published.map_or(file_len, |published| published.active_size);
    if limit > file_len {
        return Err(LogError::Corrupt {
            path: log_path,
            position: file_len,
            reason: format!("the writer published {limit} durable bytes, the file has {file_len}"),
        });
    }
    let mut scan = scan_segment(&file, &log_path, base, limit, FOLLOWER_INDEX_INTERVAL_BYTES)?;
    if let Some(published) = published {
        if let Some(error) = scan.stopped_by.take() {
            let error = error.into_corrupt(&log_path);
            return Err(with_repair_hint(
                error,
                dir,
                &file,
                scan.next_offset,
                limit,
                Some(published.next_offset),
            ));
        }
        if scan.next_offset != published.next_offset {
            return Err(LogError::Corrupt {
                path: log_path,
                position: scan.valid_size,
                reason: format!(
                    "the writer published offsets up to {}, the segment holds them up to {}",
                    published.next_offset, scan.next_offset
                ),
            });
        }
    }
    Ok(new_segment(
        base,
        (log_path, index_path),
        file,
        SegmentContents::scanned(scan),
    ))
}

/// Index spacing of a followed active segment (the writer's own setting is not needed:
/// this index lives only in the follower's memory).
const FOLLOWER_INDEX_INTERVAL_BYTES: u32 = 4096;

/// Lists the segment base offsets in `dir`, sorted, without touching anything.
pub(crate) fn list_segment_bases(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(LogError::io("list partition folder", dir))?;
    for entry in entries {
        let entry = entry.map_err(LogError::io("list partition folder", dir))?;
        let name = entry.file_name();
        if let Some(stem) = name.to_string_lossy().strip_suffix(".log") {
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

/// Lists the segment base offsets in `dir`, sorted, removing leftover temporary files
/// (the writer's: only it writes them).
fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let entries = std::fs::read_dir(dir).map_err(LogError::io("list partition folder", dir))?;
    for entry in entries {
        let entry = entry.map_err(LogError::io("list partition folder", dir))?;
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            std::fs::remove_file(entry.path())
                .map_err(LogError::io("remove leftover temporary file", entry.path()))?;
        }
    }
    list_segment_bases(dir)
}

fn open_segment_file(path: &Path) -> Result<File, LogError> {
    File::open(path).map_err(LogError::io("open segment", path))
}

/// Opens a segment for reading and returns its length.
pub(crate) fn open_segment_with_len(path: &Path) -> Result<(File, u64), LogError> {
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
) -> Result<(Vec<Segment>, File), LogError> {
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
            Some(next_base) => open_sealed_segment(dir, base, next_base, Some(config))?,
            None => open_active_segment(dir, base, config)?,
        };
        segments.push(segment);
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

impl SegmentContents {
    /// The valid frames a scan found.
    fn scanned(scan: ScanResult) -> SegmentContents {
        SegmentContents {
            size: scan.valid_size,
            next_offset: scan.next_offset,
            max_timestamp: scan.max_timestamp,
            index: scan.index,
        }
    }
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

/// Opens a sealed segment through its index. A missing or inconsistent index is rebuilt
/// from the segment, and written back when `writer_config` says this process writes the
/// partition (a follower keeps it in memory).
fn open_sealed_segment(
    dir: &Path,
    base: u64,
    next_base: u64,
    writer_config: Option<&EmbeddedLogConfig>,
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
        writer_config.map_or(FOLLOWER_INDEX_INTERVAL_BYTES, |config| {
            config.index_interval_bytes
        }),
    )?;
    if let Some(error) = scan.stopped_by {
        // A sealed segment was fsynced whole before the next one was created.
        let error = error.into_corrupt(&log_path);
        return Err(with_repair_hint(
            error,
            dir,
            &file,
            scan.next_offset,
            file_len,
            Some(next_base),
        ));
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
    if writer_config.is_some() {
        segment.write_sealed_index()?;
    }
    Ok(segment)
}

fn open_active_segment(
    dir: &Path,
    base: u64,
    config: &EmbeddedLogConfig,
) -> Result<Segment, LogError> {
    let (log_path, index_path) = segment_paths(dir, base);
    let (file, file_len) = open_segment_with_len(&log_path)?;
    let mut scan = scan_segment(
        &file,
        &log_path,
        base,
        file_len,
        config.index_interval_bytes,
    )?;
    if let Some(error) = scan.stopped_by.take() {
        let torn = is_torn_tail(&file, &error, file_len)
            .map_err(LogError::io("read segment", &log_path))?;
        if !torn {
            let error = error.into_corrupt(&log_path);
            return Err(with_repair_hint(
                error,
                dir,
                &file,
                scan.next_offset,
                file_len,
                None,
            ));
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
        SegmentContents::scanned(scan),
    ))
}

/// The writer thread's state. Invariant: `size`, `next_offset` and `max_timestamp` describe
/// the active segment including bytes written but not yet fsynced.
struct Writer {
    shared: Arc<PartitionShared>,
    config: EmbeddedLogConfig,
    holds: Arc<RetentionHolds>,
    file: File,
    /// `published`, rewritten in place after each fsync.
    published: File,
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
            .publish(self.size, self.next_offset, self.max_timestamp);
        self.publish()?;
        self.shared.high_watermark.send_replace(self.next_offset);
        Ok(())
    }

    /// Tells other processes what is durable: rewrites `published` in place. Not fsynced:
    /// after a machine crash the next writer's recovery publishes afresh.
    fn publish(&self) -> Result<(), LogError> {
        let earliest = self.shared.earliest_offset();
        let published = Published {
            earliest,
            active_base: self.active.base_offset,
            active_size: self.size,
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
        };
        self.published
            .write_all_at(&published.encode(), 0)
            .map_err(LogError::io("write", self.shared.dir.join(PUBLISHED_FILE)))
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
        // Read once, when a segment is due: the holding groups' commits (other processes
        // commit too, so they are read from their files).
        let mut floor: Option<u64> = None;
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
                let floor = match floor {
                    Some(floor) => floor,
                    None => *floor.insert(self.holds.floor(&self.shared.topic, self.shared.id)?),
                };
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
            self.publish()?;
        }
        Ok(deleted)
    }
}
