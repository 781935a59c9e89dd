//! A join job's table in its task: the table's whole changelog, every partition, read
//! through the hybrid source (its history, then its live log) into the task's
//! [`TemporalJoin`], which joins each stream row with the table's version valid at the row's
//! event time before the windows see it.
//!
//! Every task of a join job holds the whole table, as Kafka Streams' global tables are held
//! by every instance: the stream needs no repartitioning by the join key, and a task's
//! table is whole whatever the partitioning of the two streams.
//!
//! When stream rows wait and the table is quiet: a stream row waits until the table's
//! watermark reaches its event time, and a table that gets no updates never moves its
//! watermark. So once every changelog partition has been read to the log's end, as asked of
//! the log after the waiting rows arrived (their largest ingest time at or before the time
//! taken just before asking), the waiting rows are joined with the table as it stands
//! ([`TemporalJoin::release_waiting`]): no version that arrived before them is missing, as
//! with an idle source in Flink. A changelog row that comes after still updates the table,
//! and is late only behind the table's watermark. The release depends on when the task
//! looked, so a join job's result versions may differ between runs (its final aggregates do
//! not when the table's updates come before the stream rows they concern).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use runnel_archive::HybridSource;
use runnel_engine::{JoinOutput, LATE_PARTITION_COLUMN, TemporalJoin, TemporalJoinSpec};
use runnel_jobs::{Job, JobTable};
use tokio_util::sync::CancellationToken;

use crate::StreamProcessorError;
use crate::task::TaskContext;

/// Table batches read per changelog partition per call of [`TableInput::poll`], so that a
/// long changelog does not hold the stream back for its whole length at once.
const TABLE_BATCHES_PER_POLL: usize = 16;

/// How often, at most, the changelog's end offsets are asked for while stream rows wait.
const END_CHECK: Duration = Duration::from_millis(100);

/// A join job's table and its changelog readers, in one task.
pub(crate) struct TableInput {
    job: Arc<Job>,
    join: TemporalJoin,
    /// The task's stream partition, and the stream's partition count: every task sees every
    /// late changelog row, and the one whose partition is the row's changelog partition
    /// modulo the count reports it.
    task: (u32, u32),
    /// Per changelog partition, its reader (opened by [`TableInput::open_sources`]).
    sources: Vec<HybridSource>,
    /// Per changelog partition, the next offset to read.
    offsets: Vec<u64>,
    /// `offsets` at the last checkpoint.
    checkpointed: Vec<u64>,
    /// Whether each partition's last read found nothing new.
    drained: Vec<bool>,
    /// The largest ingest time of the stream rows given to the join.
    stream_arrival: Option<i64>,
    /// When the changelog's end offsets were last asked for.
    end_checked: Option<Instant>,
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

impl TableInput {
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
    ) -> Result<TableInput, StreamProcessorError> {
        let (spec, table) = join_spec(job)?;
        let partitions = table.partitions as usize;
        let engine = |source| StreamProcessorError::Engine {
            job: job.name.clone(),
            source,
        };
        let (join, offsets) = match restored {
            Some((state, offsets)) => {
                if offsets.len() != partitions {
                    return Err(StreamProcessorError::Job {
                        job: job.name.clone(),
                        message: format!(
                            "its checkpoint holds offsets of {} partitions of the table `{}`'s changelog, which has {partitions}",
                            offsets.len(),
                            table.name
                        ),
                    });
                }
                (
                    TemporalJoin::restore(spec, state).map_err(engine)?,
                    offsets.to_vec(),
                )
            }
            None => (TemporalJoin::new(spec).map_err(engine)?, Vec::new()),
        };
        Ok(TableInput {
            job: Arc::clone(job),
            join,
            task,
            sources: Vec::new(),
            checkpointed: offsets.clone(),
            offsets,
            drained: vec![false; partitions],
            stream_arrival: None,
            end_checked: None,
        })
    }

