//! Joins in job SQL: a windowed job may join its stream with a table, as of each stream
//! row's event time (Flink SQL's event-time temporal join):
//!
//! ```sql
//! SELECT u.country, window_start, window_end, COUNT(*) AS clicks
//! FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c
//! JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
//! GROUP BY u.country, window_start, window_end
//! ```
//!
//! The join keeps each stream row's event time, so windowing before or after it is the
//! same; the job is planned as a windowed job over the *joined rows*: the stream's columns,
//! then the table's (each renamed `<table alias>_<column>` where the stream has a column of
//! that name). [`split_join`] finds the join and rewrites the SQL text into that one-source
//! job: the join clause and the relation aliases become blanks and each qualified column
//! its joined name, padded, so that the positions of errors still point into the job as
//! written. A [`JoinPlan`] says how to make the joined rows: live with a
//! [`crate::TemporalJoin`], in recompute with an AS OF join over the table's versions
//! ([`crate::register_joined`]).

use std::any::TypeId;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{
    self, JoinConstraint, JoinOperator, SetExpr, Spanned, Statement, TableFactor, TableVersion,
};
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Location;

use crate::error::{EngineError, SqlPosition};
use crate::interval_join::IntervalJoinSpec;
use crate::plan::{WINDOW_END, WINDOW_START};
use crate::temporal_join::{JoinKind, TemporalJoinSpec};

/// The SQL dialect of jobs: DataFusion's generic dialect, which also reads `FOR SYSTEM_TIME
/// AS OF` after a table name.
#[derive(Debug, Default)]
pub(crate) struct JobDialect;

macro_rules! like_generic {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool {
            GenericDialect {}.$name()
        })*
    };
}

impl Dialect for JobDialect {
    fn dialect(&self) -> TypeId {
        // The parser's dialect checks treat it as the generic dialect.
        TypeId::of::<GenericDialect>()
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        GenericDialect {}.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        GenericDialect {}.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        GenericDialect {}.is_identifier_part(ch)
    }

    fn supports_table_versioning(&self) -> bool {
        true
    }

    like_generic!(
        supports_unicode_string_literal,
        supports_partition_by_after_order_by,
        supports_array_join_syntax,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_update_order_by,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_comma_separated_trim,
        supports_cte_without_as,
        supports_select_item_multi_column_alias,
        supports_xml_expressions,
    );
}

/// Parses job SQL in [`JobDialect`].
pub(crate) fn parse_statements(sql: &str) -> Result<Vec<Statement>, EngineError> {
    Parser::parse_sql(&JobDialect, sql).map_err(|error| EngineError::Parse(error.to_string()))
}

/// A table a job may join: a changelog stream read as the latest value per key, every
/// version kept by event time (config: `[[tables]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSource {
    /// The table's name in job SQL.
    pub name: String,
    /// The changelog's columns.
    pub schema: SchemaRef,
    /// The key column: a row sets its key's value from its event time on.
    pub key: String,
    /// The changelog's event time column (int64 epoch ms or a timestamp).
    pub event_time: String,
    /// A boolean column that marks a row as a delete of its key, if any.
    pub tombstone: Option<String>,
}

/// A stream a job may join with its own within an interval of event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSource {
    /// The stream's name in job SQL.
    pub name: String,
    /// Its columns.
    pub schema: SchemaRef,
    /// Its event time column (int64 epoch ms or a timestamp in ms).
    pub event_time: String,
}

/// What a job may join: the declared tables and streams (besides the one it reads).
#[derive(Debug, Clone, Default)]
pub struct JoinSources {
    /// Tables, joined as of each row's time.
    pub tables: Vec<TableSource>,
    /// Streams, joined within an interval.
    pub streams: Vec<StreamSource>,
}

/// The two kinds of join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinForm {
    /// A table's version valid at each stream row's time (`FOR SYSTEM_TIME AS OF`); the
    /// changelog column that marks deletes, if any.
    AsOf {
        /// The changelog's tombstone column.
        tombstone: Option<usize>,
    },
    /// The other stream's rows whose time is within `[lower_ms, upper_ms]` of the stream
    /// row's (`r.t BETWEEN s.t + lower AND s.t + upper`).
    Interval {
        /// The interval's lower bound, relative to the stream row's time.
        lower_ms: i64,
        /// The interval's upper bound.
        upper_ms: i64,
    },
}

/// How a job makes its joined rows from its stream and the other input (a table, or a
/// second stream).
#[derive(Debug, Clone)]
pub struct JoinPlan {
    pub(crate) kind: JoinKind,
    pub(crate) form: JoinForm,
    /// The stream as read.
    pub(crate) stream_schema: SchemaRef,
    pub(crate) stream_key: usize,
    /// The other input: its name, columns, event time and key columns.
    pub(crate) right_name: String,
    pub(crate) right_schema: SchemaRef,
    pub(crate) right_time: usize,
    pub(crate) right_key: usize,
    /// Each of the other input's columns' name among the joined rows' columns.
    pub(crate) joined_names: Vec<String>,
    /// The other input's columns the job uses: the only ones the live join keeps (the
    /// others are null in its rows). Every column until the job is planned.
    pub(crate) right_values: Vec<usize>,
    /// The WHERE's terms that read the stream's columns alone, as SQL over the stream: a
    /// stream row they do not hold for is left out of the job's rows whatever the join
    /// gives it, so it need not be joined.
    pub(crate) stream_filter_sql: Option<String>,
    /// `stream_filter_sql` over the stream's columns.
    pub(crate) stream_filter: Option<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
    /// The WHERE's terms that read the other input's columns alone, as SQL over its columns
    /// (by their names there), ANDed: in an inner join, a joined row whose table version or
    /// other stream row they do not hold for is left out of the job's rows.
    pub(crate) right_filter_sql: Option<String>,
    /// `right_filter_sql` over the table's columns, in an inner AS OF join: the live join
    /// keeps a version it does not hold for as a tombstone (see
    /// [`TemporalJoinSpec::table_filter`]).
    pub(crate) table_filter: Option<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
}

