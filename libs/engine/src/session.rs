//! Session windows in the live operator.
//!
//! Per key, an event at `ts` opens the window `[ts, ts + gap)`; windows of one key that
//! overlap or touch merge, so a session is `[first, last + gap)` and two consecutive events
//! of a key are in one session when the second is at most `gap` after the first (as in
//! Flink, whose `TimeWindow.intersects` is inclusive, Spark's `session_window`, and SQL's
//! "a new session starts when the next event is more than the gap later"). Each session has
//! its own DataFusion row accumulators, so that firing, merging and expiring one session
//! costs the same whatever else is open. Rules where sessions differ from fixed windows:
//! - A session fires when the watermark passes its end (reaches [`close`]: an event at
//!   exactly its end would still join it); open sessions merge freely.
//! - A fired session does not merge any more: a later event inside it (between its first
//!   and last event) updates it within the allowed lateness and it is emitted again with
//!   the next version; an event that would move its start or end, or join it with another
//!   session, goes to the late-events output. The upsert key `(key, window_start)` of an
//!   emitted session therefore never moves.
//! - Early results are refused: a session's start moves as it merges.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use crate::error::EngineError;
use crate::operator::time::format_millis;
use crate::operator::{OperatorOutput, build_results};
use crate::plan::JobPlan;

/// One session of one key.
struct Session {
    start: i64,
    last: i64,
    accumulators: Vec<Box<dyn Accumulator>>,
    version: u32,
    fired: bool,
}

/// Where an event goes.
pub(crate) enum Assignment {
    /// Into an open session (created or merged as needed).
    Open,
    /// Into a fired session, which is emitted again.
    LateUpdate { key: u32, start: i64 },
    /// Too late: to the late-events output with this reason.
    Late(String),
}

/// All open and fired (within lateness) sessions.
pub(crate) struct SessionState {
    gap_ms: i64,
    converter: Option<RowConverter>,
    /// Every key ever seen. FIXME: it only grows; high-cardinality keys (e.g. session ids)
    /// need a deterministic compaction of keys without sessions.
    key_ids: HashMap<Box<[u8]>, u32>,
    /// Row-format bytes of each key, by key id.
    key_rows: Vec<Box<[u8]>>,
    /// Sessions of each key, by key id, sorted by start.
    sessions: Vec<Vec<Session>>,
    /// Scratch for the one-row argument slices of an update.
    scratch: Vec<ArrayRef>,
    /// Unfired sessions by ([`close`], key, start): the firing order.
    unfired: BTreeSet<(i64, u32, i64)>,
    /// Fired sessions by ([`close`] + lateness, key, start): the expiry order.
    fired: BTreeSet<(i64, u32, i64)>,
}

/// The watermark at which a session whose last event is at `last` can no longer grow: an
/// event at `last + gap` (its end) still joins it, so it fires, and later expires, one
/// millisecond after its end.
fn close(last: i64, gap: i64) -> i64 {
    last.saturating_add(gap).saturating_add(1)
}

fn new_accumulators(plan: &JobPlan) -> Result<Vec<Box<dyn Accumulator>>, EngineError> {
    plan.aggregates
        .iter()
        .map(|aggregate| Ok(aggregate.expr.create_accumulator()?))
        .collect()
}

impl SessionState {
    pub(crate) fn new(plan: &JobPlan, gap_ms: i64) -> Result<SessionState, EngineError> {
        let converter = if plan.keys.is_empty() {
            None
        } else {
            let fields = plan
                .key_schema
                .fields()
                .iter()
                .map(|field| SortField::new(field.data_type().clone()))
                .collect();
            Some(RowConverter::new(fields)?)
        };
        Ok(SessionState {
            gap_ms,
            converter,
            key_ids: HashMap::new(),
            key_rows: Vec::new(),
            sessions: Vec::new(),
            scratch: Vec::new(),
            unfired: BTreeSet::new(),
            fired: BTreeSet::new(),
        })
    }

