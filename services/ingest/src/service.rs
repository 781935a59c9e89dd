//! The ingest core shared by the gRPC and HTTP front ends: backpressure, validation,
//! appends to the stream and to its dead-letter topic, and the outcome of a batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use runnel_config::{Config, IngestConfig};
use runnel_events::reject::RejectReason;
use runnel_events::validate::{TypedValue, ValidateBuffer, ValidationLimits, Validator};
use runnel_events::{UNKNOWN_STREAM_DEAD_LETTER_TOPIC, dead_letter_topic};
use runnel_log::{Header, Log, LogError, ProduceRecord, RecordPosition};
use runnel_time::now_millis;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tracing::{debug, trace};

use crate::metrics::{ALL_OR_NOTHING_REASON, IngestMetrics};
use crate::proto;

/// Headers of a dead-letter record: why the event was rejected and where it came from.
pub mod headers {
    /// The reason's stable name, e.g. `wrong_type` or `unknown_stream`.
    pub const REJECT_CODE: &str = "runnel-reject-code";
    /// The reason in words, naming the field.
    pub const REJECT_REASON: &str = "runnel-reject-reason";
    /// The stream the event was sent to.
    pub const STREAM: &str = "runnel-stream";
    /// The event's position in its request (from 0), in decimal.
    pub const REQUEST_INDEX: &str = "runnel-request-index";
    /// How the value is encoded: `json` (the bytes as received) or `protobuf-row` (a
    /// `runnel.ingest.v1.Row`).
    pub const RAW_FORMAT: &str = "runnel-raw-format";
    /// Present when the value was cut to `ingest.max-event-bytes`: the original size in
    /// bytes, in decimal.
    pub const TRUNCATED_FROM: &str = "runnel-truncated-from";
    /// The API the event came in through: `grpc` or `http`.
    pub const API: &str = "runnel-ingest-api";
}

/// Reject code of events sent to a stream that is not declared.
pub const UNKNOWN_STREAM_CODE: &str = "unknown_stream";

/// Batches above this many bytes are validated on the blocking pool, so that a large
/// request does not hold a runtime thread for long.
const INLINE_VALIDATION_BYTES: usize = 256 * 1024;

/// The API a batch came in through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Api {
    Grpc,
    Http,
}

impl Api {
    /// The API's name in headers and metric labels: `grpc` or `http`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Api::Grpc => "grpc",
            Api::Http => "http",
        }
    }
}

/// The events of one batch, as received.
#[derive(Debug)]
pub(crate) enum Batch {
    /// JSON documents, one per event.
    Json(Vec<Bytes>),
    /// Typed rows.
    Rows(Vec<proto::Row>),
}

impl Batch {
    pub(crate) fn len(&self) -> usize {
        match self {
            Batch::Json(events) => events.len(),
            Batch::Rows(rows) => rows.len(),
        }
    }

    fn byte_size(&self) -> usize {
        match self {
            Batch::Json(events) => events.iter().map(Bytes::len).sum(),
            Batch::Rows(rows) => rows.iter().map(Message::encoded_len).sum(),
        }
    }
}

/// Offsets `first_offset..=last_offset` of one partition, holding `count` accepted events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionRange {
    /// The partition.
    pub partition: u32,
    /// First offset of the range.
    pub first_offset: u64,
    /// Last offset of the range (inclusive).
    pub last_offset: u64,
    /// Events in the range.
    pub count: u64,
}

/// One rejected event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rejection {
    pub(crate) index: u32,
    pub(crate) reason: RejectReason,
}

/// What happened to a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct BatchOutcome {
    pub(crate) accepted: u64,
    pub(crate) aborted: bool,
    pub(crate) ranges: Vec<PartitionRange>,
    pub(crate) rejections: Vec<Rejection>,
}

impl BatchOutcome {
    pub(crate) fn to_proto(&self) -> proto::IngestResponse {
        proto::IngestResponse {
            accepted: self.accepted,
            rejected: self.rejections.len() as u64,
            aborted: self.aborted,
            ranges: self
                .ranges
                .iter()
                .map(|range| proto::PartitionRange {
                    partition: range.partition,
                    first_offset: range.first_offset,
                    last_offset: range.last_offset,
                    count: range.count,
                })
                .collect(),
            rejections: self
                .rejections
                .iter()
                .map(|rejection| proto::RejectedEvent {
                    index: rejection.index,
                    code: rejection.reason.code().to_string(),
                    reason: rejection.reason.to_string(),
                    field: rejection.reason.field().unwrap_or_default().to_string(),
                })
                .collect(),
        }
    }
}

