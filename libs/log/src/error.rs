//! The log's error type.

use std::path::PathBuf;

/// Everything a log operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The topic does not exist.
    #[error("unknown topic `{0}`")]
    UnknownTopic(String),
    /// The partition does not exist.
    #[error("topic `{topic}` has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Requested partition.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// The topic exists with another partition count.
    #[error("topic `{topic}` exists with {existing} partitions, not {requested}")]
    PartitionMismatch {
        /// Topic.
        topic: String,
        /// Its partition count.
        existing: u32,
        /// The requested count.
        requested: u32,
    },
    /// A topic was asked for with no partitions.
    #[error("topic `{0}` needs at least one partition")]
    NoPartitions(String),
    /// A topic or group name that is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid {kind} name `{name}`: use 1-200 letters, digits, `.`, `_` or `-`")]
    InvalidName {
        /// "topic" or "consumer group".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The offset is not (or no longer) in the partition.
    #[error("offset {offset} of {topic}/{partition} is out of range [{earliest}, {latest}]")]
    OffsetOutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Requested offset.
        offset: u64,
        /// Oldest retained offset.
        earliest: u64,
        /// Next offset to be written.
        latest: u64,
    },
    /// A record is larger than the log accepts.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A stored record fails its checksum or is malformed, somewhere other than a torn tail.
    #[error("corrupt log file {} at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the bad record.
        position: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "fsync segment".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A partition refuses appends after a write or fsync failed, since what reached the
    /// disk is unknown; reopening the log recovers it.
    #[error("partition {topic}/{partition} refuses writes after an earlier failure: {reason}")]
    Poisoned {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The earlier failure.
        reason: String,
    },
    /// Another process (or another open `EmbeddedLog`) writes this partition of the
    /// embedded log.
    #[error("partition {topic}/{partition} is written by another process (it holds {}); one process at a time appends to a partition of the embedded log, so send the records through it", path.display())]
    PartitionLocked {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The lock file.
        path: PathBuf,
    },
    /// A repair of a partition of the embedded log was refused: it does not fit what the
    /// partition holds. Nothing was changed.
    #[error("repair of partition {topic}/{partition} refused: {reason}")]
    RepairRefused {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Why.
        reason: String,
    },
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// The Kafka client or broker reported an error.
    #[error("kafka: {action}: {source}")]
    Kafka {
        /// What was being done.
        action: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// The Kafka cluster answered something runnel cannot use.
    #[error("kafka: {0}")]
    KafkaProtocol(String),
    /// A newer transactional writer with the same transactional id took over, or the group
    /// member whose offsets went with the transaction was replaced (a zombie's writes are
    /// refused): this writer can do nothing more.
    #[error(
        "transactional id `{transactional_id}` was fenced: a newer writer with the same id, or a newer member of the group its offsets are for, took over ({message})"
    )]
    Fenced {
        /// The transactional id.
        transactional_id: String,
        /// What the broker said.
        message: String,
    },
    /// A Kafka client call did not return within its own timeout and a grace period (a
    /// librdkafka bug: see `kafka_transaction.rs`); the client is not used again.
    #[error("kafka: {action} did not return within {waited:?}; the client is abandoned")]
    Hung {
        /// What was being done.
        action: String,
        /// How long it was waited for.
        waited: std::time::Duration,
    },
    /// `storage.log.kafka.aws-msk-iam` is on, but the clients cannot be given MSK IAM
    /// tokens: no AWS region is set, or the AWS credential chain cannot be built.
    #[error("storage.log.kafka.aws-msk-iam: {0}")]
    AwsMskIam(String),
    /// The backend does not do what was asked (e.g. transactions on the embedded log).
    #[error("{0}")]
    Unsupported(String),
}

impl LogError {
    /// Whether the log could not be reached (no broker answered in time, a name did not
    /// resolve), which waiting may mend, rather than refused what was asked.
    pub fn is_unavailable(&self) -> bool {
        let LogError::Kafka { source, .. } = self else {
            return false;
        };
        match source {
            // An admin operation's own code (rdkafka gives none for it otherwise).
            rdkafka::error::KafkaError::AdminOp(code) => crate::kafka::is_transient_code(*code),
            source => crate::kafka::is_transient(source),
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io {
            action,
            path,
            source,
        }
    }
}
