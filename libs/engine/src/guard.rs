//! Recompute leaves out the events the live operator reports as errors, so that one bad
//! event cannot fail a batch run either, and batch and live count the same events.
//!
//! [`guard_table`] wraps the caller's table: each scanned batch goes through the live
//! operator's own row preparation (`prepare_events`: event time present and in range, WHERE,
//! keys, arguments and FILTERs evaluated, rows that fail left out) before DataFusion sees
//! it. The job is compiled a second time against the table's own schema (which may read
//! strings as `Utf8View`), so the guard evaluates the table's batches as they are.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array, new_null_array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Operator;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::error::EngineError;
use crate::operator::prepare_events;
use crate::plan::{JobLimits, JobPlan};
use crate::window::MAX_WINDOW_INTERVAL_MS;

/// The name the guarded table is registered under.
const GUARDED_SUFFIX: &str = "__runnel_guarded";

/// Returns the table `table` of `context` as recompute should read it: when the job has an
/// expression that can fail on an event, a wrapper registered beside it that leaves out the
/// events the live operator would report as errors; otherwise `table` itself.
///
/// # Errors
///
/// An unknown table; a job that does not compile against the table's schema.
pub(crate) async fn guard_table(
    plan: &JobPlan,
    context: &SessionContext,
    table: &str,
) -> Result<String, EngineError> {
    let inner = context.table_provider(table).await?;
    let guard = JobPlan::compile(
        &plan.single_source_sql,
        inner.schema(),
        &plan.event_time,
        // `plan` passed the configured limits already.
        &JobLimits {
            max_windows_per_event: u32::MAX,
            max_window_interval_ms: MAX_WINDOW_INTERVAL_MS,
        },
    )?;
    let expressions = guard_expressions(&guard);
    if expressions.iter().all(cannot_fail) {
        // Only the event time can be bad, and the batch query leaves those out itself.
        return Ok(table.to_string());
    }
    let mut columns: BTreeSet<usize> = expressions
        .iter()
        .flat_map(collect_columns)
        .map(|column| column.index())
        .collect();
    columns.insert(guard.event_time_index);
    let guarded = format!("{table}{GUARDED_SUFFIX}");
    context.register_table(
        guarded.as_str(),
        Arc::new(GuardedTable {
            inner,
            plan: Arc::new(guard),
            columns,
        }),
    )?;
    Ok(guarded)
}

/// Every per-event expression of `plan`: WHERE, the keys, the aggregates' arguments and
/// FILTERs.
/// Every expression the window operator evaluates on a row: WHERE, keys, aggregate
/// arguments and FILTERs.
pub(crate) fn guard_expressions(plan: &JobPlan) -> Vec<Arc<dyn PhysicalExpr>> {
    let mut expressions: Vec<Arc<dyn PhysicalExpr>> = plan.filter.iter().cloned().collect();
    expressions.extend(plan.keys.iter().cloned());
    for aggregate in &plan.aggregates {
        expressions.extend(aggregate.args.iter().cloned());
        expressions.extend(aggregate.filter.iter().cloned());
    }
    expressions
}

/// An expression no row can make fail: a column, a constant, and comparisons (`=`, `<>`,
/// `<`, `<=`, `>`, `>=`, `IS [NOT] DISTINCT FROM`), `AND`, `OR`, `NOT`, `IS [NOT] NULL` and
/// `IN` lists of such. Arithmetic, casts (a comparison of two types has one) and functions
/// may fail on a row: a division by zero, a failed cast, an overflow.
pub(crate) fn cannot_fail(expr: &Arc<dyn PhysicalExpr>) -> bool {
    if expr.downcast_ref::<Column>().is_some() || expr.downcast_ref::<Literal>().is_some() {
        return true;
    }
    if let Some(binary) = expr.downcast_ref::<BinaryExpr>() {
        return matches!(
            binary.op(),
            Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
                | Operator::IsDistinctFrom
                | Operator::IsNotDistinctFrom
                | Operator::And
                | Operator::Or
        ) && cannot_fail(binary.left())
            && cannot_fail(binary.right());
    }
    (expr.downcast_ref::<NotExpr>().is_some()
        || expr.downcast_ref::<IsNullExpr>().is_some()
        || expr.downcast_ref::<IsNotNullExpr>().is_some()
        || expr.downcast_ref::<InListExpr>().is_some())
        && expr.children().into_iter().all(cannot_fail)
}

/// The caller's table, read through the live operator's row preparation.
#[derive(Debug)]
struct GuardedTable {
    inner: Arc<dyn TableProvider>,
    /// The job, compiled against `inner`'s schema.
    plan: Arc<JobPlan>,
    /// The columns the guard evaluates.
    columns: BTreeSet<usize>,
}

