//! The Kafka backend, through rdkafka (bundled librdkafka).
//!
//! The producer is idempotent with `acks=all`; runnel chooses every record's partition
//! itself with Kafka's default partitioner (murmur2 of the key), so keyed records land
//! where any Kafka producer would put them. Readers are assign-mode consumers on one
//! partition (no group membership); committed offsets go through a per-group client that
//! commits without joining the group, so reading depends neither on group rebalancing nor on
//! broker transactions. Sharing partitions among processes is the one use of a broker
//! group: [`Log::join_group`] (`kafka_group`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use runnel_config::KafkaLogConfig;
use tracing::{debug, info, warn};

use crate::kafka_group::KafkaMembership;
use crate::kafka_produce::{BatchContext, KafkaProducer, send_batch};
use crate::msk_iam::{TokenContext, set_admin_token};
use crate::{
    GroupMembership, Header, Log, LogError, PartitionReader, Partitioner, ProduceRecord, Record,
    RecordPosition, StartOffset, check_name, check_new_topic,
};

/// Largest message the producer sends (librdkafka's `message.max.bytes`).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Room for a record batch's own bytes beyond its records' keys and values (batch header,
/// record framing, headers), in the topics' `max.message.bytes`.
const MAX_BATCH_FRAMING_BYTES: usize = 64 << 10;

/// Every runnel consumer that is not a group member: readers, the metadata client, the
/// group clients.
pub(crate) type KafkaConsumer = BaseConsumer<TokenContext>;

/// The log over a Kafka-protocol cluster.
pub struct KafkaLog {
    config: KafkaLogConfig,
    /// Every client's context: MSK IAM tokens when `aws-msk-iam` is on.
    tokens: TokenContext,
    producer: KafkaProducer,
    /// Shared with the blocking thread that sets its MSK IAM token ([`set_admin_token`]).
    admin: Arc<AdminClient<TokenContext>>,
    /// For metadata, watermarks and time lookups; never assigned or subscribed.
    metadata_client: Arc<KafkaConsumer>,
    /// One commit client per consumer group, shared with the transactional writers.
    group_clients: GroupClients,
    partitioner: Partitioner,
}

pub(crate) fn kafka_error(action: impl Into<String>) -> impl FnOnce(KafkaError) -> LogError {
    let action = action.into();
    move |source| LogError::Kafka { action, source }
}

impl KafkaLog {
    /// Creates the producer, admin and metadata clients. Connects lazily. With
    /// `aws-msk-iam`, starts fetching AWS credentials for the clients' MSK IAM tokens.
    ///
    /// # Errors
    ///
    /// [`LogError::Kafka`] if librdkafka refuses the configuration;
    /// [`LogError::AwsMskIam`] if `aws-msk-iam` is on and no AWS region is set.
    pub fn new(config: &KafkaLogConfig) -> Result<KafkaLog, LogError> {
        KafkaLog::with_tokens(config, TokenContext::for_config(config)?)
    }

    /// [`KafkaLog::new`] with the clients' context given.
    pub(crate) fn with_tokens(
        config: &KafkaLogConfig,
        tokens: TokenContext,
    ) -> Result<KafkaLog, LogError> {
        let producer: KafkaProducer = producer_config(config)
            .create_with_context(BatchContext::new(tokens.clone()))
            .map_err(kafka_error("create producer"))?;
        let admin = base_client_config(config)
            .create_with_context(tokens.clone())
            .map_err(kafka_error("create admin client"))?;
        let metadata_client: KafkaConsumer = consumer_config(config, "runnel-metadata")
            .create_with_context(tokens.clone())
            .map_err(kafka_error("create metadata client"))?;
        Ok(KafkaLog {
            config: config.clone(),
            group_clients: GroupClients::new(tokens.clone()),
            tokens,
            producer,
            admin: Arc::new(admin),
            metadata_client: Arc::new(metadata_client),
            partitioner: Partitioner::default(),
        })
    }

