//! From job SQL to a [`JobPlan`]: parse, check the supported subset, let DataFusion plan
//! the query, and lower its pieces to physical expressions.
//!
//! The window table function is rewritten away: `FROM TUMBLE(clicks, event_time, ...)`
//! becomes `FROM clicks`, where `clicks` is registered with the stream's columns plus
//! `window_start` and `window_end`. DataFusion then plans an ordinary
//! `Projection <- Aggregate <- Filter <- Scan`; the window operator computes the two window
//! columns itself and feeds the rest through DataFusion's expressions and accumulators.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion::sql::sqlparser::ast::{
    self, FunctionArg, FunctionArgExpr, GroupByExpr, SetExpr, Spanned, Statement, TableFactor,
};

use crate::error::{EngineError, SqlPosition};
use crate::join_plan::{JoinForm, JoinPlan, JoinSources, parse_statements, split_join};
use crate::temporal_join::JoinKind;
use crate::window::{MAX_WINDOW_INTERVAL_MS, WindowSpec};

/// Name of the window start column a job groups by.
pub const WINDOW_START: &str = "window_start";
/// Name of the window end column a job groups by.
pub const WINDOW_END: &str = "window_end";
/// Result column: the version of an upsert, from 1.
pub const VERSION_COLUMN: &str = "_version";
/// Result column: true once the watermark has passed the window's end.
pub const FINAL_COLUMN: &str = "_final";
/// Result column: the group key as a JSON array of its values, e.g. `["/home",42]`.
pub const KEY_COLUMN: &str = "_key";
/// Result column: the window start, whatever the projection keeps.
pub const WINDOW_START_COLUMN: &str = "_window_start";

/// The aggregate functions a job may use, by DataFusion name.
const SUPPORTED_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "approx_distinct",
    "approx_percentile_cont",
    "approx_median",
];

/// One grouping column of the Aggregate node, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupSlot {
    /// The `idx`-th key expression.
    Key(usize),
    /// `window_start`.
    WindowStart,
    /// `window_end`.
    WindowEnd,
}

/// One aggregate: DataFusion's expression, its lowered arguments and optional FILTER.
#[derive(Debug)]
pub(crate) struct AggregatePlan {
    pub(crate) expr: Arc<AggregateFunctionExpr>,
    pub(crate) args: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) filter: Option<Arc<dyn PhysicalExpr>>,
}

/// A compiled job: everything the window operator and the batch plan need.
#[derive(Debug)]
pub struct JobPlan {
    pub(crate) sql: String,
    pub(crate) stream: String,
    pub(crate) event_time: String,
    pub(crate) event_time_index: usize,
    pub(crate) window: WindowSpec,
    pub(crate) stream_schema: SchemaRef,
    pub(crate) filter: Option<Arc<dyn PhysicalExpr>>,
    pub(crate) group_slots: Vec<GroupSlot>,
    pub(crate) keys: Vec<Arc<dyn PhysicalExpr>>,
    pub(crate) key_schema: SchemaRef,
    pub(crate) aggregates: Vec<AggregatePlan>,
    /// Output of the Aggregate node: group columns in `group_slots` order, then aggregates.
    pub(crate) aggregate_schema: SchemaRef,
    pub(crate) projection: Vec<Arc<dyn PhysicalExpr>>,
    /// The user's columns, then `_key`, `_window_start`, `_version`, `_final`.
    pub(crate) result_schema: SchemaRef,
    /// The join that makes the rows this plan windows, if the job joins a table; then
    /// `stream_schema` is the joined rows' schema.
    pub(crate) join: Option<JoinPlan>,
    /// The job as a one-source job over its (joined) rows: `sql` itself without a join.
    pub(crate) single_source_sql: String,
}

/// What a job may ask of the engine: bounds on the work one event can cause, checked when
/// the job compiles (config: `[limits]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// The most windows one event may belong to: a HOP's size over its slide.
    pub max_windows_per_event: u32,
    /// The longest window size, slide or session gap, in milliseconds (at most
    /// [`crate::MAX_WINDOW_INTERVAL_MS`]).
    pub max_window_interval_ms: i64,
}

impl Default for JobLimits {
    /// 1,000 windows per event and intervals of up to 366 days.
    fn default() -> JobLimits {
        JobLimits {
            max_windows_per_event: 1_000,
            max_window_interval_ms: 366 * 86_400_000,
        }
    }
}

impl JobLimits {
    /// Refuses a window that asks for more than these limits, at the interval's position.
    fn check(&self, parsed: &ParsedJob) -> Result<(), EngineError> {
        let max_interval_ms = self.max_window_interval_ms.min(MAX_WINDOW_INTERVAL_MS);
        let (intervals, what): (Vec<i64>, &[&str]) = match parsed.window {
            WindowSpec::Tumble { size_ms } => (vec![size_ms], &["window size"]),
            WindowSpec::Hop { slide_ms, size_ms } => {
                (vec![slide_ms, size_ms], &["hop slide", "hop size"])
            }
            WindowSpec::Session { gap_ms } => (vec![gap_ms], &["session gap"]),
        };
        let at = |idx: usize| {
            parsed
                .interval_positions
                .get(idx)
                .copied()
                .unwrap_or(parsed.time_column_position)
        };
        for (idx, (interval_ms, what)) in intervals.iter().zip(what).enumerate() {
            if *interval_ms > max_interval_ms {
                return Err(EngineError::Unsupported {
                    position: at(idx),
                    message: format!(
                        "the {what} of {} exceeds the limit of {} (limits.max-window-interval)",
                        format_interval_ms(*interval_ms),
                        format_interval_ms(max_interval_ms)
                    ),
                });
            }
        }
        let per_event = parsed.window.windows_per_event();
        if per_event > self.max_windows_per_event as usize {
            return Err(EngineError::Unsupported {
                position: at(1),
                message: format!(
                    "each event would belong to {per_event} windows (hop size / slide), over the limit of {} (limits.max-windows-per-event); use a longer slide or a shorter size",
                    self.max_windows_per_event
                ),
            });
        }
        Ok(())
    }
}

/// Writes an interval in milliseconds as the largest whole unit: `365d`, `90m`, `1500ms`.
fn format_interval_ms(ms: i64) -> String {
    for (unit_ms, unit) in [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ] {
        if ms % unit_ms == 0 {
            return format!("{}{unit}", ms / unit_ms);
        }
    }
    format!("{ms}ms")
}

impl JobPlan {
    /// Compiles `sql` for a stream with `stream_schema`, whose event time is `event_time`
    /// (a timestamp or an int64 of epoch milliseconds), refusing windows beyond `limits`.
    ///
    /// # Errors
    ///
    /// [`EngineError::Parse`], [`EngineError::Unsupported`] with the position of the part
    /// outside the supported subset or over `limits`, or [`EngineError::Plan`] for unknown
    /// columns and types.
    pub fn compile(
        sql: &str,
        stream_schema: SchemaRef,
        event_time: &str,
        limits: &JobLimits,
    ) -> Result<JobPlan, EngineError> {
        JobPlan::compile_joined(
            sql,
            stream_schema,
            event_time,
            &JoinSources::default(),
            limits,
        )
    }

