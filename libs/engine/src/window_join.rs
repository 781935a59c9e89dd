//! Joins of two windowed aggregates on their windows, as Nexmark q8 is written:
//!
//! ```sql
//! SELECT p.id, p.name, p.window_start, a.auctions
//! FROM (SELECT id, name, window_start, window_end, COUNT(*) AS persons
//!       FROM TUMBLE(persons, event_time, INTERVAL '10' SECOND)
//!       GROUP BY id, name, window_start, window_end) AS p
//! JOIN (SELECT seller, window_start, window_end, COUNT(*) AS auctions
//!       FROM TUMBLE(auctions, event_time, INTERVAL '10' SECOND)
//!       GROUP BY seller, window_start, window_end) AS a
//! ON p.id = a.seller AND p.window_start = a.window_start
//! ```
//!
//! Each side is an ordinary windowed job over its own stream (a [`JobPlan`], compiled from
//! the subquery's text with everything else blanked, so its errors point into the job as
//! written); both have the same tumbling or hopping window. The join is Flink's window
//! join: a window's results are joined once, when neither side's can change any more (both
//! sides' watermarks have passed the window's end plus the allowed lateness, so a late event
//! for it would be refused), from the last version of each side's result rows of that
//! window, matched on the `ON` columns (a null matches nothing). `LEFT` keeps a left row with
//! no match, the right's columns null. Each joined row is emitted once, `_version` 1 and
//! `_final` true; its `_key` is the left row's key, then the right's (nulls for none).
//! Early results are not joined. Live ([`WindowJoin`], fed the two sides' window operators'
//! results and watermarks) and recompute ([`recompute_window_join`]: both sides recomputed,
//! then joined by DataFusion) give the same rows in the same order: by window start, then
//! the left key, then the right key.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType};
use arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    self, GroupByExpr, JoinConstraint, SelectItem, SetExpr, Spanned, Statement, TableFactor,
};
use hashbrown::HashMap;

use crate::error::{EngineError, SqlPosition};
use crate::join_plan::{
    byte_offset, column_index, join_kind, parse_statements, past_closing_paren, position_of,
    split_conjuncts, unnest, unsupported,
};
use crate::operator::render_keys;
use crate::plan::{
    BOOKKEEPING_COLUMNS, FINAL_COLUMN, JobLimits, JobPlan, KEY_COLUMN, WINDOW_END, WINDOW_START,
    WINDOW_START_COLUMN, bookkeeping_fields,
};
use crate::recompute::{KEY_PREFIX, WINDOW_START_ALIAS, quote_ident};
use crate::temporal_join::JoinKind;
use crate::window::WindowSpec;

/// How many columns every result row ends with, after the user's.
const BOOKKEEPING: usize = BOOKKEEPING_COLUMNS.len();

/// The index of the bookkeeping column `column` among a result's `n_columns`.
fn bookkeeping_index(n_columns: usize, column: &str) -> usize {
    let at = BOOKKEEPING_COLUMNS
        .iter()
        .position(|name| *name == column)
        .expect("one of BOOKKEEPING_COLUMNS");
    n_columns - BOOKKEEPING + at
}

/// A [`WindowJoin::snapshot`]'s metadata keys.
const SNAPSHOT_FINGERPRINT: &str = "runnel.window_join.fingerprint";
const SNAPSHOT_WATERMARKS: &str = "runnel.window_join.watermarks";

const HOW: &str = "a join of two windowed aggregates is `SELECT <a>.<column>, ... FROM (<windowed job>) AS <a> [LEFT] JOIN (<windowed job>) AS <b> ON <a>.window_start = <b>.window_start [AND <a>.<column> = <b>.<column> ...]`";

/// A column the outer query names, as written.
#[derive(Debug, Clone)]
struct ColumnRef {
    qualifier: Option<String>,
    name: String,
    position: SqlPosition,
}

impl ColumnRef {
    fn of(expr: &ast::Expr) -> Option<ColumnRef> {
        let position = position_of(expr);
        match unnest(expr) {
            ast::Expr::Identifier(ident) => Some(ColumnRef {
                qualifier: None,
                name: ident.value.clone(),
                position,
            }),
            ast::Expr::CompoundIdentifier(idents) if idents.len() == 2 => Some(ColumnRef {
                qualifier: Some(idents[0].value.clone()),
                name: idents[1].value.clone(),
                position,
            }),
            _ => None,
        }
    }
}

/// One side of the join as written: its alias and its job's SQL (the subquery's text, the
/// rest of the job blanked).
#[derive(Debug, Clone)]
struct SideClause {
    alias: String,
    sql: String,
    position: SqlPosition,
}

impl SideClause {
    /// The side's SQL, refused at its position when it joins anything itself.
    fn one_source_sql(&self) -> Result<&str, EngineError> {
        if JobPlan::joined_of(&self.sql)?.is_some() {
            return Err(unsupported(
                self.position,
                "a side of a window join reads one stream, without a join of its own",
            ));
        }
        Ok(&self.sql)
    }
}

/// A window join as parsed, before the streams' schemas are known.
#[derive(Debug, Clone)]
struct WindowJoinClause {
    sides: [SideClause; 2],
    kind: JoinKind,
    on: Vec<(ColumnRef, ColumnRef)>,
    on_position: SqlPosition,
    projection: Vec<(ColumnRef, Option<String>)>,
}

