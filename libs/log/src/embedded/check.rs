//! `runnel log check`: a read-only scan of partitions for bad frames and index problems, and
//! the repair hint that corruption errors carry.
//!
//! The scan takes no lock and writes nothing, so it runs beside the processes that use the
//! log. It reads the active segment up to the end its writer published (`published`): bytes
//! below it are acknowledged records, so any bad frame there is corruption. Bytes after it
//! are an append in progress or a torn tail; a bad frame there counts only if it is not a
//! torn tail and the writer does not publish past it within about a second (a writer
//! publishes right after its fsync).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::format::{IndexEntry, PUBLISHED_BYTES, Published};
use super::partition::{PUBLISHED_FILE, list_segment_bases};
use super::segment::{FrameCursor, FrameError, find_next_frame, is_torn_tail, segment_paths};
use super::{LOCKS_DIR, OFFSETS_DIR, TOPIC_META_FILE, parse_topic_meta};
use crate::LogError;

/// How far the hint of a corruption error looks for the next good record.
const HINT_RESYNC_BYTES: u64 = 4 << 20;
/// How often, and how many times, the check re-reads `published` when it finds a bad frame
/// after the published end (it may be an append in progress).
const UNPUBLISHED_RETRY: Duration = Duration::from_millis(200);
const UNPUBLISHED_RETRIES: u32 = 5;

/// What kind of problem the check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A frame fails its checksum, is malformed, cut short or carries the wrong offset:
    /// records are lost until the partition is repaired.
    BadFrame,
    /// A sealed segment's index is missing or does not match its segment. Readers rebuild
    /// it in memory and the next writer writes it back; no record is lost.
    Index,
    /// The partition's files do not fit together: segments that do not join, a `published`
    /// file that does not match the active segment, a file name that is not a base offset.
    Layout,
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProblemKind::BadFrame => "bad frame",
            ProblemKind::Index => "index",
            ProblemKind::Layout => "layout",
        })
    }
}

/// One problem found by [`check_embedded_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogProblem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The file it is in.
    pub path: PathBuf,
    /// Byte position in that file.
    pub position: u64,
    /// The first offset whose record is unreadable (bad frames only).
    pub first_offset: Option<u64>,
    /// The last unreadable offset, when a good record follows or the segment's end is known.
    pub last_offset: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

/// Offsets that a repair replaced with a skip frame (`runnel log repair --skip-range`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRange {
    /// First skipped offset.
    pub first: u64,
    /// Last skipped offset.
    pub last: u64,
    /// The segment file.
    pub path: PathBuf,
    /// Byte position of the skip frame.
    pub position: u64,
}

/// What [`check_embedded_log`] found in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionCheck {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The partition's folder.
    pub dir: PathBuf,
    /// Segment files checked.
    pub segments: usize,
    /// The oldest retained offset.
    pub earliest_offset: u64,
    /// The offset after the last record found.
    pub next_offset: u64,
    /// Everything wrong, in file order.
    pub problems: Vec<LogProblem>,
    /// Offsets skipped by earlier repairs.
    pub skipped: Vec<SkippedRange>,
    /// Bytes after the last whole record of the active segment: an append in progress, or a
    /// torn tail that the next writer truncates. Not a problem.
    pub unfinished_tail_bytes: u64,
}

impl PartitionCheck {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The `runnel log repair` commands that would make every bad frame readable again
    /// (skipping the unreadable offsets), one per bad frame whose range is known.
    pub fn repair_commands(&self) -> Vec<String> {
        self.problems
            .iter()
            .filter(|problem| problem.kind == ProblemKind::BadFrame)
            .filter_map(|problem| {
                let first = problem.first_offset?;
                Some(match problem.last_offset {
                    Some(last) => skip_command(&self.topic, self.partition, first, last),
                    None if first > 0 => {
                        truncate_command(&self.topic, self.partition, first - 1)
                    }
                    None => format!(
                        "runnel log repair --topic {} --partition {} --skip-range 0-<last bad offset> --yes",
                        self.topic, self.partition
                    ),
                })
            })
            .collect()
    }
}

fn skip_command(topic: &str, partition: u32, first: u64, last: u64) -> String {
    format!(
        "runnel log repair --topic {topic} --partition {partition} --skip-range {first}-{last} --yes"
    )
}

