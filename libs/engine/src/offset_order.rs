//! A join's rows put back in their stream's offset order, each stream row's rows together:
//! what a router of a repartitioned interval join job sends on.
//!
//! The window tasks after a router drop the copies a restarted router writes again by their
//! position in the stream: a copy at or before the last position they took is one they have.
//! That holds only if a router sends a partition's rows in offset order. An AS OF join gives
//! one row per stream row, as the stream row comes; an interval join gives a stream row's
//! rows as its matches come, and its `LEFT` row once its interval has passed, out of that
//! order, and several rows of one stream row. [`OffsetOrder`] holds the join's rows until
//! every stream row before them has all of its rows (the join's `released_to` has passed its
//! event time), then lets them out in (offset, row content) order: the same order whatever
//! the order the matches came in, so that the k-th row of a stream row is the same row after
//! a restart, and a copy can be told by its offset and k.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};

use crate::error::EngineError;

/// Joined rows held until their stream rows are complete (see the module docs).
#[derive(Debug)]
pub struct OffsetOrder {
    /// The joined rows' schema.
    schema: SchemaRef,
    /// The joined rows' stream offset column.
    offset_column: usize,
    /// Stream rows whose rows may still come: (offset, event time), in offset order.
    pending: VecDeque<(i64, Option<i64>)>,
    /// Joined rows of pending stream rows.
    held: Vec<RecordBatch>,
}

/// Rows let out by [`OffsetOrder::release`]: in offset order, with each row's place among
/// its stream row's rows.
#[derive(Debug)]
pub struct OffsetOrdered {
    /// The rows, in (offset, row content) order.
    pub rows: RecordBatch,
    /// Per row, how many rows of the same stream row come before it.
    pub copies: UInt32Array,
}

impl OffsetOrder {
    /// An empty buffer of joined rows of `schema`, whose stream offsets are its column
    /// `offset_column` (Int64).
    pub fn new(schema: SchemaRef, offset_column: usize) -> OffsetOrder {
        OffsetOrder {
            schema,
            offset_column,
            pending: VecDeque::new(),
            held: Vec::new(),
        }
    }

    /// Whether no stream row is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Stream rows were read, in offset order: `offsets` and their event times (epoch ms;
    /// null where a row has none, which the join refuses: it has no rows to wait for).
    ///
    /// # Errors
    ///
    /// Columns of other lengths; offsets that do not follow the ones before.
    pub fn stream(&mut self, offsets: &Int64Array, times: &Int64Array) -> Result<(), EngineError> {
        if offsets.len() != times.len() {
            return Err(EngineError::Misuse(format!(
                "{} offsets with {} event times",
                offsets.len(),
                times.len()
            )));
        }
        for row in 0..offsets.len() {
            let offset = offsets.value(row);
            if self.pending.back().is_some_and(|(last, _)| *last >= offset) {
                return Err(EngineError::Misuse(format!(
                    "stream offset {offset} after {}",
                    self.pending.back().map_or(0, |(last, _)| *last)
                )));
            }
            self.pending
                .push_back((offset, times.is_valid(row).then(|| times.value(row))));
        }
        Ok(())
    }

    /// Holds joined rows (the join's output, of stream rows given to [`OffsetOrder::stream`]).
    ///
    /// # Errors
    ///
    /// Rows of another schema.
    pub fn push(&mut self, rows: RecordBatch) -> Result<(), EngineError> {
        if rows.schema().fields() != self.schema.fields() {
            return Err(EngineError::Schema(format!(
                "joined rows with columns {:?}",
                rows.schema().fields()
            )));
        }
        if rows.num_rows() > 0 {
            self.held.push(rows);
        }
        Ok(())
    }

    /// Lets out the rows of the stream rows that are complete: every stream row, in offset
    /// order, up to the first whose event time is at or after `released_to` (the join's: no
    /// joined row before it is still to come). `None` when there are none.
    ///
    /// # Errors
    ///
    /// Failures inside Arrow.
    pub fn release(&mut self, released_to: i64) -> Result<Option<OffsetOrdered>, EngineError> {
        let complete = self
            .pending
            .iter()
            .take_while(|(_, time)| time.is_none_or(|time| time < released_to))
            .count();
        if complete == 0 {
            return Ok(None);
        }
        // Every held row of an offset below the first pending one's is complete.
        self.pending.drain(..complete);
        let cut = self.pending.front().map(|(offset, _)| *offset);
        let held = concat_batches(&self.schema, &self.held)?;
        self.held.clear();
        let offsets = held.column(self.offset_column).as_primitive::<Int64Type>();
        let out: arrow::array::BooleanArray = offsets
            .iter()
            .map(|offset| Some(cut.is_none_or(|cut| offset.is_some_and(|offset| offset < cut))))
            .collect();
        let kept = arrow::compute::not(&out)?;
        let rest = filter_record_batch(&held, &kept)?;
        if rest.num_rows() > 0 {
            self.held.push(rest);
        }
        let rows = filter_record_batch(&held, &out)?;
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        // (offset, then every column): one order whatever the order the rows came in.
        let mut columns = vec![Arc::clone(rows.column(self.offset_column))];
        columns.extend(rows.columns().iter().cloned());
        let converter = RowConverter::new(
            columns
                .iter()
                .map(|column| SortField::new(column.data_type().clone()))
                .collect(),
        )?;
        let keys = converter.convert_columns(&columns)?;
        let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
        order.sort_by(|a, b| keys.row(*a as usize).cmp(&keys.row(*b as usize)));
        let rows = take_record_batch(&rows, &UInt32Array::from(order))?;
        let offsets = rows.column(self.offset_column).as_primitive::<Int64Type>();
        let mut copies = Vec::with_capacity(rows.num_rows());
        for row in 0..rows.num_rows() {
            let same = row > 0 && offsets.value(row - 1) == offsets.value(row);
            copies.push(if same {
                copies.last().copied().unwrap_or(0) + 1
            } else {
                0
            });
        }
        Ok(Some(OffsetOrdered {
            rows,
            copies: UInt32Array::from(copies),
        }))
    }

