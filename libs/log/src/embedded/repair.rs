//! `runnel log repair`: recovers a damaged partition of the embedded log, by truncation or
//! by skipping a range of offsets, and leaves an audit trail.
//!
//! A repair holds the partition's `writer.lock` throughout, so it never runs beside a
//! writer. Nothing it removes is destroyed: the bytes go to `<partition>/repairs/<time>-<action>/`
//! first. Every repair appends one JSON line to `<partition>/repairs.jsonl` (fsynced) and
//! logs at WARN.
//!
//! - `--truncate-after N` cuts the segment holding `N + 1` there and moves every later
//!   segment aside. The next appends reuse offsets from `N + 1`.
//! - `--skip-range FIRST-LAST` overwrites, in place, the bytes of the frames of offsets
//!   `FIRST..=LAST` with skip frames (see `format`) of exactly their length. Every other
//!   frame keeps its position and offset, readers (in every process, since the file is
//!   rewritten in place) step over the range, and the offsets after it keep their numbers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::check::{read_published, topic_partitions};
use super::format::{self, IndexEntry, MAX_FRAME_BYTES, MIN_FRAME_BYTES, Published};
use super::lock::try_lock_file;
use super::partition::{
    PUBLISHED_FILE, WRITER_LOCK_FILE, list_segment_bases, open_segment_with_len,
};
use super::segment::{
    FrameCursor, FrameError, find_next_frame, scan_segment, segment_paths, sync_dir,
    write_file_atomically,
};
use super::{OFFSETS_DIR, read_offsets};
use crate::LogError;

/// The audit trail of a partition's repairs, one JSON object per line.
pub const REPAIRS_FILE: &str = "repairs.jsonl";
/// The folder (in the partition's) that keeps what repairs removed.
const REPAIRS_DIR: &str = "repairs";

/// What a repair does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairAction {
    /// Drops every record after this offset, and the segments after it.
    TruncateAfter(u64),
    /// Replaces the records of these offsets (inclusive) with skip frames.
    SkipRange {
        /// First offset skipped.
        first: u64,
        /// Last offset skipped.
        last: u64,
    },
}

impl std::fmt::Display for RepairAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepairAction::TruncateAfter(offset) => write!(f, "truncate-after {offset}"),
            RepairAction::SkipRange { first, last } => write!(f, "skip-range {first}-{last}"),
        }
    }
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// What was done.
    pub action: RepairAction,
    /// Bytes of segment files removed or overwritten.
    pub bytes_dropped: u64,
    /// First offset whose record is gone.
    pub first_dropped: u64,
    /// Last offset whose record is gone, when known.
    pub last_dropped: Option<u64>,
    /// The offset the partition's next append gets, when the active segment reads to its end.
    pub next_offset: Option<u64>,
    /// Where the removed bytes were kept.
    pub backup_dir: PathBuf,
    /// The audit file the repair was recorded in.
    pub audit_path: PathBuf,
    /// Consumer groups that had committed past the truncation point, with their offsets:
    /// they will not read the records appended at the reused offsets.
    pub groups_past: Vec<(String, u64)>,
}