fn truncate_command(topic: &str, partition: u32, after: u64) -> String {
    format!(
        "runnel log repair --topic {topic} --partition {partition} --truncate-after {after} --yes"
    )
}

/// Scans the partitions of the embedded log in `dir` for bad frames and index problems:
/// every partition of `topic` (or of every topic), or only `partition`. Read-only and
/// lock-free, so it runs while other processes write the log. Blocking.
///
/// # Errors
///
/// [`LogError::UnknownTopic`], [`LogError::UnknownPartition`], and I/O errors that stop the
/// scan (an unreadable folder). Damage is reported in the result, not as an error.
pub fn check_embedded_log(
    dir: &Path,
    topic: Option<&str>,
    partition: Option<u32>,
) -> Result<Vec<PartitionCheck>, LogError> {
    let topics = match topic {
        Some(topic) => vec![topic.to_string()],
        None => list_topics(dir)?,
    };
    let mut checks = Vec::new();
    for topic in topics {
        let partitions = topic_partitions(dir, &topic)?;
        let ids: Vec<u32> = match partition {
            Some(partition) if partition >= partitions => {
                return Err(LogError::UnknownPartition {
                    topic,
                    partition,
                    partitions,
                });
            }
            Some(partition) => vec![partition],
            None => (0..partitions).collect(),
        };
        for id in ids {
            checks.push(check_partition(
                &topic,
                id,
                &dir.join(&topic).join(id.to_string()),
            )?);
        }
    }
    Ok(checks)
}

/// The topics of the log in `dir` (folders with a `topic.meta`), sorted.
fn list_topics(dir: &Path) -> Result<Vec<String>, LogError> {
    let mut topics = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(LogError::io("list log folder", dir))?;
    for entry in entries {
        let entry = entry.map_err(LogError::io("list log folder", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == OFFSETS_DIR || name == LOCKS_DIR {
            continue;
        }
        if entry
            .path()
            .join(TOPIC_META_FILE)
            .try_exists()
            .map_err(LogError::io("stat", entry.path()))?
        {
            topics.push(name);
        }
    }
    topics.sort();
    Ok(topics)
}

/// The partition count of `topic` from its `topic.meta`.
pub(crate) fn topic_partitions(dir: &Path, topic: &str) -> Result<u32, LogError> {
    crate::check_name("topic", topic)?;
    let meta_path = dir.join(topic).join(TOPIC_META_FILE);
    match std::fs::read_to_string(&meta_path) {
        Ok(text) => parse_topic_meta(&meta_path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(LogError::UnknownTopic(topic.to_string()))
        }
        Err(error) => Err(LogError::io("read topic metadata", &meta_path)(error)),
    }
}

/// Reads a `published` file: `Ok(Ok(None))` if there is none, `Ok(Err(reason))` if it does
/// not decode (after a few tries, in case a read raced the writer's rewrite).
pub(crate) fn read_published(path: &Path) -> Result<Result<Option<Published>, String>, LogError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(error) => return Err(LogError::io("open", path)(error)),
    };
    let mut buf = [0u8; PUBLISHED_BYTES];
    for _ in 0..5 {
        match file.read_exact_at(&mut buf, 0) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(Err(format!(
                    "{} bytes expected, the file is shorter",
                    PUBLISHED_BYTES
                )));
            }
            Err(error) => return Err(LogError::io("read", path)(error)),
        }
        if let Some(published) = Published::decode(&buf) {
            return Ok(Ok(Some(published)));
        }
        // A read that raced the writer's rewrite: try again.
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Err("its checksum does not match".to_string()))
}

