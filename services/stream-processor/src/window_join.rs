//! A join of two windowed aggregates on their windows, in one task: the task's own window
//! operator is the left side, over its stream partition; this is the right side, the whole
//! right stream (every partition, through the hybrid source, as a join job's other input)
//! through a window operator of its own, and the `runnel_engine::WindowJoin` that joins the
//! two sides' final rows of a window once both watermarks have passed its end plus the
//! allowed lateness.
//!
//! The left side groups by its stream's key (`Job::compile` asks it), so each left row is in
//! one task, and each joined row is made once. Every task aggregates the whole right stream,
//! as every task of an interval join holds the whole second stream: no repartitioning, at
//! the cost of the right side's work once per task.
//!
//! The right operator's inputs are the right stream's partitions, each with its own
//! watermark. A partition read to the log's end is told so (`WindowOperator::input_at_end`,
//! as a router's end marker does), so that under the job's `idle-timeout` one that gets
//! nothing turns idle and does not hold the right side's watermark back, as a repartitioned
//! job's source partitions do; without one, a silent right partition holds every window
//! until it sends again. (At its end alone is not enough to idle: a record stamped before
//! the log was asked may be appended after, and would be late. A test found that.)
//!
//! A right event late to its windows is reported by one task: the one whose partition is
//! the event's partition modulo the left stream's partition count.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use runnel_engine::{OperatorOptions, OperatorOutput, WindowJoin, WindowOperator};
use runnel_jobs::{Job, WindowJoined};

use crate::StreamProcessorError;
use crate::join::{END_CHECK, OTHER_BATCHES_PER_POLL, WholeStream};
use crate::task::TaskContext;

/// The right side of a window join job and the join, in one task.
pub(crate) struct WindowJoinInput {
    job: Arc<Job>,
    /// The right side's window operator: one input per partition of the right stream.
    right: WindowOperator,
    join: WindowJoin,
    /// The task's partition, and the left stream's partition count (see the module docs for
    /// which task reports a late right event).
    task: (u32, u32),
    /// The right stream.
    stream: WholeStream,
    /// When the right stream's end offsets were last asked for.
    end_checked: Option<Instant>,
}

/// What a poll of the right side gave.
#[derive(Default)]
pub(crate) struct RightPolled {
    /// The joined rows of the windows it closed (as the task's results), and nothing else.
    pub(crate) output: OperatorOutput,
    /// Right events late to their windows that this task reports, with `_partition` their
    /// partition of the right stream.
    pub(crate) late: Vec<RecordBatch>,
    /// Right events read (they change the state a checkpoint holds).
    pub(crate) events: usize,
}

impl WindowJoinInput {
    /// The right side and the join of `job` (a window join job), new or restored from
    /// `state` (their part of a checkpoint) with `offsets`, the right stream's offsets that
    /// checkpoint holds.
    ///
    /// # Errors
    ///
    /// A job that is not a window join; a snapshot the engine refuses.
    pub(crate) fn open(
        job: &Arc<Job>,
        task: (u32, u32),
        restored: Option<(&[u8], &[u64])>,
    ) -> Result<WindowJoinInput, StreamProcessorError> {
        let window_join = window_joined(job)?;
        let engine = |source| StreamProcessorError::Engine {
            job: job.name.clone(),
            source,
        };
        let options = OperatorOptions {
            partitions: window_join.right.partitions,
            ..job.options
        };
        let plan = Arc::clone(&window_join.plan);
        let right_plan = Arc::clone(plan.right());
        let lateness = job.options.allowed_lateness;
        let (right, join) = match restored {
            Some((state, _)) => {
                let (right, join) =
                    runnel_engine::split_snapshot_parts(state, "right side").map_err(engine)?;
                (
                    WindowOperator::restore(right_plan, options, right).map_err(engine)?,
                    WindowJoin::restore(plan, lateness, join).map_err(engine)?,
                )
            }
            None => (
                WindowOperator::new(right_plan, options).map_err(engine)?,
                WindowJoin::new(plan, lateness),
            ),
        };
        Ok(WindowJoinInput {
            job: Arc::clone(job),
            right,
            join,
            task,
            stream: WholeStream::new(
                &job.name,
                &window_join.right,
                restored.map(|(_, offsets)| offsets),
            )?,
            end_checked: None,
        })
    }

    /// Opens the right stream's readers (see [`WholeStream::open`]).
    ///
    /// # Errors
    ///
    /// [`StreamProcessorError::History`]: a manifest, or a gap between history and log.
    pub(crate) async fn open_sources(
        &mut self,
        context: &TaskContext,
    ) -> Result<(), StreamProcessorError> {
        self.stream.open(context).await
    }