/// `sql` with every character outside `range` a blank (line breaks kept), so that positions
/// in it are positions in `sql`.
fn blank_outside(sql: &str, range: std::ops::Range<usize>) -> String {
    sql.char_indices()
        .map(|(offset, ch)| {
            if range.contains(&offset) || ch == '\n' {
                ch
            } else {
                ' '
            }
        })
        .collect()
}

/// The side `relation` of a window join: `(<query>) AS <alias>`.
fn side_clause(sql: &str, relation: &TableFactor) -> Result<SideClause, EngineError> {
    let TableFactor::Derived {
        subquery,
        alias,
        lateral: false,
        ..
    } = relation
    else {
        return Err(unsupported(position_of(relation), HOW));
    };
    let Some(alias) = alias else {
        return Err(unsupported(
            position_of(relation),
            "name each side of a window join: `(SELECT ...) AS <alias>`",
        ));
    };
    let position = position_of(subquery.as_ref());
    let start = byte_offset(sql, subquery.span().start)
        .ok_or_else(|| unsupported(position, "cannot find the subquery's text"))?;
    let open = sql[..start]
        .char_indices()
        .rev()
        .find(|(_, ch)| !ch.is_whitespace())
        .filter(|(_, ch)| *ch == '(')
        .map(|(offset, _)| offset)
        .ok_or_else(|| unsupported(position, "cannot find the subquery's parenthesis"))?;
    let close = past_closing_paren(sql, open)
        .ok_or_else(|| unsupported(position, "the subquery's parenthesis is not closed"))?;
    Ok(SideClause {
        alias: alias.name.value.clone(),
        sql: blank_outside(sql, open + 1..close - 1),
        position,
    })
}

/// Finds a join of two windowed aggregates in `sql`: `None` for any other job. Refuses, at
/// its position, what such a join may not have.
fn split_window_join(sql: &str) -> Result<Option<WindowJoinClause>, EngineError> {
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
    if !matches!(from.relation, TableFactor::Derived { .. }) {
        return Ok(None);
    }
    let refuse =
        |position: SqlPosition, what: &str| -> Result<Option<WindowJoinClause>, EngineError> {
            Err(unsupported(
                position,
                format!("a join of two windowed aggregates has no {what}; {HOW}"),
            ))
        };
    if let Some(with) = &query.with {
        return refuse(position_of(with), "WITH");
    }
    if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return refuse(position_of(query.as_ref()), "ORDER BY, LIMIT or FETCH");
    }
    if let Some(selection) = &select.selection {
        return refuse(position_of(selection), "WHERE");
    }
    if let Some(having) = &select.having {
        return refuse(position_of(having), "HAVING");
    }
    if select.distinct.is_some() {
        return refuse(position_of(select.as_ref()), "DISTINCT");
    }
    match &select.group_by {
        GroupByExpr::Expressions(exprs, _) if exprs.is_empty() => {}
        group_by => return refuse(position_of(group_by), "GROUP BY"),
    }
    let [join] = from.joins.as_slice() else {
        let position = from
            .joins
            .get(1)
            .map_or_else(|| position_of(&from.relation), position_of);
        return Err(unsupported(
            position,
            format!("a windowed aggregate in FROM is joined with exactly one other; {HOW}"),
        ));
    };
    let (kind, constraint) = join_kind(join, HOW)?;
    let JoinConstraint::On(on) = constraint else {
        return Err(unsupported(position_of(&join.relation), HOW));
    };
    let sides = [
        side_clause(sql, &from.relation)?,
        side_clause(sql, &join.relation)?,
    ];
    if sides[0].alias.eq_ignore_ascii_case(&sides[1].alias) {
        return Err(unsupported(
            position_of(&join.relation),
            format!("both sides are named `{}`", sides[1].alias),
        ));
    }
    let mut conjuncts = Vec::new();
    split_conjuncts(on, &mut conjuncts);
    let mut pairs = Vec::with_capacity(conjuncts.len());
    for conjunct in &conjuncts {
        let pair = match unnest(conjunct) {
            ast::Expr::BinaryOp {
                left,
                op: ast::BinaryOperator::Eq,
                right,
            } => ColumnRef::of(left).zip(ColumnRef::of(right)),
            _ => None,
        };
        let Some(pair) = pair else {
            return Err(unsupported(
                position_of(conjunct),
                format!("a window join's ON is equalities of the two sides' columns; {HOW}"),
            ));
        };
        pairs.push(pair);
    }
    let mut projection = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(expr) => (expr, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
            _ => {
                return Err(unsupported(
                    position_of(item),
                    "a window join selects its sides' columns by name, e.g. `a.window_start, a.auctions, p.name AS seller`",
                ));
            }
        };
        let Some(column) = ColumnRef::of(expr) else {
            return Err(unsupported(
                position_of(expr),
                "a window join selects its sides' columns by name (compute expressions inside a side's SELECT)",
            ));
        };
        projection.push((column, alias));
    }
    Ok(Some(WindowJoinClause {
        sides,
        kind,
        on: pairs,
        on_position: position_of(on),
        projection,
    }))
}

