//! The stream–stream interval join on event time: each row of the left stream joined with
//! the rows of the right stream of an equal key whose event times lie within an interval
//! around its own, inner or `LEFT`.
//!
//! It is `FROM l [LEFT] JOIN r ON l.k = r.k AND r.t BETWEEN l.t + lower AND l.t + upper`
//! (Flink SQL's interval join): both bounds inclusive, `lower <= upper`, either may be
//! negative. A job's SQL asks for it (`join_plan.rs`); `runnel run` drives it, the
//! stream-processor does not yet; recompute joins in DataFusion instead
//! ([`crate::register_joined`]).
//!
//! Semantics:
//! - Each input partition of either side has its own watermark: the largest event time it
//!   has shown less `max_out_of_orderness`. The join's watermark is the smallest of them
//!   over every partition of both sides (`i64::MIN` until each has shown a row; no partition
//!   idles yet). It never goes back.
//! - Rows are taken one at a time, in the order of the calls and of the rows within a
//!   batch. A row whose event time is behind the watermark (as it stood before the row) less
//!   `allowed_lateness` is late: it goes to the late output with the watermark and its
//!   reason, and changes nothing.
//! - Any other row is joined at once with every stored row of the other side whose key
//!   equals its own and whose time is in the interval (`right.t - left.t` in
//!   `[lower, upper]`), those in the order they came; then it is stored, the watermark moves
//!   and what it expires is removed. An output row is the left row's columns, then the right
//!   row's (nullable).
//! - With the watermark at `W` and the lateness `L`, a row still to come earlier than
//!   `W - L` is late. A left row at `lt` can meet none of them once `lt + upper < W - L`: it is
//!   then removed, and a `LEFT` join emits it with null right columns if it never matched. A
//!   right row at `rt` is removed once `rt - lower < W - L`. Rows removed together come out
//!   in (event time, arrival) order.
//! - A key with a null in it never matches, as SQL's `=` never holds for NULL: a `LEFT` join
//!   keeps such a left row only to emit it with nulls when it expires; the other rows with a
//!   null key are not kept. A row with a null event time is an [`EventError`] and nothing
//!   else.
//! - [`IntervalJoin::finish`] ends both inputs: the watermark goes to `i64::MAX`, a `LEFT`
//!   join emits every unmatched left row it holds with nulls, and the state is emptied. A
//!   row that comes after it is late.
//! - Output does not depend on how either input is cut into batches, only on the order of
//!   the rows within each input and, between the two inputs, on the order of the calls.
//! - [`IntervalJoin::snapshot`] holds the whole state (the stored rows of both sides with
//!   their arrival numbers and whether they matched, the partitions' largest times, the
//!   watermark); a join restored from it goes on exactly as the original.
//!
//! Stored rows stay in the batches they came in (a batch is dropped once none of its rows is
//! held) and are found by key, through a hash of the key's Arrow row format, then by time
//! among the key's rows, which are kept in (time, arrival) order. Each side's rows also wait
//! for their expiry by (time, arrival): in a queue while they come in time order, in a
//! min-heap otherwise ([`Expiry`]), so a call costs the rows it takes, the matches it finds
//! and the rows it expires, not the size of the state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt64Array, new_empty_array,
    new_null_array,
};
use arrow::buffer::NullBuffer;
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use arrow::row::{RowConverter, SortField};
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use crate::error::{EngineError, EventError};
use crate::snapshot::{
    decode_option, encode_option, fnv1a, ipc_bytes, join_parts, read_ipc, split_parts,
};
use crate::temporal_join::{
    JoinKind, check_join_inputs, check_schema, duration_ms, event_times, late_rows,
};

/// Format of [`IntervalJoin::snapshot`].
const SNAPSHOT_FORMAT: &str = "runnel.interval-join.1";
/// Snapshot column of a stored row: its arrival number among its side's rows.
const SEQ_COLUMN: &str = "_seq";
/// Snapshot column of a stored row: it has met a row of the other side.
const MATCHED_COLUMN: &str = "_matched";
/// The slot of a `LEFT` join's left rows with a null key: no key finds it.
const NULL_KEY_SLOT: u32 = 0;

/// What the join reads and how.
#[derive(Debug, Clone)]
pub struct IntervalJoinSpec {
    /// The left stream's columns.
    pub left_schema: SchemaRef,
    /// The left stream's event time column (int64 epoch ms, or a timestamp in ms).
    pub left_time: usize,
    /// The left stream's join key columns.
    pub left_keys: Vec<usize>,
    /// The right stream's columns.
    pub right_schema: SchemaRef,
    /// The right stream's event time column (int64 epoch ms, or a timestamp in ms).
    pub right_time: usize,
    /// The right stream's join key columns, of the left keys' count and types, in their
    /// order.
    pub right_keys: Vec<usize>,
    /// A right row matches a left row from `left.t + lower_ms` on (inclusive).
    pub lower_ms: i64,
    /// A right row matches a left row up to `left.t + upper_ms` (inclusive); at least
    /// `lower_ms`.
    pub upper_ms: i64,
    /// Inner or `LEFT`.
    pub kind: JoinKind,
    /// Input partitions of the left stream, each with its own watermark; at least 1.
    pub left_partitions: u32,
    /// Input partitions of the right stream, each with its own watermark; at least 1.
    pub right_partitions: u32,
    /// How far behind its partition's largest event time a row may come.
    pub max_out_of_orderness: Duration,
    /// How far behind the join's watermark a row may still come and be joined.
    pub allowed_lateness: Duration,
}

/// What a call gives back.
#[derive(Debug, Default)]
pub struct IntervalJoinOutput {
    /// Joined rows: the left stream's columns, then the right stream's (nullable).
    pub rows: Vec<RecordBatch>,
    /// Late left rows: the left stream's columns, `_watermark`, `_reason`.
    pub late_left: Vec<RecordBatch>,
    /// Late right rows: the right stream's columns, `_watermark`, `_reason`.
    pub late_right: Vec<RecordBatch>,
    /// Rows that could not be used (a null event time), by input row.
    pub errors: Vec<EventError>,
}

/// One of the two inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Left,
    Right,
}

/// A stored row: where it is, and what the join knows of it.
#[derive(Debug, Clone, Copy)]
struct Stored {
    time: i64,
    /// Arrival order among its side's stored rows.
    seq: u64,
    batch: u64,
    row: u32,
    /// It has met a row of the other side.
    matched: bool,
}

/// The stored rows of one key.
#[derive(Debug, Default)]
struct Slot {
    /// The key's row-format bytes.
    key: Vec<u8>,
    /// Invariant: in (time, seq) order.
    rows: VecDeque<Stored>,
}

/// A batch stored rows are in.
#[derive(Debug)]
struct HeldBatch {
    batch: RecordBatch,
    /// Its rows stored.
    held: usize,
    /// Its Arrow memory.
    bytes: usize,
}

/// An output row: a left row and a right row, each as (batch, row), or no right row (a
/// `LEFT` join's row with nulls).
#[derive(Debug, Clone, Copy)]
struct Pair {
    left: (u64, u32),
    right: Option<(u64, u32)>,
}

/// Stored rows as (time, seq, slot), smallest first. Rows mostly come in time order, so
/// those not before the last one in order wait in a queue (pushed and taken in O(1)) and
/// only the others in a min-heap; the next to expire is the smaller of the two fronts. (A
/// heap alone was a third of a live interval join's time in `scripts/bench-joins.sh`'s q8i.)
#[derive(Debug, Default)]
struct Expiry {
    /// In (time, seq) order.
    in_order: VecDeque<(i64, u64, u32)>,
    out_of_order: BinaryHeap<Reverse<(i64, u64, u32)>>,
}

impl Expiry {
    fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    fn push(&mut self, entry: (i64, u64, u32)) {
        if self
            .in_order
            .back()
            .is_none_or(|last| (last.0, last.1) <= (entry.0, entry.1))
        {
            self.in_order.push_back(entry);
        } else {
            self.out_of_order.push(Reverse(entry));
        }
    }

    /// Whether the next to expire is the in-order queue's front (else the heap's top).
    fn front_is_in_order(&self) -> Option<bool> {
        match (self.in_order.front(), self.out_of_order.peek()) {
            (None, None) => None,
            (Some(_), None) => Some(true),
            (None, Some(_)) => Some(false),
            (Some(queued), Some(Reverse(heaped))) => {
                Some((queued.0, queued.1) < (heaped.0, heaped.1))
            }
        }
    }

    fn peek(&self) -> Option<(i64, u64, u32)> {
        match self.front_is_in_order()? {
            true => self.in_order.front().copied(),
            false => self.out_of_order.peek().map(|Reverse(entry)| *entry),
        }
    }

    fn pop(&mut self) -> Option<(i64, u64, u32)> {
        match self.front_is_in_order()? {
            true => self.in_order.pop_front(),
            false => self.out_of_order.pop().map(|Reverse(entry)| entry),
        }
    }
}

