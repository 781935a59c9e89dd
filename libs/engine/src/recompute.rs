//! Recompute (the Lambda batch layer): the job as a plain DataFusion batch plan over a
//! table the caller registered (e.g. the Parquet history), every event counted, no
//! lateness cut-off.
//!
//! The job's SQL is rewritten: `FROM TUMBLE|HOP|SESSION(stream, ...)` becomes a subquery
//! over the table that applies the job's WHERE and assigns windows as expressions, with the
//! same integer millisecond arithmetic as the live operator (hops through a cross join with
//! the window offsets, sessions by a sort-based pass: `LAG` and a running `SUM` over each
//! key ordered by event time). The key expressions and window start are carried as hidden
//! columns, so results get the same `_key` as live ones.

use std::num::NonZeroUsize;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::concat_batches;
use arrow::datatypes::Int64Type;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result as DataFusionResult;
use datafusion::execution::disk_manager::DiskManagerBuilder;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryLimit, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{self, GroupByExpr, SetExpr, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use futures::StreamExt;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use crate::error::EngineError;
use crate::join_plan::JoinForm;
use crate::operator::render_keys;
use crate::plan::{JobPlan, WINDOW_END, WINDOW_START, parse_job_sql};
use crate::versions::{VALID_FROM, VALID_UNTIL, VersionsSpec, register_versions};
use crate::window::{EVENT_TIME_RANGE_MS, WindowSpec};

/// The batch query's column of a key's values: this and the key's number.
pub(crate) const KEY_PREFIX: &str = "__runnel_k";
/// The batch query's column of the window start.
pub(crate) const WINDOW_START_ALIAS: &str = "__runnel_ws";
const WINDOW_END_ALIAS: &str = "__runnel_we";
/// The name of a join's table versions: the joined rows' name and this.
const VERSIONS_SUFFIX: &str = "__runnel_versions";

/// Returns the DataFusion configuration recompute runs best with: twice as many target
/// partitions as cores and 32768-row batches.
///
/// Measured with the window bench (`recompute_*`, 10M events, 2 cores), against
/// DataFusion's defaults in the same run: tumbling +18-27%, sessions +27-30%.
pub fn recompute_config() -> SessionConfig {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    SessionConfig::new()
        .with_target_partitions(2 * cores)
        .with_batch_size(32_768)
}

/// Returns the DataFusion runtime a recompute runs in: a memory pool of `memory_limit`
/// bytes, shared fairly among the plan's operators that can spill (sorts, aggregations),
/// which spill to files in the operating system's temporary directory when their share is
/// used up. A recompute whose unspillable state does not fit fails with DataFusion's
/// "resources exhausted", naming the largest consumers.
///
/// Share one runtime among the contexts of one recompute, so that the limit holds for all.
///
/// # Errors
///
/// DataFusion failing to set up its temporary directory.
pub fn recompute_runtime(memory_limit: usize) -> Result<Arc<RuntimeEnv>, EngineError> {
    let pool = TrackConsumersPool::new(
        FairSpillPool::new(memory_limit),
        NonZeroUsize::new(5).expect("5 is not zero"),
    );
    // A sort merges at most this many spilled runs at once (more in several passes), so that
    // merging, which holds a batch of each run and cannot spill, stays within the pool.
    const SPILL_MERGE_FAN_IN: usize = 8;
    Ok(RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(pool))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_max_spill_merge_fan_in(SPILL_MERGE_FAN_IN),
        )
        .build_arc()?)
}

