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
//!
//! An interval join's router feeds its rows to the join as they come, and the second
//! stream's as it reads them, and the join gives a row's rows as its matches come, or its
//! `LEFT` row once its interval has passed. So the router holds them in a
//! `runnel_engine::OffsetOrder` and routes a row's rows only once every row before it has all
//! of its own (the join's `released_to` has passed their times): in offset order, each row's
//! in one order whatever the order they came in, each copy numbered among its row's
//! (header `runnel-source-copy`), so that a window task drops a copy by its (offset, number).
//! Its progress markers carry `released_to`: no row before it is still to come. It says it is
//! at its end only when it holds nothing. Its checkpoint holds the join, then the held rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Int64Type, TimestampMillisecondType};
use bytes::Bytes;
use runnel_log::{Header, ProduceRecord, partition_for_key};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::StreamProcessorError;
use crate::join::{JoinInput, Joined};
use crate::task::{
    SOURCE_AT_END_HEADER, SOURCE_COPY_HEADER, SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER,
    SOURCE_PROGRESS_HEADER, TaskContext,
};
use runnel_engine::{JoinForm, OffsetOrder};
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
    /// An interval join job's joined rows, held until they can go in offset order.
    order: Option<OffsetOrder>,
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
        let interval = job
            .plan
            .join()
            .is_some_and(|join| matches!(join.form(), JoinForm::Interval { .. }));
        let engine = |source| StreamProcessorError::Engine {
            job: job.name.clone(),
            source,
        };
        // An interval join's state is the join's, then the held rows'.
        let (join_state, order) = match restored.as_ref().map(|restored| &restored.state[..]) {
            Some(state) if interval => {
                let (join, held) =
                    runnel_engine::split_snapshot_parts(state, "join").map_err(engine)?;
                let (schema, offset) = order_columns(&job)?;
                (
                    Some(join),
                    Some(OffsetOrder::restore(schema, offset, held).map_err(engine)?),
                )
            }
            state if interval => {
                let (schema, offset) = order_columns(&job)?;
                (state, Some(OffsetOrder::new(schema, offset)))
            }
            state => (state, None),
        };
        let table = match &job.joined {
            Some(_) => Some(JoinInput::open(
                &job,
                (partition, job.stream.config().partitions),
                join_state.zip(
                    restored
                        .as_ref()
                        .map(|restored| &restored.manifest.table_offsets[..]),
                ),
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
            order,
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
            // An interval join's second stream moves its matches and its watermark. What that
            // lets out goes now: the order no longer holds it, and a shutdown during the read
            // below would lose it.
            if self.order.is_some() {
                let joined = self.poll_join().await?;
                let routed = self.ordered(joined).await?;
                self.append(&target, routed).await?;
            }
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
                    self.last_ingest_time = self.last_ingest_time.max(ingest_time(&input));
                    if self.order.is_some() {
                        let joined = self.join_interval(&input)?;
                        self.ordered(joined).await?
                    } else {
                        let Some(rows) = self.rows(&input, &shutdown).await? else {
                            break;
                        };
                        // The whole batch was routed (a join's unmatched rows too: they are
                        // dropped or late), so its largest event time is the partition's
                        // progress.
                        let progress = event_times(&self.job, &input)
                            .and_then(|times| times.into_iter().flatten().max());
                        self.route(&rows, None, progress)?
                    }
                }
                // Rows held for their order are still to go: not at the end.
                None if self.order.as_ref().is_some_and(|order| !order.is_empty()) => Vec::new(),
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
            self.append(&target, routed).await?;
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

    /// Appends `routed` to the repartition topic `target`, and gives the other tasks a turn.
    async fn append(
        &mut self,
        target: &str,
        routed: Vec<ProduceRecord>,
    ) -> Result<(), StreamProcessorError> {
        if routed.is_empty() {
            return Ok(());
        }
        self.context
            .log
            .append(target, routed)
            .await
            .map_err(|error| StreamProcessorError::log(target, error))?;
        tokio::task::yield_now().await;
        Ok(())
    }

    /// An interval join job: what the second stream has, into the join.
    async fn poll_join(&mut self) -> Result<Joined, StreamProcessorError> {
        match &mut self.table {
            Some(table) => table.poll(&self.context).await,
            None => Ok(Joined::default()),
        }
    }

    /// An interval join job: a batch of the stream (as the plan's input) into the join, and
    /// its rows' offsets and times into the order.
    fn join_interval(&mut self, input: &RecordBatch) -> Result<Joined, StreamProcessorError> {
        let missing = |what: &str| StreamProcessorError::Job {
            job: self.job.name.clone(),
            message: format!("stream rows without {what}"),
        };
        let offsets = input
            .column_by_name(runnel_events::OFFSET_COLUMN)
            .and_then(|offsets| offsets.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| missing("`_offset`"))?
            .clone();
        let times: Int64Array = event_times(&self.job, input)
            .ok_or_else(|| missing("an event time"))?
            .into_iter()
            .collect();
        if let Some(order) = &mut self.order {
            order
                .stream(&offsets, &times)
                .map_err(|source| StreamProcessorError::Engine {
                    job: self.job.name.clone(),
                    source,
                })?;
        }
        match &mut self.table {
            Some(table) => table.stream(self.partition, input),
            None => Ok(Joined::default()),
        }
    }

    /// An interval join job: `joined` (the join's output) into the order, its late rows to the
    /// late topic, and the copies and progress markers of the rows now in order.
    async fn ordered(
        &mut self,
        joined: Joined,
    ) -> Result<Vec<ProduceRecord>, StreamProcessorError> {
        self.send_late(&joined).await?;
        let engine = |source| StreamProcessorError::Engine {
            job: self.job.name.clone(),
            source,
        };
        let released_to = self.table.as_ref().and_then(JoinInput::released_to);
        let Some(order) = &mut self.order else {
            return Ok(Vec::new());
        };
        for rows in joined.rows {
            order.push(rows).map_err(engine)?;
        }
        let Some(released_to) = released_to else {
            return Ok(Vec::new());
        };
        match order.release(released_to).map_err(engine)? {
            Some(ordered) => self.route(&ordered.rows, Some(&ordered.copies), Some(released_to)),
            // No row to route, but the progress may be news.
            None => self.route(
                &RecordBatch::new_empty(self.job.plan.stream_schema()),
                None,
                Some(released_to),
            ),
        }
    }

    /// Appends the rows late to a join (stream rows, and the other input's) to the late
    /// topic. (`&mut`: a `&self` held across the await would ask the readers to be `Sync`.)
    async fn send_late(&mut self, joined: &Joined) -> Result<(), StreamProcessorError> {
        let arrival = self.last_ingest_time.unwrap_or_default();
        let mut late = late_records(&joined.late_stream, self.partition, None, arrival)?;
        if let Some(other) = &self.job.joined {
            late.extend(late_table_records(
                &other.name,
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
        Ok(())
    }

    /// The rows to route of `input` (a batch of the stream, as the plan's input): `input`'s,
    /// or for an AS OF join job the joined rows (the rows late to the join go to the late
    /// topic). `None` if `shutdown` came while the join waited for its table.
    async fn rows(
        &mut self,
        input: &RecordBatch,
        shutdown: &CancellationToken,
    ) -> Result<Option<RecordBatch>, StreamProcessorError> {
        let Some(table) = &mut self.table else {
            return Ok(Some(input.clone()));
        };
        let Some(joined) = table
            .join_whole(&self.context, (self.partition, input), shutdown)
            .await?
        else {
            return Ok(None);
        };
        self.send_late(&joined).await?;
        let schema = self.job.plan.stream_schema();
        Ok(Some(match joined.rows.as_slice() {
            [rows] => rows.clone(),
            rows => arrow::compute::concat_batches(&schema, rows)
                .map_err(StreamProcessorError::Encode)?,
        }))
    }

    /// Copies of `rows` (the rows to route, in offset order; `copies`: each one's number among
    /// its stream row's, for an interval join) keyed by their group, each in the repartition
    /// partition its key picks, then a progress marker for each partition that has not seen
    /// `progress` (no row before that event time is still to come).
    fn route(
        &mut self,
        rows: &RecordBatch,
        copies: Option<&UInt32Array>,
        progress: Option<i64>,
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
        let row_times = event_times(&self.job, rows);
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
            let mut headers = vec![
                header(SOURCE_PARTITION_HEADER, &self.partition),
                header(SOURCE_OFFSET_HEADER, &offsets.value(row)),
            ];
            if let Some(copies) = copies {
                headers.push(header(SOURCE_COPY_HEADER, &copies.value(row)));
            }
            routed.push(ProduceRecord {
                key: Some(Bytes::copy_from_slice(key)),
                value,
                timestamp: ingest_times.value(row),
                headers,
                partition: Some(target),
            });
        }
        if let (Some(progress), Some(last_ingest_time)) = (progress, self.last_ingest_time) {
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
        let (mut state, table_offsets) = match &self.table {
            Some(table) => table.snapshot()?,
            None => (Vec::new(), Vec::new()),
        };
        if let Some(order) = &self.order {
            let held = order
                .snapshot()
                .map_err(|source| StreamProcessorError::Engine {
                    job: self.job.name.clone(),
                    source,
                })?;
            state = runnel_engine::join_snapshot_parts(&state, &held);
        }
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
            seen_source_copies: Vec::new(),
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

/// The event times of `rows` (epoch ms by row; `None` where missing, which the join and the
/// window task refuse too), `None` if they have no event time column of a time type.
fn event_times(job: &Job, rows: &RecordBatch) -> Option<Vec<Option<i64>>> {
    let time = rows.schema().index_of(job.plan.event_time()).ok()?;
    arrow::compute::cast(rows.column(time), &DataType::Int64)
        .ok()
        .map(|times| times.as_primitive::<Int64Type>().iter().collect())
}

/// The largest ingest time of `input` (a batch with an `_ingest_time` column: the plan's
/// input, or a join's other input), if it has rows.
pub(crate) fn ingest_time(input: &RecordBatch) -> Option<i64> {
    input
        .column_by_name(runnel_events::INGEST_TIME_COLUMN)
        .and_then(|times| {
            arrow::compute::max(times.as_primitive_opt::<TimestampMillisecondType>()?)
        })
}

/// The joined rows' schema and their `_offset` column, for an interval join's order.
fn order_columns(job: &Job) -> Result<(arrow::datatypes::SchemaRef, usize), StreamProcessorError> {
    let schema = job.plan.stream_schema();
    let offset =
        schema
            .index_of(runnel_events::OFFSET_COLUMN)
            .map_err(|_| StreamProcessorError::Job {
                job: job.name.clone(),
                message: "joined rows without `_offset`".to_string(),
            })?;
    Ok((schema, offset))
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
