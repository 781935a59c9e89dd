//! The stream–table temporal join on event time: each stream row joined with the table's
//! version valid at the row's event time (Flink SQL's `JOIN t FOR SYSTEM_TIME AS OF
//! s.event_time ON s.k = t.k`), inner or `LEFT`.
//!
//! A job's SQL asks for it (`join_plan.rs`); `runnel run` and the stream-processor's join
//! tasks drive it; recompute joins in DataFusion instead ([`crate::register_joined`]).
//!
//! Semantics:
//! - The table side's watermark is the smallest, over its input partitions, of the largest
//!   event time each has shown less `table_out_of_orderness`. It never goes back. A caller
//!   that knows the table holds every version that arrived before the waiting rows (it read
//!   every partition to its end after they came) joins them at once with
//!   [`TemporalJoin::release_waiting`].
//! - A stream row waits until the table's watermark reaches its event time, so that every
//!   table version that can be valid then has come; then it is joined (Flink's rule for
//!   event-time temporal joins). A row whose time the watermark has already reached is
//!   joined at once. Rows the watermark releases together come out in event-time order, ties
//!   in arrival order.
//! - A table row at or behind the table's watermark when it comes is late: stream rows at
//!   its time may have been joined already. It goes to the late output with its reason and
//!   changes nothing.
//! - The table is compacted at the smaller of the table's watermark and the stream side's
//!   (its largest event time less `stream_out_of_orderness`); a stream row behind that
//!   horizon when it comes is late, since the versions it needs may be gone.
//! - A stream row with a null key, or with no version valid at its time, gets no table
//!   columns: `LEFT` emits it with nulls, inner emits nothing for it.
//! - Output does not depend on how either input is cut into batches, only on the order of
//!   rows and, between the two inputs, on the order of the calls.
//! - [`TemporalJoin::snapshot`] holds the whole state (the table's versions, the waiting
//!   rows with their arrival numbers, the clocks); a join restored from it goes on exactly
//!   as the original.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Fields, Int64Type, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use hashbrown::HashSet;

use crate::error::{EngineError, EventError};
use crate::snapshot::{decode_option, encode_option, ipc_bytes, join_parts, read_ipc, split_parts};
use crate::table::VersionedTable;

/// Versions the table gains, at least, between two compactions.
const COMPACT_SLACK: usize = 1_024;

/// Format of [`TemporalJoin::snapshot`].
const SNAPSHOT_FORMAT: &str = "runnel.temporal-join.1";
/// Snapshot column of a waiting row: its arrival number.
const SEQ_COLUMN: &str = "_seq";

/// Late output column: the watermark the row was behind (epoch ms).
pub const JOIN_LATE_WATERMARK_COLUMN: &str = "_watermark";
/// Late output column: why the row is late.
pub const JOIN_LATE_REASON_COLUMN: &str = "_reason";

/// Inner join, or `LEFT` (every stream row comes out, with nulls where nothing matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Only stream rows with a table version valid at their time.
    Inner,
    /// Every stream row.
    Left,
}

/// What the join reads and how.
#[derive(Debug, Clone)]
pub struct TemporalJoinSpec {
    /// The stream's columns.
    pub stream_schema: SchemaRef,
    /// The stream's event time column (int64 epoch ms, or a timestamp in ms).
    pub stream_time: usize,
    /// The stream's join key columns, in the table key's order.
    pub stream_keys: Vec<usize>,
    /// The table changelog's columns.
    pub table_schema: SchemaRef,
    /// The changelog's event time column.
    pub table_time: usize,
    /// The table's key columns.
    pub table_keys: Vec<usize>,
    /// The table columns the join adds to each stream row.
    pub table_values: Vec<usize>,
    /// A boolean changelog column that marks a row as a delete of its key, if any.
    pub tombstone: Option<usize>,
    /// Inner or `LEFT`.
    pub kind: JoinKind,
    /// Input partitions of the table's changelog, each with its own watermark.
    pub table_partitions: u32,
    /// How far behind its partition's largest event time a changelog row may come.
    pub table_out_of_orderness: Duration,
    /// How far behind the stream's largest event time a stream row may come.
    pub stream_out_of_orderness: Duration,
    /// In an inner join, the job's WHERE terms on the table's columns alone, over the
    /// changelog's rows: the table holds a version they do not hold for (false or null) as
    /// a tombstone. It still ends the version before it, and no stream row is joined with
    /// it, where the WHERE would have dropped the joined row. A batch they fail on is taken
    /// as it is (the WHERE then judges its versions after the join). `None`: every version
    /// as it is.
    pub table_filter: Option<Arc<dyn PhysicalExpr>>,
}

/// What a call gives back.
#[derive(Debug, Default)]
pub struct JoinOutput {
    /// Joined rows: the stream's columns, then the table's value columns.
    pub rows: Vec<RecordBatch>,
    /// Late stream rows: the stream's columns, `_watermark`, `_reason`.
    pub late_stream: Vec<RecordBatch>,
    /// Late changelog rows: the changelog's columns, `_watermark`, `_reason`.
    pub late_table: Vec<RecordBatch>,
    /// Rows that could not be used (a null event time), by input row.
    pub errors: Vec<EventError>,
}

/// A stream row waiting for the table's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Waiting {
    time: i64,
    /// Arrival order among stream rows.
    seq: u64,
    batch: u64,
    row: u32,
}

/// The join's state (see the module docs).
#[derive(Debug)]
pub struct TemporalJoin {
    spec: TemporalJoinSpec,
    output_schema: SchemaRef,
    table: VersionedTable,
    /// Per table partition, the largest event time it has shown.
    table_max: Vec<Option<i64>>,
    table_watermark: i64,
    stream_max: Option<i64>,
    /// Stream rows waiting, smallest (time, arrival) first.
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// The batches waiting rows are in, with how many of their rows still wait.
    batches: HashMap<u64, (RecordBatch, usize)>,
    next_batch: u64,
    next_seq: u64,
    /// The join's horizon: the largest the smaller of the two watermarks has been. A
    /// stream row behind it is late; the table is compacted up to it.
    horizon: i64,
    /// Where the table was last compacted.
    compacted_to: i64,
    /// The table's version count at which it is next compacted (see `compact`).
    compact_at: usize,
    /// From [`TemporalJoin::expect_whole_table`] to `finish`, with a table filter: the keys (row format)
    /// of which the filter holds for a row. A changelog row of another key is left out, the
    /// same as a tombstone of a key with no value.
    kept_keys: Option<HashSet<Box<[u8]>>>,
}

