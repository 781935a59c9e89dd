//! A router task: one source partition of a job that does not group by its stream's key,
//! copied into the job's repartition topic keyed by each event's group.
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

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use bytes::Bytes;
use runnel_events::decode::EventDecoder;
use runnel_log::{Header, ProduceRecord, Record, StartOffset, partition_for_key};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::StreamProcessorError;
use crate::checkpoint::{CheckpointManifest, TaskCheckpoints};
use crate::job::{Job, repartition_topic};
use crate::task::{
    SOURCE_OFFSET_HEADER, SOURCE_PARTITION_HEADER, SOURCE_PROGRESS_HEADER, TaskContext,
};

/// Routes one source partition of a job into its repartition topic.
pub(crate) struct Router {
    job: Arc<Job>,
    partition: u32,
    context: TaskContext,
    checkpoints: TaskCheckpoints,
    decoder: EventDecoder,
    offset: u64,
    epoch: u64,
    checkpointed_offset: u64,
    last_checkpoint: Instant,
    /// Per repartition partition, the largest event time it was sent (in a copy or a marker).
    announced: Vec<Option<i64>>,
}

impl Router {
    /// The router of `partition`, resuming from its newest checkpoint (checkpoints of
    /// `<job>.router`: an offset, no state) or the partition's earliest offset.
    ///
    /// # Errors
    ///
    /// Object-store and log failures.
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
        let (offset, epoch) = match checkpoints.latest(context.store.as_ref()).await? {
            Some(restored) => (restored.manifest.source_offset, restored.manifest.epoch),
            None => {
                let topic = job.stream.name();
                let earliest = context
                    .log
                    .earliest_offset(topic, partition)
                    .await
                    .map_err(|source| StreamProcessorError::log(topic, source))?;
                (earliest, 0)
            }
        };
        Ok(Router {
            decoder: EventDecoder::new(&job.stream),
            job,
            partition,
            context,
            checkpoints,
            offset,
            epoch,
            checkpointed_offset: offset,
            last_checkpoint: Instant::now(),
            announced: Vec::new(),
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
        let source = self.job.stream.name().to_string();
        let target = repartition_topic(&self.job.name);
        let mut reader = self
            .context
            .log
            .reader(&source, self.partition, StartOffset::At(self.offset))
            .await
            .map_err(|error| StreamProcessorError::log(&source, error))?;
        let targets = self
            .context
            .log
            .partition_count(&target)
            .await
            .map_err(|error| StreamProcessorError::log(&target, error))?;
        self.announced = vec![None; targets as usize];
        loop {
            let records = tokio::select! {
                () = shutdown.cancelled() => break,
                read = reader.next_batch(self.context.read_batch_records, crate::task::READ_WAIT) => {
                    read.map_err(|error| StreamProcessorError::log(&source, error))?
                }
            };
            if let Some(last) = records.last() {
                let routed = self.route(&records)?;
                if !routed.is_empty() {
                    self.context
                        .log
                        .append(&target, routed)
                        .await
                        .map_err(|error| StreamProcessorError::log(&target, error))?;
                }
                self.offset = last.offset + 1;
                tokio::task::yield_now().await;
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

    /// Copies of `records` keyed by their group (undecodable records are left out: no
    /// window task could count them either), each in the repartition partition its key
    /// picks, then a progress marker for each partition that has not seen the largest event
    /// time among them.
    fn route(&mut self, records: &[Record]) -> Result<Vec<ProduceRecord>, StreamProcessorError> {
        let input = self.job.input(&self.decoder, records)?;
        let keys = self.job.plan.group_key_texts(&input).map_err(|source| {
            StreamProcessorError::Engine {
                job: self.job.name.clone(),
                source,
            }
        })?;
        let offsets = input
            .column_by_name(runnel_events::OFFSET_COLUMN)
            .map(|column| column.as_primitive::<Int64Type>().clone())
            .ok_or_else(|| {
                StreamProcessorError::Encode(arrow::error::ArrowError::SchemaError(
                    "the plan's input has no _offset".to_string(),
                ))
            })?;
        // Event times by row (epoch ms; `None` where missing, which the task drops too).
        let event_times: Option<Vec<Option<i64>>> = arrow::compute::cast(
            input.column(self.job.stream.event_time_index()),
            &arrow::datatypes::DataType::Int64,
        )
        .ok()
        .map(|times| times.as_primitive::<Int64Type>().iter().collect());
        let header = |key: &str, value: &dyn ToString| Header {
            key: key.to_string(),
            value: Bytes::from(value.to_string()),
        };
        let first = records.first().map_or(0, |record| record.offset);
        let mut routed = Vec::with_capacity(input.num_rows());
        for row in 0..input.num_rows() {
            let offset = offsets.value(row) as u64;
            let Some(record) = records.get((offset - first) as usize) else {
                continue;
            };
            // A row whose key fails goes on with an empty key; the window task that gets it
            // finds the same failure and sends the event to the late topic with its reason.
            let key = if keys.is_null(row) {
                &[][..]
            } else {
                keys.value(row).as_bytes()
            };
            let target = partition_for_key(key, self.announced.len() as u32);
            if let Some(time) = event_times
                .as_ref()
                .and_then(|times| times.get(row).copied().flatten())
            {
                let announced = &mut self.announced[target as usize];
                *announced = Some(announced.map_or(time, |announced| announced.max(time)));
            }
            routed.push(ProduceRecord {
                key: Some(Bytes::copy_from_slice(key)),
                value: record.value.clone(),
                timestamp: record.timestamp,
                headers: vec![
                    header(SOURCE_PARTITION_HEADER, &self.partition),
                    header(SOURCE_OFFSET_HEADER, &offset),
                ],
                partition: Some(target),
            });
        }
        let progress = event_times
            .as_ref()
            .and_then(|times| times.iter().flatten().max().copied());
        if let (Some(progress), Some(last)) = (progress, records.last()) {
            for (target, announced) in self.announced.iter_mut().enumerate() {
                if announced.is_some_and(|announced| announced >= progress) {
                    continue;
                }
                *announced = Some(progress);
                routed.push(ProduceRecord {
                    key: None,
                    value: Bytes::new(),
                    timestamp: last.timestamp,
                    headers: vec![
                        header(SOURCE_PARTITION_HEADER, &self.partition),
                        header(SOURCE_PROGRESS_HEADER, &progress),
                    ],
                    partition: Some(target as u32),
                });
            }
        }
        Ok(routed)
    }

    async fn checkpoint(&mut self) -> Result<(), StreamProcessorError> {
        self.epoch += 1;
        let manifest = CheckpointManifest {
            job: format!("{}.router", self.job.name),
            partition: self.partition,
            epoch: self.epoch,
            source_offset: self.offset,
            watermark: i64::MIN,
            late_count: 0,
            state_bytes: 0,
            seen_source_offsets: Vec::new(),
        };
        self.checkpoints
            .save(self.context.store.as_ref(), &manifest, Vec::new())
            .await?;
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