/// A compiled join of two windowed aggregates (see the module docs).
#[derive(Debug)]
pub struct WindowJoinPlan {
    sql: String,
    sides: [Arc<JobPlan>; 2],
    kind: JoinKind,
    /// Result columns of the left and the right side that must be equal, besides the window.
    keys: Vec<(usize, usize)>,
    /// Each output column: its side (0 left, 1 right) and its column in that side's results.
    projection: Vec<(usize, usize, String)>,
    result_schema: SchemaRef,
}

impl WindowJoinPlan {
    /// Whether `sql` is a join of two windowed aggregates, and if so the stream and event
    /// time column each side reads (left, then right), without planning it.
    ///
    /// # Errors
    ///
    /// As [`WindowJoinPlan::compile`] for the parts it checks.
    pub fn streams_of(sql: &str) -> Result<Option<[(String, String); 2]>, EngineError> {
        let Some(clause) = split_window_join(sql)? else {
            return Ok(None);
        };
        let side = |side: &SideClause| JobPlan::source_of(side.one_source_sql()?);
        Ok(Some([side(&clause.sides[0])?, side(&clause.sides[1])?]))
    }

    /// Compiles a join of two windowed aggregates; `inputs` are the schemas and event time
    /// columns of the streams the left and the right side read.
    ///
    /// # Errors
    ///
    /// [`EngineError::Unsupported`] or [`EngineError::Invalid`] at the position of what is
    /// not a supported window join; a side's errors as [`JobPlan::compile`]'s.
    pub fn compile(
        sql: &str,
        inputs: [(SchemaRef, &str); 2],
        limits: &JobLimits,
    ) -> Result<WindowJoinPlan, EngineError> {
        let Some(clause) = split_window_join(sql)? else {
            return Err(EngineError::Plan(format!(
                "not a join of two windowed aggregates; {HOW}"
            )));
        };
        let [(left_schema, left_time), (right_schema, right_time)] = inputs;
        let compile_side = |side: &SideClause, schema: SchemaRef, time: &str| {
            JobPlan::compile(side.one_source_sql()?, schema, time, limits).map(Arc::new)
        };
        let sides = [
            compile_side(&clause.sides[0], left_schema, left_time)?,
            compile_side(&clause.sides[1], right_schema, right_time)?,
        ];
        match (sides[0].window(), sides[1].window()) {
            (WindowSpec::Session { .. }, _) | (_, WindowSpec::Session { .. }) => {
                return Err(unsupported(
                    clause.sides[0].position,
                    "session windows have no common window to join on: both sides of a window join TUMBLE or HOP",
                ));
            }
            (left, right) if left != right => {
                return Err(unsupported(
                    clause.sides[1].position,
                    format!(
                        "both sides of a window join need the same window: the left has {left:?}, the right {right:?}"
                    ),
                ));
            }
            _ => {}
        }
        let side_of = |column: &ColumnRef| -> Result<usize, EngineError> {
            match &column.qualifier {
                Some(qualifier) => clause
                    .sides
                    .iter()
                    .position(|side| side.alias.eq_ignore_ascii_case(qualifier))
                    .ok_or_else(|| EngineError::Invalid {
                        position: column.position,
                        message: format!(
                            "`{qualifier}` is neither side of the join (`{}` or `{}`)",
                            clause.sides[0].alias, clause.sides[1].alias
                        ),
                    }),
                None => {
                    let found: Vec<usize> = (0..2)
                        .filter(|&side| user_column(&sides[side], &column.name).is_some())
                        .collect();
                    match found.as_slice() {
                        [side] => Ok(*side),
                        [] => Err(EngineError::Invalid {
                            position: column.position,
                            message: format!("no side of the join has a column `{}`", column.name),
                        }),
                        _ => Err(EngineError::Invalid {
                            position: column.position,
                            message: format!(
                                "`{}` is ambiguous: both sides have it; write `{}.{}` or `{}.{}`",
                                column.name,
                                clause.sides[0].alias,
                                column.name,
                                clause.sides[1].alias,
                                column.name
                            ),
                        }),
                    }
                }
            }
        };
        let is_named = |column: &ColumnRef, name: &str| column.name.eq_ignore_ascii_case(name);
        let mut keys = Vec::new();
        let mut on_window = false;
        for (a, b) in &clause.on {
            let (a_side, b_side) = (side_of(a)?, side_of(b)?);
            if a_side == b_side {
                return Err(unsupported(
                    b.position,
                    "each equality of a window join's ON compares a left column with a right one",
                ));
            }
            let (left, right) = if a_side == 0 { (a, b) } else { (b, a) };
            let windows = [WINDOW_START, WINDOW_END]
                .iter()
                .find(|&&window| is_named(left, window) && is_named(right, window));
            if let Some(&window) = windows {
                on_window |= window == WINDOW_START;
                continue;
            }
            let left_index = user_column(&sides[0], &left.name).ok_or_else(|| no_column(left))?;
            let right_index =
                user_column(&sides[1], &right.name).ok_or_else(|| no_column(right))?;
            let (left_type, right_type) = (
                sides[0]
                    .result_schema()
                    .field(left_index)
                    .data_type()
                    .clone(),
                sides[1]
                    .result_schema()
                    .field(right_index)
                    .data_type()
                    .clone(),
            );
            if left_type != right_type {
                return Err(EngineError::Invalid {
                    position: right.position,
                    message: format!(
                        "`{}` is {left_type} and `{}` is {right_type}: a window join compares columns of one type (cast one inside its side)",
                        left.name, right.name
                    ),
                });
            }
            keys.push((left_index, right_index));
        }
        if !on_window {
            return Err(unsupported(
                clause.on_position,
                format!(
                    "a window join pairs results of one window: add `{}.window_start = {}.window_start` to ON",
                    clause.sides[0].alias, clause.sides[1].alias
                ),
            ));
        }
        let mut projection = Vec::with_capacity(clause.projection.len());
        let mut fields = Vec::with_capacity(clause.projection.len() + BOOKKEEPING);
        for (column, alias) in &clause.projection {
            let side = side_of(column)?;
            let index = match user_column(&sides[side], &column.name) {
                Some(index) => index,
                // The window's start is in every result row, selected or not.
                None if is_named(column, WINDOW_START) => bookkeeping_index(
                    sides[side].result_schema().fields().len(),
                    WINDOW_START_COLUMN,
                ),
                None => return Err(no_column(column)),
            };
            let name = alias.clone().unwrap_or_else(|| column.name.clone());
            if BOOKKEEPING_COLUMNS
                .iter()
                .any(|reserved| name.eq_ignore_ascii_case(reserved))
            {
                return Err(EngineError::Invalid {
                    position: column.position,
                    message: format!(
                        "the output column name `{name}` is reserved for the result's bookkeeping"
                    ),
                });
            }
            if fields
                .iter()
                .any(|field: &Field| field.name().eq_ignore_ascii_case(&name))
            {
                return Err(EngineError::Invalid {
                    position: column.position,
                    message: format!("two output columns are named `{name}`: rename one with AS"),
                });
            }
            let field = sides[side].result_schema().field(index).clone();
            let nullable = field.is_nullable() || (side == 1 && clause.kind == JoinKind::Left);
            fields.push(Field::new(
                name.clone(),
                field.data_type().clone(),
                nullable,
            ));
            projection.push((side, index, name));
        }
        fields.extend(bookkeeping_fields());
        Ok(WindowJoinPlan {
            sql: sql.to_string(),
            sides,
            kind: clause.kind,
            keys,
            projection,
            result_schema: Arc::new(Schema::new(fields)),
        })
    }

