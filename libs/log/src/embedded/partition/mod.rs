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
//!
//! Here: the partition, its shared state and its commands; `recovery.rs` opens its files
//! (recovering a torn tail); `writer.rs` is the writer thread; `follower.rs` follows another
//! process's writes.

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

mod follower;
mod recovery;
mod writer;

use follower::*;
use recovery::*;
pub(crate) use recovery::{list_segment_bases, open_segment_with_len};
use writer::*;

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
