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

use arrow::array::RecordBatch;
use object_store::ObjectStore;
use runnel_engine::{OperatorOutput, WindowOperator};
use runnel_events::decode::EventDecoder;
use runnel_log::{Log, Record, StartOffset};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::StreamProcessorError;
use crate::checkpoint::{CheckpointManifest, TaskCheckpoints};
use crate::job::{Job, job_group, late_topic, results_topic};
use crate::output::{late_records, result_records};
use crate::status::{PartitionReporter, StatusRegistry};

/// How long a read waits for records before the task checks its checkpoint timer.
const READ_WAIT: Duration = Duration::from_millis(200);

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
    /// Where tasks report their status.
    pub(crate) status: Arc<StatusRegistry>,
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
    status: PartitionReporter,
    /// When the partition's end offset was last read for the status.
    end_offset_read: Option<Instant>,
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
        context: TaskContext,
    ) -> Result<Task, StreamProcessorError> {
        let checkpoints = TaskCheckpoints::new(
            &context.checkpoint_prefix,
            &job.name,
            partition,
            context.checkpoints_to_keep,
        );
        let status = context
            .status
            .register(&job.name, job.stream.name(), partition);
        let (operator, offset, epoch) = match checkpoints.latest(context.store.as_ref()).await? {
            Some(restored) => {
                let operator =
                    WindowOperator::restore(Arc::clone(&job.plan), job.options, &restored.state)
                        .map_err(|source| StreamProcessorError::Engine {
                            job: job.name.clone(),
                            source,
                        })?;
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
                    WindowOperator::new(Arc::clone(&job.plan), job.options).map_err(|source| {
                        StreamProcessorError::Engine {
                            job: job.name.clone(),
                            source,
                        }
                    })?;
                let topic = job.stream.name();
                let earliest = context
                    .log
                    .earliest_offset(topic, partition)
                    .await
                    .map_err(|source| StreamProcessorError::log(topic, source))?;
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
            decoder: EventDecoder::new(&job.stream),
            job,
            partition,
            context,
            checkpoints,
            operator,
            offset,
            epoch,
            checkpointed_offset: offset,
            last_checkpoint: Instant::now(),
            status,
            end_offset_read: None,
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
        let topic = self.job.stream.name().to_string();
        let mut reader = self
            .context
            .log
            .reader(&topic, self.partition, StartOffset::At(self.offset))
            .await
            .map_err(|source| StreamProcessorError::log(&topic, source))?;
        loop {
            let records = tokio::select! {
                () = shutdown.cancelled() => break,
                read = reader.next_batch(self.context.read_batch_records, READ_WAIT) => {
                    read.map_err(|source| StreamProcessorError::log(&topic, source))?
                }
            };
            if !records.is_empty() {
                self.process(&records).await?;
            }
            if self
                .end_offset_read
                .is_none_or(|read| read.elapsed() >= END_OFFSET_REFRESH)
            {
                self.read_end_offset(&topic).await;
            }
            if self.last_checkpoint.elapsed() >= self.context.checkpoint_interval
                && self.offset != self.checkpointed_offset
            {
                self.checkpoint().await?;
            }
        }
        if self.offset != self.checkpointed_offset {
            self.checkpoint().await?;
        }
        Ok(())
    }

    async fn process(&mut self, records: &[Record]) -> Result<(), StreamProcessorError> {
        let decoded = self.decoder.decode(records)?;
        for bad in &decoded.undecodable {
            warn!(offset = bad.offset, reason = %bad.reason, "undecodable record skipped");
        }
        let arrival = records
            .iter()
            .map(|record| record.timestamp)
            .max()
            .unwrap_or_default();
        let input = decoded
            .batch
            .project(&self.job.input_columns)
            .map_err(StreamProcessorError::Encode)?;
        let input =
            RecordBatch::try_new(Arc::clone(&self.job.input_schema), input.columns().to_vec())
                .map_err(StreamProcessorError::Encode)?;
        let output = self
            .operator
            .process(0, &input, arrival)
            .map_err(|source| StreamProcessorError::Engine {
                job: self.job.name.clone(),
                source,
            })?;
        let result_rows: usize = output.results.iter().map(RecordBatch::num_rows).sum();
        self.emit(output, arrival).await?;
        if let Some(last) = records.last() {
            self.offset = last.offset + 1;
        }
        self.status.batch_done(
            self.offset,
            records.len() as u64,
            result_rows as u64,
            self.operator.watermark(),
            self.operator.late_count(),
        );
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
        for error in &output.errors {
            warn!(row = error.row, reason = %error.reason, "event not counted");
        }
        let results = result_records(&output.results, self.partition, arrival)?;
        if !results.is_empty() {
            let topic = results_topic(&self.job.name);
            self.context
                .log
                .append(&topic, results)
                .await
                .map_err(|source| StreamProcessorError::log(&topic, source))?;
        }
        let late = late_records(&output.late_events, self.partition, arrival)?;
        if !late.is_empty() {
            let topic = late_topic(&self.job.name);
            self.context
                .log
                .append(&topic, late)
                .await
                .map_err(|source| StreamProcessorError::log(&topic, source))?;
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<(), StreamProcessorError> {
        let started = Instant::now();
        let state = self
            .operator
            .snapshot()
            .map_err(|source| StreamProcessorError::Engine {
                job: self.job.name.clone(),
                source,
            })?;
        self.epoch += 1;
        let manifest = CheckpointManifest {
            job: self.job.name.clone(),
            partition: self.partition,
            epoch: self.epoch,
            source_offset: self.offset,
            watermark: self.operator.watermark(),
            late_count: self.operator.late_count(),
            state_bytes: state.len() as u64,
        };
        self.checkpoints
            .save(self.context.store.as_ref(), &manifest, state)
            .await?;
        let topic = self.job.stream.name();
        self.context
            .log
            .commit_offsets(
                &job_group(&self.job.name),
                topic,
                &[(self.partition, self.offset)],
            )
            .await
            .map_err(|source| StreamProcessorError::log(topic, source))?;
        debug!(epoch = self.epoch, offset = self.offset, "checkpoint");
        self.checkpointed_offset = self.offset;
        self.last_checkpoint = Instant::now();
        self.status
            .checkpoint_done(self.epoch, self.offset, started.elapsed());
        Ok(())
    }
}
