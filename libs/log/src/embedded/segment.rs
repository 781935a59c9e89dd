//! A segment: one `.log` file of frames and its `.index`, plus the reading cursor over it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;

use super::format::{self, Decoded, FRAME_HEADER_BYTES, Frame, IndexEntry};
use crate::LogError;

/// Bytes read from disk at a time when scanning or serving a segment.
const CHUNK_BYTES: u64 = 256 << 10;

/// One segment of a partition, shared by the writer and the readers.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: u64,
    pub(crate) log_path: PathBuf,
    pub(crate) index_path: PathBuf,
    /// A read handle; reads use `pread`, so readers share it without a lock.
    pub(crate) file: File,
    /// Invariant: a frame boundary, and every byte before it is fsynced.
    pub(crate) durable_size: AtomicU64,
    /// The offset after the last durable record.
    pub(crate) next_offset: AtomicU64,
    /// The largest timestamp of a durable record (`i64::MIN` if none).
    pub(crate) max_timestamp: AtomicI64,
    /// Index entries of durable records, ordered by offset and by `max_timestamp_before`.
    pub(crate) index: RwLock<Vec<IndexEntry>>,
}

/// The file names of the segment starting at `base_offset` in `dir`.
pub(crate) fn segment_paths(dir: &Path, base_offset: u64) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{base_offset:020}.log")),
        dir.join(format!("{base_offset:020}.index")),
    )
}

impl Segment {
    pub(crate) fn durable_size(&self) -> u64 {
        self.durable_size.load(Ordering::Acquire)
    }

    pub(crate) fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Makes records up to `next_offset` (`size` bytes) readable. The size is stored before
    /// the offset, so a reader that loads `next_offset` first reads a size that covers it.
    pub(crate) fn publish(&self, size: u64, next_offset: u64, max_timestamp: i64) {
        self.max_timestamp.store(max_timestamp, Ordering::Release);
        self.durable_size.store(size, Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
    }

    /// Takes the state of `other`, the same segment opened afresh (after it was sealed, or
    /// by a new writer's recovery), so readers holding this one see it.
    pub(crate) fn assign(&self, other: &Segment) {
        debug_assert_eq!(self.base_offset, other.base_offset);
        *self.index.write().expect("index lock is never poisoned") = other
            .index
            .read()
            .expect("index lock is never poisoned")
            .clone();
        self.publish(
            other.durable_size(),
            other.next_offset(),
            other.max_timestamp.load(Ordering::Acquire),
        );
    }

    /// Returns the position of the closest indexed record at or before `offset`.
    pub(crate) fn position_for_offset(&self, offset: u64) -> u64 {
        let index = self.index.read().expect("index lock is never poisoned");
        let relative = offset.saturating_sub(self.base_offset);
        let idx = index.partition_point(|entry| u64::from(entry.relative_offset) <= relative);
        idx.checked_sub(1)
            .map_or(0, |idx| u64::from(index[idx].position))
    }

    /// Returns a position from which a scan finds the first record with timestamp >= `timestamp`.
    pub(crate) fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let index = self.index.read().expect("index lock is never poisoned");
        let idx = index.partition_point(|entry| entry.max_timestamp_before < timestamp);
        idx.checked_sub(1)
            .map_or(0, |idx| u64::from(index[idx].position))
    }

    /// Writes the index with its sentinel to `.index`, atomically (temp file, fsync, rename).
    pub(crate) fn write_sealed_index(&self) -> Result<(), LogError> {
        let index = self.index.read().expect("index lock is never poisoned");
        let mut buf = Vec::with_capacity((index.len() + 1) * format::INDEX_ENTRY_BYTES);
        for entry in index.iter() {
            entry.encode(&mut buf);
        }
        let sentinel = IndexEntry {
            relative_offset: (self.next_offset() - self.base_offset) as u32,
            position: self.durable_size() as u32,
            max_timestamp_before: self.max_timestamp.load(Ordering::Acquire),
        };
        sentinel.encode(&mut buf);
        drop(index);
        write_file_atomically(&self.index_path, &buf)
    }
}

/// Writes `contents` to `path` through a temporary file, fsynced before the rename.
///
/// The caller fsyncs the folder when the rename itself must be durable.
pub(crate) fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<(), LogError> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp_path = PathBuf::from(tmp_name);
    {
        let file = File::create(&tmp_path).map_err(LogError::io("create", &tmp_path))?;
        file.write_all_at(contents, 0)
            .map_err(LogError::io("write", &tmp_path))?;
        file.sync_all().map_err(LogError::io("fsync", &tmp_path))?;
    }
    std::fs::rename(&tmp_path, path).map_err(LogError::io("rename into place", path))
}