/// Repairs partition `partition` of `topic` in the embedded log in `dir`, recording the
/// repair and the `operator` (the user running it, if known). Blocking.
///
/// `index_interval_bytes` is the log's `index-interval-bytes`, for indexes rebuilt here.
///
/// # Errors
///
/// [`LogError::PartitionLocked`] while a process writes the partition;
/// [`LogError::RepairRefused`] when the request does not fit the partition (an offset out
/// of range, a range whose ends are not found, damage before the range); unknown topic or
/// partition; I/O errors.
pub fn repair_embedded_partition(
    dir: &Path,
    index_interval_bytes: u32,
    topic: &str,
    partition: u32,
    action: RepairAction,
    operator: Option<&str>,
) -> Result<RepairReport, LogError> {
    let partitions = topic_partitions(dir, topic)?;
    if partition >= partitions {
        return Err(LogError::UnknownPartition {
            topic: topic.to_string(),
            partition,
            partitions,
        });
    }
    let part_dir = dir.join(topic).join(partition.to_string());
    let lock_path = part_dir.join(WRITER_LOCK_FILE);
    let _lock = try_lock_file(&lock_path)?.ok_or_else(|| LogError::PartitionLocked {
        topic: topic.to_string(),
        partition,
        path: lock_path.clone(),
    })?;
    let repair = Repair {
        topic,
        partition,
        dir: &part_dir,
        bases: list_segment_bases(&part_dir)?,
        published: read_published(&part_dir.join(PUBLISHED_FILE))?
            .ok()
            .flatten(),
        time_ms: runnel_time::now_millis(),
        index_interval_bytes,
    };
    if repair.bases.is_empty() {
        return Err(repair.refuse("the partition folder holds no segment".to_string()));
    }
    let (report, details) = match action {
        RepairAction::TruncateAfter(offset) => repair.truncate_after(offset)?,
        RepairAction::SkipRange { first, last } => repair.skip_range(first, last)?,
    };
    let record = audit_record(&repair, &report, &details, operator);
    append_line(&report.audit_path, &record)?;
    warn!(
        topic,
        partition,
        action = %report.action,
        bytes_dropped = report.bytes_dropped,
        first_dropped = report.first_dropped,
        last_dropped = ?report.last_dropped,
        backup = %report.backup_dir.display(),
        operator = operator.unwrap_or("unknown"),
        "repaired a partition of the embedded log"
    );
    Ok(report)
}

/// Where the frame with a wanted offset starts, as a scan from the segment's start finds it.
enum Located {
    /// At this position (the frame there may be damaged).
    At {
        position: u64,
        /// The largest timestamp of the records before it.
        max_timestamp: i64,
    },
    /// The segment's readable records end before the offset.
    End { next_offset: u64 },
    /// An earlier frame is unreadable.
    Bad {
        offset: u64,
        position: u64,
        reason: String,
    },
    /// The offset lies inside a range an earlier repair skipped.
    Skipped { first: u64, last: u64 },
}

/// A segment piece that a skip-range repair overwrites.
struct SkipPart {
    log_path: PathBuf,
    index_path: PathBuf,
    active: bool,
    first: u64,
    last: u64,
    start: u64,
    end: u64,
    /// Bytes of skip frames to write: `end - start`, or more at the end of the active segment.
    write_len: u64,
}

/// One repair of one partition, its writer lock held.
struct Repair<'a> {
    topic: &'a str,
    partition: u32,
    dir: &'a Path,
    /// Segment base offsets, sorted; never empty.
    bases: Vec<u64>,
    published: Option<Published>,
    time_ms: i64,
    index_interval_bytes: u32,
}