    /// Runs a blocking librdkafka call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&KafkaConsumer) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let client = Arc::clone(&self.metadata_client);
        run_blocking(client, call).await
    }

    fn group_client(&self, group: &str) -> Result<Arc<KafkaConsumer>, LogError> {
        self.group_clients.get(&self.config, group)
    }

    async fn watermarks(&self, topic: &str, partition: u32) -> Result<(u64, u64), LogError> {
        self.check_partition(topic, partition).await?;
        let topic = topic.to_string();
        let (low, high) = metadata_request(
            &self.metadata_client,
            self.config.request_timeout,
            move |client, timeout| {
                client
                    .fetch_watermarks(&topic, partition as i32, timeout)
                    .map_err(kafka_error(format!(
                        "fetch watermarks of {topic}/{partition}"
                    )))
            },
        )
        .await?;
        Ok((low.max(0) as u64, high.max(0) as u64))
    }

    async fn check_partition(&self, topic: &str, partition: u32) -> Result<u32, LogError> {
        let partitions = self.partition_count(topic).await?;
        if partition >= partitions {
            return Err(LogError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions,
            });
        }
        Ok(partitions)
    }
}

/// Where a joined group's member metadata comes from: the member's own client, or why the
/// member has none to give.
pub(crate) type MemberMetadata =
    Arc<dyn Fn() -> Result<ConsumerGroupMetadata, String> + Send + Sync>;

/// A client per consumer group, made on first use: it commits and reads the group's offsets
/// without joining the group. And the members of the groups this process has joined
/// ([`Log::join_group`]), whose metadata goes with a transaction's offsets for their group.
#[derive(Clone, Default)]
pub(crate) struct GroupClients {
    /// The context of the clients.
    tokens: TokenContext,
    clients: Arc<Mutex<HashMap<String, Arc<KafkaConsumer>>>>,
    /// Per group, the member that joined it here.
    members: Arc<Mutex<HashMap<String, MemberMetadata>>>,
}

impl GroupClients {
    /// No clients yet; those made will have `tokens` as their context.
    pub(crate) fn new(tokens: TokenContext) -> GroupClients {
        GroupClients {
            tokens,
            ..GroupClients::default()
        }
    }

    /// `group`'s client.
    pub(crate) fn get(
        &self,
        config: &KafkaLogConfig,
        group: &str,
    ) -> Result<Arc<KafkaConsumer>, LogError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(group) {
            return Ok(Arc::clone(client));
        }
        let client: KafkaConsumer = consumer_config(config, group)
            .create_with_context(self.tokens.clone())
            .map_err(kafka_error(format!("create the client of group {group}")))?;
        let client = Arc::new(client);
        clients.insert(group.to_string(), Arc::clone(&client));
        Ok(client)
    }

    /// Records the member of `group` this process runs (one per group: the latest wins).
    pub(crate) fn register_member(&self, group: &str, metadata: MemberMetadata) {
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group.to_string(), metadata);
    }

    /// Forgets `metadata` as `group`'s member, unless another has replaced it.
    pub(crate) fn unregister_member(&self, group: &str, metadata: &MemberMetadata) {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        if members
            .get(group)
            .is_some_and(|current| Arc::ptr_eq(current, metadata))
        {
            members.remove(group);
        }
    }

    /// The metadata that goes with offsets of `group` in a transaction. For a group this
    /// process is a member of, the member's: its id and generation, so that the group
    /// coordinator refuses the offsets, and with them the transaction, once the member has
    /// been replaced (KIP-447); `Ok(Err(why))` when the member knows it is no longer one.
    /// For any other group, the plain client's (no generation).
    pub(crate) fn transaction_metadata(
        &self,
        config: &KafkaLogConfig,
        group: &str,
    ) -> Result<Result<ConsumerGroupMetadata, String>, LogError> {
        let member = self
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(group)
            .map(Arc::clone);
        match member {
            Some(metadata) => Ok(metadata()),
            None => self
                .get(config, group)?
                .group_metadata()
                .map(Ok)
                .ok_or_else(|| {
                    LogError::KafkaProtocol(format!("no group metadata for group {group}"))
                }),
        }
    }
}

/// Whether `error` says that a partition's leader is not (yet, or no longer) serving it.
fn is_leader_moving(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::UnknownTopicOrPartition
        )
    )
}

/// Runs a blocking call of the metadata client or a group client on the blocking pool, first
/// serving the client's token requests (see [`serve_token_requests`]).
pub(crate) async fn run_blocking<T: Send + 'static>(
    client: Arc<KafkaConsumer>,
    call: impl FnOnce(&KafkaConsumer) -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(move || {
        serve_token_requests(&client);
        call(&client)
    })
    .await
    .map_err(|join_error| LogError::KafkaProtocol(format!("client call panicked: {join_error}")))?
}