/// Checks one partition.
fn check_partition(topic: &str, id: u32, dir: &Path) -> Result<PartitionCheck, LogError> {
    let mut check = PartitionCheck {
        topic: topic.to_string(),
        partition: id,
        dir: dir.to_path_buf(),
        segments: 0,
        earliest_offset: 0,
        next_offset: 0,
        problems: Vec::new(),
        skipped: Vec::new(),
        unfinished_tail_bytes: 0,
    };
    if !dir.try_exists().map_err(LogError::io("stat", dir))? {
        check.problems.push(LogProblem {
            kind: ProblemKind::Layout,
            path: dir.to_path_buf(),
            position: 0,
            first_offset: None,
            last_offset: None,
            reason: "the partition folder is missing".to_string(),
        });
        return Ok(check);
    }
    let published_path = dir.join(PUBLISHED_FILE);
    let mut published = match read_published(&published_path)? {
        Ok(published) => published,
        Err(reason) => {
            check.problems.push(LogProblem {
                kind: ProblemKind::Layout,
                path: published_path.clone(),
                position: 0,
                first_offset: None,
                last_offset: None,
                reason: format!("unreadable `published` file: {reason}"),
            });
            None
        }
    };
    let mut bases = match list_segment_bases(dir) {
        Ok(bases) => bases,
        Err(LogError::Corrupt {
            path,
            position,
            reason,
        }) => {
            check.problems.push(LogProblem {
                kind: ProblemKind::Layout,
                path,
                position,
                first_offset: None,
                last_offset: None,
                reason,
            });
            return Ok(check);
        }
        Err(error) => return Err(error),
    };
    // A segment newer than the published active one: the writer rolled since; read again.
    if let Some(last) = bases.last()
        && published.is_some_and(|published| published.active_base < *last)
        && let Ok(again) = read_published(&published_path)?
    {
        published = again;
    }
    if let Some(published) = published {
        // Retention deletes a segment's file after publishing the new earliest offset.
        bases.retain(|base| *base >= published.earliest);
    }
    let Some(&earliest) = bases.first() else {
        check.problems.push(LogProblem {
            kind: ProblemKind::Layout,
            path: dir.to_path_buf(),
            position: 0,
            first_offset: None,
            last_offset: None,
            reason: "the partition folder holds no segment".to_string(),
        });
        return Ok(check);
    };
    check.earliest_offset = earliest;
    check.next_offset = earliest;
    for (idx, base) in bases.iter().copied().enumerate() {
        let (log_path, index_path) = segment_paths(dir, base);
        let file = match File::open(&log_path) {
            Ok(file) => file,
            // Deleted by retention while the check ran.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && idx + 1 < bases.len() => {
                continue;
            }
            Err(error) => return Err(LogError::io("open segment", &log_path)(error)),
        };
        check.segments += 1;
        if check.next_offset != base && idx > 0 {
            check.problems.push(LogProblem {
                kind: ProblemKind::Layout,
                path: log_path.clone(),
                position: 0,
                first_offset: None,
                last_offset: None,
                reason: format!(
                    "the segment starts at offset {base} but the one before ends at {}",
                    check.next_offset
                ),
            });
        }
        let mut scanner = Scanner {
            check: &mut check,
            file: &file,
            path: &log_path,
            position: 0,
            expected: base,
            index: None,
        };
        match bases.get(idx + 1).copied() {
            Some(next_base) => {
                scanner.index = load_index(scanner.check, &index_path, base, next_base, &file)?;
                scanner.scan_sealed(next_base)?;
            }
            None => {
                let published = published.filter(|published| published.active_base == base);
                scanner.scan_active(published, &published_path)?;
            }
        }
    }
    Ok(check)
}

/// An index being checked against the frames of its segment as they are scanned.
struct IndexCheck {
    path: PathBuf,
    base: u64,
    entries: Vec<IndexEntry>,
    /// The next entry to meet.
    next: usize,
    /// Whether a mismatch was reported (one per index is enough).
    reported: bool,
}