    /// Serializes the buffer: the held rows, then the pending stream rows (offset and event
    /// time), framed as two parts ([`crate::join_snapshot_parts`]).
    ///
    /// # Errors
    ///
    /// Failures inside Arrow.
    pub fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let held = concat_batches(&self.schema, &self.held)?;
        let (offsets, times): (Vec<i64>, Vec<Option<i64>>) = self.pending.iter().copied().unzip();
        let pending = RecordBatch::try_new(
            pending_schema(),
            vec![
                Arc::new(Int64Array::from(offsets)),
                Arc::new(Int64Array::from(times)),
            ],
        )?;
        Ok(crate::snapshot::join_parts(
            &crate::snapshot::ipc_bytes(&held)?,
            &crate::snapshot::ipc_bytes(&pending)?,
        ))
    }

    /// Rebuilds a buffer of rows of `schema` from [`OffsetOrder::snapshot`] bytes.
    ///
    /// # Errors
    ///
    /// [`EngineError::Snapshot`]: bytes that are not such a snapshot, or of other rows.
    pub fn restore(
        schema: SchemaRef,
        offset_column: usize,
        bytes: &[u8],
    ) -> Result<OffsetOrder, EngineError> {
        let (held, pending) = crate::snapshot::split_parts(bytes, "held rows")?;
        let held = crate::snapshot::read_ipc(held)?;
        let pending = crate::snapshot::read_ipc(pending)?;
        let corrupt = |what: &str| EngineError::Snapshot(format!("an offset order {what}"));
        if held.schema().fields() != schema.fields() {
            return Err(corrupt("of other rows"));
        }
        if pending.num_columns() != 2
            || pending
                .columns()
                .iter()
                .any(|column| column.data_type() != &DataType::Int64)
        {
            return Err(corrupt("without its pending offsets and times"));
        }
        let mut order = OffsetOrder::new(schema, offset_column);
        order.push(held)?;
        order.stream(
            pending.column(0).as_primitive::<Int64Type>(),
            pending.column(1).as_primitive::<Int64Type>(),
        )?;
        Ok(order)
    }
}

fn pending_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("offset", DataType::Int64, false),
        Field::new("event_time", DataType::Int64, true),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("_offset", DataType::Int64, false),
            Field::new("right", DataType::Utf8, true),
        ]))
    }

    fn rows(rows: &[(i64, Option<&str>)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(
                    rows.iter().map(|(offset, _)| *offset).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|(_, right)| *right).collect::<Vec<_>>(),
                )),
            ],
        )
        .expect("rows")
    }

    fn released(order: &mut OffsetOrder, to: i64) -> Vec<(i64, Option<String>, u32)> {
        let Some(out) = order.release(to).expect("release") else {
            return Vec::new();
        };
        let offsets = out.rows.column(0).as_primitive::<Int64Type>();
        let rights = out.rows.column(1).as_string::<i32>();
        (0..out.rows.num_rows())
            .map(|row| {
                (
                    offsets.value(row),
                    rights.is_valid(row).then(|| rights.value(row).to_string()),
                    out.copies.value(row),
                )
            })
            .collect()
    }

    #[test]
    fn rows_come_out_in_offset_order_once_their_stream_rows_are_complete() {
        let mut order = OffsetOrder::new(schema(), 0);
        // Stream rows 10 (at 5 s), 11 (at 3 s: out of order), 12 (at 9 s), 13 (no time).
        order
            .stream(
                &Int64Array::from(vec![10, 11, 12, 13]),
                &Int64Array::from(vec![Some(5_000), Some(3_000), Some(9_000), None]),
            )
            .expect("stream");
        // Matches come in any order: 11's first, then 12's, then 10's two.
        order.push(rows(&[(11, Some("b"))])).expect("push");
        order
            .push(rows(&[(12, Some("c")), (10, Some("z")), (10, Some("a"))]))
            .expect("push");
        // At 4 s 11 is complete but 10, before it, is not: nothing.
        assert_eq!(released(&mut order, 4_000), Vec::new());
        // At 6 s: 10 and 11 are, 12 not; 10's rows in content order, numbered.
        let expected = vec![
            (10, Some("a".to_string()), 0),
            (10, Some("z".to_string()), 1),
            (11, Some("b".to_string()), 0),
        ];
        // A snapshot taken here continues the same.
        let mut restored = OffsetOrder::restore(schema(), 0, &order.snapshot().expect("snapshot"))
            .expect("restore");
        assert_eq!(released(&mut order, 6_000), expected);
        assert_eq!(released(&mut restored, 6_000), expected);
        // One more row of 12 comes (nulls sort first); 13 has no time and no rows.
        order.push(rows(&[(12, None)])).expect("push");
        assert_eq!(
            released(&mut order, 10_000),
            vec![(12, None, 0), (12, Some("c".to_string()), 1)]
        );
        assert!(order.is_empty());
        let error = order
            .stream(
                &Int64Array::from(vec![20, 19]),
                &Int64Array::from(vec![1, 1]),
            )
            .expect_err("out of offset order");
        assert!(error.to_string().contains("offset 19 after 20"), "{error}");
    }
}
