//! Log records to Arrow: [`EventDecoder`] turns a run of one partition's records into a
//! batch of the stream's [`StreamSchema::with_position`] schema.
//!
//! Three paths, fastest first. Records in the record format (what runnel's ingest writes)
//! are parsed straight into Arrow builders (`record_format`). A run with any other record
//! goes to one `arrow_json` decoder for all of it, which takes any JSON object of the
//! declared types. A record that is not exactly one such object sends the whole run down the
//! slow path, one decoder per record, so that each bad record is named and left out while
//! every good one is kept. All three give the same batch for the same records.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch,
    TimestampMillisecondArray,
};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use arrow::error::ArrowError;
use arrow::json::reader::{Decoder, ReaderBuilder};
use runnel_log::Record;

use crate::record_format::RecordFormatDecoder;
use crate::{EventTimeBounds, EventTimeOutOfBounds, StreamSchema};
use runnel_time::format_millis;

/// A record that could not be decoded into the stream's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Why it could not be decoded.
    pub reason: String,
}

/// The result of decoding a run of records.
#[derive(Debug)]
pub struct Decoded {
    /// The good records, in log order, with `_partition`, `_offset` and `_ingest_time`.
    pub batch: RecordBatch,
    /// The records left out, in log order.
    pub undecodable: Vec<Undecodable>,
}

/// Decodes log records of one stream into Arrow batches.
#[derive(Debug)]
pub struct EventDecoder {
    schema: StreamSchema,
    record_format: RecordFormatDecoder,
}

/// Errors that are not about one record: the decoder itself failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Arrow refused to build the batch (a bug, or a schema arrow-json cannot decode).
    #[error("build the Arrow batch of stream `{stream}`: {source}")]
    Arrow {
        /// The stream.
        stream: String,
        /// Arrow's error.
        #[source]
        source: ArrowError,
    },
}

impl EventDecoder {
    /// A decoder for `schema`'s records.
    pub fn new(schema: &StreamSchema) -> Self {
        Self {
            schema: schema.clone(),
            record_format: RecordFormatDecoder::new(schema),
        }
    }

    /// The stream this decoder decodes.
    pub fn schema(&self) -> &StreamSchema {
        &self.schema
    }

    fn json_decoder(&self, batch_size: usize) -> Result<Decoder, DecodeError> {
        ReaderBuilder::new(Arc::clone(self.schema.declared()))
            .with_batch_size(batch_size.max(1))
            .build_decoder()
            .map_err(|source| self.arrow_error(source))
    }

    fn arrow_error(&self, source: ArrowError) -> DecodeError {
        DecodeError::Arrow {
            stream: self.schema.name().to_string(),
            source,
        }
    }

    /// Decodes `records` (from one partition, in offset order).
    ///
    /// # Errors
    ///
    /// Only if Arrow cannot build a batch at all; a bad record is reported in
    /// [`Decoded::undecodable`] instead.
    pub fn decode(&self, records: &[Record]) -> Result<Decoded, DecodeError> {
        let values = records.iter().map(|record| &record.value[..]);
        let decoded = match self.record_format.decode(&self.schema, values) {
            Some(declared) => Decoded {
                batch: self.with_position(declared, records.iter())?,
                undecodable: Vec::new(),
            },
            None => self.decode_general_unbounded(records)?,
        };
        self.check_event_times(decoded)
    }

