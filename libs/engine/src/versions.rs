//! A table's versions for the recompute's AS OF join: each changelog row with the interval
//! of event time it is valid in, from its own time to the next row of its key.
//!
//! [`register_versions`] registers a [`VersionsTable`]. Its scan partitions the changelog by
//! key, sorts each partition by key, time and log order (DataFusion's sort, which spills),
//! and finds each row's end in its sorted partition a batch at a time, by comparing each
//! key with the next row's (`VersionEnds`), holding back one batch whose last row waits for
//! the next batch's first. A window function over the whole changelog (`LEAD` ordered by
//! key, time and order) found the same ends, but DataFusion evaluated it row by row as
//! scalar values, after merging the sorted partitions into one: on one thread, most of
//! q3's recompute in `scripts/bench-joins.sh`.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{
    SortOptions, concat, filter_record_batch, not, nullif, prep_null_mask_filter,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, DFSchema};
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::SessionContext;
use futures::StreamExt;

use crate::error::EngineError;

/// The column of a version's first valid time, epoch milliseconds.
pub(crate) const VALID_FROM: &str = "__runnel_from";
/// The column of the time a version stops being valid (the next row of its key's), epoch
/// milliseconds; null for a key's last row.
pub(crate) const VALID_UNTIL: &str = "__runnel_until";

/// How [`register_versions`] reads a changelog.
pub(crate) struct VersionsSpec<'a> {
    /// The changelog's table in the context.
    pub(crate) changelog: &'a str,
    /// Its key column.
    pub(crate) key: &'a str,
    /// Its event time as epoch milliseconds, an SQL expression over its columns.
    pub(crate) time_ms_sql: &'a str,
    /// The column ordering its rows of one key and time (later wins).
    pub(crate) order: &'a str,
    /// SQL over its columns that a version must hold for to be kept: one it does not hold
    /// for still ends the version before it. A batch it fails on is kept whole.
    pub(crate) filter_sql: Option<&'a str>,
}

/// Registers in `context`, under `name`, the versions of the changelog `spec` describes:
/// its columns, then [`VALID_FROM`] and [`VALID_UNTIL`].
///
/// # Errors
///
/// Unknown tables or columns; DataFusion planning errors.
pub(crate) async fn register_versions(
    context: &SessionContext,
    spec: &VersionsSpec<'_>,
    name: &str,
) -> Result<(), EngineError> {
    let rows = context
        .sql(&format!(
            "SELECT *, {time} AS {VALID_FROM} FROM {changelog}",
            time = spec.time_ms_sql,
            changelog = crate::recompute::quote_ident(spec.changelog),
        ))
        .await
        .map_err(|error| EngineError::plan(format!("plan the table's versions: {error}")))?;
    let rows_schema = Arc::new(rows.schema().as_arrow().clone());
    let index_of = |column: &str| {
        crate::join_plan::column_index(&rows_schema, column).ok_or_else(|| {
            EngineError::plan(format!("the table's changelog has no column `{column}`"))
        })
    };
    let (key, from, order) = (
        index_of(spec.key)?,
        index_of(VALID_FROM)?,
        index_of(spec.order)?,
    );
    // A filter DataFusion cannot plan over the changelog is left to the job's WHERE.
    let filter = spec.filter_sql.and_then(|filter_sql| {
        let unqualified = DFSchema::try_from(rows_schema.as_ref().clone()).ok()?;
        let expr = context.parse_sql_expr(filter_sql, &unqualified).ok()?;
        let columns = expr
            .column_refs()
            .iter()
            .map(|column| rows_schema.index_of(&column.name).ok())
            .collect::<Option<Vec<usize>>>()?;
        Some((expr, columns))
    });
    let mut fields: Vec<Field> = rows_schema
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    fields.push(Field::new(VALID_UNTIL, DataType::Int64, true));
    let table = VersionsTable {
        rows: rows.logical_plan().clone(),
        schema: Arc::new(Schema::new(fields)),
        key,
        from,
        order,
        filter,
    };
    context.register_table(name, Arc::new(table))?;
    Ok(())
}

