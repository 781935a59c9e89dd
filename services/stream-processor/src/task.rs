//! A task: one job on one source partition, from its last checkpoint on.
//!
//! The task owns a `WindowOperator` with one input partition, so its output is a function
//! of that partition's records alone, in offset order: the arrival time of each batch is
//! the largest log timestamp in it, and the operator's output does not depend on how the
//! records are cut into batches. A rerun from a checkpoint therefore writes the same result
//! and late records again, which are idempotent upserts (results) or found by key (late
//! events): a crash changes nothing a reader of the latest versions sees.
//!
//! Order of effects per batch: outputs are appended (durably) before the batch counts as
//! done; a checkpoint records the offset after the last done batch, state first and
//! manifest last; then the offset is committed for the job's consumer group (for lag).
//!
//! The task reports to its cell of the status registry once per batch and per checkpoint,
//! and reads its partition's end offset about once a second (`END_OFFSET_REFRESH`) for the
//! lag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::array::RecordBatch;
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use object_store::ObjectStore;
use runnel_archive::{HybridSource, HybridStart};
use runnel_engine::{OperatorOutput, WindowOperator};
use runnel_events::StreamSchema;
use runnel_events::decode::EventDecoder;
use runnel_log::{Log, OffsetCommit, PartitionReader, Record, StartOffset, TransactionalWriter};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::StreamProcessorError;
use crate::join::{JoinInput, Joined};
use crate::status::{PartitionReporter, StatusRegistry};
use crate::window_join::WindowJoinInput;
use runnel_jobs::checkpoint::{CheckpointManifest, TaskCheckpoints, commit_metadata};
use runnel_jobs::records::{late_records, late_table_records, result_records};
use runnel_jobs::{Job, job_group, late_topic, members_group, results_topic};

/// How long a read waits for records before the task checks its checkpoint timer.
pub(crate) const READ_WAIT: Duration = Duration::from_millis(200);

/// Records that make a backlog: a task that reaches the end of its input with this many
/// processed since it last was there checkpoints then, without waiting for its interval.
const BACKLOG_RECORDS: u64 = 10_000;

/// How often a task reads its partition's end offset for its status.
const END_OFFSET_REFRESH: Duration = Duration::from_secs(1);

/// What a task needs from the service.
#[derive(Clone)]
pub(crate) struct TaskContext {
    /// The log.
    pub(crate) log: Arc<dyn Log>,
    /// The object store of the checkpoints.
    pub(crate) store: Arc<dyn ObjectStore>,
    /// `stream-processor.checkpoint-prefix`.
    pub(crate) checkpoint_prefix: String,
    /// `stream-processor.checkpoints-to-keep`.
    pub(crate) checkpoints_to_keep: u32,
    /// `stream-processor.checkpoint-interval`.
    pub(crate) checkpoint_interval: Duration,
    /// `stream-processor.read-batch-records`.
    pub(crate) read_batch_records: usize,
    /// `archive.prefix`: where the stream's Parquet history is, in `store`.
    pub(crate) history_prefix: String,
    /// Where tasks report their status.
    pub(crate) status: Arc<StatusRegistry>,
    /// `stream-processor.exactly-once`: outputs in Kafka transactions.
    pub(crate) exactly_once: bool,
}