impl TemporalJoin {
    /// A join with nothing seen yet.
    ///
    /// # Errors
    ///
    /// Column indices outside the schemas, keys of different counts or types, a tombstone
    /// column that is not boolean, event time columns that are not int64 or timestamps.
    pub fn new(spec: TemporalJoinSpec) -> Result<TemporalJoin, EngineError> {
        let field = |schema: &SchemaRef, index: usize, what: &str| {
            schema.fields().get(index).cloned().ok_or_else(|| {
                EngineError::plan(format!(
                    "the join's {what} column {index} is not in its input"
                ))
            })
        };
        let key_fields = check_join_inputs(
            (
                "stream",
                &spec.stream_schema,
                spec.stream_time,
                &spec.stream_keys,
            ),
            (
                "table",
                &spec.table_schema,
                spec.table_time,
                &spec.table_keys,
            ),
        )?;
        if let Some(tombstone) = spec.tombstone {
            let tombstone = field(&spec.table_schema, tombstone, "tombstone")?;
            if tombstone.data_type() != &DataType::Boolean {
                return Err(EngineError::plan(format!(
                    "the table's tombstone column `{}` has type {}; it must be boolean",
                    tombstone.name(),
                    tombstone.data_type()
                )));
            }
        }
        let value_fields = spec
            .table_values
            .iter()
            .map(|&index| field(&spec.table_schema, index, "table value"))
            .collect::<Result<Vec<_>, _>>()?;
        if spec.table_partitions == 0 {
            return Err(EngineError::plan("the join's table has no partitions"));
        }
        let mut output_fields: Vec<Field> = spec
            .stream_schema
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        output_fields.extend(
            value_fields
                .iter()
                .map(|field| field.as_ref().clone().with_nullable(true)),
        );
        Ok(TemporalJoin {
            output_schema: Arc::new(Schema::new(output_fields)),
            table: VersionedTable::new(Fields::from(key_fields), Fields::from(value_fields))?,
            table_max: vec![None; spec.table_partitions as usize],
            table_watermark: i64::MIN,
            stream_max: None,
            waiting: BinaryHeap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            next_seq: 0,
            horizon: i64::MIN,
            compacted_to: i64::MIN,
            compact_at: 0,
            kept_keys: None,
            spec,
        })
    }

    /// The joined rows' schema: the stream's columns, then the table's value columns.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    /// The table side's watermark (`i64::MIN` before every partition has shown a row).
    pub fn table_watermark(&self) -> i64 {
        self.table_watermark
    }

    /// The table's versions held (a delete is one).
    pub fn table_versions(&self) -> usize {
        self.table.n_versions()
    }

    /// Stream rows waiting for the table's watermark.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Bytes of state: the table's, and the batches waiting rows are in.
    pub fn state_bytes(&self) -> usize {
        self.table.size()
            + self
                .batches
                .values()
                .map(|(batch, _)| batch.get_array_memory_size())
                .sum::<usize>()
    }

    /// Stream rows in: each is joined now if the table's watermark has reached its time, and
    /// waits otherwise; rows behind the compaction horizon are late.
    ///
    /// # Errors
    ///
    /// A batch of another schema; Arrow failures.
    pub fn process_stream(&mut self, batch: &RecordBatch) -> Result<JoinOutput, EngineError> {
        check_schema(batch, &self.spec.stream_schema, "stream")?;
        let mut output = JoinOutput::default();
        let times = event_times(batch, self.spec.stream_time)?;
        let (mut now, mut now_times, mut wait, mut late) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (row, time) in times.iter().enumerate() {
            let Some(time) = *time else {
                output.errors.push(EventError {
                    partition: 0,
                    row,
                    reason: "the stream row's event time is null".to_string(),
                });
                continue;
            };
            // Judged against the horizon as it stood before this row, as if rows came one at
            // a time.
            if time < self.horizon {
                late.push((row, self.horizon));
            } else if time <= self.table_watermark {
                now.push(row as u32);
                now_times.push(time);
            } else {
                wait.push((time, row as u32));
            }
            self.stream_max = Some(self.stream_max.map_or(time, |max| max.max(time)));
            self.raise_horizon();
        }
        if !now.is_empty() {
            let rows =
                arrow::compute::take_record_batch(batch, &arrow::array::UInt32Array::from(now))?;
            self.join(&rows, &now_times, &mut output)?;
        }
        if !wait.is_empty() {
            let id = self.next_batch;
            self.next_batch += 1;
            for &(time, row) in &wait {
                self.waiting.push(Reverse(Waiting {
                    time,
                    seq: self.next_seq,
                    batch: id,
                    row,
                }));
                self.next_seq += 1;
            }
            self.batches.insert(id, (batch.clone(), wait.len()));
        }
        if !late.is_empty() {
            output.late_stream.push(late_rows(
                batch,
                &late,
                "the stream row is behind the join's horizon (the smaller of the table's and the stream's watermarks); the table versions it needs may be gone",
            )?);
        }
        self.compact();
        Ok(output)
    }

