//! Kafka consumer-group membership for [`KafkaLog::join_group`](crate::KafkaLog).
//!
//! A `BaseConsumer` subscribed to the group's topic runs on a thread of its own, polling so
//! that librdkafka serves the rebalance callbacks; it reads nothing (the topic is meant to
//! stay empty: it only carries the partition count). The assignment is cooperative-sticky
//! (KIP-429): a rebalance moves only the partitions that must move, and the other members
//! keep running theirs through it; the callbacks hand over only what was added or taken, as
//! [`OwnershipChange`] says. A revocation blocks the callback, and so the rebalance, until
//! the member has let go.
//!
//! Not the KIP-848 consumer protocol (`group.protocol=consumer`, which Kafka 4 and the
//! bundled librdkafka speak): there the session timeout is the broker's
//! (`group.consumer.session.timeout.ms`, 45 s by default) and the client may not set it, so
//! `storage.log.kafka.session-timeout` would stop meaning anything, and failover would wait
//! on a broker setting the user may not own (MSK).

use std::collections::BTreeSet;
use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::TopicPartitionList;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use runnel_config::KafkaLogConfig;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::kafka::{GroupClients, MemberMetadata, consumer_config, kafka_error};
use crate::msk_iam::TokenContext;
use crate::{GroupMembership, LogError, OwnershipChange, Revocation};

/// How often the group thread polls (and so how soon it notices `leave`).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

type Changes = mpsc::UnboundedSender<Result<OwnershipChange, LogError>>;

struct MembershipContext {
    group: String,
    topic: String,
    changes: Changes,
    /// What the member owns, as the callbacks announce it: a revocation takes its
    /// partitions out before the member hears of it.
    owned: Arc<Mutex<BTreeSet<u32>>>,
    /// MSK IAM tokens, when the log uses them.
    tokens: TokenContext,
}

impl MembershipContext {
    fn partitions(&self, list: &TopicPartitionList) -> Vec<u32> {
        let mut partitions: Vec<u32> = list
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|element| u32::try_from(element.partition()).ok())
            .collect();
        partitions.sort_unstable();
        partitions
    }
}

impl ClientContext for MembershipContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn Error>> {
        self.tokens.oauth_token()
    }
}