/// A changelog's rows, each with its valid interval of event time.
#[derive(Debug)]
struct VersionsTable {
    /// The changelog's rows with [`VALID_FROM`], unsorted.
    rows: LogicalPlan,
    /// `rows`' columns, then [`VALID_UNTIL`].
    schema: SchemaRef,
    /// The key, [`VALID_FROM`] and order columns in `rows`.
    key: usize,
    from: usize,
    order: usize,
    /// The filter a version must hold for (planned over `rows`' columns, unqualified), and
    /// the columns it reads.
    filter: Option<(Expr, Vec<usize>)>,
}

#[async_trait::async_trait]
impl TableProvider for VersionsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        let until = self.schema.fields().len() - 1;
        let wanted: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        // What the query wants, what the ends and the sort read, and what the filter reads,
        // ascending: the sorted rows' columns.
        let read: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|&column| column != until)
            .chain([self.key, self.from, self.order])
            .chain(self.filter.iter().flat_map(|(_, columns)| columns.clone()))
            .collect::<BTreeSet<usize>>()
            .into_iter()
            .collect();
        let rows_schema = self.rows.schema();
        let column = |index: usize| Expr::Column(Column::from(rows_schema.qualified_field(index)));
        let rows = LogicalPlanBuilder::from(self.rows.clone())
            .project(read.iter().map(|&index| column(index)))?
            .build()?;
        let rows = state.create_physical_plan(&rows).await?;
        let at = |index: usize| {
            read.iter()
                .position(|&read| read == index)
                .expect("the scan reads every column it uses")
        };
        // A key's rows all in one partition, each partition sorted on its own: no partition
        // waits for a merge of all of them.
        let sort_column = |index: usize| -> Arc<dyn PhysicalExpr> {
            Arc::new(PhysicalColumn::new(
                rows.schema().field(at(index)).name(),
                at(index),
            ))
        };
        let n_partitions = state.config().target_partitions().max(1);
        let partitioned = RepartitionExec::try_new(
            Arc::clone(&rows),
            Partitioning::Hash(vec![sort_column(self.key)], n_partitions),
        )?;
        let ordering = LexOrdering::new([self.key, self.from, self.order].map(|index| {
            PhysicalSortExpr::new(
                sort_column(index),
                SortOptions {
                    descending: false,
                    nulls_first: false,
                },
            )
        }))
        .ok_or_else(|| DataFusionError::Internal("no sort order".to_string()))?;
        let sorted: Arc<dyn ExecutionPlan> = Arc::new(
            SortExec::new(ordering, Arc::new(partitioned)).with_preserve_partitioning(true),
        );
        // A filter DataFusion cannot plan over the sorted rows is left to the job's WHERE.
        let filter = self.filter.as_ref().and_then(|(expr, _)| {
            let schema = DFSchema::try_from(sorted.schema().as_ref().clone()).ok()?;
            state.create_physical_expr(expr.clone(), &schema).ok()
        });
        let output = Arc::new(self.schema.project(&wanted)?);
        let ends = Arc::new(VersionEnds {
            key: at(self.key),
            from: at(self.from),
            filter,
            output_columns: wanted
                .iter()
                .map(|&index| (index != until).then(|| at(index)))
                .collect(),
            output: Arc::clone(&output),
        });
        let partitions = (0..n_partitions)
            .map(|partition| {
                Arc::new(VersionsPartition {
                    sorted: Arc::clone(&sorted),
                    partition,
                    ends: Arc::clone(&ends),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            output,
            partitions,
            None,
            Vec::<LexOrdering>::new(),
            false,
            None,
        )?))
    }
}

/// The versions of one partition of a scan: its rows of the changelog, each given its end.
#[derive(Debug)]
struct VersionsPartition {
    /// The changelog's rows the scan reads, partitioned by key, each partition sorted by
    /// key, time and order.
    sorted: Arc<dyn ExecutionPlan>,
    /// The partition of `sorted` this one reads.
    partition: usize,
    ends: Arc<VersionEnds>,
}

/// How a scan makes versions of the sorted rows.
#[derive(Debug)]
struct VersionEnds {
    /// The key and [`VALID_FROM`] columns of `sorted`.
    key: usize,
    from: usize,
    /// The filter a version must hold for, over `sorted`'s columns.
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// Each output column: a column of `sorted`, or `None` for [`VALID_UNTIL`].
    output_columns: Vec<Option<usize>>,
    output: SchemaRef,
}