/// The stored rows of one side.
#[derive(Debug)]
struct Side {
    /// Slot ids, found by the hash of their key's bytes.
    index: HashTable<u32>,
    /// The same for both sides, so that a key's hash is worked out once for both.
    hasher: DefaultHashBuilder,
    /// By slot id; slot [`NULL_KEY_SLOT`] is for null keys and is never in `index`.
    /// Invariant: a slot in `index` holds at least one row; the others are in `free`.
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Every stored row as (time, seq, slot), in the order they expire: see [`Expiry`].
    expiry: Expiry,
    /// The batches stored rows are in, by id.
    batches: HashMap<u64, HeldBatch>,
    /// Batches that may hold no row any more: dropped at the end of a call, once the output
    /// that reads them is built.
    unheld: Vec<u64>,
    next_batch: u64,
    next_seq: u64,
    /// Bytes of the keys in `slots`.
    key_bytes: usize,
    /// Arrow memory of `batches`.
    batch_bytes: usize,
}

impl Side {
    fn new(hasher: DefaultHashBuilder) -> Side {
        Side {
            index: HashTable::new(),
            hasher,
            slots: vec![Slot::default()],
            free: Vec::new(),
            expiry: Expiry::default(),
            batches: HashMap::new(),
            unheld: Vec::new(),
            next_batch: 0,
            next_seq: 0,
            key_bytes: 0,
            batch_bytes: 0,
        }
    }

    /// Returns the rows stored.
    fn len(&self) -> usize {
        self.expiry.len()
    }

    /// Returns the bytes held: the batches, the keys, the row entries.
    fn size(&self) -> usize {
        self.batch_bytes
            + self.key_bytes
            + (self.slots.len() - self.free.len() - 1) * std::mem::size_of::<Slot>()
            + self.len() * (std::mem::size_of::<Stored>() + std::mem::size_of::<(i64, u64, u32)>())
            + self.index.allocation_size()
    }

    /// Holds `batch` for rows to be stored from it; returns its id.
    fn add_batch(&mut self, batch: &RecordBatch) -> u64 {
        let id = self.next_batch;
        self.next_batch += 1;
        let bytes = batch.get_array_memory_size();
        self.batch_bytes += bytes;
        self.batches.insert(
            id,
            HeldBatch {
                batch: batch.clone(),
                held: 0,
                bytes,
            },
        );
        self.unheld.push(id);
        id
    }

    /// Drops the batches none of whose rows is stored.
    fn drop_unheld(&mut self) {
        for id in std::mem::take(&mut self.unheld) {
            if self.batches.get(&id).is_some_and(|batch| batch.held == 0) {
                let batch = self.batches.remove(&id).expect("found above");
                self.batch_bytes -= batch.bytes;
            }
        }
    }

    /// Returns the slot of the rows with key `key` (row-format bytes, of hash `hash`), if any
    /// is stored.
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.index
            .find(hash, |slot| self.slots[*slot as usize].key == key)
            .copied()
    }

    /// Returns the slot of key `key` (of hash `hash`), taking a free one if it has none.
    fn slot_for(&mut self, hash: u64, key: &[u8]) -> Result<u32, EngineError> {
        if let Some(slot) = self
            .index
            .find(hash, |slot| self.slots[*slot as usize].key == key)
        {
            return Ok(*slot);
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len())
                    .map_err(|_| EngineError::Misuse("too many interval join keys".to_string()))?;
                self.slots.push(Slot::default());
                slot
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.key.extend_from_slice(key);
        self.key_bytes += key.len();
        let (hasher, slots) = (&self.hasher, &self.slots);
        self.index.insert_unique(hash, slot, |slot| {
            hasher.hash_one(slots[*slot as usize].key.as_slice())
        });
        Ok(slot)
    }

    /// Stores `stored` in `slot`.
    fn store(&mut self, slot: u32, stored: Stored) {
        let rows = &mut self.slots[slot as usize].rows;
        // Most keys hold one row at a time (an order and its payment): no room for more
        // until a second comes.
        if rows.capacity() == 0 {
            rows.reserve_exact(1);
        }
        // Rows mostly come in time order: the place is then at the end.
        if rows
            .back()
            .is_none_or(|last| (last.time, last.seq) < (stored.time, stored.seq))
        {
            rows.push_back(stored);
        } else {
            let at = rows.partition_point(|held| (held.time, held.seq) < (stored.time, stored.seq));
            rows.insert(at, stored);
        }
        self.expiry.push((stored.time, stored.seq, slot));
        self.batches
            .get_mut(&stored.batch)
            .expect("a stored row's batch is held")
            .held += 1;
    }

    /// Marks the rows of `slot` with times in `[from, to]` as matched and puts them in
    /// `found` as (seq, batch, row), in arrival order.
    fn probe(&mut self, slot: u32, from: i64, to: i64, found: &mut Vec<(u64, u64, u32)>) {
        found.clear();
        let rows = &mut self.slots[slot as usize].rows;
        let start = rows.partition_point(|held| held.time < from);
        for held in rows.range_mut(start..) {
            if held.time > to {
                break;
            }
            held.matched = true;
            found.push((held.seq, held.batch, held.row));
        }
        if found.len() > 1 {
            found.sort_unstable_by_key(|(seq, _, _)| *seq);
        }
    }

    /// Removes the rows whose time is below `before`, smallest (time, seq) first, handing
    /// each to `removed`.
    fn expire(&mut self, before: i128, mut removed: impl FnMut(Stored)) {
        while let Some((time, seq, slot)) = self.expiry.peek() {
            if i128::from(time) >= before {
                break;
            }
            self.expiry.pop();
            let entry = &mut self.slots[slot as usize];
            // The heap gives the smallest (time, seq) of all, so the smallest of its slot.
            let stored = entry
                .rows
                .pop_front()
                .expect("a row in the expiry heap is in its slot");
            debug_assert_eq!((stored.time, stored.seq), (time, seq));
            if entry.rows.is_empty() && slot != NULL_KEY_SLOT {
                let hash = self.hasher.hash_one(entry.key.as_slice());
                self.index
                    .find_entry(hash, |held| *held == slot)
                    .expect("a slot with rows is in the index")
                    .remove();
                self.key_bytes -= entry.key.len();
                entry.key.clear();
                if entry.rows.capacity() > 64 {
                    entry.rows.shrink_to_fit();
                }
                self.free.push(slot);
            }
            let batch = self
                .batches
                .get_mut(&stored.batch)
                .expect("a stored row's batch is held");
            batch.held -= 1;
            if batch.held == 0 {
                self.unheld.push(stored.batch);
            }
            removed(stored);
        }
    }

    /// Every stored row, in (time, seq) order.
    fn stored(&self) -> Vec<Stored> {
        let mut stored: Vec<Stored> = self
            .slots
            .iter()
            .flat_map(|slot| slot.rows.iter().copied())
            .collect();
        stored.sort_unstable_by_key(|stored| (stored.time, stored.seq));
        stored
    }
}

/// The join's state (see the module docs).
#[derive(Debug)]
pub struct IntervalJoin {
    spec: IntervalJoinSpec,
    output_schema: SchemaRef,
    /// One converter for the keys of both sides (their types are equal), so that equal keys
    /// have equal bytes.
    keys: RowConverter,
    left: Side,
    right: Side,
    /// Per left partition, the largest event time it has shown.
    left_max: Vec<Option<i64>>,
    /// Per right partition, the largest event time it has shown.
    right_max: Vec<Option<i64>>,
    /// Per right partition, whether it is idle ([`IntervalJoin::right_at_end`]) and does not
    /// hold the watermark back until it shows a row again. Not in snapshots: a restored join's
    /// partitions hold it until their reader says so again.
    right_idle: Vec<bool>,
    /// The right input has ended ([`IntervalJoin::right_ended`]): no right row will come, so
    /// a left row is joined with the right rows stored and not stored itself. Not in
    /// snapshots (a restored join stores its left rows again: the same output).
    right_ended: bool,
    /// Partitions of either side that have shown no row yet.
    unseen: usize,
    /// Once `unseen` is 0: the smallest of the partitions' largest event times.
    slowest: i64,
    watermark: i64,
    out_of_orderness_ms: i64,
    lateness_ms: i64,
    /// One null per right column: the right side of a `LEFT` row without a match.
    null_right: Vec<ArrayRef>,
    /// Of the spec: a snapshot restores only into a join of the same spec.
    fingerprint: String,
}