/// With MSK IAM, serves `client`'s pending events, among them librdkafka's requests for an
/// OAUTHBEARER token (one as the client is made, then one before each token expires): nothing
/// else polls the metadata and group clients, which are never assigned or subscribed (so no
/// record or rebalance comes this way). Waits for the first AWS credentials if need be: call
/// it on a thread that may block. Without MSK IAM, does nothing.
fn serve_token_requests(client: &KafkaConsumer) {
    let Some(tokens) = client.context().tokens() else {
        return;
    };
    tokens.wait_for_first_credentials();
    // A token request is served ahead of other events; bounded, in case errors keep coming.
    for _ in 0..16 {
        match client.poll(Duration::ZERO) {
            None => return,
            Some(Err(error)) => debug!(%error, "served a client event"),
            Some(Ok(_)) => {}
        }
    }
}

/// How long one metadata request may wait for its broker before it is sent again (to
/// whichever broker librdkafka picks then): a request to a broker that just died must not
/// hold the caller for the whole request timeout.
const METADATA_ATTEMPT: Duration = Duration::from_secs(5);

/// Runs the metadata-client request `call` (given the time one attempt may take) until it
/// answers or `timeout` has passed. Each attempt waits at most [`METADATA_ATTEMPT`]; one
/// whose broker cannot be reached or times out ([`is_transient`]), or that finds a
/// partition's leader moving ([`is_leader_moving`]: Kafka lists a new topic's partitions a
/// moment before their leader serves them, and moves leaders), is sent again after a
/// moment, as librdkafka does not retry these lookups itself.
async fn metadata_request<T: Send + 'static>(
    client: &Arc<KafkaConsumer>,
    timeout: Duration,
    call: impl Fn(&KafkaConsumer, Duration) -> Result<T, LogError> + Clone + Send + 'static,
) -> Result<T, LogError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attempt = remaining.min(METADATA_ATTEMPT);
        let call = call.clone();
        match run_blocking(Arc::clone(client), move |client| call(client, attempt)).await {
            Err(LogError::Kafka { action, source })
                if (is_transient(&source) || is_leader_moving(&source))
                    && tokio::time::Instant::now() < deadline =>
            {
                debug!(%action, error = %source, "a metadata request failed; sending it again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => return answer,
        }
    }
}

/// The partition count of `topic`, from `client`'s metadata ([`metadata_request`]).
pub(crate) async fn partition_count_of(
    client: Arc<KafkaConsumer>,
    topic: &str,
    timeout: Duration,
) -> Result<u32, LogError> {
    check_name("topic", topic)?;
    let topic = topic.to_string();
    metadata_request(&client, timeout, move |client, timeout| {
        let metadata = client
            .fetch_metadata(Some(&topic), timeout)
            .map_err(kafka_error(format!("fetch metadata of {topic}")))?;
        let Some(topic_metadata) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(LogError::UnknownTopic(topic.clone()));
        };
        if topic_metadata.error().is_some() || topic_metadata.partitions().is_empty() {
            return Err(LogError::UnknownTopic(topic.clone()));
        }
        Ok(topic_metadata.partitions().len() as u32)
    })
    .await
}

/// Each record's partition (its own, or its key's), checked against `partitions`; records
/// over the size limit are refused.
pub(crate) fn place(
    topic: &str,
    records: &[ProduceRecord],
    partitions: u32,
    partitioner: &Partitioner,
) -> Result<Vec<u32>, LogError> {
    let mut placed = Vec::with_capacity(records.len());
    for record in records {
        let partition = match record.partition {
            Some(partition) if partition >= partitions => {
                return Err(LogError::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                    partitions,
                });
            }
            Some(partition) => partition,
            None => partitioner.partition(record.key.as_deref(), partitions),
        };
        let size = record.value.len() + record.key.as_ref().map_or(0, Bytes::len);
        if size > MAX_MESSAGE_BYTES {
            return Err(LogError::RecordTooLarge {
                size,
                limit: MAX_MESSAGE_BYTES,
            });
        }
        placed.push(partition);
    }
    Ok(placed)
}

/// The producer settings every runnel producer has: idempotent, acknowledged by all
/// in-sync replicas, records up to the size limit, `request-timeout` to deliver.
pub(crate) fn producer_config(config: &KafkaLogConfig) -> ClientConfig {
    let mut client_config = base_client_config(config);
    client_config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        .set(
            "message.timeout.ms",
            config.request_timeout.as_millis().to_string(),
        );
    client_config
}

