//! A join job's live join, as every caller drives it: `runnel run`, the stream-processor's
//! join tasks and routers, and the golden tests.
//!
//! The stream's rows go through the job's WHERE terms on stream columns alone
//! ([`JoinPlan::prefilter`]), then the join: [`TemporalJoin`] AS OF a table, or
//! [`IntervalJoin`] with a second stream, whose rows a [`TimeOrder`] holds until no earlier
//! joined row can still come ([`JoinPlan::release_before`] its watermark). What comes out
//! are the joined rows as the window operator takes them ([`JobPlan::joined_rows`]), in the
//! order it may take them, with the rows late to the join beside them.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;

use crate::error::{EngineError, EventError};
use crate::interval_join::{IntervalJoin, IntervalJoinOutput};
use crate::join_plan::{JoinForm, JoinPlan};
use crate::plan::JobPlan;
use crate::reorder::TimeOrder;
use crate::temporal_join::{JoinOutput, TemporalJoin};

/// How a live join takes its inputs.
#[derive(Debug, Clone, Copy)]
pub struct LiveJoinOptions {
    /// The stream's input partitions (an interval join's left inputs; an AS OF join takes
    /// the stream's rows without a partition).
    pub stream_partitions: u32,
    /// The other input's partitions.
    pub other_partitions: u32,
    /// AS OF: how far behind its partition's largest event time a changelog row may come.
    pub table_out_of_orderness: Duration,
    /// AS OF: stream rows further than this behind the stream's largest event time may be
    /// refused (make it at least what the windows still take).
    pub stream_out_of_orderness: Duration,
    /// Interval: the job's out-of-orderness, for both inputs.
    pub max_out_of_orderness: Duration,
    /// Interval: the job's allowed lateness, for both inputs.
    pub allowed_lateness: Duration,
}

/// What one call of a live join gave.
#[derive(Debug, Default)]
pub struct LiveJoinOutput {
    /// Joined rows, as the window operator takes them, in the order it may take them.
    pub rows: Vec<RecordBatch>,
    /// Stream rows late to the join: the stream's columns, `_watermark`, `_reason`.
    pub late_stream: Vec<RecordBatch>,
    /// Rows of the other input late to the join: its columns (an interval join's: those it
    /// keeps), `_watermark`, `_reason`.
    pub late_other: Vec<RecordBatch>,
    /// Rows of the call's batch the join could not use (no event time; a changelog row
    /// whose key has a null), by row of the batch the join saw (after the prefilter).
    pub errors: Vec<EventError>,
    /// Those rows themselves, with `_reason`: the call's input's columns (the stream's, or
    /// the other input's as the join keeps them).
    pub refused: Vec<RecordBatch>,
}

impl LiveJoinOutput {
    /// Adds `other`'s rows and late rows after this one's.
    pub fn append(&mut self, other: LiveJoinOutput) {
        self.rows.extend(other.rows);
        self.late_stream.extend(other.late_stream);
        self.late_other.extend(other.late_other);
        self.errors.extend(other.errors);
        self.refused.extend(other.refused);
    }
}

/// The join of a join job, live (see the module docs).
#[derive(Debug)]
pub struct LiveJoin {
    plan: Arc<JobPlan>,
    options: LiveJoinOptions,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    AsOf(Box<TemporalJoin>),
    Interval {
        join: Box<IntervalJoin>,
        in_order: TimeOrder,
        lateness: Duration,
    },
}

/// A join output's parts: rows, the stream's late rows, the other input's, errors.
type Parts = (
    Vec<RecordBatch>,
    Vec<RecordBatch>,
    Vec<RecordBatch>,
    Vec<EventError>,
);

impl From<JoinOutput> for LiveJoinOutput {
    fn from(output: JoinOutput) -> LiveJoinOutput {
        from_parts((
            output.rows,
            output.late_stream,
            output.late_table,
            output.errors,
        ))
    }
}

impl From<IntervalJoinOutput> for LiveJoinOutput {
    fn from(output: IntervalJoinOutput) -> LiveJoinOutput {
        from_parts((
            output.rows,
            output.late_left,
            output.late_right,
            output.errors,
        ))
    }
}