impl IntervalJoin {
    /// A join with nothing seen yet.
    ///
    /// # Errors
    ///
    /// Column indices outside the schemas, keys of different counts or types or of a type
    /// Arrow's row format cannot hold, event time columns that are not int64 or timestamps
    /// in milliseconds, `lower_ms > upper_ms`, an input without partitions.
    pub fn new(spec: IntervalJoinSpec) -> Result<IntervalJoin, EngineError> {
        let sort_fields: Vec<SortField> = check_join_inputs(
            ("left", &spec.left_schema, spec.left_time, &spec.left_keys),
            (
                "right",
                &spec.right_schema,
                spec.right_time,
                &spec.right_keys,
            ),
        )?
        .iter()
        .map(|field| SortField::new(field.data_type().clone()))
        .collect();
        if spec.lower_ms > spec.upper_ms {
            return Err(EngineError::plan(format!(
                "the join's interval [{}, {}] ms is empty: its lower bound is above its upper bound",
                spec.lower_ms, spec.upper_ms
            )));
        }
        if spec.left_partitions == 0 || spec.right_partitions == 0 {
            return Err(EngineError::plan(format!(
                "the join has {} left and {} right partitions; each input needs at least one",
                spec.left_partitions, spec.right_partitions
            )));
        }
        let mut output_fields: Vec<Field> = spec
            .left_schema
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        output_fields.extend(
            spec.right_schema
                .fields()
                .iter()
                .map(|field| field.as_ref().clone().with_nullable(true)),
        );
        let null_right = spec
            .right_schema
            .fields()
            .iter()
            .map(|field| new_null_array(field.data_type(), 1))
            .collect();
        let hasher = DefaultHashBuilder::default();
        Ok(IntervalJoin {
            output_schema: Arc::new(Schema::new(output_fields)),
            keys: RowConverter::new(sort_fields)?,
            left: Side::new(hasher.clone()),
            right: Side::new(hasher),
            left_max: vec![None; spec.left_partitions as usize],
            right_max: vec![None; spec.right_partitions as usize],
            unseen: spec.left_partitions as usize + spec.right_partitions as usize,
            right_idle: vec![false; spec.right_partitions as usize],
            right_ended: false,
            slowest: i64::MIN,
            watermark: i64::MIN,
            out_of_orderness_ms: duration_ms(spec.max_out_of_orderness),
            lateness_ms: duration_ms(spec.allowed_lateness),
            null_right,
            fingerprint: fingerprint(&spec),
            spec,
        })
    }

    /// The joined rows' schema: the left stream's columns, then the right stream's, made
    /// nullable (names are kept as they are, and may repeat).
    pub fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    /// The join's watermark (`i64::MIN` before every partition of both inputs has shown a
    /// row, `i64::MAX` after [`finish`](Self::finish)).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Rows stored, left and right.
    pub fn stored_rows(&self) -> (usize, usize) {
        (self.left.len(), self.right.len())
    }

    /// Bytes of state: the batches stored rows are in, their keys and entries.
    pub fn state_bytes(&self) -> usize {
        self.left.size() + self.right.size()
    }

    /// Left rows of left partition `partition` in: each is late, or is joined with the right
    /// rows stored and stored itself; then the watermark moves and what it expires goes (a
    /// `LEFT` join emits its unmatched left rows then).
    ///
    /// # Errors
    ///
    /// A batch of another schema, an unknown partition; Arrow failures.
    pub fn process_left(
        &mut self,
        partition: u32,
        batch: &RecordBatch,
    ) -> Result<IntervalJoinOutput, EngineError> {
        self.process(Input::Left, partition, batch)
    }

    /// Right rows of right partition `partition` in: each is late, or is joined with the
    /// left rows stored and stored itself; then the watermark moves and what it expires goes
    /// (a `LEFT` join emits its unmatched left rows then).
    ///
    /// # Errors
    ///
    /// A batch of another schema, an unknown partition; Arrow failures.
    pub fn process_right(
        &mut self,
        partition: u32,
        batch: &RecordBatch,
    ) -> Result<IntervalJoinOutput, EngineError> {
        self.process(Input::Right, partition, batch)
    }

    /// Right partition `partition` has nothing more for now (its reader has read it to the
    /// log's end): it stops holding the watermark back until it shows a row again, as an idle
    /// source in Flink; then what the watermark expires goes (a `LEFT` join emits its
    /// unmatched left rows then). A row it shows later behind the watermark less the lateness
    /// is late.
    ///
    /// # Errors
    ///
    /// An unknown partition; Arrow failures.
    pub fn right_at_end(&mut self, partition: u32) -> Result<IntervalJoinOutput, EngineError> {
        let partitions = self.right_idle.len();
        let Some(idle) = self.right_idle.get_mut(partition as usize) else {
            return Err(EngineError::Misuse(format!(
                "right partition {partition} is outside the join's {partitions} right partitions"
            )));
        };
        let mut output = IntervalJoinOutput::default();
        if *idle {
            return Ok(output);
        }
        *idle = true;
        self.raise_watermark();
        let (lower, upper) = (
            i128::from(self.spec.lower_ms),
            i128::from(self.spec.upper_ms),
        );
        let horizon = self.horizon();
        let mut pairs = Vec::new();
        self.expire_before(horizon - upper, horizon + lower, &mut pairs);
        if !pairs.is_empty() {
            output.rows.push(self.build(&pairs)?);
        }
        self.left.drop_unheld();
        self.right.drop_unheld();
        Ok(output)
    }