    /// Returns the job's SQL.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// Returns the left side's windowed job.
    pub fn left(&self) -> &Arc<JobPlan> {
        &self.sides[0]
    }

    /// Returns the right side's windowed job.
    pub fn right(&self) -> &Arc<JobPlan> {
        &self.sides[1]
    }

    /// Returns `INNER` or `LEFT`.
    pub fn kind(&self) -> JoinKind {
        self.kind
    }

    /// Returns the window both sides aggregate over.
    pub fn window(&self) -> WindowSpec {
        self.sides[0].window()
    }

    /// Returns the schema of the joined results: the selected columns, then `_key`,
    /// `_window_start`, `_version` and `_final`.
    pub fn result_schema(&self) -> SchemaRef {
        Arc::clone(&self.result_schema)
    }

    /// The joined results of one window from both sides' last result rows of it (each
    /// concatenated, one row per key): matched on the keys, a null matching nothing, ordered
    /// by left key then right key.
    fn join_window(
        &self,
        window_start: i64,
        left: &RecordBatch,
        right: &RecordBatch,
    ) -> Result<Option<RecordBatch>, EngineError> {
        let left_order = by_key(left);
        let mut right_rank = vec![0usize; right.num_rows()];
        for (rank, &row) in by_key(right).iter().enumerate() {
            right_rank[row as usize] = rank;
        }
        let mut matches = self.matches(left, right)?;
        let mut left_rows = Vec::new();
        let mut right_rows: Vec<Option<u32>> = Vec::new();
        for &l in &left_order {
            let found = &mut matches[l as usize];
            found.sort_unstable_by_key(|&r| right_rank[r as usize]);
            if found.is_empty() {
                if self.kind == JoinKind::Left {
                    left_rows.push(l);
                    right_rows.push(None);
                }
                continue;
            }
            for &r in found.iter() {
                left_rows.push(l);
                right_rows.push(Some(r));
            }
        }
        if left_rows.is_empty() {
            return Ok(None);
        }
        let left_rows = UInt32Array::from(left_rows);
        let right_rows = UInt32Array::from(right_rows);
        let keys = [key_column(left), key_column(right)];
        let joined_keys: StringArray = left_rows
            .values()
            .iter()
            .zip(right_rows.iter())
            .map(|(&l, r)| {
                Some(joined_key(
                    keys[0].value(l as usize),
                    r.map(|r| keys[1].value(r as usize)),
                    self.sides[1].keys.len(),
                ))
            })
            .collect();
        self.assemble(
            [take_all(left, &left_rows)?, take_all(right, &right_rows)?],
            joined_keys,
            Arc::new(TimestampMillisecondArray::from(vec![
                window_start;
                left_rows.len()
            ])),
        )
        .map(Some)
    }