impl TaskContext {
    /// Opens `partition` of `stream` through the hybrid source (its history, then its live
    /// log) at `offset`, or at the first archived offset (the log's earliest when nothing is
    /// archived) when there is none: where a direct task, a router or a join job's table
    /// reads.
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::History`]: the manifest, or a gap between history and log.
    pub(crate) async fn open_stream(
        &self,
        stream: &StreamSchema,
        partition: u32,
        offset: Option<u64>,
    ) -> Result<HybridSource, StreamProcessorError> {
        HybridSource::open(
            Arc::clone(&self.store),
            &self.history_prefix,
            Arc::clone(&self.log),
            stream,
            partition,
            offset.map_or(HybridStart::Earliest, HybridStart::Offset),
            self.read_batch_records,
        )
        .await
        .map_err(StreamProcessorError::History)
    }
}

/// One job on one partition.
pub(crate) struct Task {
    job: Arc<Job>,
    partition: u32,
    context: TaskContext,
    checkpoints: TaskCheckpoints,
    decoder: EventDecoder,
    operator: WindowOperator,
    /// The next source offset to read.
    offset: u64,
    epoch: u64,
    checkpointed_offset: u64,
    last_checkpoint: Instant,
    /// Events, results, late events or skipped records since the last checkpoint: what a
    /// checkpoint is for. Batches of routers' markers alone that changed no output are
    /// not: a restart reads them again and comes to the same state, so an idle job does
    /// not checkpoint every interval for the end markers its routers send every second.
    dirty: bool,
    status: PartitionReporter,
    /// When the partition's end offset was last read for the status.
    end_offset_read: Option<Instant>,
    /// The topic the task reads: the stream's, or the job's repartition topic.
    topic: String,
    /// Reading a repartition topic: per source partition, the highest source offset seen.
    /// With the number of the last copy of that row seen (an interval join's stream row
    /// joins into several rows; 0 for any other).
    seen_source_offsets: Vec<Option<(u64, u32)>>,
    /// No checkpoint: a direct task starts at the history's first offset (or the log's).
    fresh: bool,
    /// Exactly-once: the task's transactional writer.
    transaction: Option<Transaction>,
    /// A join job's table, joined with the stream rows before the windows.
    table: Option<JoinInput>,
    /// An interval join's `released_to` as the windows last took it.
    released_to: Option<i64>,
    /// A window join job's right side and join; the task's operator is its left side.
    window_join: Option<WindowJoinInput>,
    /// Rows of the other input (a changelog's rows late to the table, or a window join's
    /// right events late to their windows), to go to the late topic with the next outputs.
    late_table: Vec<RecordBatch>,
}

/// A task's Kafka transactions (`stream-processor.exactly-once`): its outputs since the last
/// checkpoint are in the open one, which commits with the checkpoint's source offset.
struct Transaction {
    writer: Box<dyn TransactionalWriter>,
    /// Whether a transaction is open.
    open: bool,
    /// Names this writer's checkpoints (`<epoch>-<token>/`), so that a fenced zombie never
    /// writes where its successor does.
    token: String,
}

impl Transaction {
    async fn ensure_open(&mut self) -> Result<(), runnel_log::LogError> {
        if !self.open {
            self.writer.begin().await?;
            self.open = true;
        }
        Ok(())
    }
}

/// A token no other writer of the task has: this process's id, a dot, and the time (so that
/// an operator can tell whose checkpoints a folder holds).
fn writer_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    format!("{}.{nanos:x}", std::process::id())
}

/// Where a task reads.
enum Source {
    /// A repartition topic, on the log.
    Log(Box<dyn PartitionReader>),
    /// The stream: its history, then its live log.
    Hybrid(Box<HybridSource>),
}

/// Header of a repartitioned record: the partition it was read from in the stream.
pub(crate) const SOURCE_PARTITION_HEADER: &str = "runnel-source-partition";
/// Header of a repartitioned record: its offset in the stream.
pub(crate) const SOURCE_OFFSET_HEADER: &str = "runnel-source-offset";

/// Header of a repartitioned record of an interval join job: its number among the joined
/// rows of its stream row (absent: 0).
pub(crate) const SOURCE_COPY_HEADER: &str = "runnel-source-copy";

/// Header of a router's progress marker: the largest event time its source partition has
/// reached (epoch ms); the marker has no key and no value.
pub(crate) const SOURCE_PROGRESS_HEADER: &str = "runnel-source-progress";

/// Header of a router's end marker: its source partition held nothing more when the router
/// asked (it had routed everything the log had); the value is the router's clock (epoch ms)
/// before it asked, so the partition holds nothing that arrived up to then. No key, no
/// value.
pub(crate) const SOURCE_AT_END_HEADER: &str = "runnel-source-at-end";

/// What a router's marker says about its source partition.
enum Marker {
    /// A progress marker: the largest event time the partition has reached.
    Progress(i64),
    /// An end marker: the partition holds nothing that arrived up to this time (epoch ms).
    AtEnd(i64),
}

/// A marker's source partition and what it says, from its headers; `None` for a copy.
fn source_marker(record: &Record) -> Option<(u32, Marker)> {
    let marker = if let Some(progress) = header_text(record, SOURCE_PROGRESS_HEADER) {
        Marker::Progress(progress.parse().ok()?)
    } else {
        // Routers before end markers carried a time wrote "1": a word that is stale at once.
        Marker::AtEnd(header_text(record, SOURCE_AT_END_HEADER)?.parse().ok()?)
    };
    Some((
        header_text(record, SOURCE_PARTITION_HEADER)?.parse().ok()?,
        marker,
    ))
}

/// The text of `record`'s header `name`, if it has one in UTF-8.
fn header_text<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|header| header.key == name)
        .and_then(|header| std::str::from_utf8(&header.value).ok())
}

/// A repartitioned record's number among the joined rows of its stream row (an interval
/// join's router numbers them), from its header; 0 without one.
fn source_copy(record: &Record) -> u32 {
    header_text(record, SOURCE_COPY_HEADER)
        .and_then(|copy| copy.parse().ok())
        .unwrap_or(0)
}

/// A repartitioned record's position in the stream, from its headers.
fn source_position(record: &Record) -> Option<(u32, u64)> {
    Some((
        header_text(record, SOURCE_PARTITION_HEADER)?.parse().ok()?,
        header_text(record, SOURCE_OFFSET_HEADER)?.parse().ok()?,
    ))
}

impl Task {
    /// Restores the task from its newest complete checkpoint, or starts it at the
    /// partition's earliest offset.
    ///
    /// # Errors
    ///
    /// Object-store and log failures; a checkpoint of another version of the job (its
    /// snapshot fingerprint differs).
    pub(crate) async fn open(
        job: Arc<Job>,
        partition: u32,
        source_partitions: u32,
        context: TaskContext,
    ) -> Result<Task, StreamProcessorError> {
        let mut options = job.options;
        if job.repartition {
            // One operator input per source partition: each has its own watermark.
            options.partitions = source_partitions;
        }
        let topic = job.input_topic();
        let checkpoints = TaskCheckpoints::new(
            &context.checkpoint_prefix,
            &job.name,
            partition,
            context.checkpoints_to_keep,
        );
        let status = context.status.register(&job.name, &topic, partition);
        let mut seen_source_offsets = vec![None; source_partitions as usize];
        let log_error = |source| StreamProcessorError::log(&topic, source);
        // Exactly-once: opening the writer fences a zombie of this task (its open transaction
        // is aborted) before the committed offsets are read; they, not the newest manifest,
        // say which checkpoint to restore.
        let (transaction, restored) = if context.exactly_once {
            let id = format!("runnel.{}.{topic}.{partition}", job.name);
            let writer = context
                .log
                .transactional_writer(&id)
                .await
                .map_err(log_error)?;
            let committed = context
                .log
                .committed_offset_and_metadata(&job_group(&job.name), &topic, partition)
                .await
                .map_err(log_error)?;
            let restored = match committed {
                None => None,
                Some((offset, metadata)) => Some(
                    checkpoints
                        .committed(
                            context.store.as_ref(),
                            &job_group(&job.name),
                            offset,
                            &metadata,
                        )
                        .await?,
                ),
            };
            let transaction = Transaction {
                writer,
                open: false,
                token: writer_token(),
            };
            (Some(transaction), restored)
        } else {
            (None, checkpoints.latest(context.store.as_ref()).await?)
        };
        let engine_error = |source| StreamProcessorError::Engine {
            job: job.name.clone(),
            source,
        };
        let mut table = None;
        let mut window_join = None;
        let (operator, offset, epoch) = match restored {
            Some(restored) => {
                if job.repartition {
                    let copies = &restored.manifest.seen_source_copies;
                    seen_source_offsets = restored
                        .manifest
                        .seen_source_offsets
                        .iter()
                        .enumerate()
                        .map(|(partition, offset)| {
                            offset
                                .map(|offset| (offset, copies.get(partition).copied().unwrap_or(0)))
                        })
                        .collect();
                    seen_source_offsets.resize(source_partitions as usize, None);
                }
                // A direct join task's state is the windows' snapshot, then the join's (a
                // repartitioned join job's routers join); a window join task's, the left
                // side's, then the right side's and the join's.
                let windows = match &job.joined {
                    None if job.window_join.is_some() => {
                        let (windows, join) =
                            runnel_engine::split_snapshot_parts(&restored.state, "windows")
                                .map_err(engine_error)?;
                        window_join = Some(WindowJoinInput::open(
                            &job,
                            (partition, source_partitions),
                            Some((join, &restored.manifest.table_offsets)),
                        )?);
                        windows
                    }
                    Some(_) if !job.repartition => {
                        let (windows, join) =
                            runnel_engine::split_snapshot_parts(&restored.state, "windows")
                                .map_err(engine_error)?;
                        table = Some(JoinInput::open(
                            &job,
                            (partition, source_partitions),
                            Some((join, &restored.manifest.table_offsets)),
                        )?);
                        windows
                    }
                    _ => &restored.state[..],
                };
                let operator = WindowOperator::restore(Arc::clone(&job.plan), options, windows)
                    .map_err(engine_error)?;
                info!(
                    partition,
                    epoch = restored.manifest.epoch,
                    offset = restored.manifest.source_offset,
                    "restored from checkpoint"
                );
                (
                    operator,
                    restored.manifest.source_offset,
                    restored.manifest.epoch,
                )
            }
            None => {
                let operator =
                    WindowOperator::new(Arc::clone(&job.plan), options).map_err(|source| {
                        StreamProcessorError::Engine {
                            job: job.name.clone(),
                            source,
                        }
                    })?;
                let earliest = context
                    .log
                    .earliest_offset(&topic, partition)
                    .await
                    .map_err(|source| StreamProcessorError::log(&topic, source))?;
                if job.joined.is_some() && !job.repartition {
                    table = Some(JoinInput::open(&job, (partition, source_partitions), None)?);
                }
                if job.window_join.is_some() {
                    window_join = Some(WindowJoinInput::open(
                        &job,
                        (partition, source_partitions),
                        None,
                    )?);
                }
                (operator, earliest, 0)
            }
        };
        status.started(
            offset,
            operator.watermark(),
            operator.late_count(),
            (epoch > 0).then_some(epoch),
        );
        Ok(Task {
            decoder: EventDecoder::new(&job.routed.stream),
            job,
            partition,
            context,
            checkpoints,
            operator,
            offset,
            epoch,
            checkpointed_offset: offset,
            last_checkpoint: Instant::now(),
            dirty: false,
            status,
            end_offset_read: None,
            topic,
            seen_source_offsets,
            fresh: epoch == 0,
            transaction,
            table,
            released_to: None,
            window_join,
            late_table: Vec::new(),
        })
    }

    /// Runs until `shutdown` is cancelled, checkpointing on the way and once more at the end.
    ///
    /// # Errors
    ///
    /// Log, object-store and engine failures.
    pub(crate) async fn run(
        mut self,
        shutdown: CancellationToken,
    ) -> Result<(), StreamProcessorError> {
        match self.run_until_stopped(shutdown).await {
            Ok(()) => Ok(()),
            Err(source) => Err(StreamProcessorError::TaskFailed {
                job: self.job.name.clone(),
                partition: self.partition,
                offset: self.offset,
                source: Box::new(source),
            }),
        }
    }

    async fn run_until_stopped(
        &mut self,
        shutdown: CancellationToken,
    ) -> Result<(), StreamProcessorError> {
        let topic = self.topic.clone();
        let mut source = self.open_source().await?;
        if let Some(table) = &mut self.table {
            table.open_sources(&self.context).await?;
        }
        if let Some(window_join) = &mut self.window_join {
            window_join.open_sources(&self.context).await?;
        }
        // Where the task last found the end of its input.
        let mut last_end = self.offset;
        loop {
            if self.table.is_some() {
                self.poll_table().await?;
            }
            if self.window_join.is_some() {
                self.poll_window_join().await?;
            }
            if let Some(offsets) = self
                .table
                .as_ref()
                .map(JoinInput::offsets)
                .or(self.window_join.as_ref().map(WindowJoinInput::offsets))
            {
                self.status.other_offsets(offsets);
            }
            // The read found nothing new: the task is at the end of its input.
            let at_end;
            match &mut source {
                Source::Log(reader) => {
                    let records = tokio::select! {
                        () = shutdown.cancelled() => break,
                        read = reader.next_batch(self.context.read_batch_records, READ_WAIT) => {
                            read.map_err(|source| StreamProcessorError::log(&topic, source))?
                        }
                    };
                    at_end = records.is_empty();
                    if !records.is_empty() {
                        self.process(&records).await?;
                        // A catching-up task always finds records ready: give the other
                        // tasks and the metrics endpoint (and, in `runnel all`, the other
                        // services) a turn.
                        tokio::task::yield_now().await;
                    }
                }
                Source::Hybrid(hybrid) => {
                    let batch = tokio::select! {
                        () = shutdown.cancelled() => break,
                        read = hybrid.next_batch(READ_WAIT) => {
                            read.map_err(StreamProcessorError::History)?
                        }
                    };
                    at_end = batch.is_none();
                    if let Some(batch) = batch {
                        self.process_positioned(&batch).await?;
                        tokio::task::yield_now().await;
                    }
                    // Everything before the source's position was yielded (and is now
                    // processed) or was undecodable and skipped; skipped records count as
                    // progress too, or a partition ending in them would never catch up.
                    if hybrid.position() > self.offset {
                        self.offset = hybrid.position();
                        self.dirty = true;
                        self.status.batch_done(
                            self.offset,
                            0,
                            0,
                            0,
                            self.operator.watermark(),
                            self.operator.late_count(),
                        );
                    }
                }
            }
            if self
                .end_offset_read
                .is_none_or(|read| read.elapsed() >= END_OFFSET_REFRESH)
            {
                self.read_end_offset(&topic).await;
            }
            // A task that has just worked off a backlog checkpoints as soon as it reaches the
            // end of its input, not up to an interval later: its results become visible at
            // once (exactly-once publishes them with the checkpoint), and a restart does not
            // redo the backlog. A trickle of live events never adds up to one.
            let backlog_done = at_end && self.offset.saturating_sub(last_end) >= BACKLOG_RECORDS;
            if at_end {
                last_end = self.offset;
            }
            if (backlog_done || self.last_checkpoint.elapsed() >= self.context.checkpoint_interval)
                && self.dirty
                && self.progressed()
            {
                self.checkpoint().await?;
            }
        }
        if self.progressed() {
            self.checkpoint().await?;
        }
        Ok(())
    }

    /// Whether the task has read past what its last checkpoint holds: its input, or a join
    /// job's other input.
    fn progressed(&self) -> bool {
        self.offset != self.checkpointed_offset
            || self.table.as_ref().is_some_and(JoinInput::progressed)
            || self
                .window_join
                .as_ref()
                .is_some_and(WindowJoinInput::progressed)
    }

    /// A window join job: reads what its right stream has through the right side, and emits
    /// the joined rows of the windows that closes.
    async fn poll_window_join(&mut self) -> Result<(), StreamProcessorError> {
        let Some(window_join) = &mut self.window_join else {
            return Ok(());
        };
        let polled = window_join.poll(&self.context).await?;
        if polled.events == 0 && polled.output.results.is_empty() && polled.late.is_empty() {
            return Ok(());
        }
        self.dirty = true;
        self.late_table.extend(polled.late);
        let arrival = self
            .operator
            .arrival_clock()
            .unwrap_or_else(runnel_time::now_millis);
        self.finish_batch(polled.output, arrival, None, 0).await
    }

    /// A join job: reads what its table's changelog has, and gives the windows the stream
    /// rows that that lets through.
    async fn poll_table(&mut self) -> Result<(), StreamProcessorError> {
        let Some(table) = &mut self.table else {
            return Ok(());
        };
        let joined = table.poll(&self.context).await?;
        // An interval join's progress may move with no row (its second stream idle): the
        // windows take it all the same.
        let released_to = table.released_to();
        if joined.table_rows == 0
            && joined.rows.is_empty()
            && joined.late_table.is_empty()
            && released_to == self.released_to
        {
            return Ok(());
        }
        self.released_to = released_to;
        self.dirty = true;
        // Rows the table lets through are the stream's, which arrived by the operator's
        // arrival clock.
        let arrival = self
            .operator
            .arrival_clock()
            .unwrap_or_else(runnel_time::now_millis);
        let output = self.windows(joined, arrival)?;
        self.finish_batch(output, arrival, None, 0).await
    }

    /// A join's rows through the windows (input 0): the windows' output, with the stream
    /// rows late to the join among its late events; the late changelog rows are kept for
    /// the next outputs.
    fn windows(
        &mut self,
        joined: Joined,
        arrival: i64,
    ) -> Result<OperatorOutput, StreamProcessorError> {
        let mut output = OperatorOutput::default();
        for rows in &joined.rows {
            output.append(
                self.operator
                    .process(0, rows, arrival)
                    .map_err(|source| self.engine_error(source))?,
            );
        }
        // An interval join's last rows are held until the join knows no earlier one can
        // come: the windows take that as their input's progress, or they would wait for rows
        // past the interval to fire.
        if let Some(progress) = self.table.as_ref().and_then(JoinInput::released_to) {
            self.released_to = Some(progress);
            output.append(
                self.operator
                    .advance_partition(0, progress, arrival)
                    .map_err(|source| self.engine_error(source))?,
            );
        }
        output.late_events.extend(joined.late_stream);
        self.late_table.extend(joined.late_table);
        Ok(output)
    }

    /// Opens where the task reads: the stream through the hybrid source (its history, then
    /// its live log), or the job's repartition topic on the log.
    async fn open_source(&mut self) -> Result<Source, StreamProcessorError> {
        if self.job.repartition {
            let reader = self
                .context
                .log
                .reader(&self.topic, self.partition, StartOffset::At(self.offset))
                .await
                .map_err(|source| StreamProcessorError::log(&self.topic, source))?;
            return Ok(Source::Log(reader));
        }
        let hybrid = self
            .context
            .open_stream(
                &self.job.stream,
                self.partition,
                (!self.fresh).then_some(self.offset),
            )
            .await?;
        if self.fresh {
            self.offset = hybrid.position();
            self.checkpointed_offset = self.offset;
        }
        Ok(Source::Hybrid(Box::new(hybrid)))
    }

    /// A batch of the stream's rows (declared columns, then `_partition`, `_offset`,
    /// `_ingest_time`) through the operator. Its arrival time is its largest ingest time:
    /// the largest log timestamp of its records, as when read from the log.
    async fn process_positioned(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<(), StreamProcessorError> {
        let declared = self.job.stream.declared().fields().len();
        let offsets = batch.column(declared + 1).as_primitive::<Int64Type>();
        let ingest_times = batch
            .column(declared + 2)
            .as_primitive::<TimestampMillisecondType>();
        let arrival = arrow::compute::max(ingest_times).unwrap_or_default();
        let input = self.job.project(batch)?;
        let output = match &mut self.table {
            Some(table) => {
                let joined = table.stream(self.partition, &input)?;
                self.windows(joined, arrival)?
            }
            None => {
                let mut output = self
                    .operator
                    .process(0, &input, arrival)
                    .map_err(|source| self.engine_error(source))?;
                if let Some(window_join) = &mut self.window_join {
                    window_join.left(&mut output, self.operator.watermark())?;
                }
                output
            }
        };
        let next_offset = offsets
            .iter()
            .flatten()
            .next_back()
            .map(|last| u64::try_from(last).unwrap_or_default() + 1);
        self.finish_batch(output, arrival, next_offset, batch.num_rows())
            .await
    }

    /// Records of the repartition topic through the operator. Their arrival time is the
    /// largest log timestamp among them (a batch of nothing but end markers stamped 0 takes
    /// the operator's arrival clock, or the wall clock's before it has one).
    async fn process(&mut self, records: &[Record]) -> Result<(), StreamProcessorError> {
        let arrival = records
            .iter()
            .map(|record| record.timestamp)
            .max()
            .filter(|arrival| *arrival > 0)
            .or(self.operator.arrival_clock())
            .unwrap_or_else(runnel_time::now_millis);
        let (output, events) = self.process_repartitioned(records, arrival)?;
        let next_offset = records.last().map(|last| last.offset + 1);
        self.finish_batch(output, arrival, next_offset, events)
            .await
    }

    /// Appends a batch's outputs, then counts the batch done: the task moves on to
    /// `next_offset` and reports `events` events.
    async fn finish_batch(
        &mut self,
        output: OperatorOutput,
        arrival: i64,
        next_offset: Option<u64>,
        events: usize,
    ) -> Result<(), StreamProcessorError> {
        let result_rows: usize = output.results.iter().map(RecordBatch::num_rows).sum();
        let errors = output.errors.len();
        self.dirty |= events > 0 || result_rows > 0 || errors > 0 || !output.late_events.is_empty();
        self.emit(output, arrival).await?;
        if let Some(next_offset) = next_offset {
            self.offset = next_offset;
        }
        self.status.batch_done(
            self.offset,
            events as u64,
            result_rows as u64,
            errors as u64,
            self.operator.watermark(),
            self.operator.late_count(),
        );
        Ok(())
    }

    fn engine_error(&self, source: runnel_engine::EngineError) -> StreamProcessorError {
        StreamProcessorError::Engine {
            job: self.job.name.clone(),
            source,
        }
    }

    /// Decodes repartitioned records (the job's routed rows: its stream's, or a join job's
    /// joined rows) into the plan's input; undecodable records are logged and left out.
    fn decode(&self, records: &[Record]) -> Result<RecordBatch, StreamProcessorError> {
        let decoded = self.decoder.decode(records)?;
        for bad in &decoded.undecodable {
            warn!(
                partition = bad.partition,
                offset = bad.offset,
                reason = %bad.reason,
                "undecodable record skipped"
            );
        }
        Ok(self.job.routed.project(&decoded.batch)?)
    }

    /// Records of the repartition topic: back in their stream coordinates (partition and
    /// offset from the headers), copies a restarted router wrote again dropped, and each run
    /// of one source partition given to the operator as that input; a progress marker
    /// advances its source partition's input, an end marker says it is at its end (so it may
    /// turn idle), each in order: after the run before it. Returns the output and the number
    /// of events (markers are not events).
    fn process_repartitioned(
        &mut self,
        records: &[Record],
        arrival: i64,
    ) -> Result<(OperatorOutput, usize), StreamProcessorError> {
        let mut output = OperatorOutput::default();
        let mut run: Vec<Record> = Vec::new();
        let mut run_partition = None;
        let mut events = 0;
        for record in records {
            if let Some((partition, marker)) = source_marker(record) {
                self.flush_run(&mut run, &mut run_partition, arrival, &mut output)?;
                if partition as usize >= self.seen_source_offsets.len() {
                    warn!(partition, "marker of an unknown source partition skipped");
                    continue;
                }
                // A marker repeated by a restarted router is harmless: progress only grows,
                // and an end marker only lets an input idle that sent nothing since, while
                // nothing has arrived after the time it vouches for.
                let marked = match marker {
                    Marker::Progress(event_time) => self
                        .operator
                        .advance_partition(partition, event_time, arrival),
                    Marker::AtEnd(as_of) => self.operator.input_at_end(partition, as_of),
                };
                output.append(marked.map_err(|source| self.engine_error(source))?);
                continue;
            }
            events += 1;
            let Some((partition, offset)) = source_position(record) else {
                warn!(
                    offset = record.offset,
                    "repartitioned record without its source headers skipped"
                );
                continue;
            };
            let Some(seen) = self.seen_source_offsets.get_mut(partition as usize) else {
                warn!(
                    partition,
                    "repartitioned record from an unknown source partition skipped"
                );
                continue;
            };
            let position = (offset, source_copy(record));
            if seen.is_some_and(|seen| position <= seen) {
                continue;
            }
            *seen = Some(position);
            if run_partition.is_some_and(|current| current != partition) {
                self.flush_run(&mut run, &mut run_partition, arrival, &mut output)?;
            }
            run_partition = Some(partition);
            run.push(Record {
                partition,
                offset,
                ..record.clone()
            });
        }
        self.flush_run(&mut run, &mut run_partition, arrival, &mut output)?;
        Ok((output, events))
    }

    /// Gives the run of records of one source partition collected so far to the operator,
    /// as that partition's input, and empties it.
    fn flush_run(
        &mut self,
        run: &mut Vec<Record>,
        run_partition: &mut Option<u32>,
        arrival: i64,
        output: &mut OperatorOutput,
    ) -> Result<(), StreamProcessorError> {
        let Some(partition) = run_partition.take() else {
            return Ok(());
        };
        let input = self.decode(run)?;
        output.append(
            self.operator
                .process(partition, &input, arrival)
                .map_err(|source| self.engine_error(source))?,
        );
        run.clear();
        Ok(())
    }

    /// Reads the partition's end offset into the status. A failure is only logged: the
    /// status keeps the previous value, and a log that fails will fail the next read too.
    async fn read_end_offset(&mut self, topic: &str) {
        self.end_offset_read = Some(Instant::now());
        match self.context.log.latest_offset(topic, self.partition).await {
            Ok(end_offset) => self.status.end_offset(end_offset),
            Err(error) => warn!(%error, "read the partition's end offset for the status"),
        }
    }

    async fn emit(
        &mut self,
        output: OperatorOutput,
        arrival: i64,
    ) -> Result<(), StreamProcessorError> {
        // Each failed event is a row of the late events, with its reason, offset and
        // partition; one line per batch says so.
        if let Some(first) = output.errors.first() {
            debug!(
                n_events = output.errors.len(),
                first_reason = %first.reason,
                "events not counted sent to the late topic"
            );
        }
        let results = result_records(&output.results, self.partition, arrival)?;
        if !results.is_empty() {
            let topic = results_topic(&self.job.name);
            self.append(&topic, results).await?;
        }
        let source_partition = (!self.job.repartition).then_some(self.partition);
        let late = late_records(
            &output.late_events,
            self.partition,
            source_partition,
            arrival,
        )?;
        if !late.is_empty() {
            let topic = late_topic(&self.job.name);
            self.append(&topic, late).await?;
        }
        if let Some(other) = self.job.other_input()
            && !self.late_table.is_empty()
        {
            let late = late_table_records(&other.name, &self.late_table, self.partition, arrival)?;
            self.late_table.clear();
            let topic = late_topic(&self.job.name);
            self.append(&topic, late).await?;
        }
        Ok(())
    }

    /// Appends output records: in the open transaction with exactly-once, else durably.
    async fn append(
        &mut self,
        topic: &str,
        records: Vec<runnel_log::ProduceRecord>,
    ) -> Result<(), StreamProcessorError> {
        let log_error = |source| StreamProcessorError::log(topic, source);
        match &mut self.transaction {
            Some(transaction) => {
                transaction.ensure_open().await.map_err(log_error)?;
                transaction
                    .writer
                    .append(topic, records)
                    .await
                    .map_err(log_error)
            }
            None => self
                .context
                .log
                .append(topic, records)
                .await
                .map(|_| ())
                .map_err(log_error),
        }
    }

    async fn checkpoint(&mut self) -> Result<(), StreamProcessorError> {
        let started = Instant::now();
        let mut state =
            self.operator
                .snapshot()
                .map_err(|source| StreamProcessorError::Engine {
                    job: self.job.name.clone(),
                    source,
                })?;
        let mut table_offsets = Vec::new();
        if let Some(table) = &self.table {
            let (join, offsets) = table.snapshot()?;
            state = runnel_engine::join_snapshot_parts(&state, &join);
            table_offsets = offsets;
        }
        if let Some(window_join) = &mut self.window_join {
            let (join, offsets) = window_join.snapshot()?;
            state = runnel_engine::join_snapshot_parts(&state, &join);
            table_offsets = offsets;
        }
        self.epoch += 1;
        let manifest = CheckpointManifest {
            job: self.job.name.clone(),
            partition: self.partition,
            epoch: self.epoch,
            source_offset: self.offset,
            watermark: self.operator.watermark(),
            late_count: self.operator.late_count(),
            state_bytes: state.len() as u64,
            seen_source_offsets: self
                .seen_source_offsets
                .iter()
                .map(|seen| seen.map(|(offset, _)| offset))
                .collect(),
            seen_source_copies: if self
                .seen_source_offsets
                .iter()
                .flatten()
                .any(|(_, copy)| *copy > 0)
            {
                self.seen_source_offsets
                    .iter()
                    .map(|seen| seen.map_or(0, |(_, copy)| copy))
                    .collect()
            } else {
                Vec::new()
            },
            table_offsets,
        };
        let topic = self.topic.as_str();
        let log_error = |source| StreamProcessorError::log(topic, source);
        let store = self.context.store.as_ref();
        match &mut self.transaction {
            Some(transaction) => {
                // The state first, then the transaction with the offset that names it; the
                // manifest that marks it complete (for status and pruning) after.
                self.checkpoints
                    .prepare(store, &manifest, state, &transaction.token)
                    .await?;
                transaction.ensure_open().await.map_err(log_error)?;
                // The job group's offset is the one recovery reads. The same offset for the
                // members group carries this instance's membership: once the group has given
                // the partition to another instance, the broker refuses the whole commit
                // (KIP-447), so a member that was away too long commits nothing.
                let commits =
                    [job_group(&self.job.name), members_group(&self.job.name)].map(|group| {
                        OffsetCommit {
                            group,
                            topic: topic.to_string(),
                            partition: self.partition,
                            offset: self.offset,
                            metadata: commit_metadata(self.epoch, &transaction.token),
                        }
                    });
                transaction
                    .writer
                    .commit(&commits)
                    .await
                    .map_err(log_error)?;
                transaction.open = false;
                self.checkpoints
                    .complete(store, &manifest, Some(&transaction.token))
                    .await?;
            }
            None => {
                self.checkpoints.save(store, &manifest, state).await?;
                self.context
                    .log
                    .commit_offsets(
                        &job_group(&self.job.name),
                        topic,
                        &[(self.partition, self.offset)],
                    )
                    .await
                    .map_err(log_error)?;
            }
        }
        debug!(epoch = self.epoch, offset = self.offset, "checkpoint");
        self.checkpointed_offset = self.offset;
        if let Some(table) = &mut self.table {
            table.checkpointed(manifest.table_offsets.clone());
        }
        if let Some(window_join) = &mut self.window_join {
            window_join.checkpointed(manifest.table_offsets.clone());
        }
        self.last_checkpoint = Instant::now();
        self.dirty = false;
        self.status
            .checkpoint_done(self.epoch, self.offset, started.elapsed());
        Ok(())
    }
}
