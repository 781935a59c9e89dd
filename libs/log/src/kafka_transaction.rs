//! Kafka transactions for [`Log::transactional_writer`](crate::Log::transactional_writer):
//! a transactional producer per transactional id (`init_transactions` fences every earlier
//! producer with the id and aborts its open transaction), records sent within a
//! transaction, and consumer-group offsets committed with it
//! (`send_offsets_to_transaction`), as Kafka Streams' and Flink's exactly-once sinks do.
//!
//! Each blocking call is bounded by a watchdog beyond the timeout librdkafka is given:
//! librdkafka 2.12's `send_offsets_to_transaction` can wait forever while the group
//! coordinator it cached is down (the coordinator request's own timeout is never checked:
//! confluentinc/librdkafka#5456, #5511). A call that outlives the watchdog leaves the writer
//! unusable ([`LogError::Hung`]); its owner opens a new one with the same transactional id,
//! which fences this one and aborts its transaction. The hung call's thread and producer are
//! left to librdkafka (nothing can cancel the call) and freed if it ever returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::TopicPartitionList;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::Offset;
use runnel_config::KafkaLogConfig;
use tracing::warn;

use crate::kafka::{
    GroupClients, KafkaConsumer, is_fenced_code, kafka_error, partition_count_of, place,
    producer_config,
};
use crate::kafka_produce::{BatchContext, KafkaProducer, send_batch};
use crate::msk_iam::TokenContext;
use crate::{LogError, OffsetCommit, Partitioner, ProduceRecord, TransactionalWriter};

/// How long past its own timeout (the request timeout) a blocking transactional call may
/// run before the writer gives up on it, at most (see the module docs): as long again as the
/// request timeout, up to this.
const WATCHDOG_GRACE: Duration = Duration::from_secs(15);

/// A transactional producer; see the module docs.
pub struct KafkaTransactionalWriter {
    transactional_id: String,
    config: KafkaLogConfig,
    producer: Arc<KafkaProducer>,
    metadata_client: Arc<KafkaConsumer>,
    partitioner: Partitioner,
    /// The log's group clients: the metadata of the groups whose offsets go with a commit.
    groups: GroupClients,
    /// The call that outlived the watchdog, if one did: the writer does nothing more.
    hung: Option<&'static str>,
}

impl KafkaTransactionalWriter {
    /// Creates the producer and registers `transactional_id` with the cluster, fencing
    /// every earlier producer with it.
    pub(crate) async fn open(
        config: &KafkaLogConfig,
        transactional_id: &str,
        metadata_client: Arc<KafkaConsumer>,
        groups: GroupClients,
        tokens: TokenContext,
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
            .create_with_context(BatchContext::new(tokens))
            .map_err(kafka_error(format!(
                "create the transactional producer `{transactional_id}`"
            )))?;
        let mut writer = KafkaTransactionalWriter {
            transactional_id: transactional_id.to_string(),
            config: config.clone(),
            producer: Arc::new(producer),
            metadata_client,
            partitioner: Partitioner::default(),
            groups,
            hung: None,
        };
        let timeout = writer.config.request_timeout;
        writer
            .call("init transactions", move |producer| {
                producer.init_transactions(timeout)
            })
            .await?;
        Ok(writer)
    }

    /// Runs a blocking transactional call, bounded by the watchdog (see the module docs); a
    /// fenced producer's error is [`LogError::Fenced`].
    async fn call(
        &mut self,
        action: &'static str,
        call: impl FnOnce(&KafkaProducer) -> Result<(), KafkaError> + Send + 'static,
    ) -> Result<(), LogError> {
        let timeout = self.config.request_timeout;
        let waited = timeout + timeout.min(WATCHDOG_GRACE);
        if let Some(hung) = self.hung {
            return Err(self.hung_error(hung, waited));
        }
        let producer = Arc::clone(&self.producer);
        let call = tokio::task::spawn_blocking(move || call(&producer));
        let Ok(result) = tokio::time::timeout(waited, call).await else {
            self.hung = Some(action);
            warn!(transactional_id = %self.transactional_id, action, ?waited,
                "a transactional call outlived its timeout; abandoning the writer");
            return Err(self.hung_error(action, waited));
        };
        let result =
            result.map_err(|join| LogError::KafkaProtocol(format!("{action} panicked: {join}")))?;
        result.map_err(|error| self.error(action, error))
    }

    fn hung_error(&self, action: &str, waited: Duration) -> LogError {
        LogError::Hung {
            action: format!("{action} (transactional id `{}`)", self.transactional_id),
            waited,
        }
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A call that outlives the watchdog (as librdkafka's `send_offsets_to_transaction` can)
    /// is given up in bounded time, and the writer refuses every later call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_that_outlives_the_watchdog_leaves_the_writer_unusable() {
        let Some(bootstrap) = runnel_testkit::gate::kafka_bootstrap("a Kafka test") else {
            return;
        };
        let config = KafkaLogConfig {
            bootstrap_servers: bootstrap,
            client_id: "runnel-watchdog-test".to_string(),
            replication_factor: 1,
            min_insync_replicas: None,
            request_timeout: Duration::from_secs(3),
            session_timeout: Duration::from_secs(6),
            rebalance_timeout: Duration::from_secs(20),
            group_instance_id: None,
            properties: Default::default(),
            aws_msk_iam: false,
        };
        let metadata_client: KafkaConsumer = crate::kafka::consumer_config(&config, "runnel-test")
            .create_with_context(TokenContext::default())
            .expect("metadata client");
        let id = format!("watchdog-{}", std::process::id());
        let mut writer = KafkaTransactionalWriter::open(
            &config,
            &id,
            Arc::new(metadata_client),
            GroupClients::default(),
            TokenContext::default(),
        )
        .await
        .expect("open a transactional writer");
        let started = Instant::now();
        let hung = writer
            .call("a call that hangs", |_| {
                std::thread::sleep(Duration::from_secs(8));
                Ok(())
            })
            .await;
        let waited = started.elapsed();
        assert!(
            matches!(&hung, Err(LogError::Hung { action, .. }) if action.contains("a call that hangs")),
            "{hung:?}"
        );
        assert!(
            waited >= Duration::from_secs(6) && waited < Duration::from_secs(8),
            "given up after {waited:?}, not twice the request timeout (6 s)"
        );
        let after = writer.begin().await;
        assert!(
            matches!(&after, Err(LogError::Hung { action, .. }) if action.contains("a call that hangs")),
            "{after:?}"
        );
    }
}