/// Returns a context for a recompute in `runtime` (from [`recompute_runtime`]) with
/// `config`, where each sort keeps back, for merging its spilled runs, DataFusion's 10 MiB or
/// a sixteenth of a partition's share of the pool if that is less (a plan sorts more than
/// once per partition, and those reservations cannot spill), so that a small pool spills
/// instead of failing.
pub fn recompute_context(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionContext {
    const DEFAULT_SORT_RESERVATION: usize = 10 << 20;
    let reservation = match runtime.memory_pool.memory_limit() {
        MemoryLimit::Finite(limit) => {
            DEFAULT_SORT_RESERVATION.min(limit / (16 * config.target_partitions().max(1)))
        }
        MemoryLimit::Infinite | MemoryLimit::Unknown => DEFAULT_SORT_RESERVATION,
    };
    SessionContext::new_with_config_rt(
        config.with_sort_spill_reservation_bytes(reservation),
        runtime,
    )
}

/// Runs `plan` over `table` in `context` and returns its results, in the plan's result
/// schema, each with `_version` 1 and `_final` true, ordered by window start and key.
///
/// # Errors
///
/// Planning or execution errors from DataFusion.
pub async fn recompute(
    plan: &JobPlan,
    context: &SessionContext,
    table: &str,
) -> Result<Vec<RecordBatch>, EngineError> {
    Ok(run_batch(plan, context, table, true)
        .await?
        .into_iter()
        .map(|(results, _)| results)
        .collect())
}

/// [`recompute`], in no particular order (sorting costs a fifth of a tumbling recompute),
/// as one stream per output partition of the plan, so that the caller can consume them in
/// parallel. Each batch comes with its window ends (epoch milliseconds, one per row): a
/// session's end is not in the result columns unless the job selects it.
///
/// # Errors
///
/// Planning or execution errors from DataFusion, up front or in the streams.
pub async fn recompute_windows(
    plan: &JobPlan,
    context: &SessionContext,
    table: &str,
) -> Result<Vec<WindowResults>, EngineError> {
    Ok(window_rows(plan, context, table)
        .await?
        .execute_stream_partitioned()
        .await?
        .into_iter()
        .map(|stream| {
            let (schema, n_keys) = (Arc::clone(&plan.result_schema), plan.keys.len());
            stream
                .map(move |batch| match batch {
                    Ok(batch) => to_results(&schema, n_keys, &batch),
                    Err(error) => Err(EngineError::from(error)),
                })
                .try_filter_map(|results| futures::future::ready(Ok(results)))
                .boxed()
        })
        .collect())
}

/// The batch query's rows of `plan` over `table`, unordered: the user's columns (as the
/// query gives them, e.g. strings as `Utf8View`), then the values of each key
/// (`__runnel_k0`, ...), the window start (`__runnel_ws`) and the window end
/// (`__runnel_we`, epoch milliseconds); no `_key` rendered.
///
/// # Errors
///
/// Planning errors from DataFusion.
pub(crate) async fn window_rows(
    plan: &JobPlan,
    context: &SessionContext,
    table: &str,
) -> Result<DataFrame, EngineError> {
    batch_frame(plan, context, table, false).await
}

/// One output partition of [`recompute_windows`]: results with their window ends.
pub type WindowResults = BoxStream<'static, Result<(RecordBatch, Int64Array), EngineError>>;

async fn batch_frame(
    plan: &JobPlan,
    context: &SessionContext,
    table: &str,
    ordered: bool,
) -> Result<DataFrame, EngineError> {
    // One bad event must not fail the run: read the table through the live operator's row
    // preparation, which leaves it out (live sends it to the late output).
    let table = crate::guard::guard_table(plan, context, table).await?;
    let sql = batch_sql(plan, &table, ordered)?;
    context.register_udf(ScalarUDF::from(WindowFloor::new()));
    context
        .sql(&sql)
        .await
        .map_err(|error| EngineError::plan(format!("plan the recompute query: {error}")))
}

async fn run_batch(
    plan: &JobPlan,
    context: &SessionContext,
    table: &str,
    ordered: bool,
) -> Result<Vec<(RecordBatch, Int64Array)>, EngineError> {
    let batches = batch_frame(plan, context, table, ordered)
        .await?
        .collect()
        .await?;
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        results.extend(to_results(&plan.result_schema, plan.keys.len(), &batch)?);
    }
    if results.len() > 1 {
        let (batches, ends): (Vec<RecordBatch>, Vec<Int64Array>) = results.into_iter().unzip();
        let merged = concat_batches(&plan.result_schema, &batches)?;
        let ends: Vec<&dyn Array> = ends.iter().map(|ends| ends as &dyn Array).collect();
        let ends = arrow::compute::concat(&ends)?;
        return Ok(vec![(merged, ends.as_primitive::<Int64Type>().clone())]);
    }
    Ok(results)
}