impl Repair<'_> {
    fn refuse(&self, reason: String) -> LogError {
        LogError::RepairRefused {
            topic: self.topic.to_string(),
            partition: self.partition,
            reason,
        }
    }

    fn earliest(&self) -> u64 {
        self.bases[0]
    }

    fn backup_dir(&self, slug: &str) -> PathBuf {
        self.dir
            .join(REPAIRS_DIR)
            .join(format!("{}-{slug}", self.time_ms))
    }

    /// Scans the segment `file` (starting at `base`) for where offset `target` starts.
    fn locate(
        &self,
        file: &File,
        path: &Path,
        base: u64,
        file_len: u64,
        target: u64,
    ) -> Result<Located, LogError> {
        let mut cursor = FrameCursor::default();
        let mut position = 0;
        let mut expected = base;
        let mut max_timestamp = i64::MIN;
        loop {
            if expected == target {
                return Ok(Located::At {
                    position,
                    max_timestamp,
                });
            }
            let frame = match cursor.frame_at(file, position, file_len) {
                Ok(Some((frame, _))) => frame,
                Ok(None) => {
                    return Ok(Located::End {
                        next_offset: expected,
                    });
                }
                Err(FrameError::Io(source)) => {
                    return Err(LogError::Io {
                        action: "read segment",
                        path: path.to_path_buf(),
                        source,
                    });
                }
                Err(error) => {
                    let reason = match error {
                        FrameError::Truncated { frame_len, .. } => {
                            format!("record of {frame_len:?} bytes is cut short")
                        }
                        FrameError::Invalid { reason, .. }
                        | FrameError::WrongOffset { reason, .. } => reason,
                        FrameError::Io(_) => unreachable!("handled above"),
                    };
                    return Ok(Located::Bad {
                        offset: expected,
                        position,
                        reason,
                    });
                }
            };
            if frame.offset != expected {
                return Ok(Located::Bad {
                    offset: expected,
                    position,
                    reason: format!(
                        "record has offset {} where {expected} was expected",
                        frame.offset
                    ),
                });
            }
            if let Some(last) = frame.skipped_to
                && target <= last
            {
                return Ok(Located::Skipped {
                    first: frame.offset,
                    last,
                });
            }
            position += frame.frame_len as u64;
            expected = frame.end_offset();
            max_timestamp = max_timestamp.max(frame.timestamp);
        }
    }

    /// `--truncate-after offset`.
    fn truncate_after(&self, offset: u64) -> Result<(RepairReport, String), LogError> {
        let target = offset.checked_add(1).ok_or_else(|| {
            self.refuse(format!("offset {offset} is the largest offset there is"))
        })?;
        if target < self.earliest() {
            return Err(self.refuse(format!(
                "offset {offset} is before the oldest retained offset {}",
                self.earliest()
            )));
        }
        let seg_idx = self.bases.partition_point(|base| *base <= target) - 1;
        let base = self.bases[seg_idx];
        let (log_path, index_path) = segment_paths(self.dir, base);
        let (file, file_len) = open_segment_with_len(&log_path)?;
        let later = &self.bases[seg_idx + 1..];
        let (cut, max_timestamp) = match self.locate(&file, &log_path, base, file_len, target)? {
            Located::At {
                position,
                max_timestamp,
            } => (position, max_timestamp),
            Located::End { next_offset } => {
                return Err(self.refuse(format!(
                    "the records of {} end before offset {target} (the next would be {next_offset}): there is nothing after {offset} to drop",
                    log_path.display()
                )));
            }
            Located::Bad {
                offset: bad,
                position,
                reason,
            } => {
                return Err(self.refuse(format!(
                    "offset {bad}, at byte {position} of {}, is unreadable too ({reason}): truncate after {} or earlier, or skip the range",
                    log_path.display(),
                    bad.saturating_sub(1)
                )));
            }
            Located::Skipped { first, last } => {
                return Err(self.refuse(format!(
                    "offset {offset} lies inside the range {first}-{last} an earlier repair skipped: truncate after {} or after {last}",
                    first.saturating_sub(1)
                )));
            }
        };
        if later.is_empty() && cut == file_len {
            return Err(self.refuse(format!("there is nothing after offset {offset} to drop")));
        }
        let backup_dir = self.backup_dir(&format!("truncate-after-{offset}"));
        create_backup_dir(self.dir, &backup_dir)?;
        let mut bytes_dropped = file_len - cut;
        let mut moved = Vec::new();
        if cut < file_len {
            let name = format!("{base:020}.log.from-{cut}");
            copy_range(&file, &log_path, cut, file_len, &backup_dir.join(name))?;
        }
        // Newest first, so that a crash leaves a run of segments that join up.
        for later_base in later.iter().rev() {
            let (later_log, later_index) = segment_paths(self.dir, *later_base);
            let (_, later_len) = open_segment_with_len(&later_log)?;
            bytes_dropped += later_len;
            for path in [&later_index, &later_log] {
                let name = path.file_name().expect("segment paths have a file name");
                match std::fs::rename(path, backup_dir.join(name)) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(LogError::io("move aside", path)(error)),
                }
            }
            moved.push(later_log.display().to_string());
        }
        sync_dir(&backup_dir)?;
        sync_dir(self.dir)?;
        let write_handle = OpenOptions::new()
            .write(true)
            .open(&log_path)
            .map_err(LogError::io("open segment for truncation", &log_path))?;
        write_handle
            .set_len(cut)
            .map_err(LogError::io("truncate", &log_path))?;
        write_handle
            .sync_all()
            .map_err(LogError::io("fsync", &log_path))?;
        // The segment is the active one now; an active segment's index lives in memory.
        remove_if_present(&index_path)?;
        sync_dir(self.dir)?;
        write_published(
            self.dir,
            &Published {
                earliest: self.earliest(),
                active_base: base,
                active_size: cut,
                next_offset: target,
                max_timestamp,
            },
        )?;
        let last_dropped = self
            .published
            .map(|published| published.next_offset)
            .filter(|next| *next > target)
            .map(|next| next - 1);
        let report = RepairReport {
            topic: self.topic.to_string(),
            partition: self.partition,
            action: RepairAction::TruncateAfter(offset),
            bytes_dropped,
            first_dropped: target,
            last_dropped,
            next_offset: Some(target),
            backup_dir,
            audit_path: self.dir.join(REPAIRS_FILE),
            groups_past: self.groups_past(target)?,
        };
        let details = format!(
            r#""segment":{},"position":{cut},"segments_moved":[{}]"#,
            json_string(&log_path.display().to_string()),
            moved
                .iter()
                .map(|path| json_string(path))
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok((report, details))
    }

    /// `--skip-range first-last`.
    fn skip_range(&self, first: u64, last: u64) -> Result<(RepairReport, String), LogError> {
        if first > last {
            return Err(self.refuse(format!(
                "the range {first}-{last} is empty: its first offset is after its last"
            )));
        }
        if first < self.earliest() {
            return Err(self.refuse(format!(
                "offset {first} is before the oldest retained offset {}",
                self.earliest()
            )));
        }
        // Plan every segment's piece before changing anything.
        let mut parts = Vec::new();
        for (idx, base) in self.bases.iter().copied().enumerate() {
            let next_base = self.bases.get(idx + 1).copied();
            let part_first = first.max(base);
            let part_last = match next_base {
                Some(next_base) => last.min(next_base - 1),
                None => last,
            };
            if part_first > part_last {
                continue;
            }
            parts.push(self.plan_skip(base, next_base, part_first, part_last)?);
        }
        let backup_dir = self.backup_dir(&format!("skip-range-{first}-{last}"));
        create_backup_dir(self.dir, &backup_dir)?;
        let mut bytes_dropped = 0;
        let mut details = Vec::new();
        for part in &parts {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&part.log_path)
                .map_err(LogError::io("open segment for repair", &part.log_path))?;
            let name = format!(
                "{}.{}-{}",
                part.log_path
                    .file_name()
                    .expect("segment paths have a file name")
                    .to_string_lossy(),
                part.start,
                part.end
            );
            copy_range(
                &file,
                &part.log_path,
                part.start,
                part.end,
                &backup_dir.join(name),
            )?;
            let mut frames = Vec::with_capacity(part.write_len as usize);
            format::encode_skip_frames(&mut frames, part.first, part.last, part.write_len);
            file.write_all_at(&frames, part.start)
                .map_err(LogError::io("write skip frames to", &part.log_path))?;
            file.sync_all()
                .map_err(LogError::io("fsync", &part.log_path))?;
            if !part.active {
                drop_index_entries(&part.index_path, part.start, part.end)?;
            }
            bytes_dropped += part.end - part.start;
            details.push(format!(
                r#"{{"segment":{},"position":{},"bytes":{},"first_offset":{},"last_offset":{}}}"#,
                json_string(&part.log_path.display().to_string()),
                part.start,
                part.end - part.start,
                part.first,
                part.last
            ));
        }
        sync_dir(&backup_dir)?;
        let next_offset = self.republish()?;
        let report = RepairReport {
            topic: self.topic.to_string(),
            partition: self.partition,
            action: RepairAction::SkipRange { first, last },
            bytes_dropped,
            first_dropped: first,
            last_dropped: Some(last),
            next_offset,
            backup_dir,
            audit_path: self.dir.join(REPAIRS_FILE),
            groups_past: Vec::new(),
        };
        Ok((report, format!(r#""pieces":[{}]"#, details.join(","))))
    }

    /// Finds the bytes of offsets `first..=last` in the segment starting at `base`.
    fn plan_skip(
        &self,
        base: u64,
        next_base: Option<u64>,
        first: u64,
        last: u64,
    ) -> Result<SkipPart, LogError> {
        let (log_path, index_path) = segment_paths(self.dir, base);
        let (file, file_len) = open_segment_with_len(&log_path)?;
        let active = next_base.is_none();
        let start = match self.locate(&file, &log_path, base, file_len, first)? {
            Located::At { position, .. } => position,
            Located::End { next_offset } => {
                return Err(self.refuse(format!(
                    "offset {first} is past the last record of {} (the next would be {next_offset})",
                    log_path.display()
                )));
            }
            Located::Bad {
                offset,
                position,
                reason,
            } => {
                return Err(self.refuse(format!(
                    "offset {offset}, at byte {position} of {}, is unreadable too ({reason}): start the range at {offset}",
                    log_path.display()
                )));
            }
            Located::Skipped {
                first: skipped_first,
                last: skipped_last,
            } => {
                return Err(self.refuse(format!(
                    "offset {first} lies inside the range {skipped_first}-{skipped_last} an earlier repair skipped"
                )));
            }
        };
        let end = if next_base == Some(last + 1) {
            file_len
        } else {
            let found = find_next_frame(&file, start + 1, file_len, last + 1..last + 2, u64::MAX)
                .map_err(LogError::io("read segment", &log_path))?;
            match found {
                Some((position, _)) => position,
                // Nothing readable follows in the active segment: skip to its end.
                None if active => file_len,
                None => {
                    return Err(self.refuse(format!(
                        "no readable record with offset {} follows byte {start} of {}: the damage reaches past offset {last}; `runnel log check` shows where good records resume",
                        last + 1,
                        log_path.display()
                    )));
                }
            }
        };
        let span = end - start;
        let write_len = if active {
            span.max(MIN_FRAME_BYTES as u64)
        } else {
            span
        };
        let n_frames = write_len.div_ceil(MAX_FRAME_BYTES as u64).max(1);
        if n_frames > last - first + 1 || write_len < n_frames * MIN_FRAME_BYTES as u64 {
            return Err(self.refuse(format!(
                "the {span} bytes from byte {start} of {} cannot be the records of offsets {first}-{last}",
                log_path.display()
            )));
        }
        Ok(SkipPart {
            log_path,
            index_path,
            active,
            first,
            last,
            start,
            end,
            write_len,
        })
    }

    /// Rewrites `published` from a scan of the active segment, unless the scan stops at a
    /// bad frame that is not a torn tail (left for the next writer to report). Returns the
    /// next offset when it was rewritten.
    fn republish(&self) -> Result<Option<u64>, LogError> {
        let active_base = *self.bases.last().expect("bases are not empty");
        let (log_path, _) = segment_paths(self.dir, active_base);
        let (file, file_len) = open_segment_with_len(&log_path)?;
        let scan = scan_segment(
            &file,
            &log_path,
            active_base,
            file_len,
            self.index_interval_bytes,
        )?;
        if let Some(error) = &scan.stopped_by {
            let torn = super::segment::is_torn_tail(&file, error, file_len)
                .map_err(LogError::io("read segment", &log_path))?;
            if !torn {
                return Ok(None);
            }
        }
        write_published(
            self.dir,
            &Published {
                earliest: self.earliest(),
                active_base,
                active_size: scan.valid_size,
                next_offset: scan.next_offset,
                max_timestamp: scan.max_timestamp,
            },
        )?;
        Ok(Some(scan.next_offset))
    }

    /// Groups that committed an offset past `offset` on this partition.
    fn groups_past(&self, offset: u64) -> Result<Vec<(String, u64)>, LogError> {
        let offsets_dir = self
            .dir
            .parent()
            .and_then(Path::parent)
            .expect("partition folders are <log>/<topic>/<partition>")
            .join(OFFSETS_DIR);
        let entries = match std::fs::read_dir(&offsets_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(LogError::io("list", &offsets_dir)(error)),
        };
        let mut groups = Vec::new();
        for entry in entries {
            let entry = entry.map_err(LogError::io("list", &offsets_dir))?;
            let group = entry.file_name().to_string_lossy().into_owned();
            let committed = match read_offsets(&entry.path().join(self.topic)) {
                Ok(committed) => committed,
                // Reported by the group's own reads; not this repair's business.
                Err(_) => continue,
            };
            if let Some(committed) = committed.get(&self.partition)
                && *committed > offset
            {
                groups.push((group, *committed));
            }
        }
        groups.sort();
        Ok(groups)
    }
}

/// Creates the folder a repair keeps removed bytes in (and `repairs/`), durably.
fn create_backup_dir(part_dir: &Path, backup_dir: &Path) -> Result<(), LogError> {
    std::fs::create_dir_all(backup_dir).map_err(LogError::io("create", backup_dir))?;
    sync_dir(&part_dir.join(REPAIRS_DIR))?;
    sync_dir(part_dir)
}

/// Copies bytes `start..end` of `file` to a new file `to`, fsynced.
fn copy_range(file: &File, path: &Path, start: u64, end: u64, to: &Path) -> Result<(), LogError> {
    const CHUNK: u64 = 1 << 20;
    let out = File::create(to).map_err(LogError::io("create", to))?;
    let mut position = start;
    let mut buf = Vec::new();
    while position < end {
        let len = CHUNK.min(end - position);
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, position)
            .map_err(LogError::io("read segment", path))?;
        out.write_all_at(&buf, position - start)
            .map_err(LogError::io("write", to))?;
        position += len;
    }
    out.sync_all().map_err(LogError::io("fsync", to))
}

