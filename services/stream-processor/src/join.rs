//! A join job's other input in its task: a table's whole changelog (AS OF) or a whole second
//! stream (an interval join), every partition, read through the hybrid source (its history,
//! then its live log) into the task's live join (`runnel_engine::LiveJoin`), which joins the
//! stream's rows before the windows see them.
//!
//! Every task of a join job holds all of the other input, as Kafka Streams' global tables
//! are held by every instance: the stream needs no repartitioning by the join key, and a
//! task's table is whole whatever the partitioning of the two streams. For an interval join
//! each stream row lives in one task, so each pair is made once, and the second stream's
//! rows stay only as long as an interval can still need them.
//!
//! When stream rows wait and the table is quiet: a stream row waits until the table's
//! watermark reaches its event time, and a table that gets no updates never moves its
//! watermark. So once every changelog partition has been read to the log's end, as asked of
//! the log after the waiting rows were read, the waiting rows are joined with the table as
//! it stands (`LiveJoin::other_at_end`): every version appended before them is in it, as
//! with an idle source in Flink. (No ingest time is compared with a clock: a producer's
//! timestamps may run ahead of this machine's.) A changelog row that comes after still
//! updates the table, and is late only behind the table's watermark. The release depends on
//! when the task looked, so a join job's result versions may differ between runs (its final
//! aggregates do not when the table's updates come before the stream rows they concern).
//! An interval join's second stream read to its end likewise stops holding the join's
//! watermark (`LiveJoin::other_at_end`), so `LEFT` rows expire on the stream's time alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use runnel_archive::HybridSource;
use runnel_engine::{LATE_PARTITION_COLUMN, LiveJoin, LiveJoinOptions, LiveJoinOutput};
use runnel_events::StreamSchema;
use runnel_jobs::{Job, JoinedInput};
use tokio_util::sync::CancellationToken;

use crate::StreamProcessorError;
use crate::task::TaskContext;

/// Batches read per partition of a join job's other input per poll, so that a long
/// changelog or second stream does not hold the task's own stream back for its whole length
/// at once.
pub(crate) const OTHER_BATCHES_PER_POLL: usize = 16;

/// How often, at most, the other input's end offsets are asked for while rows wait on it.
pub(crate) const END_CHECK: Duration = Duration::from_millis(100);

/// Every partition of a join job's other input (a table's changelog, or a second stream),
/// read through the hybrid source (its history, then its live log) by each of the job's
/// tasks, and where it has been read to.
pub(crate) struct WholeStream {
    stream: StreamSchema,
    /// Per partition, its reader (opened by [`WholeStream::open`]).
    sources: Vec<HybridSource>,
    /// Per partition, the next offset to read.
    offsets: Vec<u64>,
    /// `offsets` at the last checkpoint.
    checkpointed: Vec<u64>,
    /// Whether each partition's last read found nothing new.
    drained: Vec<bool>,
}