/// Why a request was refused or failed as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IngestFailure {
    /// The stream is not declared; the events went to the unknown-stream dead-letter topic.
    #[error(
        "stream `{stream}` is not declared; its {n_events} events were written to `{UNKNOWN_STREAM_DEAD_LETTER_TOPIC}`"
    )]
    UnknownStream { stream: String, n_events: usize },
    /// Too many request bytes are in flight.
    #[error(
        "the service has too many request bytes in flight (limit {max_in_flight_bytes}); retry after {} ms",
        retry_after.as_millis()
    )]
    Busy {
        max_in_flight_bytes: usize,
        retry_after: Duration,
    },
    /// The request is over `ingest.max-request-bytes`.
    #[error(
        "the request is {size} bytes, over the limit of {limit} bytes (ingest.max-request-bytes)"
    )]
    TooLarge { size: usize, limit: usize },
    /// The request holds no event.
    #[error("the request holds no events")]
    NoEvents,
    /// The HTTP body is neither NDJSON nor a JSON array.
    #[error("the body is not a JSON array: {0}")]
    BadBody(String),
    /// The HTTP body could not be read.
    #[error("read the request body: {0}")]
    ReadBody(String),
    /// No piece of the HTTP body arrived within `ingest.body-read-timeout`.
    #[error(
        "the request body stalled: nothing arrived for {} ms after {received} bytes (ingest.body-read-timeout)",
        timeout.as_millis()
    )]
    BodyStalled { received: usize, timeout: Duration },
    /// The HTTP body arrived more slowly than `ingest.min-body-bytes-per-second`.
    #[error(
        "the request body is too slow: {received} bytes in {} ms, under {min_rate} bytes per second (ingest.min-body-bytes-per-second)",
        elapsed.as_millis()
    )]
    BodyTooSlow {
        received: usize,
        elapsed: Duration,
        min_rate: u64,
    },
    /// Appending to the log failed: nothing of the batch is acknowledged.
    #[error("append to `{topic}`: {source}")]
    Append {
        topic: String,
        #[source]
        source: Box<LogError>,
    },
    /// The validation task died.
    #[error("validation task failed: {0}")]
    Validation(String),
}

/// A declared stream, ready to take events.
#[derive(Debug)]
struct StreamEntry {
    name: String,
    dead_letter_topic: String,
    validator: Validator,
}

/// The state both front ends share.
pub(crate) struct Ingestor {
    log: Arc<dyn Log>,
    streams: HashMap<String, Arc<StreamEntry>>,
    in_flight: Arc<Semaphore>,
    /// The in-flight budget's permits (`ingest.max-in-flight-bytes`, as far as the
    /// semaphore can hold).
    in_flight_permits: usize,
    config: IngestConfig,
    metrics: IngestMetrics,
}

/// The validated batch: what to append where.
#[derive(Debug, Default)]
struct Validated {
    records: Vec<ProduceRecord>,
    rejections: Vec<Rejection>,
    dead_letters: Vec<ProduceRecord>,
}

impl Ingestor {
    /// Builds the ingestor and ensures every dead-letter topic (one partition each).
    pub(crate) async fn new(config: &Config, log: Arc<dyn Log>) -> Result<Self, LogError> {
        let ingest = &config.ingest;
        // The event-time bounds are the stream's (`StreamConfig::max_event_time_*`).
        let limits = ValidationLimits {
            max_event_bytes: ingest.max_event_bytes,
        };
        let mut streams = HashMap::new();
        for stream in &config.streams {
            let entry = StreamEntry {
                name: stream.name.clone(),
                dead_letter_topic: dead_letter_topic(&stream.name),
                validator: Validator::new(stream, limits),
            };
            ensure_dead_letter_topic(log.as_ref(), &entry.dead_letter_topic).await?;
            streams.insert(stream.name.clone(), Arc::new(entry));
        }
        ensure_dead_letter_topic(log.as_ref(), UNKNOWN_STREAM_DEAD_LETTER_TOPIC).await?;
        // The semaphore cannot hold more than `Semaphore::MAX_PERMITS`.
        let permits = ingest.max_in_flight_bytes.min(Semaphore::MAX_PERMITS);
        Ok(Self {
            log,
            streams,
            in_flight: Arc::new(Semaphore::new(permits)),
            in_flight_permits: permits,
            config: ingest.clone(),
            metrics: IngestMetrics::new(config),
        })
    }

