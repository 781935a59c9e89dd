//! Rows put back in event-time order: an interval join emits a stream row when its match
//! comes, or with nulls once the watermark has passed its interval, so its rows come out of
//! time order by up to the interval, and by more where the event times leap. Windows over
//! them would take such rows as late. [`TimeOrder`] holds the join's rows until no earlier
//! row can still come ([`crate::JoinPlan::release_before`]), then lets them out in
//! (event time, arrival) order, so the windows see them in order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Int64Type, SchemaRef};

use crate::error::EngineError;

/// Rows held until released in time order (see the module docs).
#[derive(Debug)]
pub struct TimeOrder {
    schema: SchemaRef,
    time_column: usize,
    /// (time, arrival, batch, row), earliest first.
    held: BinaryHeap<Reverse<(i64, u64, u64, u32)>>,
    /// The batches held rows are in, with how many of their rows are still held.
    batches: HashMap<u64, (RecordBatch, usize)>,
    next_batch: u64,
    next_seq: u64,
}

impl TimeOrder {
    /// An empty buffer of rows of `schema`, ordered by its column `time_column` (int64
    /// epoch ms, or a timestamp in ms).
    pub fn new(schema: SchemaRef, time_column: usize) -> TimeOrder {
        TimeOrder {
            schema,
            time_column,
            held: BinaryHeap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            next_seq: 0,
        }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Holds `batch`'s rows (a row without a time is released first).
    ///
    /// # Errors
    ///
    /// A time column of another type.
    pub fn push(&mut self, batch: RecordBatch) -> Result<(), EngineError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let column = batch.column(self.time_column);
        let times = match column.data_type() {
            DataType::Int64 | DataType::Timestamp(_, _) => {
                arrow::compute::cast(column, &DataType::Int64)?
            }
            other => {
                return Err(EngineError::Schema(format!(
                    "rows ordered by a column of type {other}"
                )));
            }
        };
        let times = times.as_primitive::<Int64Type>();
        let id = self.next_batch;
        self.next_batch += 1;
        for row in 0..batch.num_rows() {
            let time = if times.is_valid(row) {
                times.value(row)
            } else {
                i64::MIN
            };
            self.held
                .push(Reverse((time, self.next_seq, id, row as u32)));
            self.next_seq += 1;
        }
        self.batches.insert(id, (batch.clone(), batch.num_rows()));
        Ok(())
    }

    /// Lets out, in (time, arrival) order, the rows at or before `time`.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn release(&mut self, time: i64) -> Result<Option<RecordBatch>, EngineError> {
        let mut rows: Vec<(u64, u32)> = Vec::new();
        while let Some(Reverse((at, _, batch, row))) = self.held.peek() {
            if *at > time {
                break;
            }
            rows.push((*batch, *row));
            self.held.pop();
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let released = self.gather(&rows)?;
        for (batch, _) in &rows {
            if let Some(entry) = self.batches.get_mut(batch) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.batches.remove(batch);
                }
            }
        }
        Ok(Some(released))
    }

    /// The rows held, in the order they would be let out, as one batch (none: an empty one):
    /// a [`TimeOrder::restore`]d buffer holds them again, in that order. The buffer is
    /// unchanged.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn snapshot(&self) -> Result<RecordBatch, EngineError> {
        let mut held: Vec<(i64, u64, u64, u32)> =
            self.held.iter().map(|Reverse(entry)| *entry).collect();
        held.sort_unstable();
        let rows: Vec<(u64, u32)> = held
            .iter()
            .map(|&(_, _, batch, row)| (batch, row))
            .collect();
        if rows.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema.clone()));
        }
        self.gather(&rows)
    }

    /// A buffer of rows of `schema` ordered by `time_column`, holding `rows` (a
    /// [`TimeOrder::snapshot`]) in their order.
    ///
    /// # Errors
    ///
    /// Rows of another schema; a time column of another type.
    pub fn restore(
        schema: SchemaRef,
        time_column: usize,
        rows: RecordBatch,
    ) -> Result<TimeOrder, EngineError> {
        if rows.schema().fields() != schema.fields() {
            return Err(EngineError::Snapshot(
                "held rows of another schema than the join's".to_string(),
            ));
        }
        let mut order = TimeOrder::new(schema, time_column);
        order.push(rows)?;
        Ok(order)
    }

    /// The rows `rows` (batch, row) of the held batches, in that order.
    fn gather(&self, rows: &[(u64, u32)]) -> Result<RecordBatch, EngineError> {
        let ids: Vec<u64> = {
            let mut ids: Vec<u64> = rows.iter().map(|(batch, _)| *batch).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let index_of = |id: u64| ids.binary_search(&id).unwrap_or(0);
        let indices: Vec<(usize, usize)> = rows
            .iter()
            .map(|(batch, row)| (index_of(*batch), *row as usize))
            .collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for column in 0..self.schema.fields().len() {
            let arrays: Vec<&dyn arrow::array::Array> = ids
                .iter()
                .map(|id| self.batches[id].0.column(column).as_ref())
                .collect();
            columns.push(interleave(&arrays, &indices)?);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(rows: &[(i64, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("t", DataType::Int64, true),
                Field::new("v", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch")
    }

    fn values(batch: &RecordBatch) -> Vec<String> {
        batch
            .column(1)
            .as_string::<i32>()
            .iter()
            .map(|value| value.unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn rows_come_out_in_time_then_arrival_order_up_to_the_release_time() {
        let first = batch(&[(30, "c"), (10, "a"), (20, "b1")]);
        let mut order = TimeOrder::new(first.schema(), 0);
        order.push(first).expect("push");
        order.push(batch(&[(20, "b2"), (40, "d")])).expect("push");
        assert!(order.release(5).expect("release").is_none());
        let out = order.release(20).expect("release").expect("rows");
        assert_eq!(values(&out), ["a", "b1", "b2"]);
        assert_eq!(order.len(), 2);
        let out = order.release(i64::MAX).expect("release").expect("rows");
        assert_eq!(values(&out), ["c", "d"]);
        assert!(order.is_empty() && order.batches.is_empty());
    }

    #[test]
    fn a_restored_buffer_lets_its_rows_out_as_the_original_would() {
        let first = batch(&[(30, "c"), (10, "a"), (20, "b1")]);
        let mut order = TimeOrder::new(first.schema(), 0);
        order.push(first.clone()).expect("push");
        order.push(batch(&[(20, "b2"), (40, "d")])).expect("push");
        order.release(10).expect("release");
        let snapshot = order.snapshot().expect("snapshot");
        assert_eq!(values(&snapshot), ["b1", "b2", "c", "d"]);
        let mut restored = TimeOrder::restore(first.schema(), 0, snapshot).expect("restore");
        for order in [&mut order, &mut restored] {
            order.push(batch(&[(20, "b3")])).expect("push");
        }
        for time in [20, i64::MAX] {
            let out =
                |order: &mut TimeOrder| values(&order.release(time).expect("r").expect("rows"));
            assert_eq!(out(&mut order), out(&mut restored));
        }
        let empty = TimeOrder::new(first.schema(), 0)
            .snapshot()
            .expect("snapshot");
        assert_eq!(empty.num_rows(), 0);
    }
}