    /// [`JobPlan::compile`] for a job that may join its stream with one of `sources`: a
    /// table as of each row's time (`JOIN t FOR SYSTEM_TIME AS OF s.event_time ON s.k =
    /// t.key`), or a stream within an interval (`JOIN r ON s.k = r.k AND r.event_time
    /// BETWEEN s.event_time + lower AND s.event_time + upper`). The plan windows the joined
    /// rows, and [`JobPlan::join`] says how to make them.
    ///
    /// # Errors
    ///
    /// As [`JobPlan::compile`]; a join that is not one of the supported forms, or of a
    /// table or stream not among `sources`, at its position.
    pub fn compile_joined(
        sql: &str,
        stream_schema: SchemaRef,
        event_time: &str,
        sources: &JoinSources,
        limits: &JobLimits,
    ) -> Result<JobPlan, EngineError> {
        let Some(clause) = split_join(sql)? else {
            return JobPlan::compile_one_source(sql, stream_schema, event_time, limits);
        };
        let (mut join, single_source_sql) =
            clause.resolve(sql, &stream_schema, event_time, sources)?;
        let mut plan = JobPlan::compile_one_source(
            &single_source_sql,
            join.joined_schema(),
            event_time,
            limits,
        )?;
        // The live join keeps only the other input's columns the job evaluates (and what
        // the join itself reads: an interval join the other stream's key and time; the key
        // when nothing else), so that its state holds no value the job never reads.
        let n_stream = join.stream_schema.fields().len();
        let n_right = join.right_schema.fields().len();
        let mut used: Vec<usize> = crate::guard::guard_expressions(&plan)
            .iter()
            .flat_map(datafusion::physical_expr::utils::collect_columns)
            .map(|column| column.index())
            .filter(|index| (n_stream..n_stream + n_right).contains(index))
            .map(|index| index - n_stream)
            .collect();
        if matches!(join.form, JoinForm::Interval { .. }) || used.is_empty() {
            used.push(join.right_key);
        }
        if matches!(join.form, JoinForm::Interval { .. }) {
            used.push(join.right_time);
        }
        used.sort_unstable();
        used.dedup();
        join.right_values = used;
        // The WHERE's stream-only terms, planned over the stream alone: the live join leaves
        // out the rows they drop before joining them (the window operator would drop them
        // after).
        if let Some(filter) = &join.stream_filter_sql {
            join.stream_filter = side_filter(filter, &plan.stream, &join.stream_schema, event_time);
        }
        // In an inner AS OF join, the WHERE's table-only terms, planned over the table: the
        // live join keeps a version they drop as a tombstone.
        if let (JoinForm::AsOf { .. }, JoinKind::Inner, Some(filter)) =
            (&join.form, join.kind, &join.right_filter_sql)
        {
            let right_time = join.right_schema.field(join.right_time).name().clone();
            join.table_filter =
                side_filter(filter, &join.right_name, &join.right_schema, &right_time);
        }
        plan.sql = sql.to_string();
        plan.single_source_sql = single_source_sql;
        plan.join = Some(join);
        Ok(plan)
    }

    fn compile_one_source(
        sql: &str,
        stream_schema: SchemaRef,
        event_time: &str,
        limits: &JobLimits,
    ) -> Result<JobPlan, EngineError> {
        let parsed = parse_job_sql(sql)?;
        limits.check(&parsed)?;
        let event_time_index = stream_schema.index_of(event_time).map_err(|_| {
            EngineError::plan(format!(
                "the event time column `{event_time}` is not in the stream"
            ))
        })?;
        match stream_schema.field(event_time_index).data_type() {
            DataType::Timestamp(_, _) | DataType::Int64 => {}
            other => {
                return Err(EngineError::plan(format!(
                    "the event time column `{event_time}` has type {other}; it must be a timestamp or an int64 of epoch milliseconds"
                )));
            }
        }
        if parsed.time_column != event_time {
            return Err(EngineError::Unsupported {
                position: parsed.time_column_position,
                message: format!(
                    "the window is over `{}`, but the stream's event time is `{event_time}`",
                    parsed.time_column
                ),
            });
        }
        for reserved in [WINDOW_START, WINDOW_END] {
            if stream_schema.index_of(reserved).is_ok() {
                return Err(EngineError::plan(format!(
                    "the stream has a column named `{reserved}`, which the window defines"
                )));
            }
        }
        let mut fields: Vec<Field> = stream_schema
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        fields.push(Field::new(WINDOW_START, window_time_type(), false));
        fields.push(Field::new(WINDOW_END, window_time_type(), false));
        let windowed_schema = Arc::new(Schema::new(fields));

        // Spans on column references, so that DataFusion's errors about them say where.
        let mut session_config = datafusion::prelude::SessionConfig::new();
        session_config.options_mut().sql_parser.collect_spans = true;
        let context = SessionContext::new_with_config(session_config);
        context
            .register_table(
                parsed.stream.as_str(),
                Arc::new(EmptyTable::new(Arc::clone(&windowed_schema))),
            )
            .map_err(|error| EngineError::plan(error.to_string()))?;
        let locator = Locator {
            statement: parsed.statement.clone(),
            stream: parsed.stream.clone(),
            context: &context,
            select_position: parsed.select_position,
            function_positions: &parsed.function_positions,
        };
        let statement = datafusion::sql::parser::Statement::Statement(Box::new(parsed.statement));
        let logical_plan = locator
            .plan(statement)
            .map_err(|error| locator.locate(&error))?;
        lower(
            sql,
            parsed.stream,
            event_time.to_string(),
            event_time_index,
            parsed.window,
            stream_schema,
            &logical_plan,
            &locator,
        )
    }

    /// Returns the stream and the time column a job's `FROM TUMBLE|HOP|SESSION(...)` names,
    /// without planning it (to find the stream's schema before compiling).
    ///
    /// # Errors
    ///
    /// As [`JobPlan::compile`] for the parts it checks.
    pub fn source_of(sql: &str) -> Result<(String, String), EngineError> {
        let parsed = match split_join(sql)? {
            Some(clause) => parse_job_sql(&clause.without_join(sql))?,
            None => parse_job_sql(sql)?,
        };
        Ok((parsed.stream, parsed.time_column))
    }

    /// Returns the table or stream a job's SQL joins, if any, without planning it.
    ///
    /// # Errors
    ///
    /// As [`JobPlan::compile`] for the parts it checks.
    pub fn joined_of(sql: &str) -> Result<Option<String>, EngineError> {
        Ok(split_join(sql)?.map(|clause| clause.table))
    }

    /// The join that makes the rows the job windows, for a job that joins a table.
    pub fn join(&self) -> Option<&JoinPlan> {
        self.join.as_ref()
    }

