//! The partitioned log that every runnel service stands on.
//!
//! Records are (topic, partition, offset, timestamp, key, value, headers). The [`Log`] trait
//! produces (batch append, returning offsets) and consumes (readers from an offset, seek by
//! timestamp, earliest/latest offsets, committed offsets per consumer group). Two backends
//! implement it and pass one conformance suite (`tests/log.rs`):
//! - [`EmbeddedLog`], the default: checksummed segment files on local disk, acknowledged
//!   only once fsynced (with group commit), recovered after a crash by truncating a torn tail.
//! - [`KafkaLog`]: a Kafka-protocol cluster through rdkafka.
//!
//! Both place keyed records with Kafka's default partitioner ([`partition_for_key`], murmur2),
//! so runnel and any Kafka producer agree on where a key lives.
#![warn(missing_docs)]

mod embedded;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod kafka;
mod kafka_group;
mod kafka_produce;
mod kafka_transaction;
mod msk_iam;
mod partitioner;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use runnel_config::{Config, LogBackend};

pub use embedded::{
    EmbeddedLog, LogProblem, PartitionCheck, ProblemKind, REPAIRS_FILE, RepairAction, RepairReport,
    SkippedRange, check_embedded_log, repair_embedded_partition,
};
pub use error::LogError;
pub use group::{GroupMembership, OwnershipChange, Revocation};
pub use kafka::KafkaLog;
pub use kafka_transaction::KafkaTransactionalWriter;
pub use partitioner::{Partitioner, murmur2, partition_for_key};

/// A record header: a name and an opaque value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub key: String,
    /// Header value.
    pub value: Bytes,
}

/// A record to append. The log assigns its partition (unless given) and offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProduceRecord {
    /// Partitioning key; `None` spreads records round robin.
    pub key: Option<Bytes>,
    /// Payload.
    pub value: Bytes,
    /// Record timestamp, epoch milliseconds (usually the event time).
    pub timestamp: i64,
    /// Headers, in order.
    pub headers: Vec<Header>,
    /// Explicit partition; overrides the key's partition.
    pub partition: Option<u32>,
}

/// A record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: Arc<str>,
    /// Partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Timestamp, epoch milliseconds.
    pub timestamp: i64,
    /// Key, if it had one.
    pub key: Option<Bytes>,
    /// Payload.
    pub value: Bytes,
    /// Headers, in order.
    pub headers: Vec<Header>,
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordPosition {
    /// Partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// Where a new reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOffset {
    /// The oldest retained record.
    Earliest,
    /// The next record to be appended.
    Latest,
    /// This offset (the next record read has it).
    At(u64),
}

/// An offset to commit for a consumer group with a transaction, and the metadata kept with
/// it (runnel keeps the checkpoint epoch there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    /// The consumer group.
    pub group: String,
    /// The topic read.
    pub topic: String,
    /// The partition read.
    pub partition: u32,
    /// The next offset to read.
    pub offset: u64,
    /// Kept with the offset; [`Log::committed_offset_and_metadata`] reads it back.
    pub metadata: String,
}

/// Appends that become visible atomically, with consumer-group offsets, or not at all (Kafka
/// transactions); see [`Log::transactional_writer`]. Readers only ever see committed
/// records (Kafka's `read_committed`).
#[async_trait]
pub trait TransactionalWriter: Send {
    /// Starts a transaction.
    ///
    /// # Errors
    ///
    /// [`LogError::Fenced`]; backend errors.
    async fn begin(&mut self) -> Result<(), LogError>;

    /// Appends `records` to `topic` in the open transaction; returns once the broker has
    /// them (not yet visible).
    ///
    /// # Errors
    ///
    /// [`LogError::Fenced`]; those of [`Log::append`]. After an error, abort.
    async fn append(&mut self, topic: &str, records: Vec<ProduceRecord>) -> Result<(), LogError>;

    /// Commits the open transaction with `offsets`: its records and the offsets become
    /// visible together. Offsets for a group this process has joined
    /// ([`Log::join_group`]) carry the member's identity and generation: once the group has
    /// replaced the member, the commit is refused (KIP-447), so a member that lost its
    /// partitions while it was away commits nothing.
    ///
    /// # Errors
    ///
    /// [`LogError::Fenced`] (nothing of the transaction is visible, ever); backend errors.
    async fn commit(&mut self, offsets: &[OffsetCommit]) -> Result<(), LogError>;

    /// Aborts the open transaction: none of its records will be visible.
    ///
    /// # Errors
    ///
    /// [`LogError::Fenced`]; backend errors.
    async fn abort(&mut self) -> Result<(), LogError>;
}