    /// Changelog rows of table partition `partition` in: each at or behind the table's
    /// watermark is late; the others update the table. Then the watermark moves and the
    /// stream rows it reaches are joined.
    ///
    /// # Errors
    ///
    /// A batch of another schema, an unknown partition; Arrow failures.
    pub fn process_table(
        &mut self,
        partition: u32,
        batch: &RecordBatch,
    ) -> Result<JoinOutput, EngineError> {
        check_schema(batch, &self.spec.table_schema, "table")?;
        let partitions = self.table_max.len();
        if partition as usize >= partitions {
            return Err(EngineError::Misuse(format!(
                "table partition {partition} is outside the join's {partitions} partitions"
            )));
        }
        let mut output = JoinOutput::default();
        let times = event_times(batch, self.spec.table_time)?;
        let (mut keep, mut kept_times, mut late) = (Vec::new(), Vec::new(), Vec::new());
        let lag = duration_ms(self.spec.table_out_of_orderness);
        // While the whole table comes (`kept_keys`): a row of a key the filter holds for no
        // row of is left out; a row whose key has a null is kept, for `apply` to report.
        let of_a_kept_key: Option<Vec<bool>> = match &self.kept_keys {
            Some(kept_keys) => {
                let key_rows = self.table.key_rows(&self.key_columns(batch))?;
                Some(
                    (0..batch.num_rows())
                        .map(|row| {
                            kept_keys.contains(key_rows.row(row).as_ref())
                                || self
                                    .spec
                                    .table_keys
                                    .iter()
                                    .any(|&index| batch.column(index).is_null(row))
                        })
                        .collect(),
                )
            }
            None => None,
        };
        for (row, time) in times.iter().enumerate() {
            let Some(time) = *time else {
                output.errors.push(EventError {
                    partition,
                    row,
                    reason: "the changelog row's event time is null".to_string(),
                });
                continue;
            };
            // The watermark before this row, as if rows came one at a time.
            if time <= self.table_watermark {
                late.push((row, self.table_watermark));
            } else if of_a_kept_key.as_ref().is_none_or(|kept| kept[row]) {
                keep.push(row as u32);
                kept_times.push(time);
            }
            let max = &mut self.table_max[partition as usize];
            *max = Some(max.map_or(time, |max| max.max(time)));
            if let Some(smallest) = self.table_max.iter().copied().min().flatten() {
                self.table_watermark = self.table_watermark.max(smallest.saturating_sub(lag));
            }
            self.raise_horizon();
        }
        if !keep.is_empty() {
            let rows = arrow::compute::take_record_batch(
                batch,
                &arrow::array::UInt32Array::from(keep.clone()),
            )?;
            let keys = self.key_columns(&rows);
            let values: Vec<ArrayRef> = self
                .spec
                .table_values
                .iter()
                .map(|&index| Arc::clone(rows.column(index)))
                .collect();
            let tombstones = self.tombstones(&rows)?;
            for kept in self
                .table
                .apply(&keys, &kept_times, &values, tombstones.as_ref())?
            {
                output.errors.push(EventError {
                    partition,
                    row: keep[kept] as usize,
                    reason: "the changelog row's key has a null; a null key never matches"
                        .to_string(),
                });
            }
        }
        if !late.is_empty() {
            output.late_table.push(late_rows(
                batch,
                &late,
                "the changelog row is at or behind the table's watermark; stream rows at its time may have been joined already",
            )?);
        }
        self.release(&mut output)?;
        self.compact();
        Ok(output)
    }

    /// Says that `batches` are the whole changelog, to come next as
    /// [`TemporalJoin::process_table`] of partition 0 in this order, then
    /// [`TemporalJoin::finish`], from a caller that has read all of it (`runnel run`). The
    /// table makes room for the keys it will hold at once. With a table filter, a first
    /// pass finds the keys it holds for a row of, and until `finish` the changelog rows of
    /// the other keys are left out: the table would hold each of those keys as tombstones
    /// alone, which no lookup tells from a key it never saw (q3 of `scripts/bench-joins.sh`:
    /// 60,000 keys of a million). Where the filter holds for more than half of the rows, or
    /// fails on a batch, no row is left out.
    ///
    /// # Errors
    ///
    /// A batch of another schema; Arrow failures.
    pub fn expect_whole_table(&mut self, batches: &[RecordBatch]) -> Result<(), EngineError> {
        let n_rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.kept_keys = match &self.spec.table_filter {
            Some(filter) => self.keys_kept_by(filter, batches)?,
            None => None,
        };
        self.table
            .reserve(self.kept_keys.as_ref().map_or(n_rows, HashSet::len));
        Ok(())
    }

    /// The keys (row format) of the rows of `batches` that `filter` holds for; `None` where
    /// it holds for more than half of them or fails on a batch (then no row is left out).
    fn keys_kept_by(
        &self,
        filter: &Arc<dyn PhysicalExpr>,
        batches: &[RecordBatch],
    ) -> Result<Option<HashSet<Box<[u8]>>>, EngineError> {
        let (mut kept_keys, mut n_rows, mut n_held) = (HashSet::new(), 0, 0);
        for batch in batches {
            check_schema(batch, &self.spec.table_schema, "table")?;
            let Some(holds) = crate::join_plan::filter_holds(filter.as_ref(), batch) else {
                return Ok(None);
            };
            let key_rows = self.table.key_rows(&self.key_columns(batch))?;
            for row in holds.values().set_indices() {
                kept_keys.insert(Box::<[u8]>::from(key_rows.row(row).as_ref()));
            }
            n_rows += batch.num_rows();
            n_held += holds.true_count();
        }
        Ok((2 * n_held <= n_rows).then_some(kept_keys))
    }

    /// The table's key columns of changelog rows `rows`.
    fn key_columns(&self, rows: &RecordBatch) -> Vec<ArrayRef> {
        self.spec
            .table_keys
            .iter()
            .map(|&index| Arc::clone(rows.column(index)))
            .collect()
    }

    /// The changelog rows of `rows` the table holds as tombstones: those its tombstone
    /// column marks, and those the table filter does not hold for (see
    /// [`TemporalJoinSpec::table_filter`]); `None` for none.
    fn tombstones(&self, rows: &RecordBatch) -> Result<Option<BooleanArray>, EngineError> {
        let marked = self
            .spec
            .tombstone
            .map(|index| crate::join_plan::nulls_as_false(rows.column(index).as_boolean()));
        let dropped = self
            .spec
            .table_filter
            .as_ref()
            .and_then(|filter| crate::join_plan::filter_holds(filter.as_ref(), rows))
            .map(|holds| arrow::compute::not(&holds))
            .transpose()?;
        Ok(match (marked, dropped) {
            (Some(marked), Some(dropped)) => Some(arrow::compute::or(&marked, &dropped)?),
            (marked, dropped) => marked.or(dropped),
        })
    }

