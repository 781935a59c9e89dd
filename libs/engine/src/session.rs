//! Session windows in the live operator.
//!
//! Per key, an event at `ts` opens the window `[ts, ts + gap)`; windows of one key that
//! overlap or touch merge, so a session is `[first, last + gap)` and two consecutive events
//! of a key are in one session when the second is at most `gap` after the first (as in
//! Flink, whose `TimeWindow.intersects` is inclusive, Spark's `session_window`, and SQL's
//! "a new session starts when the next event is more than the gap later"). Rules where
//! sessions differ from fixed windows:
//! - A session fires when the watermark passes its end (reaches [`close`]: an event at
//!   exactly its end would still join it); open sessions merge freely.
//! - A fired session does not merge any more: a later event inside it (between its first
//!   and last event) updates it within the allowed lateness and it is emitted again with
//!   the next version; an event that would move its start or end, or join it with another
//!   session, goes to the late-events output. The upsert key `(key, window_start)` of an
//!   emitted session therefore never moves.
//! - Early results are refused: a session's start moves as it merges.
//!
//! Aggregate state: every session owns a *slot*, a group of one DataFusion
//! `GroupsAccumulator` per aggregate shared by all sessions. Rows are not added one by one:
//! each row's slot is buffered, and the buffer goes in with one `update_batch` per aggregate
//! before anything reads the state. A `GroupsAccumulator` can only hand out all its groups
//! (`EmitTo::All`), so reading some sessions (an emission) or combining two (a merge) is a
//! *remap*: the state of every slot is taken out, the emitted slots are evaluated in a
//! scratch accumulator, and the live slots go back in, renumbered densely, merged sessions
//! into one slot and the slots of dropped sessions left out. Emissions are therefore
//! deferred while a batch runs: they are recorded with their keys, bounds and versions, and
//! evaluated all at once by one remap at the end of the batch ([`SessionState::flush`]), or
//! earlier when a session waiting for its emission is about to change (a late update). A
//! merge remaps at once, so that the merged state takes the rows after it in the order the
//! row-at-a-time rule adds them (floating-point sums depend on it).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, BooleanBufferBuilder, Int64Array,
    RecordBatch, UInt32Array,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::{interleave, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use crate::error::EngineError;
use crate::groups::new_groups_accumulator;
use crate::operator::time::format_millis;
use crate::operator::{OperatorOutput, build_results};
use crate::plan::JobPlan;

/// The key of a slot whose session is gone: the next remap drops it.
const DEAD_SLOT: u32 = u32::MAX;

/// One session of one key.
struct Session {
    start: i64,
    last: i64,
    /// The accumulator group holding the session's state.
    slot: u32,
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

/// Rows waiting to be added to the accumulators: rows of one input batch, in increasing
/// order, with the slot of each.
#[derive(Default)]
struct PendingRows {
    /// The batch's argument columns, by aggregate.
    args: Vec<Vec<ArrayRef>>,
    /// The batch's FILTER columns, by aggregate.
    filters: Vec<Option<BooleanArray>>,
    rows: Vec<u32>,
    slots: Vec<usize>,
}

impl PendingRows {
    /// Whether rows of `args` and `filters` from `row` on can join the buffered ones.
    fn continues(
        &self,
        args: &[Vec<ArrayRef>],
        filters: &[Option<BooleanArray>],
        row: usize,
    ) -> bool {
        let Some(last) = self.rows.last() else {
            return true;
        };
        let same_args = self.args.len() == args.len()
            && self.args.iter().zip(args).all(|(mine, theirs)| {
                mine.len() == theirs.len()
                    && mine.iter().zip(theirs).all(|(a, b)| Arc::ptr_eq(a, b))
            });
        let same_filters = self.filters.len() == filters.len()
            && self
                .filters
                .iter()
                .zip(filters)
                .all(|(mine, theirs)| match (mine, theirs) {
                    (None, None) => true,
                    (Some(a), Some(b)) => {
                        a.len() == b.len()
                            && a.values().offset() == b.values().offset()
                            && a.values().inner().as_ptr() == b.values().inner().as_ptr()
                    }
                    _ => false,
                });
        same_args && same_filters && row > *last as usize
    }
}

/// Sessions of one emission (one result batch), waiting for their aggregate values.
struct Emission {
    keys: Vec<u32>,
    starts: Vec<i64>,
    ends: Vec<i64>,
    versions: Vec<u32>,
    slots: Vec<u32>,
    /// By aggregate, once evaluated.
    values: Option<Vec<ArrayRef>>,
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
    /// Unfired sessions by ([`close`], key, start): the firing order, kept lazily.
    /// Invariant: every unfired session has an entry `(close, key, start)` whose `close` is at
    /// most its own and whose `start` lies within it; an entry is exact when it equals the
    /// session's current close and start. A session that grows keeps its entry (an event
    /// costs no index update); an entry popped stale goes back exact (see
    /// [`SessionState::advance`]), and one whose session is gone or fired is dropped.
    unfired: BTreeSet<(i64, u32, i64)>,
    /// How many sessions are unfired (`unfired` may hold more entries).
    n_unfired: usize,
    /// Fired sessions by ([`close`] + lateness, key, start): the expiry order.
    fired: BTreeSet<(i64, u32, i64)>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// The state types of each aggregate.
    state_types: Vec<Vec<DataType>>,
    /// The state of a group without values, one row per state column, by aggregate.
    empty_states: Vec<Vec<ArrayRef>>,
    /// One per aggregate; group `s` is slot `s`.
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// The key of each slot's session, [`DEAD_SLOT`] once the session is gone.
    /// Invariant: every session's slot holds its key here, and no two sessions share a slot.
    slot_keys: Vec<u32>,
    /// How many entries of `slot_keys` are [`DEAD_SLOT`].
    n_dead: usize,
    /// Per slot: an emission in `emissions` waits for its value.
    emitting: Vec<bool>,
    /// How many groups the accumulators have (slots after it are new since the last update).
    n_accumulated: usize,
    pending: PendingRows,
    /// Emissions in emission order, not yet handed out.
    emissions: Vec<Emission>,
    /// Set while a batch runs: emissions wait for [`SessionState::flush`].
    deferring: bool,
    /// The key, event time and slot of the last event [`SessionState::assign`] put in an
    /// open session, so that [`SessionState::update`] need not look for it again; cleared
    /// when slots are renumbered.
    assigned: Option<(u32, i64, u32)>,
}

/// The watermark at which a session whose last event is at `last` can no longer grow: an
/// event at `last + gap` (its end) still joins it, so it fires, and later expires, one
/// millisecond after its end.
fn close(last: i64, gap: i64) -> i64 {
    last.saturating_add(gap).saturating_add(1)
}

/// Rows `indices` of every column.
fn take_columns(columns: &[ArrayRef], indices: &UInt32Array) -> Result<Vec<ArrayRef>, EngineError> {
    columns
        .iter()
        .map(|column| Ok(take(column.as_ref(), indices, None)?))
        .collect()
}

/// The rows an aggregate takes: those of `mask` (all without one) where its FILTER is true.
fn row_filter(filter: Option<BooleanArray>, mask: Option<&BooleanBuffer>) -> Option<BooleanArray> {
    match (filter, mask) {
        (None, None) => None,
        (None, Some(mask)) => Some(BooleanArray::new(mask.clone(), None)),
        (Some(filter), mask) => {
            // A null FILTER value leaves the row out, as a false one does.
            let mut values = filter.values().clone();
            if let Some(nulls) = filter.nulls() {
                values = &values & nulls.inner();
            }
            if let Some(mask) = mask {
                values = &values & mask;
            }
            Some(BooleanArray::new(values, None))
        }
    }
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
        let aggregates: Vec<Arc<AggregateFunctionExpr>> = plan
            .aggregates
            .iter()
            .map(|aggregate| Arc::clone(&aggregate.expr))
            .collect();
        let state_types = aggregates
            .iter()
            .map(|expr| {
                Ok(expr
                    .state_fields()?
                    .iter()
                    .map(|field| field.data_type().clone())
                    .collect())
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let accumulators = aggregates
            .iter()
            .map(new_groups_accumulator)
            .collect::<Result<Vec<_>, _>>()?;
        // One group, whose only row the FILTER leaves out. A group must not be added without
        // rows: with no nulls and no FILTER in its input, a DataFusion accumulator counts
        // every group up to `total_num_groups` as having seen a value.
        let mut empty_states = Vec::with_capacity(plan.aggregates.len());
        for aggregate in &plan.aggregates {
            let args = aggregate
                .args
                .iter()
                .map(|arg| {
                    Ok(arrow::array::new_null_array(
                        &arg.data_type(&plan.stream_schema)?,
                        1,
                    ))
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            let mut accumulator = new_groups_accumulator(&aggregate.expr)?;
            accumulator.update_batch(&args, &[0], Some(&BooleanArray::from(vec![false])), 1)?;
            empty_states.push(accumulator.state(EmitTo::All)?);
        }
        Ok(SessionState {
            gap_ms,
            converter,
            key_ids: HashMap::new(),
            key_rows: Vec::new(),
            sessions: Vec::new(),
            unfired: BTreeSet::new(),
            n_unfired: 0,
            fired: BTreeSet::new(),
            aggregates,
            state_types,
            empty_states,
            accumulators,
            slot_keys: Vec::new(),
            n_dead: 0,
            emitting: Vec::new(),
            n_accumulated: 0,
            pending: PendingRows::default(),
            emissions: Vec::new(),
            deferring: false,
            assigned: None,
        })
    }

    /// Returns the number of open sessions (fired ones within lateness included).
    pub(crate) fn len(&self) -> usize {
        self.n_unfired + self.fired.len()
    }

    /// Returns an estimate of the bytes the state holds.
    pub(crate) fn size(&self) -> usize {
        use std::mem::size_of;
        let keys: usize = self
            .key_rows
            .iter()
            .map(|row| 2 * (row.len() + size_of::<Box<[u8]>>()) + size_of::<u32>())
            .sum();
        let sessions: usize = self
            .sessions
            .iter()
            .map(|sessions| size_of::<Vec<Session>>() + sessions.capacity() * size_of::<Session>())
            .sum();
        // A B-tree entry of three words, with its node's share of spare room.
        let index = (self.unfired.len() + self.fired.len()) * 2 * size_of::<(i64, u32, i64)>();
        let accumulators: usize = self
            .accumulators
            .iter()
            .map(|accumulator| accumulator.size())
            .sum();
        keys + sessions
            + index
            + accumulators
            + self.slot_keys.capacity() * size_of::<u32>()
            + self.emitting.capacity()
    }

    /// Returns the key id of every row, interning new keys in first-seen order. A batch
    /// starts here: emissions wait for [`SessionState::flush`] from now on.
    pub(crate) fn intern(
        &mut self,
        keys: &[ArrayRef],
        n_rows: usize,
    ) -> Result<Vec<u32>, EngineError> {
        self.deferring = true;
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

    /// Gives a new session of `key` a slot.
    fn new_slot(&mut self, key: u32) -> Result<u32, EngineError> {
        let slot = u32::try_from(self.slot_keys.len())
            .ok()
            .filter(|slot| *slot != DEAD_SLOT)
            .ok_or_else(|| EngineError::Misuse("too many open sessions".to_string()))?;
        self.slot_keys.push(key);
        self.emitting.push(false);
        Ok(slot)
    }

    /// Marks the slot of a session that is gone.
    fn free_slot(&mut self, slot: u32) {
        self.slot_keys[slot as usize] = DEAD_SLOT;
        self.n_dead += 1;
    }

    /// Removes the session of `key` that starts at `start`, if there is one.
    fn remove_session(&mut self, key: u32, start: i64) {
        let sessions = &mut self.sessions[key as usize];
        if let Some(idx) = sessions.iter().position(|session| session.start == start) {
            let session = sessions.remove(idx);
            self.free_slot(session.slot);
        }
    }

    /// The lowest watermark at which a session fires or expires, or a lower one (a stale
    /// index entry; the [`SessionState::advance`] it brings about then fires nothing).
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
        _plan: &JobPlan,
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
            let slot = self.new_slot(key)?;
            let sessions = &mut self.sessions[key as usize];
            // A key seldom has more than one or two sessions at a time: no room for four.
            sessions.reserve_exact(1);
            let position = sessions.partition_point(|session| session.start < timestamp);
            sessions.insert(
                position,
                Session {
                    start: timestamp,
                    last: timestamp,
                    slot,
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
            self.n_unfired += 1;
            self.assigned = Some((key, timestamp, slot));
            return Ok(Assignment::Open);
        };
        // Merge every overlapping open session into the first, then extend it by the event.
        // The index entries of all of them stay: they lie within the merged session and
        // their close is at most its close.
        if open.len() > 1 {
            // As the row accumulators did: the target takes the others from the last back.
            let target_slot = sessions[first].slot;
            let mut sources = Vec::with_capacity(open.len() - 1);
            let mut last = sessions[first].last;
            for &idx in open.iter().skip(1).rev() {
                let merged = sessions.remove(idx);
                sources.push(merged.slot);
                last = last.max(merged.last);
            }
            sessions[first].last = last;
            self.n_unfired -= sources.len();
            for source in &sources {
                self.free_slot(*source);
            }
            self.remap(Some((target_slot, &sources)))?;
        }
        let session = &mut self.sessions[key as usize][first];
        session.start = session.start.min(timestamp);
        session.last = session.last.max(timestamp);
        self.assigned = Some((key, timestamp, session.slot));
        debug_assert_eq!(
            self.n_unfired + self.fired.len(),
            self.sessions.iter().map(Vec::len).sum::<usize>(),
            "one index entry per session"
        );
        Ok(Assignment::Open)
    }

    /// Adds one row to the open session of `key` holding `timestamp`. The row is buffered:
    /// `args` and `filters` are the columns of the whole batch, and `row` the row's index.
    pub(crate) fn update(
        &mut self,
        key: u32,
        timestamp: i64,
        args: &[Vec<ArrayRef>],
        filters: &[Option<arrow::array::BooleanArray>],
        row: usize,
    ) -> Result<(), EngineError> {
        let mut slot = match self.assigned.take() {
            Some((assigned_key, assigned_time, slot))
                if assigned_key == key && assigned_time == timestamp =>
            {
                slot
            }
            _ => self.slot_of(key, timestamp)?,
        };
        if self.emitting[slot as usize] {
            // An emission waits for this session's value before this row.
            self.remap(None)?;
            slot = self.slot_of(key, timestamp)?;
        }
        if !self.pending.continues(args, filters, row) {
            self.flush_rows()?;
        }
        if self.pending.rows.is_empty() {
            self.pending.args = args.to_vec();
            self.pending.filters = filters.to_vec();
        }
        let row = u32::try_from(row)
            .map_err(|_| EngineError::Misuse(format!("row {row} of a batch is past u32")))?;
        self.pending.rows.push(row);
        self.pending.slots.push(slot as usize);
        Ok(())
    }

    /// The slot of the session of `key` holding `timestamp`.
    fn slot_of(&self, key: u32, timestamp: i64) -> Result<u32, EngineError> {
        self.sessions[key as usize]
            .iter()
            .find(|session| session.start <= timestamp && timestamp <= session.last)
            .map(|session| session.slot)
            .ok_or_else(|| {
                EngineError::Misuse(format!("no session of key {key} holds {timestamp}"))
            })
    }

    /// Adds the buffered rows to the accumulators, one `update_batch` per aggregate.
    fn flush_rows(&mut self) -> Result<(), EngineError> {
        let pending = &mut self.pending;
        let (Some(&first), Some(&last)) = (pending.rows.first(), pending.rows.last()) else {
            return Ok(());
        };
        // Only groups with rows here, or added before, count: a slot created since without
        // a row yet would count as having seen a value (see `empty_states`).
        let n_slots = pending
            .slots
            .iter()
            .max()
            .map_or(0, |slot| slot + 1)
            .max(self.n_accumulated);
        let (first, n_rows) = (first as usize, (last - first) as usize + 1);
        // Rows of the range that are not buffered (late, or another shard's) are filtered
        // out; they take any valid group index.
        let (group_indices, mask) = if pending.rows.len() == n_rows {
            (std::mem::take(&mut pending.slots), None)
        } else {
            let mut group_indices = vec![0; n_rows];
            let mut mask = BooleanBufferBuilder::new(n_rows);
            mask.append_n(n_rows, false);
            for (row, slot) in pending.rows.iter().zip(&pending.slots) {
                let idx = *row as usize - first;
                group_indices[idx] = *slot;
                mask.set_bit(idx, true);
            }
            (group_indices, Some(mask.finish()))
        };
        for ((accumulator, columns), filter) in self
            .accumulators
            .iter_mut()
            .zip(&pending.args)
            .zip(&pending.filters)
        {
            let values: Vec<ArrayRef> = columns
                .iter()
                .map(|column| column.slice(first, n_rows))
                .collect();
            let filter = row_filter(
                filter.as_ref().map(|filter| filter.slice(first, n_rows)),
                mask.as_ref(),
            );
            accumulator.update_batch(&values, &group_indices, filter.as_ref(), n_slots)?;
        }
        self.n_accumulated = n_slots;
        pending.rows.clear();
        pending.slots.clear();
        if mask.is_none() {
            // Keeps the allocation for the next rows.
            pending.slots = group_indices;
            pending.slots.clear();
        }
        pending.args.clear();
        pending.filters.clear();
        Ok(())
    }

    /// Gives the accumulators a group for every slot, also those no row reached yet (the
    /// state of a group without values).
    fn add_new_slots(&mut self) -> Result<(), EngineError> {
        let n_slots = self.slot_keys.len();
        if self.n_accumulated >= n_slots {
            return Ok(());
        }
        let n_new = n_slots - self.n_accumulated;
        let zeros = UInt32Array::from(vec![0; n_new]);
        let groups: Vec<usize> = (self.n_accumulated..n_slots).collect();
        for (accumulator, empty) in self.accumulators.iter_mut().zip(&self.empty_states) {
            accumulator.merge_batch(&take_columns(empty, &zeros)?, &groups, n_slots)?;
        }
        self.n_accumulated = n_slots;
        Ok(())
    }

    /// Adds the buffered rows and, when something must read the state (emissions waiting,
    /// a merge, or more dead slots than live ones), remaps the slots: evaluates the waiting
    /// emissions, merges `merge`'s sources (already freed) into its target, after it and in
    /// their order, and numbers the live slots densely.
    fn remap(&mut self, merge: Option<(u32, &[u32])>) -> Result<(), EngineError> {
        self.flush_rows()?;
        let evaluate = self
            .emissions
            .iter()
            .any(|emission| emission.values.is_none());
        let compact = self.n_dead > 0 && 2 * self.n_dead >= self.slot_keys.len();
        if !evaluate && merge.is_none() && !compact {
            return Ok(());
        }
        self.add_new_slots()?;
        let n_slots = self.slot_keys.len();
        let emitted = UInt32Array::from_iter_values(
            self.emissions
                .iter()
                .filter(|emission| emission.values.is_none())
                .flat_map(|emission| emission.slots.iter().copied()),
        );
        let n_emitted = emitted.len();
        let emitted_groups: Vec<usize> = (0..n_emitted).collect();
        // With few dead slots every slot goes back where it was, unless a merge has several
        // sources. One source goes into its target in place: the target group then takes the
        // two states in slot order, which gives what the row accumulators' target-then-source
        // gave, as one addition (or minimum, maximum) of two values does not depend on their
        // order. Several must go target first, then in their order.
        let merge_in_place = matches!(merge, Some((_, [_])));
        let renumber = compact || (merge.is_some() && !merge_in_place);
        let (order, targets, slot_keys) = if renumber {
            let mut order: Vec<u32> = Vec::with_capacity(n_slots);
            let mut targets: Vec<usize> = Vec::with_capacity(n_slots);
            let mut slot_keys: Vec<u32> = Vec::with_capacity(n_slots - self.n_dead);
            for (old, key) in self.slot_keys.iter().enumerate() {
                if *key == DEAD_SLOT {
                    continue;
                }
                let new = slot_keys.len();
                slot_keys.push(*key);
                order.push(old as u32);
                targets.push(new);
                if let Some((target, sources)) = merge
                    && target as usize == old
                {
                    for source in sources {
                        order.push(*source);
                        targets.push(new);
                    }
                }
            }
            (UInt32Array::from(order), targets, slot_keys)
        } else {
            let mut targets: Vec<usize> = (0..n_slots).collect();
            if let Some((target, [source])) = merge {
                targets[*source as usize] = target as usize;
            }
            (UInt32Array::from(Vec::<u32>::new()), targets, Vec::new())
        };
        let n_groups = if renumber { slot_keys.len() } else { n_slots };
        let mut values = Vec::with_capacity(self.accumulators.len());
        for (accumulator, expr) in self.accumulators.iter_mut().zip(&self.aggregates) {
            let state = accumulator.state(EmitTo::All)?;
            if n_emitted > 0 {
                let mut scratch = new_groups_accumulator(expr)?;
                scratch.merge_batch(
                    &take_columns(&state, &emitted)?,
                    &emitted_groups,
                    n_emitted,
                )?;
                values.push(scratch.evaluate(EmitTo::All)?);
            }
            let kept = if renumber {
                take_columns(&state, &order)?
            } else {
                state
            };
            accumulator.merge_batch(&kept, &targets, n_groups)?;
        }
        if renumber {
            // Live slots go in increasing order and only down, so a session renumbered
            // already never holds a slot still to be looked for.
            for (old, new) in order.values().iter().zip(&targets) {
                let key = self.slot_keys[*old as usize];
                if key == DEAD_SLOT {
                    // A merged session's slot, gone into its target's.
                    continue;
                }
                let session = self.sessions[key as usize]
                    .iter_mut()
                    .find(|session| session.slot == *old)
                    .ok_or_else(|| {
                        EngineError::Misuse(format!("no session of key {key} holds slot {old}"))
                    })?;
                session.slot = *new as u32;
            }
            self.slot_keys = slot_keys;
            self.n_dead = 0;
            self.assigned = None;
        }
        let mut offset = 0;
        for emission in self
            .emissions
            .iter_mut()
            .filter(|emission| emission.values.is_none())
        {
            let n_rows = emission.slots.len();
            emission.values = Some(
                values
                    .iter()
                    .map(|column| column.slice(offset, n_rows))
                    .collect(),
            );
            offset += n_rows;
        }
        self.emitting.clear();
        self.emitting.resize(n_groups, false);
        self.n_accumulated = n_groups;
        Ok(())
    }

    /// Returns how many emissions wait for [`SessionState::flush`]: each becomes one result
    /// batch there, in the order they were made.
    pub(crate) fn pending_emissions(&self) -> usize {
        self.emissions.len()
    }

    /// Ends a batch: adds its buffered rows and hands out the emissions it made, in order.
    pub(crate) fn flush(
        &mut self,
        plan: &JobPlan,
        output: &mut OperatorOutput,
    ) -> Result<(), EngineError> {
        self.deferring = false;
        self.remap(None)?;
        self.hand_out(plan, output)
    }

    /// Turns the evaluated emissions into result batches.
    fn hand_out(&mut self, plan: &JobPlan, output: &mut OperatorOutput) -> Result<(), EngineError> {
        for emission in self.emissions.drain(..) {
            let Some(aggregates) = emission.values else {
                return Err(EngineError::Misuse(
                    "an emission was handed out before its evaluation".to_string(),
                ));
            };
            let keys = match &self.converter {
                Some(converter) => {
                    let parser = converter.parser();
                    let rows: Vec<_> = emission
                        .keys
                        .iter()
                        .map(|key| parser.parse(&self.key_rows[*key as usize]))
                        .collect();
                    converter.convert_rows(rows)?
                }
                None => Vec::new(),
            };
            output.results.push(build_results(
                plan,
                &keys,
                &emission.starts,
                &emission.ends,
                aggregates,
                emission.versions,
                true,
            )?);
        }
        Ok(())
    }

    /// Emits the sessions `(key, start)` with their next version: at once between batches,
    /// at [`SessionState::flush`] during one.
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
        let mut emission = Emission {
            keys: Vec::with_capacity(which.len()),
            starts: Vec::with_capacity(which.len()),
            ends: Vec::with_capacity(which.len()),
            versions: Vec::with_capacity(which.len()),
            slots: Vec::with_capacity(which.len()),
            values: None,
        };
        for (key, start) in which {
            let session = self.sessions[*key as usize]
                .iter_mut()
                .find(|session| session.start == *start)
                .ok_or_else(|| {
                    EngineError::Misuse(format!("no session of key {key} starts at {start}"))
                })?;
            session.version += 1;
            emission.keys.push(*key);
            emission.starts.push(session.start);
            emission.ends.push(session.last.saturating_add(gap));
            emission.versions.push(session.version);
            emission.slots.push(session.slot);
            self.emitting[session.slot as usize] = true;
        }
        self.emissions.push(emission);
        if !self.deferring {
            self.remap(None)?;
            self.hand_out(plan, output)?;
        }
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
        let gap = self.gap_ms;
        let mut due = Vec::new();
        while let Some(&(entry_close, key, entry_start)) = self.unfired.first() {
            if entry_close > watermark {
                break;
            }
            self.unfired.pop_first();
            let Some(session) = self.sessions[key as usize].iter_mut().find(|session| {
                !session.fired && session.start <= entry_start && entry_start <= session.last
            }) else {
                // Its session fired, or is gone.
                continue;
            };
            let (close, start) = (close(session.last, gap), session.start);
            if (close, start) != (entry_close, entry_start) {
                // Stale: the session grew since. Its exact entry comes up in order (it may be
                // there already, from another stale entry).
                self.unfired.insert((close, key, start));
                continue;
            }
            // Fired from here, so that stale entries of it that come later are dropped; with
            // no lateness it goes after its emission.
            session.fired = true;
            self.n_unfired -= 1;
            due.push((key, start));
            if lateness_ms > 0 {
                self.fired
                    .insert((close.saturating_add(lateness_ms), key, start));
            }
        }
        self.emit(plan, &due, output)?;
        if lateness_ms <= 0 {
            for (key, start) in &due {
                self.remove_session(*key, *start);
            }
        }
        while let Some(&(expiry, key, start)) = self.fired.first() {
            if expiry > watermark {
                break;
            }
            self.fired.pop_first();
            self.remove_session(key, start);
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
        self.flush_rows()?;
        self.add_new_slots()?;
        let mut key_rows: Vec<&[u8]> = Vec::new();
        let mut starts = Vec::new();
        let mut lasts = Vec::new();
        let mut versions = Vec::new();
        let mut fired = Vec::new();
        // The slot of each row; none for a key without sessions, whose states are null.
        let mut slots: Vec<Option<u32>> = Vec::new();
        for (key, sessions) in self.sessions.iter().enumerate() {
            if sessions.is_empty() {
                key_rows.push(&self.key_rows[key]);
                starts.push(None);
                lasts.push(None);
                versions.push(None);
                fired.push(None);
                slots.push(None);
                continue;
            }
            for session in sessions {
                key_rows.push(&self.key_rows[key]);
                starts.push(Some(session.start));
                lasts.push(Some(session.last));
                versions.push(Some(session.version));
                fired.push(Some(session.fired));
                slots.push(Some(session.slot));
            }
        }
        let slots = UInt32Array::from(slots);
        let n_slots = self.slot_keys.len();
        let all_slots: Vec<usize> = (0..n_slots).collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from(key_rows)),
            Arc::new(Int64Array::from(starts)),
            Arc::new(Int64Array::from(lasts)),
            Arc::new(UInt32Array::from(versions)),
            Arc::new(BooleanArray::from(fired)),
        ];
        for accumulator in &mut self.accumulators {
            // Taking the state out empties the accumulator; it goes back as it was.
            let state = accumulator.state(EmitTo::All)?;
            accumulator.merge_batch(&state, &all_slots, n_slots)?;
            columns.extend(take_columns(&state, &slots)?);
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
            // The batch's rows that hold a session, in slot order.
            let mut session_rows: Vec<u32> = Vec::new();
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
                let session = Session {
                    start: starts.value(row),
                    last: lasts.value(row),
                    slot: state.new_slot(key)?,
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
                    state.n_unfired += 1;
                }
                state.sessions[key as usize].push(session);
                session_rows.push(row as u32);
            }
            let first_slot = state.n_accumulated;
            let n_slots = state.slot_keys.len();
            let mut column = 0;
            for ((accumulator, types), (expr, empty_state)) in state
                .accumulators
                .iter_mut()
                .zip(&state.state_types)
                .zip(state.aggregates.iter().zip(&state.empty_states))
            {
                let n_fields = types.len();
                let Some(columns) = states.get(column..column + n_fields) else {
                    return Err(corrupt("fewer state columns than aggregates need"));
                };
                if columns
                    .iter()
                    .zip(types)
                    .any(|(column, data_type)| column.data_type() != data_type)
                {
                    return Err(corrupt(
                        "a state column has another type than its aggregate's",
                    ));
                }
                // Snapshots written before slots hold the state of a row accumulator, which
                // for a session without values can differ from the vectorised one's (AVG's
                // is a count of 0 and a null sum; merged, it would mark the group as seen
                // and evaluate to NaN instead of null): such rows take the vectorised
                // accumulator's state of a group without values.
                let row_empty = expr.create_accumulator()?.state()?;
                let mut picks: Vec<(usize, usize)> = Vec::with_capacity(session_rows.len());
                for row in &session_rows {
                    let row = *row as usize;
                    let mut is_empty = true;
                    for (column, value) in columns.iter().zip(&row_empty) {
                        if ScalarValue::try_from_array(column, row)? != *value {
                            is_empty = false;
                            break;
                        }
                    }
                    picks.push(if is_empty { (1, 0) } else { (0, row) });
                }
                let merged = columns
                    .iter()
                    .zip(empty_state)
                    .map(|(column, empty)| {
                        Ok(interleave(&[column.as_ref(), empty.as_ref()], &picks)?)
                    })
                    .collect::<Result<Vec<_>, EngineError>>()?;
                let groups: Vec<usize> = (first_slot..n_slots).collect();
                accumulator.merge_batch(&merged, &groups, n_slots)?;
                column += n_fields;
            }
            state.n_accumulated = n_slots;
        }
        for sessions in &mut state.sessions {
            sessions.sort_by_key(|session| session.start);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, StringArray};
    use datafusion::logical_expr::Accumulator;

    use super::*;
    use crate::plan::JobLimits;

    const JOB: &str = "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS total, \
        MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean \
        FROM SESSION(s, ts, INTERVAL '10' SECOND) GROUP BY k, window_start, window_end";

    fn plan() -> JobPlan {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Float64, true),
        ]));
        JobPlan::compile(JOB, schema, "ts", &JobLimits::default()).expect("compiles")
    }

    /// One session as the row accumulators kept it before slots: its rows' values.
    struct OldSession {
        key: &'static str,
        start: i64,
        last: i64,
        version: u32,
        fired: bool,
        values: Vec<Option<f64>>,
    }

    /// The argument columns of every aggregate over rows of `key` with `values`.
    fn args(plan: &JobPlan, key: &str, values: &[Option<f64>]) -> Vec<Vec<ArrayRef>> {
        let batch = events(plan, &vec![(0, key); values.len()], values);
        batch_args(plan, &batch)
    }

    fn events(
        plan: &JobPlan,
        times_and_keys: &[(i64, &str)],
        values: &[Option<f64>],
    ) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(&plan.stream_schema),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    times_and_keys.iter().map(|(time, _)| *time),
                )),
                Arc::new(StringArray::from_iter_values(
                    times_and_keys.iter().map(|(_, key)| *key),
                )),
                Arc::new(Float64Array::from(values.to_vec())),
            ],
        )
        .expect("batch")
    }

    fn batch_args(plan: &JobPlan, batch: &RecordBatch) -> Vec<Vec<ArrayRef>> {
        plan.aggregates
            .iter()
            .map(|aggregate| {
                aggregate
                    .args
                    .iter()
                    .map(|arg| {
                        arg.evaluate(batch)
                            .and_then(|value| value.into_array(batch.num_rows()))
                            .expect("evaluates")
                    })
                    .collect()
            })
            .collect()
    }

    /// A snapshot written the way the per-session row accumulators wrote it (one row per
    /// session, a null row for a key without one), restores, and emits the values those
    /// accumulators evaluated to.
    #[test]
    fn a_snapshot_of_per_session_row_accumulators_restores() {
        let plan = plan();
        let old = [
            OldSession {
                key: "a",
                start: 1_000,
                last: 4_000,
                version: 0,
                fired: false,
                values: vec![
                    Some(0.1),
                    Some(0.2),
                    None,
                    Some(1e17),
                    Some(-1e17),
                    Some(0.3),
                ],
            },
            OldSession {
                key: "a",
                start: 30_000,
                last: 30_000,
                version: 2,
                fired: true,
                values: vec![Some(7.5)],
            },
            OldSession {
                key: "c",
                start: 5_000,
                last: 9_000,
                version: 0,
                fired: false,
                values: vec![None],
            },
        ];
        let converter = RowConverter::new(vec![SortField::new(DataType::Utf8)]).expect("converter");
        let key_row = |key: &str| -> Box<[u8]> {
            let column: ArrayRef = Arc::new(StringArray::from(vec![key]));
            let rows = converter.convert_columns(&[column]).expect("converts");
            Box::from(rows.row(0).as_ref())
        };
        let schema = SessionState::snapshot_schema(&plan).expect("schema");
        let state_types: Vec<DataType> = schema.fields()[FIXED_SNAPSHOT_COLUMNS..]
            .iter()
            .map(|field| field.data_type().clone())
            .collect();
        let mut key_rows: Vec<Box<[u8]>> = Vec::new();
        let (mut starts, mut lasts, mut versions, mut fired) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut states: Vec<Vec<ScalarValue>> = vec![Vec::new(); state_types.len()];
        let mut expected: Vec<Vec<ScalarValue>> = vec![Vec::new(); plan.aggregates.len()];
        // Key order "a", "b" (no session), "c", as the old snapshot wrote keys by id.
        for key in ["a", "b", "c"] {
            let sessions: Vec<&OldSession> = old.iter().filter(|old| old.key == key).collect();
            if sessions.is_empty() {
                key_rows.push(key_row(key));
                starts.push(None);
                lasts.push(None);
                versions.push(None);
                fired.push(None);
                for (column, data_type) in states.iter_mut().zip(&state_types) {
                    column.push(ScalarValue::try_from(data_type).expect("null"));
                }
            }
            for session in sessions {
                key_rows.push(key_row(key));
                starts.push(Some(session.start));
                lasts.push(Some(session.last));
                versions.push(Some(session.version));
                fired.push(Some(session.fired));
                let args = args(&plan, key, &session.values);
                let mut column = 0;
                for ((aggregate, args), expected) in
                    plan.aggregates.iter().zip(&args).zip(&mut expected)
                {
                    let mut accumulator: Box<dyn Accumulator> =
                        aggregate.expr.create_accumulator().expect("accumulator");
                    for row in 0..session.values.len() {
                        let slices: Vec<ArrayRef> =
                            args.iter().map(|arg| arg.slice(row, 1)).collect();
                        accumulator.update_batch(&slices).expect("updates");
                    }
                    for value in accumulator.state().expect("state") {
                        states[column].push(value);
                        column += 1;
                    }
                    expected.push(accumulator.evaluate().expect("evaluates"));
                }
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from(
                key_rows.iter().map(|row| row.as_ref()).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(starts)),
            Arc::new(Int64Array::from(lasts)),
            Arc::new(UInt32Array::from(versions)),
            Arc::new(BooleanArray::from(fired)),
        ];
        for values in states {
            columns.push(ScalarValue::iter_to_array(values).expect("state column"));
        }
        let snapshot = RecordBatch::try_new(schema, columns).expect("snapshot batch");

        let mut state =
            SessionState::restore(&plan, 10_000, 60_000, std::slice::from_ref(&snapshot))
                .expect("restores");
        assert_eq!(state.len(), 3);
        // A snapshot of the restored state is the one it came from, but for AVG's state in
        // a session without values: null for the vectorised accumulator, a count of 0 for
        // the row one (both evaluate to null).
        let again = state.snapshot(&plan).expect("snapshot");
        let avg_count = snapshot.num_columns() - 2;
        assert_eq!(
            again.columns()[..avg_count],
            snapshot.columns()[..avg_count]
        );
        let avg_counts = again
            .column(avg_count)
            .as_primitive::<arrow::datatypes::UInt64Type>();
        assert_eq!(
            avg_counts.iter().collect::<Vec<_>>(),
            vec![Some(5), Some(1), None, None]
        );
        let which: Vec<(u32, i64)> = vec![(0, 1_000), (0, 30_000), (2, 5_000)];
        let mut output = OperatorOutput::default();
        state.emit(&plan, &which, &mut output).expect("emits");
        let keys: ArrayRef = Arc::new(StringArray::from(vec!["a", "a", "c"]));
        let aggregates = expected
            .into_iter()
            .map(|values| ScalarValue::iter_to_array(values).expect("values"))
            .collect();
        let want = build_results(
            &plan,
            &[keys],
            &[1_000, 30_000, 5_000],
            &[14_000, 40_000, 19_000],
            aggregates,
            vec![1, 3, 1],
            true,
        )
        .expect("results");
        assert_eq!(output.results, vec![want]);
    }

    /// Rows whose aggregate inputs are all null leave SUM, MIN, MAX and AVG null, as the row
    /// accumulators did, also through the remaps of emissions and merges.
    #[test]
    fn sessions_of_null_values_stay_null() {
        let plan = plan();
        let mut state = SessionState::new(&plan, 10_000).expect("state");
        // Key "a": two sessions of nulls that an event between them (also null) merges;
        // key "b": one value.
        let times_and_keys = [(1_000, "a"), (20_000, "a"), (2_000, "b"), (10_500, "a")];
        let values = [None, None, Some(2.5), None];
        let batch = events(&plan, &times_and_keys, &values);
        let keys: Vec<ArrayRef> = plan
            .keys
            .iter()
            .map(|key| {
                key.evaluate(&batch)
                    .and_then(|value| value.into_array(batch.num_rows()))
                    .expect("key")
            })
            .collect();
        let args = batch_args(&plan, &batch);
        let filters = vec![None; plan.aggregates.len()];
        let ids = state.intern(&keys, batch.num_rows()).expect("interns");
        let mut output = OperatorOutput::default();
        for (row, (time, _)) in times_and_keys.iter().enumerate() {
            let assignment = state
                .assign(&plan, ids[row], *time, i64::MIN, 0)
                .expect("assigns");
            assert!(matches!(assignment, Assignment::Open));
            state
                .update(ids[row], *time, &args, &filters, row)
                .expect("updates");
        }
        state
            .advance(&plan, i64::MAX, 0, &mut output)
            .expect("advances");
        state.flush(&plan, &mut output).expect("flushes");
        let keys: ArrayRef = Arc::new(StringArray::from(vec!["b", "a"]));
        let aggregates: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 3])),
            Arc::new(Float64Array::from(vec![Some(2.5), None])),
            Arc::new(Float64Array::from(vec![Some(2.5), None])),
            Arc::new(Float64Array::from(vec![Some(2.5), None])),
            Arc::new(Float64Array::from(vec![Some(2.5), None])),
        ];
        let want = build_results(
            &plan,
            &[keys],
            &[2_000, 1_000],
            &[12_000, 30_000],
            aggregates,
            vec![1, 1],
            true,
        )
        .expect("results");
        assert_eq!(output.results, vec![want]);
        assert_eq!(state.len(), 0);
    }
}