    /// Leaves out (as undecodable) the rows without an event time and those whose event
    /// time is outside the stream's [`EventTimeBounds`] around the record's timestamp.
    fn check_event_times(&self, decoded: Decoded) -> Result<Decoded, DecodeError> {
        let batch = &decoded.batch;
        // A timestamp or an int64 of epoch milliseconds.
        let times = arrow::compute::cast(
            batch.column(self.schema.event_time_index()),
            &arrow::datatypes::DataType::Int64,
        )
        .map_err(|source| self.arrow_error(source))?;
        let times = times.as_primitive::<Int64Type>();
        let declared = self.schema.declared().fields().len();
        let ingest_times = batch
            .column(declared + 2)
            .as_primitive::<TimestampMillisecondType>();
        let bounds = EventTimeBounds::of(self.schema.config());
        let judge = |row: usize| -> Option<String> {
            if times.is_null(row) {
                return Some(format!(
                    "missing event time: field `{}` is null or absent",
                    self.schema.config().event_time
                ));
            }
            let (event_time, arrival) = (times.value(row), ingest_times.value(row));
            match bounds.check(event_time, arrival) {
                Ok(()) => None,
                Err(EventTimeOutOfBounds::Ahead) => Some(format!(
                    "event time {} is more than {} ahead of the record's timestamp {} (streams.max-event-time-ahead)",
                    format_millis(event_time),
                    humantime::format_duration(bounds.max_ahead),
                    format_millis(arrival)
                )),
                Err(EventTimeOutOfBounds::Behind) => Some(format!(
                    "event time {} is more than {} behind the record's timestamp {} (streams.max-event-time-behind)",
                    format_millis(event_time),
                    humantime::format_duration(bounds.max_behind),
                    format_millis(arrival)
                )),
            }
        };
        if (0..batch.num_rows()).all(|row| judge(row).is_none()) {
            return Ok(decoded);
        }
        let partitions = batch.column(declared).as_primitive::<Int32Type>();
        let offsets = batch.column(declared + 1).as_primitive::<Int64Type>();
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut undecodable = decoded.undecodable;
        for row in 0..batch.num_rows() {
            let reason = judge(row);
            keep.push(reason.is_none());
            if let Some(reason) = reason {
                undecodable.push(Undecodable {
                    partition: u32::try_from(partitions.value(row)).unwrap_or_default(),
                    offset: u64::try_from(offsets.value(row)).unwrap_or_default(),
                    reason,
                });
            }
        }
        undecodable.sort_by_key(|bad| bad.offset);
        let batch = arrow::compute::filter_record_batch(batch, &BooleanArray::from(keep))
            .map_err(|source| self.arrow_error(source))?;
        Ok(Decoded { batch, undecodable })
    }

    /// Decodes `records` as [`EventDecoder::decode`] does, but without the record format's
    /// own parser: `arrow_json` for every run. The benchmarks' yardstick.
    ///
    /// # Errors
    ///
    /// As [`EventDecoder::decode`].
    pub fn decode_general(&self, records: &[Record]) -> Result<Decoded, DecodeError> {
        let decoded = self.decode_general_unbounded(records)?;
        self.check_event_times(decoded)
    }

    fn decode_general_unbounded(&self, records: &[Record]) -> Result<Decoded, DecodeError> {
        match self.decode_fast(records)? {
            Some(declared) => Ok(Decoded {
                batch: self.with_position(declared, records.iter())?,
                undecodable: Vec::new(),
            }),
            None => self.decode_one_by_one(records),
        }
    }

    /// One decoder over every record; `None` if any record is not exactly one object of the
    /// declared types.
    fn decode_fast(&self, records: &[Record]) -> Result<Option<RecordBatch>, DecodeError> {
        let mut decoder = self.json_decoder(records.len())?;
        for (index, record) in records.iter().enumerate() {
            match decoder.decode(&record.value) {
                Ok(read) if read == record.value.len() => {}
                _ => return Ok(None),
            }
            if decoder.has_partial_record() || decoder.len() != index + 1 {
                return Ok(None);
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) => Ok(Some(batch)),
            Ok(None) => Ok(Some(RecordBatch::new_empty(Arc::clone(
                self.schema.declared(),
            )))),
            Err(_) => Ok(None),
        }
    }

    fn decode_one_by_one(&self, records: &[Record]) -> Result<Decoded, DecodeError> {
        let mut good = Vec::with_capacity(records.len());
        let mut good_records = Vec::with_capacity(records.len());
        let mut undecodable = Vec::new();
        for record in records {
            match self.decode_single(record)? {
                Ok(batch) => {
                    good.push(batch);
                    good_records.push(record);
                }
                Err(reason) => undecodable.push(Undecodable {
                    partition: record.partition,
                    offset: record.offset,
                    reason,
                }),
            }
        }
        let declared = arrow::compute::concat_batches(self.schema.declared(), &good)
            .map_err(|source| self.arrow_error(source))?;
        Ok(Decoded {
            batch: self.with_position(declared, good_records.into_iter())?,
            undecodable,
        })
    }