/// Fsyncs a folder, so that files created or renamed in it survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(LogError::io("fsync folder", dir))
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The frame runs past the readable limit.
    Truncated {
        position: u64,
        frame_len: Option<usize>,
    },
    /// The bytes are not a valid frame.
    Invalid { position: u64, reason: String },
    /// A valid frame with another offset than the one expected there.
    WrongOffset { position: u64, reason: String },
    /// Reading the file failed.
    Io(std::io::Error),
}

impl FrameError {
    /// The byte position of the bad frame (`None` for a read error).
    pub(crate) fn position(&self) -> Option<u64> {
        match self {
            FrameError::Truncated { position, .. }
            | FrameError::Invalid { position, .. }
            | FrameError::WrongOffset { position, .. } => Some(*position),
            FrameError::Io(_) => None,
        }
    }

    /// Converts to the error a reader reports: inside the durable region nothing may be torn.
    pub(crate) fn into_corrupt(self, path: &Path) -> LogError {
        match self {
            FrameError::Truncated {
                position,
                frame_len,
            } => LogError::Corrupt {
                path: path.to_path_buf(),
                position,
                reason: format!("record of {frame_len:?} bytes is cut short"),
            },
            FrameError::Invalid { position, reason }
            | FrameError::WrongOffset { position, reason } => LogError::Corrupt {
                path: path.to_path_buf(),
                position,
                reason,
            },
            FrameError::Io(source) => LogError::Io {
                action: "read segment",
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// Reads frames of one file through a buffered chunk, handing out zero-copy slices.
#[derive(Debug, Default)]
pub(crate) struct FrameCursor {
    chunk: Bytes,
    chunk_start: u64,
}

impl FrameCursor {
    /// Forgets the buffered chunk (after switching files).
    pub(crate) fn clear(&mut self) {
        self.chunk = Bytes::new();
        self.chunk_start = 0;
    }

    /// Reads the frame at `position`, reading no byte at or after `limit`.
    ///
    /// Returns `None` at `limit`, or the frame with the bytes it indexes.
    pub(crate) fn frame_at(
        &mut self,
        file: &File,
        position: u64,
        limit: u64,
    ) -> Result<Option<(Frame, Bytes)>, FrameError> {
        if position >= limit {
            return Ok(None);
        }
        let chunk_end = self.chunk_start + self.chunk.len() as u64;
        if position < self.chunk_start || position >= chunk_end {
            self.fill(file, position, CHUNK_BYTES.min(limit - position))?;
        }
        loop {
            let relative = (position - self.chunk_start) as usize;
            match format::decode_frame(&self.chunk[relative..]) {
                Decoded::Frame(frame) => {
                    let bytes = self.chunk.slice(relative..relative + frame.frame_len);
                    return Ok(Some((frame, bytes)));
                }
                Decoded::Invalid { reason } => {
                    return Err(FrameError::Invalid { position, reason });
                }
                Decoded::Incomplete { frame_len } => {
                    let needed = frame_len.unwrap_or(FRAME_HEADER_BYTES) as u64;
                    let available = (self.chunk.len() - relative) as u64;
                    if position + needed > limit || available >= needed {
                        return Err(FrameError::Truncated {
                            position,
                            frame_len,
                        });
                    }
                    self.fill(
                        file,
                        position,
                        needed.max(CHUNK_BYTES).min(limit - position),
                    )?;
                }
            }
        }
    }

    fn fill(&mut self, file: &File, position: u64, len: u64) -> Result<(), FrameError> {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, position)
            .map_err(FrameError::Io)?;
        self.chunk = Bytes::from(buf);
        self.chunk_start = position;
        Ok(())
    }
}

/// What a full scan of a segment file found.
#[derive(Debug)]
pub(crate) struct ScanResult {
    /// The end of the last valid frame.
    pub(crate) valid_size: u64,
    pub(crate) next_offset: u64,
    pub(crate) max_timestamp: i64,
    pub(crate) index: Vec<IndexEntry>,
    /// Set when the scan stopped before the end of the file.
    pub(crate) stopped_by: Option<FrameError>,
}

/// Reads every frame of `file` (of length `file_len`), checking checksums and that offsets
/// run on from `base_offset`, and builds the index. A skip frame moves the next offset past
/// the offsets it covers. The scan stops at the first bad frame (`stopped_by`).
pub(crate) fn scan_segment(
    file: &File,
    path: &Path,
    base_offset: u64,
    file_len: u64,
    index_interval_bytes: u32,
) -> Result<ScanResult, LogError> {
    let mut cursor = FrameCursor::default();
    let mut result = ScanResult {
        valid_size: 0,
        next_offset: base_offset,
        max_timestamp: i64::MIN,
        index: Vec::new(),
        stopped_by: None,
    };
    let mut bytes_since_index = u64::MAX;
    loop {
        let frame = match cursor.frame_at(file, result.valid_size, file_len) {
            Ok(Some((frame, _))) => frame,
            Ok(None) => break,
            Err(FrameError::Io(source)) => {
                return Err(LogError::Io {
                    action: "read segment",
                    path: path.to_path_buf(),
                    source,
                });
            }
            Err(error) => {
                result.stopped_by = Some(error);
                break;
            }
        };
        if frame.offset != result.next_offset {
            result.stopped_by = Some(FrameError::WrongOffset {
                position: result.valid_size,
                reason: format!(
                    "record has offset {} where {} was expected",
                    frame.offset, result.next_offset
                ),
            });
            break;
        }
        if bytes_since_index >= u64::from(index_interval_bytes) {
            result.index.push(IndexEntry {
                relative_offset: (frame.offset - base_offset) as u32,
                position: result.valid_size as u32,
                max_timestamp_before: result.max_timestamp,
            });
            bytes_since_index = 0;
        }
        bytes_since_index += frame.frame_len as u64;
        result.valid_size += frame.frame_len as u64;
        result.next_offset = frame.end_offset();
        result.max_timestamp = result.max_timestamp.max(frame.timestamp);
    }
    Ok(result)
}

/// Bytes looked at per read when searching for the next valid frame.
const RESYNC_WINDOW_BYTES: u64 = 1 << 20;

/// Finds the first valid frame at or after byte `from` (and before `limit`) whose offset is
/// in `offsets`, looking at no more than `max_bytes` bytes; returns its position and offset.
///
/// Used after a bad frame, to learn where good records resume: a candidate must carry an
/// offset in the range and pass its checksum, so bytes inside a damaged frame are not taken
/// for a frame.
pub(crate) fn find_next_frame(
    file: &File,
    from: u64,
    limit: u64,
    offsets: std::ops::Range<u64>,
    max_bytes: u64,
) -> Result<Option<(u64, u64)>, std::io::Error> {
    let stop = limit.min(from.saturating_add(max_bytes));
    let mut window_start = from;
    while window_start < stop {
        // A frame's first 16 bytes (len, crc, offset) must be in the window to be considered;
        // windows overlap by as much.
        let window_end = (window_start + RESYNC_WINDOW_BYTES).min(limit);
        let mut window = vec![0u8; (window_end - window_start) as usize];
        file.read_exact_at(&mut window, window_start)?;
        let candidates_end = (window_end.min(stop) - window_start) as usize;
        for relative in 0..candidates_end {
            let Some(head) = window.get(relative..relative + 16) else {
                break;
            };
            let offset = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
            if !offsets.contains(&offset) {
                continue;
            }
            let body_len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes")) as u64;
            let position = window_start + relative as u64;
            let frame_len = FRAME_HEADER_BYTES as u64 + body_len;
            if body_len > format::MAX_BODY_BYTES as u64 || position + frame_len > limit {
                continue;
            }
            let mut frame = vec![0u8; frame_len as usize];
            file.read_exact_at(&mut frame, position)?;
            if let Decoded::Frame(frame) = format::decode_frame(&frame)
                && frame.offset == offset
            {
                return Ok(Some((position, offset)));
            }
        }
        if window_end >= stop || window_end >= limit {
            break;
        }
        window_start = window_end.saturating_sub(15).max(window_start + 1);
    }
    Ok(None)
}

/// Decides whether bytes that stopped a scan of the newest segment are a torn tail (an
/// append that was never acknowledged) rather than corruption of acknowledged records.
///
/// Torn: the frame header or frame runs past the end of the file, the bad frame is the
/// last one in the file, or everything from it to the end is zero (blocks allocated but
/// never written). Anything else, a bad frame with data after it, is corruption.
pub(crate) fn is_torn_tail(
    file: &File,
    error: &FrameError,
    file_len: u64,
) -> Result<bool, std::io::Error> {
    let position = match error {
        FrameError::Truncated { .. } => return Ok(true),
        FrameError::Invalid { position, .. } => *position,
        FrameError::WrongOffset { .. } | FrameError::Io(_) => return Ok(false),
    };
    let remaining = file_len - position;
    if remaining >= 4 {
        let mut len_bytes = [0u8; 4];
        file.read_exact_at(&mut len_bytes, position)?;
        let frame_len = FRAME_HEADER_BYTES as u64 + u64::from(u32::from_le_bytes(len_bytes));
        if frame_len >= remaining {
            return Ok(true);
        }
    }
    let mut tail = vec![0u8; remaining.min(64 << 20) as usize];
    file.read_exact_at(&mut tail, position)?;
    Ok(remaining <= 64 << 20 && tail.iter().all(|byte| *byte == 0))
}