    /// Rows out of the job's [`crate::TemporalJoin`] as the rows the window operator takes:
    /// under the joined names of [`JobPlan::stream_schema`], with the table's columns the job
    /// does not use (which the join does not keep) null.
    ///
    /// # Errors
    ///
    /// A batch whose columns are not the joined rows'.
    pub fn joined_rows(
        &self,
        batch: &arrow::array::RecordBatch,
    ) -> Result<arrow::array::RecordBatch, EngineError> {
        match &self.join {
            Some(join) => join.widen(&self.stream_schema, batch),
            None => Ok(arrow::array::RecordBatch::try_new(
                Arc::clone(&self.stream_schema),
                batch.columns().to_vec(),
            )?),
        }
    }

    /// Returns the job's SQL.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Returns the stream the job reads.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Returns the window the job aggregates over.
    pub fn window(&self) -> WindowSpec {
        self.window
    }

    /// Returns the schema of the rows the window operator takes: the stream's, or for a
    /// join job the joined rows' ([`JoinPlan::stream_schema`] is then the stream's).
    pub fn stream_schema(&self) -> SchemaRef {
        Arc::clone(&self.stream_schema)
    }

    /// Returns the schema of result batches.
    pub fn result_schema(&self) -> SchemaRef {
        Arc::clone(&self.result_schema)
    }

    /// Returns the event time column's name.
    pub fn event_time(&self) -> &str {
        &self.event_time
    }

    /// Whether the job groups by the stream column `column` as it is (among other keys):
    /// then every row of a group has the same value there, so a stream partitioned by that
    /// column has each group in one partition.
    pub fn groups_by_column(&self, column: &str) -> bool {
        self.keys.iter().any(|key| {
            key.as_ref()
                .downcast_ref::<datafusion::physical_expr::expressions::Column>()
                .is_some_and(|key| key.name() == column)
        })
    }

    /// Each row's group key, as the `_key` of its results (a JSON array), for a batch of the
    /// stream: how a repartition step routes rows so that each group has one owner.
    ///
    /// A row whose key expressions fail (say, a division by zero) has a null key: the
    /// operator that gets it reports it as that event's error.
    ///
    /// # Errors
    ///
    /// A batch that is not the stream's.
    pub fn group_key_texts(
        &self,
        batch: &arrow::array::RecordBatch,
    ) -> Result<arrow::array::StringArray, EngineError> {
        let render = |batch: &arrow::array::RecordBatch| {
            let keys = self
                .keys
                .iter()
                .map(|key| key.evaluate(batch)?.into_array(batch.num_rows()))
                .collect::<Result<Vec<_>, _>>()?;
            crate::operator::render_keys(&keys, batch.num_rows())
        };
        match render(batch) {
            Ok(texts) => Ok(texts),
            Err(batch_error) => {
                let texts: arrow::array::StringArray = (0..batch.num_rows())
                    .map(|row| {
                        render(&batch.slice(row, 1))
                            .ok()
                            .map(|text| text.value(0).to_string())
                    })
                    .collect();
                if arrow::array::Array::null_count(&texts) == 0 {
                    // No single row fails: not about an event.
                    return Err(batch_error);
                }
                Ok(texts)
            }
        }
    }
}

/// Windows are reported as timestamps in milliseconds, without a time zone (UTC).
/// The columns every result row ends with, after the user's.
pub(crate) const BOOKKEEPING_COLUMNS: [&str; 4] = [
    KEY_COLUMN,
    WINDOW_START_COLUMN,
    VERSION_COLUMN,
    FINAL_COLUMN,
];

/// The fields of [`BOOKKEEPING_COLUMNS`].
pub(crate) fn bookkeeping_fields() -> [Field; 4] {
    [
        Field::new(KEY_COLUMN, DataType::Utf8, false),
        Field::new(WINDOW_START_COLUMN, window_time_type(), false),
        Field::new(VERSION_COLUMN, DataType::UInt32, false),
        Field::new(FINAL_COLUMN, DataType::Boolean, false),
    ]
}

pub(crate) fn window_time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

pub(crate) struct ParsedJob {
    pub(crate) statement: Statement,
    pub(crate) stream: String,
    time_column: String,
    time_column_position: SqlPosition,
    window: WindowSpec,
    /// Where each interval argument of the window starts (size; slide and size; gap).
    interval_positions: Vec<SqlPosition>,
    /// First position of each function name, lowercase, for error messages after planning.
    function_positions: HashMap<String, SqlPosition>,
    /// Where the SELECT starts: errors about the query as a whole point there.
    select_position: SqlPosition,
}

fn position_of(node: &impl Spanned) -> SqlPosition {
    position_at(node.span())
}

fn position_at(span: datafusion::sql::sqlparser::tokenizer::Span) -> SqlPosition {
    let start = span.start;
    SqlPosition {
        line: start.line.max(1),
        column: start.column.max(1),
    }
}

fn unsupported(node: &impl Spanned, message: impl Into<String>) -> EngineError {
    EngineError::Unsupported {
        position: position_of(node),
        message: message.into(),
    }
}