impl JoinPlan {
    /// The table or stream joined.
    pub fn right_name(&self) -> &str {
        &self.right_name
    }

    /// The table's changelog or the other stream's columns.
    pub fn right_schema(&self) -> SchemaRef {
        Arc::clone(&self.right_schema)
    }

    /// A table's version as of each row's time, or another stream's rows in an interval.
    pub fn form(&self) -> JoinForm {
        self.form
    }

    /// Inner or `LEFT`.
    pub fn kind(&self) -> JoinKind {
        self.kind
    }

    /// The stream's schema, as read (the job's [`crate::JobPlan::stream_schema`] is the joined
    /// rows').
    pub fn stream_schema(&self) -> SchemaRef {
        Arc::clone(&self.stream_schema)
    }

    /// The stream rows of `batch` that the job's WHERE can still keep: those its terms on
    /// the stream's columns alone hold for. The others would be dropped after the join;
    /// leaving them out before saves joining them. A batch the terms fail on (say, a
    /// division by zero in one row) is returned whole: the window operator reports that
    /// row.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn prefilter(
        &self,
        batch: arrow::array::RecordBatch,
    ) -> Result<arrow::array::RecordBatch, EngineError> {
        let Some(keep) = self
            .stream_filter
            .as_ref()
            .and_then(|filter| filter_holds(filter.as_ref(), &batch))
        else {
            return Ok(batch);
        };
        if keep.true_count() == batch.num_rows() {
            return Ok(batch);
        }
        Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
    }

    /// For an interval join whose watermark is `watermark` and lateness `lateness`: every
    /// joined row still to come has its stream row's time at or after the returned time (a
    /// later stream row is at or after the watermark less the lateness; one matched by a
    /// later row of the other stream, or emitted with nulls when it expires, at or after that
    /// less the interval's upper bound). Rows held in a [`crate::TimeOrder`] up to it come
    /// out in time order. `i64::MAX` for an AS OF join, whose rows need no holding.
    pub fn release_before(&self, watermark: i64, lateness: Duration) -> i64 {
        match self.form {
            JoinForm::AsOf { .. } => i64::MAX,
            JoinForm::Interval { upper_ms, .. } => watermark
                .saturating_sub(i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX))
                .saturating_sub(upper_ms.max(0)),
        }
    }

    /// Rows out of the live join (the stream's columns, then the other input's columns the
    /// job uses) as the joined rows of `joined` (the job's stream schema): the columns the
    /// job does not use are null.
    pub(crate) fn widen(
        &self,
        joined: &SchemaRef,
        batch: &arrow::array::RecordBatch,
    ) -> Result<arrow::array::RecordBatch, EngineError> {
        let n_stream = self.stream_schema.fields().len();
        let n_rows = batch.num_rows();
        let mut columns: Vec<arrow::array::ArrayRef> = batch.columns()[..n_stream].to_vec();
        let mut kept = batch.columns()[n_stream..].iter();
        for (index, field) in self.right_schema.fields().iter().enumerate() {
            if self.right_values.contains(&index) {
                let column = kept.next().ok_or_else(|| {
                    EngineError::Schema(format!(
                        "the join's rows have {} columns, fewer than the job uses",
                        batch.num_columns()
                    ))
                })?;
                columns.push(Arc::clone(column));
            } else {
                columns.push(arrow::array::new_null_array(field.data_type(), n_rows));
            }
        }
        Ok(arrow::array::RecordBatch::try_new(
            Arc::clone(joined),
            columns,
        )?)
    }

    /// For an AS OF join, the live join's specification: the stream's event time is column
    /// `stream_time`; the table has `table_partitions` input partitions whose rows may come
    /// `table_out_of_orderness` behind their largest event time; stream rows more than
    /// `stream_out_of_orderness` behind the stream's largest event time may be refused
    /// (make it at least what the job downstream still accepts). `None` for an interval join.
    pub fn temporal_join_spec(
        &self,
        stream_time: usize,
        table_partitions: u32,
        table_out_of_orderness: Duration,
        stream_out_of_orderness: Duration,
    ) -> Option<TemporalJoinSpec> {
        let JoinForm::AsOf { tombstone } = self.form else {
            return None;
        };
        Some(TemporalJoinSpec {
            stream_schema: Arc::clone(&self.stream_schema),
            stream_time,
            stream_keys: vec![self.stream_key],
            table_schema: Arc::clone(&self.right_schema),
            table_time: self.right_time,
            table_keys: vec![self.right_key],
            table_values: self.right_values.clone(),
            tombstone,
            kind: self.kind,
            table_partitions,
            table_out_of_orderness,
            stream_out_of_orderness,
            table_filter: self.table_filter.clone(),
        })
    }

    /// For an interval join, the live join's specification: the stream's event time is
    /// column `stream_time`; each input has its partitions, the same out-of-orderness and
    /// lateness. `None` for an AS OF join.
    pub fn interval_join_spec(
        &self,
        stream_time: usize,
        (stream_partitions, right_partitions): (u32, u32),
        max_out_of_orderness: Duration,
        allowed_lateness: Duration,
    ) -> Option<IntervalJoinSpec> {
        let JoinForm::Interval { lower_ms, upper_ms } = self.form else {
            return None;
        };
        let right_schema = Arc::new(self.right_schema.project(&self.right_values).ok()?);
        let right_time = self
            .right_values
            .iter()
            .position(|&index| index == self.right_time)?;
        let right_key = self
            .right_values
            .iter()
            .position(|&index| index == self.right_key)?;
        Some(IntervalJoinSpec {
            left_schema: Arc::clone(&self.stream_schema),
            left_time: stream_time,
            left_keys: vec![self.stream_key],
            right_schema,
            right_time,
            right_keys: vec![right_key],
            lower_ms,
            upper_ms,
            kind: self.kind,
            left_partitions: stream_partitions,
            right_partitions,
            max_out_of_orderness,
            allowed_lateness,
        })
    }

    /// The other stream's rows as an interval join takes them: the columns it keeps.
    ///
    /// # Errors
    ///
    /// A batch that is not of the other stream.
    pub fn right_rows(
        &self,
        batch: &arrow::array::RecordBatch,
    ) -> Result<arrow::array::RecordBatch, EngineError> {
        Ok(batch.project(&self.right_values)?)
    }

    /// The joined rows' schema: the stream's columns, then the other input's, by their
    /// joined names, nullable (a `LEFT` join leaves them null where nothing matched).
    pub(crate) fn joined_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .stream_schema
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        for (field, name) in self.right_schema.fields().iter().zip(&self.joined_names) {
            fields.push(field.as_ref().clone().with_name(name).with_nullable(true));
        }
        Arc::new(Schema::new(fields))
    }
}