    fn decode_single(&self, record: &Record) -> Result<Result<RecordBatch, String>, DecodeError> {
        let mut decoder = self.json_decoder(2)?;
        let read = match decoder.decode(&record.value) {
            Ok(read) => read,
            Err(error) => return Ok(Err(error.to_string())),
        };
        if read != record.value.len() || decoder.len() > 1 {
            return Ok(Err("more than one JSON value in the record".to_string()));
        }
        if decoder.has_partial_record() {
            return Ok(Err(
                "truncated JSON: the value ends inside an object".to_string()
            ));
        }
        match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == 1 => Ok(Ok(batch)),
            Ok(_) => Ok(Err("empty record: no JSON object".to_string())),
            Err(error) => Ok(Err(error.to_string())),
        }
    }

    /// Appends `_partition`, `_offset` and `_ingest_time` from `records` (one per row).
    fn with_position<'a>(
        &self,
        declared: RecordBatch,
        records: impl ExactSizeIterator<Item = &'a Record> + Clone,
    ) -> Result<RecordBatch, DecodeError> {
        let partitions: Int32Array = records
            .clone()
            .map(|record| i32::try_from(record.partition).unwrap_or(i32::MAX))
            .collect();
        let offsets: Int64Array = records
            .clone()
            .map(|record| i64::try_from(record.offset).unwrap_or(i64::MAX))
            .collect();
        let ingest_times =
            TimestampMillisecondArray::from_iter_values(records.map(|record| record.timestamp));
        let mut columns: Vec<ArrayRef> = declared.columns().to_vec();
        columns.push(Arc::new(partitions));
        columns.push(Arc::new(offsets));
        columns.push(Arc::new(ingest_times));
        RecordBatch::try_new(Arc::clone(self.schema.with_position()), columns)
            .map_err(|source| self.arrow_error(source))
    }
}

