//! The Kafka backend, through rdkafka (being written).

use async_trait::async_trait;
use runnel_config::KafkaLogConfig;

use crate::{Log, LogError, PartitionReader, ProduceRecord, RecordPosition, StartOffset};

/// The log over a Kafka-protocol cluster.
pub struct KafkaLog {}

impl KafkaLog {
    /// Creates the clients.
    ///
    /// # Errors
    ///
    /// Client configuration errors.
    pub fn new(_config: &KafkaLogConfig) -> Result<KafkaLog, LogError> {
        unimplemented!("the Kafka backend is being written (issue 2)")
    }
}

#[async_trait]
impl Log for KafkaLog {
    async fn ensure_topic(&self, _topic: &str, _partitions: u32) -> Result<(), LogError> { unimplemented!() }
    async fn partition_count(&self, _topic: &str) -> Result<u32, LogError> { unimplemented!() }
    async fn append(&self, _topic: &str, _records: Vec<ProduceRecord>) -> Result<Vec<RecordPosition>, LogError> { unimplemented!() }
    async fn reader(&self, _topic: &str, _partition: u32, _start: StartOffset) -> Result<Box<dyn PartitionReader>, LogError> { unimplemented!() }
    async fn earliest_offset(&self, _topic: &str, _partition: u32) -> Result<u64, LogError> { unimplemented!() }
    async fn latest_offset(&self, _topic: &str, _partition: u32) -> Result<u64, LogError> { unimplemented!() }
    async fn offset_for_timestamp(&self, _topic: &str, _partition: u32, _timestamp: i64) -> Result<Option<u64>, LogError> { unimplemented!() }
    async fn commit_offsets(&self, _group: &str, _topic: &str, _offsets: &[(u32, u64)]) -> Result<(), LogError> { unimplemented!() }
    async fn committed_offset(&self, _group: &str, _topic: &str, _partition: u32) -> Result<Option<u64>, LogError> { unimplemented!() }
}
