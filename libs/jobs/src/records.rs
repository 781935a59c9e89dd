//! A job's outputs as log records: the one definition of the result and late-event records,
//! encoded by the stream-processor ([`result_records`], [`late_records`]) and decoded by
//! serving ([`decode_results`]).
//!
//! Results go to `<job>.results` as upserts: the value is the result row as a JSON object
//! (the user's columns, `_key`, `_window_start`, `_version`, `_final`), the key is
//! `<_key>@<_window_start in epoch ms>` (group key and window: the upsert's identity). Late
//! events go to `<job>.late`: the value is the late row as JSON (the event, its `_offset`
//! and `_ingest_time`, and `_partition`, `_window_start`, `_watermark`, `_reason`), the key
//! `<partition>:<offset>` of the source record, so duplicates after a recovery are found by
//! key. Both are written to the task's own partition number, so one task's outputs keep
//! their order, and with the record timestamp of the input that produced them, so a rerun
//! writes the same records.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use arrow::json::ReaderBuilder;
use arrow::json::writer::{LineDelimited, WriterBuilder};
use bytes::Bytes;
use runnel_log::{ProduceRecord, Record};

use crate::JobsError;

/// Rows of `batches` as JSON objects, one per row.
fn json_rows(batches: &[RecordBatch]) -> Result<Vec<Bytes>, JobsError> {
    let mut buffer = Vec::new();
    {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(&mut buffer);
        for batch in batches {
            writer.write(batch).map_err(JobsError::Encode)?;
        }
        writer.finish().map_err(JobsError::Encode)?;
    }
    let buffer = Bytes::from(buffer);
    let mut rows = Vec::new();
    let mut start = 0;
    for (index, byte) in buffer.iter().enumerate() {
        if *byte == b'\n' {
            rows.push(buffer.slice(start..index));
            start = index + 1;
        }
    }
    Ok(rows)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a dyn Array, JobsError> {
    batch
        .column_by_name(name)
        .map(|column| column.as_ref())
        .ok_or_else(|| {
            JobsError::Encode(arrow::error::ArrowError::SchemaError(format!(
                "output has no column `{name}`"
            )))
        })
}

/// Result batches as upsert records for partition `partition`.
///
/// # Errors
///
/// [`JobsError::Encode`] if a batch lacks `_key` or `_window_start`.
pub fn result_records(
    batches: &[RecordBatch],
    partition: u32,
    timestamp: i64,
) -> Result<Vec<ProduceRecord>, JobsError> {
    let mut keys = Vec::new();
    for batch in batches {
        let key = column(batch, runnel_engine::KEY_COLUMN)?.as_string::<i32>();
        let start = column(batch, runnel_engine::WINDOW_START_COLUMN)?
            .as_primitive::<TimestampMillisecondType>();
        for row in 0..batch.num_rows() {
            keys.push(Bytes::from(format!(
                "{}@{}",
                key.value(row),
                start.value(row)
            )));
        }
    }
    records(keys, json_rows(batches)?, partition, timestamp)
}

/// Late-event batches as records for partition `partition`.
///
/// `source_partition` is the partition the task read directly, whose operator numbers its
/// one input 0: the `_partition` column is set to it. For a task reading a repartition topic
/// it is `None`: the operator's inputs are the source partitions already.
///
/// # Errors
///
/// [`JobsError::Encode`] if a batch lacks `_offset` or `_partition`.
pub fn late_records(
    batches: &[RecordBatch],
    partition: u32,
    source_partition: Option<u32>,
    timestamp: i64,
) -> Result<Vec<ProduceRecord>, JobsError> {
    keyed_late_records("", batches, partition, source_partition, timestamp)
}

/// A join job's late changelog rows (the join's table, `table`, had passed their time) as
/// late records for partition `partition`, keyed `<table>/<partition>:<offset>` (the
/// changelog's partition and offset, which each batch's `_partition` and `_offset` hold),
/// apart from the stream's late events.
///
/// # Errors
///
/// [`JobsError::Encode`] if a batch lacks `_offset` or `_partition`.
pub fn late_table_records(
    table: &str,
    batches: &[RecordBatch],
    partition: u32,
    timestamp: i64,
) -> Result<Vec<ProduceRecord>, JobsError> {
    keyed_late_records(&format!("{table}/"), batches, partition, None, timestamp)
}

fn keyed_late_records(
    prefix: &str,
    batches: &[RecordBatch],
    partition: u32,
    source_partition: Option<u32>,
    timestamp: i64,
) -> Result<Vec<ProduceRecord>, JobsError> {
    let mut keys = Vec::new();
    let mut relabelled = Vec::with_capacity(batches.len());
    for batch in batches {
        let batch = match source_partition {
            Some(source) => with_source_partition(batch, source)?,
            None => batch.clone(),
        };
        let offsets = column(&batch, runnel_events::OFFSET_COLUMN)?.as_primitive::<Int64Type>();
        let partitions = arrow::compute::cast(
            column(&batch, runnel_engine::LATE_PARTITION_COLUMN)?,
            &arrow::datatypes::DataType::UInt32,
        )
        .map_err(JobsError::Encode)?;
        let partitions = partitions.as_primitive::<arrow::datatypes::UInt32Type>();
        for row in 0..batch.num_rows() {
            keys.push(Bytes::from(format!(
                "{prefix}{}:{}",
                partitions.value(row),
                offsets.value(row)
            )));
        }
        relabelled.push(batch);
    }
    records(keys, json_rows(&relabelled)?, partition, timestamp)
}

/// The task's operator has one input (its partition), which it numbers 0; the late events'
/// `_partition` names the source partition instead.
fn with_source_partition(batch: &RecordBatch, partition: u32) -> Result<RecordBatch, JobsError> {
    let Ok(index) = batch
        .schema()
        .index_of(runnel_engine::LATE_PARTITION_COLUMN)
    else {
        return Ok(batch.clone());
    };
    let data_type = batch.schema().field(index).data_type().clone();
    let constant = arrow::array::UInt32Array::from(vec![partition; batch.num_rows()]);
    let constant = arrow::compute::cast(&constant, &data_type).map_err(JobsError::Encode)?;
    let mut columns = batch.columns().to_vec();
    columns[index] = constant;
    RecordBatch::try_new(batch.schema(), columns).map_err(JobsError::Encode)
}

fn records(
    keys: Vec<Bytes>,
    values: Vec<Bytes>,
    partition: u32,
    timestamp: i64,
) -> Result<Vec<ProduceRecord>, JobsError> {
    if keys.len() != values.len() {
        return Err(JobsError::Encode(arrow::error::ArrowError::ComputeError(
            format!("{} keys for {} JSON rows", keys.len(), values.len()),
        )));
    }
    Ok(keys
        .into_iter()
        .zip(values)
        .map(|(key, value)| ProduceRecord {
            key: Some(key),
            value,
            timestamp,
            headers: Vec::new(),
            partition: Some(partition),
        })
        .collect())
}

/// Result records' values (JSON objects) decoded into batches of `schema`, the job's result
/// schema (`JobPlan::result_schema`: the SELECT columns, then `_key`, `_window_start`,
/// `_version` and `_final`).
///
/// # Errors
///
/// [`JobsError::Encode`] if a record is not a JSON object of that schema; the caller may
/// decode record by record to find which.
pub fn decode_results(
    schema: &SchemaRef,
    records: &[Record],
) -> Result<Vec<RecordBatch>, JobsError> {
    let mut decoder = ReaderBuilder::new(std::sync::Arc::clone(schema))
        .with_batch_size(records.len().max(1))
        .build_decoder()
        .map_err(JobsError::Encode)?;
    for record in records {
        decoder.decode(&record.value).map_err(JobsError::Encode)?;
    }
    let mut batches = Vec::new();
    while let Some(batch) = decoder.flush().map_err(JobsError::Encode)? {
        batches.push(batch);
    }
    Ok(batches)
}