    /// Opens the changelog's readers: at the restored offsets, or at each partition's first
    /// archived offset (the log's earliest when nothing is archived).
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::History`]: a manifest, or a gap between history and log.
    pub(crate) async fn open_sources(
        &mut self,
        context: &TaskContext,
    ) -> Result<(), StreamProcessorError> {
        let table = self.table();
        let stream = table.stream.clone();
        let mut sources = Vec::new();
        for partition in 0..table.partitions {
            let start = self.offsets.get(partition as usize).copied();
            sources.push(context.open_stream(&stream, partition, start).await?);
        }
        self.offsets = sources.iter().map(HybridSource::position).collect();
        if self.checkpointed.is_empty() {
            self.checkpointed = self.offsets.clone();
        }
        self.sources = sources;
        Ok(())
    }

    fn table(&self) -> &JobTable {
        self.job.table.as_ref().expect("a join job has a table")
    }

    /// The join's snapshot, and the changelog offsets it goes with.
    pub(crate) fn snapshot(&self) -> Result<(Vec<u8>, Vec<u64>), StreamProcessorError> {
        let state = self.join.snapshot().map_err(|source| self.engine(source))?;
        Ok((state, self.offsets.clone()))
    }

    /// The offsets of a checkpoint just taken.
    pub(crate) fn checkpointed(&mut self, offsets: Vec<u64>) {
        self.checkpointed = offsets;
    }

    /// Whether the changelog was read past where the last checkpoint holds.
    pub(crate) fn progressed(&self) -> bool {
        self.offsets != self.checkpointed
    }

    /// Stream rows (the plan's stream input) that arrived by `arrival` into the join.
    pub(crate) fn stream(
        &mut self,
        partition: u32,
        input: &RecordBatch,
        arrival: i64,
    ) -> Result<Joined, StreamProcessorError> {
        let plan = Arc::clone(&self.job.plan);
        let join_plan = plan.join().expect("a join job has a join");
        let input = join_plan
            .prefilter(input.clone())
            .map_err(|source| self.engine(source))?;
        self.stream_arrival = Some(self.stream_arrival.map_or(arrival, |max| max.max(arrival)));
        let output = self
            .join
            .process_stream(&input)
            .map_err(|source| self.engine(source))?;
        let mut joined = Joined::default();
        self.add(&mut joined, output, partition, Some(&input))?;
        Ok(joined)
    }

    /// Reads what the changelog has (a bounded number of batches per partition) into the
    /// table; when every partition is at the log's end, as asked after the waiting stream
    /// rows arrived, joins them with the table as it stands (see the module docs).
    pub(crate) async fn poll(
        &mut self,
        context: &TaskContext,
    ) -> Result<Joined, StreamProcessorError> {
        let mut joined = Joined::default();
        self.read_changelog(&mut joined).await?;
        if self.join.waiting() > 0
            && self.drained.iter().all(|drained| *drained)
            && self
                .end_checked
                .is_none_or(|checked| checked.elapsed() >= END_CHECK)
        {
            self.end_checked = Some(Instant::now());
            let as_of = runnel_time::now_millis();
            // Rows restored from a checkpoint arrived before it, so before now.
            if self.stream_arrival.is_none_or(|arrival| arrival <= as_of)
                && at_end(context, self.table().stream.name(), self.offsets.clone()).await?
            {
                let output = self
                    .join
                    .release_waiting()
                    .map_err(|source| self.engine(source))?;
                self.add(&mut joined, output, 0, None)?;
            }
        }
        Ok(joined)
    }

    /// For a router: joins every row of `input` (stream rows of partition `partition` that
    /// arrived by `arrival`) with the table once it holds every version that can be valid at
    /// their times: its watermark has reached their largest time, or every changelog
    /// partition has been read to the log's end as asked after they arrived. Reads the
    /// changelog until then. The joined rows come out in the rows' stream order (the window
    /// tasks drop a copy by its source offset, so a router sends a partition's rows in
    /// offset order). `None` if `shutdown` came first.
    pub(crate) async fn join_whole(
        &mut self,
        context: &TaskContext,
        (partition, input, arrival): (u32, &RecordBatch, i64),
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
            if latest.is_none_or(|latest| latest <= self.join.table_watermark()) {
                break;
            }
            if self.drained.iter().all(|drained| *drained) {
                let as_of = runnel_time::now_millis();
                if arrival <= as_of
                    && at_end(context, self.table().stream.name(), self.offsets.clone()).await?
                {
                    break;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(crate::task::READ_WAIT) => {}
                }
            }
        }
        let mut stream = self.stream(partition, input, arrival)?;
        let output = self
            .join
            .release_waiting()
            .map_err(|source| self.engine(source))?;
        self.add(&mut stream, output, partition, None)?;
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
    /// table; marks the partitions whose read found nothing new.
    async fn read_changelog(&mut self, joined: &mut Joined) -> Result<(), StreamProcessorError> {
        for partition in 0..self.sources.len() {
            self.drained[partition] = false;
            for _ in 0..TABLE_BATCHES_PER_POLL {
                let batch = self.sources[partition]
                    .next_batch(Duration::ZERO)
                    .await
                    .map_err(StreamProcessorError::History)?;
                self.offsets[partition] = self.sources[partition].position();
                let Some(batch) = batch else {
                    self.drained[partition] = true;
                    break;
                };
                let input = self.table().project(&batch)?;
                joined.table_rows += input.num_rows();
                let output = self
                    .join
                    .process_table(partition as u32, &input)
                    .map_err(|source| self.engine(source))?;
                self.add(joined, output, partition as u32, None)?;
            }
        }
        Ok(())
    }

    /// Adds a join output: its rows widened to the joined rows the plan takes; its late
    /// stream rows (and stream rows it refused, `refused_from` being their batch) as late
    /// events of stream partition `partition`; its late changelog rows (and changelog rows
    /// it refused) as late rows of changelog partition `partition`, if this task reports
    /// that partition's.
    fn add(
        &self,
        joined: &mut Joined,
        output: JoinOutput,
        partition: u32,
        refused_from: Option<&RecordBatch>,
    ) -> Result<(), StreamProcessorError> {
        let plan = &self.job.plan;
        for rows in output.rows {
            joined.rows.push(
                plan.joined_rows(&rows)
                    .map_err(|source| self.engine(source))?,
            );
        }
        for late in output.late_stream {
            joined.late_stream.push(with_partition(&late, partition)?);
        }
        if partition % self.task.1.max(1) == self.task.0 {
            for late in output.late_table {
                joined.late_table.push(with_partition(&late, partition)?);
            }
        }
        if output.errors.is_empty() {
            return Ok(());
        }
        // A row the join could not use (no event time, a null key in the changelog) goes to
        // the late topic with its reason, as the windows' failed events do.
        let (batch, into) = match refused_from {
            Some(stream_rows) => (stream_rows.clone(), &mut joined.late_stream),
            None => {
                // Changelog errors name rows of the batch just read, which `poll` no longer
                // holds; log them, they changed nothing.
                for error in &output.errors {
                    tracing::warn!(
                        table = %self.table().name,
                        partition = error.partition,
                        reason = %error.reason,
                        "changelog row left out of the table"
                    );
                }
                return Ok(());
            }
        };
        let rows = UInt32Array::from_iter_values(output.errors.iter().map(|e| e.row as u32));
        let refused = arrow::compute::take_record_batch(&batch, &rows)
            .map_err(StreamProcessorError::Encode)?;
        let reasons = arrow::array::StringArray::from_iter_values(
            output.errors.iter().map(|error| error.reason.as_str()),
        );
        let mut fields: Vec<Field> = refused
            .schema()
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        fields.push(Field::new(
            runnel_engine::JOIN_LATE_REASON_COLUMN,
            DataType::Utf8,
            false,
        ));
        let mut columns = refused.columns().to_vec();
        columns.push(Arc::new(reasons));
        let refused = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(StreamProcessorError::Encode)?;
        into.push(with_partition(&refused, partition)?);
        Ok(())
    }

    fn engine(&self, source: runnel_engine::EngineError) -> StreamProcessorError {
        StreamProcessorError::Engine {
            job: self.job.name.clone(),
            source,
        }
    }
}

/// The live join's specification for `job`, and its table. The table's rows may come the
/// job's out-of-orderness behind their partition's largest event time; stream rows are kept
/// as far back as the windows still take them: the out-of-orderness, the lateness and a
/// window's length.
fn join_spec(job: &Job) -> Result<(TemporalJoinSpec, &JobTable), StreamProcessorError> {
    let not_a_join = || StreamProcessorError::Job {
        job: job.name.clone(),
        message: "a join job without its table".to_string(),
    };
    let table = job.table.as_ref().ok_or_else(not_a_join)?;
    let join_plan = job.plan.join().ok_or_else(not_a_join)?;
    let stream_time = join_plan
        .stream_schema()
        .index_of(job.plan.event_time())
        .map_err(|_| not_a_join())?;
    let window = Duration::from_millis(u64::try_from(job.plan.window().size_ms()).unwrap_or(0));
    let stream_out_of_orderness = job
        .options
        .max_out_of_orderness
        .saturating_add(job.options.allowed_lateness)
        .saturating_add(window);
    let spec = join_plan
        .temporal_join_spec(
            stream_time,
            table.partitions,
            job.options.max_out_of_orderness,
            stream_out_of_orderness,
        )
        .ok_or_else(not_a_join)?;
    Ok((spec, table))
}

/// Whether topic `topic` has nothing past `offsets` (per partition, the next offset to
/// read) now.
async fn at_end(
    context: &TaskContext,
    topic: &str,
    offsets: Vec<u64>,
) -> Result<bool, StreamProcessorError> {
    for (partition, offset) in offsets.into_iter().enumerate() {
        let end = context
            .log
            .latest_offset(topic, partition as u32)
            .await
            .map_err(|source| StreamProcessorError::log(topic, source))?;
        if offset < end {
            return Ok(false);
        }
    }
    Ok(true)
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