/// The settings every runnel client has: the brokers, the client id, the socket timeout,
/// `properties` (see [`property_name`]) and, with `aws-msk-iam`, SASL/OAUTHBEARER over TLS.
fn base_client_config(config: &KafkaLogConfig) -> ClientConfig {
    let mut client_config = ClientConfig::new();
    client_config
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("client.id", &config.client_id)
        .set(
            "socket.timeout.ms",
            config.request_timeout.as_millis().to_string(),
        );
    // Keys spelt with a dash, as the environment layer spells them, go last: where a file sets
    // `security.protocol` and a `RUNNEL__` variable `security-protocol`, the variable wins, as
    // the environment wins over files everywhere else.
    let (dashed, dotted): (Vec<_>, Vec<_>) = config
        .properties
        .iter()
        .partition(|(key, _)| key.contains('-'));
    for (key, value) in dotted.into_iter().chain(dashed) {
        client_config.set(property_name(key), value);
    }
    if config.aws_msk_iam {
        // The tokens come from the clients' context (`msk_iam::TokenContext`).
        client_config
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "OAUTHBEARER");
    }
    client_config
}

/// Returns the librdkafka name of a `storage.log.kafka.properties` key: each `-` becomes `.`.
/// librdkafka's names have dots and never dashes, and a key set through the environment
/// arrives with dashes (`RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__SECURITY_PROTOCOL` is
/// `security-protocol`), which librdkafka would refuse.
fn property_name(key: &str) -> String {
    key.replace('-', ".")
}

pub(crate) fn consumer_config(config: &KafkaLogConfig, group: &str) -> ClientConfig {
    let mut client_config = base_client_config(config);
    client_config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("allow.auto.create.topics", "false")
        .set("fetch.wait.max.ms", "50")
        // librdkafka stops prefetching a partition while its local queue holds
        // `queued.min.messages` (100,000) and then waits this long before it looks again,
        // 1 s by default: a reader that drains the queue faster than that would sit idle.
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.message.max.bytes", MAX_MESSAGE_BYTES.to_string())
        // librdkafka's default too: readers never see records of open or aborted transactions.
        .set("isolation.level", "read_committed");
    client_config
}

