//! A router task: one source partition of a job that does not group by its stream's key,
//! copied into the job's repartition topic keyed by each event's group.
//!
//! It reads the partition as a direct task does, through the hybrid source: the Parquet
//! history, then the live log. So a replay of a repartitioned job reaches the history too.
//! Each copy's value is the row encoded again in the record format
//! ([`runnel_events::encode_records`]), which decodes to the same row whichever side it
//! came from, and its timestamp is the row's ingest time.
//!
//! The log partitions the copies by that key (murmur2), so every event of a group reaches
//! the same window task, as in Kafka Streams. Each copy keeps the original value and log
//! timestamp and carries its stream position in two headers, so the window task can read it
//! in stream coordinates and drop copies written again after a router restart (a router
//! resumes from its checkpointed source offset and re-routes what followed it).
//!
//! A window task learns how far a source partition has got in event time only from the
//! copies it receives; a group that gets no more events would never see its windows fire.
//! So after each batch the router tells every repartition partition that has not yet seen the
//! batch's largest event time about it, with a *progress marker*: an empty record with the
//! source partition and that event time in headers, after the copies it follows in the same
//! append (Kafka Streams' repartition topics carry no such thing; Flink broadcasts watermarks
//! across a shuffle the same way).
//!
//! When a read finds nothing new and the router has read up to the live log's end (asked of
//! the log: an empty read alone may be a broker restarting), it tells every repartition
//! partition so with an *end marker* (headers: the source partition and
//! `runnel-source-at-end`, whose value is the router's clock just before it asked), and again
//! every [`END_REFRESH`] while it stays there. Only a source partition at its end may turn
//! idle in the window tasks (the job's `idle-timeout`): one still reading its history in a
//! replay, behind the others, holds the watermark back instead of having its events made
//! late. And an end marker vouches only for what arrived up to its time: once the others'
//! events arrived later than that, the partition is not idle until its router says so again.
//! So a router that stops routing (its broker restarting, its process moving) while its
//! partition takes events holds the watermark back, instead of letting the others' events
//! make its own late.
//!
//! A join job's routers join (`join.rs`): a window task needs every row of its groups, and
//! the groups are known only after the join. Each router holds the whole table and joins
//! each batch once the table holds every version valid at its rows' times
//! ([`JoinInput::join_whole`]), in offset order; the copies are the joined rows in the
//! record format of the job's routed rows (`runnel_jobs::Routed`). Its checkpoint holds the
//! table and the changelog offsets; rows late to the join go to the job's late topic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use bytes::Bytes;
use runnel_log::{Header, ProduceRecord, partition_for_key};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::StreamProcessorError;
use crate::join::JoinInput;
use crate::task::{
    SOURCE_AT_END_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_PROGRESS_HEADER,
    TaskContext,
};
use runnel_jobs::checkpoint::{CheckpointManifest, TaskCheckpoints};
use runnel_jobs::records::{late_records, late_table_records};
use runnel_jobs::{Job, late_topic, repartition_topic};

/// How long a router asks the log for a partition's end before it takes it as not known.
const CAUGHT_UP_CHECK: Duration = Duration::from_secs(2);

/// How often a router at its partition's end says so again. Between two of them, the others'
/// events that arrive after the last one hold the watermark at this partition's, so this is
/// how long an idle partition can delay a firing; each costs a marker per repartition
/// partition and a request for the log's end.
pub(crate) const END_REFRESH: Duration = Duration::from_secs(1);

/// Routes one source partition of a job into its repartition topic.
pub(crate) struct Router {
    job: Arc<Job>,
    partition: u32,
    context: TaskContext,
    checkpoints: TaskCheckpoints,
    /// The next source offset to route: every offset below it is routed (or undecodable).
    offset: u64,
    /// No checkpoint: the router starts at the history's first offset (or the log's).
    fresh: bool,
    epoch: u64,
    checkpointed_offset: u64,
    last_checkpoint: Instant,
    /// Per repartition partition, the largest event time it was sent (in a copy or a marker).
    announced: Vec<Option<i64>>,
    /// When end markers were last sent, if none was routed since.
    told_at_end: Option<Instant>,
    /// The largest ingest time routed since the router started.
    last_ingest_time: Option<i64>,
    /// A join job's table, which the router joins each batch with before routing it.
    table: Option<JoinInput>,
}