fn from_parts((rows, late_stream, late_other, errors): Parts) -> LiveJoinOutput {
    LiveJoinOutput {
        rows,
        late_stream,
        late_other,
        errors,
        refused: Vec::new(),
    }
}

/// `output` with the rows of `batch` its errors name, as [`LiveJoinOutput::refused`].
fn with_refused(
    mut output: LiveJoinOutput,
    batch: &RecordBatch,
) -> Result<LiveJoinOutput, EngineError> {
    if output.errors.is_empty() {
        return Ok(output);
    }
    let rows = arrow::array::UInt32Array::from_iter_values(
        output.errors.iter().map(|error| error.row as u32),
    );
    let refused = arrow::compute::take_record_batch(batch, &rows)?;
    let mut fields: Vec<arrow::datatypes::Field> = refused
        .schema()
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    fields.push(arrow::datatypes::Field::new(
        crate::temporal_join::JOIN_LATE_REASON_COLUMN,
        arrow::datatypes::DataType::Utf8,
        false,
    ));
    let mut columns = refused.columns().to_vec();
    columns.push(Arc::new(arrow::array::StringArray::from_iter_values(
        output.errors.iter().map(|error| error.reason.as_str()),
    )));
    output.refused.push(RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )?);
    Ok(output)
}

impl LiveJoin {
    /// The live join of `plan`, a join job, with nothing seen yet.
    ///
    /// # Errors
    ///
    /// A plan without a join; what the joins refuse of their inputs.
    pub fn new(plan: Arc<JobPlan>, options: &LiveJoinOptions) -> Result<LiveJoin, EngineError> {
        let kind = match join_plan(&plan)?.form() {
            JoinForm::AsOf { .. } => {
                Kind::AsOf(Box::new(TemporalJoin::new(temporal_spec(&plan, options)?)?))
            }
            JoinForm::Interval { .. } => interval(&plan, options, None)?,
        };
        Ok(LiveJoin {
            plan,
            options: *options,
            kind,
        })
    }

    /// A live join of `plan` restored from [`LiveJoin::snapshot`]'s bytes.
    ///
    /// # Errors
    ///
    /// As [`LiveJoin::new`]; bytes that are not such a snapshot of this join.
    pub fn restore(
        plan: Arc<JobPlan>,
        options: &LiveJoinOptions,
        bytes: &[u8],
    ) -> Result<LiveJoin, EngineError> {
        let kind = match join_plan(&plan)?.form() {
            JoinForm::AsOf { .. } => Kind::AsOf(Box::new(TemporalJoin::restore(
                temporal_spec(&plan, options)?,
                bytes,
            )?)),
            JoinForm::Interval { .. } => interval(&plan, options, Some(bytes))?,
        };
        Ok(LiveJoin {
            plan,
            options: *options,
            kind,
        })
    }