#[async_trait]
impl Log for KafkaLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        check_new_topic(topic, partitions)?;
        // Kafka refuses batches over its default max.message.bytes (1 MiB), below what the
        // producer sends (MAX_MESSAGE_BYTES, one record plus its batch's framing).
        let max_batch_bytes = (MAX_MESSAGE_BYTES + MAX_BATCH_FRAMING_BYTES).to_string();
        let min_insync = self.config.min_insync_replicas.map(|n| n.to_string());
        let mut new_topic = NewTopic::new(
            topic,
            partitions as i32,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set("max.message.bytes", &max_batch_bytes);
        if let Some(min_insync) = &min_insync {
            new_topic = new_topic.set("min.insync.replicas", min_insync);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.config.request_timeout));
        if self.tokens.tokens().is_some() {
            let admin = Arc::clone(&self.admin);
            tokio::task::spawn_blocking(move || set_admin_token(&admin))
                .await
                .map_err(|join_error| {
                    LogError::AwsMskIam(format!("setting the admin token panicked: {join_error}"))
                })??;
        }
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(kafka_error(format!("create topic {topic}")))?;
        for result in results {
            match result {
                Ok(_) => info!(topic, partitions, "created kafka topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Kafka {
                        action: format!("create topic {name}"),
                        source: KafkaError::AdminOp(code),
                    });
                }
            }
        }
        // Metadata can lag creation; wait until every partition is visible.
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        loop {
            match self.partition_count(topic).await {
                Ok(existing) if existing == partitions => return Ok(()),
                Ok(existing) if existing > 0 && existing != partitions => {
                    return Err(LogError::PartitionMismatch {
                        topic: topic.to_string(),
                        existing,
                        requested: partitions,
                    });
                }
                Ok(_) | Err(LogError::UnknownTopic(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(existing) => {
                    return Err(LogError::KafkaProtocol(format!(
                        "topic {topic} shows {existing} partitions after creation with {partitions}"
                    )));
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        partition_count_of(
            Arc::clone(&self.metadata_client),
            topic,
            self.config.request_timeout,
        )
        .await
    }

    async fn append(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>, LogError> {
        let partitions = self.partition_count(topic).await?;
        let placed = place(topic, &records, partitions, &self.partitioner)?;
        send_batch(
            &self.producer,
            topic,
            &records,
            &placed,
            self.config.request_timeout,
        )
        .await
        .map_err(kafka_error(format!("produce to {topic}")))
    }

    async fn reader(
        &self,
        topic: &str,
        partition: u32,
        start: StartOffset,
    ) -> Result<Box<dyn PartitionReader>, LogError> {
        let (earliest, latest) = self.watermarks(topic, partition).await?;
        let offset = match start {
            StartOffset::Earliest => earliest,
            StartOffset::Latest => latest,
            StartOffset::At(offset) if offset < earliest || offset > latest => {
                return Err(LogError::OffsetOutOfRange {
                    topic: topic.to_string(),
                    partition,
                    offset,
                    earliest,
                    latest,
                });
            }
            StartOffset::At(offset) => offset,
        };
        let reader = KafkaReader::new(
            self.config.clone(),
            self.tokens.clone(),
            Arc::from(topic),
            partition,
            offset,
        )?;
        Ok(Box::new(reader))
    }

    async fn earliest_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        Ok(self.watermarks(topic, partition).await?.0)
    }

    async fn latest_offset(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        Ok(self.watermarks(topic, partition).await?.1)
    }

    async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<u64>, LogError> {
        self.check_partition(topic, partition).await?;
        let query_topic = topic.to_string();
        let timeout = self.config.request_timeout;
        let answer = self
            .blocking(move |client| {
                let topic = query_topic;
                let mut query = TopicPartitionList::new();
                query
                    .add_partition_offset(&topic, partition as i32, Offset::Offset(timestamp))
                    .map_err(kafka_error("build offsets_for_times query"))?;
                let answer = client
                    .offsets_for_times(query, timeout)
                    .map_err(kafka_error(format!(
                        "look up time {timestamp} in {topic}/{partition}"
                    )))?;
                let element = answer
                    .find_partition(&topic, partition as i32)
                    .ok_or_else(|| {
                        LogError::KafkaProtocol(format!("no answer for {topic}/{partition}"))
                    })?;
                element.error().map_err(kafka_error(format!(
                    "look up time {timestamp} in {topic}/{partition}"
                )))?;
                match element.offset() {
                    Offset::Offset(offset) if offset >= 0 => Ok(Some(offset as u64)),
                    Offset::End | Offset::Invalid | Offset::Offset(_) => Ok(None),
                    other => Err(LogError::KafkaProtocol(format!(
                        "unexpected offsets_for_times answer {other:?}"
                    ))),
                }
            })
            .await?;
        let Some(offset) = answer else {
            return Ok(None);
        };
        // Check the broker's answer against the record itself: some Kafka-protocol brokers
        // (tansu 0.6) answer offset 0 instead of "none" when no record is that recent.
        let mut reader = KafkaReader::new(
            self.config.clone(),
            self.tokens.clone(),
            Arc::from(topic),
            partition,
            offset,
        )?;
        let records = reader.next_batch(1, self.config.request_timeout).await?;
        match records.first() {
            Some(record) if record.offset == offset && record.timestamp >= timestamp => {
                Ok(Some(offset))
            }
            Some(record) if record.timestamp < timestamp => {
                tracing::debug!(
                    topic,
                    partition,
                    offset,
                    timestamp,
                    "broker answered a record older than the time asked for; no record is that recent"
                );
                Ok(None)
            }
            _ => Err(LogError::KafkaProtocol(format!(
                "offsets_for_times answered offset {offset} for time {timestamp} in {topic}/{partition}, but that record could not be read"
            ))),
        }
    }

    async fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), LogError> {
        check_name("consumer group", group)?;
        for (partition, _) in offsets {
            self.check_partition(topic, *partition).await?;
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            list.add_partition_offset(topic, *partition as i32, Offset::Offset(*offset as i64))
                .map_err(kafka_error("build commit request"))?;
        }
        let client = self.group_client(group)?;
        let action = format!("commit offsets of group {group} on {topic}");
        run_blocking(client, move |client| {
            client
                .commit(&list, CommitMode::Sync)
                .map_err(kafka_error(action))
        })
        .await
    }

    async fn committed_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        Ok(self
            .committed_offset_and_metadata(group, topic, partition)
            .await?
            .map(|(offset, _)| offset))
    }

    async fn committed_offset_and_metadata(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<(u64, String)>, LogError> {
        check_name("consumer group", group)?;
        self.check_partition(topic, partition).await?;
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition as i32);
        let client = self.group_client(group)?;
        let timeout = self.config.request_timeout;
        let topic = topic.to_string();
        let action = format!("fetch committed offset of group {group} on {topic}/{partition}");
        run_blocking(client, move |client| {
            let answer = client
                .committed_offsets(list, timeout)
                .map_err(kafka_error(action.clone()))?;
            let element = answer
                .find_partition(&topic, partition as i32)
                .ok_or_else(|| {
                    LogError::KafkaProtocol(format!("no answer for {topic}/{partition}"))
                })?;
            element.error().map_err(kafka_error(action))?;
            match element.offset() {
                Offset::Offset(offset) if offset >= 0 => {
                    Ok(Some((offset as u64, element.metadata().to_string())))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    async fn transactional_writer(
        &self,
        transactional_id: &str,
    ) -> Result<Box<dyn crate::TransactionalWriter>, LogError> {
        Ok(Box::new(
            crate::KafkaTransactionalWriter::open(
                &self.config,
                transactional_id,
                Arc::clone(&self.metadata_client),
                self.group_clients.clone(),
                self.tokens.clone(),
            )
            .await?,
        ))
    }

    async fn join_group(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Box<dyn GroupMembership>, LogError> {
        check_name("consumer group", group)?;
        self.partition_count(topic).await?;
        Ok(Box::new(KafkaMembership::join(
            &self.config,
            group,
            topic,
            self.group_clients.clone(),
            self.tokens.clone(),
        )?))
    }
}

/// Reads one partition through an assign-mode consumer.
struct KafkaReader {
    config: KafkaLogConfig,
    tokens: TokenContext,
    consumer: StreamConsumer<TokenContext>,
    topic: Arc<str>,
    partition: u32,
    next_offset: u64,
}

impl KafkaReader {
    fn new(
        config: KafkaLogConfig,
        tokens: TokenContext,
        topic: Arc<str>,
        partition: u32,
        offset: u64,
    ) -> Result<KafkaReader, LogError> {
        let consumer = assigned_consumer(&config, &tokens, &topic, partition, offset)?;
        Ok(KafkaReader {
            config,
            tokens,
            consumer,
            topic,
            partition,
            next_offset: offset,
        })
    }

    fn to_record(&self, message: &BorrowedMessage<'_>) -> Record {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| Header {
                        key: header.key.to_string(),
                        value: Bytes::copy_from_slice(header.value.unwrap_or_default()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: Arc::clone(&self.topic),
            partition: self.partition,
            offset: message.offset() as u64,
            timestamp: message.timestamp().to_millis().unwrap_or(0),
            key: message.key().map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            headers,
        }
    }

    /// Moves the position past what the consumer skipped after the last record it returned:
    /// transaction markers, and records of aborted transactions. Each takes an offset, so
    /// without this a reader would never reach a transactional partition's end.
    fn skip_control_records(&mut self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        if let Some(element) = positions.find_partition(&self.topic, self.partition as i32)
            && let Offset::Offset(offset) = element.offset()
            && let Ok(offset) = u64::try_from(offset)
            && offset > self.next_offset
        {
            self.next_offset = offset;
        }
    }

    fn consume_error(&self, error: KafkaError) -> LogError {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange) {
            return LogError::OffsetOutOfRange {
                topic: self.topic.to_string(),
                partition: self.partition,
                offset: self.next_offset,
                earliest: 0,
                latest: 0,
            };
        }
        LogError::Kafka {
            action: format!("consume {}/{}", self.topic, self.partition),
            source: error,
        }
    }
}

/// Whether `code` says that someone else took over: a newer producer with the same
/// transactional id, or, for a transaction's offsets, a newer generation of the group than
/// the member's that sent them (KIP-447; the member was replaced).
pub(crate) fn is_fenced_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::FencedInstanceId
    )
}

/// Whether a consumer error is one librdkafka recovers from by itself (a broker down, a
/// partition's leader moving), which a reader waits out rather than fails on.
pub(crate) fn is_transient(error: &KafkaError) -> bool {
    error.rdkafka_error_code().is_some_and(is_transient_code)
}

/// Whether `code` says a broker could not be reached or a leader is moving (see
/// [`is_transient`]).
pub(crate) fn is_transient_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::NotLeaderForPartition
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::NetworkException
    )
}

fn assigned_consumer(
    config: &KafkaLogConfig,
    tokens: &TokenContext,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<StreamConsumer<TokenContext>, LogError> {
    let consumer: StreamConsumer<TokenContext> = consumer_config(config, "runnel-reader")
        .create_with_context(tokens.clone())
        .map_err(kafka_error("create consumer"))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition as i32, Offset::Offset(offset as i64))
        .map_err(kafka_error("build assignment"))?;
    consumer
        .assign(&assignment)
        .map_err(kafka_error(format!("assign {topic}/{partition}")))?;
    Ok(consumer)
}

#[async_trait]
impl PartitionReader for KafkaReader {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<Vec<Record>, LogError> {
        let mut records = Vec::new();
        if max_records == 0 {
            return Ok(records);
        }
        let deadline = tokio::time::Instant::now() + max_wait;
        // One message stream for the whole batch: each `recv` would register and drop one.
        let mut stream = self.consumer.stream();
        let first = loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                // (rdkafka's message streams never end.)
                Err(_) | Ok(None) => {
                    drop(stream);
                    self.skip_control_records();
                    return Ok(records);
                }
                Ok(Some(Err(error))) if is_transient(&error) => {
                    // librdkafka goes on by itself (another broker, the new leader).
                    warn!(topic = %self.topic, partition = self.partition, %error,
                        "a broker could not be reached; the consumer retries");
                }
                Ok(Some(Err(error))) => return Err(self.consume_error(error)),
                Ok(Some(Ok(message))) => break self.to_record(&message),
            }
        };
        self.next_offset = first.offset + 1;
        records.push(first);
        while records.len() < max_records {
            match stream.next().now_or_never() {
                Some(Some(Ok(message))) => {
                    let record = self.to_record(&message);
                    self.next_offset = record.offset + 1;
                    records.push(record);
                }
                Some(Some(Err(error))) if is_transient(&error) => break,
                Some(Some(Err(error))) => return Err(self.consume_error(error)),
                Some(None) | None => break,
            }
        }
        Ok(records)
    }

    fn position(&self) -> u64 {
        self.next_offset
    }

    async fn seek(&mut self, offset: u64) -> Result<(), LogError> {
        // A fresh consumer guarantees nothing prefetched from the old position is served.
        self.consumer = assigned_consumer(
            &self.config,
            &self.tokens,
            &self.topic,
            self.partition,
            offset,
        )?;
        self.next_offset = offset;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config_with(properties: &[(&str, &str)]) -> KafkaLogConfig {
        KafkaLogConfig {
            bootstrap_servers: "127.0.0.1:9092".to_string(),
            client_id: "runnel-test".to_string(),
            replication_factor: 1,
            min_insync_replicas: None,
            request_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(6),
            rebalance_timeout: Duration::from_secs(20),
            group_instance_id: None,
            properties: properties
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect::<BTreeMap<_, _>>(),
            aws_msk_iam: false,
        }
    }

    #[test]
    fn dashes_in_property_keys_become_dots() {
        let client_config = base_client_config(&config_with(&[
            ("security-protocol", "SSL"),
            ("ssl.ca.location", "/etc/ssl/ca.pem"),
            ("ssl-endpoint-identification-algorithm", "https"),
        ]));
        assert_eq!(client_config.get("security.protocol"), Some("SSL"));
        assert_eq!(
            client_config.get("ssl.ca.location"),
            Some("/etc/ssl/ca.pem")
        );
        assert_eq!(
            client_config.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert_eq!(client_config.get("security-protocol"), None);
        assert_eq!(
            client_config.get("ssl-endpoint-identification-algorithm"),
            None
        );
    }

    /// The environment can only spell a key with dashes, so the dashed spelling of a property
    /// overrides the dotted one a file gives.
    #[test]
    fn the_dashed_spelling_of_a_property_wins_over_the_dotted_one() {
        let client_config = base_client_config(&config_with(&[
            ("security.protocol", "PLAINTEXT"),
            ("security-protocol", "SSL"),
        ]));
        assert_eq!(client_config.get("security.protocol"), Some("SSL"));
    }

    /// runnel's own producer settings are set after the properties.
    #[test]
    fn properties_reach_producers_and_consumers() {
        let config = config_with(&[("security-protocol", "SSL"), ("acks", "1")]);
        let producer = producer_config(&config);
        assert_eq!(producer.get("security.protocol"), Some("SSL"));
        assert_eq!(producer.get("acks"), Some("all"));
        let consumer = consumer_config(&config, "a-group");
        assert_eq!(consumer.get("security.protocol"), Some("SSL"));
    }

    /// `aws-msk-iam` sets SASL/OAUTHBEARER over TLS after the properties; off, it sets nothing.
    #[test]
    fn aws_msk_iam_sets_sasl_oauthbearer_after_the_properties() {
        let mut config = config_with(&[("security-protocol", "SSL"), ("sasl.mechanism", "PLAIN")]);
        let client_config = base_client_config(&config);
        assert_eq!(client_config.get("security.protocol"), Some("SSL"));
        assert_eq!(client_config.get("sasl.mechanism"), Some("PLAIN"));
        config.aws_msk_iam = true;
        for client_config in [
            base_client_config(&config),
            producer_config(&config),
            consumer_config(&config, "a-group"),
        ] {
            assert_eq!(client_config.get("security.protocol"), Some("SASL_SSL"));
            assert_eq!(client_config.get("sasl.mechanism"), Some("OAUTHBEARER"));
        }
    }

    /// A configuration for MSK IAM over a port nothing listens on, and a token source over
    /// fixed credentials: no AWS, no network beyond 127.0.0.1 (and no broker: a token is
    /// asked for before any connection).
    fn msk_iam_config() -> (KafkaLogConfig, Arc<crate::msk_iam::MskIamTokens>) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut config = config_with(&[]);
        config.bootstrap_servers = format!("127.0.0.1:{port}");
        config.request_timeout = Duration::from_secs(2);
        config.aws_msk_iam = true;
        let tokens = crate::msk_iam::static_tokens();
        tokens.wait_for_first_credentials();
        (config, tokens)
    }

    /// Waits up to 10 s for `tokens` to have signed more than `before` tokens.
    fn wait_for_a_token(tokens: &crate::msk_iam::MskIamTokens, before: u64, client: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokens.issued() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the {client} never asked for a token"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Producers (plain and transactional: the same context) ask their context for a token
    /// as soon as they are made (on their polling thread).
    #[test]
    fn a_producer_with_aws_msk_iam_asks_its_context_for_a_token() {
        let (config, tokens) = msk_iam_config();
        let producer: KafkaProducer = producer_config(&config)
            .create_with_context(BatchContext::new(TokenContext::msk_iam(Arc::clone(
                &tokens,
            ))))
            .expect("a producer");
        wait_for_a_token(&tokens, 0, "producer");
        drop(producer);
    }

    /// Nothing polls the metadata and group clients but `run_blocking`, which serves their
    /// token request before the call; readers ask when their stream is polled; the admin
    /// client gets its token set before each request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_other_client_with_aws_msk_iam_gets_a_token() {
        let (config, tokens) = msk_iam_config();
        let context = TokenContext::msk_iam(Arc::clone(&tokens));

        let group_clients = GroupClients::new(context.clone());
        let client = group_clients
            .get(&config, "a-group")
            .expect("a group client");
        run_blocking(client, |_| Ok(())).await.expect("a call");
        assert_eq!(tokens.issued(), 1, "the group client's token");

        let mut reader =
            KafkaReader::new(config.clone(), context.clone(), Arc::from("a-topic"), 0, 0)
                .expect("a reader");
        let records = reader
            .next_batch(1, Duration::from_millis(200))
            .await
            .expect("nothing to read yet");
        assert!(records.is_empty());
        assert_eq!(tokens.issued(), 2, "the reader's token");

        let admin: AdminClient<TokenContext> = base_client_config(&config)
            .create_with_context(context.clone())
            .expect("an admin client");
        set_admin_token(&admin).expect("the admin client's token");
        assert_eq!(tokens.issued(), 3, "the admin client's token");

        // The log's own clients: its producer (on its thread) and its metadata client (here).
        let log = KafkaLog::with_tokens(&config, context).expect("the log's clients");
        let answer = log.partition_count("a-topic").await;
        assert!(answer.is_err(), "no broker listens: {answer:?}");
        wait_for_a_token(&tokens, 4, "log's producer or metadata client");
    }
}