fn remove_if_present(path: &Path) -> Result<(), LogError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(LogError::io("remove", path)(error)),
    }
}

/// Drops the entries of a sealed index that point inside `start..end` (exclusive of
/// `start`, where the skip frame begins), rewriting it atomically. A missing or malformed
/// index is left to be rebuilt on open.
fn drop_index_entries(path: &Path, start: u64, end: u64) -> Result<(), LogError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(LogError::io("read index", path)(error)),
    };
    let Some(mut entries) = IndexEntry::decode_all(&bytes) else {
        return Ok(());
    };
    let Some(sentinel) = entries.pop() else {
        return Ok(());
    };
    entries.retain(|entry| {
        let position = u64::from(entry.position);
        position <= start || position >= end
    });
    let mut buf = Vec::with_capacity((entries.len() + 1) * format::INDEX_ENTRY_BYTES);
    for entry in entries.iter().chain(std::iter::once(&sentinel)) {
        entry.encode(&mut buf);
    }
    write_file_atomically(path, &buf)?;
    sync_dir(path.parent().expect("index paths have a parent"))
}

/// Rewrites `published` in place (followers keep it open, so it is never replaced).
fn write_published(part_dir: &Path, published: &Published) -> Result<(), LogError> {
    let path = part_dir.join(PUBLISHED_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LogError::io("open", &path))?;
    file.write_all_at(&published.encode(), 0)
        .map_err(LogError::io("write", &path))?;
    file.sync_all().map_err(LogError::io("fsync", &path))?;
    sync_dir(part_dir)
}