/// A batch of the batch query as results in the plan's result `schema` (of `n_keys` keys), with `_version` 1 and
/// `_final` true, and the window ends; `None` for an empty batch.
fn to_results(
    schema: &SchemaRef,
    n_keys: usize,
    batch: &RecordBatch,
) -> Result<Option<(RecordBatch, Int64Array)>, EngineError> {
    let n_rows = batch.num_rows();
    if n_rows == 0 {
        return Ok(None);
    }
    let n_user = schema.fields().len() - 4;
    // The table may hold other physical types than the stream schema the plan was compiled
    // for (DataFusion reads Parquet strings as Utf8View); results are cast to the plan's
    // result types, so batch and live views share one schema.
    let mut columns: Vec<ArrayRef> = batch.columns()[..n_user]
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<_, _>>()?;
    let keys = &batch.columns()[n_user..n_user + n_keys];
    columns.push(Arc::new(render_keys(keys, n_rows)?));
    columns.push(arrow::compute::cast(
        batch.column(n_user + n_keys),
        schema.field(n_user + 1).data_type(),
    )?);
    columns.push(Arc::new(UInt32Array::from(vec![1u32; n_rows])));
    columns.push(Arc::new(BooleanArray::from(vec![true; n_rows])));
    let ends = arrow::compute::cast(batch.column(n_user + n_keys + 1), &DataType::Int64)?;
    Ok(Some((
        RecordBatch::try_new(Arc::clone(schema), columns)?,
        ends.as_primitive::<Int64Type>().clone(),
    )))
}

/// The name of [`WindowFloor`] in the batch query.
const WINDOW_FLOOR: &str = "__runnel_window_floor";

/// `__runnel_window_floor(ts, step)`: the largest multiple of `step` (a positive constant) at
/// or before `ts` (epoch milliseconds), in one pass, as the live operator floors; DataFusion's
/// `ts - ((ts % step) + step) % step` took four (a sixth of a tumbling recompute's time).
#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFloor {
    signature: Signature,
}