    /// Ends the right input: no right row will come again (`runnel run` reads a second stream
    /// whole before the stream). Its partitions stop holding the watermark back for good, and
    /// from here a left row is joined with the right rows stored, at once, and never stored
    /// (a `LEFT` join emits it with nulls at once if none matches): no row it could match is
    /// still to come. The output is the same rows as without it; only the unmatched `LEFT`
    /// rows come sooner. What the watermark then expires goes.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn right_ended(&mut self) -> Result<IntervalJoinOutput, EngineError> {
        self.right_ended = true;
        let mut output = IntervalJoinOutput::default();
        for partition in 0..self.right_idle.len() as u32 {
            let expired = self.right_at_end(partition)?;
            output.rows.extend(expired.rows);
        }
        // The left rows stored so far can match no right row any more: a `LEFT` join's
        // unmatched ones go now, the others with nothing.
        let mut pairs = Vec::new();
        self.expire_before(i128::MAX, i128::MIN, &mut pairs);
        if !pairs.is_empty() {
            output.rows.push(self.build(&pairs)?);
        }
        self.left.drop_unheld();
        self.right.drop_unheld();
        Ok(output)
    }

    /// Ends both inputs: the watermark goes to `i64::MAX`, a `LEFT` join emits its unmatched
    /// left rows with nulls (in (time, arrival) order), and every stored row goes.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn finish(&mut self) -> Result<IntervalJoinOutput, EngineError> {
        self.watermark = i64::MAX;
        let mut pairs = Vec::new();
        self.expire_before(i128::MAX, i128::MAX, &mut pairs);
        let mut output = IntervalJoinOutput::default();
        if !pairs.is_empty() {
            output.rows.push(self.build(&pairs)?);
        }
        // Nothing is stored any more: start afresh, with the memory given back.
        for side in [&mut self.left, &mut self.right] {
            let next_seq = side.next_seq;
            *side = Side::new(side.hasher.clone());
            side.next_seq = next_seq;
        }
        Ok(output)
    }

    /// The watermark less the allowed lateness: rows before it are late.
    fn horizon(&self) -> i128 {
        i128::from(self.watermark) - i128::from(self.lateness_ms)
    }

    fn process(
        &mut self,
        input: Input,
        partition: u32,
        batch: &RecordBatch,
    ) -> Result<IntervalJoinOutput, EngineError> {
        let (schema, time_column, key_columns, partitions, what) = match input {
            Input::Left => (
                &self.spec.left_schema,
                self.spec.left_time,
                &self.spec.left_keys,
                self.left_max.len(),
                "left",
            ),
            Input::Right => (
                &self.spec.right_schema,
                self.spec.right_time,
                &self.spec.right_keys,
                self.right_max.len(),
                "right",
            ),
        };
        check_schema(batch, schema, what)?;
        if partition as usize >= partitions {
            return Err(EngineError::Misuse(format!(
                "{what} partition {partition} is outside the join's {partitions} {what} partitions"
            )));
        }
        if input == Input::Right && batch.num_rows() > 0 {
            if self.right_ended {
                return Err(EngineError::Misuse(
                    "right rows after the right input ended".to_string(),
                ));
            }
            // An idle partition that shows rows holds the watermark again.
            self.right_idle[partition as usize] = false;
        }
        if u32::try_from(batch.num_rows()).is_err() {
            return Err(EngineError::Misuse(format!(
                "a {what} batch of {} rows; the join takes at most {} at a time",
                batch.num_rows(),
                u32::MAX
            )));
        }
        let times = event_times(batch, time_column)?;
        let (key_nulls, key_rows) = key_rows(&self.keys, batch, key_columns)?;
        // A LEFT join keeps its left rows with a null key, to emit them with nulls.
        let keep_null_keys = input == Input::Left && self.spec.kind == JoinKind::Left;
        // Once the right input has ended a left row can match only the right rows stored:
        // it is joined at once and not stored (a `LEFT` row without a match goes at once).
        let store = !(input == Input::Left && self.right_ended);
        let emit_unmatched = !store && self.spec.kind == JoinKind::Left;
        let (lower, upper) = (
            i128::from(self.spec.lower_ms),
            i128::from(self.spec.upper_ms),
        );
        let batch_id = match input {
            Input::Left => self.left.add_batch(batch),
            Input::Right => self.right.add_batch(batch),
        };
        let mut output = IntervalJoinOutput::default();
        let (mut late, mut pairs, mut found) = (Vec::new(), Vec::new(), Vec::new());
        for (row, time) in times.iter().enumerate() {
            let Some(time) = *time else {
                output.errors.push(EventError {
                    partition,
                    row,
                    reason: format!("the {what} row's event time is null"),
                });
                continue;
            };
            // Judged against the watermark as it stood before this row, as if rows came one
            // at a time.
            if i128::from(time) < self.horizon() {
                late.push((row, self.watermark));
                continue;
            }
            let this_row = (batch_id, row as u32);
            let (this, other) = match input {
                Input::Left => (&mut self.left, &mut self.right),
                Input::Right => (&mut self.right, &mut self.left),
            };
            let mut matched = false;
            let slot = if key_nulls.as_ref().is_some_and(|nulls| nulls.is_null(row)) {
                keep_null_keys.then_some(NULL_KEY_SLOT)
            } else {
                let key = key_rows.row(row);
                let key = key.as_ref();
                let hash = this.hasher.hash_one(key);
                let (from, to) = match input {
                    Input::Left => (i128::from(time) + lower, i128::from(time) + upper),
                    Input::Right => (i128::from(time) - upper, i128::from(time) - lower),
                };
                if let (Some(other_slot), Some((from, to))) =
                    (other.find(hash, key), in_range(from, to))
                {
                    other.probe(other_slot, from, to, &mut found);
                    matched = !found.is_empty();
                    pairs.extend(found.iter().map(|&(_, other_batch, other_row)| {
                        let other_row = (other_batch, other_row);
                        match input {
                            Input::Left => Pair {
                                left: this_row,
                                right: Some(other_row),
                            },
                            Input::Right => Pair {
                                left: other_row,
                                right: Some(this_row),
                            },
                        }
                    }));
                }
                store.then(|| this.slot_for(hash, key)).transpose()?
            };
            if !store {
                if emit_unmatched && !matched {
                    pairs.push(Pair {
                        left: this_row,
                        right: None,
                    });
                }
            } else if let Some(slot) = slot {
                let seq = this.next_seq;
                this.next_seq += 1;
                this.store(
                    slot,
                    Stored {
                        time,
                        seq,
                        batch: batch_id,
                        row: row as u32,
                        matched,
                    },
                );
            }
            self.observe(input, partition, time);
            let horizon = self.horizon();
            self.expire_before(horizon - upper, horizon + lower, &mut pairs);
        }
        if !pairs.is_empty() {
            output.rows.push(self.build(&pairs)?);
        }
        if !late.is_empty() {
            let reason = match input {
                Input::Left => {
                    "the left row is behind the join's watermark less the allowed lateness; the right rows it would join may be gone"
                }
                Input::Right => {
                    "the right row is behind the join's watermark less the allowed lateness; the left rows it would join may be gone"
                }
            };
            let rows = late_rows(batch, &late, reason)?;
            match input {
                Input::Left => output.late_left.push(rows),
                Input::Right => output.late_right.push(rows),
            }
        }
        self.left.drop_unheld();
        self.right.drop_unheld();
        Ok(output)
    }

    /// Takes `time` from partition `partition` of `input` into the partitions' largest times,
    /// and raises the watermark if they allow it.
    fn observe(&mut self, input: Input, partition: u32, time: i64) {
        let max = match input {
            Input::Left => &mut self.left_max[partition as usize],
            Input::Right => &mut self.right_max[partition as usize],
        };
        match *max {
            Some(old) if old >= time => return,
            Some(old) => {
                *max = Some(time);
                // Only the slowest partition moves the smallest of the largest times (with
                // idle partitions, which `slowest` leaves out, it is found again).
                if !self.any_idle() && (self.unseen > 0 || old != self.slowest) {
                    return;
                }
            }
            None => {
                *max = Some(time);
                self.unseen -= 1;
                if self.unseen > 0 && !self.any_idle() {
                    return;
                }
            }
        }
        self.raise_watermark();
    }

    fn any_idle(&self) -> bool {
        self.right_idle.iter().any(|idle| *idle)
    }

    /// Sets `slowest` from the largest times of the partitions that are not idle, and raises
    /// the watermark to it less the out-of-orderness if that is higher.
    fn raise_watermark(&mut self) {
        let holding = self.left_max.iter().chain(
            self.right_max
                .iter()
                .zip(&self.right_idle)
                .filter(|(_, idle)| !**idle)
                .map(|(max, _)| max),
        );
        let Some(slowest) = holding.copied().min().flatten() else {
            return;
        };
        self.slowest = slowest;
        self.watermark = self
            .watermark
            .max(slowest.saturating_sub(self.out_of_orderness_ms));
    }

    /// Removes the left rows before `left_before` and the right rows before `right_before`;
    /// a `LEFT` join's unmatched left rows among them go to `pairs` with no right row.
    fn expire_before(&mut self, left_before: i128, right_before: i128, pairs: &mut Vec<Pair>) {
        let emit = self.spec.kind == JoinKind::Left;
        self.left.expire(left_before, |stored| {
            if emit && !stored.matched {
                pairs.push(Pair {
                    left: (stored.batch, stored.row),
                    right: None,
                });
            }
        });
        self.right.expire(right_before, |_| {});
    }

    /// The output rows `pairs`, as one batch.
    fn build(&self, pairs: &[Pair]) -> Result<RecordBatch, EngineError> {
        let mut columns = gather(
            &self.left.batches,
            &self.spec.left_schema,
            pairs.iter().map(|pair| Some(pair.left)),
            None,
        )?;
        columns.extend(gather(
            &self.right.batches,
            &self.spec.right_schema,
            pairs.iter().map(|pair| pair.right),
            Some(&self.null_right),
        )?);
        Ok(RecordBatch::try_new(self.output_schema(), columns)?)
    }

    /// The whole state as bytes: the left side's stored rows (one Arrow IPC stream, after
    /// its length as 8 bytes), then the right side's (another); each in (time, arrival) order
    /// with `_seq` and `_matched`; the spec's fingerprint, the partitions' largest times, the
    /// watermark and the arrival counters in the left stream's schema metadata. The join is
    /// unchanged and goes on.
    ///
    /// # Errors
    ///
    /// Arrow failures.
    pub fn snapshot(&self) -> Result<Vec<u8>, EngineError> {
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("runnel.format".to_string(), SNAPSHOT_FORMAT.to_string());
        metadata.insert("runnel.fingerprint".to_string(), self.fingerprint.clone());
        for (key, maxima) in [
            ("runnel.left_max", &self.left_max),
            ("runnel.right_max", &self.right_max),
        ] {
            let maxima: Vec<String> = maxima.iter().map(|max| encode_option(*max)).collect();
            metadata.insert(key.to_string(), maxima.join(";"));
        }
        for (key, value) in [
            ("runnel.watermark", self.watermark.to_string()),
            ("runnel.left_next_seq", self.left.next_seq.to_string()),
            ("runnel.right_next_seq", self.right.next_seq.to_string()),
        ] {
            metadata.insert(key.to_string(), value);
        }
        let left = side_snapshot(&self.left, &self.spec.left_schema, metadata)?;
        let right = side_snapshot(
            &self.right,
            &self.spec.right_schema,
            std::collections::HashMap::new(),
        )?;
        Ok(join_parts(&left, &right))
    }

    /// A join of `spec` with the state of `bytes` (from [`snapshot`](Self::snapshot)).
    ///
    /// # Errors
    ///
    /// The errors of [`new`](Self::new); [`EngineError::Snapshot`] for bytes that are not an
    /// interval join's snapshot, or one of a join of another spec.
    pub fn restore(spec: IntervalJoinSpec, bytes: &[u8]) -> Result<IntervalJoin, EngineError> {
        let corrupt = |what: String| EngineError::Snapshot(what);
        let mut join = IntervalJoin::new(spec)?;
        let (left_bytes, right_bytes) = split_parts(bytes, "left")?;
        let left_rows = read_ipc(left_bytes)?;
        let schema = left_rows.schema();
        let metadata = schema.metadata();
        let get = |key: &str| {
            metadata
                .get(key)
                .map(String::as_str)
                .ok_or_else(|| corrupt(format!("a join snapshot without `{key}`")))
        };
        let number = |key: &str| -> Result<i64, EngineError> {
            get(key)?
                .parse()
                .map_err(|_| corrupt(format!("a join snapshot's `{key}` is not a number")))
        };
        if get("runnel.format")? != SNAPSHOT_FORMAT {
            return Err(corrupt("not an interval join snapshot".to_string()));
        }
        if get("runnel.fingerprint")? != join.fingerprint {
            return Err(corrupt(
                "the snapshot was taken by a join of another spec (inputs, keys, interval, kind, partitions, out-of-orderness or lateness differ)"
                    .to_string(),
            ));
        }
        for (key, maxima) in [
            ("runnel.left_max", &mut join.left_max),
            ("runnel.right_max", &mut join.right_max),
        ] {
            let restored = get(key)?
                .split(';')
                .map(decode_option)
                .collect::<Result<Vec<_>, _>>()?;
            if restored.len() != maxima.len() {
                return Err(corrupt(format!(
                    "a join snapshot's `{key}` has {} partitions, where the join has {}",
                    restored.len(),
                    maxima.len()
                )));
            }
            *maxima = restored;
        }
        join.watermark = number("runnel.watermark")?;
        let seq = |key: &str| {
            u64::try_from(number(key)?)
                .map_err(|_| corrupt(format!("a join snapshot's `{key}` is negative")))
        };
        join.left.next_seq = seq("runnel.left_next_seq")?;
        join.right.next_seq = seq("runnel.right_next_seq")?;
        join.unseen = join
            .left_max
            .iter()
            .chain(&join.right_max)
            .filter(|max| max.is_none())
            .count();
        if join.unseen == 0 {
            join.raise_watermark();
        }
        join.restore_side(Input::Left, &left_rows)?;
        join.restore_side(Input::Right, &read_ipc(right_bytes)?)?;
        Ok(join)
    }

    /// Stores the rows of a snapshot's side `input` (its columns, `_seq`, `_matched`).
    fn restore_side(&mut self, input: Input, rows: &RecordBatch) -> Result<(), EngineError> {
        let corrupt = |what: &str| EngineError::Snapshot(format!("a join snapshot's {what}"));
        let (schema, time_column, key_columns, side) = match input {
            Input::Left => (
                &self.spec.left_schema,
                self.spec.left_time,
                &self.spec.left_keys,
                &mut self.left,
            ),
            Input::Right => (
                &self.spec.right_schema,
                self.spec.right_time,
                &self.spec.right_keys,
                &mut self.right,
            ),
        };
        let n_columns = schema.fields().len();
        if rows.num_columns() != n_columns + 2
            || rows.schema().fields()[..n_columns] != schema.fields()[..]
        {
            return Err(corrupt("stored rows are not of the join's inputs"));
        }
        let seqs = rows
            .column(n_columns)
            .as_primitive_opt::<UInt64Type>()
            .filter(|seqs| seqs.null_count() == 0)
            .ok_or_else(|| corrupt("arrival numbers are not numbers"))?
            .clone();
        let matched = rows
            .column(n_columns + 1)
            .as_boolean_opt()
            .filter(|matched| matched.null_count() == 0)
            .ok_or_else(|| corrupt("matched flags are not flags"))?
            .clone();
        let rows = rows.project(&(0..n_columns).collect::<Vec<_>>())?;
        let times = event_times(&rows, time_column)?;
        let (key_nulls, key_rows) = key_rows(&self.keys, &rows, key_columns)?;
        let keep_null_keys = input == Input::Left && self.spec.kind == JoinKind::Left;
        let batch_id = side.add_batch(&rows);
        for (row, time) in times.iter().enumerate() {
            let time = time.ok_or_else(|| corrupt("stored row has no event time"))?;
            let seq = seqs.value(row);
            if seq >= side.next_seq {
                return Err(corrupt("arrival number is past its counter"));
            }
            let slot = if key_nulls.as_ref().is_some_and(|nulls| nulls.is_null(row)) {
                if !keep_null_keys {
                    return Err(corrupt("stored row has a null key"));
                }
                NULL_KEY_SLOT
            } else {
                let key = key_rows.row(row);
                side.slot_for(side.hasher.hash_one(key.as_ref()), key.as_ref())?
            };
            side.store(
                slot,
                Stored {
                    time,
                    seq,
                    batch: batch_id,
                    row: row as u32,
                    matched: matched.value(row),
                },
            );
        }
        side.drop_unheld();
        Ok(())
    }
}