/// The log: one trait over every backend.
///
/// Offsets are dense per partition and start at 0. A committed offset is, as in Kafka, the
/// offset of the next record the group will read.
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// Creates `topic` with `partitions` partitions, or checks that it exists with that many.
    ///
    /// # Errors
    ///
    /// [`LogError::PartitionMismatch`] if it exists with another count; backend errors.
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError>;

    /// Returns the number of partitions of `topic`.
    ///
    /// # Errors
    ///
    /// [`LogError::UnknownTopic`]; backend errors.
    async fn partition_count(&self, topic: &str) -> Result<u32, LogError>;

    /// Appends `records` and returns, in input order, where each one landed.
    ///
    /// Returns only once every record is durable (embedded: fsynced; Kafka: acknowledged
    /// by all in-sync replicas). Records with the same key keep their relative order.
    ///
    /// # Errors
    ///
    /// Unknown topic or partition, oversized record, I/O or broker failure. On error, some
    /// records may have been written; none of them was acknowledged.
    async fn append(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>, LogError>;

    /// Opens a reader of one partition.
    ///
    /// # Errors
    ///
    /// Unknown topic or partition, an offset out of range, backend errors.
    async fn reader(
        &self,
        topic: &str,
        partition: u32,
        start: StartOffset,
    ) -> Result<Box<dyn PartitionReader>, LogError>;

    /// Returns the offset of the oldest retained record (the next offset if empty).
    ///
    /// # Errors
    ///
    /// Unknown topic or partition; backend errors.
    async fn earliest_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError>;

    /// Returns the offset the next appended record will get (the high watermark).
    ///
    /// # Errors
    ///
    /// Unknown topic or partition; backend errors.
    async fn latest_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError>;

    /// Returns the offset of the first record whose timestamp is at or after `timestamp`,
    /// or `None` if there is none yet (Kafka's `offsets_for_times`).
    ///
    /// # Errors
    ///
    /// Unknown topic or partition; backend errors.
    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<u64>, LogError>;

    /// Durably records, for consumer group `group`, the next offset to read per partition.
    ///
    /// # Errors
    ///
    /// Invalid group name, unknown topic; backend errors.
    async fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), LogError>;

    /// Returns the offset `group` committed for a partition and the metadata committed with
    /// it, if it committed one. The embedded log keeps no metadata (it answers `""`).
    ///
    /// # Errors
    ///
    /// Those of [`Log::committed_offset`].
    async fn committed_offset_and_metadata(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, String)>, LogError> {
        Ok(self
            .committed_offset(group, topic, partition)
            .await?
            .map(|offset| (offset, String::new())))
    }

    /// A transactional writer with id `transactional_id`: what it appends between
    /// [`TransactionalWriter::begin`] and [`TransactionalWriter::commit`] becomes visible to
    /// readers at once and atomically with the group offsets given to the commit, or never.
    /// Opening it fences every earlier writer with the same id (their open transaction is
    /// aborted and their next call fails with [`LogError::Fenced`]).
    ///
    /// # Errors
    ///
    /// [`LogError::Unsupported`] on the embedded log, where a partition has one writer
    /// process (its lock) and so no zombie to fence; backend errors.
    async fn transactional_writer(
        &self,
        transactional_id: &str,
    ) -> Result<Box<dyn TransactionalWriter>, LogError> {
        Err(LogError::Unsupported(format!(
            "transactional writer `{transactional_id}`: this log backend has no transactions"
        )))
    }

    /// Returns the offset `group` committed for a partition, if it committed one.
    ///
    /// # Errors
    ///
    /// Invalid group name, unknown topic; backend errors.
    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError>;

    /// Joins consumer group `group` over the partitions of `topic`, which exists: the
    /// group's members share them, one owner per partition (see [`GroupMembership`]).
    ///
    /// Embedded: one process opens the log at a time, so the member owns every partition.
    /// Kafka: a member of a broker-coordinated group (cooperative-sticky assignment); use a
    /// group of its own, since a group with members refuses the plain commits of
    /// [`Log::commit_offsets`].
    ///
    /// # Errors
    ///
    /// Invalid group name, unknown topic; backend errors.
    async fn join_group(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Box<dyn GroupMembership>, LogError>;

    /// Stops cleanly, once what is queued is written: a service calls it as it stops.
    /// Appends after it fail with [`LogError::Closed`].
    ///
    /// Embedded: each partition's writer finishes and writes its active segment's index, so
    /// the next open need not read the segment (after a crash it does). Kafka: nothing; every
    /// append was awaited.
    async fn close(&self) {}
}

/// A cursor over one partition.
///
/// `next_batch` is cancel-safe: if its future is dropped, no record is lost; the next call
/// returns what the dropped one would have.
#[async_trait]
pub trait PartitionReader: Send {
    /// Returns up to `max_records` records from the current position, waiting up to
    /// `max_wait` for the first one. Returns an empty batch if none arrived in time.
    ///
    /// # Errors
    ///
    /// [`LogError::Corrupt`] naming the file and position of a record that fails its
    /// checksum; [`LogError::OffsetOutOfRange`] if retention removed the position; backend errors.
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Record>, LogError>;

    /// Returns the offset of the next record this reader will return.
    fn position(&self) -> u64;

    /// Moves the reader so that the next record returned has offset `offset`.
    ///
    /// # Errors
    ///
    /// [`LogError::OffsetOutOfRange`]; backend errors.
    async fn seek(&mut self, offset: u64) -> Result<(), LogError>;
}

/// Opens the log backend that `config` selects.
///
/// # Errors
///
/// I/O and recovery errors of the embedded log; client creation errors of the Kafka backend.
pub async fn open_log(config: &Config) -> Result<Arc<dyn Log>, LogError> {
    match config.storage.log.backend {
        LogBackend::Embedded => {
            let log =
                EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded).await?;
            Ok(Arc::new(log))
        }
        LogBackend::Kafka => Ok(Arc::new(KafkaLog::new(&config.storage.log.kafka)?)),
    }
}

/// Checks the name and partition count of a topic to create.
pub(crate) fn check_new_topic(topic: &str, partitions: u32) -> Result<(), LogError> {
    check_name("topic", topic)?;
    if partitions == 0 {
        return Err(LogError::NoPartitions(topic.to_string()));
    }
    Ok(())
}

/// Checks a topic or group name: 1-200 letters, digits, `.`, `_`, `-` (safe as a path segment).
pub(crate) fn check_name(kind: &'static str, name: &str) -> Result<(), LogError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(LogError::InvalidName {
            kind,
            name: name.to_string(),
        })
    }
}