impl WindowFloor {
    fn new() -> Self {
        WindowFloor {
            signature: Signature::exact(
                vec![DataType::Int64, DataType::Int64],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for WindowFloor {
    fn name(&self) -> &str {
        WINDOW_FLOOR
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let [times, step] = args.args.as_slice() else {
            return exec_err!("{WINDOW_FLOOR} takes an event time and a step");
        };
        let ColumnarValue::Scalar(ScalarValue::Int64(Some(step))) = step else {
            return exec_err!("{WINDOW_FLOOR}'s step is a constant");
        };
        let step = *step;
        if step <= 0 {
            return exec_err!("{WINDOW_FLOOR}'s step is {step}, not positive");
        }
        let floor = |time: i64| {
            time.checked_sub(time.rem_euclid(step)).ok_or_else(|| {
                arrow::error::ArrowError::ComputeError(format!(
                    "the window of event time {time} ms starts before the earliest time"
                ))
            })
        };
        match times {
            ColumnarValue::Array(times) => {
                let Some(times) = times.as_primitive_opt::<Int64Type>() else {
                    return exec_err!("{WINDOW_FLOOR} of {} event times", times.data_type());
                };
                let floored = times.try_unary::<_, Int64Type, _>(floor)?;
                Ok(ColumnarValue::Array(Arc::new(floored)))
            }
            ColumnarValue::Scalar(ScalarValue::Int64(time)) => Ok(ColumnarValue::Scalar(
                ScalarValue::Int64(time.map(floor).transpose()?),
            )),
            ColumnarValue::Scalar(other) => exec_err!("{WINDOW_FLOOR} of {other}"),
        }
    }
}

/// The batch query: the job's SELECT and GROUP BY over a window-assigning subquery.
pub(crate) fn batch_sql(plan: &JobPlan, table: &str, ordered: bool) -> Result<String, EngineError> {
    let parsed = parse_job_sql(&plan.single_source_sql)?;
    let Statement::Query(query) = parsed.statement else {
        return Err(EngineError::plan("a job is a SELECT statement"));
    };
    let SetExpr::Select(select) = *query.body else {
        return Err(EngineError::plan("a job is a single SELECT"));
    };
    let GroupByExpr::Expressions(group_by, _) = &select.group_by else {
        return Err(EngineError::plan("a job lists its GROUP BY keys"));
    };
    let is_window = |expr: &ast::Expr| {
        matches!(expr, ast::Expr::Identifier(ident)
            if ident.value.eq_ignore_ascii_case(WINDOW_START) || ident.value.eq_ignore_ascii_case(WINDOW_END))
    };
    let key_exprs: Vec<String> = group_by
        .iter()
        .filter(|expr| !is_window(expr))
        .map(ToString::to_string)
        .collect();
    let stream = quote_ident(&parsed.stream);
    let table = quote_ident(table);
    let time = quote_ident(&plan.event_time);
    let time_ms = time_ms_sql(
        &time,
        plan.stream_schema.field(plan.event_time_index).data_type(),
    );
    // Events the live operator reports as errors (no event time, or one outside
    // `EVENT_TIME_RANGE_MS`) are not counted here either.
    let (first, last) = (EVENT_TIME_RANGE_MS.start(), EVENT_TIME_RANGE_MS.end());
    let in_range = format!("({time_ms}) BETWEEN {first} AND {last}");
    let filter = match &select.selection {
        Some(selection) => format!(" WHERE {in_range} AND ({selection})"),
        None => format!(" WHERE {in_range}"),
    };
    let events = format!("SELECT *, {time_ms} AS __runnel_ts FROM {table} AS {stream}{filter}");
    let floor = |step: i64| format!("{WINDOW_FLOOR}(__runnel_ts, {step})");
    let windowed = match plan.window {
        WindowSpec::Tumble { size_ms } => format!(
            "SELECT *, to_timestamp_millis({start}) AS {WINDOW_START} FROM ({events}) AS {stream}",
            start = floor(size_ms)
        ),
        WindowSpec::Hop { slide_ms, size_ms } => {
            let offsets: Vec<String> = (0..size_ms / slide_ms)
                .map(|idx| format!("({idx})"))
                .collect();
            let start = format!("({} - __runnel_hop.i * {slide_ms})", floor(slide_ms));
            // The offsets first: a cross join buffers its left side whole and streams its
            // right one, and the events are the big side.
            format!(
                "SELECT {stream}.*, to_timestamp_millis({start}) AS {WINDOW_START} \
                 FROM (VALUES {}) AS __runnel_hop(i) CROSS JOIN ({events}) AS {stream}",
                offsets.join(", ")
            )
        }
        WindowSpec::Session { gap_ms } => {
            let partition = if key_exprs.is_empty() {
                String::new()
            } else {
                format!("PARTITION BY {}", key_exprs.join(", "))
            };
            let starts = format!(
                "SELECT *, CASE WHEN __runnel_ts - LAG(__runnel_ts) OVER ({partition} ORDER BY __runnel_ts) <= {gap_ms} THEN 0 ELSE 1 END AS __runnel_new FROM ({events}) AS {stream}"
            );
            // A session is grouped by its keys and number; its start and end are aggregates
            // of the group (below), not window columns computed for every event.
            format!(
                "SELECT *, SUM(__runnel_new) OVER ({partition} ORDER BY __runnel_ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __runnel_sid FROM ({starts}) AS {stream}"
            )
        }
    };
    // Fixed windows end at start + size: grouping by the start alone hashes one timestamp
    // instead of two, and `window_end` is computed from the start in the projection.
    // Sessions group by their number; their bounds are the group's first and last events.
    let mut projection = select.projection.clone();
    let is_column = |expr: &ast::Expr, name: &str| matches!(expr, ast::Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case(name));
    let (group_by, start, end, end_ms): (Vec<String>, String, String, String) = match plan.window {
        WindowSpec::Session { gap_ms } => (
            group_by
                .iter()
                .filter(|expr| !is_window(expr))
                .map(ToString::to_string)
                .chain(["__runnel_sid".to_string()])
                .collect(),
            "to_timestamp_millis(MIN(__runnel_ts))".to_string(),
            format!("to_timestamp_millis(MAX(__runnel_ts) + {gap_ms})"),
            format!("MAX(__runnel_ts) + {gap_ms}"),
        ),
        WindowSpec::Tumble { size_ms } | WindowSpec::Hop { size_ms, .. } => (
            group_by
                .iter()
                .filter(|expr| !is_column(expr, WINDOW_END))
                .map(ToString::to_string)
                .collect(),
            WINDOW_START.to_string(),
            format!("to_timestamp_millis(arrow_cast({WINDOW_START}, 'Int64') + {size_ms})"),
            format!("arrow_cast({WINDOW_START}, 'Int64') + {size_ms}"),
        ),
    };
    for (name, replacement) in [(WINDOW_START, &start), (WINDOW_END, &end)] {
        let replacement = Parser::new(&GenericDialect {})
            .try_with_sql(replacement)
            .and_then(|mut parser| parser.parse_expr())
            .map_err(|error| EngineError::plan(format!("build {name}: {error}")))?;
        let _ = ast::visit_expressions_mut(&mut projection, |expr| {
            if is_column(expr, name) {
                *expr = replacement.clone();
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    let mut select_items: Vec<String> = projection.iter().map(ToString::to_string).collect();
    let mut order_by = vec![WINDOW_START_ALIAS.to_string()];
    for (idx, key) in key_exprs.iter().enumerate() {
        select_items.push(format!("{key} AS {KEY_PREFIX}{idx}"));
        order_by.push(format!("{KEY_PREFIX}{idx}"));
    }
    select_items.push(format!("{start} AS {WINDOW_START_ALIAS}"));
    select_items.push(format!("{end_ms} AS {WINDOW_END_ALIAS}"));
    let order = if ordered {
        format!(" ORDER BY {} NULLS FIRST", order_by.join(" NULLS FIRST, "))
    } else {
        String::new()
    };
    Ok(format!(
        "SELECT {} FROM ({windowed}) AS {stream} GROUP BY {}{order}",
        select_items.join(", "),
        group_by.join(", "),
    ))
}

/// An event time column of `data_type` (int64 epoch ms or a timestamp) as epoch ms in SQL.
fn time_ms_sql(column: &str, data_type: &DataType) -> String {
    match data_type {
        DataType::Int64 => column.to_string(),
        DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, _) => {
            format!("arrow_cast({column}, 'Int64')")
        }
        _ => format!("arrow_cast(arrow_cast({column}, 'Timestamp(Millisecond, None)'), 'Int64')"),
    }
}

/// Registers in `context`, under `name`, the rows a join job windows, for [`recompute`]
/// over `name`: each row of `stream_table` (the stream's history) joined with `right_table`
/// (the other input's history) as the job's join says:
/// - AS OF a table: the version of the changelog valid at the row's event time, that is the
///   latest changelog row of its key at or before that time, of rows at one time the last by
///   `order_column` (their order in the log); no version where that row is a delete or the
///   key has none yet, which drops the row from an inner join and leaves the table's
///   columns null in a `LEFT` one;
/// - within an interval of another stream: every row of the other stream with the key and
///   its event time within the interval of the row's (a `LEFT` join keeps a row with none,
///   with nulls); `order_column` is not read.
///
/// The live joins give the same rows when nothing is late.
///
/// # Errors
///
/// A plan without a join; unknown tables or columns; DataFusion planning errors.
pub async fn register_joined(
    plan: &JobPlan,
    context: &SessionContext,
    stream_table: &str,
    right_table: &str,
    order_column: &str,
    name: &str,
) -> Result<(), EngineError> {
    let join = plan
        .join
        .as_ref()
        .ok_or_else(|| EngineError::plan("the job joins no table"))?;
    let stream_schema = &join.stream_schema;
    let right_schema = &join.right_schema;
    let stream_time = time_ms_sql(
        &format!("s.{}", quote_ident(&plan.event_time)),
        stream_schema.field(plan.event_time_index).data_type(),
    );
    let right_time = |qualifier: &str| {
        time_ms_sql(
            &format!(
                "{qualifier}{}",
                quote_ident(right_schema.field(join.right_time).name())
            ),
            right_schema.field(join.right_time).data_type(),
        )
    };
    let right_key = quote_ident(right_schema.field(join.right_key).name());
    let stream_key = quote_ident(stream_schema.field(join.stream_key).name());
    let mut columns: Vec<String> = stream_schema
        .fields()
        .iter()
        .map(|field| format!("s.{}", quote_ident(field.name())))
        .collect();
    columns.extend(
        right_schema
            .fields()
            .iter()
            .zip(&join.joined_names)
            .map(|(field, joined)| {
                format!("v.{} AS {}", quote_ident(field.name()), quote_ident(joined))
            }),
    );
    let columns = columns.join(", ");
    // The other input on the left: DataFusion builds its hash table on the left side, and
    // a table is the smaller input (a stream's history is the big one).
    let kind = match join.kind {
        crate::temporal_join::JoinKind::Inner => "JOIN",
        crate::temporal_join::JoinKind::Left => "RIGHT JOIN",
    };
    let right = quote_ident(right_table);
    // The WHERE's stream-only terms before the join, where no row can make them fail: the
    // rows they drop need no joining. Terms that can fail on a row (arithmetic, casts) are
    // left to the job's WHERE after the join, whose guard leaves such a row out (live
    // reports it and does not count it) instead of failing the run.
    let stream = match (&join.stream_filter_sql, &join.stream_filter) {
        (Some(filter), Some(expr)) if crate::guard::cannot_fail(expr) => format!(
            "(SELECT * FROM {} WHERE {filter})",
            quote_ident(stream_table)
        ),
        _ => quote_ident(stream_table),
    };
    let sql = match join.form {
        JoinForm::AsOf { tombstone } => {
            let not_deleted = match tombstone {
                Some(tombstone) => format!(
                    " AND v.{} IS NOT TRUE",
                    quote_ident(right_schema.field(tombstone).name())
                ),
                None => String::new(),
            };
            let table_time = right_time("");
            // In an inner join, a version the WHERE's terms on the table's columns do not
            // hold for gives no row: it need not be joined (it still ends the one before).
            let filter_sql = match join.kind {
                crate::temporal_join::JoinKind::Inner => join.right_filter_sql.as_deref(),
                crate::temporal_join::JoinKind::Left => None,
            };
            let versions = format!("{name}{VERSIONS_SUFFIX}");
            register_versions(
                context,
                &VersionsSpec {
                    changelog: right_table,
                    key: right_schema.field(join.right_key).name(),
                    time_ms_sql: &table_time,
                    order: order_column,
                    filter_sql,
                },
                &versions,
            )
            .await?;
            format!(
                "SELECT {columns} FROM {versions} AS v {kind} {stream} AS s \
                 ON s.{stream_key} = v.{right_key} AND v.{VALID_FROM} <= {stream_time} \
                   AND (v.{VALID_UNTIL} IS NULL OR {stream_time} < v.{VALID_UNTIL}){not_deleted}",
                versions = quote_ident(&versions),
            )
        }
        JoinForm::Interval { lower_ms, upper_ms } => format!(
            "SELECT {columns} FROM {right} AS v {kind} {stream} AS s \
             ON s.{stream_key} = v.{right_key} \
               AND {other_time} BETWEEN {stream_time} + ({lower_ms}) AND {stream_time} + ({upper_ms})",
            other_time = right_time("v."),
        ),
    };
    let frame = context
        .sql(&sql)
        .await
        .map_err(|error| EngineError::plan(format!("plan the recompute's join: {error}")))?;
    context.register_table(name, frame.into_view())?;
    Ok(())
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A plan of `partitions`, each a stream of rows of `schema`, in no order (one way to make
/// a DataFusion scan of streams the caller computes).
///
/// # Errors
///
/// A partition of another schema.
pub fn partition_streams_exec(
    schema: SchemaRef,
    partitions: Vec<Arc<dyn PartitionStream>>,
) -> DataFusionResult<Arc<dyn ExecutionPlan>> {
    Ok(Arc::new(StreamingTableExec::try_new(
        schema,
        partitions,
        None,
        Vec::<LexOrdering>::new(),
        false,
        None,
    )?))
}