/// `[from, to]` as event times, or `None` if no event time is in it.
fn in_range(from: i128, to: i128) -> Option<(i64, i64)> {
    let from = i64::try_from(from.max(i128::from(i64::MIN))).ok()?;
    let to = i64::try_from(to.min(i128::from(i64::MAX))).ok()?;
    (from <= to).then_some((from, to))
}

/// The columns of `schema` for the rows `rows` (batch id, row) of `batches`, in order. With
/// `nulls` (one null per column), a `None` row is a row of nulls.
fn gather(
    batches: &HashMap<u64, HeldBatch>,
    schema: &SchemaRef,
    rows: impl Iterator<Item = Option<(u64, u32)>>,
    nulls: Option<&[ArrayRef]>,
) -> Result<Vec<ArrayRef>, EngineError> {
    // Source 0 is `nulls`; it is left out below if no row needs it.
    let mut sources: Vec<&RecordBatch> = Vec::new();
    let mut source_of: HashMap<u64, usize> = HashMap::new();
    let mut indices: Vec<(usize, usize)> = Vec::new();
    let mut null_rows = false;
    for row in rows {
        indices.push(match row {
            None => {
                null_rows = true;
                (0, 0)
            }
            Some((batch, row)) => {
                let source = *source_of.entry(batch).or_insert_with(|| {
                    sources.push(
                        &batches
                            .get(&batch)
                            .expect("a stored row's batch is held")
                            .batch,
                    );
                    sources.len()
                });
                (source, row as usize)
            }
        });
    }
    let nulls = match nulls {
        Some(nulls) if null_rows => Some(nulls),
        _ => {
            debug_assert!(!null_rows, "rows of nulls without nulls");
            for index in &mut indices {
                index.0 -= 1;
            }
            None
        }
    };
    (0..schema.fields().len())
        .map(|column| {
            if indices.is_empty() {
                return Ok(new_empty_array(schema.field(column).data_type()));
            }
            let mut arrays: Vec<&dyn Array> = Vec::with_capacity(sources.len() + 1);
            if let Some(nulls) = nulls {
                arrays.push(nulls[column].as_ref());
            }
            arrays.extend(sources.iter().map(|batch| batch.column(column).as_ref()));
            Ok(interleave(&arrays, &indices)?)
        })
        .collect()
}

/// Writes the stored rows of `side` (of `schema`) in (time, arrival) order, with `_seq` and
/// `_matched`, as an Arrow IPC stream with `metadata` to `bytes`.
fn side_snapshot(
    side: &Side,
    schema: &SchemaRef,
    metadata: std::collections::HashMap<String, String>,
) -> Result<Vec<u8>, EngineError> {
    let stored = side.stored();
    // The bytes depend on the rows alone, not on the batches they are gathered from:
    // `interleave` builds validity bitmaps afresh, and the IPC writer leaves out a bitmap
    // without a null.
    let mut columns = gather(
        &side.batches,
        schema,
        stored.iter().map(|stored| Some((stored.batch, stored.row))),
        None,
    )?;
    columns.push(Arc::new(UInt64Array::from_iter_values(
        stored.iter().map(|stored| stored.seq),
    )));
    columns.push(Arc::new(BooleanArray::from_iter(
        stored.iter().map(|stored| Some(stored.matched)),
    )));
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| field.as_ref().clone())
        .collect();
    fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
    fields.push(Field::new(MATCHED_COLUMN, DataType::Boolean, false));
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    ipc_bytes(&RecordBatch::try_new(schema, columns)?)
}

/// The key of each row of `batch` (its columns `key_columns`) in `keys`' row format, and
/// where any of them is null.
fn key_rows(
    keys: &RowConverter,
    batch: &RecordBatch,
    key_columns: &[usize],
) -> Result<(Option<NullBuffer>, arrow::row::Rows), EngineError> {
    let key_columns: Vec<ArrayRef> = key_columns
        .iter()
        .map(|&index| Arc::clone(batch.column(index)))
        .collect();
    let key_nulls = key_columns.iter().fold(None, |nulls, column| {
        NullBuffer::union(nulls.as_ref(), column.logical_nulls().as_ref())
    });
    Ok((key_nulls, keys.convert_columns(&key_columns)?))
}