/// The smallest and largest event time (epoch milliseconds) in a batch of `schema`'s
/// declared or positioned columns; `None` if the batch has no non-null event time.
pub fn event_time_range(schema: &StreamSchema, batch: &RecordBatch) -> Option<(i64, i64)> {
    let column = batch.column(schema.event_time_index());
    let values = arrow::compute::cast(column, &arrow::datatypes::DataType::Int64).ok()?;
    let values = values.as_any().downcast_ref::<Int64Array>()?;
    Some((arrow::compute::min(values)?, arrow::compute::max(values)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use bytes::Bytes;
    use runnel_config::{FieldConfig, FieldType, StreamConfig};

    fn stream() -> StreamSchema {
        let field = |name: &str, field_type| FieldConfig {
            name: name.to_string(),
            field_type,
            nullable: true,
        };
        let mut config = StreamConfig::new(
            "clicks",
            2,
            Some("user".to_string()),
            "ts",
            vec![
                field("ts", FieldType::Timestamp),
                field("user", FieldType::String),
                field("n", FieldType::Int64),
            ],
        );
        // The tests' records carry small timestamps and event times: no bound applies.
        config.max_event_time_ahead = std::time::Duration::from_secs(u64::MAX / 4000);
        config.max_event_time_behind = std::time::Duration::from_secs(u64::MAX / 4000);
        StreamSchema::new(&config)
    }

    fn record(offset: u64, value: &str) -> Record {
        Record {
            topic: Arc::from("clicks"),
            partition: 1,
            offset,
            timestamp: 1_000 + offset as i64,
            key: None,
            value: Bytes::copy_from_slice(value.as_bytes()),
            headers: Vec::new(),
        }
    }

    #[test]
    fn decodes_canonical_and_rfc3339_records_with_their_positions() {
        let schema = stream();
        let records = [
            record(7, r#"{"ts":1700000000000,"user":"a","n":1}"#),
            record(
                8,
                r#"{"ts":"2023-11-14T22:13:20.001Z","user":"b","n":null}"#,
            ),
        ];
        let decoded = EventDecoder::new(&schema).decode(&records).unwrap();
        assert!(decoded.undecodable.is_empty());
        let batch = decoded.batch;
        assert_eq!(batch.schema(), *schema.with_position());
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ts.values(), &[1_700_000_000_000, 1_700_000_000_001]);
        assert!(batch.column(2).is_null(1));
        let offsets = batch.column(4).as_primitive::<Int64Type>();
        assert_eq!(offsets.values(), &[7, 8]);
        assert_eq!(
            batch
                .column(3)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .value(0),
            1
        );
        let ingest = batch.column(5).as_primitive::<TimestampMillisecondType>();
        assert_eq!(ingest.values(), &[1_007, 1_008]);
        assert_eq!(
            event_time_range(&schema, &batch),
            Some((1_700_000_000_000, 1_700_000_000_001))
        );
    }

    #[test]
    fn encoded_rows_decode_to_the_same_rows_in_the_record_format() {
        let field = |name: &str, field_type| FieldConfig {
            name: name.to_string(),
            field_type,
            nullable: true,
        };
        let mut config = stream().config().clone();
        config.schema = vec![
            field("ts", FieldType::Timestamp),
            field("user", FieldType::String),
            field("n", FieldType::Int64),
            field("x", FieldType::Float64),
            field("ok", FieldType::Bool),
        ];
        let schema = StreamSchema::new(&config);
        let records = [
            record(
                3,
                r#"{"ts":1700000000000,"user":"a","n":-9223372036854775808,"x":0.1,"ok":true}"#,
            ),
            // Not in the record format: RFC 3339, another order, whitespace, escapes.
            record(
                4,
                r#"{ "user":"q\"u\u00e9\n\u0001", "ts":"2023-11-14T22:13:20.001Z", "x":1e300, "ok":false, "n":7 }"#,
            ),
            record(
                5,
                r#"{"ts":1,"user":null,"n":null,"x":-2.5e-310,"ok":null}"#,
            ),
        ];
        let decoder = EventDecoder::new(&schema);
        let decoded = decoder.decode(&records).unwrap();
        assert!(decoded.undecodable.is_empty());
        let values = crate::encode_records(&schema, &decoded.batch).unwrap();
        assert_eq!(
            values[0],
            Bytes::from_static(
                br#"{"ts":1700000000000,"user":"a","n":-9223372036854775808,"x":0.1,"ok":true}"#
            )
        );
        let again: Vec<Record> = records
            .iter()
            .zip(values)
            .map(|(record, value)| Record {
                value,
                ..record.clone()
            })
            .collect();
        // Every encoded value takes the record format's fast path and gives the same rows.
        let declared = schema.declared().fields().len();
        let fast = decoder
            .record_format
            .decode(&schema, again.iter().map(|record| &record.value[..]))
            .expect("encoded values are in the record format");
        assert_eq!(fast.columns(), &decoded.batch.columns()[..declared]);
        assert_eq!(decoder.decode(&again).unwrap().batch, decoded.batch);
    }

    #[test]
    fn bad_records_are_named_and_the_good_ones_kept() {
        let schema = stream();
        let records = [
            record(0, r#"{"ts":1,"user":"a","n":1}"#),
            record(1, r#"{"ts":2,"user":"#),
            record(2, r#"{"ts":3,"user":"c","n":"x"}"#),
            record(3, r#"{"ts":4}{"ts":5}"#),
            record(4, r#"[1,2]"#),
            record(5, ""),
            record(6, r#"{"ts":7,"user":"g","n":7}"#),
        ];
        let decoded = EventDecoder::new(&schema).decode(&records).unwrap();
        let bad: Vec<u64> = decoded.undecodable.iter().map(|u| u.offset).collect();
        assert_eq!(bad, vec![1, 2, 3, 4, 5]);
        let offsets = decoded.batch.column(4).as_primitive::<Int64Type>();
        assert_eq!(offsets.values(), &[0, 6]);
        assert!(decoded.undecodable.iter().all(|u| !u.reason.is_empty()));
    }

    #[test]
    fn event_times_outside_the_streams_bounds_are_undecodable() {
        let mut config = stream().config().clone();
        config.max_event_time_ahead = std::time::Duration::from_secs(3_600);
        config.max_event_time_behind = std::time::Duration::from_secs(3_650 * 86_400);
        let schema = StreamSchema::new(&config);
        let now = 1_700_000_000_000_i64;
        let at = |offset: u64, value: &str| Record {
            timestamp: now,
            ..record(offset, value)
        };
        let records = [
            at(0, r#"{"ts":1700000000000,"user":"a","n":1}"#),
            at(1, r#"{"ts":-9223372036854775808,"user":"b","n":1}"#),
            at(2, r#"{"ts":"0001-01-01T00:00:00Z","user":"c","n":1}"#),
            at(3, r#"{"ts":9223372036854775807,"user":"d","n":1}"#),
            at(4, r#"{"ts":1700003600001,"user":"e","n":1}"#),
            at(5, r#"{"ts":null,"user":"f","n":1}"#),
            at(6, r#"{"ts":1700003600000,"user":"g","n":1}"#),
        ];
        let decoder = EventDecoder::new(&schema);
        for decoded in [
            decoder.decode(&records).unwrap(),
            decoder.decode_general(&records).unwrap(),
            // The record format's own parser takes a run of canonical records only.
            decoder.decode(&records[..2]).unwrap(),
        ] {
            let offsets = decoded.batch.column(4).as_primitive::<Int64Type>();
            let bad: Vec<u64> = decoded.undecodable.iter().map(|u| u.offset).collect();
            let n_records = offsets.len() + bad.len();
            assert_eq!(offsets.values(), &[0, 6][..offsets.len().min(2)]);
            assert_eq!(bad, [1, 2, 3, 4, 5][..n_records - offsets.len()]);
        }
        let decoded = decoder.decode(&records).unwrap();
        let reasons: Vec<&str> = decoded
            .undecodable
            .iter()
            .map(|u| u.reason.as_str())
            .collect();
        assert!(
            reasons[0].contains("behind the record's timestamp"),
            "{}",
            reasons[0]
        );
        assert!(
            reasons[0].contains("streams.max-event-time-behind"),
            "{}",
            reasons[0]
        );
        assert!(
            reasons[2].contains("ahead of the record's timestamp"),
            "{}",
            reasons[2]
        );
        assert!(reasons[4].contains("missing event time"), "{}", reasons[4]);
    }

    #[test]
    fn an_empty_run_gives_an_empty_batch() {
        let decoded = EventDecoder::new(&stream()).decode(&[]).unwrap();
        assert_eq!(decoded.batch.num_rows(), 0);
        assert_eq!(decoded.batch.num_columns(), 6);
    }

    /// A stream with every field type.
    fn every_type() -> StreamSchema {
        let field = |name: &str, field_type| FieldConfig {
            name: name.to_string(),
            field_type,
            nullable: true,
        };
        let mut config = StreamConfig::new(
            "all",
            1,
            None,
            "ts",
            vec![
                field("ts", FieldType::Timestamp),
                field("text", FieldType::String),
                field("n", FieldType::Int64),
                field("x", FieldType::Float64),
                field("flag", FieldType::Bool),
                field("na\"me", FieldType::String),
            ],
        );
        config.max_event_time_ahead = std::time::Duration::from_secs(u64::MAX / 4000);
        config.max_event_time_behind = std::time::Duration::from_secs(u64::MAX / 4000);
        StreamSchema::new(&config)
    }

    /// Runs both decoders over `values`: the record-format parser must give what arrow_json
    /// gives, when it does not give up.
    fn same_as_arrow_json(values: &[Vec<u8>]) -> bool {
        let schema = every_type();
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(offset, value)| Record {
                topic: Arc::from("all"),
                partition: 0,
                offset: offset as u64,
                timestamp: 5,
                key: None,
                value: Bytes::copy_from_slice(value),
                headers: Vec::new(),
            })
            .collect();
        let decoder = EventDecoder::new(&schema);
        let fast = decoder.decode(&records).unwrap();
        let general = decoder.decode_general(&records).unwrap();
        assert_eq!(fast.batch, general.batch);
        assert_eq!(fast.undecodable, general.undecodable);
        let parsed = decoder
            .record_format
            .decode(&schema, values.iter().map(Vec::as_slice));
        if let Some(parsed) = &parsed {
            assert_eq!(parsed, &general.batch.project(&[0, 1, 2, 3, 4, 5]).unwrap());
        }
        parsed.is_some()
    }

    #[test]
    fn the_record_format_parser_takes_exactly_the_canonical_form() {
        let canonical = br#"{"ts":-5,"text":"a\"b\u00e9\n","n":-9223372036854775808,"x":1.5e-3,"flag":false,"na\"me":null}"#;
        assert!(same_as_arrow_json(&[canonical.to_vec()]));
        assert!(same_as_arrow_json(&[
            br#"{"ts":0,"text":"","n":0,"x":3,"flag":true,"na\"me":"\u2028"}"#.to_vec()
        ]));
        for other in [
            // Whitespace, another order, a missing field, an extra one.
            &br#"{"ts":1, "text":"a","n":1,"x":1.0,"flag":true,"na\"me":null}"#[..],
            br#"{"text":"a","ts":1,"n":1,"x":1.0,"flag":true,"na\"me":null}"#,
            br#"{"ts":1,"text":"a","n":1,"x":1.0,"flag":true}"#,
            br#"{"ts":1,"text":"a","n":1,"x":1.0,"flag":true,"na\"me":null,"y":2}"#,
            // RFC 3339, a float or an out-of-range number in an integer column.
            br#"{"ts":"2023-11-14T22:13:20Z","text":"a","n":1,"x":1,"flag":true,"na\"me":null}"#,
            br#"{"ts":1,"text":"a","n":1.0,"x":1,"flag":true,"na\"me":null}"#,
            br#"{"ts":1,"text":"a","n":9223372036854775808,"x":1,"flag":true,"na\"me":null}"#,
            br#"{"ts":01,"text":"a","n":1,"x":1,"flag":true,"na\"me":null}"#,
            // Trailing bytes, a truncated value.
            br#"{"ts":1,"text":"a","n":1,"x":1,"flag":true,"na\"me":null} "#,
            br#"{"ts":1,"text":"a"#,
        ] {
            assert!(
                !same_as_arrow_json(&[canonical.to_vec(), other.to_vec()]),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    proptest::proptest! {
        /// Events written by the validator (what ingest appends) decode through the record
        /// format's parser to what arrow_json makes of them.
        #[test]
        fn validated_events_decode_as_arrow_json_decodes_them(
            events in proptest::collection::vec(
                (
                    -(1_i64 << 50)..(1_i64 << 50),
                    proptest::option::of(".{0,12}"),
                    proptest::option::of(proptest::num::i64::ANY),
                    proptest::option::of(proptest::num::f64::NORMAL | proptest::num::f64::ZERO | proptest::num::f64::SUBNORMAL),
                    proptest::option::of(proptest::bool::ANY),
                    proptest::option::of("[a-z\"\\\\\u{0}-\u{1f}]{0,4}"),
                ),
                1..20,
            )
        ) {
            let validator = crate::validate::Validator::new(
                every_type().config(),
                crate::validate::ValidationLimits {
                    max_event_bytes: 1 << 20,
                },
            );
            let mut buffer = crate::validate::ValidateBuffer::new();
            let values: Vec<Vec<u8>> = events
                .iter()
                .map(|(ts, text, n, x, flag, odd)| {
                    let document = serde_json::json!({
                        "ts": ts, "text": text, "n": n, "x": x, "flag": flag, "na\"me": odd,
                    });
                    let raw = serde_json::to_vec(&document).unwrap();
                    validator.validate_json(&raw, 0, &mut buffer).unwrap().value.to_vec()
                })
                .collect();
            proptest::prop_assert!(same_as_arrow_json(&values));
        }
    }
}