impl Router {
    /// The router of `partition`, resuming from its newest checkpoint (checkpoints of
    /// `<job>.router`: an offset, no state) or from the partition's first archived offset
    /// (the log's earliest when nothing is archived).
    ///
    /// # Errors
    ///
    /// Object-store failures.
    pub(crate) async fn open(
        job: Arc<Job>,
        partition: u32,
        context: TaskContext,
    ) -> Result<Router, StreamProcessorError> {
        let checkpoints = TaskCheckpoints::new(
            &context.checkpoint_prefix,
            &format!("{}.router", job.name),
            partition,
            context.checkpoints_to_keep,
        );
        let restored = checkpoints.latest(context.store.as_ref()).await?;
        let (offset, epoch) = restored.as_ref().map_or((0, 0), |restored| {
            (restored.manifest.source_offset, restored.manifest.epoch)
        });
        let table = match &job.joined {
            Some(_) => Some(JoinInput::open(
                &job,
                (partition, job.stream.config().partitions),
                restored
                    .as_ref()
                    .map(|restored| (&restored.state[..], &restored.manifest.table_offsets[..])),
            )?),
            None => None,
        };
        Ok(Router {
            job,
            partition,
            context,
            checkpoints,
            offset,
            fresh: restored.is_none(),
            epoch,
            checkpointed_offset: offset,
            last_checkpoint: Instant::now(),
            announced: Vec::new(),
            told_at_end: None,
            last_ingest_time: None,
            table,
        })
    }

    /// Routes until `shutdown` is cancelled, checkpointing on the way and at the end.
    ///
    /// # Errors
    ///
    /// Log, object-store and engine failures.
    pub(crate) async fn run(
        mut self,
        shutdown: CancellationToken,
    ) -> Result<(), StreamProcessorError> {
        let target = repartition_topic(&self.job.name);
        let start = (!self.fresh).then_some(self.offset);
        let mut source = self
            .context
            .open_stream(&self.job.stream, self.partition, start)
            .await?;
        if self.fresh {
            self.offset = source.position();
            self.checkpointed_offset = self.offset;
            self.fresh = false;
        }
        let targets = self
            .context
            .log
            .partition_count(&target)
            .await
            .map_err(|error| StreamProcessorError::log(&target, error))?;
        self.announced = vec![None; targets as usize];
        if let Some(table) = &mut self.table {
            table.open_sources(&self.context).await?;
        }
        self.context
            .status
            .routed(&self.job.name, self.partition, self.offset, true);
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => break,
                read = source.next_batch(crate::task::READ_WAIT) => {
                    read.map_err(StreamProcessorError::History)?
                }
            };
            let routed = match batch {
                Some(batch) => {
                    self.told_at_end = None;
                    let input = self.job.project(&batch)?;
                    let Some(rows) = self.rows(&input, &shutdown).await? else {
                        break;
                    };
                    self.route(&input, &rows)?
                }
                None if self
                    .told_at_end
                    .is_none_or(|told| told.elapsed() >= END_REFRESH) =>
                {
                    // Taken before the log is asked: whatever arrived up to then is below
                    // the end it answers.
                    let as_of = runnel_time::now_millis();
                    let log = Arc::clone(&self.context.log);
                    let (job, partition) = (Arc::clone(&self.job), self.partition);
                    if caught_up(
                        log.as_ref(),
                        &job,
                        partition,
                        (source.is_live(), source.position()),
                    )
                    .await
                    {
                        self.told_at_end = Some(Instant::now());
                        self.end_markers(as_of)
                    } else {
                        Vec::new()
                    }
                }
                None => Vec::new(),
            };
            if !routed.is_empty() {
                self.context
                    .log
                    .append(&target, routed)
                    .await
                    .map_err(|error| StreamProcessorError::log(&target, error))?;
                tokio::task::yield_now().await;
            }
            // Everything before the source's position is routed, or was undecodable.
            self.offset = self.offset.max(source.position());
            self.context
                .status
                .routed(&self.job.name, self.partition, self.offset, false);
            if self.last_checkpoint.elapsed() >= self.context.checkpoint_interval
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

    /// Whether the router has read past what its last checkpoint holds: its partition, or a
    /// join job's table.
    fn progressed(&self) -> bool {
        self.offset != self.checkpointed_offset
            || self.table.as_ref().is_some_and(JoinInput::progressed)
    }

