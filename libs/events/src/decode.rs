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

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, TimestampMillisecondArray};
use arrow::error::ArrowError;
use arrow::json::reader::{Decoder, ReaderBuilder};
use runnel_log::Record;

use crate::StreamSchema;
use crate::record_format::RecordFormatDecoder;

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
        match self.record_format.decode(&self.schema, values) {
            Some(declared) => Ok(Decoded {
                batch: self.with_position(declared, records.iter())?,
                undecodable: Vec::new(),
            }),
            None => self.decode_general(records),
        }
    }

    /// Decodes `records` as [`EventDecoder::decode`] does, but without the record format's
    /// own parser: `arrow_json` for every run. The benchmarks' yardstick.
    ///
    /// # Errors
    ///
    /// As [`EventDecoder::decode`].
    pub fn decode_general(&self, records: &[Record]) -> Result<Decoded, DecodeError> {
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
        StreamSchema::new(&StreamConfig {
            name: "clicks".to_string(),
            partitions: 2,
            key: Some("user".to_string()),
            event_time: "ts".to_string(),
            schema: vec![
                field("ts", FieldType::Timestamp),
                field("user", FieldType::String),
                field("n", FieldType::Int64),
            ],
        })
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
        StreamSchema::new(&StreamConfig {
            name: "all".to_string(),
            partitions: 1,
            key: None,
            event_time: "ts".to_string(),
            schema: vec![
                field("ts", FieldType::Timestamp),
                field("text", FieldType::String),
                field("n", FieldType::Int64),
                field("x", FieldType::Float64),
                field("flag", FieldType::Bool),
                field("na\"me", FieldType::String),
            ],
        })
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
                    max_event_time_ahead: std::time::Duration::from_secs(u64::MAX / 4000),
                    max_event_time_behind: None,
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