impl WholeStream {
    /// `input` of job `job`, to be read from `restored` (a checkpoint's offsets, one per
    /// partition) or, without one, from each partition's start.
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::Job`]: a checkpoint of another partition count.
    pub(crate) fn new(
        job: &str,
        input: &JoinedInput,
        restored: Option<&[u64]>,
    ) -> Result<WholeStream, StreamProcessorError> {
        let partitions = input.partitions as usize;
        let offsets = restored.map(<[u64]>::to_vec).unwrap_or_default();
        if restored.is_some() && offsets.len() != partitions {
            return Err(StreamProcessorError::Job {
                job: job.to_string(),
                message: format!(
                    "its checkpoint holds offsets of {} partitions of `{}`, which has {partitions}",
                    offsets.len(),
                    input.stream.name()
                ),
            });
        }
        Ok(WholeStream {
            stream: input.stream.clone(),
            sources: Vec::new(),
            checkpointed: offsets.clone(),
            offsets,
            drained: vec![false; partitions],
        })
    }

    /// Opens the readers: at the restored offsets, or at each partition's first archived
    /// offset (the log's earliest when nothing is archived).
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::History`]: a manifest, or a gap between history and log.
    pub(crate) async fn open(&mut self, context: &TaskContext) -> Result<(), StreamProcessorError> {
        let mut sources = Vec::new();
        for partition in 0..self.drained.len() {
            let start = self.offsets.get(partition).copied();
            sources.push(
                context
                    .open_stream(&self.stream, partition as u32, start)
                    .await?,
            );
        }
        self.offsets = sources.iter().map(HybridSource::position).collect();
        if self.checkpointed.is_empty() {
            self.checkpointed = self.offsets.clone();
        }
        self.sources = sources;
        Ok(())
    }

    /// The partition count.
    pub(crate) fn partitions(&self) -> usize {
        self.drained.len()
    }

    /// Up to `max` batches of partition `partition` (the stream's positioned columns) that
    /// are there now; marks the partition drained if a read found nothing new.
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::History`]: a history file or the log failed.
    pub(crate) async fn read(
        &mut self,
        partition: usize,
        max: usize,
    ) -> Result<Vec<RecordBatch>, StreamProcessorError> {
        let mut batches = Vec::new();
        let Some(source) = self.sources.get_mut(partition) else {
            return Ok(batches);
        };
        self.drained[partition] = false;
        for _ in 0..max {
            let batch = source
                .next_batch(Duration::ZERO)
                .await
                .map_err(StreamProcessorError::History)?;
            self.offsets[partition] = source.position();
            let Some(batch) = batch else {
                self.drained[partition] = true;
                break;
            };
            batches.push(batch);
        }
        Ok(batches)
    }

    /// Whether every partition's last read found nothing new.
    pub(crate) fn drained(&self) -> bool {
        self.drained.iter().all(|drained| *drained)
    }

    /// Per partition, whether its last read found nothing new and the log, asked now, holds
    /// nothing past where it was read to. (`&mut`: a `&self` held across the await would ask
    /// the readers to be `Sync`.)
    ///
    /// # Errors
    ///
    /// The log's failures.
    pub(crate) async fn partitions_at_end(
        &mut self,
        context: &TaskContext,
    ) -> Result<Vec<bool>, StreamProcessorError> {
        let topic = self.stream.name();
        let mut at_end = Vec::with_capacity(self.offsets.len());
        for (partition, offset) in self.offsets.iter().enumerate() {
            if !self.drained[partition] {
                at_end.push(false);
                continue;
            }
            let end = context
                .log
                .latest_offset(topic, partition as u32)
                .await
                .map_err(|source| StreamProcessorError::log(topic, source))?;
            at_end.push(*offset >= end);
        }
        Ok(at_end)
    }

    /// Whether every partition is at its end (see [`WholeStream::partitions_at_end`]).
    ///
    /// # Errors
    ///
    /// The log's failures.
    pub(crate) async fn at_end(
        &mut self,
        context: &TaskContext,
    ) -> Result<bool, StreamProcessorError> {
        Ok(self.drained()
            && self
                .partitions_at_end(context)
                .await?
                .into_iter()
                .all(|at_end| at_end))
    }

    /// The next offset to read, per partition.
    pub(crate) fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    /// The offsets of a checkpoint just taken.
    pub(crate) fn checkpointed(&mut self, offsets: Vec<u64>) {
        self.checkpointed = offsets;
    }

    /// Whether the stream was read past where the last checkpoint holds.
    pub(crate) fn progressed(&self) -> bool {
        self.offsets != self.checkpointed
    }
}

/// A join job's table and its changelog readers, in one task.
pub(crate) struct JoinInput {
    job: Arc<Job>,
    join: LiveJoin,
    /// The task's stream partition, and the stream's partition count: every task sees every
    /// late changelog row, and the one whose partition is the row's changelog partition
    /// modulo the count reports it.
    task: (u32, u32),
    /// The changelog.
    changelog: WholeStream,
    /// When the changelog's end offsets were last asked for.
    end_checked: Option<Instant>,
}

/// Which input a join call was for.
#[derive(Clone, Copy)]
enum Side {
    /// The stream's partition.
    Stream(u32),
    /// The changelog's partition.
    Changelog(u32),
}

/// What the join gave for the windows and the late topic.
#[derive(Default)]
pub(crate) struct Joined {
    /// Joined rows, as the window operator takes them.
    pub(crate) rows: Vec<RecordBatch>,
    /// Stream rows late to the join, as late events of the task's partition (with
    /// `_partition`).
    pub(crate) late_stream: Vec<RecordBatch>,
    /// Changelog rows late to the table, with `_partition` their changelog partition.
    pub(crate) late_table: Vec<RecordBatch>,
    /// Table rows read (they change the state a checkpoint holds).
    pub(crate) table_rows: usize,
}

impl JoinInput {
    /// The table of `job` (a join job), new or restored from `state` (the join's part of a
    /// checkpoint) with `offsets`, the changelog offsets that checkpoint holds.
    ///
    /// # Errors
    ///
    /// A job that joins no table; a snapshot the join refuses.
    pub(crate) fn open(
        job: &Arc<Job>,
        task: (u32, u32),
        restored: Option<(&[u8], &[u64])>,
    ) -> Result<JoinInput, StreamProcessorError> {
        let (options, table) = join_options(job)?;
        let changelog = WholeStream::new(&job.name, table, restored.map(|(_, offsets)| offsets))?;
        let engine = |source| StreamProcessorError::Engine {
            job: job.name.clone(),
            source,
        };
        let join = match restored {
            Some((state, _)) => {
                LiveJoin::restore(Arc::clone(&job.plan), &options, state).map_err(engine)?
            }
            None => LiveJoin::new(Arc::clone(&job.plan), &options).map_err(engine)?,
        };
        Ok(JoinInput {
            job: Arc::clone(job),
            join,
            task,
            changelog,
            end_checked: None,
        })
    }

    /// Opens the changelog's readers (see [`WholeStream::open`]).
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::History`]: a manifest, or a gap between history and log.
    pub(crate) async fn open_sources(
        &mut self,
        context: &TaskContext,
    ) -> Result<(), StreamProcessorError> {
        self.changelog.open(context).await
    }

    fn input(&self) -> &JoinedInput {
        self.job
            .joined
            .as_ref()
            .expect("a join job has its other input")
    }

    /// See `LiveJoin::released_to`.
    pub(crate) fn released_to(&self) -> Option<i64> {
        self.join.released_to()
    }

    /// The join's snapshot, and the changelog offsets it goes with.
    pub(crate) fn snapshot(&self) -> Result<(Vec<u8>, Vec<u64>), StreamProcessorError> {
        let state = self.join.snapshot().map_err(|source| self.engine(source))?;
        Ok((state, self.changelog.offsets().to_vec()))
    }

    /// The changelog's next offset to read, per partition.
    pub(crate) fn offsets(&self) -> &[u64] {
        self.changelog.offsets()
    }

    /// The offsets of a checkpoint just taken.
    pub(crate) fn checkpointed(&mut self, offsets: Vec<u64>) {
        self.changelog.checkpointed(offsets);
    }

    /// Whether the changelog was read past where the last checkpoint holds.
    pub(crate) fn progressed(&self) -> bool {
        self.changelog.progressed()
    }

    /// Stream rows (the plan's stream input) of partition `partition` into the join.
    pub(crate) fn stream(
        &mut self,
        partition: u32,
        input: &RecordBatch,
    ) -> Result<Joined, StreamProcessorError> {
        let output = self
            .join
            .stream(0, input)
            .map_err(|source| self.engine(source))?;
        let mut joined = Joined::default();
        self.add(&mut joined, output, Side::Stream(partition))?;
        Ok(joined)
    }

    /// Reads what the changelog has (a bounded number of batches per partition) into the
    /// table; when every partition is at the log's end, as asked after the waiting stream
    /// rows were read, joins them with the table as it stands (see the module docs).
    pub(crate) async fn poll(
        &mut self,
        context: &TaskContext,
    ) -> Result<Joined, StreamProcessorError> {
        let mut joined = Joined::default();
        self.read_changelog(&mut joined).await?;
        // The throttle starts only once every partition is drained (before that, each poll
        // reads on and asks the log nothing).
        if self.join.waiting() > 0
            && self.changelog.drained()
            && self
                .end_checked
                .is_none_or(|checked| checked.elapsed() >= END_CHECK)
        {
            self.end_checked = Some(Instant::now());
            if self.changelog.at_end(context).await? {
                let output = self
                    .join
                    .other_at_end()
                    .map_err(|source| self.engine(source))?;
                self.add(&mut joined, output, Side::Stream(self.task.0))?;
            }
        }
        Ok(joined)
    }

    /// For a router: joins every row of `input` (stream rows of partition `partition`) with
    /// the table once it holds every version that can be valid at their times: its watermark
    /// has reached their largest time, or every changelog partition has been read to the
    /// log's end as asked after they were read. Reads the
    /// changelog until then. The joined rows come out in the rows' stream order (the window
    /// tasks drop a copy by its source offset, so a router sends a partition's rows in
    /// offset order). `None` if `shutdown` came first.
    pub(crate) async fn join_whole(
        &mut self,
        context: &TaskContext,
        (partition, input): (u32, &RecordBatch),
        shutdown: &CancellationToken,
    ) -> Result<Option<Joined>, StreamProcessorError> {
        let plan = Arc::clone(&self.job.plan);
        let time = input
            .schema()
            .index_of(plan.event_time())
            .map_err(StreamProcessorError::Encode)?;
        let times = arrow::compute::cast(input.column(time), &DataType::Int64)
            .map_err(StreamProcessorError::Encode)?;
        let latest = arrow::compute::max(times.as_primitive::<Int64Type>());
        let mut joined = Joined::default();
        loop {
            self.read_changelog(&mut joined).await?;
            if latest.is_none_or(|latest| latest <= self.join.other_watermark()) {
                break;
            }
            if self.changelog.drained() {
                if self.changelog.at_end(context).await? {
                    break;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(crate::task::READ_WAIT) => {}
                }
            }
        }
        let mut stream = self.stream(partition, input)?;
        let output = self
            .join
            .other_at_end()
            .map_err(|source| self.engine(source))?;
        self.add(&mut stream, output, Side::Stream(partition))?;
        joined.late_stream = stream.late_stream;
        if !stream.rows.is_empty() {
            let rows = arrow::compute::concat_batches(&plan.stream_schema(), &stream.rows)
                .map_err(StreamProcessorError::Encode)?;
            let offsets = rows
                .column_by_name(runnel_events::OFFSET_COLUMN)
                .ok_or_else(|| StreamProcessorError::Job {
                    job: self.job.name.clone(),
                    message: "joined rows without `_offset`".to_string(),
                })?;
            let order = arrow::compute::sort_to_indices(offsets, None, None)
                .map_err(StreamProcessorError::Encode)?;
            joined.rows = vec![
                arrow::compute::take_record_batch(&rows, &order)
                    .map_err(StreamProcessorError::Encode)?,
            ];
        }
        Ok(Some(joined))
    }

    /// Reads what the changelog has, a bounded number of batches per partition, into the
    /// table.
    async fn read_changelog(&mut self, joined: &mut Joined) -> Result<(), StreamProcessorError> {
        for partition in 0..self.changelog.partitions() {
            for batch in self
                .changelog
                .read(partition, OTHER_BATCHES_PER_POLL)
                .await?
            {
                let input = self.input().project(&batch)?;
                joined.table_rows += input.num_rows();
                let output = self
                    .join
                    .other(partition as u32, &input)
                    .map_err(|source| self.engine(source))?;
                self.add(joined, output, Side::Changelog(partition as u32))?;
            }
        }
        Ok(())
    }

    /// Adds a join output of a call for `side`: its rows; its late stream rows and the
    /// stream rows it refused as late events of the stream's partition; its late changelog
    /// rows as late rows of the changelog's partition, if this task reports that partition's
    /// (the changelog rows it refused are logged: they changed nothing).
    fn add(
        &self,
        joined: &mut Joined,
        output: LiveJoinOutput,
        side: Side,
    ) -> Result<(), StreamProcessorError> {
        joined.rows.extend(output.rows);
        let stream_partition = match side {
            Side::Stream(partition) => partition,
            Side::Changelog(_) => self.task.0,
        };
        for late in output.late_stream {
            joined
                .late_stream
                .push(with_partition(&late, stream_partition)?);
        }
        match side {
            Side::Stream(partition) => {
                for refused in output.refused {
                    joined
                        .late_stream
                        .push(with_partition(&refused, partition)?);
                }
            }
            Side::Changelog(partition) => {
                if partition % self.task.1.max(1) == self.task.0 {
                    for late in output.late_other {
                        joined.late_table.push(with_partition(&late, partition)?);
                    }
                }
                for error in &output.errors {
                    tracing::warn!(
                        table = %self.input().name,
                        partition,
                        reason = %error.reason,
                        "row of the joined input left out of the join"
                    );
                }
            }
        }
        Ok(())
    }

    fn engine(&self, source: runnel_engine::EngineError) -> StreamProcessorError {
        StreamProcessorError::Engine {
            job: self.job.name.clone(),
            source,
        }
    }
}