    /// For each left row, the right rows whose keys equal its own (none with a null).
    fn matches(
        &self,
        left: &RecordBatch,
        right: &RecordBatch,
    ) -> Result<Vec<Vec<u32>>, EngineError> {
        if self.keys.is_empty() {
            let all: Vec<u32> = (0..right.num_rows() as u32).collect();
            return Ok(vec![all; left.num_rows()]);
        }
        let mut matches = vec![Vec::new(); left.num_rows()];
        let fields = self
            .keys
            .iter()
            .map(|&(l, _)| SortField::new(left.column(l).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)?;
        let left_keys: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|&(l, _)| Arc::clone(left.column(l)))
            .collect();
        let right_keys: Vec<ArrayRef> = self
            .keys
            .iter()
            .map(|&(_, r)| Arc::clone(right.column(r)))
            .collect();
        let left_rows = converter.convert_columns(&left_keys)?;
        let right_rows = converter.convert_columns(&right_keys)?;
        let has_null = |keys: &[ArrayRef], row: usize| keys.iter().any(|key| key.is_null(row));
        let mut by_key: HashMap<arrow::row::Row<'_>, Vec<u32>> = HashMap::new();
        for row in 0..right.num_rows() {
            if !has_null(&right_keys, row) {
                by_key
                    .entry(right_rows.row(row))
                    .or_default()
                    .push(row as u32);
            }
        }
        for (row, matched) in matches.iter_mut().enumerate() {
            if has_null(&left_keys, row) {
                continue;
            }
            if let Some(found) = by_key.get(&left_rows.row(row)) {
                matched.clone_from(found);
            }
        }
        Ok(matches)
    }

    /// The result batch from both sides' rows taken pair by pair (`sides`, each side's
    /// result columns), the joined keys and the window starts.
    fn assemble(
        &self,
        sides: [Vec<ArrayRef>; 2],
        keys: StringArray,
        window_starts: ArrayRef,
    ) -> Result<RecordBatch, EngineError> {
        let rows = keys.len();
        let mut columns: Vec<ArrayRef> = self
            .projection
            .iter()
            .map(|&(side, index, _)| Arc::clone(&sides[side][index]))
            .collect();
        columns.push(Arc::new(keys));
        columns.push(window_starts);
        columns.push(Arc::new(UInt32Array::from(vec![1u32; rows])));
        columns.push(Arc::new(BooleanArray::from(vec![true; rows])));
        Ok(RecordBatch::try_new(
            Arc::clone(&self.result_schema),
            columns,
        )?)
    }
}

fn no_column(column: &ColumnRef) -> EngineError {
    EngineError::Invalid {
        position: column.position,
        message: format!(
            "the side has no output column `{}`: a window join reads what each side's SELECT lists",
            column.name
        ),
    }
}

/// The index of the user's column `name` among `plan`'s result columns.
fn user_column(plan: &JobPlan, name: &str) -> Option<usize> {
    let schema = plan.result_schema();
    let n_user = schema.fields().len() - BOOKKEEPING;
    column_index(&schema, name).filter(|&index| index < n_user)
}

fn key_column(batch: &RecordBatch) -> &StringArray {
    batch
        .column(bookkeeping_index(batch.num_columns(), KEY_COLUMN))
        .as_string::<i32>()
}

/// The rows of `batch` in the order of their `_key`.
fn by_key(batch: &RecordBatch) -> Vec<u32> {
    let keys = key_column(batch);
    let mut order: Vec<u32> = (0..batch.num_rows() as u32).collect();
    // Keys are unique (one row per key), so an unstable sort gives one order.
    order.sort_unstable_by(|&a, &b| keys.value(a as usize).cmp(keys.value(b as usize)));
    order
}

fn take_all(batch: &RecordBatch, rows: &UInt32Array) -> Result<Vec<ArrayRef>, EngineError> {
    batch
        .columns()
        .iter()
        .map(|column| take(column.as_ref(), rows, None).map_err(EngineError::from))
        .collect()
}

/// A joined row's `_key`: the left key's values, then the right's (`n_right` nulls for
/// none), as one JSON array.
fn joined_key(left: &str, right: Option<&str>, n_right: usize) -> String {
    let mut key = String::new();
    push_joined_key(&mut key, left, right, n_right);
    key
}

/// Appends [`joined_key`] to `out`.
fn push_joined_key(out: &mut String, left: &str, right: Option<&str>, n_right: usize) {
    /// A key's values, without the brackets around them.
    fn values(key: &str) -> &str {
        key.strip_prefix('[')
            .and_then(|key| key.strip_suffix(']'))
            .unwrap_or(key)
    }
    let left = values(left);
    out.push('[');
    out.push_str(left);
    match right.map(values) {
        Some("") => {}
        Some(right) => {
            if !left.is_empty() {
                out.push(',');
            }
            out.push_str(right);
        }
        None => {
            for index in 0..n_right {
                if index > 0 || !left.is_empty() {
                    out.push(',');
                }
                out.push_str("null");
            }
        }
    }
    out.push(']');
}