    /// Returns the number of open sessions (fired ones within lateness included).
    pub(crate) fn len(&self) -> usize {
        self.unfired.len() + self.fired.len()
    }

    /// Returns the key id of every row, interning new keys in first-seen order.
    pub(crate) fn intern(
        &mut self,
        keys: &[ArrayRef],
        n_rows: usize,
    ) -> Result<Vec<u32>, EngineError> {
        let Some(converter) = &self.converter else {
            if self.sessions.is_empty() {
                self.sessions.push(Vec::new());
                self.key_rows.push(Box::new([]));
            }
            return Ok(vec![0; n_rows]);
        };
        let rows = converter.convert_columns(keys)?;
        let mut ids = Vec::with_capacity(n_rows);
        for row in rows.iter() {
            ids.push(self.key_id(row.as_ref()));
        }
        Ok(ids)
    }

    /// Returns the id of the key with row-format `bytes`, giving a new key the next id.
    fn key_id(&mut self, bytes: &[u8]) -> u32 {
        if let Some(id) = self.key_ids.get(bytes) {
            return *id;
        }
        let id = self.key_rows.len() as u32;
        self.key_ids.insert(Box::from(bytes), id);
        self.key_rows.push(Box::from(bytes));
        self.sessions.push(Vec::new());
        id
    }

    /// The lowest watermark at which a session fires or expires.
    pub(crate) fn next_trigger(&self) -> i64 {
        let fire = self.unfired.first().map_or(i64::MAX, |(end, _, _)| *end);
        let expire = self
            .fired
            .first()
            .map_or(i64::MAX, |(expiry, _, _)| *expiry);
        fire.min(expire)
    }

    /// Decides where the event at `timestamp` of key `key` goes, and opens or merges
    /// sessions for it; the caller then adds the row with [`SessionState::update`].
    pub(crate) fn assign(
        &mut self,
        plan: &JobPlan,
        key: u32,
        timestamp: i64,
        watermark: i64,
        lateness_ms: i64,
    ) -> Result<Assignment, EngineError> {
        let gap = self.gap_ms;
        let event_end = timestamp.saturating_add(gap);
        let sessions = &mut self.sessions[key as usize];
        // Touching counts: the event's window `[ts, ts + gap)` and the session's
        // `[start, last + gap)` merge when either starts where the other ends.
        let overlaps = |session: &Session| {
            session.start <= event_end && timestamp <= session.last.saturating_add(gap)
        };
        // One pass, no allocation in the common cases: the first overlapping fired session
        // and how many there are; the first overlapping open session and how many.
        let (mut first_fired, mut n_fired, mut first_open, mut n_open) =
            (None, 0usize, None, 0usize);
        for (idx, session) in sessions.iter().enumerate() {
            if overlaps(session) {
                if session.fired {
                    first_fired.get_or_insert(idx);
                    n_fired += 1;
                } else {
                    first_open.get_or_insert(idx);
                    n_open += 1;
                }
            }
        }
        if let Some(fired_idx) = first_fired {
            let session = &sessions[fired_idx];
            let inside = n_fired == 1 && session.start <= timestamp && timestamp <= session.last;
            let unexpired = close(session.last, gap).saturating_add(lateness_ms) > watermark;
            if inside && unexpired {
                return Ok(Assignment::LateUpdate {
                    key,
                    start: session.start,
                });
            }
            return Ok(Assignment::Late(format!(
                "overlaps the session [{}, {}) of its key, already emitted at watermark {}; it could only update it from inside",
                format_millis(session.start),
                format_millis(session.last.saturating_add(gap)),
                format_millis(watermark)
            )));
        }
        let open: Vec<usize> = if n_open > 1 {
            (0..sessions.len())
                .filter(|idx| overlaps(&sessions[*idx]))
                .collect()
        } else {
            Vec::new()
        };
        let Some(first) = first_open else {
            if close(timestamp, gap).saturating_add(lateness_ms) <= watermark {
                return Ok(Assignment::Late(format!(
                    "too late for session [{}, {}): watermark {} had passed its end plus the allowed lateness of {lateness_ms} ms",
                    format_millis(timestamp),
                    format_millis(event_end),
                    format_millis(watermark)
                )));
            }
            let position = sessions.partition_point(|session| session.start < timestamp);
            sessions.insert(
                position,
                Session {
                    start: timestamp,
                    last: timestamp,
                    accumulators: new_accumulators(plan)?,
                    version: 0,
                    fired: false,
                },
            );
            if close(timestamp, gap) <= watermark {
                // A window that is complete as it opens: it fires at once, as a late firing.
                return Ok(Assignment::LateUpdate {
                    key,
                    start: timestamp,
                });
            }
            self.unfired.insert((close(timestamp, gap), key, timestamp));
            return Ok(Assignment::Open);
        };
        // Merge every overlapping open session into the first, then extend it by the event.
        // Invariant: `unfired` holds one entry per open session, keyed by its current close,
        // so the first session's entry goes before its end changes.
        let target = &sessions[first];
        self.unfired
            .remove(&(close(target.last, gap), key, target.start));
        for &idx in open.iter().skip(1).rev() {
            let merged = sessions.remove(idx);
            self.unfired
                .remove(&(close(merged.last, gap), key, merged.start));
            let target = &mut sessions[first];
            for (accumulator, mut source) in target.accumulators.iter_mut().zip(merged.accumulators)
            {
                let state = source.state()?;
                let arrays = state
                    .iter()
                    .map(|value| value.to_array_of_size(1))
                    .collect::<Result<Vec<_>, _>>()?;
                accumulator.merge_batch(&arrays)?;
            }
            target.last = target.last.max(merged.last);
        }
        let session = &mut sessions[first];
        session.start = session.start.min(timestamp);
        session.last = session.last.max(timestamp);
        self.unfired
            .insert((close(session.last, gap), key, session.start));
        debug_assert_eq!(
            self.unfired.len() + self.fired.len(),
            self.sessions.iter().map(Vec::len).sum::<usize>(),
            "one index entry per session"
        );
        Ok(Assignment::Open)
    }

