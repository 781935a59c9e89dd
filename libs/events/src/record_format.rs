//! A decoder for exactly the record format (see the crate docs), straight into Arrow
//! builders: `{`, then each declared field in declared order as `"name":value` with no
//! whitespace, then `}`. It checks each field name against the expected bytes and parses each
//! value by its declared type in one pass, where a general JSON decoder tokenizes first and
//! matches names to columns after.
//!
//! It accepts only what it can decode exactly as `arrow_json` would: canonical JSON numbers
//! that fit their column, plain or escaped strings, `true`/`false`, `null`. Anything else
//! (another field order, whitespace, RFC 3339 timestamps, a float in an integer column)
//! makes it give up on the whole run, and the caller decodes that run with `arrow_json`.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMillisecondBuilder,
};
use runnel_config::FieldType;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
use bytes::Bytes;

use crate::StreamSchema;
use crate::json_write::{write_f64, write_i64, write_json_str};

/// Encodes each row of `batch` (decoded from `schema`'s stream: its declared columns first,
/// as [`crate::decode`] and the Parquet history give them) as a record value in the record
/// format, so that decoding the values gives the same rows. The repartition path uses it to
/// copy rows read from the history into the log.
///
/// # Errors
///
/// A batch whose first columns are not the declared ones, with their types.
pub fn encode_records(
    schema: &StreamSchema,
    batch: &RecordBatch,
) -> Result<Vec<Bytes>, arrow::error::ArrowError> {
    let fields = schema.config().schema.iter();
    let mut columns = Vec::new();
    for (index, field) in fields.enumerate() {
        let column = batch.columns().get(index).ok_or_else(|| {
            arrow::error::ArrowError::SchemaError(format!(
                "the batch has no column {index} (`{}`)",
                field.name
            ))
        })?;
        let expected = crate::arrow_type(field.field_type);
        if column.data_type() != &expected {
            return Err(arrow::error::ArrowError::SchemaError(format!(
                "column `{}` is {}, not {expected}",
                field.name,
                column.data_type()
            )));
        }
        let mut prefix = Vec::new();
        prefix.push(if index == 0 { b'{' } else { b',' });
        write_json_str(&mut prefix, &field.name);
        prefix.push(b':');
        columns.push((prefix, field.field_type, column));
    }
    let mut values = Vec::with_capacity(batch.num_rows());
    let mut out = Vec::new();
    for row in 0..batch.num_rows() {
        out.clear();
        for (prefix, field_type, column) in &columns {
            out.extend_from_slice(prefix);
            if column.is_null(row) {
                out.extend_from_slice(b"null");
                continue;
            }
            match field_type {
                FieldType::String => write_json_str(&mut out, column.as_string::<i32>().value(row)),
                FieldType::Int64 => {
                    write_i64(&mut out, column.as_primitive::<Int64Type>().value(row))
                }
                FieldType::Float64 => {
                    write_f64(&mut out, column.as_primitive::<Float64Type>().value(row));
                }
                FieldType::Bool => out.extend_from_slice(if column.as_boolean().value(row) {
                    b"true"
                } else {
                    b"false"
                }),
                FieldType::Timestamp => write_i64(
                    &mut out,
                    column.as_primitive::<TimestampMillisecondType>().value(row),
                ),
            }
        }
        if columns.is_empty() {
            out.push(b'{');
        }
        out.push(b'}');
        values.push(Bytes::copy_from_slice(&out));
    }
    Ok(values)
}

/// One declared field: the bytes before its value and its type.
#[derive(Debug, Clone)]
struct FieldSpec {
    /// `"name":`, preceded by `,` after the first field.
    prefix: Vec<u8>,
    field_type: FieldType,
}

/// The builder of one column.
enum Column {
    Utf8(StringBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
}

impl Column {
    fn new(field_type: FieldType, rows: usize, value_bytes: usize) -> Column {
        match field_type {
            FieldType::String => Column::Utf8(StringBuilder::with_capacity(rows, value_bytes)),
            FieldType::Int64 => Column::Int64(Int64Builder::with_capacity(rows)),
            FieldType::Float64 => Column::Float64(Float64Builder::with_capacity(rows)),
            FieldType::Bool => Column::Bool(BooleanBuilder::with_capacity(rows)),
            FieldType::Timestamp => {
                Column::Timestamp(TimestampMillisecondBuilder::with_capacity(rows))
            }
        }
    }