    /// Takes the left side's output (the task's window operator's, whose watermark is now
    /// `watermark`): its results go into the join, and are replaced by the joined rows of
    /// the windows that closes. Its late events stay.
    ///
    /// # Errors
    ///
    /// Failures inside the engine.
    pub(crate) fn left(
        &mut self,
        output: &mut OperatorOutput,
        watermark: i64,
    ) -> Result<(), StreamProcessorError> {
        self.join
            .results(0, &output.results)
            .map_err(|source| self.engine(source))?;
        output.results = self
            .join
            .advance(0, watermark)
            .map_err(|source| self.engine(source))?;
        Ok(())
    }

    /// Reads what the right stream has (a bounded number of batches per partition) through
    /// the right side's operator into the join, tells the operator which partitions are at
    /// their end (at most every [`END_CHECK`]), and returns the joined rows of the windows
    /// that closes.
    ///
    /// # Errors
    ///
    /// The right stream's and the log's failures; failures inside the engine.
    pub(crate) async fn poll(
        &mut self,
        context: &TaskContext,
    ) -> Result<RightPolled, StreamProcessorError> {
        let mut polled = RightPolled::default();
        let job = Arc::clone(&self.job);
        let input = &window_joined(&job)?.right;
        for partition in 0..self.stream.partitions() {
            for batch in self.stream.read(partition, OTHER_BATCHES_PER_POLL).await? {
                let batch = input.project(&batch)?;
                polled.events += batch.num_rows();
                // Its arrival time is its largest log timestamp, as a task's own batches'.
                let arrival = crate::router::ingest_time(&batch)
                    .or(self.right.arrival_clock())
                    .unwrap_or_else(runnel_time::now_millis);
                let output = self
                    .right
                    .process(partition as u32, &batch, arrival)
                    .map_err(|source| self.engine(source))?;
                self.take(partition as u32, output, &mut polled)?;
            }
        }
        if self.stream.drained()
            && self
                .end_checked
                .is_none_or(|checked| checked.elapsed() >= END_CHECK)
        {
            self.end_checked = Some(Instant::now());
            // The clock before asking: the partition holds nothing that arrived up to then.
            let as_of = runnel_time::now_millis();
            let at_end = self.stream.partitions_at_end(context).await?;
            for (partition, at_end) in at_end.into_iter().enumerate() {
                if at_end {
                    let output = self
                        .right
                        .input_at_end(partition as u32, as_of)
                        .map_err(|source| self.engine(source))?;
                    self.take(partition as u32, output, &mut polled)?;
                }
            }
        }
        polled.output.results = self
            .join
            .advance(1, self.right.watermark())
            .map_err(|source| self.engine(source))?;
        Ok(polled)
    }

    /// Takes an output of the right side's operator for input `partition`: its results into
    /// the join; its late events into `polled` if this task reports that partition's.
    fn take(
        &mut self,
        partition: u32,
        output: OperatorOutput,
        polled: &mut RightPolled,
    ) -> Result<(), StreamProcessorError> {
        self.join
            .results(1, &output.results)
            .map_err(|source| self.engine(source))?;
        if partition % self.task.1.max(1) == self.task.0 {
            polled.late.extend(output.late_events);
        }
        Ok(())
    }

    /// The right side's and the join's snapshot (framed as two parts), and the right
    /// stream's offsets it goes with.
    ///
    /// # Errors
    ///
    /// Failures inside the engine.
    pub(crate) fn snapshot(&mut self) -> Result<(Vec<u8>, Vec<u64>), StreamProcessorError> {
        let right = self
            .right
            .snapshot()
            .map_err(|source| self.engine(source))?;
        let join = self.join.snapshot().map_err(|source| self.engine(source))?;
        Ok((
            runnel_engine::join_snapshot_parts(&right, &join),
            self.stream.offsets().to_vec(),
        ))
    }

    /// The right stream's next offset to read, per partition.
    pub(crate) fn offsets(&self) -> &[u64] {
        self.stream.offsets()
    }

    /// The offsets of a checkpoint just taken.
    pub(crate) fn checkpointed(&mut self, offsets: Vec<u64>) {
        self.stream.checkpointed(offsets);
    }

    /// Whether the right stream was read past where the last checkpoint holds.
    pub(crate) fn progressed(&self) -> bool {
        self.stream.progressed()
    }

    fn engine(&self, source: runnel_engine::EngineError) -> StreamProcessorError {
        StreamProcessorError::Engine {
            job: self.job.name.clone(),
            source,
        }
    }
}

/// `job`'s window join.
fn window_joined(job: &Job) -> Result<&WindowJoined, StreamProcessorError> {
    job.window_join
        .as_ref()
        .ok_or_else(|| StreamProcessorError::Job {
            job: job.name.clone(),
            message: "not a join of two windowed aggregates".to_string(),
        })
}
