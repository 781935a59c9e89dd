//! The embedded backend's partition reader.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use super::check::with_repair_hint;
use super::format;
use super::partition::{FOLLOW_POLL, PartitionShared};
use super::segment::{FrameCursor, Segment};
use crate::{LogError, PartitionReader, Record};

/// Reads one partition of the embedded log, from the segment files, durable records only:
/// below the high watermark of this process's writer, or of the `published` file of the
/// process that writes the partition.
///
/// Reads are positioned `pread`s of at most 256 KiB (more only for a larger record) from
/// what is almost always the page cache, done inline: they stay well under the 500 µs an
/// async task may block, and keep `next_batch` cancel-safe, since all state is updated
/// before it returns.
pub(crate) struct EmbeddedReader {
    shared: Arc<PartitionShared>,
    high_watermark: watch::Receiver<u64>,
    /// The segment holding `next_offset`, once located.
    segment: Option<Arc<Segment>>,
    /// File position of the frame at or before `next_offset` in `segment`.
    file_position: u64,
    next_offset: u64,
    cursor: FrameCursor,
}

impl EmbeddedReader {
    pub(crate) fn new(
        shared: Arc<PartitionShared>,
        offset: u64,
    ) -> Result<EmbeddedReader, LogError> {
        let high_watermark = shared.high_watermark.subscribe();
        let mut reader = EmbeddedReader {
            shared,
            high_watermark,
            segment: None,
            file_position: 0,
            next_offset: offset,
            cursor: FrameCursor::default(),
        };
        reader.locate()?;
        Ok(reader)
    }

    /// Finds the segment and index position of `next_offset`.
    fn locate(&mut self) -> Result<(), LogError> {
        let segment = self.shared.segment_for(self.next_offset)?;
        self.file_position = segment.position_for_offset(self.next_offset);
        self.segment = Some(segment);
        self.cursor.clear();
        Ok(())
    }

    /// Reads durable records below `high_watermark`, at most `max_records`.
    ///
    /// An error after some records were read returns those records; the error comes back
    /// on the next call, since the position stays at the bad record.
    fn read_durable(
        &mut self,
        max_records: usize,
        high_watermark: u64,
    ) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::with_capacity(max_records.min(4096));
        let read = self.read_into(&mut records, max_records, high_watermark);
        if read.is_err() {
            // Read the bytes again next time: a repair may have rewritten them meanwhile.
            self.cursor.clear();
        }
        match read {
            Err(error) if records.is_empty() => Err(error),
            _ => Ok(records),
        }
    }

    fn read_into(
        &mut self,
        records: &mut Vec<Record>,
        max_records: usize,
        high_watermark: u64,
    ) -> Result<(), LogError> {
        if self.segment.is_none() {
            self.locate()?;
        }
        while records.len() < max_records && self.next_offset < high_watermark {
            let segment = Arc::clone(self.segment.as_ref().expect("located above"));
            // The offset first: the size published with it (or later) covers its records.
            let segment_end = segment.next_offset();
            let limit = segment.durable_size();
            let read = self
                .cursor
                .frame_at(&segment.file, self.file_position, limit)
                .map_err(|error| self.corrupt(&segment, error.into_corrupt(&segment.log_path)));
            let Some((frame, bytes)) = read? else {
                // The end of this segment: move on to the one that starts where it ended.
                match self.shared.segment_starting_at(segment_end) {
                    Some(next) if !Arc::ptr_eq(&next, &segment) => {
                        self.segment = Some(next);
                        self.file_position = 0;
                        self.cursor.clear();
                        continue;
                    }
                    _ => break,
                }
            };
            if frame.end_offset() <= self.next_offset {
                // Scanning forward from an index entry to the wanted offset.
                self.file_position += frame.frame_len as u64;
                continue;
            }
            if let Some(last) = frame.skipped_to
                && frame.offset <= self.next_offset
            {
                // Offsets a repair skipped: the next record returned is the one after them.
                warn!(
                    topic = %self.shared.topic,
                    partition = self.shared.id,
                    first = self.next_offset,
                    last,
                    "reading past offsets that a repair skipped (see repairs.jsonl in the partition folder)"
                );
                self.file_position += frame.frame_len as u64;
                self.next_offset = last + 1;
                continue;
            }
            if frame.offset != self.next_offset {
                let error = LogError::Corrupt {
                    path: segment.log_path.clone(),
                    position: self.file_position,
                    reason: format!(
                        "record has offset {} where {} was expected",
                        frame.offset, self.next_offset
                    ),
                };
                return Err(self.corrupt(&segment, error));
            }
            records.push(Record {
                topic: Arc::clone(&self.shared.topic),
                partition: self.shared.id,
                offset: frame.offset,
                timestamp: frame.timestamp,
                key: frame.key.clone().map(|range| bytes.slice(range)),
                value: bytes.slice(frame.value.clone()),
                headers: if frame.headers.is_empty() {
                    Vec::new()
                } else {
                    format::headers_from(&bytes, &frame)
                },
            });
            self.file_position += frame.frame_len as u64;
            self.next_offset += 1;
        }
        Ok(())
    }
}

impl EmbeddedReader {
    /// Adds to a corruption error at the reader's position what is affected and how to
    /// recover.
    fn corrupt(&self, segment: &Segment, error: LogError) -> LogError {
        with_repair_hint(
            error,
            &self.shared.dir,
            &segment.file,
            self.next_offset,
            segment.durable_size(),
            Some(segment.next_offset()),
        )
    }
}

#[async_trait]
impl PartitionReader for EmbeddedReader {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let deadline = Instant::now() + max_wait;
        loop {
            // Another process writing the partition publishes through a file, not the watch.
            self.shared.refresh()?;
            let high_watermark = *self.high_watermark.borrow_and_update();
            if self.next_offset < high_watermark {
                let records = self.read_durable(max_records, high_watermark)?;
                if !records.is_empty() || max_records == 0 {
                    return Ok(records);
                }
            }
            let wake = if self.shared.is_following() {
                deadline.min(Instant::now() + FOLLOW_POLL)
            } else {
                deadline
            };
            match tokio::time::timeout_at(wake, self.high_watermark.changed()).await {
                Err(_elapsed) if Instant::now() >= deadline => return Ok(Vec::new()),
                Err(_elapsed) => {}
                Ok(Err(_closed)) => return Err(LogError::Closed),
                Ok(Ok(())) => {}
            }
        }
    }

    fn position(&self) -> u64 {
        self.next_offset
    }

    async fn seek(&mut self, offset: u64) -> Result<(), LogError> {
        let previous = self.next_offset;
        self.next_offset = offset;
        if let Err(error) = self.locate() {
            self.next_offset = previous;
            return Err(error);
        }
        Ok(())
    }
}
