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
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{SortOptions, concat, filter_record_batch, not, nullif};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Column, DFSchema};
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::SessionContext;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt, TryFutureExt};
use hashbrown::HashSet;

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
        // A filter DataFusion cannot plan over the rows read is left to the job's WHERE.
        let filter = self.filter.as_ref().and_then(|(expr, _)| {
            let schema = DFSchema::try_from(rows.schema().as_ref().clone()).ok()?;
            state.create_physical_expr(expr.clone(), &schema).ok()
        });
        let rows = match &filter {
            Some(filter) => KeyFilter::plan(rows, at(self.key), Arc::clone(filter))?,
            None => rows,
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
        crate::recompute::partition_streams_exec(output, partitions)
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
        let same_key =
            crate::join_plan::nulls_as_false(&eq(batch.column(self.key), &following(self.key)?)?);
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
        match self
            .filter
            .as_ref()
            .and_then(|filter| kept(filter.as_ref(), batch))
        {
            Some(kept) => Ok(filter_record_batch(&versions, &kept)?),
            None => Ok(versions),
        }
    }
}

/// The rows of `batch` `filter` holds for; `None` for all of them, or when it fails on the
/// batch (the job's WHERE then drops the joined rows, or reports them).
fn kept(filter: &dyn PhysicalExpr, batch: &RecordBatch) -> Option<BooleanArray> {
    crate::join_plan::filter_holds(filter, batch)
        .filter(|kept| kept.true_count() < batch.num_rows())
}

/// The keys (row format) of the changelog rows a filter keeps: any other key's versions
/// all go, so its rows need no sorting.
#[derive(Debug)]
struct KeptKeys {
    keys: HashSet<Box<[u8]>>,
    /// The keys' share of the memory pool, held as long as they are.
    _reservation: MemoryReservation,
}

/// What a [`KeyFilter`]'s first pass found: the kept keys, or `None` to keep every row.
type KeptKeysResult = Result<Option<Arc<KeptKeys>>, Arc<DataFusionError>>;

/// The changelog's rows, without those of keys no row of which the filter keeps: a first
/// pass over the rows finds the keys it keeps (all of a batch it fails on), a second reads
/// the rows again and leaves out the others. Where the filter keeps a few keys (q3 of
/// `scripts/bench-joins.sh`: 60,000 of a million), the sort then has that many rows. The
/// first pass gives up, keeping every row, once it has seen [`KEY_FILTER_PROBE_ROWS`] rows
/// and the filter kept more than half, or when the pool has no room for the keys.
#[derive(Debug)]
struct KeyFilter {
    rows: Arc<dyn ExecutionPlan>,
    /// The key column of `rows`.
    key: usize,
    filter: Arc<dyn PhysicalExpr>,
    /// The first pass, started by the first partition to run, awaited by every one.
    kept_keys: OnceLock<Shared<BoxFuture<'static, KeptKeysResult>>>,
}

/// Rows a [`KeyFilter`]'s first pass reads before it may give up.
const KEY_FILTER_PROBE_ROWS: usize = 100_000;