    /// Adds one row to the open session of `key` holding `timestamp`.
    pub(crate) fn update(
        &mut self,
        key: u32,
        timestamp: i64,
        args: &[Vec<ArrayRef>],
        filters: &[Option<arrow::array::BooleanArray>],
        row: usize,
    ) -> Result<(), EngineError> {
        let sessions = &mut self.sessions[key as usize];
        let Some(session) = sessions
            .iter_mut()
            .find(|session| session.start <= timestamp && timestamp <= session.last)
        else {
            return Err(EngineError::Misuse(format!(
                "no session of key {key} holds {timestamp}"
            )));
        };
        for ((accumulator, columns), filter) in
            session.accumulators.iter_mut().zip(args).zip(filters)
        {
            if let Some(filter) = filter
                && !(filter.is_valid(row) && filter.value(row))
            {
                continue;
            }
            self.scratch.clear();
            self.scratch
                .extend(columns.iter().map(|column| column.slice(row, 1)));
            accumulator.update_batch(&self.scratch)?;
        }
        Ok(())
    }

    /// Emits the sessions `(key, start)` with their next version.
    pub(crate) fn emit(
        &mut self,
        plan: &JobPlan,
        which: &[(u32, i64)],
        output: &mut OperatorOutput,
    ) -> Result<(), EngineError> {
        if which.is_empty() {
            return Ok(());
        }
        let gap = self.gap_ms;
        let mut starts = Vec::with_capacity(which.len());
        let mut ends = Vec::with_capacity(which.len());
        let mut versions = Vec::with_capacity(which.len());
        let mut values: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(which.len()); plan.aggregates.len()];
        for (key, start) in which {
            let session = self.sessions[*key as usize]
                .iter_mut()
                .find(|session| session.start == *start)
                .ok_or_else(|| {
                    EngineError::Misuse(format!("no session of key {key} starts at {start}"))
                })?;
            session.version += 1;
            starts.push(session.start);
            ends.push(session.last.saturating_add(gap));
            versions.push(session.version);
            for (accumulator, column) in session.accumulators.iter_mut().zip(values.iter_mut()) {
                column.push(accumulator.evaluate()?);
            }
        }
        let aggregates = values
            .into_iter()
            .map(ScalarValue::iter_to_array)
            .collect::<Result<Vec<_>, _>>()?;
        let keys = match &self.converter {
            Some(converter) => {
                let parser = converter.parser();
                let rows: Vec<_> = which
                    .iter()
                    .map(|(key, _)| parser.parse(&self.key_rows[*key as usize]))
                    .collect();
                converter.convert_rows(rows)?
            }
            None => Vec::new(),
        };
        output.results.push(build_results(
            plan, &keys, &starts, &ends, aggregates, versions, true,
        )?);
        Ok(())
    }

    /// Fires the sessions the watermark has closed and drops the expired ones.
    pub(crate) fn advance(
        &mut self,
        plan: &JobPlan,
        watermark: i64,
        lateness_ms: i64,
        output: &mut OperatorOutput,
    ) -> Result<(), EngineError> {
        let mut due = Vec::new();
        while let Some(&(close, key, start)) = self.unfired.first() {
            if close > watermark {
                break;
            }
            self.unfired.pop_first();
            due.push((key, start));
            if lateness_ms > 0 {
                self.fired
                    .insert((close.saturating_add(lateness_ms), key, start));
            }
        }
        self.emit(plan, &due, output)?;
        for (key, start) in &due {
            let sessions = &mut self.sessions[*key as usize];
            if lateness_ms > 0 {
                if let Some(session) = sessions.iter_mut().find(|session| session.start == *start) {
                    session.fired = true;
                }
            } else {
                sessions.retain(|session| session.start != *start);
            }
        }
        while let Some(&(expiry, key, start)) = self.fired.first() {
            if expiry > watermark {
                break;
            }
            self.fired.pop_first();
            self.sessions[key as usize].retain(|session| session.start != start);
        }
        Ok(())
    }

    /// Marks a session fired (a late firing) and keeps it for the allowed lateness.
    pub(crate) fn mark_fired(&mut self, key: u32, start: i64, lateness_ms: i64) {
        let gap = self.gap_ms;
        if let Some(session) = self.sessions[key as usize]
            .iter_mut()
            .find(|session| session.start == start)
            && !session.fired
        {
            session.fired = true;
            let expiry = close(session.last, gap).saturating_add(lateness_ms);
            self.fired.insert((expiry, key, start));
        }
    }
}

