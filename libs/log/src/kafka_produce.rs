//! Sending a batch of records to Kafka and awaiting it as one: every record is handed to
//! librdkafka at once, and one shared state collects the delivery reports, completing the
//! batch when the last one arrives. rdkafka's `FutureProducer` would give each record a
//! channel and a future of its own, which cost more CPU than librdkafka's own work at a
//! few hundred thousand records a second (see `scripts/bench-log.sh`).

use std::error::Error;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;

use crate::msk_iam::TokenContext;
use crate::{ProduceRecord, RecordPosition};

/// Every runnel producer: librdkafka's polling thread serves the delivery reports.
pub(crate) type KafkaProducer = ThreadedProducer<BatchContext>;

/// What each sent record carries to its delivery report: its batch and its index in it.
type Opaque = Box<(Arc<PendingBatch>, usize)>;

/// How long a send waits between tries while librdkafka's queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// The producers' context: routes each delivery report to its batch, and supplies MSK IAM
/// tokens when the log uses them.
pub(crate) struct BatchContext {
    tokens: TokenContext,
}

impl BatchContext {
    /// A producer context whose token requests `tokens` serves.
    pub(crate) fn new(tokens: TokenContext) -> BatchContext {
        BatchContext { tokens }
    }
}

impl ClientContext for BatchContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn Error>> {
        self.tokens.oauth_token()
    }
}

impl ProducerContext for BatchContext {
    type DeliveryOpaque = Opaque;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (batch, index) = *opaque;
        batch.delivered(index, result);
    }
}

/// A batch's delivery reports so far.
pub(crate) struct PendingBatch(Mutex<BatchState>);

struct BatchState {
    positions: Vec<RecordPosition>,
    /// Records not yet reported.
    remaining: usize,
    error: Option<KafkaError>,
    done: Option<oneshot::Sender<Result<Vec<RecordPosition>, KafkaError>>>,
}

impl PendingBatch {
    fn delivered(&self, index: usize, result: &DeliveryResult<'_>) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(message) => {
                if let Some(position) = state.positions.get_mut(index) {
                    *position = RecordPosition {
                        partition: message.partition() as u32,
                        offset: message.offset() as u64,
                    };
                }
            }
            Err((error, _)) => {
                state.error.get_or_insert_with(|| error.clone());
            }
        }
        state.remaining = state.remaining.saturating_sub(1);
        if state.remaining == 0
            && let Some(done) = state.done.take()
        {
            let outcome = match state.error.take() {
                Some(error) => Err(error),
                None => Ok(std::mem::take(&mut state.positions)),
            };
            // The sender may have given up (an error sending a later record): nobody waits.
            let _ = done.send(outcome);
        }
    }
}

/// Sends `records` to `topic`, record `i` to partition `placed[i]`, and waits until all are
/// acknowledged (or one failed: the first error). Records of one partition are enqueued in
/// input order, and idempotence keeps that order across retries. While librdkafka's queue is
/// full a send waits, up to `queue_timeout` in all.
pub(crate) async fn send_batch(
    producer: &KafkaProducer,
    topic: &str,
    records: &[ProduceRecord],
    placed: &[u32],
    queue_timeout: Duration,
) -> Result<Vec<RecordPosition>, KafkaError> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let (done, outcome) = oneshot::channel();
    let batch = Arc::new(PendingBatch(Mutex::new(BatchState {
        positions: vec![
            RecordPosition {
                partition: 0,
                offset: 0
            };
            records.len()
        ],
        remaining: records.len(),
        error: None,
        done: Some(done),
    })));
    let started = Instant::now();
    for (index, (record, partition)) in records.iter().zip(placed).enumerate() {
        let mut base = base_record(
            topic,
            record,
            *partition,
            Box::new((Arc::clone(&batch), index)),
        );
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if started.elapsed() < queue_timeout =>
                {
                    base = back;
                    tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                }
                // The records sent so far still report to `batch`, which nobody awaits.
                Err((error, _)) => return Err(error),
            }
        }
    }
    outcome.await.unwrap_or_else(|_| {
        // The producer dropped a report it owed: librdkafka reports every enqueued record.
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::Fail))
    })
}

/// `record` as librdkafka's record for `partition` of `topic`.
fn base_record<'a>(
    topic: &'a str,
    record: &'a ProduceRecord,
    partition: u32,
    opaque: Opaque,
) -> BaseRecord<'a, [u8], [u8], Opaque> {
    let mut base = BaseRecord::with_opaque_to(topic, opaque)
        .partition(partition as i32)
        .payload(&record.value[..])
        .timestamp(record.timestamp);
    if let Some(key) = &record.key {
        base = base.key(&key[..]);
    }
    if !record.headers.is_empty() {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for header in &record.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: &header.key,
                value: Some(&header.value[..]),
            });
        }
        base = base.headers(headers);
    }
    base
}