    /// The rows to route of `input` (a batch of the stream, as the plan's input): `input`'s,
    /// or for a join job the joined rows (the rows late to the join go to the late topic).
    /// `None` if `shutdown` came while the join waited for its table.
    async fn rows(
        &mut self,
        input: &RecordBatch,
        shutdown: &CancellationToken,
    ) -> Result<Option<RecordBatch>, StreamProcessorError> {
        let Some(table) = &mut self.table else {
            return Ok(Some(input.clone()));
        };
        let arrival = input
            .column_by_name(runnel_events::INGEST_TIME_COLUMN)
            .and_then(|times| {
                arrow::compute::max(times.as_primitive_opt::<TimestampMillisecondType>()?)
            })
            .unwrap_or_default();
        let Some(joined) = table
            .join_whole(&self.context, (self.partition, input), shutdown)
            .await?
        else {
            return Ok(None);
        };
        let mut late = late_records(&joined.late_stream, self.partition, None, arrival)?;
        if let Some(table) = &self.job.joined {
            late.extend(late_table_records(
                &table.name,
                &joined.late_table,
                self.partition,
                arrival,
            )?);
        }
        if !late.is_empty() {
            let topic = late_topic(&self.job.name);
            self.context
                .log
                .append(&topic, late)
                .await
                .map_err(|error| StreamProcessorError::log(&topic, error))?;
        }
        let schema = self.job.plan.stream_schema();
        Ok(Some(match joined.rows.as_slice() {
            [rows] => rows.clone(),
            rows => arrow::compute::concat_batches(&schema, rows)
                .map_err(StreamProcessorError::Encode)?,
        }))
    }

    /// Copies of `rows` (the rows to route of `input`, a batch of the stream from the history
    /// or the log as the plan's input) keyed by their group, each in the repartition
    /// partition its key picks, then a progress marker for each partition that has not seen
    /// the largest event time of `input`.
    fn route(
        &mut self,
        input: &RecordBatch,
        rows: &RecordBatch,
    ) -> Result<Vec<ProduceRecord>, StreamProcessorError> {
        let keys =
            self.job
                .plan
                .group_key_texts(rows)
                .map_err(|source| StreamProcessorError::Engine {
                    job: self.job.name.clone(),
                    source,
                })?;
        let routed = &self.job.routed;
        let values = runnel_events::encode_records(&routed.stream, &routed.declared(rows)?)
            .map_err(StreamProcessorError::Encode)?;
        let column = |name: &str| {
            rows.column_by_name(name)
                .ok_or_else(|| StreamProcessorError::Job {
                    job: self.job.name.clone(),
                    message: format!("routed rows without `{name}`"),
                })
        };
        let offsets = column(runnel_events::OFFSET_COLUMN)?.as_primitive::<Int64Type>();
        let ingest_times =
            column(runnel_events::INGEST_TIME_COLUMN)?.as_primitive::<TimestampMillisecondType>();
        // Event times by row (epoch ms; `None` where missing, which the task drops too).
        let event_times = |rows: &RecordBatch| -> Option<Vec<Option<i64>>> {
            let time = rows.schema().index_of(self.job.plan.event_time()).ok()?;
            arrow::compute::cast(rows.column(time), &arrow::datatypes::DataType::Int64)
                .ok()
                .map(|times| times.as_primitive::<Int64Type>().iter().collect())
        };
        let row_times = event_times(rows);
        // A join's rows are not the batch's (an inner join drops some): the batch's own.
        let batch_times = match &self.table {
            Some(_) => event_times(input),
            None => None,
        };
        let mut routed = Vec::with_capacity(rows.num_rows());
        for (row, value) in values.into_iter().enumerate() {
            // A row whose key fails goes on with an empty key; the window task that gets it
            // finds the same failure and sends the event to the late topic with its reason.
            let key = if keys.is_null(row) {
                &[][..]
            } else {
                keys.value(row).as_bytes()
            };
            let target = partition_for_key(key, self.announced.len() as u32);
            if let Some(time) = row_times
                .as_ref()
                .and_then(|times| times.get(row).copied().flatten())
            {
                let announced = &mut self.announced[target as usize];
                *announced = Some(announced.map_or(time, |announced| announced.max(time)));
            }
            routed.push(ProduceRecord {
                key: Some(Bytes::copy_from_slice(key)),
                value,
                timestamp: ingest_times.value(row),
                headers: vec![
                    header(SOURCE_PARTITION_HEADER, &self.partition),
                    header(SOURCE_OFFSET_HEADER, &offsets.value(row)),
                ],
                partition: Some(target),
            });
        }
        // The whole batch was routed (a join's unmatched rows too: they are dropped or late),
        // so its largest event time is the partition's progress.
        let progress = batch_times
            .as_ref()
            .or(row_times.as_ref())
            .and_then(|times| times.iter().flatten().max().copied());
        let last_ingest_time = input
            .column_by_name(runnel_events::INGEST_TIME_COLUMN)
            .and_then(|times| {
                arrow::compute::max(times.as_primitive_opt::<TimestampMillisecondType>()?)
            });
        self.last_ingest_time = self.last_ingest_time.max(last_ingest_time);
        if let (Some(progress), Some(last_ingest_time)) = (progress, last_ingest_time) {
            for (target, announced) in self.announced.iter_mut().enumerate() {
                if announced.is_some_and(|announced| announced >= progress) {
                    continue;
                }
                *announced = Some(progress);
                routed.push(marker(
                    self.partition,
                    target as u32,
                    header(SOURCE_PROGRESS_HEADER, &progress),
                    last_ingest_time,
                ));
            }
        }
        Ok(routed)
    }