    /// The whole state as bytes: an AS OF join's [`TemporalJoin::snapshot`]; an interval
    /// join's [`IntervalJoin::snapshot`], then the rows it holds in time order (an Arrow IPC
    /// stream), framed as two parts. Which partitions of the other input are idle is not in
    /// it: a restored join's partitions hold its watermark until said to be at their end
    /// again.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        match &self.kind {
            Kind::AsOf(join) => join.snapshot(),
            Kind::Interval { join, in_order, .. } => Ok(crate::snapshot::join_parts(
                &join.snapshot()?,
                &crate::snapshot::ipc_bytes(&in_order.snapshot()?)?,
            )),
        }
    }

    /// Stream rows of the stream's partition `partition` in.
    ///
    /// # Errors
    ///
    /// A batch of another schema; an unknown partition; Arrow failures.
    pub fn stream(
        &mut self,
        partition: u32,
        batch: &RecordBatch,
    ) -> Result<LiveJoinOutput, EngineError> {
        let batch = join_plan(&self.plan)?.prefilter(batch.clone())?;
        let output: LiveJoinOutput = match &mut self.kind {
            Kind::AsOf(join) => join.process_stream(&batch)?.into(),
            Kind::Interval { join, .. } => join.process_left(partition, &batch)?.into(),
        };
        self.for_windows(with_refused(output, &batch)?)
    }

    /// Rows of the other input's partition `partition` in: a changelog's rows, or the second
    /// stream's (as declared: the join keeps the columns it uses).
    ///
    /// # Errors
    ///
    /// A batch of another schema; an unknown partition; Arrow failures.
    pub fn other(
        &mut self,
        partition: u32,
        batch: &RecordBatch,
    ) -> Result<LiveJoinOutput, EngineError> {
        let (output, seen): (LiveJoinOutput, RecordBatch) = match &mut self.kind {
            Kind::AsOf(join) => (join.process_table(partition, batch)?.into(), batch.clone()),
            Kind::Interval { join, .. } => {
                let rows = join_plan(&self.plan)?.right_rows(batch)?;
                (join.process_right(partition, &rows)?.into(), rows)
            }
        };
        self.for_windows(with_refused(output, &seen)?)
    }

    /// Every partition of the other input has been read to the log's end, as asked after the
    /// stream rows the join holds were read: nothing that was appended before them is still
    /// to come. AS OF: the waiting stream rows are joined now with the table as it stands
    /// ([`TemporalJoin::release_waiting`]). Interval: the other stream's partitions stop
    /// holding the watermark back until they show rows again ([`IntervalJoin::right_at_end`]),
    /// so unmatched `LEFT` rows expire and held rows go.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn other_at_end(&mut self) -> Result<LiveJoinOutput, EngineError> {
        let output = match &mut self.kind {
            Kind::AsOf(join) => join.release_waiting()?.into(),
            Kind::Interval { join, .. } => {
                let mut output = LiveJoinOutput::default();
                for partition in 0..self.options.other_partitions {
                    output.append(join.right_at_end(partition)?.into());
                }
                output
            }
        };
        self.for_windows(output)
    }

    /// The other input has ended (`runnel run` reads it whole first). AS OF: the table's
    /// watermark goes to the end of time and every stream row, waiting or to come, is joined
    /// with the versions it has ([`TemporalJoin::finish`]). Interval: the second stream stops
    /// holding the join's watermark, and each stream row is joined with its stored rows at
    /// once and not stored ([`IntervalJoin::right_ended`]).
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn other_ended(&mut self) -> Result<LiveJoinOutput, EngineError> {
        let output = match &mut self.kind {
            Kind::AsOf(join) => join.finish()?.into(),
            Kind::Interval { join, .. } => join.right_ended()?.into(),
        };
        self.for_windows(output)
    }

    /// The inputs' end: every row the join still holds.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn finish(&mut self) -> Result<LiveJoinOutput, EngineError> {
        let output = match &mut self.kind {
            Kind::AsOf(join) => join.finish()?.into(),
            Kind::Interval { join, .. } => join.finish()?.into(),
        };
        self.for_windows(output)
    }

    /// The other input's watermark: the table's (AS OF), or the join's (interval).
    pub fn other_watermark(&self) -> i64 {
        match &self.kind {
            Kind::AsOf(join) => join.table_watermark(),
            Kind::Interval { join, .. } => join.watermark(),
        }
    }

    /// Interval: the time before which no joined row is still to come (the rows before it are
    /// out, in time order): the windows after the join may take it as their input's progress
    /// (`WindowOperator::advance_partition`), or the last rows' windows would wait for rows
    /// past the interval's upper bound to be let out. `None` before the join has a watermark,
    /// and for an AS OF join, whose rows come out as its stream's do.
    pub fn released_to(&self) -> Option<i64> {
        match &self.kind {
            Kind::AsOf(_) => None,
            Kind::Interval { join, lateness, .. } => (join.watermark() > i64::MIN)
                .then(|| join_plan(&self.plan).ok())
                .flatten()
                .map(|plan| plan.release_before(join.watermark(), *lateness)),
        }
    }

    /// Stream rows the join holds: waiting for the table, or stored (interval).
    pub fn waiting(&self) -> usize {
        match &self.kind {
            Kind::AsOf(join) => join.waiting(),
            Kind::Interval { join, in_order, .. } => join.stored_rows().0 + in_order.len(),
        }
    }

    /// Says that `batches` are the whole other input, to come next as [`LiveJoin::other`]
    /// of partition 0 in this order, then [`LiveJoin::other_ended`] (`runnel run` reads it
    /// whole first). A table makes room for its keys at once, and leaves out the rows of
    /// keys the job's WHERE would drop every version of
    /// ([`TemporalJoin::expect_whole_table`]).
    ///
    /// # Errors
    ///
    /// A batch of another schema; Arrow failures.
    pub fn expect_whole_other(&mut self, batches: &[RecordBatch]) -> Result<(), EngineError> {
        match &mut self.kind {
            Kind::AsOf(join) => join.expect_whole_table(batches),
            Kind::Interval { .. } => Ok(()),
        }
    }

    /// Rows of the other input the join holds: the table's versions, or the second stream's
    /// stored rows.
    pub fn other_rows(&self) -> usize {
        match &self.kind {
            Kind::AsOf(join) => join.table_versions(),
            Kind::Interval { join, .. } => join.stored_rows().1,
        }
    }

    /// Bytes of state.
    pub fn state_bytes(&self) -> usize {
        match &self.kind {
            Kind::AsOf(join) => join.state_bytes(),
            Kind::Interval { join, .. } => join.state_bytes(),
        }
    }

    /// A join output's rows as the window operator takes them: widened to the joined rows;
    /// an interval join's held in time order and let out up to where no earlier one can come.
    fn for_windows(&mut self, mut output: LiveJoinOutput) -> Result<LiveJoinOutput, EngineError> {
        let rows = std::mem::take(&mut output.rows)
            .iter()
            .map(|rows| self.plan.joined_rows(rows))
            .collect::<Result<Vec<_>, _>>()?;
        output.rows = match &mut self.kind {
            Kind::AsOf(_) => rows,
            Kind::Interval {
                join,
                in_order,
                lateness,
            } => {
                for rows in rows {
                    in_order.push(rows)?;
                }
                let up_to = join_plan(&self.plan)?.release_before(join.watermark(), *lateness);
                in_order.release(up_to)?.into_iter().collect()
            }
        };
        Ok(output)
    }
}

