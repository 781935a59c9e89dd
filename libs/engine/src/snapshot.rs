//! Snapshots of a [`WindowOperator`]: its whole state as one Arrow IPC stream.
//!
//! Session windows write one batch of their own shape (see `SessionState::snapshot_schema`).
//! For tumbling and hopping windows, each open window is one batch: `_window_start`, `_window_end`, `_fired`, then the key
//! columns (`_key_<i>`), the accumulators' intermediate state (`_state_<aggregate>_<field>`,
//! DataFusion's own `state`/`merge_batch` format), `_version` and `_dirty`, one row per group.
//! The operator's scalars (watermark, partition clocks, counters) and a fingerprint of the
//! job and options are the schema's metadata, so a snapshot cannot be restored into another
//! job by mistake.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use crate::error::EngineError;
use crate::groups::GroupTable;
use crate::operator::{OperatorOptions, PartitionClock, Window, WindowOperator};
use crate::plan::JobPlan;
use crate::session::SessionState;
use crate::window::WindowSpec;

const FORMAT_VERSION: &str = "1";

/// FNV-1a over the job's SQL and the options that change results.
fn fingerprint(plan: &JobPlan, options: &OperatorOptions) -> String {
    let text = format!(
        "{}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{}",
        plan.sql,
        plan.event_time,
        options.max_out_of_orderness,
        options.allowed_lateness,
        options.idle_timeout,
        options.early_emit_interval,
        options.partitions
    );
    fnv1a(&text)
}

/// FNV-1a of `text`, in hex: a fingerprint that stays the same across processes and builds.
pub(crate) fn fnv1a(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The columns of the accumulators' intermediate state, `_state_<aggregate>_<field>`.
pub(crate) fn state_columns(plan: &JobPlan) -> Result<Vec<Field>, EngineError> {
    let mut fields = Vec::new();
    for (aggregate_idx, aggregate) in plan.aggregates.iter().enumerate() {
        for (field_idx, field) in aggregate.expr.state_fields()?.iter().enumerate() {
            fields.push(Field::new(
                format!("_state_{aggregate_idx}_{field_idx}"),
                field.data_type().clone(),
                true,
            ));
        }
    }
    Ok(fields)
}

fn snapshot_schema(
    plan: &JobPlan,
    metadata: HashMap<String, String>,
) -> Result<SchemaRef, EngineError> {
    let mut fields = vec![
        Field::new("_window_start", DataType::Int64, false),
        Field::new("_window_end", DataType::Int64, false),
        Field::new("_fired", DataType::Boolean, false),
    ];
    for (idx, key) in plan.key_schema.fields().iter().enumerate() {
        fields.push(Field::new(
            format!("_key_{idx}"),
            key.data_type().clone(),
            true,
        ));
    }
    fields.extend(state_columns(plan)?);
    fields.push(Field::new("_version", DataType::UInt32, false));
    fields.push(Field::new("_dirty", DataType::Boolean, false));
    Ok(Arc::new(Schema::new_with_metadata(fields, metadata)))
}

/// One batch as an Arrow IPC stream.
pub(crate) fn ipc_bytes(batch: &RecordBatch) -> Result<Vec<u8>, EngineError> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The rows of an Arrow IPC stream as one batch of its schema (metadata included).
pub(crate) fn read_ipc(bytes: &[u8]) -> Result<RecordBatch, EngineError> {
    let reader = StreamReader::try_new(bytes, None)
        .map_err(|error| EngineError::Snapshot(format!("not an Arrow IPC stream: {error}")))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| EngineError::Snapshot(format!("read a join snapshot: {error}")))?;
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

/// A snapshot of two parts (a join's: each an Arrow IPC stream; a join job's task: the
/// windows' and the join's snapshots): the first's length in 8 bytes, little-endian, then
/// the first, then the second.
pub fn join_parts(first: &[u8], second: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + first.len() + second.len());
    bytes.extend_from_slice(&(first.len() as u64).to_le_bytes());
    bytes.extend_from_slice(first);
    bytes.extend_from_slice(second);
    bytes
}