/// The live half of a window join: takes both sides' window operators' results and
/// watermarks, holds their final result rows per window, and joins a window once both
/// watermarks have passed its end plus the allowed lateness.
#[derive(Debug)]
pub struct WindowJoin {
    plan: Arc<WindowJoinPlan>,
    lateness_ms: i64,
    held: [BTreeMap<i64, Vec<RecordBatch>>; 2],
    watermarks: [i64; 2],
}

impl WindowJoin {
    /// A window join whose sides' operators allow `allowed_lateness`.
    pub fn new(plan: Arc<WindowJoinPlan>, allowed_lateness: Duration) -> WindowJoin {
        WindowJoin {
            plan,
            lateness_ms: i64::try_from(allowed_lateness.as_millis()).unwrap_or(i64::MAX),
            held: [BTreeMap::new(), BTreeMap::new()],
            watermarks: [i64::MIN, i64::MIN],
        }
    }

    /// Takes result rows of side `side` (0 left, 1 right), as its window operator gave
    /// them; only final rows are held (the last version of a key wins).
    ///
    /// # Errors
    ///
    /// Rows that are not that side's results.
    pub fn results(&mut self, side: usize, results: &[RecordBatch]) -> Result<(), EngineError> {
        let plan = self
            .plan
            .sides
            .get(side)
            .ok_or_else(|| EngineError::Misuse(format!("a window join has no side {side}")))?;
        for batch in results {
            if batch.schema().fields() != plan.result_schema().fields() {
                return Err(EngineError::Schema(format!(
                    "side {side}'s results of a window join have columns {:?}",
                    batch.schema().fields()
                )));
            }
            let n = batch.num_columns();
            let finals = batch
                .column(bookkeeping_index(n, FINAL_COLUMN))
                .as_boolean();
            let starts = batch
                .column(bookkeeping_index(n, WINDOW_START_COLUMN))
                .as_primitive::<TimestampMillisecondType>();
            let mut by_start: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for row in 0..batch.num_rows() {
                if finals.value(row) {
                    by_start
                        .entry(starts.value(row))
                        .or_default()
                        .push(row as u32);
                }
            }
            for (start, rows) in by_start {
                let rows = UInt32Array::from(rows);
                let columns = take_all(batch, &rows)?;
                self.held[side]
                    .entry(start)
                    .or_default()
                    .push(RecordBatch::try_new(batch.schema(), columns)?);
            }
        }
        Ok(())
    }

    /// Moves side `side`'s watermark to `watermark` (its window operator's, after the
    /// results it gave up to now were passed to [`WindowJoin::results`]) and returns the
    /// joined results of every window now closed on both sides, in window order.
    ///
    /// # Errors
    ///
    /// Failures inside Arrow.
    pub fn advance(
        &mut self,
        side: usize,
        watermark: i64,
    ) -> Result<Vec<RecordBatch>, EngineError> {
        let Some(mark) = self.watermarks.get_mut(side) else {
            return Err(EngineError::Misuse(format!(
                "a window join has no side {side}"
            )));
        };
        *mark = (*mark).max(watermark);
        let closed_to = self.watermarks[0].min(self.watermarks[1]);
        // Both sides TUMBLE or HOP (compile refuses sessions): a window is `size_ms` long.
        let size_ms = self.plan.window().size_ms();
        let closes = |start: i64| {
            start
                .saturating_add(size_ms)
                .saturating_add(self.lateness_ms)
                <= closed_to
        };
        let mut starts: Vec<i64> = self.held[0].keys().copied().collect();
        starts.extend(self.held[1].keys().copied());
        starts.sort_unstable();
        starts.dedup();
        let mut out = Vec::new();
        for start in starts.into_iter().take_while(|&start| closes(start)) {
            let left = self.held[0].remove(&start);
            let right = self.held[1].remove(&start);
            let Some(left) = left else { continue };
            // Without lateness a key's row of a window is final once: nothing to drop.
            let deduplicate = self.lateness_ms > 0;
            let left = last_versions(&self.plan.sides[0].result_schema(), &left, deduplicate)?;
            let right = last_versions(
                &self.plan.sides[1].result_schema(),
                right.as_deref().unwrap_or_default(),
                deduplicate,
            )?;
            out.extend(self.plan.join_window(start, &left, &right)?);
        }
        Ok(out)
    }