/// Appends `line` and a newline to `path`, fsynced (and its folder, if it is new).
fn append_line(path: &Path, line: &str) -> Result<(), LogError> {
    let existed = path.try_exists().map_err(LogError::io("stat", path))?;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(LogError::io("open", path))?;
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(LogError::io("append to", path))?;
    file.sync_all().map_err(LogError::io("fsync", path))?;
    if !existed {
        sync_dir(path.parent().expect("audit paths have a parent"))?;
    }
    Ok(())
}

/// The audit record of a repair: one JSON object.
fn audit_record(
    repair: &Repair<'_>,
    report: &RepairReport,
    details: &str,
    operator: Option<&str>,
) -> String {
    let (action, first, last) = match report.action {
        RepairAction::TruncateAfter(offset) => ("truncate-after", offset + 1, report.last_dropped),
        RepairAction::SkipRange { first, last } => ("skip-range", first, Some(last)),
    };
    let optional = |value: Option<u64>| value.map_or_else(|| "null".to_string(), |v| v.to_string());
    let groups = report
        .groups_past
        .iter()
        .map(|(group, offset)| {
            format!(r#"{{"group":{},"committed":{offset}}}"#, json_string(group))
        })
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"{{"time":{},"time_ms":{},"action":"{action}","topic":{},"partition":{},"first_offset":{first},"last_offset":{},"bytes_dropped":{},"next_offset":{},"backup":{},"user":{},"pid":{},"groups_past":[{groups}],{details}}}"#,
        json_string(&runnel_time::format_millis(repair.time_ms)),
        repair.time_ms,
        json_string(repair.topic),
        repair.partition,
        optional(last),
        report.bytes_dropped,
        optional(report.next_offset),
        json_string(&report.backup_dir.display().to_string()),
        operator.map_or_else(|| "null".to_string(), json_string),
        std::process::id(),
    )
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
    }
}