impl KeyFilter {
    /// `rows` without those of keys no row of which `filter` keeps, in as many partitions.
    fn plan(
        rows: Arc<dyn ExecutionPlan>,
        key: usize,
        filter: Arc<dyn PhysicalExpr>,
    ) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
        let schema = rows.schema();
        let n_partitions = rows.properties().partitioning.partition_count();
        let key_filter = Arc::new(KeyFilter {
            rows,
            key,
            filter,
            kept_keys: OnceLock::new(),
        });
        let partitions = (0..n_partitions)
            .map(|partition| {
                Arc::new(KeyFilterPartition {
                    key_filter: Arc::clone(&key_filter),
                    partition,
                    schema: Arc::clone(&schema),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        crate::recompute::partition_streams_exec(schema, partitions)
    }

    /// The first pass, shared by every partition.
    fn kept_keys(
        self: &Arc<Self>,
        context: Arc<TaskContext>,
    ) -> Shared<BoxFuture<'static, KeptKeysResult>> {
        self.kept_keys
            .get_or_init(|| {
                let key_filter = Arc::clone(self);
                async move { key_filter.find_kept_keys(context).await.map_err(Arc::new) }
                    .boxed()
                    .shared()
            })
            .clone()
    }

    /// Reads every row once for the keys the filter keeps; `None` to keep every row.
    async fn find_kept_keys(
        &self,
        context: Arc<TaskContext>,
    ) -> DataFusionResult<Option<Arc<KeptKeys>>> {
        let reservation =
            MemoryConsumer::new("changelog key filter").register(context.memory_pool());
        let converter = self.key_converter()?;
        let mut keys = HashSet::new();
        let (mut n_rows, mut n_kept) = (0usize, 0usize);
        for partition in 0..self.rows.properties().partitioning.partition_count() {
            let mut batches = self.rows.execute(partition, Arc::clone(&context))?;
            while let Some(batch) = batches.next().await {
                let batch = batch?;
                let kept = kept(self.filter.as_ref(), &batch);
                let key_rows = converter.convert_columns(&[Arc::clone(batch.column(self.key))])?;
                let mut added = 0;
                for row in 0..batch.num_rows() {
                    if kept
                        .as_ref()
                        .is_none_or(|kept| kept.is_valid(row) && kept.value(row))
                    {
                        n_kept += 1;
                        let key = key_rows.row(row);
                        if !keys.contains(key.as_ref()) {
                            added += key.as_ref().len() + KEPT_KEY_OVERHEAD;
                            keys.insert(key.as_ref().into());
                        }
                    }
                }
                n_rows += batch.num_rows();
                let kept_most = n_rows >= KEY_FILTER_PROBE_ROWS && 2 * n_kept > n_rows;
                if kept_most || reservation.try_grow(added).is_err() {
                    return Ok(None);
                }
            }
        }
        Ok(Some(Arc::new(KeptKeys {
            keys,
            _reservation: reservation,
        })))
    }

    fn key_converter(&self) -> DataFusionResult<RowConverter> {
        let key_type = self.rows.schema().field(self.key).data_type().clone();
        Ok(RowConverter::new(vec![SortField::new(key_type)])?)
    }

    /// The rows of `batch` of a kept key.
    fn keep(&self, kept_keys: &KeptKeys, batch: RecordBatch) -> DataFusionResult<RecordBatch> {
        let key_rows = self
            .key_converter()?
            .convert_columns(&[Arc::clone(batch.column(self.key))])?;
        let kept: BooleanArray = (0..batch.num_rows())
            .map(|row| Some(kept_keys.keys.contains(key_rows.row(row).as_ref())))
            .collect();
        Ok(filter_record_batch(&batch, &kept)?)
    }
}

/// Bytes a kept key takes besides its own: its box and its place in the set.
const KEPT_KEY_OVERHEAD: usize = 24;

/// One partition of a [`KeyFilter`]'s second pass.
#[derive(Debug)]
struct KeyFilterPartition {
    key_filter: Arc<KeyFilter>,
    partition: usize,
    schema: SchemaRef,
}

impl PartitionStream for KeyFilterPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let key_filter = Arc::clone(&self.key_filter);
        let partition = self.partition;
        let rows = async move {
            let kept_keys = key_filter
                .kept_keys(Arc::clone(&context))
                .await
                .map_err(DataFusionError::Shared)?;
            let rows = key_filter.rows.execute(partition, context)?;
            Ok::<_, DataFusionError>(rows.map(move |batch| match &kept_keys {
                Some(kept_keys) => batch.and_then(|batch| key_filter.keep(kept_keys, batch)),
                None => batch,
            }))
        }
        .try_flatten_stream();
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            rows,
        ))
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
    fn a_key_the_filter_keeps_no_version_of_goes_and_the_others_keep_their_ends() {
        // k2's and the null key's only versions are in `a`; k1's in `a` still end the ones
        // before them.
        check(
            &CHANGES,
            Some("state <> 'a'"),
            &[
                version(Some("k1"), 10, Some(10), 2, "c"),
                version(Some("k1"), 20, Some(30), 3, "b"),
            ],
        );
    }

    #[test]
    fn the_key_filter_leaves_out_the_rows_of_keys_it_keeps_no_row_of() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        // The rows out of a key filter `filter_sql` over `n` changes of keys `k0`, `k1`,
        // ... (`n_keys` of them, in turn).
        let kept_rows = |n: usize, n_keys: usize, filter_sql: &str| -> usize {
            runtime.block_on(async {
                let context =
                    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
                let keys =
                    StringArray::from_iter_values((0..n).map(|i| format!("k{}", i % n_keys)));
                let changelog = RecordBatch::try_from_iter([("key", Arc::new(keys) as ArrayRef)])
                    .expect("changelog");
                context
                    .register_batch("changelog", changelog)
                    .expect("register the changelog");
                let rows = context
                    .table("changelog")
                    .await
                    .expect("table")
                    .create_physical_plan()
                    .await
                    .expect("plan");
                let schema = DFSchema::try_from(rows.schema().as_ref().clone()).expect("schema");
                let filter = context
                    .create_physical_expr(
                        context.parse_sql_expr(filter_sql, &schema).expect("parse"),
                        &schema,
                    )
                    .expect("filter");
                let filtered = KeyFilter::plan(rows, 0, filter).expect("key filter");
                datafusion::physical_plan::collect(filtered, context.task_ctx())
                    .await
                    .expect("collect")
                    .iter()
                    .map(RecordBatch::num_rows)
                    .sum()
            })
        };
        assert_eq!(kept_rows(100, 4, "key = 'k0'"), 25, "k0's rows alone");
        assert_eq!(kept_rows(100, 4, "key <> 'k3'"), 75, "all but k3's");
        // Where the filter keeps more than half the rows it has seen, every row goes on.
        assert_eq!(
            kept_rows(KEY_FILTER_PROBE_ROWS, 4, "key <> 'k3'"),
            KEY_FILTER_PROBE_ROWS
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