    /// Serializes the join's state: each side's held rows (in window order, each window's in
    /// arrival order), the left's with the watermarks and the job's fingerprint in its
    /// schema's metadata, framed as two parts ([`crate::join_snapshot_parts`]).
    ///
    /// # Errors
    ///
    /// Failures inside Arrow.
    pub fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let side = |side: usize, metadata: HashMap<String, String>| {
            let schema = self.plan.sides[side].result_schema();
            let held: Vec<RecordBatch> = self.held[side].values().flatten().cloned().collect();
            let rows = concat_batches(&schema, &held)?;
            let schema = Arc::new(Schema::new_with_metadata(
                schema.fields().clone(),
                metadata.into_iter().collect(),
            ));
            crate::snapshot::ipc_bytes(&RecordBatch::try_new(schema, rows.columns().to_vec())?)
        };
        let metadata = HashMap::from([
            (
                SNAPSHOT_FINGERPRINT.to_string(),
                crate::snapshot::fnv1a(&self.plan.sql),
            ),
            (
                SNAPSHOT_WATERMARKS.to_string(),
                format!("{} {}", self.watermarks[0], self.watermarks[1]),
            ),
        ]);
        Ok(crate::snapshot::join_parts(
            &side(0, metadata)?,
            &side(1, HashMap::new())?,
        ))
    }

    /// Rebuilds a join from [`WindowJoin::snapshot`] bytes; it continues exactly as the one
    /// that took the snapshot would have.
    ///
    /// # Errors
    ///
    /// [`EngineError::Snapshot`]: bytes that are not such a snapshot, or one of another job.
    pub fn restore(
        plan: Arc<WindowJoinPlan>,
        allowed_lateness: Duration,
        bytes: &[u8],
    ) -> Result<WindowJoin, EngineError> {
        let (left, right) = crate::snapshot::split_parts(bytes, "left side")?;
        let (left, right) = (
            crate::snapshot::read_ipc(left)?,
            crate::snapshot::read_ipc(right)?,
        );
        let metadata = left.schema().metadata().clone();
        let corrupt = |what: &str| EngineError::Snapshot(format!("a window join snapshot {what}"));
        if metadata.get(SNAPSHOT_FINGERPRINT) != Some(&crate::snapshot::fnv1a(&plan.sql)) {
            return Err(corrupt("of another job"));
        }
        let watermarks: Vec<i64> = metadata
            .get(SNAPSHOT_WATERMARKS)
            .ok_or_else(|| corrupt("without watermarks"))?
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("with unreadable watermarks"))?;
        let [left_mark, right_mark] = watermarks[..] else {
            return Err(corrupt("without two watermarks"));
        };
        let mut join = WindowJoin::new(plan, allowed_lateness);
        for (side, rows) in [left, right].into_iter().enumerate() {
            let schema = join.plan.sides[side].result_schema();
            let rows = RecordBatch::try_new(schema, rows.columns().to_vec())
                .map_err(|error| corrupt(&format!("whose side {side} does not fit: {error}")))?;
            join.results(side, &[rows])?;
        }
        join.watermarks = [left_mark, right_mark];
        Ok(join)
    }

    /// Result rows held, over both sides.
    pub fn held_rows(&self) -> usize {
        self.held
            .iter()
            .flat_map(|held| held.values().flatten())
            .map(RecordBatch::num_rows)
            .sum()
    }
}

/// One window's result rows of a side, the last version of each key kept (where
/// `deduplicate`; else each key has one).
fn last_versions(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    deduplicate: bool,
) -> Result<RecordBatch, EngineError> {
    let all = concat_batches(schema, batches)?;
    if !deduplicate {
        return Ok(all);
    }
    let keys = key_column(&all);
    let mut last: HashMap<&str, u32> = HashMap::with_capacity(all.num_rows());
    for row in 0..all.num_rows() {
        last.insert(keys.value(row), row as u32);
    }
    let mut rows: Vec<u32> = last.into_values().collect();
    rows.sort_unstable();
    let rows = UInt32Array::from(rows);
    Ok(RecordBatch::try_new(
        Arc::clone(schema),
        take_all(&all, &rows)?,
    )?)
}

/// [`crate::recompute`] of a window join: each side over its table (`tables`: the left
/// side's stream, then the right's, as registered in `context`), then the two sides'
/// rows joined by DataFusion on the window's start and the keys. The rows are those
/// [`WindowJoin`] gives with nothing late, in the same order.
///
/// # Errors
///
/// Planning or execution errors from DataFusion.
pub async fn recompute_window_join(
    plan: &WindowJoinPlan,
    context: &SessionContext,
    tables: [&str; 2],
) -> Result<Vec<RecordBatch>, EngineError> {
    const SIDES: [&str; 2] = ["__runnel_window_join_left", "__runnel_window_join_right"];
    for (side, (job, table)) in plan.sides.iter().zip(tables).enumerate() {
        // Each side's rows unordered, as a view the join plans with (its columns named as
        // the side's results): the join's order is over its far fewer rows, and a side's
        // `_key` is rendered for the joined rows alone (most of a side's rows find no match).
        let rows = crate::recompute::window_rows(job, context, table).await?;
        let results = job.result_schema();
        let n_user = results.fields().len() - BOOKKEEPING_COLUMNS.len();
        let columns: Vec<Expr> = rows
            .schema()
            .columns()
            .into_iter()
            .enumerate()
            .map(|(index, column)| match results.fields().get(index) {
                Some(result) if index < n_user => Expr::Column(column).alias(result.name()),
                _ => Expr::Column(column),
            })
            .collect();
        let rows = rows.select(columns)?;
        context.deregister_table(SIDES[side])?;
        context.register_table(SIDES[side], rows.into_view())?;
    }
    let column = |side: usize, index: usize| {
        format!(
            "{}.{}",
            ["l", "r"][side],
            quote_ident(plan.sides[side].result_schema().field(index).name())
        )
    };
    let key_column = |side: usize, index: usize| {
        format!(
            "{}.{}",
            ["l", "r"][side],
            quote_ident(&format!("{KEY_PREFIX}{index}"))
        )
    };
    let window_start = quote_ident(WINDOW_START_ALIAS);
    let n_keys = plan.sides.each_ref().map(|side| side.keys.len());
    let mut select: Vec<String> = plan
        .projection
        .iter()
        .enumerate()
        .map(|(at, &(side, index, _))| format!("{} AS c{at}", column(side, index)))
        .collect();
    for (side, &n_side_keys) in n_keys.iter().enumerate() {
        select.extend(
            (0..n_side_keys).map(|index| format!("{} AS k{side}_{index}", key_column(side, index))),
        );
    }
    select.push(format!("l.{window_start} AS ws"));
    select.push(format!("r.{window_start} IS NOT NULL AS matched"));
    let mut on = vec![format!("l.{window_start} = r.{window_start}")];
    on.extend(
        plan.keys
            .iter()
            .map(|&(l, r)| format!("{} = {}", column(0, l), column(1, r))),
    );
    let join = match plan.kind {
        JoinKind::Inner => "JOIN",
        JoinKind::Left => "LEFT JOIN",
    };
    let sql = format!(
        "SELECT {} FROM {} l {join} {} r ON {}",
        select.join(", "),
        SIDES[0],
        SIDES[1],
        on.join(" AND ")
    );
    let frame = context
        .sql(&sql)
        .await
        .map_err(|error| EngineError::plan(format!("plan the window join's recompute: {error}")))?;
    let joined_schema = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await?;
    for side in SIDES {
        context.deregister_table(side)?;
    }
    let joined = concat_batches(&joined_schema, &batches)?;
    if joined.num_rows() == 0 {
        return Ok(Vec::new());
    }
    Ok(vec![joined_results(plan, &joined, n_keys)?])
}

