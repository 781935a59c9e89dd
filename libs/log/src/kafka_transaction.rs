//! Kafka transactions for [`Log::transactional_writer`](crate::Log::transactional_writer):
//! a transactional producer per transactional id (`init_transactions` fences every earlier
//! producer with the id and aborts its open transaction), records sent within a
//! transaction, and consumer-group offsets committed with it
//! (`send_offsets_to_transaction`), as Kafka Streams' and Flink's exactly-once sinks do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::Offset;
use runnel_config::KafkaLogConfig;

use crate::kafka::{
    GroupClients, is_fenced_code, kafka_error, partition_count_of, place, producer_config,
};
use crate::kafka_produce::{BatchContext, KafkaProducer, send_batch};
use crate::{LogError, OffsetCommit, Partitioner, ProduceRecord, TransactionalWriter};

/// A transactional producer; see the module docs.
pub struct KafkaTransactionalWriter {
    transactional_id: String,
    config: KafkaLogConfig,
    producer: Arc<KafkaProducer>,
    metadata_client: Arc<BaseConsumer>,
    partitioner: Partitioner,
    /// The log's group clients: the metadata of the groups whose offsets go with a commit.
    groups: GroupClients,
}

impl KafkaTransactionalWriter {
    /// Creates the producer and registers `transactional_id` with the cluster, fencing
    /// every earlier producer with it.
    pub(crate) async fn open(
        config: &KafkaLogConfig,
        transactional_id: &str,
        metadata_client: Arc<BaseConsumer>,
        groups: GroupClients,
    ) -> Result<KafkaTransactionalWriter, LogError> {
        let producer: KafkaProducer = producer_config(config)
            .set("transactional.id", transactional_id)
            .set(
                "transaction.timeout.ms",
                // The broker aborts a transaction left open longer (a producer that died
                // mid-transaction); at least a minute, as commits come every checkpoint.
                config
                    .request_timeout
                    .max(Duration::from_secs(60))
                    .as_millis()
                    .to_string(),
            )
            .create_with_context(BatchContext)
            .map_err(kafka_error(format!(
                "create the transactional producer `{transactional_id}`"
            )))?;
        let writer = KafkaTransactionalWriter {
            transactional_id: transactional_id.to_string(),
            config: config.clone(),
            producer: Arc::new(producer),
            metadata_client,
            partitioner: Partitioner::default(),
            groups,
        };
        let timeout = writer.config.request_timeout;
        writer
            .call("init transactions", move |producer| {
                producer.init_transactions(timeout)
            })
            .await?;
        Ok(writer)
    }

    /// Runs a blocking transactional call; a fenced producer's error is [`LogError::Fenced`].
    async fn call(
        &self,
        action: &'static str,
        call: impl FnOnce(&KafkaProducer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), LogError> {
        let producer = Arc::clone(&self.producer);
        let result = tokio::task::spawn_blocking(move || call(&producer))
            .await
            .map_err(|join| LogError::KafkaProtocol(format!("{action} panicked: {join}")))?;
        result.map_err(|error| self.error(action, error))
    }

    fn error(&self, action: &str, error: KafkaError) -> LogError {
        // Once fenced, the producer's queued records fail as purged: the fatal error says why.
        let fenced = error.rdkafka_error_code().is_some_and(is_fenced_code)
            || self
                .producer
                .client()
                .fatal_error()
                .is_some_and(|(code, _)| is_fenced_code(code));
        if fenced {
            return LogError::Fenced {
                transactional_id: self.transactional_id.clone(),
                message: error.to_string(),
            };
        }
        LogError::Kafka {
            action: format!("{action} (transactional id `{}`)", self.transactional_id),
            source: error,
        }
    }
}

#[async_trait]
impl TransactionalWriter for KafkaTransactionalWriter {
    async fn begin(&mut self) -> Result<(), LogError> {
        self.call("begin a transaction", |producer| {
            producer.begin_transaction()
        })
        .await
    }

    async fn append(&mut self, topic: &str, records: Vec<ProduceRecord>) -> Result<(), LogError> {
        let partitions = partition_count_of(
            Arc::clone(&self.metadata_client),
            topic,
            self.config.request_timeout,
        )
        .await?;
        let placed = place(topic, &records, partitions, &self.partitioner)?;
        send_batch(
            &self.producer,
            topic,
            &records,
            &placed,
            self.config.request_timeout,
        )
        .await
        .map_err(|error| self.error("produce in a transaction", error))?;
        Ok(())
    }

    async fn commit(&mut self, offsets: &[OffsetCommit]) -> Result<(), LogError> {
        let timeout = self.config.request_timeout;
        let mut by_group: HashMap<&str, TopicPartitionList> = HashMap::new();
        for commit in offsets {
            let list = by_group.entry(commit.group.as_str()).or_default();
            list.add_partition_offset(
                &commit.topic,
                commit.partition as i32,
                Offset::Offset(commit.offset as i64),
            )
            .and_then(|()| {
                list.find_partition(&commit.topic, commit.partition as i32)
                    .ok_or(KafkaError::Subscription("no such partition".to_string()))?
                    .set_metadata(commit.metadata.clone());
                Ok(())
            })
            .map_err(kafka_error("build the transaction's offsets"))?;
        }
        for (group, list) in by_group {
            let metadata = self
                .groups
                .transaction_metadata(&self.config, group)?
                .map_err(|why| LogError::Fenced {
                    transactional_id: self.transactional_id.clone(),
                    message: format!("offsets for group {group}: {why}"),
                })?;
            self.call("send offsets to the transaction", move |producer| {
                producer.send_offsets_to_transaction(&list, &metadata, timeout)
            })
            .await?;
        }
        self.call("commit the transaction", move |producer| {
            producer.commit_transaction(timeout)
        })
        .await
    }

    async fn abort(&mut self) -> Result<(), LogError> {
        let timeout = self.config.request_timeout;
        self.call("abort the transaction", move |producer| {
            producer.abort_transaction(timeout)
        })
        .await
    }
}