impl ConsumerContext for MembershipContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = self.partitions(list);
        if partitions.is_empty() {
            return;
        }
        {
            let mut owned = self.owned.lock().unwrap_or_else(PoisonError::into_inner);
            for partition in &partitions {
                owned.remove(partition);
            }
        }
        info!(group = %self.group, ?partitions, "partitions revoked; waiting for the member to let go");
        let (done, let_go) = oneshot::channel();
        let change = OwnershipChange::Revoked(Revocation::new(partitions, done));
        if self.changes.send(Ok(change)).is_ok() {
            // Holding the callback holds the rebalance: nobody else gets the partitions
            // until the member is done (or drops the revocation, or leaves).
            let _ = let_go.blocking_recv();
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = self.partitions(list);
                if !partitions.is_empty() {
                    self.owned
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .extend(&partitions);
                    info!(group = %self.group, ?partitions, "partitions assigned");
                    let _ = self.changes.send(Ok(OwnershipChange::Assigned(partitions)));
                }
            }
            Rebalance::Error(error) => warn!(group = %self.group, %error, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// A member of a Kafka consumer group; see the module docs.
pub(crate) struct KafkaMembership {
    changes: Option<mpsc::UnboundedReceiver<Result<OwnershipChange, LogError>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    consumer: Arc<BaseConsumer<MembershipContext>>,
    owned: Arc<Mutex<BTreeSet<u32>>>,
    /// Where this member's metadata is registered for transactions, until it leaves.
    groups: GroupClients,
    group: String,
    registered: MemberMetadata,
}

impl KafkaMembership {
    /// Creates the group client, subscribes it to `topic` and starts its thread.
    /// Registers the member in `groups`: a transaction's offsets for `group` carry its
    /// metadata (see [`GroupClients::transaction_metadata`]).
    pub(crate) fn join(
        config: &KafkaLogConfig,
        group: &str,
        topic: &str,
        groups: GroupClients,
        tokens: TokenContext,
    ) -> Result<KafkaMembership, LogError> {
        let (sender, changes) = mpsc::unbounded_channel();
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let context = MembershipContext {
            group: group.to_string(),
            topic: topic.to_string(),
            changes: sender,
            owned: Arc::clone(&owned),
            tokens,
        };
        let session_ms = config.session_timeout.as_millis().max(1);
        let mut client_config = consumer_config(config, group);
        if let Some(instance) = &config.group_instance_id {
            client_config.set("group.instance.id", instance);
        }
        let consumer: BaseConsumer<MembershipContext> = client_config
            .set("auto.offset.reset", "latest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 5).max(1).to_string())
            .set(
                "max.poll.interval.ms",
                config
                    .rebalance_timeout
                    .as_millis()
                    .max(session_ms)
                    .to_string(),
            )
            .create_with_context(context)
            .map_err(kafka_error(format!("create the client of group {group}")))?;
        consumer
            .subscribe(&[topic])
            .map_err(kafka_error(format!("join group {group} on topic {topic}")))?;
        let consumer = Arc::new(consumer);
        let member = Arc::clone(&consumer);
        let registered: MemberMetadata = Arc::new(move || {
            // Once the session has expired, librdkafka forgets the member's id and
            // generation, and offsets sent without them would be taken unchecked.
            if member.assignment_lost() {
                return Err("the member lost its assignment (its session expired)".to_string());
            }
            member
                .group_metadata()
                .ok_or_else(|| "the member has no group metadata".to_string())
        });
        groups.register_member(group, Arc::clone(&registered));
        let thread_consumer = Arc::clone(&consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread_group = group.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("group {group}"))
            .spawn(move || {
                while !thread_stop.load(Ordering::Acquire) {
                    match thread_consumer.poll(POLL_INTERVAL) {
                        None => {}
                        Some(Ok(_)) => {
                            debug!(group = %thread_group, "ignored a record on the group's topic")
                        }
                        Some(Err(error)) => warn!(group = %thread_group, %error, "group client"),
                    }
                }
                // Dropping the consumer closes it (the registry's copy is gone by now): it
                // leaves the group (after a last revocation, which nobody waits for any more).
                drop(thread_consumer);
                info!(group = %thread_group, "left the group");
            })
            .map_err(|source| {
                LogError::KafkaProtocol(format!("start the thread of group {group}: {source}"))
            })?;
        Ok(KafkaMembership {
            changes: Some(changes),
            stop,
            thread: Some(thread),
            consumer,
            owned,
            groups,
            group: group.to_string(),
            registered,
        })
    }
}

#[async_trait]
impl GroupMembership for KafkaMembership {
    async fn next_change(&mut self) -> Result<OwnershipChange, LogError> {
        let changes = self.changes.as_mut().ok_or(LogError::Closed)?;
        changes.recv().await.unwrap_or(Err(LogError::Closed))
    }

    fn owns(&self, partition: u32) -> bool {
        !self.consumer.assignment_lost()
            && self
                .owned
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&partition)
    }

    async fn leave(mut self: Box<Self>) -> Result<(), LogError> {
        // Nobody waits for revocations any more: the thread's closing one must not block.
        drop(self.changes.take());
        self.groups.unregister_member(&self.group, &self.registered);
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|error| LogError::KafkaProtocol(format!("group thread: {error}")))?
                .map_err(|_| LogError::KafkaProtocol("the group thread panicked".to_string()))?;
        }
        Ok(())
    }
}

impl Drop for KafkaMembership {
    fn drop(&mut self) {
        drop(self.changes.take());
        self.groups.unregister_member(&self.group, &self.registered);
        self.stop.store(true, Ordering::Release);
    }
}