    pub(crate) fn config(&self) -> &IngestConfig {
        &self.config
    }

    pub(crate) fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// Request bytes held in the in-flight budget now.
    pub(crate) fn in_flight_bytes(&self) -> usize {
        self.in_flight_permits
            .saturating_sub(self.in_flight.available_permits())
    }

    /// The in-flight budget.
    pub(crate) fn max_in_flight_bytes(&self) -> usize {
        self.in_flight_permits
    }

    /// Checks a request's size against `ingest.max-request-bytes`.
    pub(crate) fn check_request_size(&self, size: usize) -> Result<(), IngestFailure> {
        if size > self.config.max_request_bytes {
            return Err(IngestFailure::TooLarge {
                size,
                limit: self.config.max_request_bytes,
            });
        }
        Ok(())
    }

    /// Takes `bytes` of the in-flight budget, now or never: over the budget the request is
    /// answered busy with the retry hint.
    ///
    /// The front ends take the bytes that have arrived: HTTP each piece of the body as it
    /// is read, gRPC each message once tonic has decoded it.
    pub(crate) fn try_reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, IngestFailure> {
        self.check_request_size(bytes)?;
        // At least one permit, so that empty requests are counted too; at most u32::MAX,
        // which the semaphore takes at once (requests are far smaller).
        let permits = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        match Arc::clone(&self.in_flight).try_acquire_many_owned(permits) {
            Ok(permit) => Ok(permit),
            Err(TryAcquireError::NoPermits | TryAcquireError::Closed) => {
                debug!(bytes, "in-flight bytes exhausted, refusing request");
                Err(IngestFailure::Busy {
                    max_in_flight_bytes: self.config.max_in_flight_bytes,
                    retry_after: self.config.retry_after,
                })
            }
        }
    }

    /// Validates and appends one batch; returns once every accepted event is durable in the
    /// stream and every rejected one in the dead-letter topic.
    pub(crate) async fn ingest(
        &self,
        stream: &str,
        batch: Batch,
        all_or_nothing: bool,
        api: Api,
    ) -> Result<BatchOutcome, IngestFailure> {
        let now = now_millis();
        let n_events = batch.len();
        if n_events == 0 {
            return Err(IngestFailure::NoEvents);
        }
        let Some(entry) = self.streams.get(stream) else {
            self.write_unknown_stream(stream, batch, now, api).await?;
            self.metrics
                .rejected(stream, UNKNOWN_STREAM_CODE, n_events as u64);
            return Err(IngestFailure::UnknownStream {
                stream: stream.to_string(),
                n_events,
            });
        };
        let max_event_bytes = self.config.max_event_bytes;
        let validated = if batch.byte_size() <= INLINE_VALIDATION_BYTES {
            validate_batch(entry, batch, now, api, max_event_bytes)
        } else {
            let entry = Arc::clone(entry);
            tokio::task::spawn_blocking(move || {
                validate_batch(&entry, batch, now, api, max_event_bytes)
            })
            .await
            .map_err(|error| IngestFailure::Validation(error.to_string()))?
        };
        let Validated {
            records,
            rejections,
            dead_letters,
        } = validated;
        let aborted = all_or_nothing && !rejections.is_empty();
        let n_valid = records.len();
        let n_accepted = if aborted { 0 } else { n_valid };
        let append_stream = async {
            if n_accepted == 0 {
                return Ok(Vec::new());
            }
            self.log
                .append(&entry.name, records)
                .await
                .map_err(|source| IngestFailure::Append {
                    topic: entry.name.clone(),
                    source: Box::new(source),
                })
        };
        let append_dead_letters = async {
            if dead_letters.is_empty() {
                return Ok(Vec::new());
            }
            self.log
                .append(&entry.dead_letter_topic, dead_letters)
                .await
                .map_err(|source| IngestFailure::Append {
                    topic: entry.dead_letter_topic.clone(),
                    source: Box::new(source),
                })
        };
        let (positions, _) = tokio::try_join!(append_stream, append_dead_letters)?;
        self.metrics.accepted(stream, n_accepted as u64);
        let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
        for rejection in &rejections {
            *reasons.entry(rejection.reason.code()).or_default() += 1;
        }
        if aborted && n_valid > 0 {
            reasons.insert(ALL_OR_NOTHING_REASON, n_valid as u64);
        }
        for (reason, n) in reasons {
            self.metrics.rejected(stream, reason, n);
        }
        debug!(
            stream,
            n_events,
            n_accepted,
            n_rejected = rejections.len(),
            aborted,
            "batch ingested"
        );
        Ok(BatchOutcome {
            accepted: n_accepted as u64,
            aborted,
            ranges: ranges(&positions),
            rejections,
        })
    }