/// The two parts of a [`join_parts`] snapshot; `first` names the first in errors.
///
/// # Errors
///
/// [`EngineError::Snapshot`]: bytes too short for the header or the first part.
pub fn split_parts<'a>(bytes: &'a [u8], first: &str) -> Result<(&'a [u8], &'a [u8]), EngineError> {
    let corrupt = |what: String| EngineError::Snapshot(what);
    let (len, rest) = bytes
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("a join snapshot shorter than its header".to_string()))?;
    let len = usize::try_from(u64::from_le_bytes(*len))
        .ok()
        .filter(|len| *len <= rest.len())
        .ok_or_else(|| corrupt(format!("a join snapshot's {first} part runs past its end")))?;
    Ok(rest.split_at(len))
}

pub(crate) fn encode_option(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

pub(crate) fn decode_option(text: &str) -> Result<Option<i64>, EngineError> {
    if text == "-" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| EngineError::Snapshot(format!("`{text}` is not a number")))
}

impl WindowOperator {
    /// Serializes the operator's whole state. The operator is unchanged and goes on.
    ///
    /// # Errors
    ///
    /// Failures inside DataFusion or Arrow while copying the state out.
    pub fn snapshot(&mut self) -> Result<Vec<u8>, EngineError> {
        let mut metadata = HashMap::new();
        metadata.insert("runnel.format".to_string(), FORMAT_VERSION.to_string());
        metadata.insert(
            "runnel.fingerprint".to_string(),
            fingerprint(&self.plan, &self.options),
        );
        metadata.insert("runnel.watermark".to_string(), self.watermark.to_string());
        metadata.insert("runnel.clock".to_string(), encode_option(self.clock));
        metadata.insert(
            "runnel.started_at".to_string(),
            encode_option(self.started_at),
        );
        metadata.insert(
            "runnel.next_early".to_string(),
            encode_option(self.next_early),
        );
        metadata.insert("runnel.late_count".to_string(), self.late_count.to_string());
        metadata.insert("runnel.finished".to_string(), self.finished.to_string());
        let partitions: Vec<String> = self
            .partitions
            .iter()
            .map(|clock| {
                format!(
                    "{},{},{}",
                    encode_option(clock.max_event_time),
                    encode_option(clock.last_arrival),
                    clock
                        .at_end
                        .map_or_else(|| "0".to_string(), |as_of| format!("@{as_of}"))
                )
            })
            .collect();
        metadata.insert("runnel.partitions".to_string(), partitions.join(";"));
        if let Some(sessions) = &mut self.sessions {
            let batch = sessions.snapshot(&self.plan)?;
            let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
            let mut writer = StreamWriter::try_new(Vec::new(), &schema)?;
            writer.write(&batch.with_schema(Arc::clone(&schema))?)?;
            writer.finish()?;
            return Ok(writer.into_inner()?);
        }
        let schema = snapshot_schema(&self.plan, metadata)?;
        let mut writer = StreamWriter::try_new(Vec::new(), &schema)?;
        for (start, window) in &mut self.windows {
            let n_groups = window.table.len();
            let (keys, states) = window.table.state()?;
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(vec![*start; n_groups])),
                Arc::new(Int64Array::from(vec![window.end; n_groups])),
                Arc::new(BooleanArray::from(vec![window.fired; n_groups])),
            ];
            columns.extend(keys);
            columns.extend(states);
            columns.push(Arc::new(UInt32Array::from(window.table.versions.clone())));
            columns.push(Arc::new(BooleanArray::from(window.table.dirty.clone())));
            writer.write(&RecordBatch::try_new(Arc::clone(&schema), columns)?)?;
        }
        writer.finish()?;
        Ok(writer.into_inner()?)
    }

    /// Rebuilds an operator from [`snapshot`](Self::snapshot) bytes; it continues exactly as
    /// the one that took the snapshot would have.
    ///
    /// # Errors
    ///
    /// [`EngineError::Snapshot`] if the bytes are not a snapshot, or one of another job or
    /// other options.
    pub fn restore(
        plan: Arc<JobPlan>,
        options: OperatorOptions,
        bytes: &[u8],
    ) -> Result<WindowOperator, EngineError> {
        let corrupt = |what: &str| EngineError::Snapshot(what.to_string());
        let reader = StreamReader::try_new(bytes, None)
            .map_err(|error| EngineError::Snapshot(format!("not an Arrow IPC stream: {error}")))?;
        let schema = reader.schema();
        let metadata = schema.metadata();
        let get = |key: &str| {
            metadata
                .get(key)
                .map(String::as_str)
                .ok_or_else(|| EngineError::Snapshot(format!("missing `{key}`")))
        };
        if get("runnel.format")? != FORMAT_VERSION {
            return Err(corrupt("unknown snapshot format version"));
        }
        if get("runnel.fingerprint")? != fingerprint(&plan, &options) {
            return Err(corrupt(
                "the snapshot was taken for another job or other options (SQL, event time, lateness, idleness, early emission or partitions differ)",
            ));
        }
        let expected = match plan.window {
            WindowSpec::Session { .. } => SessionState::snapshot_schema(&plan)?,
            _ => snapshot_schema(&plan, HashMap::new())?,
        };
        if expected.fields() != schema.fields() {
            return Err(corrupt("its columns do not match the job's state"));
        }
        let mut operator = WindowOperator::new(Arc::clone(&plan), options)?;
        operator.watermark = get("runnel.watermark")?
            .parse()
            .map_err(|_| corrupt("bad watermark"))?;
        operator.clock = decode_option(get("runnel.clock")?)?;
        operator.started_at = decode_option(get("runnel.started_at")?)?;
        operator.next_early = decode_option(get("runnel.next_early")?)?;
        operator.late_count = get("runnel.late_count")?
            .parse()
            .map_err(|_| corrupt("bad late count"))?;
        operator.finished = get("runnel.finished")? == "true";
        let partitions: Vec<&str> = get("runnel.partitions")?.split(';').collect();
        if partitions.len() != operator.partitions.len() {
            return Err(corrupt("partition count differs"));
        }
        for (clock, text) in operator.partitions.iter_mut().zip(partitions) {
            let mut fields = text.split(',');
            let (Some(max_event_time), Some(last_arrival)) = (fields.next(), fields.next()) else {
                return Err(corrupt("bad partition clock"));
            };
            // `@<as of>`: at its end, as of that arrival time. Older snapshots said only that
            // an input was at its end ("1"), or nothing (inputs idled on time alone): their
            // word is taken as stale, so the input is not idle until it says so again.
            let at_end = match fields.next() {
                Some("0") => None,
                None | Some("1") => Some(i64::MIN),
                Some(text) => Some(
                    text.strip_prefix('@')
                        .and_then(|as_of| as_of.parse().ok())
                        .ok_or_else(|| corrupt("bad partition clock"))?,
                ),
            };
            *clock = PartitionClock {
                max_event_time: decode_option(max_event_time)?,
                last_arrival: decode_option(last_arrival)?,
                at_end,
            };
        }
        if let WindowSpec::Session { gap_ms } = plan.window {
            let batches = reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| EngineError::Snapshot(format!("read session batch: {error}")))?;
            operator.sessions = Some(SessionState::restore(
                &plan,
                gap_ms,
                operator.allowed_lateness_ms,
                &batches,
            )?);
            return Ok(operator);
        }
        let n_keys = plan.key_schema.fields().len();
        let n_columns = schema.fields().len();
        let mut windows = BTreeMap::new();
        for batch in reader {
            let batch = batch
                .map_err(|error| EngineError::Snapshot(format!("read window batch: {error}")))?;
            if batch.num_rows() == 0 {
                continue;
            }
            let start = batch.column(0).as_primitive::<Int64Type>().value(0);
            let end = batch.column(1).as_primitive::<Int64Type>().value(0);
            let fired = batch.column(2).as_boolean().value(0);
            let keys: Vec<ArrayRef> = batch.columns()[3..3 + n_keys].to_vec();
            let states: Vec<ArrayRef> = batch.columns()[3 + n_keys..n_columns - 2].to_vec();
            let versions = batch.column(n_columns - 2).as_primitive::<UInt32Type>();
            let dirty = batch.column(n_columns - 1).as_boolean();
            if versions.null_count() > 0 || dirty.null_count() > 0 {
                return Err(corrupt("null version or dirty flag"));
            }
            let table = GroupTable::restore(
                &plan,
                &keys,
                &states,
                versions.values().to_vec(),
                dirty.values().iter().collect(),
            )?;
            windows.insert(start, Window { end, table, fired });
        }
        operator.windows = windows;
        Ok(operator)
    }
}
