//! The writer thread: group commit (one `write` and one fsync for everything queued),
//! publishing the durable end, rolling segments and retention.

use super::*;

/// The most bytes of records one group commit writes.
pub(super) const MAX_GROUP_COMMIT_BYTES: usize = 32 << 20;
/// The writer thread's state. Invariant: `size`, `next_offset` and `max_timestamp` describe
/// the active segment including bytes written but not yet fsynced.
pub(super) struct Writer {
    pub(super) shared: Arc<PartitionShared>,
    pub(super) config: EmbeddedLogConfig,
    pub(super) holds: Arc<RetentionHolds>,
    pub(super) file: File,
    /// `published`, rewritten in place after each fsync.
    pub(super) published: File,
    pub(super) active: Arc<Segment>,
    pub(super) size: u64,
    pub(super) next_offset: u64,
    pub(super) max_timestamp: i64,
    pub(super) bytes_since_index: u64,
    /// Set after a failed write or fsync; the partition then refuses appends until reopened.
    pub(super) poisoned: Option<String>,
    pub(super) buf: Vec<u8>,
    pub(super) last_retention: Instant,
}

pub(super) type AppendReply = (u64, oneshot::Sender<Result<u64, LogError>>);
pub(super) type PendingAppend = (Vec<ProduceRecord>, oneshot::Sender<Result<u64, LogError>>);

impl Writer {
    pub(super) fn run(mut self, receiver: Receiver<Command>) {
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
        // Every acknowledged byte is already fsynced. The active segment's index is written
        // as a sealed one's, so that the next open need not read the whole segment to rebuild
        // it (a writer that crashed leaves none, and the next open scans).
        if self.poisoned.is_none()
            && let Err(error) = self.active.write_sealed_index()
        {
            tracing::warn!(topic = %self.shared.topic, partition = self.shared.id, %error,
                "could not write the active segment's index at a clean stop; the next open rebuilds it");
        }
    }

    pub(super) fn append_batch(&mut self, batch: &mut Vec<PendingAppend>) {
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

    pub(super) fn poisoned_error(&self, reason: &str) -> LogError {
        LogError::Poisoned {
            topic: self.shared.topic.to_string(),
            partition: self.shared.id,
            reason: reason.to_string(),
        }
    }

    /// Writes the buffered frames, fsyncs, then publishes them to readers.
    pub(super) fn flush(&mut self, new_index: &mut Vec<IndexEntry>) -> Result<(), LogError> {
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
    pub(super) fn publish(&self) -> Result<(), LogError> {
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
    pub(super) fn roll(&mut self) -> Result<(), LogError> {
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

    pub(super) fn apply_retention_logged(&mut self) {
        if let Err(error) = self.apply_retention() {
            warn!(topic = %self.shared.topic, partition = self.shared.id, %error, "retention failed");
        }
    }

    /// Deletes the oldest sealed segments while the partition is over its size budget or
    /// they are older than the retention age. The active segment always stays, and so does
    /// every segment from the one holding the retention floor on (records a holding group,
    /// such as the archiver, has not consumed yet).
    pub(super) fn apply_retention(&mut self) -> Result<usize, LogError> {
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