/// What the join's condition says beyond the keys.
#[derive(Debug)]
enum ClauseForm {
    /// `FOR SYSTEM_TIME AS OF <stream>.<column>`: the column, and where.
    AsOf((String, SqlPosition)),
    /// `<right>.<time> BETWEEN <stream>.<time> + lower AND <stream>.<time> + upper`: the two
    /// time columns, and the bounds.
    Interval {
        stream_time: (String, SqlPosition),
        right_time: (String, SqlPosition),
        lower_ms: i64,
        upper_ms: i64,
    },
}

/// The join a job's SQL asks for, as parsed, before the table or stream joined is known.
#[derive(Debug)]
pub(crate) struct JoinClause {
    /// The joined table's or stream's name.
    pub(crate) table: String,
    table_position: SqlPosition,
    kind: JoinKind,
    stream_alias: String,
    table_alias: String,
    /// The stream column the ON condition names, and where.
    stream_key: (String, SqlPosition),
    /// The other input's column the ON condition names, and where.
    table_key: (String, SqlPosition),
    form: ClauseForm,
    /// Byte range of the text from after `TUMBLE(...)` to the end of the ON condition.
    clause: std::ops::Range<usize>,
    /// Qualified column references outside the clause: byte range, qualifier, column.
    references: Vec<(std::ops::Range<usize>, String, String, SqlPosition)>,
    /// Unqualified column names used outside the clause, with where.
    bare_names: Vec<(String, SqlPosition)>,
    /// The WHERE's conjuncts (its top-level ANDs).
    conjuncts: Vec<ast::Expr>,
}

fn position_at(location: Location) -> SqlPosition {
    SqlPosition {
        line: location.line.max(1),
        column: location.column.max(1),
    }
}

pub(crate) fn position_of(node: &impl Spanned) -> SqlPosition {
    position_at(node.span().start)
}

pub(crate) fn unsupported(position: SqlPosition, message: impl Into<String>) -> EngineError {
    EngineError::Unsupported {
        position,
        message: message.into(),
    }
}

/// The kind of `join` and its constraint: `[INNER] JOIN` or `LEFT JOIN`; any other refused
/// at its position, `how` saying what to write.
pub(crate) fn join_kind<'a>(
    join: &'a ast::Join,
    how: &str,
) -> Result<(JoinKind, &'a JoinConstraint), EngineError> {
    match &join.join_operator {
        JoinOperator::Join(constraint) | JoinOperator::Inner(constraint) => {
            Ok((JoinKind::Inner, constraint))
        }
        JoinOperator::Left(constraint) | JoinOperator::LeftOuter(constraint) => {
            Ok((JoinKind::Left, constraint))
        }
        _ => Err(unsupported(
            position_of(&join.relation),
            format!("only [INNER] JOIN and LEFT JOIN are supported; {how}"),
        )),
    }
}