    /// The whole state as bytes: the table's versions (one Arrow IPC stream, after its
    /// length), then the waiting rows in (time, arrival) order with `_seq`, the clocks in
    /// that stream's schema metadata. The join is unchanged and goes on.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let table = ipc_bytes(&self.table.snapshot()?)?;

        let mut waiting: Vec<Waiting> = self.waiting.iter().map(|Reverse(next)| *next).collect();
        waiting.sort_unstable();
        let rows = self.gather(&waiting)?;
        let mut metadata = HashMap::new();
        metadata.insert("runnel.format".to_string(), SNAPSHOT_FORMAT.to_string());
        let table_max: Vec<String> = self
            .table_max
            .iter()
            .map(|max| encode_option(*max))
            .collect();
        metadata.insert("runnel.table_max".to_string(), table_max.join(";"));
        for (key, value) in [
            ("runnel.table_watermark", self.table_watermark),
            ("runnel.next_seq", self.next_seq as i64),
            ("runnel.horizon", self.horizon),
            ("runnel.compacted_to", self.compacted_to),
            ("runnel.compact_at", self.compact_at as i64),
        ] {
            metadata.insert(key.to_string(), value.to_string());
        }
        metadata.insert(
            "runnel.stream_max".to_string(),
            encode_option(self.stream_max),
        );
        let mut fields: Vec<Field> = rows
            .schema()
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        let mut columns = rows.columns().to_vec();
        columns.push(Arc::new(arrow::array::UInt64Array::from_iter_values(
            waiting.iter().map(|next| next.seq),
        )));
        let waiting = ipc_bytes(&RecordBatch::try_new(schema, columns)?)?;
        Ok(join_parts(&table, &waiting))
    }

    /// A join of `spec` with the state of `bytes` (from [`snapshot`](Self::snapshot)).
    ///
    /// # Errors
    ///
    /// The errors of [`new`](Self::new); [`EngineError::Snapshot`] for bytes that are not a
    /// snapshot, or one of a join with other inputs or another number of table partitions.
    pub fn restore(spec: TemporalJoinSpec, bytes: &[u8]) -> Result<TemporalJoin, EngineError> {
        let corrupt = |what: String| EngineError::Snapshot(what);
        let mut join = TemporalJoin::new(spec)?;
        let (table_bytes, waiting_bytes) = split_parts(bytes, "table")?;
        let table = read_ipc(table_bytes)?;
        join.table = join.table.restore_like(&table)?;

        let rows = read_ipc(waiting_bytes)?;
        let schema = rows.schema();
        let metadata = schema.metadata();
        let get = |key: &str| {
            metadata
                .get(key)
                .map(String::as_str)
                .ok_or_else(|| corrupt(format!("a join snapshot without `{key}`")))
        };
        let number = |key: &str| -> Result<i64, EngineError> {
            get(key)?
                .parse()
                .map_err(|_| corrupt(format!("a join snapshot's `{key}` is not a number")))
        };
        if get("runnel.format")? != SNAPSHOT_FORMAT {
            return Err(corrupt("not a temporal join snapshot".to_string()));
        }
        let table_max = get("runnel.table_max")?
            .split(';')
            .map(decode_option)
            .collect::<Result<Vec<_>, _>>()?;
        if table_max.len() != join.table_max.len() {
            return Err(corrupt(format!(
                "a join snapshot of {} table partitions, where the join has {}",
                table_max.len(),
                join.table_max.len()
            )));
        }
        join.table_max = table_max;
        join.table_watermark = number("runnel.table_watermark")?;
        join.next_seq = u64::try_from(number("runnel.next_seq")?)
            .map_err(|_| corrupt("a join snapshot's arrival number is negative".to_string()))?;
        join.horizon = number("runnel.horizon")?;
        join.compacted_to = number("runnel.compacted_to")?;
        join.compact_at = usize::try_from(number("runnel.compact_at")?)
            .map_err(|_| corrupt("a join snapshot's compaction mark is negative".to_string()))?;
        join.stream_max = decode_option(get("runnel.stream_max")?)?;
        let n_stream = join.spec.stream_schema.fields().len();
        if rows.num_columns() != n_stream + 1
            || rows.schema().fields()[..n_stream] != join.spec.stream_schema.fields()[..]
        {
            return Err(corrupt(
                "a join snapshot's waiting rows are not of the join's stream".to_string(),
            ));
        }
        let seqs = rows
            .column(n_stream)
            .as_primitive_opt::<arrow::datatypes::UInt64Type>()
            .filter(|seqs| seqs.null_count() == 0)
            .ok_or_else(|| {
                corrupt("a join snapshot's arrival numbers are not numbers".to_string())
            })?
            .clone();
        let rows = rows.project(&(0..n_stream).collect::<Vec<_>>())?;
        let times = event_times(&rows, join.spec.stream_time)?;
        for (row, time) in times.iter().enumerate() {
            let time = time.ok_or_else(|| {
                corrupt("a join snapshot's waiting row has no event time".to_string())
            })?;
            join.waiting.push(Reverse(Waiting {
                time,
                seq: seqs.value(row),
                batch: 0,
                row: row as u32,
            }));
        }
        if rows.num_rows() > 0 {
            join.batches.insert(0, (rows.clone(), rows.num_rows()));
        }
        join.next_batch = 1;
        Ok(join)
    }

    /// The stream rows of `waiting`, in its order, as one batch.
    fn gather(&self, waiting: &[Waiting]) -> Result<RecordBatch, EngineError> {
        let mut ids: Vec<u64> = waiting.iter().map(|next| next.batch).collect();
        ids.sort_unstable();
        ids.dedup();
        let sources: Vec<&RecordBatch> = ids.iter().map(|id| &self.batches[id].0).collect();
        if sources.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.spec.stream_schema)));
        }
        let indices: Vec<(usize, usize)> = waiting
            .iter()
            .map(|next| {
                let source = ids.binary_search(&next.batch).expect("listed above");
                (source, next.row as usize)
            })
            .collect();
        Ok(arrow::compute::interleave_record_batch(&sources, &indices)?)
    }

    /// Ends bounded inputs: the table's watermark goes to the end of time, and every waiting
    /// stream row is joined with the versions it has.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn finish(&mut self) -> Result<JoinOutput, EngineError> {
        let mut output = JoinOutput::default();
        self.kept_keys = None;
        self.table_watermark = i64::MAX;
        self.release(&mut output)?;
        Ok(output)
    }

    /// Joins every waiting stream row now, with the table's versions as they stand, in
    /// (time, arrival) order: for a caller that has read every table partition to its end as
    /// of a time after those rows arrived, so that no version the table could still show them
    /// has come yet (the table is idle, as an idle source is in Flink). The table's
    /// watermark does not move: a changelog row still to come updates the table, and is
    /// late only behind that watermark.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn release_waiting(&mut self) -> Result<JoinOutput, EngineError> {
        let mut output = JoinOutput::default();
        self.release_up_to(i64::MAX, &mut output)?;
        Ok(output)
    }

    /// Joins the waiting stream rows the table's watermark has reached, in (time, arrival)
    /// order.
    fn release(&mut self, output: &mut JoinOutput) -> Result<(), EngineError> {
        self.release_up_to(self.table_watermark, output)
    }

    /// Joins the waiting stream rows at or before `up_to`, in (time, arrival) order.
    fn release_up_to(&mut self, up_to: i64, output: &mut JoinOutput) -> Result<(), EngineError> {
        let mut released: Vec<Waiting> = Vec::new();
        while let Some(Reverse(next)) = self.waiting.peek() {
            if next.time > up_to {
                break;
            }
            released.push(*next);
            self.waiting.pop();
        }
        if released.is_empty() {
            return Ok(());
        }
        let rows = self.gather(&released)?;
        for waiting in &released {
            let entry = self.batches.get_mut(&waiting.batch).expect("listed above");
            entry.1 -= 1;
            if entry.1 == 0 {
                self.batches.remove(&waiting.batch);
            }
        }
        let times: Vec<i64> = released.iter().map(|waiting| waiting.time).collect();
        self.join(&rows, &times, output)
    }

    /// Joins `rows` (stream rows whose time the table's watermark has reached; `times`, their
    /// event times, taken once when they came) with the versions valid at their times.
    fn join(
        &self,
        rows: &RecordBatch,
        times: &[i64],
        output: &mut JoinOutput,
    ) -> Result<(), EngineError> {
        let keys: Vec<ArrayRef> = self
            .spec
            .stream_keys
            .iter()
            .map(|&index| Arc::clone(rows.column(index)))
            .collect();
        let found = self.table.lookup(&keys, times)?;
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        columns.extend(found.values);
        let joined = RecordBatch::try_new(self.output_schema(), columns)?;
        let joined = match self.spec.kind {
            JoinKind::Left => joined,
            JoinKind::Inner => arrow::compute::filter_record_batch(&joined, &found.matched)?,
        };
        if joined.num_rows() > 0 {
            output.rows.push(joined);
        }
        Ok(())
    }

    /// Raises the horizon to the smaller of the two watermarks, if that is higher.
    fn raise_horizon(&mut self) {
        let stream_watermark = self.stream_max.map_or(i64::MIN, |max| {
            max.saturating_sub(duration_ms(self.spec.stream_out_of_orderness))
        });
        self.horizon = self.horizon.max(self.table_watermark.min(stream_watermark));
    }

    /// Compacts the table up to the horizon once it holds `compact_at` versions, then sets
    /// that mark to twice what is left (at least [`COMPACT_SLACK`] more). A compaction sweeps
    /// every key, so sweeping at each horizon step cost O(keys) per batch (80% of a 1M-key
    /// enrichment's time); by doubling, each version added pays O(1) of sweeping, and the
    /// table holds at most about twice the versions an eager compaction would keep.
    /// Compaction only drops versions no row at or after the horizon can need, and keys of a
    /// tombstone alone at or before the table's watermark (no version can come before it),
    /// so when it happens changes no output. It is due when the horizon has moved, or while
    /// the table's watermark is ahead of it (the table filter's tombstones go then).
    fn compact(&mut self) {
        if (self.horizon > self.compacted_to || self.table_watermark > self.horizon)
            && self.table.n_versions() >= self.compact_at
        {
            self.table.compact(self.horizon, self.table_watermark);
            self.compacted_to = self.horizon;
            let left = self.table.n_versions();
            self.compact_at = (2 * left).max(left + COMPACT_SLACK);
        }
    }
}