impl VersionEnds {
    /// The versions of the sorted rows `batch` (not empty), whose next row is `next`'s
    /// first (`None` at the end): each with its end, those the filter drops left out.
    fn versions(
        &self,
        batch: &RecordBatch,
        next: Option<&RecordBatch>,
    ) -> DataFusionResult<RecordBatch> {
        let n_rows = batch.num_rows();
        let following = |column: usize| -> DataFusionResult<ArrayRef> {
            let array = batch.column(column);
            let after = match next {
                Some(next) => next.column(column).slice(0, 1),
                None => arrow::array::new_null_array(array.data_type(), 1),
            };
            Ok(concat(&[
                array.slice(1, n_rows - 1).as_ref(),
                after.as_ref(),
            ])?)
        };
        // A row's version lasts until the next row's time where that row has its key (a
        // null key is no key: its rows never match anything).
        let same_key = eq(batch.column(self.key), &following(self.key)?)?;
        let same_key = match same_key.nulls() {
            Some(_) => prep_null_mask_filter(&same_key),
            None => same_key,
        };
        let until = nullif(following(self.from)?.as_ref(), &not(&same_key)?)?;
        let columns: Vec<ArrayRef> = self
            .output_columns
            .iter()
            .map(|column| match column {
                Some(column) => Arc::clone(batch.column(*column)),
                None => Arc::clone(&until),
            })
            .collect();
        let versions = RecordBatch::try_new_with_options(
            Arc::clone(&self.output),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n_rows)),
        )?;
        match self.kept(batch) {
            Some(kept) => Ok(filter_record_batch(&versions, &kept)?),
            None => Ok(versions),
        }
    }

    /// The rows of `batch` the filter holds for; `None` for all of them, or when it fails
    /// on the batch (the job's WHERE then drops the joined rows, or reports them).
    fn kept(&self, batch: &RecordBatch) -> Option<BooleanArray> {
        let value = self.filter.as_ref()?.evaluate(batch).ok()?;
        let kept = value.into_array(batch.num_rows()).ok()?;
        let kept = kept.as_any().downcast_ref::<BooleanArray>()?;
        (kept.true_count() < batch.num_rows()).then(|| kept.clone())
    }
}

impl PartitionStream for VersionsPartition {
    fn schema(&self) -> &SchemaRef {
        &self.ends.output
    }

    fn execute(&self, context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let output = Arc::clone(&self.ends.output);
        let sorted = match self.sorted.execute(self.partition, context) {
            Ok(sorted) => sorted,
            Err(error) => {
                return Box::pin(RecordBatchStreamAdapter::new(
                    output,
                    futures::stream::once(async move { Err(error) }),
                ));
            }
        };
        let ends = Arc::clone(&self.ends);
        // The batch whose last row waits for the next batch's first.
        let mut held: Option<RecordBatch> = None;
        let versions = sorted
            .map(Some)
            .chain(futures::stream::once(async { None }))
            .filter_map(move |item| {
                let versions = match item {
                    Some(Ok(batch)) if batch.num_rows() == 0 => None,
                    Some(Ok(batch)) => held
                        .replace(batch)
                        .map(|earlier| ends.versions(&earlier, held.as_ref())),
                    Some(Err(error)) => Some(Err(error)),
                    None => held.take().map(|last| ends.versions(&last, None)),
                };
                futures::future::ready(versions)
            });
        Box::pin(RecordBatchStreamAdapter::new(output, versions))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array, StringArray, UInt64Array};
    use arrow::datatypes::{Int64Type, UInt64Type};
    use datafusion::prelude::SessionConfig;

    use super::*;

    /// A changelog row: key, time, order, state.
    type Change = (Option<&'static str>, i64, u64, &'static str);
    /// A version: key, from, until, order, state.
    type Version = (Option<String>, i64, Option<i64>, u64, String);