    /// An end marker for every repartition partition: this source partition holds nothing
    /// that arrived up to `as_of` (epoch ms). Stamped with the largest ingest time routed (0
    /// when nothing was since the router started: the window task then keeps its own clock),
    /// so that it moves no arrival clock beyond the log's.
    fn end_markers(&self, as_of: i64) -> Vec<ProduceRecord> {
        let stamp = self.last_ingest_time.unwrap_or(0);
        (0..self.announced.len() as u32)
            .map(|target| {
                marker(
                    self.partition,
                    target,
                    header(SOURCE_AT_END_HEADER, &as_of),
                    stamp,
                )
            })
            .collect()
    }

    async fn checkpoint(&mut self) -> Result<(), StreamProcessorError> {
        let (state, table_offsets) = match &self.table {
            Some(table) => table.snapshot()?,
            None => (Vec::new(), Vec::new()),
        };
        self.epoch += 1;
        let manifest = CheckpointManifest {
            job: format!("{}.router", self.job.name),
            partition: self.partition,
            epoch: self.epoch,
            source_offset: self.offset,
            watermark: i64::MIN,
            late_count: 0,
            state_bytes: state.len() as u64,
            seen_source_offsets: Vec::new(),
            table_offsets,
        };
        self.checkpoints
            .save(self.context.store.as_ref(), &manifest, state)
            .await?;
        if let Some(table) = &mut self.table {
            table.checkpointed(manifest.table_offsets.clone());
        }
        debug!(
            epoch = self.epoch,
            offset = self.offset,
            "router checkpoint"
        );
        self.checkpointed_offset = self.offset;
        self.last_checkpoint = Instant::now();
        Ok(())
    }
}

/// Whether the source, which just read nothing, has read everything its live log
/// partition holds now (`live`: it reads the live log; `position`: its next offset). An
/// empty read alone does not say so: while a broker restarts or a leader moves, reads
/// come back empty with records still to come, and a source partition told at its end
/// may turn idle in the window tasks and let the watermark pass its unread events. When
/// the log's end cannot be had within [`CAUGHT_UP_CHECK`], the answer is no: the
/// watermark waits.
async fn caught_up(
    log: &dyn runnel_log::Log,
    job: &Job,
    partition: u32,
    (live, position): (bool, u64),
) -> bool {
    if !live {
        return false;
    }
    let end = tokio::time::timeout(
        CAUGHT_UP_CHECK,
        log.latest_offset(job.stream.name(), partition),
    )
    .await;
    match end {
        Ok(Ok(end)) => position >= end,
        Ok(Err(error)) => {
            debug!(job = %job.name, partition, %error,
                "the log's end is unknown; not telling the window tasks this source is at its end");
            false
        }
        Err(_) => false,
    }
}

/// A header of a routed record.
fn header(key: &str, value: &dyn ToString) -> Header {
    Header {
        key: key.to_string(),
        value: Bytes::from(value.to_string()),
    }
}

/// A marker of source partition `partition` for repartition partition `target`: no key, no
/// value, the source partition and `what` in headers.
fn marker(partition: u32, target: u32, what: Header, timestamp: i64) -> ProduceRecord {
    ProduceRecord {
        key: None,
        value: Bytes::new(),
        timestamp,
        headers: vec![header(SOURCE_PARTITION_HEADER, &partition), what],
        partition: Some(target),
    }
}