/// Loads a sealed segment's index and checks its shape; `None` if there is nothing to
/// check it against (missing or malformed, reported).
fn load_index(
    check: &mut PartitionCheck,
    path: &Path,
    base: u64,
    next_base: u64,
    file: &File,
) -> Result<Option<IndexCheck>, LogError> {
    let problem = |reason: String| LogProblem {
        kind: ProblemKind::Index,
        path: path.to_path_buf(),
        position: 0,
        first_offset: None,
        last_offset: None,
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            check.problems.push(problem(
                "the sealed segment has no index (readers rebuild it; the next writer writes it)"
                    .to_string(),
            ));
            return Ok(None);
        }
        Err(error) => return Err(LogError::io("read index", path)(error)),
    };
    let Some(mut entries) = IndexEntry::decode_all(&bytes) else {
        check.problems.push(problem(format!(
            "{} bytes is not a whole number of 16-byte entries",
            bytes.len()
        )));
        return Ok(None);
    };
    let Some(sentinel) = entries.pop() else {
        check.problems.push(problem(
            "the index is empty (no sentinel entry)".to_string(),
        ));
        return Ok(None);
    };
    let file_len = file
        .metadata()
        .map_err(LogError::io("stat segment", path))?
        .len();
    if u64::from(sentinel.position) != file_len
        || base + u64::from(sentinel.relative_offset) != next_base
    {
        check.problems.push(problem(format!(
            "its sentinel says {} records in {} bytes; the segment holds offsets {base}..{next_base} in {file_len} bytes",
            sentinel.relative_offset, sentinel.position
        )));
    }
    if let Some(pair) = entries.windows(2).position(|pair| {
        pair[0].relative_offset >= pair[1].relative_offset
            || pair[0].position >= pair[1].position
            || pair[0].max_timestamp_before > pair[1].max_timestamp_before
    }) {
        check.problems.push(LogProblem {
            position: (pair as u64 + 1) * 16,
            ..problem("entries out of order".to_string())
        });
        return Ok(None);
    }
    Ok(Some(IndexCheck {
        path: path.to_path_buf(),
        base,
        entries,
        next: 0,
        reported: false,
    }))
}

impl IndexCheck {
    /// Notes a good frame at `position` with `offset`.
    fn frame(&mut self, check: &mut PartitionCheck, position: u64, offset: u64) {
        while let Some(entry) = self.entries.get(self.next) {
            let entry_position = u64::from(entry.position);
            if entry_position > position {
                return;
            }
            if entry_position < position || self.base + u64::from(entry.relative_offset) != offset {
                self.mismatch(
                    check,
                    format!(
                        "entry {} points at offset {} at byte {entry_position}, which is not where a record starts with that offset",
                        self.next,
                        self.base + u64::from(entry.relative_offset)
                    ),
                );
            }
            self.next += 1;
        }
    }

    /// Entries past the last good frame point nowhere.
    fn finish(&mut self, check: &mut PartitionCheck, end: u64) {
        if let Some(entry) = self.entries.get(self.next)
            && u64::from(entry.position) >= end
        {
            self.mismatch(
                check,
                format!(
                    "entry {} points at byte {}, past the segment's last record",
                    self.next, entry.position
                ),
            );
        }
    }

    fn mismatch(&mut self, check: &mut PartitionCheck, reason: String) {
        if self.reported {
            return;
        }
        self.reported = true;
        check.problems.push(LogProblem {
            kind: ProblemKind::Index,
            path: self.path.clone(),
            position: self.next as u64 * 16,
            first_offset: None,
            last_offset: None,
            reason,
        });
    }
}

/// Scans one segment file, reporting into the partition's check.
struct Scanner<'a> {
    check: &'a mut PartitionCheck,
    file: &'a File,
    path: &'a Path,
    /// Where the next frame starts.
    position: u64,
    /// The offset the next frame must have.
    expected: u64,
    index: Option<IndexCheck>,
}