    fn append_null(&mut self) {
        match self {
            Column::Utf8(builder) => builder.append_null(),
            Column::Int64(builder) => builder.append_null(),
            Column::Float64(builder) => builder.append_null(),
            Column::Bool(builder) => builder.append_null(),
            Column::Timestamp(builder) => builder.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Utf8(mut builder) => Arc::new(builder.finish()),
            Column::Int64(mut builder) => Arc::new(builder.finish()),
            Column::Float64(mut builder) => Arc::new(builder.finish()),
            Column::Bool(mut builder) => Arc::new(builder.finish()),
            Column::Timestamp(mut builder) => ArrayBuilder::finish(&mut builder),
        }
    }
}

/// Decodes runs of record-format values of one stream.
#[derive(Debug, Clone)]
pub(crate) struct RecordFormatDecoder {
    fields: Vec<FieldSpec>,
}

impl RecordFormatDecoder {
    pub(crate) fn new(schema: &StreamSchema) -> RecordFormatDecoder {
        let fields = schema
            .config()
            .schema
            .iter()
            .enumerate()
            .map(|(index, field)| {
                let mut prefix = Vec::with_capacity(field.name.len() + 4);
                if index > 0 {
                    prefix.push(b',');
                }
                write_json_str(&mut prefix, &field.name);
                prefix.push(b':');
                FieldSpec {
                    prefix,
                    field_type: field.field_type,
                }
            })
            .collect();
        RecordFormatDecoder { fields }
    }

    /// The declared columns of `values`, or `None` if any value is not in the record format.
    pub(crate) fn decode<'a>(
        &self,
        schema: &StreamSchema,
        values: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
    ) -> Option<RecordBatch> {
        let rows = values.len();
        let value_bytes: usize = values.clone().map(<[u8]>::len).sum();
        let mut columns: Vec<Column> = self
            .fields
            .iter()
            .map(|field| Column::new(field.field_type, rows, value_bytes))
            .collect();
        for value in values {
            self.decode_one(value, &mut columns)?;
        }
        let arrays = columns.into_iter().map(Column::finish).collect();
        RecordBatch::try_new(Arc::clone(schema.declared()), arrays).ok()
    }

    fn decode_one(&self, value: &[u8], columns: &mut [Column]) -> Option<()> {
        let mut cursor = Cursor {
            bytes: value,
            at: 0,
        };
        cursor.expect(b"{")?;
        for (field, column) in self.fields.iter().zip(columns.iter_mut()) {
            cursor.expect(&field.prefix)?;
            if cursor.eat(b"null") {
                column.append_null();
                continue;
            }
            match column {
                Column::Utf8(builder) => cursor.string(|text| builder.append_value(text))?,
                Column::Int64(builder) => builder.append_value(cursor.integer()?),
                Column::Timestamp(builder) => builder.append_value(cursor.integer()?),
                Column::Float64(builder) => builder.append_value(cursor.float()?),
                Column::Bool(builder) => {
                    if cursor.eat(b"true") {
                        builder.append_value(true);
                    } else if cursor.eat(b"false") {
                        builder.append_value(false);
                    } else {
                        return None;
                    }
                }
            }
        }
        cursor.expect(b"}")?;
        (cursor.at == value.len()).then_some(())
    }
}

/// A position in one value.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &[u8] {
        &self.bytes[self.at..]
    }

    /// Consumes `expected` if it comes next.
    fn eat(&mut self, expected: &[u8]) -> bool {
        let matches = self.rest().starts_with(expected);
        if matches {
            self.at += expected.len();
        }
        matches
    }

    fn expect(&mut self, expected: &[u8]) -> Option<()> {
        self.eat(expected).then_some(())
    }

    /// A JSON string, passed to `append` unescaped.
    fn string(&mut self, append: impl FnOnce(&str)) -> Option<()> {
        let start = self.at;
        self.expect(b"\"")?;
        let mut escaped = false;
        loop {
            let byte = *self.bytes.get(self.at)?;
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    // The escaped character, whatever it is; serde_json checks it below.
                    self.at += 1;
                }
                0..0x20 => return None,
                _ => {}
            }
        }
        let quoted = self.bytes.get(start..self.at)?;
        if escaped {
            let text: String = serde_json::from_slice(quoted).ok()?;
            append(&text);
        } else {
            append(std::str::from_utf8(&quoted[1..quoted.len() - 1]).ok()?);
        }
        Some(())
    }

    /// A JSON integer (`-?(0|[1-9][0-9]*)`) that fits an `i64`, not followed by a fraction
    /// or exponent.
    fn integer(&mut self) -> Option<i64> {
        let negative = self.eat(b"-");
        let digits_start = self.at;
        let mut magnitude: u64 = 0;
        while let Some(&byte) = self.bytes.get(self.at)
            && byte.is_ascii_digit()
        {
            magnitude = magnitude
                .checked_mul(10)?
                .checked_add(u64::from(byte - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - digits_start;
        if digits == 0 || (digits > 1 && self.bytes[digits_start] == b'0') {
            return None;
        }
        if matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        if negative {
            0_i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        }
    }

    /// A JSON number (`-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`) as an `f64`.
    fn float(&mut self) -> Option<f64> {
        let start = self.at;
        self.eat(b"-");
        let int_start = self.at;
        let int_digits = self.digits();
        if int_digits == 0 || (int_digits > 1 && self.bytes[int_start] == b'0') {
            return None;
        }
        if self.eat(b".") && self.digits() == 0 {
            return None;
        }
        if self.eat(b"e") || self.eat(b"E") {
            if !self.eat(b"+") {
                self.eat(b"-");
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let text = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        let value: f64 = text.parse().ok()?;
        value.is_finite().then_some(value)
    }

    /// Consumes ASCII digits; returns how many.
    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        self.at - start
    }
}
