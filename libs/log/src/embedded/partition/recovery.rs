//! Opening a partition's files: listing its segments, recovering them after a crash (a torn
//! tail truncated) and opening the sealed and active segments.

use super::*;

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
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
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

pub(super) fn open_segment_file(path: &Path) -> Result<File, LogError> {
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
/// or inconsistent), the active one through the index a clean stop left, or by a full scan
/// that truncates a torn tail.
pub(super) fn recover_segments(
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
pub(super) struct SegmentContents {
    pub(super) size: u64,
    pub(super) next_offset: u64,
    pub(super) max_timestamp: i64,
    pub(super) index: Vec<IndexEntry>,
}

impl SegmentContents {
    /// The valid frames a scan found.
    pub(super) fn scanned(scan: ScanResult) -> SegmentContents {
        SegmentContents {
            size: scan.valid_size,
            next_offset: scan.next_offset,
            max_timestamp: scan.max_timestamp,
            index: scan.index,
        }
    }
}

pub(super) fn new_segment(
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

/// What a segment's index file (entries, then a sentinel: the offset, position and largest
/// timestamp at the segment's end) says of a segment of `file_len` bytes starting at offset
/// `base`, if the file is there and consistent with it: entries in order, the sentinel at the
/// file's end.
pub(super) fn load_index(index_path: &Path, base: u64, file_len: u64) -> Option<SegmentContents> {
    let mut entries = IndexEntry::decode_all(&std::fs::read(index_path).ok()?)?;
    let sentinel = entries.pop()?;
    let consistent = u64::from(sentinel.position) == file_len
        && entries.windows(2).all(|pair| {
            pair[0].relative_offset < pair[1].relative_offset
                && pair[0].position < pair[1].position
                && pair[0].max_timestamp_before <= pair[1].max_timestamp_before
        })
        && entries.last().is_none_or(|last| {
            last.position < sentinel.position
                && last.relative_offset <= sentinel.relative_offset
                && last.max_timestamp_before <= sentinel.max_timestamp_before
        });
    consistent.then(|| SegmentContents {
        size: file_len,
        next_offset: base + u64::from(sentinel.relative_offset),
        max_timestamp: sentinel.max_timestamp_before,
        index: entries,
    })
}

/// Opens a sealed segment through its index. A missing or inconsistent index is rebuilt
/// from the segment, and written back when `writer_config` says this process writes the
/// partition (a follower keeps it in memory).
pub(super) fn open_sealed_segment(
    dir: &Path,
    base: u64,
    next_base: u64,
    writer_config: Option<&EmbeddedLogConfig>,
) -> Result<Segment, LogError> {
    let (log_path, index_path) = segment_paths(dir, base);
    let (file, file_len) = open_segment_with_len(&log_path)?;
    if let Some(contents) =
        load_index(&index_path, base, file_len).filter(|contents| contents.next_offset == next_base)
    {
        return Ok(new_segment(base, (log_path, index_path), file, contents));
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

/// Removes the active segment's index file, if there is one.
fn remove_stale_index(index_path: &Path) -> Result<(), LogError> {
    match std::fs::remove_file(index_path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(LogError::io("remove stale index", index_path)(error))
        }
        _ => Ok(()),
    }
}

pub(super) fn open_active_segment(
    dir: &Path,
    base: u64,
    config: &EmbeddedLogConfig,
) -> Result<Segment, LogError> {
    let (log_path, index_path) = segment_paths(dir, base);
    let (file, file_len) = open_segment_with_len(&log_path)?;
    // A writer that stopped cleanly left the segment's index, ending where the file ends:
    // nothing was appended since, so there is no torn tail to find and no need to read the
    // whole segment. The file goes before anything is appended, so it never outlives that.
    if let Some(contents) = load_index(&index_path, base, file_len) {
        remove_stale_index(&index_path)?;
        return Ok(new_segment(base, (log_path, index_path), file, contents));
    }
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
    remove_stale_index(&index_path)?;
    Ok(new_segment(
        base,
        (log_path, index_path),
        file,
        SegmentContents::scanned(scan),
    ))
}