/// `duration` in whole milliseconds, at most `i64::MAX`.
pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// One input of a join, as [`check_join_inputs`] reads it: what it is called in errors, its
/// columns, its event time column and its key columns.
pub(crate) type JoinInput<'a> = (&'a str, &'a SchemaRef, usize, &'a [usize]);

/// Checks the two inputs of a join: event time columns that are int64 epoch milliseconds or
/// timestamps in milliseconds, and key columns of one count (at least one) and of equal
/// types. Returns the second input's key fields.
pub(crate) fn check_join_inputs(
    (left_name, left_schema, left_time, left_keys): JoinInput<'_>,
    (right_name, right_schema, right_time, right_keys): JoinInput<'_>,
) -> Result<Vec<arrow::datatypes::FieldRef>, EngineError> {
    let field = |schema: &SchemaRef, index: usize, what: &str| {
        schema.fields().get(index).cloned().ok_or_else(|| {
            EngineError::plan(format!(
                "the join's {what} column {index} is not in its input"
            ))
        })
    };
    for (schema, index, name) in [
        (left_schema, left_time, left_name),
        (right_schema, right_time, right_name),
    ] {
        let time = field(schema, index, &format!("{name} event time"))?;
        if !matches!(
            time.data_type(),
            DataType::Int64 | DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, _)
        ) {
            return Err(EngineError::plan(format!(
                "the join's {name} event time column `{}` has type {}; it must be an int64 of epoch milliseconds or a timestamp in milliseconds",
                time.name(),
                time.data_type()
            )));
        }
    }
    if left_keys.len() != right_keys.len() || left_keys.is_empty() {
        return Err(EngineError::plan(format!(
            "the join has {} {left_name} key columns and {} {right_name} key columns",
            left_keys.len(),
            right_keys.len()
        )));
    }
    let mut key_fields = Vec::with_capacity(right_keys.len());
    for (&left_key, &right_key) in left_keys.iter().zip(right_keys) {
        let (left_field, right_field) = (
            field(left_schema, left_key, &format!("{left_name} key"))?,
            field(right_schema, right_key, &format!("{right_name} key"))?,
        );
        if left_field.data_type() != right_field.data_type() {
            return Err(EngineError::plan(format!(
                "the join compares `{}` ({}) with `{}` ({})",
                left_field.name(),
                left_field.data_type(),
                right_field.name(),
                right_field.data_type()
            )));
        }
        key_fields.push(right_field);
    }
    Ok(key_fields)
}