fn join_plan(plan: &JobPlan) -> Result<&JoinPlan, EngineError> {
    plan.join()
        .ok_or_else(|| EngineError::Misuse("a live join of a job that joins nothing".to_string()))
}

/// The index of the stream's event time among its columns.
fn stream_time(plan: &JobPlan) -> Result<usize, EngineError> {
    Ok(join_plan(plan)?
        .stream_schema()
        .index_of(plan.event_time())?)
}

fn temporal_spec(
    plan: &JobPlan,
    options: &LiveJoinOptions,
) -> Result<crate::temporal_join::TemporalJoinSpec, EngineError> {
    join_plan(plan)?
        .temporal_join_spec(
            stream_time(plan)?,
            options.other_partitions,
            options.table_out_of_orderness,
            options.stream_out_of_orderness,
        )
        .ok_or_else(|| EngineError::Misuse("an AS OF join's plan".to_string()))
}

/// An interval join with its rows' time order, new (`snapshot` none) or restored.
fn interval(
    plan: &JobPlan,
    options: &LiveJoinOptions,
    snapshot: Option<&[u8]>,
) -> Result<Kind, EngineError> {
    let stream_time = stream_time(plan)?;
    let spec = join_plan(plan)?
        .interval_join_spec(
            stream_time,
            (options.stream_partitions, options.other_partitions),
            options.max_out_of_orderness,
            options.allowed_lateness,
        )
        .ok_or_else(|| EngineError::Misuse("an interval join's plan".to_string()))?;
    let (join, in_order) = match snapshot {
        None => (
            IntervalJoin::new(spec)?,
            TimeOrder::new(plan.stream_schema(), stream_time),
        ),
        Some(bytes) => {
            let (join, held) = crate::snapshot::split_parts(bytes, "interval join")?;
            (
                IntervalJoin::restore(spec, join)?,
                TimeOrder::restore(
                    plan.stream_schema(),
                    stream_time,
                    crate::snapshot::read_ipc(held)?,
                )?,
            )
        }
    };
    Ok(Kind::Interval {
        join: Box::new(join),
        in_order,
        lateness: options.allowed_lateness,
    })
}
