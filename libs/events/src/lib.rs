//! A stream's events, in the three shapes runnel handles them.
//!
//! - Declared: a stream's schema from config, as an Arrow schema ([`StreamSchema`]).
//! - In the log: one record per event. The value is a JSON object holding the declared
//!   fields (the *record format*, below); the record's key is the stream's key field; the
//!   record's timestamp is the ingest time.
//! - In Arrow: batches decoded from log records ([`decode`]), with the log position of each
//!   row. The Parquet history, the hybrid source and the stream processor all read these.
//!
//! # The record format
//!
//! The ingest service writes each accepted event as a JSON object with exactly the declared
//! fields, in declared order: null fields as `null`, timestamps as integer epoch
//! milliseconds, integers as JSON integers, floats as JSON numbers, booleans as `true` or
//! `false`, strings as JSON strings. Fields the stream does not declare are dropped. The
//! record key is the key field's value as text (a string's UTF-8 bytes; a number, boolean
//! or timestamp in its decimal or `true`/`false` form); no key field, or a null key, means
//! no key (round robin). The record timestamp is the ingest time, epoch milliseconds.
//!
//! Readers ([`decode`]) also accept what other producers may write to a Kafka topic: any
//! JSON object whose fields have the declared types, timestamps as RFC 3339 text or epoch
//! milliseconds; missing fields read as null.
#![warn(missing_docs)]

pub mod decode;
mod record_format;

pub use record_format::encode_records;
mod json_write;
pub mod reject;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use runnel_config::{FieldType, StreamConfig};

/// Name of the column that holds a row's log partition (Int32).
pub const PARTITION_COLUMN: &str = "_partition";
/// Name of the column that holds a row's log offset (Int64).
pub const OFFSET_COLUMN: &str = "_offset";
/// Name of the column that holds a row's ingest time, the log record's timestamp
/// (Timestamp, milliseconds).
pub const INGEST_TIME_COLUMN: &str = "_ingest_time";

/// The dead-letter topic of a stream: rejected events, with their raw bytes.
pub fn dead_letter_topic(stream: &str) -> String {
    format!("{stream}.dead-letter")
}

/// The dead-letter topic for events sent to a stream that is not declared.
pub const UNKNOWN_STREAM_DEAD_LETTER_TOPIC: &str = "_unknown-stream.dead-letter";

/// How far an event's time may be from its arrival: the stream's `max-event-time-ahead`
/// and `max-event-time-behind`. Ingest judges an event against its clock; a decoder of the
/// log against the record's timestamp, so a replay judges every record as the live run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeBounds {
    /// The furthest an event time may be ahead of its arrival.
    pub max_ahead: Duration,
    /// The furthest an event time may be behind its arrival.
    pub max_behind: Duration,
}

/// Which bound an event time broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTimeOutOfBounds {
    /// Too far ahead of its arrival.
    Ahead,
    /// Too far behind its arrival.
    Behind,
}

impl EventTimeBounds {
    /// The bounds `stream` declares.
    pub fn of(stream: &StreamConfig) -> EventTimeBounds {
        EventTimeBounds {
            max_ahead: stream.max_event_time_ahead,
            max_behind: stream.max_event_time_behind,
        }
    }

    /// Checks `event_time` against an arrival at `arrival` (both epoch milliseconds),
    /// without overflow at the ends of `i64`.
    ///
    /// # Errors
    ///
    /// The bound it breaks.
    pub fn check(&self, event_time: i64, arrival: i64) -> Result<(), EventTimeOutOfBounds> {
        let ahead = i128::from(event_time) - i128::from(arrival);
        if ahead > self.max_ahead.as_millis() as i128 {
            return Err(EventTimeOutOfBounds::Ahead);
        }
        if -ahead > self.max_behind.as_millis() as i128 {
            return Err(EventTimeOutOfBounds::Behind);
        }
        Ok(())
    }
}

/// The Arrow type of a declared field type.
pub fn arrow_type(field_type: FieldType) -> DataType {
    match field_type {
        FieldType::String => DataType::Utf8,
        FieldType::Int64 => DataType::Int64,
        FieldType::Float64 => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
    }
}

/// A declared stream with its Arrow schemas, built once.
#[derive(Debug, Clone)]
pub struct StreamSchema {
    config: StreamConfig,
    declared: SchemaRef,
    with_position: SchemaRef,
    event_time_index: usize,
    key_index: Option<usize>,
}

impl StreamSchema {
    /// Builds the schemas of `config`, a stream that passed config validation (its event
    /// time and key fields exist).
    ///
    /// # Panics
    ///
    /// If the event-time field is not in the schema, which config validation rules out.
    pub fn new(config: &StreamConfig) -> Self {
        let declared: Vec<Field> = config
            .schema
            .iter()
            .map(|field| Field::new(&field.name, arrow_type(field.field_type), true))
            .collect();
        let mut with_position = declared.clone();
        with_position.push(Field::new(PARTITION_COLUMN, DataType::Int32, false));
        with_position.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
        with_position.push(Field::new(
            INGEST_TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ));
        let position = |name: &str| config.schema.iter().position(|field| field.name == name);
        #[allow(clippy::expect_used)]
        let event_time_index = position(&config.event_time)
            .expect("config validation checks that the event-time field is declared");
        Self {
            config: config.clone(),
            declared: Arc::new(Schema::new(declared)),
            with_position: Arc::new(Schema::new(with_position)),
            event_time_index,
            key_index: config.key.as_deref().and_then(position),
        }
    }

    /// The stream's config.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// The stream's name (and topic).
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The declared fields as an Arrow schema; every column is nullable.
    pub fn declared(&self) -> &SchemaRef {
        &self.declared
    }

    /// The declared fields followed by `_partition`, `_offset` and `_ingest_time`: the
    /// schema of decoded batches and of the Parquet history.
    pub fn with_position(&self) -> &SchemaRef {
        &self.with_position
    }

    /// Index of the event-time field among the declared fields.
    pub fn event_time_index(&self) -> usize {
        self.event_time_index
    }

    /// Index of the key field among the declared fields, if the stream has a key.
    pub fn key_index(&self) -> Option<usize> {
        self.key_index
    }
}