/// Refuses a `what` batch whose columns are not `schema`'s.
pub(crate) fn check_schema(
    batch: &RecordBatch,
    schema: &SchemaRef,
    what: &str,
) -> Result<(), EngineError> {
    if batch.schema().fields() != schema.fields() {
        return Err(EngineError::Schema(format!(
            "a {what} batch of columns {:?}, where the join reads {:?}",
            batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>(),
            schema.fields().iter().map(|f| f.name()).collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// The event times of `batch`'s column `index` in epoch ms.
pub(crate) fn event_times(
    batch: &RecordBatch,
    index: usize,
) -> Result<Vec<Option<i64>>, EngineError> {
    let times = arrow::compute::cast(batch.column(index), &DataType::Int64)?;
    Ok(times.as_primitive::<Int64Type>().iter().collect())
}

/// The rows `late` (row, watermark) of `batch`, with `_watermark` and `_reason`.
pub(crate) fn late_rows(
    batch: &RecordBatch,
    late: &[(usize, i64)],
    reason: &str,
) -> Result<RecordBatch, EngineError> {
    let indices =
        arrow::array::UInt32Array::from_iter_values(late.iter().map(|(row, _)| *row as u32));
    let rows = arrow::compute::take_record_batch(batch, &indices)?;
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    fields.push(Field::new(
        JOIN_LATE_WATERMARK_COLUMN,
        DataType::Int64,
        false,
    ));
    fields.push(Field::new(JOIN_LATE_REASON_COLUMN, DataType::Utf8, false));
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(arrow::array::Int64Array::from_iter_values(
        late.iter().map(|(_, watermark)| *watermark),
    )));
    columns.push(Arc::new(StringArray::from_iter_values(
        late.iter().map(|_| reason),
    )));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use arrow::array::{BooleanArray, Int64Array};
    use proptest::prelude::*;

    use super::*;

    /// clicks(event_time, user_id, page) joined with users(event_time, user_id, country,
    /// deleted).
    fn spec(kind: JoinKind, table_lag_ms: u64) -> TemporalJoinSpec {
        TemporalJoinSpec {
            stream_schema: Arc::new(Schema::new(vec![
                Field::new("event_time", DataType::Int64, true),
                Field::new("user_id", DataType::Utf8, true),
                Field::new("page", DataType::Utf8, true),
            ])),
            stream_time: 0,
            stream_keys: vec![1],
            table_schema: Arc::new(Schema::new(vec![
                Field::new("event_time", DataType::Int64, true),
                Field::new("user_id", DataType::Utf8, true),
                Field::new("country", DataType::Utf8, true),
                Field::new("deleted", DataType::Boolean, true),
            ])),
            table_time: 0,
            table_keys: vec![1],
            table_values: vec![2],
            tombstone: Some(3),
            kind,
            table_partitions: 1,
            table_out_of_orderness: Duration::from_millis(table_lag_ms),
            stream_out_of_orderness: Duration::from_millis(0),
            table_filter: None,
        }
    }

    fn clicks(join: &TemporalJoin, rows: &[(i64, &str, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(&join.spec.stream_schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .expect("clicks")
    }

    /// Changelog rows (time, user, Some(country) or None for a delete).
    fn users(join: &TemporalJoin, rows: &[(i64, &str, Option<&str>)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(&join.spec.table_schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2))),
                Arc::new(BooleanArray::from_iter(
                    rows.iter().map(|r| Some(r.2.is_none())),
                )),
            ],
        )
        .expect("users")
    }

    /// Joined rows as "time user page country" lines.
    fn rendered(batches: &[RecordBatch]) -> Vec<String> {
        let mut lines = Vec::new();
        for batch in batches {
            let times = batch.column(0).as_primitive::<Int64Type>();
            let users = batch.column(1).as_string::<i32>();
            let pages = batch.column(2).as_string::<i32>();
            let countries = batch.column(3).as_string::<i32>();
            for row in 0..batch.num_rows() {
                let country = if countries.is_valid(row) {
                    countries.value(row)
                } else {
                    "NULL"
                };
                lines.push(format!(
                    "{} {} {} {country}",
                    times.value(row),
                    users.value(row),
                    pages.value(row)
                ));
            }
        }
        lines
    }

    fn late_count(batches: &[RecordBatch]) -> usize {
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[test]
    fn a_row_joins_the_version_valid_at_its_time_once_the_table_has_reached_it() {
        let mut join = TemporalJoin::new(spec(JoinKind::Inner, 0)).expect("join");
        let table = users(&join, &[(10, "u1", Some("de")), (20, "u1", Some("fr"))]);
        let mut output = join.process_table(0, &table).expect("table");
        assert!(output.rows.is_empty());
        // Before, at and after the update at 20; 25 waits for the table's watermark (20).
        let stream = clicks(
            &join,
            &[
                (5, "u1", "/a"),
                (19, "u1", "/b"),
                (20, "u1", "/c"),
                (25, "u1", "/d"),
            ],
        );
        output = join.process_stream(&stream).expect("stream");
        assert_eq!(rendered(&output.rows), ["19 u1 /b de", "20 u1 /c fr"]);
        assert_eq!(join.waiting(), 1);
        output = join
            .process_table(0, &users(&join, &[(30, "u1", Some("jp"))]))
            .expect("table");
        assert_eq!(rendered(&output.rows), ["25 u1 /d fr"]);
        assert_eq!(join.waiting(), 0);
    }

    #[test]
    fn a_key_of_a_tombstone_alone_goes_once_the_tables_watermark_passes_it() {
        let mut join = TemporalJoin::new(spec(JoinKind::Inner, 5)).expect("join");
        // No stream row yet, so the horizon is at the start of time and no version is old
        // enough to go. The table's watermark is 31 - 5 = 26: no version of u1 can come
        // before its delete at 10 any more, so u1 goes; u3's delete at 30 stays.
        join.process_table(
            0,
            &users(
                &join,
                &[
                    (10, "u1", None),
                    (12, "u2", Some("de")),
                    (30, "u3", None),
                    (31, "u4", Some("fr")),
                ],
            ),
        )
        .expect("table");
        assert_eq!(join.table_versions(), 3);
        let output = join
            .process_stream(&clicks(&join, &[(15, "u1", "/a"), (15, "u2", "/b")]))
            .expect("stream");
        assert_eq!(rendered(&output.rows), ["15 u2 /b de"]);
    }

    #[test]
    fn left_keeps_rows_without_a_version_and_a_tombstone_ends_one() {
        let mut join = TemporalJoin::new(spec(JoinKind::Left, 0)).expect("join");
        join.process_table(
            0,
            &users(
                &join,
                &[
                    (10, "u1", Some("de")),
                    (20, "u1", None),
                    (30, "u2", Some("fr")),
                ],
            ),
        )
        .expect("table");
        let output = join
            .process_stream(&clicks(
                &join,
                &[
                    (5, "u1", "/a"),
                    (15, "u1", "/b"),
                    (25, "u1", "/c"),
                    (25, "u2", "/d"),
                ],
            ))
            .expect("stream");
        assert_eq!(
            rendered(&output.rows),
            [
                "5 u1 /a NULL",
                "15 u1 /b de",
                "25 u1 /c NULL",
                "25 u2 /d NULL"
            ]
        );
    }

    #[test]
    fn a_changelog_row_behind_the_watermark_is_late_and_changes_nothing() {
        let mut join = TemporalJoin::new(spec(JoinKind::Inner, 5)).expect("join");
        let output = join
            .process_table(
                0,
                &users(
                    &join,
                    &[
                        (10, "u1", Some("de")),
                        (30, "u1", Some("fr")),
                        (24, "u1", Some("jp")),
                        (25, "u1", Some("br")),
                        (26, "u1", Some("us")),
                    ],
                ),
            )
            .expect("table");
        // The watermark is 25 after the row at 30: the rows at 24 and at 25 (a stream row at
        // 25 may have been joined already) are late, the one at 26 is not.
        assert_eq!(late_count(&output.late_table), 2);
        let late = &output.late_table[0];
        let times = late.column(0).as_primitive::<Int64Type>();
        assert_eq!((times.value(0), times.value(1)), (24, 25));
        assert_eq!(late.column(4).as_primitive::<Int64Type>().value(0), 25);
        let output = join
            .process_stream(&clicks(&join, &[(24, "u1", "/a"), (25, "u1", "/b")]))
            .expect("stream");
        assert_eq!(rendered(&output.rows), ["24 u1 /a de", "25 u1 /b de"]);
    }

    #[test]
    fn a_snapshot_of_another_join_is_refused() {
        let join = TemporalJoin::new(spec(JoinKind::Inner, 0)).expect("join");
        let bytes = join.snapshot().expect("snapshot");
        let mut other = spec(JoinKind::Inner, 0);
        other.table_partitions = 2;
        assert!(matches!(
            TemporalJoin::restore(other, &bytes),
            Err(EngineError::Snapshot(_))
        ));
        assert!(matches!(
            TemporalJoin::restore(spec(JoinKind::Inner, 0), b"not a snapshot"),
            Err(EngineError::Snapshot(_))
        ));
    }

    #[test]
    fn a_stream_row_behind_the_horizon_is_late() {
        let mut join = TemporalJoin::new(spec(JoinKind::Left, 0)).expect("join");
        join.process_table(
            0,
            &users(&join, &[(10, "u1", Some("de")), (50, "u1", Some("fr"))]),
        )
        .expect("table");
        // The stream's watermark reaches 40: the horizon is min(50, 40).
        join.process_stream(&clicks(&join, &[(40, "u1", "/a")]))
            .expect("stream");
        let output = join
            .process_stream(&clicks(&join, &[(39, "u1", "/b"), (40, "u1", "/c")]))
            .expect("stream");
        assert_eq!(late_count(&output.late_stream), 1);
        assert_eq!(rendered(&output.rows), ["40 u1 /c de"]);
    }

    /// An input step: stream rows, or changelog rows.
    #[derive(Debug, Clone)]
    enum Step {
        Stream(Vec<(i64, u8, u8)>),
        Table(Vec<(i64, u8, Option<u8>)>),
    }

    /// What a run gave: joined rows rendered, late stream rows, late changelog rows.
    type Outcome = (Vec<String>, usize, usize);

    fn take(outcome: &mut Outcome, output: JoinOutput) {
        outcome.0.extend(rendered(&output.rows));
        outcome.1 += late_count(&output.late_stream);
        outcome.2 += late_count(&output.late_table);
    }

    /// Feeds `steps` to `join`, each as one batch or one row at a time.
    fn feed(
        join: &mut TemporalJoin,
        steps: &[Step],
        one_row_at_a_time: bool,
        outcome: &mut Outcome,
    ) {
        let names = ["u0", "u1", "u2"];
        let countries = ["de", "fr", "jp"];
        for step in steps {
            let chunks: Vec<Step> = match step {
                Step::Stream(events) if one_row_at_a_time => events
                    .iter()
                    .map(|event| Step::Stream(vec![*event]))
                    .collect(),
                Step::Table(changes) if one_row_at_a_time => changes
                    .iter()
                    .map(|change| Step::Table(vec![*change]))
                    .collect(),
                other => vec![other.clone()],
            };
            for chunk in chunks {
                match chunk {
                    Step::Stream(events) => {
                        let rows: Vec<(i64, &str, &str)> = events
                            .iter()
                            .map(|(t, user, page)| {
                                (*t, names[*user as usize], ["/a", "/b"][*page as usize])
                            })
                            .collect();
                        let batch = clicks(join, &rows);
                        take(outcome, join.process_stream(&batch).expect("stream"));
                    }
                    Step::Table(changes) => {
                        let rows: Vec<(i64, &str, Option<&str>)> = changes
                            .iter()
                            .map(|(t, user, country)| {
                                (
                                    *t,
                                    names[*user as usize],
                                    country.map(|c| countries[c as usize]),
                                )
                            })
                            .collect();
                        let batch = users(join, &rows);
                        take(outcome, join.process_table(0, &batch).expect("table"));
                    }
                }
            }
        }
    }

    fn run(kind: JoinKind, steps: &[Step], one_row_at_a_time: bool) -> Outcome {
        let mut join = TemporalJoin::new(spec(kind, 3)).expect("join");
        let mut outcome = Outcome::default();
        feed(&mut join, steps, one_row_at_a_time, &mut outcome);
        take(&mut outcome, join.finish().expect("finish"));
        outcome
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let stream = prop::collection::vec((0i64..60, 0u8..3, 0u8..2), 1..6).prop_map(Step::Stream);
        let table = prop::collection::vec((0i64..60, 0u8..3, prop::option::of(0u8..3)), 1..6)
            .prop_map(Step::Table);
        prop::collection::vec(prop_oneof![stream, table], 0..12)
    }

    /// Steps whose event times never go back on either input, so that nothing is late.
    fn steps_in_time_order() -> impl Strategy<Value = Vec<Step>> {
        steps().prop_map(|steps| {
            let (mut stream_time, mut table_time) = (0, 0);
            steps
                .into_iter()
                .map(|step| match step {
                    Step::Stream(events) => Step::Stream(
                        events
                            .into_iter()
                            .map(|(t, user, page)| {
                                stream_time += t % 7;
                                (stream_time, user, page)
                            })
                            .collect(),
                    ),
                    Step::Table(changes) => Step::Table(
                        changes
                            .into_iter()
                            .map(|(t, user, country)| {
                                table_time += t % 7;
                                (table_time, user, country)
                            })
                            .collect(),
                    ),
                })
                .collect()
        })
    }

    proptest! {
        /// A join restored from a snapshot taken after any step goes on exactly as the
        /// original, and snapshots again to the same bytes.
        #[test]
        fn a_restored_join_continues_like_the_original(
            steps in steps(),
            cut in any::<prop::sample::Index>(),
            left in any::<bool>(),
        ) {
            let kind = if left { JoinKind::Left } else { JoinKind::Inner };
            let cut = cut.index(steps.len() + 1);
            let mut join = TemporalJoin::new(spec(kind, 3)).expect("join");
            let mut outcome = Outcome::default();
            feed(&mut join, &steps[..cut], false, &mut outcome);
            let bytes = join.snapshot().expect("snapshot");
            let mut restored = TemporalJoin::restore(spec(kind, 3), &bytes).expect("restore");
            prop_assert_eq!(restored.snapshot().expect("snapshot"), bytes);
            feed(&mut restored, &steps[cut..], false, &mut outcome);
            take(&mut outcome, restored.finish().expect("finish"));
            prop_assert_eq!(outcome, run(kind, &steps, false));
        }

        /// Output and late rows do not depend on how the inputs are cut into batches.
        #[test]
        fn batches_do_not_change_the_output(steps in steps(), left in any::<bool>()) {
            let kind = if left { JoinKind::Left } else { JoinKind::Inner };
            prop_assert_eq!(run(kind, &steps, false), run(kind, &steps, true));
        }

        /// With nothing late, each stream row gets the changelog's last row at or before its
        /// time (by time, then changelog order), as a batch AS OF join over the whole input
        /// would give it.
        #[test]
        fn without_late_rows_it_is_the_as_of_join_of_the_whole_input(steps in steps_in_time_order()) {
            let (rows, late_stream, late_table) = run(JoinKind::Left, &steps, false);
            prop_assume!(late_stream == 0 && late_table == 0);
            let names = ["u0", "u1", "u2"];
            let countries = ["de", "fr", "jp"];
            let changes: Vec<(i64, u8, Option<u8>)> = steps
                .iter()
                .filter_map(|step| match step { Step::Table(changes) => Some(changes.clone()), _ => None })
                .flatten()
                .collect();
            let mut want: Vec<String> = steps
                .iter()
                .filter_map(|step| match step { Step::Stream(events) => Some(events.clone()), _ => None })
                .flatten()
                .map(|(t, user, page)| {
                    let latest = changes.iter().filter(|c| c.1 == user && c.0 <= t).map(|c| c.0).max();
                    let country = latest
                        .and_then(|latest| changes.iter().rfind(|c| c.1 == user && c.0 == latest))
                        .and_then(|c| c.2)
                        .map_or("NULL", |c| countries[c as usize]);
                    format!("{t} {} {} {country}", names[user as usize], ["/a", "/b"][page as usize])
                })
                .collect();
            let mut got = rows;
            want.sort();
            got.sort();
            prop_assert_eq!(got, want);
        }
    }
}