impl Scanner<'_> {
    /// Reads good frames up to `limit`; returns the first bad one.
    fn scan_until_error(&mut self, limit: u64) -> Result<Option<FrameError>, LogError> {
        let mut cursor = FrameCursor::default();
        loop {
            let frame = match cursor.frame_at(self.file, self.position, limit) {
                Ok(Some((frame, _))) => frame,
                Ok(None) => return Ok(None),
                Err(FrameError::Io(source)) => {
                    return Err(LogError::Io {
                        action: "read segment",
                        path: self.path.to_path_buf(),
                        source,
                    });
                }
                Err(error) => return Ok(Some(error)),
            };
            if frame.offset != self.expected {
                return Ok(Some(FrameError::WrongOffset {
                    position: self.position,
                    reason: format!(
                        "record has offset {} where {} was expected",
                        frame.offset, self.expected
                    ),
                }));
            }
            if let Some(index) = self.index.as_mut() {
                index.frame(self.check, self.position, frame.offset);
            }
            if let Some(last) = frame.skipped_to {
                self.check.skipped.push(SkippedRange {
                    first: frame.offset,
                    last,
                    path: self.path.to_path_buf(),
                    position: self.position,
                });
            }
            self.position += frame.frame_len as u64;
            self.expected = frame.end_offset();
            self.check.next_offset = self.expected;
        }
    }

    /// Reports a bad frame and looks for where good records resume (offsets up to
    /// `end_offset`, exclusive); returns whether they do, with the position moved there.
    fn bad_frame(
        &mut self,
        error: &FrameError,
        limit: u64,
        end_offset: Option<u64>,
        note: &str,
    ) -> Result<bool, LogError> {
        let position = error.position().unwrap_or(self.position);
        let reason = match error {
            FrameError::Truncated { frame_len, .. } => {
                format!("record of {frame_len:?} bytes is cut short")
            }
            FrameError::Invalid { reason, .. } | FrameError::WrongOffset { reason, .. } => {
                reason.clone()
            }
            FrameError::Io(source) => source.to_string(),
        };
        let resumes = find_next_frame(
            self.file,
            position + 1,
            limit,
            self.expected + 1..end_offset.unwrap_or(u64::MAX),
            u64::MAX,
        )
        .map_err(LogError::io("read segment", self.path))?;
        let last_offset = match (resumes, end_offset) {
            (Some((_, offset)), _) | (None, Some(offset)) => Some(offset - 1),
            (None, None) => None,
        };
        self.check.problems.push(LogProblem {
            kind: ProblemKind::BadFrame,
            path: self.path.to_path_buf(),
            position,
            first_offset: Some(self.expected),
            last_offset,
            reason: format!("{reason}{note}"),
        });
        match resumes {
            Some((resume_position, offset)) => {
                self.position = resume_position;
                self.expected = offset;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// A sealed segment: every byte is a good frame, and it ends where the next one starts.
    fn scan_sealed(&mut self, next_base: u64) -> Result<(), LogError> {
        let file_len = self.len()?;
        loop {
            let Some(error) = self.scan_until_error(file_len)? else {
                break;
            };
            if !self.bad_frame(&error, file_len, Some(next_base), "")? {
                self.position = file_len;
                self.expected = next_base;
                break;
            }
        }
        if let Some(mut index) = self.index.take() {
            index.finish(self.check, self.position);
        }
        if self.expected != next_base {
            self.check.problems.push(LogProblem {
                kind: ProblemKind::Layout,
                path: self.path.to_path_buf(),
                position: self.position,
                first_offset: None,
                last_offset: None,
                reason: format!(
                    "the segment ends at offset {} but the next segment starts at {next_base}",
                    self.expected
                ),
            });
        }
        self.check.next_offset = next_base;
        Ok(())
    }

    /// The active segment: good frames up to the published end, then an append in progress
    /// or a torn tail at most.
    fn scan_active(
        &mut self,
        mut published: Option<Published>,
        published_path: &Path,
    ) -> Result<(), LogError> {
        let base = self.expected;
        let mut published_limit = published.map_or(0, |published| published.active_size);
        let file_len = self.len()?;
        if published_limit > file_len {
            self.check.problems.push(LogProblem {
                kind: ProblemKind::Layout,
                path: self.path.to_path_buf(),
                position: file_len,
                first_offset: None,
                last_offset: None,
                reason: format!(
                    "the writer published {published_limit} durable bytes, the file has {file_len}"
                ),
            });
            published_limit = file_len;
        }
        // Acknowledged records: every bad frame is corruption.
        while let Some(error) = self.scan_until_error(published_limit)? {
            let end = published.map(|published| published.next_offset);
            if !self.bad_frame(&error, file_len, end, "")? {
                return Ok(());
            }
            if self.position >= published_limit {
                break;
            }
        }
        if let Some(published) = published
            && self.position == published_limit
            && self.expected != published.next_offset
        {
            self.check.problems.push(LogProblem {
                kind: ProblemKind::Layout,
                path: published_path.to_path_buf(),
                position: 0,
                first_offset: None,
                last_offset: None,
                reason: format!(
                    "the writer published offsets up to {}, the segment holds them up to {}",
                    published.next_offset, self.expected
                ),
            });
        }
        // Past the published end.
        let mut retries = 0;
        loop {
            let file_len = self.len()?;
            let Some(error) = self.scan_until_error(file_len)? else {
                return Ok(());
            };
            let torn = is_torn_tail(self.file, &error, file_len)
                .map_err(LogError::io("read segment", self.path))?;
            let position = error.position().unwrap_or(self.position);
            let end = published.map(|published| published.next_offset);
            if published.is_some_and(|published| published.active_size > position) {
                // Published meanwhile: acknowledged records.
                if !self.bad_frame(&error, file_len, end, "")? {
                    return Ok(());
                }
                continue;
            }
            if torn {
                self.check.unfinished_tail_bytes = file_len - position;
                return Ok(());
            }
            if retries < UNPUBLISHED_RETRIES {
                // Perhaps a write in progress: give its writer time to publish past it.
                retries += 1;
                std::thread::sleep(UNPUBLISHED_RETRY);
                if let Ok(Some(again)) = read_published(published_path)?
                    && again.active_base == base
                    && again.active_size > position
                {
                    published = Some(again);
                }
                continue;
            }
            let note = " (after the end the writer published: the next writer refuses to start)";
            if !self.bad_frame(
                &error,
                file_len,
                end.filter(|end| *end > self.expected),
                note,
            )? {
                return Ok(());
            }
        }
    }

    fn len(&self) -> Result<u64, LogError> {
        Ok(self
            .file
            .metadata()
            .map_err(LogError::io("stat segment", self.path))?
            .len())
    }
}

/// Adds to a corruption error found at `position` of the segment `file` in the partition
/// folder `dir` (the frame there should have offset `expected`) what is affected and the
/// commands that recover. `limit` bounds the bytes to search, `end_offset` the offsets
/// (exclusive) when the segment's end is known.
pub(crate) fn with_repair_hint(
    error: LogError,
    dir: &Path,
    file: &File,
    expected: u64,
    limit: u64,
    end_offset: Option<u64>,
) -> LogError {
    let LogError::Corrupt {
        path,
        position,
        reason,
    } = error
    else {
        return error;
    };
    let hint = repair_hint(dir, file, position, expected, limit, end_offset);
    LogError::Corrupt {
        path,
        position,
        reason: format!("{reason}; {hint}"),
    }
}

/// The hint of [`with_repair_hint`].
fn repair_hint(
    dir: &Path,
    file: &File,
    position: u64,
    expected: u64,
    limit: u64,
    end_offset: Option<u64>,
) -> String {
    let partition = dir
        .file_name()
        .map_or_else(|| "?".into(), |name| name.to_string_lossy());
    let topic = dir
        .parent()
        .and_then(Path::file_name)
        .map_or_else(|| "?".into(), |name| name.to_string_lossy());
    let resumes = find_next_frame(
        file,
        position + 1,
        limit,
        expected + 1..end_offset.unwrap_or(u64::MAX),
        HINT_RESYNC_BYTES,
    )
    .ok()
    .flatten()
    .map(|(_, offset)| offset)
    .or(end_offset);
    let check = format!("`runnel log check --topic {topic} --partition {partition}`");
    match resumes {
        Some(resumes) => {
            let last = resumes - 1;
            let range = if last == expected {
                format!("offset {expected} is unreadable")
            } else {
                format!("offsets {expected}-{last} are unreadable")
            };
            format!(
                "{range}; to recover, stop the process that writes {topic}/{partition} and run `{}` (every other offset keeps its record), after {check} lists every bad frame",
                skip_command(&topic, partition.parse().unwrap_or(0), expected, last)
            )
        }
        None if expected > 0 => format!(
            "offsets from {expected} on are unreadable; {check} finds where good records resume; to recover, stop the process that writes {topic}/{partition} and run `runnel log repair --topic {topic} --partition {partition} --skip-range {expected}-<last bad offset> --yes`, or `{}` (drops every record after {})",
            truncate_command(&topic, partition.parse().unwrap_or(0), expected - 1),
            expected - 1
        ),
        None => format!(
            "offsets from 0 on are unreadable; {check} finds where good records resume; to recover, stop the process that writes {topic}/{partition} and run `runnel log repair --topic {topic} --partition {partition} --skip-range 0-<last bad offset> --yes`"
        ),
    }
}
