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
//! earlier when a session waiting for its emission is about to change (a late update) or a
//! remap comes first (a merge, or slots outgrowing the groups; the values are the same). A
//! merge remaps at once, so that the merged state takes the rows after it in the order the
//! row-at-a-time rule adds them (floating-point sums depend on it). A slot has its group from
//! the start: the accumulators hold spare groups (in the state of a group without values),
//! and when none is left a remap renumbers the slots and leaves an eighth more, so that their
//! vectors grow by an eighth rather than doubling.
//!
//! Memory: a key is stored once (its row-format bytes in one buffer, its id in a hash table
//! of ids), a key's only session inline (see [`KeySessions`]), and the firing index holds
//! `(close, key)` entries of 12 bytes.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
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
use hashbrown::{DefaultHashBuilder, HashTable};

use crate::error::EngineError;
use crate::groups::new_groups_accumulator;
use crate::operator::time::format_millis;
use crate::operator::{OperatorOutput, build_results};
use crate::plan::JobPlan;

/// The key of a slot whose session is gone: the next remap drops it.
const DEAD_SLOT: u32 = u32::MAX;

/// The bit of [`Session::bits`] set once the session fired.
const FIRED: u32 = 1 << 31;

/// [`Session::bits`] of a key's head (see [`KeySessions`]) when the key has no session.
const NO_SESSION: u32 = u32::MAX;

/// [`Session::bits`] of a key's head when the key's sessions are in [`KeySessions::spilled`],
/// at the index its `version` holds.
const SPILLED: u32 = u32::MAX - 1;

/// Slots stay below this, so that a session's bits never read as a head's marker.
const SLOT_LIMIT: u32 = SPILLED & !FIRED;

/// Spare accumulator groups a renumbering leaves beyond an eighth of the live slots.
const MIN_SPARE_GROUPS: usize = 16;

/// Vectors with an element per key grow by an eighth of their length, and by at least this.
const MIN_GROWTH: usize = 64;

/// One session of one key.
#[derive(Clone, Copy)]
struct Session {
    start: i64,
    last: i64,
    /// The session's slot (the accumulator group holding its state), with [`FIRED`] set once
    /// it fired.
    bits: u32,
    version: u32,
}

impl Session {
    /// The head of a key without sessions.
    const NONE: Session = Session {
        start: 0,
        last: 0,
        bits: NO_SESSION,
        version: 0,
    };

    /// The accumulator group holding the session's state.
    fn slot(&self) -> u32 {
        self.bits & !FIRED
    }

    fn set_slot(&mut self, slot: u32) {
        self.bits = (self.bits & FIRED) | slot;
    }

    fn fired(&self) -> bool {
        self.bits & FIRED != 0
    }

    fn fire(&mut self) {
        self.bits |= FIRED;
    }
}

/// An entry of the firing or expiry index: a watermark and a key, ordered by watermark, then
/// key. Packed to 12 bytes, where a tuple of the two takes 16: the index holds one or two
/// entries per session.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(C, packed(4))]
struct Entry {
    at: i64,
    key: u32,
}

/// Reserves room for `additional` more elements in `vec`, growing it by an eighth rather than
/// doubling it when it is full: a vector with an element per key then holds little spare room.
fn reserve_lean<T>(vec: &mut Vec<T>, additional: usize) {
    if vec.capacity() - vec.len() < additional {
        vec.reserve_exact(additional.max(vec.len() / 8).max(MIN_GROWTH));
    }
}

/// Every key seen, each stored once: ids in first-seen order, found by a hash of their
/// row-format bytes.
#[derive(Default)]
struct Keys {
    /// Row-format bytes of every key, one after another, by key id.
    bytes: Vec<u8>,
    /// Where each key's bytes end in `bytes`, by key id.
    ends: Vec<u32>,
    /// Every key id, hashed by its key's bytes.
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

/// The bytes of key `id` among `bytes`, whose keys end at `ends`.
fn key_row<'a>(bytes: &'a [u8], ends: &[u32], id: u32) -> &'a [u8] {
    let id = id as usize;
    let start = if id == 0 { 0 } else { ends[id - 1] as usize };
    &bytes[start..ends[id] as usize]
}