/// A fingerprint of what in `spec` shapes the state and the output.
fn fingerprint(spec: &IntervalJoinSpec) -> String {
    let fields = |schema: &SchemaRef| {
        schema
            .fields()
            .iter()
            .map(|field| {
                format!(
                    "{}:{}:{}",
                    field.name(),
                    field.data_type(),
                    field.is_nullable()
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    fnv1a(&format!(
        "{}\u{0}{}\u{0}{:?}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{}\u{0}{}\u{0}{:?}\u{0}{:?}",
        fields(&spec.left_schema),
        spec.left_time,
        spec.left_keys,
        fields(&spec.right_schema),
        spec.right_time,
        spec.right_keys,
        spec.lower_ms,
        spec.upper_ms,
        spec.kind,
        spec.left_partitions,
        spec.right_partitions,
        spec.max_out_of_orderness,
        spec.allowed_lateness,
    ))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Int64Type;
    use proptest::prelude::*;

    use super::*;
    use crate::temporal_join::{JOIN_LATE_REASON_COLUMN, JOIN_LATE_WATERMARK_COLUMN};

    /// orders(event_time, order_id, item) joined with payments(event_time, order_id, amount),
    /// one partition each.
    fn spec(
        kind: JoinKind,
        lower_ms: i64,
        upper_ms: i64,
        out_of_orderness_ms: u64,
        lateness_ms: u64,
    ) -> IntervalJoinSpec {
        IntervalJoinSpec {
            left_schema: Arc::new(Schema::new(vec![
                Field::new("event_time", DataType::Int64, true),
                Field::new("order_id", DataType::Utf8, true),
                Field::new("item", DataType::Utf8, false),
            ])),
            left_time: 0,
            left_keys: vec![1],
            right_schema: Arc::new(Schema::new(vec![
                Field::new("event_time", DataType::Int64, true),
                Field::new("order_id", DataType::Utf8, true),
                Field::new("amount", DataType::Int64, false),
            ])),
            right_time: 0,
            right_keys: vec![1],
            lower_ms,
            upper_ms,
            kind,
            left_partitions: 1,
            right_partitions: 1,
            max_out_of_orderness: Duration::from_millis(out_of_orderness_ms),
            allowed_lateness: Duration::from_millis(lateness_ms),
        }
    }

    /// Order rows (time, order id, item); `None` is a null.
    fn orders(join: &IntervalJoin, rows: &[(Option<i64>, Option<&str>, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(&join.spec.left_schema),
            vec![
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .expect("orders")
    }

    /// Payment rows (time, order id, amount); `None` is a null.
    fn payments(join: &IntervalJoin, rows: &[(Option<i64>, Option<&str>, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::clone(&join.spec.right_schema),
            vec![
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .expect("payments")
    }

    fn left(join: &mut IntervalJoin, rows: &[(i64, &str, &str)]) -> IntervalJoinOutput {
        let rows: Vec<_> = rows.iter().map(|r| (Some(r.0), Some(r.1), r.2)).collect();
        let batch = orders(join, &rows);
        join.process_left(0, &batch).expect("left")
    }

    fn right(join: &mut IntervalJoin, rows: &[(i64, &str, i64)]) -> IntervalJoinOutput {
        let rows: Vec<_> = rows.iter().map(|r| (Some(r.0), Some(r.1), r.2)).collect();
        let batch = payments(join, &rows);
        join.process_right(0, &batch).expect("right")
    }

    /// The text of column `column` at `row`, `NULL` for a null.
    fn cell(batch: &RecordBatch, column: usize, row: usize) -> String {
        let array = batch.column(column);
        if array.is_null(row) {
            return "NULL".to_string();
        }
        match array.data_type() {
            DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
            DataType::Utf8 => array.as_string::<i32>().value(row).to_string(),
            other => panic!("no test rendering for {other}"),
        }
    }

    /// Rows as lines of their cells: joined rows "lt lk item | rt rk amount", late rows
    /// "t k payload | watermark reason".
    fn rendered(batches: &[RecordBatch]) -> Vec<String> {
        let mut lines = Vec::new();
        for batch in batches {
            for row in 0..batch.num_rows() {
                let cells: Vec<String> = (0..batch.num_columns())
                    .map(|column| cell(batch, column, row))
                    .collect();
                lines.push(format!(
                    "{} | {}",
                    cells[..3].join(" "),
                    cells[3..].join(" ")
                ));
            }
        }
        lines
    }

    #[test]
    fn rights_at_exactly_lower_and_upper_match_and_one_ms_outside_do_not() {
        let mut join = IntervalJoin::new(spec(JoinKind::Inner, -5, 10, 1000, 0)).expect("join");
        let output = left(&mut join, &[(100, "o1", "a")]);
        assert!(output.rows.is_empty());
        let output = right(
            &mut join,
            &[(94, "o1", 1), (95, "o1", 2), (110, "o1", 3), (111, "o1", 4)],
        );
        assert_eq!(
            rendered(&output.rows),
            ["100 o1 a | 95 o1 2", "100 o1 a | 110 o1 3"]
        );
        // The same edges with the right rows stored first.
        right(
            &mut join,
            &[
                (194, "o2", 5),
                (195, "o2", 6),
                (210, "o2", 7),
                (211, "o2", 8),
            ],
        );
        let output = left(&mut join, &[(200, "o2", "b")]);
        assert_eq!(
            rendered(&output.rows),
            ["200 o2 b | 195 o2 6", "200 o2 b | 210 o2 7"]
        );
    }

    #[test]
    fn a_right_row_that_comes_first_is_joined_when_the_left_row_comes() {
        let mut join = IntervalJoin::new(spec(JoinKind::Inner, 0, 60, 1000, 0)).expect("join");
        let output = right(&mut join, &[(130, "o1", 7), (120, "o1", 5), (125, "o2", 9)]);
        assert!(output.rows.is_empty());
        // The matches come in the right rows' arrival order, not their time order.
        let output = left(&mut join, &[(100, "o1", "a")]);
        assert_eq!(
            rendered(&output.rows),
            ["100 o1 a | 130 o1 7", "100 o1 a | 120 o1 5"]
        );
    }

    #[test]
    fn a_left_row_that_comes_first_is_joined_when_the_right_row_comes() {
        let mut join = IntervalJoin::new(spec(JoinKind::Inner, 0, 60, 1000, 0)).expect("join");
        let output = left(
            &mut join,
            &[(110, "o1", "b"), (100, "o1", "a"), (100, "o2", "c")],
        );
        assert!(output.rows.is_empty());
        let output = right(&mut join, &[(130, "o1", 7)]);
        assert_eq!(
            rendered(&output.rows),
            ["110 o1 b | 130 o1 7", "100 o1 a | 130 o1 7"]
        );
    }

    #[test]
    fn left_emits_an_unmatched_row_with_nulls_once_the_watermark_passes_its_upper_bound_and_lateness()
     {
        let mut join = IntervalJoin::new(spec(JoinKind::Left, 0, 10, 0, 5)).expect("join");
        // Left row o1 at 100 can meet right rows up to 110; with lateness 5 one may come until
        // the watermark passes 115.
        left(&mut join, &[(100, "o1", "a"), (200, "o9", "z")]);
        for time in [100, 114, 115] {
            let output = right(&mut join, &[(time, "o8", 1)]);
            assert!(output.rows.is_empty(), "emitted at watermark {time}");
            assert_eq!(join.watermark(), time);
        }
        assert_eq!(join.stored_rows().0, 2);
        let output = right(&mut join, &[(116, "o8", 1)]);
        assert_eq!(rendered(&output.rows), ["100 o1 a | NULL NULL NULL"]);
        assert_eq!(join.stored_rows().0, 1);
    }

    #[test]
    fn a_matched_left_row_is_never_emitted_with_nulls() {
        let mut join = IntervalJoin::new(spec(JoinKind::Left, 0, 10, 0, 5)).expect("join");
        left(&mut join, &[(100, "o1", "a"), (200, "o9", "z")]);
        right(&mut join, &[(115, "o8", 1)]);
        // At watermark 115 a right row at 110 is not late (115 - 5), and is the last to match.
        let output = right(&mut join, &[(110, "o1", 3)]);
        assert!(output.late_right.is_empty());
        assert_eq!(rendered(&output.rows), ["100 o1 a | 110 o1 3"]);
        let output = right(&mut join, &[(150, "o8", 1)]);
        assert!(output.rows.is_empty());
        assert_eq!(join.stored_rows().0, 1);
        let output = join.finish().expect("finish");
        assert_eq!(rendered(&output.rows), ["200 o9 z | NULL NULL NULL"]);
    }

    #[test]
    fn a_late_row_on_either_side_goes_to_the_late_output_and_does_not_join() {
        let mut join = IntervalJoin::new(spec(JoinKind::Inner, -10, 10, 0, 0)).expect("join");
        left(&mut join, &[(100, "o1", "a")]);
        let output = right(&mut join, &[(100, "o1", 1)]);
        assert_eq!(rendered(&output.rows), ["100 o1 a | 100 o1 1"]);
        assert_eq!(join.watermark(), 100);
        // Both would match the row of the other side at 100, but are behind the watermark.
        let output = left(&mut join, &[(99, "o1", "b"), (100, "o1", "c")]);
        assert_eq!(rendered(&output.rows), ["100 o1 c | 100 o1 1"]);
        let late = rendered(&output.late_left);
        assert_eq!(late.len(), 1);
        assert!(late[0].starts_with("99 o1 b | 100 the left row is behind"));
        assert_eq!(
            output.late_left[0].schema().field(3).name(),
            JOIN_LATE_WATERMARK_COLUMN
        );
        assert_eq!(
            output.late_left[0].schema().field(4).name(),
            JOIN_LATE_REASON_COLUMN
        );
        let output = right(&mut join, &[(98, "o1", 2)]);
        assert!(output.rows.is_empty());
        let late = rendered(&output.late_right);
        assert_eq!(late.len(), 1);
        assert!(late[0].starts_with("98 o1 2 | 100 the right row is behind"));
        assert_eq!(join.stored_rows(), (2, 1));
    }

    #[test]
    fn a_null_key_never_matches_and_left_emits_its_row_with_nulls_when_it_expires() {
        for kind in [JoinKind::Inner, JoinKind::Left] {
            let mut join = IntervalJoin::new(spec(kind, 0, 10, 0, 0)).expect("join");
            let batch = orders(
                &join,
                &[(Some(100), None, "a"), (Some(100), Some("o1"), "b")],
            );
            join.process_left(0, &batch).expect("left");
            let batch = payments(&join, &[(Some(105), None, 1), (Some(105), Some("o1"), 2)]);
            let output = join.process_right(0, &batch).expect("right");
            assert_eq!(rendered(&output.rows), ["100 o1 b | 105 o1 2"]);
            let output = left(&mut join, &[(200, "o9", "z")]);
            assert!(output.rows.is_empty());
            let output = right(&mut join, &[(111, "o8", 3)]);
            let want: &[&str] = match kind {
                JoinKind::Inner => &[],
                JoinKind::Left => &["100 NULL a | NULL NULL NULL"],
            };
            assert_eq!(rendered(&output.rows), want, "{kind:?}");
        }
    }

    #[test]
    fn a_null_event_time_is_an_event_error_and_changes_nothing() {
        let mut join = IntervalJoin::new(spec(JoinKind::Left, 0, 10, 0, 0)).expect("join");
        let batch = orders(
            &join,
            &[(Some(100), Some("o1"), "a"), (None, Some("o1"), "b")],
        );
        let output = join.process_left(0, &batch).expect("left");
        assert_eq!(output.errors.len(), 1);
        assert_eq!((output.errors[0].partition, output.errors[0].row), (0, 1));
        assert_eq!(join.stored_rows(), (1, 0));
        let batch = payments(&join, &[(None, Some("o1"), 1)]);
        let output = join.process_right(0, &batch).expect("right");
        assert!(output.rows.is_empty() && output.late_right.is_empty());
        assert_eq!(output.errors.len(), 1);
        assert_eq!(join.watermark(), i64::MIN);
        let output = join.finish().expect("finish");
        assert_eq!(rendered(&output.rows), ["100 o1 a | NULL NULL NULL"]);
    }

    #[test]
    fn finish_flushes_every_unmatched_left_row_with_nulls_and_empties_the_state() {
        let mut join = IntervalJoin::new(spec(JoinKind::Left, 0, 10, 1000, 0)).expect("join");
        left(
            &mut join,
            &[(300, "o3", "c"), (100, "o1", "a"), (200, "o2", "b")],
        );
        right(&mut join, &[(205, "o2", 1), (500, "o5", 2)]);
        let output = join.finish().expect("finish");
        // In (time, arrival) order; the matched row at 200 is not among them.
        assert_eq!(
            rendered(&output.rows),
            ["100 o1 a | NULL NULL NULL", "300 o3 c | NULL NULL NULL"]
        );
        assert_eq!(join.stored_rows(), (0, 0));
        assert_eq!(join.watermark(), i64::MAX);
        assert_eq!(join.state_bytes(), 0);
        let output = left(&mut join, &[(400, "o4", "d")]);
        assert_eq!(rendered(&output.late_left).len(), 1);
    }

    #[test]
    fn the_watermark_waits_for_every_partition_and_never_goes_back() {
        let mut spec = spec(JoinKind::Inner, 0, 10, 5, 0);
        spec.left_partitions = 2;
        let mut join = IntervalJoin::new(spec).expect("join");
        left(&mut join, &[(100, "o1", "a")]);
        right(&mut join, &[(100, "o1", 1)]);
        assert_eq!(join.watermark(), i64::MIN);
        let batch = orders(&join, &[(Some(50), Some("o2"), "b")]);
        join.process_left(1, &batch).expect("left");
        assert_eq!(join.watermark(), 45);
        let batch = orders(&join, &[(Some(80), Some("o2"), "b")]);
        join.process_left(1, &batch).expect("left");
        assert_eq!(join.watermark(), 75);
        left(&mut join, &[(200, "o1", "a")]);
        assert_eq!(join.watermark(), 75);
        right(&mut join, &[(300, "o1", 1)]);
        assert_eq!(join.watermark(), 75);
        let batch = orders(&join, &[(Some(400), Some("o2"), "b")]);
        join.process_left(1, &batch).expect("left");
        assert_eq!(join.watermark(), 195);
        assert!(matches!(
            join.process_left(2, &batch),
            Err(EngineError::Misuse(_))
        ));
    }

    #[test]
    fn a_right_partition_at_its_end_stops_holding_the_watermark_until_it_shows_a_row() {
        let mut spec = spec(JoinKind::Left, 0, 10, 0, 0);
        spec.right_partitions = 2;
        let mut join = IntervalJoin::new(spec).expect("join");
        let on = |join: &mut IntervalJoin, partition: u32, rows: &[(i64, &str, i64)]| {
            let rows: Vec<_> = rows.iter().map(|r| (Some(r.0), Some(r.1), r.2)).collect();
            let batch = payments(join, &rows);
            join.process_right(partition, &batch).expect("right")
        };
        left(&mut join, &[(100, "o1", "a"), (300, "o9", "z")]);
        on(&mut join, 0, &[(300, "o8", 1)]);
        // Right partition 1 has shown nothing: the watermark waits, o1 is kept.
        assert_eq!(join.watermark(), i64::MIN);
        let output = join.right_at_end(1).expect("at end");
        // Without it the watermark is the others' (300): o1 (100..110) expires unmatched.
        assert_eq!(join.watermark(), 300);
        assert_eq!(rendered(&output.rows), ["100 o1 a | NULL NULL NULL"]);
        assert!(join.right_at_end(1).expect("again").rows.is_empty());
        // It shows a row again: one behind the watermark is late, and it holds the watermark
        // once more (the others move on, the watermark stays at its 350).
        let late = on(&mut join, 1, &[(250, "o9", 2)]);
        assert_eq!(late.late_right.len(), 1);
        on(&mut join, 1, &[(350, "o9", 3)]);
        left(&mut join, &[(500, "o7", "q")]);
        on(&mut join, 0, &[(500, "o8", 4)]);
        assert_eq!(join.watermark(), 350);
        assert!(matches!(join.right_at_end(2), Err(EngineError::Misuse(_))));
    }

    #[test]
    fn expired_rows_leave_the_state() {
        let mut join = IntervalJoin::new(spec(JoinKind::Inner, -10, 10, 0, 0)).expect("join");
        for time in (0..1000).step_by(10) {
            left(&mut join, &[(time, "o1", "a")]);
            right(&mut join, &[(time, "o2", 1)]);
        }
        // The watermark is 990: left rows after 980 and right rows after 980 may still meet.
        assert_eq!(join.stored_rows(), (2, 2));
        assert_eq!(join.left.batches.len(), 2);
        assert_eq!(join.right.batches.len(), 2);
    }

    #[test]
    fn a_snapshot_of_another_join_is_refused() {
        let join = IntervalJoin::new(spec(JoinKind::Inner, 0, 10, 0, 0)).expect("join");
        let bytes = join.snapshot().expect("snapshot");
        for other in [
            spec(JoinKind::Inner, 0, 11, 0, 0),
            spec(JoinKind::Left, 0, 10, 0, 0),
            spec(JoinKind::Inner, 0, 10, 0, 1),
        ] {
            assert!(matches!(
                IntervalJoin::restore(other, &bytes),
                Err(EngineError::Snapshot(_))
            ));
        }
        assert!(matches!(
            IntervalJoin::restore(spec(JoinKind::Inner, 0, 10, 0, 0), b"not a snapshot"),
            Err(EngineError::Snapshot(_))
        ));
    }

    #[test]
    fn a_spec_with_an_empty_interval_is_refused() {
        assert!(matches!(
            IntervalJoin::new(spec(JoinKind::Inner, 10, 9, 0, 0)),
            Err(EngineError::Plan(_))
        ));
    }

    /// A row of a property test: event time, key (0..3), payload.
    type Row = (Option<i64>, Option<u8>, u8);

    /// An input step: rows of a left or right partition.
    #[derive(Debug, Clone)]
    enum Step {
        Left(u32, Vec<Row>),
        Right(u32, Vec<Row>),
    }

    /// What a run gave: joined rows, late left rows, late right rows (all rendered), and
    /// the number of event errors.
    type Outcome = (Vec<String>, Vec<String>, Vec<String>, usize);

    const KEYS: [&str; 3] = ["o0", "o1", "o2"];

    /// Property tests' spec: two partitions a side.
    fn property_spec(
        kind: JoinKind,
        (lower_ms, width_ms, out_of_orderness_ms, lateness_ms): (i64, i64, u64, u64),
    ) -> IntervalJoinSpec {
        let mut spec = spec(
            kind,
            lower_ms,
            lower_ms + width_ms,
            out_of_orderness_ms,
            lateness_ms,
        );
        spec.left_partitions = 2;
        spec.right_partitions = 2;
        spec
    }

    fn take(outcome: &mut Outcome, output: IntervalJoinOutput) {
        outcome.0.extend(rendered(&output.rows));
        outcome.1.extend(rendered(&output.late_left));
        outcome.2.extend(rendered(&output.late_right));
        outcome.3 += output.errors.len();
    }

    /// Feeds `steps` to `join`, each cut into batches of the sizes `cuts` gives in turn
    /// (a step whole when it is empty).
    fn feed(join: &mut IntervalJoin, steps: &[Step], cuts: &[usize], outcome: &mut Outcome) {
        let mut sizes = cuts.iter().cycle();
        for step in steps {
            let (partition, rows) = match step {
                Step::Left(partition, rows) | Step::Right(partition, rows) => (*partition, rows),
            };
            let mut rest = &rows[..];
            while !rest.is_empty() {
                let size = sizes
                    .next()
                    .map_or(rest.len(), |size| (*size).min(rest.len()));
                let (chunk, after) = rest.split_at(size);
                rest = after;
                let output = match step {
                    Step::Left(..) => {
                        let rows: Vec<_> = chunk
                            .iter()
                            .map(|(t, k, p)| {
                                (
                                    *t,
                                    k.map(|k| KEYS[k as usize]),
                                    ["a", "b", "c"][*p as usize],
                                )
                            })
                            .collect();
                        let batch = orders(join, &rows);
                        join.process_left(partition, &batch).expect("left")
                    }
                    Step::Right(..) => {
                        let rows: Vec<_> = chunk
                            .iter()
                            .map(|(t, k, p)| (*t, k.map(|k| KEYS[k as usize]), i64::from(*p)))
                            .collect();
                        let batch = payments(join, &rows);
                        join.process_right(partition, &batch).expect("right")
                    }
                };
                take(outcome, output);
            }
        }
    }

    fn run(spec: &IntervalJoinSpec, steps: &[Step], cuts: &[usize]) -> Outcome {
        let mut join = IntervalJoin::new(spec.clone()).expect("join");
        let mut outcome = Outcome::default();
        feed(&mut join, steps, cuts, &mut outcome);
        take(&mut outcome, join.finish().expect("finish"));
        outcome
    }

    /// Interval, out-of-orderness, lateness.
    fn settings() -> impl Strategy<Value = (i64, i64, u64, u64)> {
        (-10i64..6, 0i64..15, 0u64..6, 0u64..6)
    }

    /// Steps with times anywhere in 0..80 (so some rows are late), now and then a null key
    /// or a null time.
    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let row = (
            prop::option::weighted(0.95, 0i64..80),
            prop::option::weighted(0.9, 0u8..3),
            0u8..3,
        );
        let rows = prop::collection::vec(row, 1..6);
        let step = (any::<bool>(), 0u32..2, rows).prop_map(|(is_left, partition, rows)| {
            if is_left {
                Step::Left(partition, rows)
            } else {
                Step::Right(partition, rows)
            }
        });
        prop::collection::vec(step, 0..16)
    }

    /// The nested-loop interval join of every row of `steps`, as sorted rendered rows: every
    /// pair of an equal non-null key within the interval, and for `LEFT` each left row
    /// without one, with nulls.
    fn nested_loop(spec: &IntervalJoinSpec, steps: &[Step]) -> Vec<String> {
        let kind = spec.kind;
        let rows = |want_left: bool| -> Vec<(i64, Option<u8>, u8)> {
            steps
                .iter()
                .filter_map(|step| match step {
                    Step::Left(_, rows) if want_left => Some(rows.clone()),
                    Step::Right(_, rows) if !want_left => Some(rows.clone()),
                    _ => None,
                })
                .flatten()
                .map(|(time, key, payload)| (time.expect("a time"), key, payload))
                .collect()
        };
        let key = |key: Option<u8>| key.map_or("NULL", |key| KEYS[key as usize]);
        let mut want = Vec::new();
        for (lt, lk, item) in rows(true) {
            let left_row = format!("{lt} {} {}", key(lk), ["a", "b", "c"][item as usize]);
            let mut matched = false;
            for (rt, rk, amount) in rows(false) {
                if lk.is_some() && lk == rk && (spec.lower_ms..=spec.upper_ms).contains(&(rt - lt))
                {
                    matched = true;
                    want.push(format!("{left_row} | {rt} {} {amount}", key(rk)));
                }
            }
            if kind == JoinKind::Left && !matched {
                want.push(format!("{left_row} | NULL NULL NULL"));
            }
        }
        want.sort();
        want
    }

    /// Steps whose rows are never more than `out_of_orderness` behind the largest time of
    /// their partition, so that none is late: each partition's clock moves on by the row's
    /// step (0..7) and the row is up to `out_of_orderness` behind it.
    fn steps_without_late_rows(steps: &[Step], out_of_orderness: u64) -> Vec<Step> {
        let mut clocks = [[0i64; 2]; 2];
        let jitter = i64::try_from(out_of_orderness).expect("small") + 1;
        steps
            .iter()
            .map(|step| {
                let (side, partition, rows) = match step {
                    Step::Left(partition, rows) => (0, *partition, rows),
                    Step::Right(partition, rows) => (1, *partition, rows),
                };
                let clock = &mut clocks[side][partition as usize];
                let rows = rows
                    .iter()
                    .map(|(time, key, payload)| {
                        let time = time.unwrap_or(0);
                        *clock += time % 7;
                        (Some(*clock - time % jitter), *key, *payload)
                    })
                    .collect();
                match side {
                    0 => Step::Left(partition, rows),
                    _ => Step::Right(partition, rows),
                }
            })
            .collect()
    }

    proptest! {
        /// Output, late rows and errors do not depend on how the inputs are cut into batches.
        #[test]
        fn batch_cuts_do_not_change_the_output(
            steps in steps(),
            settings in settings(),
            cuts in prop::collection::vec(1usize..5, 1..6),
            is_left in any::<bool>(),
        ) {
            let kind = if is_left { JoinKind::Left } else { JoinKind::Inner };
            let spec = property_spec(kind, settings);
            let whole = run(&spec, &steps, &[]);
            prop_assert_eq!(&run(&spec, &steps, &[1]), &whole);
            prop_assert_eq!(&run(&spec, &steps, &cuts), &whole);
        }

        /// With no late rows, the output is, as a multiset, the nested-loop interval join of
        /// the whole input: every pair of an equal non-null key within the interval, and for
        /// `LEFT` each left row without one, with nulls.
        #[test]
        fn without_late_rows_it_is_the_nested_loop_join_of_the_whole_input(
            steps in steps(),
            settings in settings(),
            is_left in any::<bool>(),
        ) {
            let kind = if is_left { JoinKind::Left } else { JoinKind::Inner };
            let spec = property_spec(kind, settings);
            let steps = steps_without_late_rows(&steps, settings.2);
            let (mut got, late_left, late_right, errors) = run(&spec, &steps, &[]);
            prop_assert!(late_left.is_empty() && late_right.is_empty() && errors == 0);
            got.sort();
            prop_assert_eq!(got, nested_loop(&spec, &steps));
        }

        /// A right input given whole and ended first: each left row is joined at once and not
        /// stored, and the output is still the nested-loop join of the whole input.
        #[test]
        fn with_the_right_input_ended_first_it_is_the_nested_loop_join(
            steps in steps(),
            settings in settings(),
            is_left in any::<bool>(),
        ) {
            let kind = if is_left { JoinKind::Left } else { JoinKind::Inner };
            let spec = property_spec(kind, settings);
            let steps = steps_without_late_rows(&steps, settings.2);
            let (rights, lefts): (Vec<Step>, Vec<Step>) =
                steps.iter().cloned().partition(|step| matches!(step, Step::Right(..)));
            let mut join = IntervalJoin::new(spec.clone()).expect("join");
            let mut outcome = Outcome::default();
            feed(&mut join, &rights, &[], &mut outcome);
            take(&mut outcome, join.right_ended().expect("right ended"));
            feed(&mut join, &lefts, &[], &mut outcome);
            prop_assert_eq!(join.stored_rows().0, 0, "no left row is stored");
            take(&mut outcome, join.finish().expect("finish"));
            let (mut got, late_left, late_right, errors) = outcome;
            prop_assert!(late_left.is_empty() && late_right.is_empty() && errors == 0);
            got.sort();
            prop_assert_eq!(got, nested_loop(&spec, &steps));
        }

        /// A join restored from a snapshot taken after any step goes on exactly as the
        /// original: the same output, and the same snapshot at the end.
        #[test]
        fn a_restored_join_continues_like_the_original(
            steps in steps(),
            settings in settings(),
            cut in any::<prop::sample::Index>(),
            is_left in any::<bool>(),
        ) {
            let kind = if is_left { JoinKind::Left } else { JoinKind::Inner };
            let spec = property_spec(kind, settings);
            let cut = cut.index(steps.len() + 1);
            let mut original = IntervalJoin::new(spec.clone()).expect("join");
            let mut want = Outcome::default();
            feed(&mut original, &steps, &[], &mut want);
            let want_bytes = original.snapshot().expect("snapshot");
            take(&mut want, original.finish().expect("finish"));

            let mut join = IntervalJoin::new(spec.clone()).expect("join");
            let mut got = Outcome::default();
            feed(&mut join, &steps[..cut], &[], &mut got);
            let bytes = join.snapshot().expect("snapshot");
            let mut restored = IntervalJoin::restore(spec, &bytes).expect("restore");
            prop_assert_eq!(restored.snapshot().expect("snapshot"), bytes);
            feed(&mut restored, &steps[cut..], &[], &mut got);
            prop_assert_eq!(restored.snapshot().expect("snapshot"), want_bytes);
            take(&mut got, restored.finish().expect("finish"));
            prop_assert_eq!(got, want);
            prop_assert_eq!(
                restored.snapshot().expect("snapshot"),
                original.snapshot().expect("snapshot")
            );
        }
    }
}