#[async_trait::async_trait]
impl TableProvider for GuardedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        let schema = self.inner.schema();
        let wanted: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        // What the query wants and what the guard evaluates, ascending.
        let read: Vec<usize> = self
            .columns
            .iter()
            .copied()
            .chain(wanted.iter().copied())
            .collect::<BTreeSet<usize>>()
            .into_iter()
            .collect();
        let inner = self.inner.scan(state, Some(&read), &[], None).await?;
        let output = Arc::new(schema.project(&wanted)?);
        // The columns the scan does not read are nulls in the batches the guard evaluates.
        let nullable = Arc::new(arrow::datatypes::Schema::new(
            schema
                .fields()
                .iter()
                .map(|field| field.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let scan = Arc::new(GuardedScan {
            plan: Arc::clone(&self.plan),
            table_schema: nullable,
            at: read.clone(),
            output_columns: wanted
                .iter()
                .map(|column| read.iter().position(|read| read == column).unwrap_or(0))
                .collect(),
            output: Arc::clone(&output),
        });
        let partitions = (0..inner.output_partitioning().partition_count())
            .map(|partition| {
                Arc::new(GuardedPartition {
                    inner: Arc::clone(&inner),
                    partition,
                    scan: Arc::clone(&scan),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        crate::recompute::partition_streams_exec(output, partitions)
    }
}

/// What every partition of one scan shares.
#[derive(Debug)]
struct GuardedScan {
    plan: Arc<JobPlan>,
    /// The table's schema, every column nullable.
    table_schema: SchemaRef,
    /// The table column of each column the inner scan yields.
    at: Vec<usize>,
    /// The inner scan's column of each output column.
    output_columns: Vec<usize>,
    output: SchemaRef,
}

impl GuardedScan {
    /// Leaves out the rows the live operator would report as errors.
    fn guard(&self, batch: RecordBatch) -> DataFusionResult<RecordBatch> {
        let n_rows = batch.num_rows();
        // The table's whole schema, with the columns the scan did not read as nulls (no
        // guarded expression reads them).
        let columns: Vec<ArrayRef> = self
            .table_schema
            .fields()
            .iter()
            .enumerate()
            .map(
                |(column, field)| match self.at.iter().position(|at| *at == column) {
                    Some(index) => Arc::clone(batch.column(index)),
                    None => new_null_array(field.data_type(), n_rows),
                },
            )
            .collect();
        let whole = RecordBatch::try_new(Arc::clone(&self.table_schema), columns)?;
        let mut errors = Vec::new();
        let prepared = prepare_events(&self.plan, 0, &whole, &mut errors)
            .map_err(|error| DataFusionError::External(Box::new(error)))?;
        let batch = batch.project(&self.output_columns)?;
        let batch = if errors.is_empty() && prepared.input_rows.len() == n_rows {
            batch
        } else {
            let rows = UInt32Array::from(prepared.input_rows);
            take_record_batch(&batch, &rows)?
        };
        Ok(RecordBatch::try_new(
            Arc::clone(&self.output),
            batch.columns().to_vec(),
        )?)
    }
}

/// One partition of the inner scan, guarded.
#[derive(Debug)]
struct GuardedPartition {
    inner: Arc<dyn ExecutionPlan>,
    partition: usize,
    scan: Arc<GuardedScan>,
}

impl PartitionStream for GuardedPartition {
    fn schema(&self) -> &SchemaRef {
        &self.scan.output
    }

    fn execute(&self, context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = Arc::clone(&self.scan.output);
        let stream = match self.inner.execute(self.partition, context) {
            Ok(stream) => stream,
            Err(error) => {
                return Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::once(async move { Err(error) }),
                ));
            }
        };
        let scan = Arc::clone(&self.scan);
        Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.map(move |batch| batch.and_then(|batch| scan.guard(batch))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    /// Whether the WHERE `condition` of a job over clicks can fail on no row.
    fn where_cannot_fail(condition: &str) -> bool {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_time", DataType::Int64, false),
            Field::new("page", DataType::Utf8, true),
            Field::new("duration_ms", DataType::Int64, true),
        ]));
        let sql = format!(
            "SELECT window_start, window_end, COUNT(*) AS n \
             FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) WHERE {condition} \
             GROUP BY window_start, window_end"
        );
        let plan =
            JobPlan::compile(&sql, schema, "event_time", &JobLimits::default()).expect("compiles");
        cannot_fail(plan.filter.as_ref().expect("a WHERE"))
    }

    #[test]
    fn comparisons_of_columns_and_constants_cannot_fail_arithmetic_and_casts_can() {
        assert!(where_cannot_fail("duration_ms = 10"));
        assert!(where_cannot_fail(
            "page IN ('a', 'b') AND NOT (duration_ms >= 5 OR page IS NULL) AND page <> 'c'"
        ));
        assert!(!where_cannot_fail("100 / duration_ms > 1"));
        assert!(!where_cannot_fail("CAST(page AS BIGINT) > 1"));
        assert!(!where_cannot_fail("page = 'a' AND duration_ms + 1 > 2"));
    }
}
