//! Following a partition another process writes: re-reading its `published` file and
//! opening the segments it names (read-only, no recovery).

use super::*;

/// How a process that does not write a partition learns what its writer made durable.
#[derive(Debug)]
pub(super) struct Follower {
    pub(super) published_path: PathBuf,
    /// Opened once it exists (a folder from before `published` files has none until a
    /// writer takes the partition over).
    pub(super) published_file: Option<File>,
    /// What `published` said when last applied.
    pub(super) last: Option<Published>,
}

impl Follower {
    /// Reads `published`; `None` while it does not exist or every read raced a rewrite.
    pub(super) fn read(&mut self) -> Result<Option<Published>, LogError> {
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

/// Opens the segments of a partition another process writes, as `published` describes them
/// (every segment file, up to the first bad frame of the newest, when there is no
/// `published` yet). Segments in `known` are kept, the one that was active updated from
/// its sealed index.
pub(super) fn load_followed_segments(
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
pub(super) fn open_followed_active_segment(
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
    // A writer that stopped cleanly left the segment's index; it holds while the file ends
    // where the writer published and the index ends there too (the next writer removes it
    // before it appends).
    if let Some(published) = published
        && limit == file_len
        && let Some(contents) = load_index(&index_path, base, file_len)
        && contents.next_offset == published.next_offset
    {
        return Ok(new_segment(base, (log_path, index_path), file, contents));
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
pub(super) const FOLLOWER_INDEX_INTERVAL_BYTES: u32 = 4096;