impl Keys {
    /// Returns how many keys there are.
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Returns the row-format bytes of key `id`.
    fn row(&self, id: u32) -> &[u8] {
        key_row(&self.bytes, &self.ends, id)
    }

    /// Returns the id of the key with row-format `bytes`, and whether it is new (it then has
    /// the next id).
    fn intern(&mut self, bytes: &[u8]) -> Result<(u32, bool), EngineError> {
        let hash = self.hasher.hash_one(bytes);
        if let Some(id) = self
            .table
            .find(hash, |id| key_row(&self.bytes, &self.ends, *id) == bytes)
        {
            return Ok((*id, false));
        }
        let id = u32::try_from(self.ends.len())
            .ok()
            .filter(|id| *id != DEAD_SLOT)
            .ok_or_else(|| EngineError::Misuse("too many session keys".to_string()))?;
        let end = u32::try_from(self.bytes.len() + bytes.len()).map_err(|_| {
            EngineError::Misuse("the session keys take more than 4 GiB".to_string())
        })?;
        reserve_lean(&mut self.bytes, bytes.len());
        self.bytes.extend_from_slice(bytes);
        reserve_lean(&mut self.ends, 1);
        self.ends.push(end);
        let (hasher, all_bytes, ends) = (&self.hasher, &self.bytes, &self.ends);
        self.table.insert_unique(hash, id, |id| {
            hasher.hash_one(key_row(all_bytes, ends, *id))
        });
        Ok((id, true))
    }

    /// Returns the bytes the keys hold.
    fn size(&self) -> usize {
        self.bytes.capacity()
            + self.ends.capacity() * std::mem::size_of::<u32>()
            + self.table.allocation_size()
    }
}

/// The sessions of every key, each key's sorted by start. A key with one session (the common
/// case) holds it inline, its *head*; a key with more holds them in a vector of its own.
#[derive(Default)]
struct KeySessions {
    /// By key id: its only session; or, when `bits` is [`NO_SESSION`] or [`SPILLED`], a
    /// marker of none or of those in `spilled`.
    heads: Vec<Session>,
    /// The sessions of keys with more than one, at the index their head holds.
    /// Invariant: an entry in use holds at least two sessions; one not in use is in `free`,
    /// without capacity.
    spilled: Vec<Vec<Session>>,
    /// Indices of `spilled` not in use.
    free: Vec<u32>,
}

impl KeySessions {
    /// Adds a key without sessions.
    fn push_key(&mut self) {
        reserve_lean(&mut self.heads, 1);
        self.heads.push(Session::NONE);
    }

    /// Returns the sessions of `key`.
    fn of(&self, key: u32) -> &[Session] {
        let head = &self.heads[key as usize];
        match head.bits {
            NO_SESSION => &[],
            SPILLED => &self.spilled[head.version as usize],
            _ => std::slice::from_ref(head),
        }
    }

    /// Returns the sessions of `key`, to change (but not reorder) them.
    fn of_mut(&mut self, key: u32) -> &mut [Session] {
        let head = &mut self.heads[key as usize];
        match head.bits {
            NO_SESSION => &mut [],
            SPILLED => &mut self.spilled[head.version as usize],
            _ => std::slice::from_mut(head),
        }
    }

    /// Inserts a session of `key` at `position` among its sessions.
    fn insert(&mut self, key: u32, position: usize, session: Session) {
        let head = &mut self.heads[key as usize];
        match head.bits {
            NO_SESSION => *head = session,
            SPILLED => {
                let sessions = &mut self.spilled[head.version as usize];
                // A key seldom has more than one or two sessions at a time: no room for four.
                sessions.reserve_exact(1);
                sessions.insert(position, session);
            }
            _ => {
                let mut sessions = Vec::with_capacity(2);
                sessions.push(*head);
                sessions.insert(position, session);
                let idx = match self.free.pop() {
                    Some(idx) => {
                        self.spilled[idx as usize] = sessions;
                        idx
                    }
                    None => {
                        self.spilled.push(sessions);
                        (self.spilled.len() - 1) as u32
                    }
                };
                *head = Session {
                    bits: SPILLED,
                    version: idx,
                    ..Session::NONE
                };
            }
        }
    }