    /// The versions of `changes` kept by `filter_sql`, in key, time and order, read in
    /// batches of two rows (so that ends cross batches) in two partitions.
    #[track_caller]
    fn check(changes: &[Change], filter_sql: Option<&str>, expected: &[Version]) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let versions = runtime.block_on(async {
            let context = SessionContext::new_with_config(
                SessionConfig::new()
                    .with_batch_size(2)
                    .with_target_partitions(2),
            );
            let changelog = RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("key", DataType::Utf8, true),
                    Field::new("time", DataType::Int64, false),
                    Field::new("seq", DataType::UInt64, false),
                    Field::new("state", DataType::Utf8, false),
                ])),
                vec![
                    Arc::new(StringArray::from_iter(changes.iter().map(|c| c.0))),
                    Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.1))),
                    Arc::new(UInt64Array::from_iter_values(changes.iter().map(|c| c.2))),
                    Arc::new(StringArray::from_iter_values(changes.iter().map(|c| c.3))),
                ],
            )
            .expect("changelog");
            context
                .register_batch("changelog", changelog)
                .expect("register the changelog");
            let spec = VersionsSpec {
                changelog: "changelog",
                key: "key",
                time_ms_sql: "\"time\"",
                order: "seq",
                filter_sql,
            };
            register_versions(&context, &spec, "versions")
                .await
                .expect("register the versions");
            context
                .sql(&format!(
                    "SELECT key, {VALID_FROM}, {VALID_UNTIL}, seq, state FROM versions"
                ))
                .await
                .expect("plan")
                .collect()
                .await
                .expect("collect")
        });
        let mut actual = Vec::new();
        for batch in &versions {
            let keys = batch.column(0).as_string::<i32>();
            let from = batch.column(1).as_primitive::<Int64Type>();
            let until = batch.column(2).as_primitive::<Int64Type>();
            let order = batch.column(3).as_primitive::<UInt64Type>();
            let states = batch.column(4).as_string::<i32>();
            for row in 0..batch.num_rows() {
                actual.push((
                    keys.is_valid(row).then(|| keys.value(row).to_string()),
                    from.value(row),
                    until.is_valid(row).then(|| until.value(row)),
                    order.value(row),
                    states.value(row).to_string(),
                ));
            }
        }
        // Partitions come in any order; a null key last, as the sort puts it.
        actual
            .sort_by(|a, b| (a.0.is_none(), &a.0, a.1, a.3).cmp(&(b.0.is_none(), &b.0, b.1, b.3)));
        assert_eq!(actual, expected);
    }

    fn version(
        key: Option<&str>,
        from: i64,
        until: Option<i64>,
        order: u64,
        state: &str,
    ) -> Version {
        (
            key.map(str::to_string),
            from,
            until,
            order,
            state.to_string(),
        )
    }

    /// Rows out of order: k1 at 10 (twice, the later in the log winning), 20 and 30; k2 at
    /// 15; a null key at 5.
    const CHANGES: [Change; 6] = [
        (Some("k1"), 20, 3, "b"),
        (None, 5, 0, "a"),
        (Some("k2"), 15, 1, "a"),
        (Some("k1"), 10, 4, "a"),
        (Some("k1"), 30, 5, "a"),
        (Some("k1"), 10, 2, "c"),
    ];

    #[test]
    fn a_version_lasts_until_the_next_row_of_its_key() {
        check(
            &CHANGES,
            None,
            &[
                // Of two rows at one time, the earlier in the log is valid for no time.
                version(Some("k1"), 10, Some(10), 2, "c"),
                version(Some("k1"), 10, Some(20), 4, "a"),
                version(Some("k1"), 20, Some(30), 3, "b"),
                version(Some("k1"), 30, None, 5, "a"),
                version(Some("k2"), 15, None, 1, "a"),
                // A null key has no next row of its key.
                version(None, 5, None, 0, "a"),
            ],
        );
    }

    #[test]
    fn a_version_the_filter_drops_still_ends_the_one_before() {
        check(
            &CHANGES,
            Some("state <> 'b'"),
            &[
                version(Some("k1"), 10, Some(10), 2, "c"),
                version(Some("k1"), 10, Some(20), 4, "a"),
                version(Some("k1"), 30, None, 5, "a"),
                version(Some("k2"), 15, None, 1, "a"),
                version(None, 5, None, 0, "a"),
            ],
        );
    }

    #[test]
    fn a_filter_that_fails_keeps_every_version() {
        // Casting `a` to a number fails on every batch.
        let every: Vec<Version> = [
            version(Some("k1"), 10, Some(10), 2, "c"),
            version(Some("k1"), 10, Some(20), 4, "a"),
            version(Some("k1"), 20, Some(30), 3, "b"),
            version(Some("k1"), 30, None, 5, "a"),
            version(Some("k2"), 15, None, 1, "a"),
            version(None, 5, None, 0, "a"),
        ]
        .into();
        check(&CHANGES, Some("CAST(state AS BIGINT) > 0"), &every);
        // A filter that does not plan over the changelog is no filter.
        check(&CHANGES, Some("no_such_column = 1"), &every);
    }
}