pub(crate) fn parse_job_sql(sql: &str) -> Result<ParsedJob, EngineError> {
    let mut statements = parse_statements(sql)?;
    if statements.len() != 1 {
        let message = format!("a job is one SELECT statement, found {}", statements.len());
        return match statements.get(1) {
            Some(second) => Err(unsupported(second, message)),
            None => Err(EngineError::Parse(message)),
        };
    }
    let mut statement = statements.remove(0);
    let mut function_positions = HashMap::new();
    let mut refusal: Option<EngineError> = None;
    let _ = ast::visit_expressions(&statement, |expr: &ast::Expr| {
        let problem = match expr {
            ast::Expr::Subquery(_) | ast::Expr::Exists { .. } | ast::Expr::InSubquery { .. } => {
                Some("subqueries are not supported in jobs")
            }
            ast::Expr::Function(function) if function.over.is_some() => Some(
                "window functions (OVER) are not supported; windows come from TUMBLE, HOP or SESSION",
            ),
            ast::Expr::Function(function) => {
                function_positions
                    .entry(function.name.to_string().to_lowercase())
                    .or_insert_with(|| position_of(expr));
                None
            }
            _ => None,
        };
        match problem {
            Some(message) => {
                refusal = Some(unsupported(expr, message));
                ControlFlow::Break(())
            }
            None => ControlFlow::Continue(()),
        }
    });
    if let Some(error) = refusal {
        return Err(error);
    }
    let Statement::Query(query) = &mut statement else {
        return Err(unsupported(&statement, "a job is a SELECT statement"));
    };
    if let Some(with) = &query.with {
        return Err(unsupported(with, "WITH is not supported in jobs"));
    }
    if let Some(order_by) = &query.order_by {
        return Err(unsupported(
            order_by,
            "ORDER BY is not supported: results are upserts per key and window; order them when reading",
        ));
    }
    if let Some(limit) = &query.limit_clause {
        return Err(unsupported(
            limit,
            "LIMIT and OFFSET are not supported in jobs",
        ));
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(unsupported(
            query.body.as_ref(),
            "a job is a single SELECT (no UNION, INTERSECT, EXCEPT or VALUES)",
        ));
    };
    if select.distinct.is_some() {
        return Err(unsupported(
            &select.select_token.0,
            "SELECT DISTINCT is not supported; GROUP BY the columns instead",
        ));
    }
    if let Some(having) = &select.having {
        return Err(unsupported(
            having,
            "HAVING is not supported in jobs yet; filter the results when reading",
        ));
    }
    if let Some(qualify) = &select.qualify {
        return Err(unsupported(qualify, "QUALIFY is not supported in jobs"));
    }
    if let Some(window) = select.named_window.first() {
        return Err(unsupported(
            window,
            "WINDOW clauses are not supported; use TUMBLE, HOP or SESSION in FROM",
        ));
    }
    if select.from.len() != 1 {
        let message = "FROM must be exactly one of TUMBLE(...), HOP(...) or SESSION(...)";
        return match select.from.get(1) {
            Some(second) => Err(unsupported(second, message)),
            None => Err(unsupported(&**select, message)),
        };
    }
    if let Some(join) = select.from[0].joins.first() {
        return Err(unsupported(join, "joins are not supported in jobs"));
    }
    if let Some(selection) = &select.selection {
        let mut window_reference = None;
        let _ = ast::visit_expressions(selection, |expr: &ast::Expr| {
            if let ast::Expr::Identifier(ident) = expr
                && (ident.value.eq_ignore_ascii_case(WINDOW_START)
                    || ident.value.eq_ignore_ascii_case(WINDOW_END))
            {
                window_reference = Some(unsupported(
                    expr,
                    "WHERE filters events before windowing, so it cannot use window_start or window_end",
                ));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        if let Some(error) = window_reference {
            return Err(error);
        }
    }
    check_group_by(&select.group_by, select)?;
    let select_position = position_of(&select.select_token.0);
    let (stream, time_column, time_column_position, window, interval_positions) =
        rewrite_window_source(&mut select.from[0].relation)?;
    Ok(ParsedJob {
        statement,
        stream,
        time_column,
        time_column_position,
        interval_positions,
        window,
        function_positions,
        select_position,
    })
}

fn check_group_by(group_by: &GroupByExpr, select: &ast::Select) -> Result<(), EngineError> {
    let GroupByExpr::Expressions(exprs, modifiers) = group_by else {
        return Err(unsupported(
            select,
            "GROUP BY ALL is not supported; list the keys, window_start and window_end",
        ));
    };
    if !modifiers.is_empty() {
        return Err(unsupported(
            select,
            "GROUP BY modifiers (ROLLUP, CUBE, TOTALS) are not supported",
        ));
    }
    for required in [WINDOW_START, WINDOW_END] {
        let present = exprs.iter().any(|expr| {
            matches!(expr, ast::Expr::Identifier(ident) if ident.value.eq_ignore_ascii_case(required))
        });
        if !present {
            return Err(unsupported(
                select,
                format!(
                    "a windowed job must GROUP BY {WINDOW_START} and {WINDOW_END} (missing `{required}`)"
                ),
            ));
        }
    }
    for expr in exprs {
        if let ast::Expr::Value(_) = expr {
            return Err(unsupported(
                expr,
                "GROUP BY by position is not supported; name the expression",
            ));
        }
        if !matches!(expr, ast::Expr::Identifier(_)) && mentions_window(expr) {
            return Err(unsupported(
                expr,
                format!(
                    "the group key `{expr}` uses a window column; group by {WINDOW_START} and {WINDOW_END} themselves"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `expr` names `window_start` or `window_end` anywhere.
fn mentions_window(expr: &ast::Expr) -> bool {
    let is_window = |ident: &ast::Ident| {
        ident.value.eq_ignore_ascii_case(WINDOW_START)
            || ident.value.eq_ignore_ascii_case(WINDOW_END)
    };
    ast::visit_expressions(expr, |expr: &ast::Expr| match expr {
        ast::Expr::Identifier(ident) if is_window(ident) => ControlFlow::Break(()),
        ast::Expr::CompoundIdentifier(idents) if idents.last().is_some_and(is_window) => {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// Replaces `TUMBLE(stream, col, ...)` by `stream`, returning the stream, time column and window.
#[allow(clippy::type_complexity)]
fn rewrite_window_source(
    relation: &mut TableFactor,
) -> Result<(String, String, SqlPosition, WindowSpec, Vec<SqlPosition>), EngineError> {
    let how = "FROM must be TUMBLE(stream, time_col, size), HOP(stream, time_col, slide, size) or SESSION(stream, time_col, gap)";
    let TableFactor::Table { name, args, .. } = relation else {
        return Err(unsupported(&*relation, how));
    };
    let Some(table_args) = args.take() else {
        return Err(unsupported(
            &*name,
            format!("`{name}` is not a window; {how}"),
        ));
    };
    let function = name.to_string().to_lowercase();
    let mut exprs = Vec::with_capacity(table_args.args.len());
    for arg in &table_args.args {
        match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => exprs.push(expr.clone()),
            other => {
                return Err(unsupported(
                    other,
                    format!("window arguments are positional expressions; {how}"),
                ));
            }
        }
    }
    let expected = match function.as_str() {
        "tumble" | "session" => 3,
        "hop" => 4,
        _ => {
            return Err(unsupported(
                &*name,
                format!("unknown window `{name}`; {how}"),
            ));
        }
    };
    if exprs.len() != expected {
        return Err(unsupported(
            &*name,
            format!(
                "{} takes {expected} arguments, found {}; {how}",
                function.to_uppercase(),
                exprs.len()
            ),
        ));
    }
    let identifier = |expr: &ast::Expr, what: &str| match expr {
        ast::Expr::Identifier(ident) => Ok(ident.value.clone()),
        other => Err(unsupported(
            other,
            format!("the {what} must be a plain name"),
        )),
    };
    let stream = identifier(&exprs[0], "stream")?;
    let time_column = identifier(&exprs[1], "time column")?;
    let time_column_position = position_of(&exprs[1]);
    let window = match function.as_str() {
        "tumble" => WindowSpec::Tumble {
            size_ms: interval_ms(&exprs[2])?,
        },
        "hop" => {
            let slide_ms = interval_ms(&exprs[2])?;
            let size_ms = interval_ms(&exprs[3])?;
            if size_ms % slide_ms != 0 {
                return Err(unsupported(
                    &exprs[3],
                    format!(
                        "a HOP size ({size_ms} ms) must be a whole multiple of its slide ({slide_ms} ms)"
                    ),
                ));
            }
            WindowSpec::Hop { slide_ms, size_ms }
        }
        _ => WindowSpec::Session {
            gap_ms: interval_ms(&exprs[2])?,
        },
    };
    let interval_positions = exprs[2..].iter().map(position_of).collect();
    *name = ast::ObjectName::from(vec![ast::Ident::new(stream.clone())]);
    Ok((
        stream,
        time_column,
        time_column_position,
        window,
        interval_positions,
    ))
}

/// Evaluates an `INTERVAL ...` literal to whole milliseconds.
fn interval_ms(expr: &ast::Expr) -> Result<i64, EngineError> {
    let refuse = |message: &str| unsupported(expr, message.to_string());
    let context = SessionContext::new();
    let logical = context
        .state()
        .create_logical_expr(&expr.to_string(), &DFSchema::empty())
        .map_err(|_| refuse("expected an interval such as INTERVAL '1' MINUTE"))?;
    let Expr::Literal(value, _) = logical else {
        return Err(refuse(
            "expected a constant interval such as INTERVAL '10' SECOND",
        ));
    };
    let ms = match value {
        ScalarValue::IntervalMonthDayNano(Some(interval)) => {
            if interval.months != 0 {
                return Err(refuse(
                    "months and years vary in length; give the window in days or less",
                ));
            }
            if interval.nanoseconds % 1_000_000 != 0 {
                return Err(refuse("windows have millisecond precision"));
            }
            i64::from(interval.days) * 86_400_000 + interval.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(interval)) => {
            i64::from(interval.days) * 86_400_000 + i64::from(interval.milliseconds)
        }
        ScalarValue::IntervalYearMonth(_) => {
            return Err(refuse(
                "months and years vary in length; give the window in days or less",
            ));
        }
        _ => return Err(refuse("expected an interval such as INTERVAL '1' MINUTE")),
    };
    if ms <= 0 {
        return Err(refuse("a window interval must be positive"));
    }
    Ok(ms)
}

/// Evaluates an `INTERVAL ...` literal to whole milliseconds, of any sign (a join's bound).
pub(crate) fn interval_offset_ms(expr: &ast::Expr) -> Result<i64, EngineError> {
    // `interval_ms` refuses what is not positive; a bound may be, so negate those first.
    let negated = ast::Expr::UnaryOp {
        op: ast::UnaryOperator::Minus,
        expr: Box::new(ast::Expr::Nested(Box::new(expr.clone()))),
    };
    interval_ms(expr)
        .or_else(|error| interval_ms(&negated).map(|ms| -ms).map_err(|_| error))
        .or_else(|error| match zero_interval(expr) {
            true => Ok(0),
            false => Err(error),
        })
}

/// Whether `expr` is a constant interval of zero length.
fn zero_interval(expr: &ast::Expr) -> bool {
    let context = SessionContext::new();
    matches!(
        context.state().create_logical_expr(&expr.to_string(), &DFSchema::empty()),
        Ok(Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(interval)), _))
            if interval.months == 0 && interval.days == 0 && interval.nanoseconds == 0
    )
}

/// Points planning errors at the SQL they are about: one mechanism for every error the
/// planner reports after parsing, beside the positions `parse_job_sql` records.
struct Locator<'a> {
    /// The job's statement with its window source rewritten to the stream.
    statement: Statement,
    stream: String,
    /// The context the job is planned in, with the stream registered.
    context: &'a SessionContext,
    select_position: SqlPosition,
    function_positions: &'a HashMap<String, SqlPosition>,
}

impl Locator<'_> {
    /// Plans `statement` as a job is planned: DataFusion's SQL planner, then its analyzer,
    /// which adds the casts type coercion needs (e.g. AVG over an integer). The optimizer
    /// does not run, so the plan keeps the shape `lower` expects.
    fn plan(
        &self,
        statement: datafusion::sql::parser::Statement,
    ) -> datafusion::error::Result<LogicalPlan> {
        let state = self.context.state();
        let logical_plan = futures::executor::block_on(state.statement_to_plan(statement))?;
        state
            .analyzer()
            .execute_and_check(logical_plan, state.config_options(), |_, _| {})
    }

    /// An error about the query as a whole, at its SELECT.
    fn at_select(&self, message: impl Into<String>) -> EngineError {
        EngineError::Invalid {
            position: self.select_position,
            message: message.into(),
        }
    }

    /// Turns DataFusion's planning error into [`EngineError::Invalid`] at the SQL it is
    /// about: the span of DataFusion's diagnostic when it gives one (unknown columns and
    /// functions); else the innermost expression that fails when planned alone (arguments of
    /// the wrong type, which DataFusion reports without a span, for aggregates even as an
    /// "internal error"); else the SELECT.
    fn locate(&self, error: &DataFusionError) -> EngineError {
        let message = planner_message(error);
        let from_diagnostic = error.iter().find_map(|error| {
            let start = error.diagnostic()?.span?.start;
            (start.line > 0).then_some(SqlPosition {
                line: start.line,
                column: start.column.max(1),
            })
        });
        let position = from_diagnostic
            .or_else(|| self.unknown_field(&message))
            .or_else(|| self.failing_expression(&message))
            .unwrap_or(self.select_position);
        EngineError::Invalid { position, message }
    }

    /// The position of the first use of the column `message` says does not exist
    /// (`No field named x`), which DataFusion reports without a span outside the SELECT list
    /// (in GROUP BY, say).
    fn unknown_field(&self, message: &str) -> Option<SqlPosition> {
        let named = message.split("No field named ").nth(1)?;
        let named = named.split_whitespace().next()?.trim_end_matches('.');
        let column = named.rsplit('.').next()?.trim_matches('"');
        let mut found = None;
        let _ = ast::visit_expressions(&self.statement, |expr: &ast::Expr| {
            let ident = match expr {
                ast::Expr::Identifier(ident) => Some(ident),
                ast::Expr::CompoundIdentifier(idents) => idents.last(),
                _ => None,
            };
            if let Some(ident) = ident
                && ident.value.eq_ignore_ascii_case(column)
                && ident.span.start.line > 0
            {
                found = Some(position_at(ident.span));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        found
    }

    /// The position of the innermost expression of the job that fails to plan on its own,
    /// among the calls of the function `message` names if it names one.
    fn failing_expression(&self, message: &str) -> Option<SqlPosition> {
        let named_function = named_function(message);
        let mut candidates: Vec<(SqlPosition, String)> = Vec::new();
        let _ = ast::visit_expressions(&self.statement, |expr: &ast::Expr| {
            let candidate = match (expr, &named_function) {
                (ast::Expr::Function(function), Some(name)) => {
                    function.name.to_string().eq_ignore_ascii_case(name)
                }
                (_, Some(_)) => false,
                (
                    ast::Expr::Identifier(_)
                    | ast::Expr::CompoundIdentifier(_)
                    | ast::Expr::Value(_)
                    | ast::Expr::Wildcard(_)
                    | ast::Expr::QualifiedWildcard(..),
                    None,
                ) => false,
                _ => true,
            };
            if candidate {
                candidates.push((position_of(expr), expr.to_string()));
            }
            ControlFlow::<()>::Continue(())
        });
        let stream = ast::Ident::with_quote('"', self.stream.as_str());
        let failing = candidates
            .iter()
            .filter(|(_, text)| {
                let sql = format!("SELECT {text} FROM {stream}");
                let Ok(statement) = self
                    .context
                    .state()
                    .sql_to_statement(&sql, &datafusion::common::config::Dialect::Generic)
                else {
                    return false;
                };
                self.plan(statement).is_err()
            })
            .min_by_key(|(_, text)| text.len())
            .map(|(position, _)| *position);
        failing
            .or_else(|| named_function.and_then(|name| self.function_positions.get(&name).copied()))
    }

    /// Where the job names the output column `name` (an alias or a bare column); the
    /// SELECT if nowhere.
    fn output_name_position(&self, name: &str) -> SqlPosition {
        let Statement::Query(query) = &self.statement else {
            return self.select_position;
        };
        let SetExpr::Select(select) = query.body.as_ref() else {
            return self.select_position;
        };
        select
            .projection
            .iter()
            .find_map(|item| match item {
                ast::SelectItem::ExprWithAlias { alias, .. } if alias.value == name => {
                    Some(position_at(alias.span))
                }
                ast::SelectItem::UnnamedExpr(expr @ ast::Expr::Identifier(ident))
                    if ident.value == name =>
                {
                    Some(position_of(expr))
                }
                _ => None,
            })
            .unwrap_or(self.select_position)
    }
}

/// The function a planner message is about, lowercase: `Function 'sum' ...`,
/// `argument types 'sum(Utf8)'`.
fn named_function(message: &str) -> Option<String> {
    let after = |marker: &str| {
        let start = message.find(marker)? + marker.len();
        let rest = &message[start..];
        let end = rest.find(['\'', '('])?;
        Some(rest[..end].to_lowercase())
    };
    after("Function '")
        .or_else(|| after("function '"))
        .or_else(|| after("argument types '"))
        .filter(|name| !name.is_empty())
}

/// DataFusion's error as a message for the job's author: without the error kinds it
/// prefixes, on one line, and without the bug report it asks for when a function's
/// arguments match none of its signatures (the user's SQL, not a bug in DataFusion).
fn planner_message(error: &DataFusionError) -> String {
    const BUG_REPORT: &str = "https://github.com/apache/datafusion/issues.";
    let text = error.strip_backtrace();
    let mut text = match text.find(BUG_REPORT) {
        Some(index) => text[index + BUG_REPORT.len()..].to_string(),
        None => text,
    };
    loop {
        let trimmed = text.trim_start();
        let stripped = [
            "Error during planning:",
            "Schema error:",
            "Internal error:",
            "Execution error:",
            "type_coercion\ncaused by\n",
            "type_coercion",
            "caused by",
        ]
        .iter()
        .find_map(|prefix| trimmed.strip_prefix(prefix));
        match stripped {
            Some(rest) => text = rest.to_string(),
            None => break,
        }
    }
    // Lines after one ending in `:` are a list (`Candidate functions:`), joined by commas.
    let mut message = String::new();
    let mut in_list = false;
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if message.is_empty() {
        } else if in_list && !message.ends_with(':') {
            message.push_str(", ");
        } else {
            message.push(' ');
        }
        in_list = in_list || line.ends_with(':');
        message.push_str(line);
    }
    message.trim_end_matches('.').to_string()
}

/// Finds `Projection <- Aggregate <- [Filter] <- [SubqueryAlias] <- TableScan` and lowers it.
#[allow(clippy::too_many_arguments)]
fn lower(
    sql: &str,
    stream: String,
    event_time: String,
    event_time_index: usize,
    window: WindowSpec,
    stream_schema: SchemaRef,
    logical_plan: &LogicalPlan,
    locator: &Locator<'_>,
) -> Result<JobPlan, EngineError> {
    let LogicalPlan::Projection(projection) = logical_plan else {
        return Err(locator.at_select(format!(
            "expected a projection over an aggregation, DataFusion planned {}",
            logical_plan.display()
        )));
    };
    let LogicalPlan::Aggregate(aggregate) = projection.input.as_ref() else {
        return Err(locator.at_select(
            "a windowed job must aggregate: add COUNT(*) or another aggregate to SELECT",
        ));
    };
    let mut below = aggregate.input.as_ref();
    let mut filter_predicate = None;
    if let LogicalPlan::Filter(filter) = below {
        filter_predicate = Some(filter.predicate.clone());
        below = filter.input.as_ref();
    }
    let input_schema = below.schema();
    let props = ExecutionProps::new();
    let planning = PhysicalPlanningContext::default();
    let lower_expr = |expr: &Expr, schema: &DFSchema| {
        create_physical_expr(expr, schema, &props, &planning)
            .map_err(|error| locator.locate(&error))
    };
    let filter = filter_predicate
        .as_ref()
        .map(|predicate| lower_expr(predicate, input_schema))
        .transpose()?;

    let mut group_slots = Vec::with_capacity(aggregate.group_expr.len());
    let mut keys = Vec::new();
    let mut key_fields = Vec::new();
    for (group_idx, group_expr) in aggregate.group_expr.iter().enumerate() {
        let slot = match group_expr {
            Expr::Column(column) if column.name == WINDOW_START => GroupSlot::WindowStart,
            Expr::Column(column) if column.name == WINDOW_END => GroupSlot::WindowEnd,
            _ => {
                if references_window(group_expr) {
                    return Err(locator.at_select(format!(
                        "the group key `{group_expr}` uses a window column; group by window_start and window_end themselves"
                    )));
                }
                keys.push(lower_expr(group_expr, input_schema)?);
                key_fields.push(aggregate.schema.field(group_idx).as_ref().clone());
                GroupSlot::Key(keys.len() - 1)
            }
        };
        group_slots.push(slot);
    }

    let physical_input_schema: Schema = input_schema.as_arrow().clone();
    let mut aggregates = Vec::with_capacity(aggregate.aggr_expr.len());
    for aggr_expr in &aggregate.aggr_expr {
        check_aggregate(aggr_expr, locator)?;
        let lowered = LoweredAggregateBuilder::new(
            aggr_expr,
            input_schema,
            &physical_input_schema,
            &props,
            &planning,
        )
        .build()
        .map_err(|error| locator.locate(&error))?;
        // Every supported aggregate is insensitive to input order; the ORDER BY of
        // `approx_percentile_cont(p) WITHIN GROUP (ORDER BY x)` names its input.
        let args = lowered.aggregate.expressions();
        aggregates.push(AggregatePlan {
            expr: lowered.aggregate,
            args,
            filter: lowered.filter,
        });
    }

    let aggregate_schema: SchemaRef = Arc::new(aggregate.schema.as_arrow().clone());
    let projection_exprs = projection
        .expr
        .iter()
        .map(|expr| lower_expr(expr, &aggregate.schema))
        .collect::<Result<Vec<_>, _>>()?;
    let mut result_fields: Vec<Field> = projection
        .schema
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    for reserved in BOOKKEEPING_COLUMNS {
        if result_fields.iter().any(|field| field.name() == reserved) {
            return Err(EngineError::Invalid {
                position: locator.output_name_position(reserved),
                message: format!(
                    "the output column name `{reserved}` is reserved for the result's bookkeeping"
                ),
            });
        }
    }
    result_fields.extend(bookkeeping_fields());

    Ok(JobPlan {
        sql: sql.to_string(),
        stream,
        event_time,
        event_time_index,
        window,
        stream_schema,
        filter,
        group_slots,
        keys,
        key_schema: Arc::new(Schema::new(key_fields)),
        aggregates,
        aggregate_schema,
        projection: projection_exprs,
        result_schema: Arc::new(Schema::new(result_fields)),
        join: None,
        single_source_sql: sql.to_string(),
    })
}

fn references_window(expr: &Expr) -> bool {
    expr.column_refs()
        .iter()
        .any(|column| column.name == WINDOW_START || column.name == WINDOW_END)
}

fn check_aggregate(aggr_expr: &Expr, locator: &Locator<'_>) -> Result<(), EngineError> {
    let function_positions = locator.function_positions;
    let inner = match aggr_expr {
        Expr::Alias(alias) => alias.expr.as_ref(),
        other => other,
    };
    let Expr::AggregateFunction(function) = inner else {
        return Err(locator.at_select(format!("`{aggr_expr}` is not an aggregate")));
    };
    let name = function.func.name().to_lowercase();
    if SUPPORTED_AGGREGATES.contains(&name.as_str()) {
        return Ok(());
    }
    let message = format!(
        "the aggregate `{name}` is not supported in jobs; use one of {}",
        SUPPORTED_AGGREGATES.join(", ")
    );
    match function_positions.get(&name) {
        Some(position) => Err(EngineError::Unsupported {
            position: *position,
            message,
        }),
        None => Err(locator.at_select(message)),
    }
}

/// The WHERE terms `filter_sql` over one input `source` of the join (its columns `schema`,
/// its event time `event_time`) as a physical expression over that input's rows; `None`
/// where they do not plan over it alone (the job's WHERE still holds them after the join).
fn side_filter(
    filter_sql: &str,
    source: &str,
    schema: &SchemaRef,
    event_time: &str,
) -> Option<Arc<dyn PhysicalExpr>> {
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let filter_job = format!(
        "SELECT COUNT(*) AS n FROM TUMBLE({}, {}, INTERVAL '1' SECOND) WHERE {filter_sql} GROUP BY window_start, window_end",
        quote(source),
        quote(event_time),
    );
    JobPlan::compile_one_source(
        &filter_job,
        Arc::clone(schema),
        event_time,
        &JobLimits::default(),
    )
    .ok()
    .and_then(|filter_plan| filter_plan.filter)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn clicks() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("event_time", DataType::Int64, false),
            Field::new("page", DataType::Utf8, true),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("duration_ms", DataType::Int64, true),
        ]))
    }

    const GOOD: &str = "SELECT page, window_start, window_end, COUNT(*) AS n \
        FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) GROUP BY page, window_start, window_end";

    /// Compiles `sql` and checks it is refused at `line:column` with a message containing `needle`.
    #[track_caller]
    fn check_refused(sql: &str, line: u64, column: u64, needle: &str) {
        match JobPlan::compile(sql, clicks(), "event_time", &JobLimits::default()) {
            Err(EngineError::Unsupported { position, message }) => {
                assert_eq!(
                    (position.line, position.column),
                    (line, column),
                    "{message}"
                );
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
            }
            Err(other) => panic!("expected a positioned refusal, got {other}"),
            Ok(_) => panic!("{sql} compiled"),
        }
    }

    #[test]
    fn group_keys_are_named_and_rendered_as_the_results_key() {
        let plan = JobPlan::compile(GOOD, clicks(), "event_time", &JobLimits::default())
            .expect("compiles");
        assert!(plan.groups_by_column("page"));
        assert!(!plan.groups_by_column("user_id"));
        let two = "SELECT user_id, upper(page) AS p, window_start, COUNT(*) AS n \
            FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) \
            GROUP BY user_id, upper(page), window_start, window_end";
        let plan =
            JobPlan::compile(two, clicks(), "event_time", &JobLimits::default()).expect("compiles");
        assert!(plan.groups_by_column("user_id"));
        assert!(
            !plan.groups_by_column("page"),
            "upper(page) is not the column"
        );
        let batch = arrow::array::RecordBatch::try_new(
            clicks(),
            vec![
                Arc::new(arrow::array::Int64Array::from(vec![1, 2])),
                Arc::new(arrow::array::StringArray::from(vec![Some("/a"), None])),
                Arc::new(arrow::array::StringArray::from(vec!["u\"1", "u2"])),
                Arc::new(arrow::array::Int64Array::from(vec![5, 6])),
            ],
        )
        .expect("batch");
        let keys = plan.group_key_texts(&batch).expect("keys");
        assert_eq!(keys.value(0), r#"["u\"1","/A"]"#);
        assert_eq!(keys.value(1), r#"["u2",null]"#);
    }

    #[test]
    fn the_example_job_compiles() {
        let plan = JobPlan::compile(GOOD, clicks(), "event_time", &JobLimits::default())
            .expect("compiles");
        assert_eq!(plan.window(), WindowSpec::Tumble { size_ms: 60_000 });
        assert_eq!(plan.stream(), "clicks");
        let names: Vec<String> = plan
            .result_schema()
            .fields()
            .iter()
            .map(|field| field.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "page",
                "window_start",
                "window_end",
                "n",
                "_key",
                "_window_start",
                "_version",
                "_final"
            ]
        );
    }

    #[test]
    fn window_intervals_are_read() {
        let hop = GOOD.replace(
            "TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)",
            "HOP(clicks, event_time, INTERVAL '10' SECOND, INTERVAL '1 minute')",
        );
        let plan = JobPlan::compile(&hop, clicks(), "event_time", &JobLimits::default())
            .expect("hop compiles");
        assert_eq!(
            plan.window(),
            WindowSpec::Hop {
                slide_ms: 10_000,
                size_ms: 60_000
            }
        );
        let session = GOOD.replace(
            "TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)",
            "SESSION(clicks, event_time, INTERVAL '1.5' SECOND)",
        );
        let plan = JobPlan::compile(&session, clicks(), "event_time", &JobLimits::default())
            .expect("session compiles");
        assert_eq!(plan.window(), WindowSpec::Session { gap_ms: 1_500 });
    }

    #[test]
    fn queries_outside_the_subset_are_refused_where_they_go_wrong() {
        check_refused(&format!("{GOOD} HAVING COUNT(*) > 1"), 1, 154, "HAVING");
        check_refused(&format!("{GOOD} ORDER BY n"), 1, 156, "ORDER BY");
        check_refused(&format!("{GOOD} LIMIT 5"), 1, 153, "LIMIT");
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*)\nFROM clicks\nGROUP BY page, window_start, window_end",
            2,
            6,
            "not a window",
        );
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*)\nFROM SLIDE(clicks, event_time, INTERVAL '1' MINUTE)\nGROUP BY page, window_start, window_end",
            2,
            6,
            "unknown window",
        );
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*) FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)\nGROUP BY page, window_start",
            1,
            1,
            "window_end",
        );
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*)\nFROM TUMBLE(clicks, event_time, INTERVAL '1' MONTH)\nGROUP BY page, window_start, window_end",
            2,
            42,
            "months",
        );
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*)\nFROM HOP(clicks, event_time, INTERVAL '7' SECOND, INTERVAL '1' MINUTE)\nGROUP BY page, window_start, window_end",
            2,
            60,
            "whole multiple",
        );
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*) FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)\nWHERE window_start > 0 GROUP BY page, window_start, window_end",
            2,
            7,
            "WHERE",
        );
        check_refused(
            "SELECT page, window_start, window_end,\n  SUM(duration_ms) OVER (PARTITION BY page) FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) GROUP BY page, window_start, window_end",
            2,
            3,
            "OVER",
        );
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*) FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)\nWHERE page IN (SELECT page FROM clicks) GROUP BY page, window_start, window_end",
            2,
            7,
            "subqueries",
        );
        check_refused(
            "SELECT page, window_start, window_end,\n  stddev(duration_ms) FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) GROUP BY page, window_start, window_end",
            2,
            3,
            "stddev",
        );
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*) FROM TUMBLE(clicks, ts, INTERVAL '1' MINUTE) GROUP BY page, window_start, window_end",
            1,
            69,
            "event time",
        );
        check_refused(&format!("{GOOD}; {GOOD}"), 1, 148, "one SELECT");
        check_refused(
            "SELECT page, window_start, window_end, COUNT(*) FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)\nGROUP BY page, window_start, window_end, window_start + INTERVAL '1' SECOND",
            2,
            42,
            "uses a window column",
        );
    }

    #[test]
    fn windows_beyond_the_limits_are_refused_at_their_interval() {
        let job = |window: &str| {
            format!(
                "SELECT page, window_start, window_end, COUNT(*)\nFROM {window}\nGROUP BY page, window_start, window_end"
            )
        };
        // One event in 31,536,000,000 windows: the issue's 6.6 GB from one event.
        check_refused(
            &job("HOP(clicks, event_time, INTERVAL '1' MILLISECOND, INTERVAL '365' DAY)"),
            2,
            65,
            "31536000000 windows",
        );
        check_refused(
            &job("HOP(clicks, event_time, INTERVAL '1' SECOND, INTERVAL '1001' SECOND)"),
            2,
            60,
            "limits.max-windows-per-event",
        );
        check_refused(
            &job("TUMBLE(clicks, event_time, INTERVAL '367' DAY)"),
            2,
            42,
            "window size of 367d exceeds the limit of 366d",
        );
        check_refused(
            &job("SESSION(clicks, event_time, INTERVAL '10000' DAY)"),
            2,
            43,
            "session gap",
        );
        check_refused(
            &job("TUMBLE(clicks, event_time, INTERVAL '0' SECOND)"),
            2,
            42,
            "must be positive",
        );
        // Exactly at the limits compiles, and config can lower them.
        let at_limit = job("HOP(clicks, event_time, INTERVAL '1' SECOND, INTERVAL '1000' SECOND)");
        JobPlan::compile(&at_limit, clicks(), "event_time", &JobLimits::default())
            .expect("1,000 windows per event compile");
        let strict = JobLimits {
            max_windows_per_event: 10,
            max_window_interval_ms: 3_600_000,
        };
        let message = JobPlan::compile(&at_limit, clicks(), "event_time", &strict)
            .expect_err("a lower limit refuses it")
            .to_string();
        assert!(message.contains("over the limit of 10"), "{message}");
    }

    /// Compiles `sql` and checks that the planner refuses it at `line:column` with a message
    /// containing `needle`, and none of DataFusion's talk of bugs.
    #[track_caller]
    fn check_invalid(sql: &str, line: u64, column: u64, needle: &str) {
        match JobPlan::compile(sql, clicks(), "event_time", &JobLimits::default()) {
            Err(EngineError::Invalid { position, message }) => {
                assert_eq!(
                    (position.line, position.column),
                    (line, column),
                    "{message}"
                );
                assert!(message.contains(needle), "{message:?} lacks {needle:?}");
                for noise in ["bug", "Internal error", "Error during planning", "\n"] {
                    assert!(!message.contains(noise), "{message:?} has {noise:?}");
                }
            }
            Err(other) => panic!("expected a positioned planner error, got {other}"),
            Ok(_) => panic!("{sql} compiled"),
        }
    }

    #[test]
    fn planner_errors_say_where_in_the_sql() {
        let job = |select: &str, rest: &str| {
            format!(
                "SELECT page, window_start, window_end,\n  {select}\nFROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)\n{rest}GROUP BY page, window_start, window_end"
            )
        };
        // Unknown column, in SELECT and in WHERE.
        check_invalid(
            &job("COUNT(*) AS n, SUM(durattion_ms) AS total", ""),
            2,
            22,
            "No field named durattion_ms",
        );
        check_invalid(
            &job("COUNT(*) AS n", "WHERE countri = 'de'\n"),
            4,
            7,
            "countri",
        );
        // Unknown function.
        check_invalid(
            &job("COUNT(*) AS n, foo(page) AS f", ""),
            2,
            18,
            "Invalid function 'foo'",
        );
        // Arguments of the wrong type: DataFusion's "internal error" for aggregates.
        check_invalid(
            &job("SUM(duration_ms) AS total, SUM(page) AS n", ""),
            2,
            30,
            "sum(Utf8)",
        );
        check_invalid(&job("AVG(page) AS n", ""), 2, 3, "avg(Utf8)");
        check_invalid(
            &job("COUNT(*) AS n", "WHERE upper(duration_ms, 3) = 'x'\n"),
            4,
            7,
            "upper",
        );
        check_invalid(
            &job("COUNT(*) AS n", "WHERE page + 1 > 2\n"),
            4,
            7,
            "Utf8 + Int64",
        );
        // A column neither grouped nor aggregated.
        check_invalid(
            &job("user_id, COUNT(*) AS n", ""),
            2,
            3,
            "must appear in the GROUP BY clause",
        );
        // Reserved output names, at their alias.
        check_invalid(&job("COUNT(*) AS _key", ""), 2, 15, "reserved");
        // An unknown column in GROUP BY, which DataFusion reports without a span.
        check_invalid(
            "SELECT page, window_start, window_end, COUNT(*) AS n\nFROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)\nGROUP BY pag, window_start, window_end",
            3,
            10,
            "No field named pag",
        );
    }

    #[test]
    fn plan_errors_name_the_problem() {
        let unknown = GOOD.replace("page,", "pagee,");
        let message = JobPlan::compile(&unknown, clicks(), "event_time", &JobLimits::default())
            .expect_err("unknown column refused")
            .to_string();
        assert!(message.contains("pagee"), "{message}");
        assert!(message.contains("at line 1, column 8"), "{message}");
        let bad_type = Arc::new(Schema::new(vec![Field::new(
            "event_time",
            DataType::Utf8,
            false,
        )]));
        let message = JobPlan::compile(GOOD, bad_type, "event_time", &JobLimits::default())
            .expect_err("string event time refused")
            .to_string();
        assert!(message.contains("timestamp or an int64"), "{message}");
        assert!(matches!(
            JobPlan::compile("SELEC page", clicks(), "event_time", &JobLimits::default()),
            Err(EngineError::Parse(_))
        ));
    }
}