/// The byte offset of `location` (line and column from 1, columns in characters) in `text`.
pub(crate) fn byte_offset(text: &str, location: Location) -> Option<usize> {
    let mut line_start = 0;
    for _ in 1..location.line {
        line_start += text[line_start..].find('\n')? + 1;
    }
    let line = &text[line_start..];
    let column = usize::try_from(location.column.max(1) - 1).ok()?;
    match line.char_indices().nth(column) {
        Some((offset, _)) => Some(line_start + offset),
        None if line.chars().count() == column => Some(line_start + line.len()),
        None => None,
    }
}

/// The byte offset just past the parenthesis that closes the one opening at or after
/// `from`, skipping quoted text.
pub(crate) fn past_closing_paren(text: &str, from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (offset, ch) in text[from..].char_indices() {
        match (quote, ch) {
            (Some(open), ch) if ch == open => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(ch),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(from + offset + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The top-level AND terms of `expr`.
pub(crate) fn split_conjuncts(expr: &ast::Expr, into: &mut Vec<ast::Expr>) {
    match unnest(expr) {
        ast::Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => {
            split_conjuncts(left, into);
            split_conjuncts(right, into);
        }
        other => into.push(other.clone()),
    }
}

/// `expr` without the parentheses around it.
pub(crate) fn unnest(mut expr: &ast::Expr) -> &ast::Expr {
    while let ast::Expr::Nested(inner) = expr {
        expr = inner;
    }
    expr
}

/// A column reference `<qualifier>.<column>`, as names.
fn qualified(expr: &ast::Expr) -> Option<(String, String)> {
    match expr {
        ast::Expr::CompoundIdentifier(idents) if idents.len() == 2 => {
            Some((idents[0].value.clone(), idents[1].value.clone()))
        }
        _ => None,
    }
}

/// Finds the join in a job's SQL: `None` for a job without one. Refuses, at its position,
/// any join but one `[INNER|LEFT] JOIN <table> FOR SYSTEM_TIME AS OF <stream>.<event time>
/// [AS <alias>] ON <stream>.<column> = <table>.<column>`.
pub(crate) fn split_join(sql: &str) -> Result<Option<JoinClause>, EngineError> {
    let statements = parse_statements(sql)?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return Ok(None);
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Ok(None);
    };
    let [from] = select.from.as_slice() else {
        return Ok(None);
    };
    let Some(join) = from.joins.first() else {
        return Ok(None);
    };
    if let Some(second) = from.joins.get(1) {
        return Err(unsupported(
            position_of(second),
            "a job joins its stream with one table",
        ));
    }
    let how = "a join is `[LEFT] JOIN <table> FOR SYSTEM_TIME AS OF <stream>.<event time> AS <alias> ON <stream>.<column> = <alias>.<key>`, or `[LEFT] JOIN <stream> AS <alias> ON <stream>.<column> = <alias>.<column> AND <alias>.<event time> BETWEEN <stream>.<event time> + INTERVAL ... AND <stream>.<event time> + INTERVAL ...`";
    if matches!(from.relation, TableFactor::Derived { .. }) {
        return Err(unsupported(
            position_of(&from.relation),
            "a join of two windowed aggregates (`FROM (SELECT ...) AS a JOIN (SELECT ...) AS b`) is a window join: compile it with WindowJoinPlan",
        ));
    }
    let TableFactor::Table {
        name: window_name,
        alias: stream_alias,
        args: Some(window_args),
        ..
    } = &from.relation
    else {
        return Err(unsupported(
            position_of(&from.relation),
            "FROM must be TUMBLE(...), HOP(...) or SESSION(...) before a join",
        ));
    };
    let Some(ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Identifier(stream)))) =
        window_args.args.first()
    else {
        return Err(unsupported(
            position_of(&from.relation),
            "the window's first argument must name the stream",
        ));
    };
    let stream_alias = stream_alias
        .as_ref()
        .map_or_else(|| stream.value.clone(), |alias| alias.name.value.clone());
    let TableFactor::Table {
        name: table_name,
        alias: table_alias,
        args: None,
        version,
        ..
    } = &join.relation
    else {
        return Err(unsupported(position_of(&join.relation), how));
    };
    let table = table_name.to_string();
    let table_position = position_of(table_name);
    let table_alias = table_alias
        .as_ref()
        .map_or_else(|| table.clone(), |alias| alias.name.value.clone());
    let (kind, constraint) = join_kind(join, how)?;
    let JoinConstraint::On(on) = constraint else {
        return Err(unsupported(
            table_position,
            format!("a join needs an ON condition; {how}"),
        ));
    };
    let condition = unnest(on);
    let is = |qualifier: &str, alias: &str| qualifier.eq_ignore_ascii_case(alias);
    let side = |expr: &ast::Expr| {
        qualified(unnest(expr)).map(|(qualifier, column)| (qualifier, column, position_of(expr)))
    };
    type Column = (String, SqlPosition);
    // The keys' equality, `<stream>.<column> = <alias>.<column>` either way round.
    let keys = |expr: &ast::Expr| -> Option<(Column, Column)> {
        let ast::Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Eq,
            right,
        } = unnest(expr)
        else {
            return None;
        };
        let (left, right) = (side(left)?, side(right)?);
        if is(&left.0, &stream_alias) && is(&right.0, &table_alias) {
            Some(((left.1, left.2), (right.1, right.2)))
        } else if is(&left.0, &table_alias) && is(&right.0, &stream_alias) {
            Some(((right.1, right.2), (left.1, left.2)))
        } else {
            None
        }
    };
    let (stream_key, table_key, form) = match version {
        Some(TableVersion::ForSystemTimeAsOf(expr)) => {
            let as_of = match qualified(expr) {
                Some((qualifier, column)) if is(&qualifier, &stream_alias) => {
                    (column, position_of(expr))
                }
                _ => {
                    return Err(unsupported(
                        position_of(expr),
                        format!(
                            "FOR SYSTEM_TIME AS OF takes the stream's event time, as `{stream_alias}.<event time>`"
                        ),
                    ));
                }
            };
            let Some((stream_key, table_key)) = keys(condition) else {
                return Err(unsupported(
                    position_of(on),
                    format!(
                        "the condition of a join with a table must be one equality of a stream column and the table's key, `{stream_alias}.<column> = {table_alias}.<key>`"
                    ),
                ));
            };
            (stream_key, table_key, ClauseForm::AsOf(as_of))
        }
        Some(_) => {
            return Err(unsupported(
                table_position,
                format!("only FOR SYSTEM_TIME AS OF <stream>.<event time> versions a table; {how}"),
            ));
        }
        None => {
            let refuse = || {
                unsupported(
                    position_of(on),
                    format!(
                        "`{table}` has no FOR SYSTEM_TIME AS OF, so it is a stream joined within an interval: the condition must be `{stream_alias}.<column> = {table_alias}.<column> AND {table_alias}.<event time> BETWEEN {stream_alias}.<event time> [+|- INTERVAL ...] AND {stream_alias}.<event time> [+|- INTERVAL ...]`; a table is joined `FOR SYSTEM_TIME AS OF {stream_alias}.<event time>`"
                    ),
                )
            };
            let ast::Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::And,
                right,
            } = condition
            else {
                return Err(refuse());
            };
            let (equality, between) = if keys(left).is_some() {
                (left, right)
            } else {
                (right, left)
            };
            let Some((stream_key, table_key)) = keys(equality) else {
                return Err(refuse());
            };
            let ast::Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } = unnest(between)
            else {
                return Err(refuse());
            };
            let right_time = match side(expr) {
                Some((qualifier, column, position)) if is(&qualifier, &table_alias) => {
                    (column, position)
                }
                _ => return Err(refuse()),
            };
            // A bound: `<stream>.<time>`, plus or minus a constant interval.
            let bound = |expr: &ast::Expr| -> Result<(Column, i64), EngineError> {
                let (column, offset_ms) = match unnest(expr) {
                    ast::Expr::BinaryOp {
                        left,
                        op: op @ (ast::BinaryOperator::Plus | ast::BinaryOperator::Minus),
                        right,
                    } => {
                        let offset = crate::plan::interval_offset_ms(right)?;
                        let sign = if *op == ast::BinaryOperator::Minus {
                            -1
                        } else {
                            1
                        };
                        (side(left), sign * offset)
                    }
                    other => (side(other), 0),
                };
                match column {
                    Some((qualifier, column, position)) if is(&qualifier, &stream_alias) => {
                        Ok(((column, position), offset_ms))
                    }
                    _ => Err(refuse()),
                }
            };
            let (stream_time, lower_ms) = bound(low)?;
            let (high_time, upper_ms) = bound(high)?;
            if !stream_time.0.eq_ignore_ascii_case(&high_time.0) {
                return Err(unsupported(
                    high_time.1,
                    "both bounds must be of one stream time",
                ));
            }
            if lower_ms > upper_ms {
                return Err(unsupported(
                    position_of(between.as_ref()),
                    format!(
                        "the interval's lower bound ({lower_ms} ms) is after its upper bound ({upper_ms} ms)"
                    ),
                ));
            }
            (
                stream_key,
                table_key,
                ClauseForm::Interval {
                    stream_time,
                    right_time,
                    lower_ms,
                    upper_ms,
                },
            )
        }
    };

    // The text to blank: from the window's closing parenthesis to the end of ON (and of
    // any parentheses around it).
    let window_start = byte_offset(sql, window_name.span().start)
        .ok_or_else(|| EngineError::plan("the window's position is outside the SQL"))?;
    let clause_start = past_closing_paren(sql, window_start).ok_or_else(|| {
        unsupported(
            position_of(window_name),
            "the window's parentheses do not close",
        )
    })?;
    let mut clause_end = byte_offset(sql, on.span().end)
        .ok_or_else(|| EngineError::plan("the join condition's position is outside the SQL"))?;
    let open_parens = |text: &str| {
        text.chars().filter(|&ch| ch == '(').count() as isize
            - text.chars().filter(|&ch| ch == ')').count() as isize
    };
    while open_parens(&sql[clause_start..clause_end]) > 0 {
        match sql[clause_end..].find(')') {
            Some(offset) => clause_end += offset + 1,
            None => break,
        }
    }

    let mut references = Vec::new();
    let mut bare_names = Vec::new();
    let mut failure = None;
    let _ = ast::visit_expressions(&statements[0], |expr: &ast::Expr| {
        let span = expr.span();
        let (Some(start), Some(end)) = (byte_offset(sql, span.start), byte_offset(sql, span.end))
        else {
            return ControlFlow::Continue(());
        };
        // The join clause goes, and the window's arguments name the stream and its time.
        if (start >= clause_start && end <= clause_end)
            || (start >= window_start && end <= clause_start)
        {
            return ControlFlow::Continue(());
        }
        match expr {
            ast::Expr::CompoundIdentifier(idents) if idents.len() == 2 => {
                references.push((
                    start..end,
                    idents[0].value.clone(),
                    idents[1].value.clone(),
                    position_of(expr),
                ));
            }
            ast::Expr::CompoundIdentifier(_) => {
                failure = Some(unsupported(
                    position_of(expr),
                    format!("name a column as `<stream or table>.<column>`, found `{expr}`"),
                ));
                return ControlFlow::Break(());
            }
            ast::Expr::Identifier(ident) => {
                bare_names.push((ident.value.clone(), position_of(expr)));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(Some(JoinClause {
        table,
        table_position,
        kind,
        stream_alias,
        table_alias,
        stream_key,
        table_key,
        form,
        clause: clause_start..clause_end,
        references,
        bare_names,
        conjuncts: select
            .selection
            .as_ref()
            .map(|selection| {
                let mut conjuncts = Vec::new();
                split_conjuncts(selection, &mut conjuncts);
                conjuncts
            })
            .unwrap_or_default(),
    }))
}

/// A name as SQL text: bare when it reads back as itself, else quoted.
fn sql_name(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|ch| ch.is_ascii_lowercase() || ch == '_')
        && name
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Whether `name` is `window_start` or `window_end`, the columns the window adds.
fn is_window_column(name: &str) -> bool {
    name.eq_ignore_ascii_case(WINDOW_START) || name.eq_ignore_ascii_case(WINDOW_END)
}

/// Finds the column `name` (as SQL compares names: case-insensitively unless quoted;
/// here, exactly first, then case-insensitively).
pub(crate) fn column_index(schema: &Schema, name: &str) -> Option<usize> {
    schema.index_of(name).ok().or_else(|| {
        schema
            .fields()
            .iter()
            .position(|field| field.name().eq_ignore_ascii_case(name))
    })
}

impl JoinClause {
    /// The join against `table`, and the job's SQL rewritten as a one-source job over the
    /// joined rows (see the module docs). `stream_schema` is the stream as read,
    /// `event_time` its event time column.
    pub(crate) fn resolve(
        &self,
        sql: &str,
        stream_schema: &SchemaRef,
        event_time: &str,
        sources: &JoinSources,
    ) -> Result<(JoinPlan, String), EngineError> {
        let named = |name: &str| name.eq_ignore_ascii_case(&self.table);
        let table = sources.tables.iter().find(|table| named(&table.name));
        let stream = sources.streams.iter().find(|stream| named(&stream.name));
        let (right_name, right_schema, right_time_name, what) = match (&self.form, table, stream) {
            (ClauseForm::AsOf(_), Some(table), _) => {
                (&table.name, &table.schema, &table.event_time, "table")
            }
            (ClauseForm::Interval { .. }, _, Some(stream)) => {
                (&stream.name, &stream.schema, &stream.event_time, "stream")
            }
            (ClauseForm::AsOf(_), None, Some(_)) => {
                return Err(EngineError::Invalid {
                    position: self.table_position,
                    message: format!(
                        "`{}` is a stream, not a table: join it within an interval, or declare a table over it with [[tables]]",
                        self.table
                    ),
                });
            }
            (ClauseForm::Interval { .. }, Some(_), None) => {
                return Err(EngineError::Invalid {
                    position: self.table_position,
                    message: format!(
                        "`{}` is a table: join it FOR SYSTEM_TIME AS OF the stream's event time",
                        self.table
                    ),
                });
            }
            (ClauseForm::AsOf(_), None, None) => {
                return Err(EngineError::Invalid {
                    position: self.table_position,
                    message: format!(
                        "`{}` is not a declared table; declare it with [[tables]] name = \"{}\", stream = \"<its changelog stream>\"",
                        self.table, self.table
                    ),
                });
            }
            (ClauseForm::Interval { .. }, None, None) => {
                return Err(EngineError::Invalid {
                    position: self.table_position,
                    message: format!("`{}` is not a declared stream", self.table),
                });
            }
        };
        let in_stream = |name: &str, position: SqlPosition| {
            column_index(stream_schema, name).ok_or_else(|| EngineError::Invalid {
                position,
                message: format!("the stream has no column `{name}`"),
            })
        };
        let in_table = |name: &str, position: SqlPosition| {
            column_index(right_schema, name).ok_or_else(|| EngineError::Invalid {
                position,
                message: format!("the {what} `{right_name}` has no column `{name}`"),
            })
        };
        let stream_time_column = match &self.form {
            ClauseForm::AsOf(column) => column,
            ClauseForm::Interval { stream_time, .. } => stream_time,
        };
        if in_stream(&stream_time_column.0, stream_time_column.1)?
            != column_index(stream_schema, event_time).unwrap_or(usize::MAX)
        {
            let what = match &self.form {
                ClauseForm::AsOf(_) => "FOR SYSTEM_TIME AS OF",
                ClauseForm::Interval { .. } => "the interval",
            };
            return Err(unsupported(
                stream_time_column.1,
                format!(
                    "{what} must name the stream's event time `{event_time}`, not `{}`",
                    stream_time_column.0
                ),
            ));
        }
        let stream_key = in_stream(&self.stream_key.0, self.stream_key.1)?;
        let table_key = in_table(&self.table_key.0, self.table_key.1)?;
        if let Some(table) = table.filter(|_| matches!(self.form, ClauseForm::AsOf(_))) {
            let declared_key = column_index(&table.schema, &table.key).ok_or_else(|| {
                EngineError::plan(format!(
                    "the table `{}` is keyed by `{}`, which its changelog lacks",
                    table.name, table.key
                ))
            })?;
            if table_key != declared_key {
                return Err(EngineError::Invalid {
                    position: self.table_key.1,
                    message: format!(
                        "a join must match the table's key: `{}` is keyed by `{}`",
                        table.name, table.key
                    ),
                });
            }
        }
        let (stream_type, table_type) = (
            stream_schema.field(stream_key).data_type(),
            right_schema.field(table_key).data_type(),
        );
        if stream_type != table_type {
            return Err(EngineError::Invalid {
                position: self.stream_key.1,
                message: format!(
                    "the join compares `{}` ({stream_type}) with `{}.{}` ({table_type})",
                    self.stream_key.0, self.table_alias, self.table_key.0
                ),
            });
        }
        let table_time = column_index(right_schema, right_time_name).ok_or_else(|| {
            EngineError::plan(format!(
                "the {what} `{right_name}`'s event time `{right_time_name}` is not among its columns"
            ))
        })?;
        let form = match &self.form {
            ClauseForm::AsOf(_) => JoinForm::AsOf {
                tombstone: table
                    .and_then(|table| table.tombstone.as_ref())
                    .map(|name| {
                        column_index(right_schema, name).ok_or_else(|| {
                            EngineError::plan(format!(
                                "the table `{right_name}`'s tombstone column `{name}` is not in its changelog"
                            ))
                        })
                    })
                    .transpose()?,
            },
            ClauseForm::Interval {
                right_time,
                lower_ms,
                upper_ms,
                ..
            } => {
                if in_table(&right_time.0, right_time.1)? != table_time {
                    return Err(unsupported(
                        right_time.1,
                        format!(
                            "the interval must bound the stream `{right_name}`'s event time `{right_time_name}`, not `{}`",
                            right_time.0
                        ),
                    ));
                }
                JoinForm::Interval {
                    lower_ms: *lower_ms,
                    upper_ms: *upper_ms,
                }
            }
        };
        let table_schema = right_schema;

        // Joined names: a table column keeps its name unless the stream (or the window)
        // has that name; then it is `<table alias>_<column>`.
        let taken =
            |name: &str| column_index(stream_schema, name).is_some() || is_window_column(name);
        let mut joined_names = Vec::with_capacity(table_schema.fields().len());
        let mut clashing = Vec::new();
        for field in table_schema.fields() {
            if taken(field.name()) {
                let renamed = format!("{}_{}", self.table_alias, field.name());
                if taken(&renamed) {
                    return Err(EngineError::Invalid {
                        position: self.table_position,
                        message: format!(
                            "the table's column `{}` would be `{renamed}` among the joined columns, but the stream has a column of that name",
                            field.name()
                        ),
                    });
                }
                clashing.push(field.name().to_lowercase());
                joined_names.push(renamed);
            } else {
                joined_names.push(field.name().clone());
            }
        }
        if let Some((name, position)) = self
            .bare_names
            .iter()
            .find(|(name, _)| clashing.contains(&name.to_lowercase()))
        {
            return Err(EngineError::Invalid {
                position: *position,
                message: format!(
                    "`{name}` is a column of both the stream and the table; write `{}.{name}` or `{}.{name}`",
                    self.stream_alias, self.table_alias
                ),
            });
        }

        // The one-source text: edits from the end, so earlier offsets hold.
        let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
        for (range, qualifier, column, position) in &self.references {
            let name = if qualifier.eq_ignore_ascii_case(&self.stream_alias) {
                if is_window_column(column) {
                    column.to_lowercase()
                } else {
                    stream_schema
                        .field(in_stream(column, *position)?)
                        .name()
                        .clone()
                }
            } else if qualifier.eq_ignore_ascii_case(&self.table_alias) {
                joined_names[in_table(column, *position)?].clone()
            } else {
                return Err(EngineError::Invalid {
                    position: *position,
                    message: format!(
                        "`{qualifier}` is neither the stream (`{}`) nor the table (`{}`)",
                        self.stream_alias, self.table_alias
                    ),
                });
            };
            edits.push((range.clone(), sql_name(&name)));
        }
        edits.push((self.clause.clone(), String::new()));
        edits.sort_by_key(|(range, _)| std::cmp::Reverse(range.start));
        let mut text = sql.to_string();
        for (range, replacement) in edits {
            let original = &sql[range.clone()];
            // Blanks or padding to the original's width, its line breaks kept, so that
            // later positions hold.
            let replaced: String = if replacement.is_empty() {
                original
                    .chars()
                    .map(|ch| if ch == '\n' { '\n' } else { ' ' })
                    .collect()
            } else {
                let width = original.chars().count();
                format!("{replacement:width$}")
            };
            text.replace_range(range, &replaced);
        }
        let plan = JoinPlan {
            kind: self.kind,
            form,
            stream_schema: Arc::clone(stream_schema),
            stream_key,
            right_name: right_name.clone(),
            right_schema: Arc::clone(table_schema),
            right_time: table_time,
            right_key: table_key,
            right_values: (0..table_schema.fields().len()).collect(),
            joined_names,
            stream_filter_sql: self.stream_filter_sql(stream_schema, &clashing),
            stream_filter: None,
            right_filter_sql: self.right_filter_sql(stream_schema, table_schema),
            table_filter: None,
        };
        Ok((plan, text))
    }

    /// The WHERE's terms that name stream columns alone (qualified by the stream, or bare
    /// and not the other input's), as SQL over the stream, ANDed; `None` without any.
    fn stream_filter_sql(&self, stream_schema: &SchemaRef, clashing: &[String]) -> Option<String> {
        self.side_filter_sql(|expr| match expr {
            ast::Expr::CompoundIdentifier(idents)
                if idents.len() == 2
                    && idents[0].value.eq_ignore_ascii_case(&self.stream_alias) =>
            {
                *expr = ast::Expr::Identifier(idents[1].clone());
                true
            }
            ast::Expr::CompoundIdentifier(_) => false,
            ast::Expr::Identifier(ident) => {
                column_index(stream_schema, &ident.value).is_some()
                    && !clashing.contains(&ident.value.to_lowercase())
                    && !is_window_column(&ident.value)
            }
            _ => true,
        })
    }

    /// The WHERE's terms that name the other input's columns alone (qualified by its alias,
    /// or bare and not the stream's), as SQL over the other input's columns, each quoted as
    /// its schema spells it, ANDed; `None` without any.
    fn right_filter_sql(&self, stream_schema: &SchemaRef, right_schema: &Schema) -> Option<String> {
        let quoted = |index: usize| {
            ast::Expr::Identifier(ast::Ident::with_quote(
                '"',
                right_schema.field(index).name().clone(),
            ))
        };
        self.side_filter_sql(|expr| match expr {
            ast::Expr::CompoundIdentifier(idents)
                if idents.len() == 2 && idents[0].value.eq_ignore_ascii_case(&self.table_alias) =>
            {
                match column_index(right_schema, &idents[1].value) {
                    Some(index) => {
                        *expr = quoted(index);
                        true
                    }
                    None => false,
                }
            }
            ast::Expr::CompoundIdentifier(_) => false,
            ast::Expr::Identifier(ident) => {
                if column_index(stream_schema, &ident.value).is_some()
                    || is_window_column(&ident.value)
                {
                    return false;
                }
                match column_index(right_schema, &ident.value) {
                    Some(index) => {
                        *expr = quoted(index);
                        true
                    }
                    None => false,
                }
            }
            _ => true,
        })
    }

    /// The WHERE's terms whose every column reference `rewrite` takes (rewriting it in
    /// place, returning true) as SQL, each in parentheses, ANDed; `None` without any.
    fn side_filter_sql(&self, mut rewrite: impl FnMut(&mut ast::Expr) -> bool) -> Option<String> {
        let mut terms = Vec::new();
        for conjunct in &self.conjuncts {
            let mut term = conjunct.clone();
            let mut one_side = true;
            let _ = ast::visit_expressions_mut(&mut term, |expr: &mut ast::Expr| {
                if matches!(
                    expr,
                    ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_)
                ) && !rewrite(expr)
                {
                    one_side = false;
                }
                ControlFlow::<()>::Continue(())
            });
            if one_side {
                terms.push(format!("({term})"));
            }
        }
        (!terms.is_empty()).then(|| terms.join(" AND "))
    }

    /// The job's SQL with the join left out (blanks in its place): its window, stream and
    /// time column as written.
    pub(crate) fn without_join(&self, sql: &str) -> String {
        let mut text = sql.to_string();
        let blanks: String = sql[self.clause.clone()]
            .chars()
            .map(|ch| if ch == '\n' { '\n' } else { ' ' })
            .collect();
        text.replace_range(self.clause.clone(), &blanks);
        text
    }
}

/// Where `filter` holds (true; false where it is false or null) over the rows of `batch`;
/// `None` where it fails on the batch or is not boolean.
pub(crate) fn filter_holds(
    filter: &dyn datafusion::physical_expr::PhysicalExpr,
    batch: &arrow::array::RecordBatch,
) -> Option<arrow::array::BooleanArray> {
    let holds = filter
        .evaluate(batch)
        .and_then(|value| value.into_array(batch.num_rows()))
        .ok()?;
    let holds = holds
        .as_any()
        .downcast_ref::<arrow::array::BooleanArray>()?;
    Some(nulls_as_false(holds))
}

/// `flags` with its nulls as false.
pub(crate) fn nulls_as_false(flags: &arrow::array::BooleanArray) -> arrow::array::BooleanArray {
    match arrow::array::Array::nulls(flags) {
        Some(_) => arrow::compute::prep_null_mask_filter(flags),
        None => flags.clone(),
    }
}