/// The results of a window join's recompute from its joined rows `joined` (the projection's
/// columns, each side's `n_keys` key values, the window start, and whether a right row
/// matched): with the joined `_key`, in the live order (window start, left key, right key).
fn joined_results(
    plan: &WindowJoinPlan,
    joined: &RecordBatch,
    n_keys: [usize; 2],
) -> Result<RecordBatch, EngineError> {
    let n_rows = joined.num_rows();
    let width = plan.projection.len();
    let left_keys = render_keys(&joined.columns()[width..width + n_keys[0]], n_rows)?;
    let right_keys = render_keys(
        &joined.columns()[width + n_keys[0]..width + n_keys[0] + n_keys[1]],
        n_rows,
    )?;
    let at = width + n_keys[0] + n_keys[1];
    let window_start = arrow::compute::cast(
        joined.column(at),
        plan.result_schema.field(width + 1).data_type(),
    )?;
    let matched = joined
        .column(at + 1)
        .as_boolean_opt()
        .ok_or_else(|| EngineError::Schema("a window join's match flag is not boolean".into()))?;
    // Rows in the live order: window start, then left key, then right key, none last (where
    // no right row matched). Keys are unique per side and window: the order is total.
    let starts = arrow::compute::cast(&window_start, &DataType::Int64)?;
    let starts = starts.as_primitive::<Int64Type>();
    let right_key = |row: usize| matched.value(row).then(|| right_keys.value(row));
    let mut order: Vec<u32> = (0..n_rows as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        starts
            .value(a)
            .cmp(&starts.value(b))
            .then_with(|| left_keys.value(a).cmp(left_keys.value(b)))
            .then_with(|| match (right_key(a), right_key(b)) {
                (Some(a), Some(b)) => a.cmp(b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
    });
    let mut keys = StringBuilder::with_capacity(n_rows, n_rows * 16);
    let mut key = String::new();
    for &row in &order {
        let row = row as usize;
        key.clear();
        push_joined_key(&mut key, left_keys.value(row), right_key(row), n_keys[1]);
        keys.append_value(&key);
    }
    let order = UInt32Array::from(order);
    let mut columns: Vec<ArrayRef> = joined.columns()[..width].to_vec();
    // The projection's columns come back with the join's types (a side's strings as
    // `Utf8View`) and nullability.
    for (column, field) in columns.iter_mut().zip(plan.result_schema.fields()) {
        if column.data_type() != field.data_type() {
            *column = arrow::compute::cast(column, field.data_type())?;
        }
    }
    columns.push(window_start);
    let mut columns = arrow::compute::take_arrays(&columns, &order, None)?;
    let window_start = columns.pop().expect("the window start was pushed last");
    columns.push(Arc::new(keys.finish()));
    columns.push(window_start);
    columns.push(Arc::new(UInt32Array::from(vec![1u32; n_rows])));
    columns.push(Arc::new(BooleanArray::from(vec![true; n_rows])));
    Ok(RecordBatch::try_new(
        Arc::clone(&plan.result_schema),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_keys_are_one_json_array() {
        assert_eq!(
            joined_key("[1,\"a\"]", Some("[\"x\"]"), 1),
            "[1,\"a\",\"x\"]"
        );
        assert_eq!(joined_key("[1]", None, 2), "[1,null,null]");
        assert_eq!(joined_key("[]", Some("[2]"), 1), "[2]");
        assert_eq!(joined_key("[3]", Some("[]"), 0), "[3]");
        assert_eq!(joined_key("[]", None, 0), "[]");
        assert_eq!(joined_key("[]", None, 2), "[null,null]");
    }
}