    /// Writes the raw events of a batch sent to an undeclared stream to the unknown-stream
    /// dead-letter topic.
    async fn write_unknown_stream(
        &self,
        stream: &str,
        batch: Batch,
        now: i64,
        api: Api,
    ) -> Result<(), IngestFailure> {
        let reason = format!("stream `{stream}` is not declared");
        let records: Vec<ProduceRecord> = raw_events(batch)
            .enumerate()
            .map(|(index, (raw, format))| {
                dead_letter(
                    raw,
                    format,
                    self.config.max_event_bytes,
                    UNKNOWN_STREAM_CODE,
                    &reason,
                    stream,
                    index,
                    api,
                    now,
                )
            })
            .collect();
        debug!(
            stream,
            n_events = records.len(),
            "events for an undeclared stream"
        );
        self.log
            .append(UNKNOWN_STREAM_DEAD_LETTER_TOPIC, records)
            .await
            .map_err(|source| IngestFailure::Append {
                topic: UNKNOWN_STREAM_DEAD_LETTER_TOPIC.to_string(),
                source: Box::new(source),
            })?;
        Ok(())
    }
}

/// Creates a dead-letter topic with one partition; one that exists already is used with
/// whatever partition count it has (records are spread round robin).
async fn ensure_dead_letter_topic(log: &dyn Log, topic: &str) -> Result<(), LogError> {
    match log.ensure_topic(topic, 1).await {
        Ok(()) => Ok(()),
        Err(LogError::PartitionMismatch { existing, .. }) => {
            debug!(topic, partitions = existing, "dead-letter topic exists");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// The raw bytes of each event and their format name.
fn raw_events(batch: Batch) -> Box<dyn Iterator<Item = (Bytes, &'static str)>> {
    match batch {
        Batch::Json(events) => Box::new(events.into_iter().map(|raw| (raw, "json"))),
        Batch::Rows(rows) => Box::new(
            rows.into_iter()
                .map(|row| (Bytes::from(row.encode_to_vec()), "protobuf-row")),
        ),
    }
}

/// Validates every event of `batch`: records for the stream, rejections and their
/// dead-letter records.
fn validate_batch(
    entry: &StreamEntry,
    batch: Batch,
    now: i64,
    api: Api,
    max_event_bytes: usize,
) -> Validated {
    let mut buffer = ValidateBuffer::new();
    let mut validated = Validated {
        records: Vec::with_capacity(batch.len()),
        ..Validated::default()
    };
    let reject = |validated: &mut Validated, index: usize, raw: Bytes, format, reason| {
        trace!(stream = entry.name, index, %reason, "event rejected");
        validated.dead_letters.push(dead_letter(
            raw,
            format,
            max_event_bytes,
            RejectReason::code(&reason),
            &reason.to_string(),
            &entry.name,
            index,
            api,
            now,
        ));
        validated.rejections.push(Rejection {
            index: index as u32,
            reason,
        });
    };
    let accept = |validated: &mut Validated, event: runnel_events::validate::ValidEvent| {
        validated.records.push(ProduceRecord {
            key: event.key,
            value: event.value,
            timestamp: now,
            headers: Vec::new(),
            partition: None,
        });
    };
    match batch {
        Batch::Json(events) => {
            for (index, raw) in events.into_iter().enumerate() {
                match entry.validator.validate_json(&raw, now, &mut buffer) {
                    Ok(event) => accept(&mut validated, event),
                    Err(reason) => reject(&mut validated, index, raw, "json", reason),
                }
            }
        }
        Batch::Rows(rows) => {
            let mut values = Vec::new();
            for (index, row) in rows.iter().enumerate() {
                values.clear();
                values.extend(row.values.iter().map(typed_value));
                match entry.validator.validate_row(&values, now, &mut buffer) {
                    Ok(event) => accept(&mut validated, event),
                    Err(reason) => {
                        let raw = Bytes::from(row.encode_to_vec());
                        reject(&mut validated, index, raw, "protobuf-row", reason);
                    }
                }
            }
        }
    }
    validated
}

/// Converts a protobuf value into the validator's typed value.
fn typed_value(value: &runnel_proto::common::v1::Value) -> TypedValue<'_> {
    use runnel_proto::common::v1::value::Kind;
    match &value.kind {
        None => TypedValue::Null,
        Some(Kind::StringValue(text)) => TypedValue::String(text),
        Some(Kind::Int64Value(value)) => TypedValue::Int64(*value),
        Some(Kind::Float64Value(value)) => TypedValue::Float64(*value),
        Some(Kind::BoolValue(value)) => TypedValue::Bool(*value),
        Some(Kind::TimestampMs(value)) => TypedValue::TimestampMillis(*value),
    }
}

/// Builds the dead-letter record of a rejected event: its raw bytes (cut to
/// `max_event_bytes`), with the reason and origin in headers.
#[allow(clippy::too_many_arguments)]
fn dead_letter(
    raw: Bytes,
    format: &'static str,
    max_event_bytes: usize,
    code: &'static str,
    reason: &str,
    stream: &str,
    index: usize,
    api: Api,
    now: i64,
) -> ProduceRecord {
    let header = |key: &str, value: Bytes| Header {
        key: key.to_string(),
        value,
    };
    let mut record_headers = vec![
        header(headers::REJECT_CODE, Bytes::from_static(code.as_bytes())),
        header(headers::REJECT_REASON, Bytes::from(reason.to_string())),
        header(headers::STREAM, Bytes::from(stream.to_string())),
        header(headers::REQUEST_INDEX, Bytes::from(index.to_string())),
        header(headers::RAW_FORMAT, Bytes::from_static(format.as_bytes())),
        header(headers::API, Bytes::from_static(api.name().as_bytes())),
    ];
    let value = if raw.len() > max_event_bytes {
        record_headers.push(header(
            headers::TRUNCATED_FROM,
            Bytes::from(raw.len().to_string()),
        ));
        raw.slice(..max_event_bytes)
    } else {
        raw
    };
    ProduceRecord {
        key: None,
        value,
        timestamp: now,
        headers: record_headers,
        partition: None,
    }
}

/// Merges positions into per-partition runs of consecutive offsets.
fn ranges(positions: &[RecordPosition]) -> Vec<PartitionRange> {
    let mut sorted = positions.to_vec();
    sorted.sort_unstable();
    let mut ranges: Vec<PartitionRange> = Vec::new();
    for position in sorted {
        match ranges.last_mut() {
            Some(range)
                if range.partition == position.partition
                    && range.last_offset + 1 == position.offset =>
            {
                range.last_offset = position.offset;
                range.count += 1;
            }
            _ => ranges.push(PartitionRange {
                partition: position.partition,
                first_offset: position.offset,
                last_offset: position.offset,
                count: 1,
            }),
        }
    }
    ranges
}

/// The ingest clock: now, epoch milliseconds.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_merge_into_runs_per_partition() {
        let position = |partition, offset| RecordPosition { partition, offset };
        let got = ranges(&[
            position(1, 10),
            position(0, 3),
            position(1, 11),
            position(0, 4),
            position(1, 13),
        ]);
        let range = |partition, first_offset, last_offset, count| PartitionRange {
            partition,
            first_offset,
            last_offset,
            count,
        };
        assert_eq!(
            got,
            [range(0, 3, 4, 2), range(1, 10, 11, 2), range(1, 13, 13, 1)]
        );
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn dead_letters_are_cut_to_the_event_limit_and_say_so() {
        let record = dead_letter(
            Bytes::from_static(b"0123456789"),
            "json",
            4,
            "too_large",
            "the event is 10 bytes",
            "clicks",
            7,
            Api::Http,
            42,
        );
        assert_eq!(record.value, &b"0123"[..]);
        assert_eq!(record.timestamp, 42);
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|header| header.key == name)
                .map(|header| header.value.clone())
        };
        assert_eq!(header(headers::TRUNCATED_FROM).as_deref(), Some(&b"10"[..]));
        assert_eq!(header(headers::REQUEST_INDEX).as_deref(), Some(&b"7"[..]));
        assert_eq!(
            header(headers::REJECT_CODE).as_deref(),
            Some(&b"too_large"[..])
        );
        assert_eq!(header(headers::API).as_deref(), Some(&b"http"[..]));
    }
}