/// The live join's options for `job`, and its table. The table's rows may come the job's
/// out-of-orderness behind their partition's largest event time; stream rows are kept as
/// far back as the windows still take them: the out-of-orderness, the lateness and a
/// window's length.
fn join_options(job: &Job) -> Result<(LiveJoinOptions, &JoinedInput), StreamProcessorError> {
    let table = job
        .joined
        .as_ref()
        .ok_or_else(|| StreamProcessorError::Job {
            job: job.name.clone(),
            message: "a join job without its table".to_string(),
        })?;
    let window = Duration::from_millis(u64::try_from(job.plan.window().size_ms()).unwrap_or(0));
    let options = LiveJoinOptions {
        stream_partitions: 1,
        other_partitions: table.partitions,
        table_out_of_orderness: job.options.max_out_of_orderness,
        stream_out_of_orderness: job
            .options
            .max_out_of_orderness
            .saturating_add(job.options.allowed_lateness)
            .saturating_add(window),
        max_out_of_orderness: job.options.max_out_of_orderness,
        allowed_lateness: job.options.allowed_lateness,
    };
    Ok((options, table))
}

/// `batch` with a `_partition` column of `partition` (UInt32), as late records are keyed.
fn with_partition(
    batch: &RecordBatch,
    partition: u32,
) -> Result<RecordBatch, StreamProcessorError> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    fields.push(Field::new(LATE_PARTITION_COLUMN, DataType::UInt32, false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(UInt32Array::from(vec![
        partition;
        batch.num_rows()
    ])));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(StreamProcessorError::Encode)
}