/// Snapshot columns before the accumulator states.
const FIXED_SNAPSHOT_COLUMNS: usize = 5;

impl SessionState {
    /// The schema of a session snapshot batch: one row per session, and one row with null
    /// session fields for each key without a session, in key id order, so that a restored
    /// operator interns keys exactly as the original did.
    pub(crate) fn snapshot_schema(plan: &JobPlan) -> Result<SchemaRef, EngineError> {
        let mut fields = vec![
            Field::new("_key_row", DataType::Binary, false),
            Field::new("_start", DataType::Int64, true),
            Field::new("_last", DataType::Int64, true),
            Field::new("_version", DataType::UInt32, true),
            Field::new("_fired", DataType::Boolean, true),
        ];
        fields.extend(crate::snapshot::state_columns(plan)?);
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Copies every key and session out, leaving the state as it was.
    pub(crate) fn snapshot(&mut self, plan: &JobPlan) -> Result<RecordBatch, EngineError> {
        let schema = SessionState::snapshot_schema(plan)?;
        let n_state = schema.fields().len() - FIXED_SNAPSHOT_COLUMNS;
        let mut key_rows: Vec<&[u8]> = Vec::new();
        let mut starts = Vec::new();
        let mut lasts = Vec::new();
        let mut versions = Vec::new();
        let mut fired = Vec::new();
        let mut states: Vec<Vec<ScalarValue>> = vec![Vec::new(); n_state];
        let state_types: Vec<DataType> = schema.fields()[FIXED_SNAPSHOT_COLUMNS..]
            .iter()
            .map(|field| field.data_type().clone())
            .collect();
        for (key, sessions) in self.sessions.iter_mut().enumerate() {
            if sessions.is_empty() {
                key_rows.push(&self.key_rows[key]);
                starts.push(None);
                lasts.push(None);
                versions.push(None);
                fired.push(None);
                for (column, data_type) in states.iter_mut().zip(&state_types) {
                    column.push(ScalarValue::try_from(data_type)?);
                }
                continue;
            }
            for session in sessions.iter_mut() {
                key_rows.push(&self.key_rows[key]);
                starts.push(Some(session.start));
                lasts.push(Some(session.last));
                versions.push(Some(session.version));
                fired.push(Some(session.fired));
                let mut column = 0;
                for accumulator in &mut session.accumulators {
                    for value in accumulator.state()? {
                        states[column].push(value);
                        column += 1;
                    }
                }
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from(key_rows)),
            Arc::new(Int64Array::from(starts)),
            Arc::new(Int64Array::from(lasts)),
            Arc::new(UInt32Array::from(versions)),
            Arc::new(BooleanArray::from(fired)),
        ];
        for (values, data_type) in states.into_iter().zip(&state_types) {
            columns.push(if values.is_empty() {
                arrow::array::new_empty_array(data_type)
            } else {
                ScalarValue::iter_to_array(values)?
            });
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// Rebuilds the state from [`SessionState::snapshot`] batches.
    pub(crate) fn restore(
        plan: &JobPlan,
        gap_ms: i64,
        lateness_ms: i64,
        batches: &[RecordBatch],
    ) -> Result<SessionState, EngineError> {
        let mut state = SessionState::new(plan, gap_ms)?;
        let corrupt = |what: &str| EngineError::Snapshot(format!("session state: {what}"));
        for batch in batches {
            let key_rows = batch.column(0).as_binary::<i32>();
            let starts = batch.column(1).as_primitive::<Int64Type>();
            let lasts = batch.column(2).as_primitive::<Int64Type>();
            let versions = batch.column(3).as_primitive::<UInt32Type>();
            let fired = batch.column(4).as_boolean();
            let states = &batch.columns()[FIXED_SNAPSHOT_COLUMNS..];
            for row in 0..batch.num_rows() {
                let key = state.key_id(key_rows.value(row));
                if starts.is_null(row) {
                    continue;
                }
                if lasts.is_null(row) || versions.is_null(row) || fired.is_null(row) {
                    return Err(corrupt(
                        "a session row lacks its bounds, version or fired flag",
                    ));
                }
                let mut accumulators = new_accumulators(plan)?;
                let mut column = 0;
                for (accumulator, aggregate) in accumulators.iter_mut().zip(&plan.aggregates) {
                    let n_fields = aggregate.expr.state_fields()?.len();
                    let Some(columns) = states.get(column..column + n_fields) else {
                        return Err(corrupt("fewer state columns than aggregates need"));
                    };
                    let values: Vec<ArrayRef> =
                        columns.iter().map(|array| array.slice(row, 1)).collect();
                    accumulator.merge_batch(&values)?;
                    column += n_fields;
                }
                let session = Session {
                    start: starts.value(row),
                    last: lasts.value(row),
                    accumulators,
                    version: versions.value(row),
                    fired: fired.value(row),
                };
                let close = close(session.last, gap_ms);
                if session.fired {
                    state
                        .fired
                        .insert((close.saturating_add(lateness_ms), key, session.start));
                } else {
                    state.unfired.insert((close, key, session.start));
                }
                state.sessions[key as usize].push(session);
            }
        }
        for sessions in &mut state.sessions {
            sessions.sort_by_key(|session| session.start);
        }
        Ok(state)
    }
}