    /// Removes and returns the session of `key` at `idx` among its sessions.
    fn remove(&mut self, key: u32, idx: usize) -> Session {
        let head = &mut self.heads[key as usize];
        if head.bits != SPILLED {
            debug_assert!(head.bits != NO_SESSION && idx == 0, "no session {idx}");
            return std::mem::replace(head, Session::NONE);
        }
        let list = head.version as usize;
        let sessions = &mut self.spilled[list];
        let session = sessions.remove(idx);
        if let [only] = sessions.as_slice() {
            *head = *only;
            self.spilled[list] = Vec::new();
            self.free.push(list as u32);
        }
        session
    }

    /// Returns how many sessions there are.
    fn count(&self) -> usize {
        (0..self.heads.len() as u32)
            .map(|key| self.of(key).len())
            .sum()
    }

    /// Returns the bytes the sessions hold.
    fn size(&self) -> usize {
        use std::mem::size_of;
        self.heads.capacity() * size_of::<Session>()
            + self.spilled.capacity() * size_of::<Vec<Session>>()
            + self
                .spilled
                .iter()
                .map(|sessions| sessions.capacity() * size_of::<Session>())
                .sum::<usize>()
            + self.free.capacity() * size_of::<u32>()
    }
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
    slots: Vec<u32>,
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
    keys: Keys,
    /// Sessions of each key, by key id, sorted by start.
    sessions: KeySessions,
    /// Unfired sessions by ([`close`], key): the firing order, kept lazily.
    /// Invariant: every unfired session has an entry `(close, key)` of its key whose `close`
    /// is at most its own; an entry is exact for the session whose current close it equals.
    /// A session that grows keeps its entry (an event costs no index update). When an entry
    /// is popped, no unfired session of its key closes earlier (their entries would have come
    /// first): the one it is exact for fires, and the others get an exact entry (see
    /// [`SessionState::advance`]).
    unfired: BTreeSet<Entry>,
    /// How many sessions are unfired (`unfired` may hold more entries).
    n_unfired: usize,
    /// Fired sessions by ([`close`] + lateness, key): the expiry order. A fired session no
    /// longer moves its end, and two of one key never end together: one entry each.
    fired: BTreeSet<Entry>,
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// The state types of each aggregate.
    state_types: Vec<Vec<DataType>>,
    /// The state of a group without values, one row per state column, by aggregate.
    empty_states: Vec<Vec<ArrayRef>>,
    /// One per aggregate, each with `n_groups` groups; group `s` is slot `s`.
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    /// How many groups the accumulators have: one per slot, then spare ones, in the state of
    /// a group without values, for the slots to come. A slot has its group from the start,
    /// so no update adds groups; when no spare is left a renumbering makes more (see
    /// [`SessionState::new_slot`]).
    /// Invariant: `slot_keys.len() <= n_groups`, and the groups after the slots are spare.
    n_groups: usize,
    /// The key of each slot's session, [`DEAD_SLOT`] once the session is gone.
    /// Invariant: every session's slot holds its key here, and no two sessions share a slot.
    slot_keys: Vec<u32>,
    /// How many entries of `slot_keys` are [`DEAD_SLOT`].
    n_dead: usize,
    /// Per group: an emission in `emissions` waits for the value of its slot.
    emitting: Vec<bool>,
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
            keys: Keys::default(),
            sessions: KeySessions::default(),
            unfired: BTreeSet::new(),
            n_unfired: 0,
            fired: BTreeSet::new(),
            aggregates,
            state_types,
            empty_states,
            accumulators,
            n_groups: 0,
            slot_keys: Vec::new(),
            n_dead: 0,
            emitting: Vec::new(),
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
        // A B-tree leaf holds up to 11 entries, a parent pointer and two counts; entries come
        // mostly in increasing order, which leaves leaves about half full.
        let entry_bytes = 2 * (11 * size_of::<Entry>() + 12) / 11;
        let index = (self.unfired.len() + self.fired.len()) * entry_bytes;
        // The buffers of rows waiting for the accumulators keep their room between batches.
        let pending = self.pending.rows.capacity() * size_of::<u32>()
            + self.pending.slots.capacity() * size_of::<u32>();
        let accumulators: usize = self
            .accumulators
            .iter()
            .map(|accumulator| accumulator.size())
            .sum();
        self.keys.size()
            + self.sessions.size()
            + index
            + accumulators
            + self.slot_keys.capacity() * size_of::<u32>()
            + self.emitting.capacity()
            + pending
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
            // One key, of no bytes.
            if self.keys.len() == 0 {
                self.key_id(&[])?;
            }
            return Ok(vec![0; n_rows]);
        };
        let rows = converter.convert_columns(keys)?;
        let mut ids = Vec::with_capacity(n_rows);
        for row in rows.iter() {
            ids.push(self.key_id(row.as_ref())?);
        }
        Ok(ids)
    }

    /// Returns the id of the key with row-format `bytes`, giving a new key the next id.
    fn key_id(&mut self, bytes: &[u8]) -> Result<u32, EngineError> {
        let (id, new) = self.keys.intern(bytes)?;
        if new {
            self.sessions.push_key();
        }
        Ok(id)
    }

    /// Gives a new session of `key` a slot, with a group of its own in the accumulators: a
    /// spare one, or one of those a renumbering leaves when none is spare.
    fn new_slot(&mut self, key: u32) -> Result<u32, EngineError> {
        if self.slot_keys.len() >= self.n_groups {
            self.remap(None, true)?;
        }
        let slot = u32::try_from(self.slot_keys.len())
            .ok()
            .filter(|slot| *slot < SLOT_LIMIT)
            .ok_or_else(|| EngineError::Misuse("too many open sessions".to_string()))?;
        self.slot_keys.push(key);
        Ok(slot)
    }

    /// Marks the slot of a session that is gone.
    fn free_slot(&mut self, slot: u32) {
        self.slot_keys[slot as usize] = DEAD_SLOT;
        self.n_dead += 1;
    }

    /// Removes the first session of `key` that `which` picks, if there is one.
    fn remove_session(&mut self, key: u32, which: impl Fn(&Session) -> bool) {
        if let Some(idx) = self.sessions.of(key).iter().position(which) {
            let session = self.sessions.remove(key, idx);
            self.free_slot(session.slot());
        }
    }

    /// The lowest watermark at which a session fires or expires, or a lower one (a stale
    /// index entry; the [`SessionState::advance`] it brings about then fires nothing).
    pub(crate) fn next_trigger(&self) -> i64 {
        let fire = self.unfired.first().map_or(i64::MAX, |entry| entry.at);
        let expire = self.fired.first().map_or(i64::MAX, |entry| entry.at);
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
        let sessions = self.sessions.of(key);
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
                if session.fired() {
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
            let position = self
                .sessions
                .of(key)
                .partition_point(|session| session.start < timestamp);
            self.sessions.insert(
                key,
                position,
                Session {
                    start: timestamp,
                    last: timestamp,
                    bits: slot,
                    version: 0,
                },
            );
            if close(timestamp, gap) <= watermark {
                // A window that is complete as it opens: it fires at once, as a late firing.
                return Ok(Assignment::LateUpdate {
                    key,
                    start: timestamp,
                });
            }
            self.unfired.insert(Entry {
                at: close(timestamp, gap),
                key,
            });
            self.n_unfired += 1;
            self.assigned = Some((key, timestamp, slot));
            return Ok(Assignment::Open);
        };
        // Merge every overlapping open session into the first, then extend it by the event.
        // The index entries of all of them stay: their close is at most the merged one's.
        if open.len() > 1 {
            // As the row accumulators did: the target takes the others from the last back.
            let target_slot = sessions[first].slot();
            let mut sources = Vec::with_capacity(open.len() - 1);
            let mut last = sessions[first].last;
            for &idx in open.iter().skip(1).rev() {
                let merged = self.sessions.remove(key, idx);
                sources.push(merged.slot());
                last = last.max(merged.last);
            }
            self.sessions.of_mut(key)[first].last = last;
            self.n_unfired -= sources.len();
            for source in &sources {
                self.free_slot(*source);
            }
            self.remap(Some((target_slot, &sources)), false)?;
        }
        let session = &mut self.sessions.of_mut(key)[first];
        session.start = session.start.min(timestamp);
        session.last = session.last.max(timestamp);
        self.assigned = Some((key, timestamp, session.slot()));
        debug_assert_eq!(
            self.n_unfired + self.fired.len(),
            self.sessions.count(),
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
            self.remap(None, false)?;
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
        self.pending.slots.push(slot);
        Ok(())
    }

    /// The slot of the session of `key` holding `timestamp`.
    fn slot_of(&self, key: u32, timestamp: i64) -> Result<u32, EngineError> {
        self.sessions
            .of(key)
            .iter()
            .find(|session| session.start <= timestamp && timestamp <= session.last)
            .map(Session::slot)
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
        let (first, n_rows) = (first as usize, (last - first) as usize + 1);
        // Rows of the range that are not buffered (late, or another shard's) are filtered
        // out; they take any valid group index.
        let (group_indices, mask) = if pending.rows.len() == n_rows {
            let group_indices = pending.slots.iter().map(|slot| *slot as usize).collect();
            (group_indices, None)
        } else {
            let mut group_indices = vec![0; n_rows];
            let mut mask = BooleanBufferBuilder::new(n_rows);
            mask.append_n(n_rows, false);
            for (row, slot) in pending.rows.iter().zip(&pending.slots) {
                let idx = *row as usize - first;
                group_indices[idx] = *slot as usize;
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
            // Every slot has its group: the update adds none, so none counts as having seen
            // a value without one (see `empty_states`).
            accumulator.update_batch(&values, &group_indices, filter.as_ref(), self.n_groups)?;
        }
        pending.rows.clear();
        pending.slots.clear();
        pending.args.clear();
        pending.filters.clear();
        Ok(())
    }

    /// Adds the buffered rows and, when something must read the state (emissions waiting,
    /// a merge, more dead slots than live ones, or `grow`: no spare group for a new slot),
    /// remaps the slots: evaluates the waiting emissions, merges `merge`'s sources (already
    /// freed) into its target, after it and in their order, and, to merge several sources,
    /// drop dead slots or grow, numbers the live slots densely and leaves spare groups after
    /// them.
    fn remap(&mut self, merge: Option<(u32, &[u32])>, grow: bool) -> Result<(), EngineError> {
        self.flush_rows()?;
        let evaluate = self
            .emissions
            .iter()
            .any(|emission| emission.values.is_none());
        let compact = self.n_dead > 0 && 2 * self.n_dead >= self.slot_keys.len();
        if !evaluate && merge.is_none() && !compact && !grow {
            return Ok(());
        }
        let emitted = UInt32Array::from_iter_values(
            self.emissions
                .iter()
                .filter(|emission| emission.values.is_none())
                .flat_map(|emission| emission.slots.iter().copied()),
        );
        let n_emitted = emitted.len();
        let emitted_groups: Vec<usize> = (0..n_emitted).collect();
        // With few dead slots every group goes back where it was, unless a merge has several
        // sources or the groups grow. One source goes into its target in place: the target
        // group then takes the two states in slot order, which gives what the row
        // accumulators' target-then-source gave, as one addition (or minimum, maximum) of two
        // values does not depend on their order. Several must go target first, then in their
        // order.
        let merge_in_place = matches!(merge, Some((_, [_])));
        let renumber = compact || grow || (merge.is_some() && !merge_in_place);
        // Where each new group's state comes from: (0, group) of the old state, or (1, 0)
        // the state of a group without values.
        let mut picks: Vec<(usize, usize)> = Vec::new();
        let (targets, n_groups, slot_keys) = if renumber {
            let n_live = self.slot_keys.len() - self.n_dead;
            let n_groups = n_live + n_live / 8 + MIN_SPARE_GROUPS;
            picks.reserve_exact(n_groups + merge.map_or(0, |(_, sources)| sources.len()));
            let mut targets: Vec<usize> = Vec::with_capacity(picks.capacity());
            let mut slot_keys: Vec<u32> = Vec::with_capacity(n_groups);
            for (old, key) in self.slot_keys.iter().enumerate() {
                if *key == DEAD_SLOT {
                    continue;
                }
                let new = slot_keys.len();
                slot_keys.push(*key);
                picks.push((0, old));
                targets.push(new);
                if let Some((target, sources)) = merge
                    && target as usize == old
                {
                    for source in sources {
                        picks.push((0, *source as usize));
                        targets.push(new);
                    }
                }
            }
            for spare in n_live..n_groups {
                picks.push((1, 0));
                targets.push(spare);
            }
            (targets, n_groups, slot_keys)
        } else {
            let mut targets: Vec<usize> = (0..self.n_groups).collect();
            if let Some((target, [source])) = merge {
                targets[*source as usize] = target as usize;
            }
            (targets, self.n_groups, Vec::new())
        };
        let mut values = Vec::with_capacity(self.accumulators.len());
        for (((accumulator, expr), empty), types) in self
            .accumulators
            .iter_mut()
            .zip(&self.aggregates)
            .zip(&self.empty_states)
            .zip(&self.state_types)
        {
            let state = take_state(accumulator.as_mut(), types)?;
            if n_emitted > 0 {
                let mut scratch = new_groups_accumulator(expr)?;
                scratch.merge_batch(
                    &take_columns(&state, &emitted)?,
                    &emitted_groups,
                    n_emitted,
                )?;
                values.push(scratch.evaluate(EmitTo::All)?);
            }
            // All groups go in at once: their vectors then take no more room than they need,
            // and the spare ones come in with no values (see `empty_states`).
            let kept = if renumber {
                state
                    .iter()
                    .zip(empty)
                    .map(|(column, empty)| {
                        Ok(interleave(&[column.as_ref(), empty.as_ref()], &picks)?)
                    })
                    .collect::<Result<Vec<_>, EngineError>>()?
            } else {
                state
            };
            accumulator.merge_batch(&kept, &targets, n_groups)?;
        }
        if renumber {
            // Live slots go in increasing order and only down, so a session renumbered
            // already never holds a slot still to be looked for.
            for ((source, old), new) in picks.iter().zip(&targets) {
                if *source != 0 {
                    // A spare group.
                    continue;
                }
                let key = self.slot_keys[*old];
                if key == DEAD_SLOT {
                    // A merged session's slot, gone into its target's.
                    continue;
                }
                let session = self
                    .sessions
                    .of_mut(key)
                    .iter_mut()
                    .find(|session| session.slot() as usize == *old)
                    .ok_or_else(|| {
                        EngineError::Misuse(format!("no session of key {key} holds slot {old}"))
                    })?;
                session.set_slot(*new as u32);
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
        if self.emitting.len() == n_groups {
            self.emitting.fill(false);
        } else {
            self.emitting = vec![false; n_groups];
        }
        self.n_groups = n_groups;
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
        self.remap(None, false)?;
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
                        .map(|key| parser.parse(self.keys.row(*key)))
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
            let session = self
                .sessions
                .of_mut(*key)
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
            emission.slots.push(session.slot());
            self.emitting[session.slot() as usize] = true;
        }
        self.emissions.push(emission);
        if !self.deferring {
            self.remap(None, false)?;
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
        while let Some(&Entry {
            at: entry_close,
            key,
        }) = self.unfired.first()
        {
            if entry_close > watermark {
                break;
            }
            self.unfired.pop_first();
            // No unfired session of the key closes before the entry: the one closing there
            // fires; the others get an exact entry (which may be there already), in case the
            // entry was theirs and they grew since.
            for session in self.sessions.of_mut(key) {
                if session.fired() {
                    continue;
                }
                let close = close(session.last, gap);
                if close != entry_close {
                    self.unfired.insert(Entry { at: close, key });
                    continue;
                }
                // Fired from here, so that stale entries of it that come later find it fired;
                // with no lateness it goes after its emission.
                session.fire();
                self.n_unfired -= 1;
                due.push((key, session.start));
                if lateness_ms > 0 {
                    self.fired.insert(Entry {
                        at: close.saturating_add(lateness_ms),
                        key,
                    });
                }
            }
        }
        self.emit(plan, &due, output)?;
        if lateness_ms <= 0 {
            for (key, start) in &due {
                self.remove_session(*key, |session| session.start == *start);
            }
        }
        while let Some(&Entry { at: expiry, key }) = self.fired.first() {
            if expiry > watermark {
                break;
            }
            self.fired.pop_first();
            self.remove_session(key, |session| {
                session.fired() && close(session.last, gap).saturating_add(lateness_ms) == expiry
            });
        }
        Ok(())
    }

    /// Marks a session fired (a late firing) and keeps it for the allowed lateness.
    pub(crate) fn mark_fired(&mut self, key: u32, start: i64, lateness_ms: i64) {
        let gap = self.gap_ms;
        if let Some(session) = self
            .sessions
            .of_mut(key)
            .iter_mut()
            .find(|session| session.start == start)
            && !session.fired()
        {
            session.fire();
            let expiry = close(session.last, gap).saturating_add(lateness_ms);
            self.fired.insert(Entry { at: expiry, key });
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
        let mut key_rows: Vec<&[u8]> = Vec::new();
        let mut starts = Vec::new();
        let mut lasts = Vec::new();
        let mut versions = Vec::new();
        let mut fired = Vec::new();
        // The slot of each row; none for a key without sessions, whose states are null.
        let mut slots: Vec<Option<u32>> = Vec::new();
        for key in 0..self.keys.len() as u32 {
            let sessions = self.sessions.of(key);
            if sessions.is_empty() {
                key_rows.push(self.keys.row(key));
                starts.push(None);
                lasts.push(None);
                versions.push(None);
                fired.push(None);
                slots.push(None);
                continue;
            }
            for session in sessions {
                key_rows.push(self.keys.row(key));
                starts.push(Some(session.start));
                lasts.push(Some(session.last));
                versions.push(Some(session.version));
                fired.push(Some(session.fired()));
                slots.push(Some(session.slot()));
            }
        }
        let slots = UInt32Array::from(slots);
        let all_groups: Vec<usize> = (0..self.n_groups).collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from(key_rows)),
            Arc::new(Int64Array::from(starts)),
            Arc::new(Int64Array::from(lasts)),
            Arc::new(UInt32Array::from(versions)),
            Arc::new(BooleanArray::from(fired)),
        ];
        for (accumulator, types) in self.accumulators.iter_mut().zip(&self.state_types) {
            // Taking the state out empties the accumulator; it goes back as it was.
            let state = take_state(accumulator.as_mut(), types)?;
            accumulator.merge_batch(&state, &all_groups, self.n_groups)?;
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
            // The batch's rows that hold a session, in slot order from `first_slot` (no slot
            // dies here, so a renumbering leaves them where they are).
            let mut session_rows: Vec<u32> = Vec::new();
            let first_slot = state.slot_keys.len();
            for row in 0..batch.num_rows() {
                let key = state.key_id(key_rows.value(row))?;
                if starts.is_null(row) {
                    continue;
                }
                if lasts.is_null(row) || versions.is_null(row) || fired.is_null(row) {
                    return Err(corrupt(
                        "a session row lacks its bounds, version or fired flag",
                    ));
                }
                let mut session = Session {
                    start: starts.value(row),
                    last: lasts.value(row),
                    bits: state.new_slot(key)?,
                    version: versions.value(row),
                };
                let close = close(session.last, gap_ms);
                if fired.value(row) {
                    session.fire();
                    state.fired.insert(Entry {
                        at: close.saturating_add(lateness_ms),
                        key,
                    });
                } else {
                    state.unfired.insert(Entry { at: close, key });
                    state.n_unfired += 1;
                }
                // After those of the key with the same start or an earlier one, as a stable
                // sort by start would put it.
                let position = state
                    .sessions
                    .of(key)
                    .partition_point(|other| other.start <= session.start);
                state.sessions.insert(key, position, session);
                session_rows.push(row as u32);
            }
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
                accumulator.merge_batch(&merged, &groups, state.n_groups)?;
                column += n_fields;
            }
        }
        Ok(state)
    }
}

/// Every group's state out of `accumulator`, whose state has columns of `types`. An
/// accumulator of DataFusion's that keeps a row accumulator per group (`COUNT(DISTINCT)`)
/// gives no columns at all while it has no group, since it learns its columns from its
/// first group's: then columns of `types` without rows.
fn take_state(
    accumulator: &mut dyn GroupsAccumulator,
    types: &[DataType],
) -> Result<Vec<ArrayRef>, EngineError> {
    let state = accumulator.state(EmitTo::All)?;
    if state.len() == types.len() {
        return Ok(state);
    }
    if state.iter().all(|column| column.is_empty()) {
        return Ok(types.iter().map(arrow::array::new_empty_array).collect());
    }
    Err(EngineError::plan(format!(
        "an aggregate gave {} state columns for {} state types",
        state.len(),
        types.len()
    )))
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

/// The state size per open session on the benchmark's session job.
#[cfg(test)]
mod size_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::{Float64Array, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use runnel_testkit::random::SplitMix64;

    use crate::operator::{OperatorOptions, WindowOperator};
    use crate::plan::{JobLimits, JobPlan};

    /// The session job of `benches/windows.rs`.
    const JOB: &str = "SELECT key, window_start, window_end, COUNT(*) AS n, SUM(value) AS total, \
        MIN(value) AS lo, MAX(value) AS hi, AVG(value) AS mean \
        FROM SESSION(events, event_time, INTERVAL '10' SECOND) \
        GROUP BY key, window_start, window_end";
    const KEYS: usize = 10_000;
    /// Rounds of one event per key each, 2 s apart on average.
    const ROUNDS: usize = 8;
    const BATCH_ROWS: usize = 4_096;
    const START_MS: i64 = 1_700_000_040_000;

    /// 10,000 Int64 keys each holding one long open session, as in the benchmark (events 2 s
    /// apart per key, a gap of 10 s): the state holds at most 150 bytes per session.
    #[test]
    fn an_open_session_takes_at_most_150_bytes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_time", DataType::Int64, false),
            Field::new("key", DataType::Int64, false),
            Field::new("value", DataType::Float64, false),
        ]));
        let plan = JobPlan::compile(
            JOB,
            Arc::clone(&schema),
            "event_time",
            &JobLimits::default(),
        )
        .expect("compiles");
        let options = OperatorOptions {
            max_out_of_orderness: Duration::from_secs(5),
            ..Default::default()
        };
        let mut operator = WindowOperator::new(Arc::new(plan), options).expect("operator");
        // Every round visits every key once, in a shuffled order, over 2 s: consecutive events
        // of a key are at most 4 s apart, so each key keeps one session.
        let mut rng = SplitMix64(0x5e55_1075);
        let (mut times, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let mut order: Vec<i64> = (0..KEYS as i64).collect();
            for idx in (1..order.len()).rev() {
                order.swap(idx, (rng.next_u64() % (idx as u64 + 1)) as usize);
            }
            for (idx, key) in order.into_iter().enumerate() {
                let event = (round * KEYS + idx) as i64;
                times.push(START_MS + event * 2_000 / KEYS as i64);
                keys.push(key);
                values.push((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 1000.0);
            }
        }
        for start in (0..times.len()).step_by(BATCH_ROWS) {
            let end = (start + BATCH_ROWS).min(times.len());
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(times[start..end].to_vec())),
                    Arc::new(Int64Array::from(keys[start..end].to_vec())),
                    Arc::new(Float64Array::from(values[start..end].to_vec())),
                ],
            )
            .expect("batch");
            let output = operator.process(0, &batch, 0).expect("processes");
            assert!(output.results.is_empty() && output.late_events.is_empty());
        }
        let (sessions, _) = operator.open_state();
        assert_eq!(sessions, KEYS);
        let bytes = operator.state_bytes();
        let per_session = bytes as f64 / sessions as f64;
        eprintln!("session state: {bytes} bytes, {per_session:.1} bytes per open session");
        assert!(
            per_session <= 150.0,
            "{per_session:.1} bytes per open session"
        );
    }
}
