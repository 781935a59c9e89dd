//! The event-time window operator: batches in, upserts and late events out.
//!
//! Semantics (the contract `DESIGN.md` states, checked by the golden tests):
//! - The watermark of a partition is the largest event time it has shown, less
//!   `max_out_of_orderness`; the operator's watermark is the minimum over partitions that are
//!   not idle, and never goes back. A partition is idle once its input has said that it
//!   holds nothing that arrived up to some time ([`WindowOperator::input_at_end`]), that
//!   time is at or past the arrival clock (the log's append time, passed in by the caller,
//!   so that replays see the same clock), and the arrival clock has moved `idle_timeout` past
//!   its last batch. An input that has not said so, such as one still catching up on its
//!   history while the others run ahead, is never idle: its events to come are not made late
//!   by the others' clock. Nor is one whose word has gone stale (the others' events arrived
//!   after the time it vouched for): it may have events of its own from then that its
//!   source has not delivered yet.
//! - A window `[start, end)` fires when the watermark reaches `end`: every group is emitted
//!   with the next version and `_final = true`.
//! - An event for a window that has fired, while the watermark is below `end +
//!   allowed_lateness`, updates it and its group is emitted again with the next version.
//!   Past that, the event goes to the late-events output with its reason, and is counted.
//! - With early emission every `N` ms, each time the watermark crosses a multiple of `N`,
//!   groups of unfired windows that changed are emitted with `_final = false`.
//!
//! Results do not depend on how the input is cut into batches: each row is judged against
//! the watermark as it stood just before that row, and a batch is cut into segments
//! wherever the watermark crosses a firing point, so a firing sees exactly the rows that came
//! before it. That is what lets a replay reproduce a live run byte for byte.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringBuilder, TimestampMillisecondArray,
    UInt32Array,
};
use arrow::compute::{filter_record_batch, interleave, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{EngineError, EventError};
use crate::groups::GroupTable;
use crate::plan::{GroupSlot, JobPlan, window_time_type};
use crate::session::{Assignment, SessionState};
use crate::sharded::PreparedBatch;
use crate::window::{EVENT_TIME_RANGE_MS, WindowSpec, WindowStarts, event_times_ms, floor_to};

/// runnel's one RFC 3339 formatter: late reasons name times as the CLI prints them.
pub(crate) use runnel_time as time;

/// Late-event column: the source partition.
pub const LATE_PARTITION_COLUMN: &str = "_partition";
/// Late-event column: the window the event was too late for.
pub const LATE_WINDOW_START_COLUMN: &str = "_window_start";
/// Late-event column: the watermark when the event arrived.
pub const LATE_WATERMARK_COLUMN: &str = "_watermark";
/// Late-event column: why the event was not counted.
pub const LATE_REASON_COLUMN: &str = "_reason";

/// How the operator treats time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorOptions {
    /// Source partitions feeding the operator (0..partitions).
    pub partitions: u32,
    /// How far behind the largest event time seen the watermark stays.
    pub max_out_of_orderness: Duration,
    /// How long after a window fires late events still update it.
    pub allowed_lateness: Duration,
    /// A partition with no batch for this long (arrival clock) stops holding the watermark.
    pub idle_timeout: Option<Duration>,
    /// Emit early (non-final) results each time the watermark crosses a multiple of this.
    pub early_emit_interval: Option<Duration>,
}

impl Default for OperatorOptions {
    fn default() -> OperatorOptions {
        OperatorOptions {
            partitions: 1,
            max_out_of_orderness: Duration::ZERO,
            allowed_lateness: Duration::ZERO,
            idle_timeout: None,
            early_emit_interval: None,
        }
    }
}

/// What one call produced.
#[derive(Debug, Default)]
pub struct OperatorOutput {
    /// Upserts, in emission order, with the plan's result schema.
    pub results: Vec<RecordBatch>,
    /// Events not counted, with their reason (see [`WindowOperator::late_schema`]): events
    /// too late for their window, and the events of [`OperatorOutput::errors`] (with a null
    /// `_window_start` and `_watermark`), in input order.
    pub late_events: Vec<RecordBatch>,
    /// Events that could not be used at all: no event time, one outside
    /// [`crate::EVENT_TIME_RANGE_MS`], or expressions that fail on them. Each is also a row
    /// of [`OperatorOutput::late_events`].
    pub errors: Vec<EventError>,
}

impl OperatorOutput {
    /// Appends `other` after this output.
    pub fn append(&mut self, other: OperatorOutput) {
        self.results.extend(other.results);
        self.late_events.extend(other.late_events);
        self.errors.extend(other.errors);
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PartitionClock {
    pub(crate) max_event_time: Option<i64>,
    pub(crate) last_arrival: Option<i64>,
    /// The input said it holds nothing that arrived up to this arrival time, and has sent
    /// nothing since.
    pub(crate) at_end: Option<i64>,
}

pub(crate) struct Window {
    pub(crate) end: i64,
    pub(crate) table: GroupTable,
    pub(crate) fired: bool,
}

/// Which groups of a window to emit.
#[derive(Debug, Clone, Copy)]
enum Selection {
    All,
    Dirty,
    Group(usize),
}

/// An event too late to count, for the late-events output.
pub(crate) struct LateEvent {
    row: u32,
    window_start: i64,
    watermark: i64,
    reason: String,
}

/// Where the rows of a batch stand and how far its event times had come before each: the
/// watermark before every position, whichever rows of the batch an operator holds.
pub(crate) struct Trace<'a> {
    /// Each row's position in the whole batch; `None` when the rows are the whole batch.
    pub(crate) positions: Option<&'a [u32]>,
    /// `prefix[p]`: the largest event time of the whole batch's rows before position `p`
    /// (`i64::MIN` for none); one entry more than the whole batch has rows.
    pub(crate) prefix: &'a [i64],
}

impl Trace<'_> {
    fn position(&self, row: usize) -> usize {
        self.positions
            .map_or(row, |positions| positions[row] as usize)
    }

    /// The number of rows of the whole batch.
    fn len(&self) -> usize {
        self.prefix.len() - 1
    }
}

/// `prefix[p]`: the largest of `times[..p]`, `i64::MIN` for none (see [`Trace::prefix`]).
pub(crate) fn prefix_max(times: &[i64]) -> Vec<i64> {
    let mut prefix = Vec::with_capacity(times.len() + 1);
    let mut max = i64::MIN;
    prefix.push(max);
    for &time in times {
        max = max.max(time);
        prefix.push(max);
    }
    prefix
}

/// When something was emitted, relative to the rows of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Released by the watermark before the row at the position (or at the batch's end).
    Fire,
    /// Caused by the row at the position itself (a late update).
    Row,
}

/// Results from `first_result` on (to the next mark) were emitted at `position`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    pub(crate) first_result: usize,
    pub(crate) position: usize,
    pub(crate) phase: Phase,
}

/// What one shard made of its rows of a batch.
pub(crate) struct ShardOutput {
    pub(crate) results: Vec<RecordBatch>,
    pub(crate) marks: Vec<Mark>,
    /// Late events, by position in the whole batch's prepared rows.
    pub(crate) late: Vec<LateEvent>,
}

/// The state of one batch's pass over its rows.
struct BatchRun {
    /// The partition's largest event time before the batch.
    base: Option<i64>,
    /// The other partitions' watermark.
    others: Option<i64>,
    /// Positions below this have been checked for firings.
    checked: usize,
    /// The lowest watermark at which something happens.
    next_trigger: i64,
    marks: Vec<Mark>,
}

impl BatchRun {
    /// The partition's largest event time before `position` of the batch.
    fn max_event_time(&self, trace: &Trace<'_>, position: usize) -> Option<i64> {
        let in_batch = trace.prefix[position];
        match self.base {
            Some(base) => Some(base.max(in_batch)),
            None => (in_batch != i64::MIN).then_some(in_batch),
        }
    }

    /// Records that the results from `first_result` on, up to `emitted` (see
    /// [`WindowOperator::emitted`]), were emitted at `position`.
    fn mark(&mut self, first_result: usize, position: usize, phase: Phase, emitted: usize) {
        if emitted > first_result {
            self.marks.push(Mark {
                first_result,
                position,
                phase,
            });
        }
    }
}

/// Rows of the current batch waiting to be added to their windows' state, by window start.
/// Consecutive rows mostly go to the windows the row before went to, so each of an event's
/// windows (`nth`) remembers where its last row went.
#[derive(Default)]
pub(crate) struct Segment {
    windows: Vec<(i64, Vec<u32>)>,
    /// By `nth`: the index in `windows` of the window the last row's `nth` window was.
    hints: Vec<usize>,
}

impl Segment {
    /// Adds `row` to the window starting at `start`, its `nth` window.
    fn push(&mut self, nth: usize, start: i64, row: u32) {
        if self.hints.len() <= nth {
            self.hints.resize(nth + 1, 0);
        }
        let hint = self.hints[nth];
        if let Some((hinted, rows)) = self.windows.get_mut(hint)
            && *hinted == start
        {
            rows.push(row);
            return;
        }
        let index = match self.windows.iter().position(|(held, _)| *held == start) {
            Some(index) => index,
            None => {
                self.windows.push((start, Vec::new()));
                self.windows.len() - 1
            }
        };
        self.windows[index].1.push(row);
        self.hints[nth] = index;
    }

    /// Takes the windows' rows, by window start.
    fn take(&mut self) -> Vec<(i64, Vec<u32>)> {
        let mut windows = std::mem::take(&mut self.windows);
        windows.sort_unstable_by_key(|(start, _)| *start);
        windows
    }
}

/// One row of a call's late-events output.
struct LateRow<'a> {
    /// Its row in the input batch: the output's order.
    input_row: u32,
    /// Where its columns are: (0, row of the input) or (1, row of the prepared batch).
    source: (usize, usize),
    window_start: Option<i64>,
    watermark: Option<i64>,
    reason: &'a str,
}

/// Rows of the current batch, ready to aggregate.
pub(crate) struct Prepared {
    /// Rows with an event time that passed WHERE, in the stream's schema.
    batch: RecordBatch,
    /// Each row's index in the input batch.
    pub(crate) input_rows: Vec<u32>,
    times: Vec<i64>,
    keys: Vec<ArrayRef>,
    args: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
}

impl Prepared {
    /// The rows at `rows` (ascending): one shard's share of a batch. Its `batch` is empty:
    /// late events are built from the whole batch's rows.
    pub(crate) fn take(&self, rows: &[u32]) -> Result<Prepared, EngineError> {
        Ok(Prepared {
            input_rows: rows
                .iter()
                .map(|&row| self.input_rows[row as usize])
                .collect(),
            times: rows.iter().map(|&row| self.times[row as usize]).collect(),
            ..self.columns_at(rows)?
        })
    }

    /// The key, argument and FILTER columns at `rows`; no input rows, times or batch. A
    /// column that serves several of them (aggregates of the same argument, a key that is
    /// also an argument) is selected once.
    fn columns_at(&self, rows: &[u32]) -> Result<Prepared, EngineError> {
        let mut selected: Vec<(ArrayRef, ArrayRef)> = Vec::new();
        let mut select_once = |columns: &[ArrayRef]| {
            columns
                .iter()
                .map(|column| {
                    if let Some((_, done)) = selected
                        .iter()
                        .find(|(source, _)| Arc::ptr_eq(source, column))
                    {
                        return Ok(Arc::clone(done));
                    }
                    let done = select(column, rows)?;
                    selected.push((Arc::clone(column), Arc::clone(&done)));
                    Ok(done)
                })
                .collect::<Result<Vec<_>, EngineError>>()
        };
        Ok(Prepared {
            batch: self.batch.slice(0, 0),
            input_rows: Vec::new(),
            times: Vec::new(),
            keys: select_once(&self.keys)?,
            args: self
                .args
                .iter()
                .map(|columns| select_once(columns))
                .collect::<Result<_, _>>()?,
            filters: self
                .filters
                .iter()
                .map(|filter| {
                    filter
                        .as_ref()
                        .map(|filter| {
                            Ok::<_, EngineError>(
                                select(&(Arc::new(filter.clone()) as ArrayRef), rows)?
                                    .as_boolean()
                                    .clone(),
                            )
                        })
                        .transpose()
                })
                .collect::<Result<_, _>>()?,
        })
    }

    /// The number of rows.
    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    /// The event times, one per row.
    pub(crate) fn times(&self) -> &[i64] {
        &self.times
    }

    /// The group key columns.
    pub(crate) fn keys(&self) -> &[ArrayRef] {
        &self.keys
    }
}

/// The window operator: tumbling and hopping windows here, session windows in `session.rs`.
pub struct WindowOperator {
    pub(crate) plan: Arc<JobPlan>,
    pub(crate) options: OperatorOptions,
    pub(crate) max_out_of_orderness_ms: i64,
    pub(crate) allowed_lateness_ms: i64,
    pub(crate) partitions: Vec<PartitionClock>,
    /// The arrival clock: the latest arrival time seen.
    pub(crate) clock: Option<i64>,
    /// The arrival time of the first call, from which never-seen partitions (at their end)
    /// idle.
    pub(crate) started_at: Option<i64>,
    pub(crate) watermark: i64,
    pub(crate) windows: BTreeMap<i64, Window>,
    /// Set for session windows, which keep their own state.
    pub(crate) sessions: Option<SessionState>,
    pub(crate) next_early: Option<i64>,
    pub(crate) late_count: u64,
    pub(crate) finished: bool,
    late_schema: SchemaRef,
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl WindowOperator {
    /// Creates an operator for `plan`.
    ///
    /// # Errors
    ///
    /// [`EngineError::Plan`] for session windows, which this operator does not run yet, and
    /// for zero partitions.
    pub fn new(
        plan: Arc<JobPlan>,
        options: OperatorOptions,
    ) -> Result<WindowOperator, EngineError> {
        let sessions = match plan.window {
            WindowSpec::Session { gap_ms } => {
                if options.early_emit_interval.is_some() {
                    return Err(EngineError::plan(
                        "early results are not supported for session windows: a session's start moves as it merges",
                    ));
                }
                Some(SessionState::new(&plan, gap_ms)?)
            }
            _ => None,
        };
        if options.partitions == 0 {
            return Err(EngineError::plan(
                "an operator needs at least one partition",
            ));
        }
        let mut late_fields: Vec<Field> = plan
            .stream_schema
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        late_fields.push(Field::new(LATE_PARTITION_COLUMN, DataType::UInt32, false));
        // Null for an event that failed (see `OperatorOutput::errors`): it reached no window.
        late_fields.push(Field::new(
            LATE_WINDOW_START_COLUMN,
            window_time_type(),
            true,
        ));
        late_fields.push(Field::new(LATE_WATERMARK_COLUMN, window_time_type(), true));
        late_fields.push(Field::new(LATE_REASON_COLUMN, DataType::Utf8, false));
        Ok(WindowOperator {
            max_out_of_orderness_ms: duration_ms(options.max_out_of_orderness),
            allowed_lateness_ms: duration_ms(options.allowed_lateness),
            partitions: vec![PartitionClock::default(); options.partitions as usize],
            plan,
            options,
            clock: None,
            started_at: None,
            watermark: i64::MIN,
            windows: BTreeMap::new(),
            sessions,
            next_early: None,
            late_count: 0,
            finished: false,
            late_schema: Arc::new(Schema::new(late_fields)),
        })
    }

    /// Returns the schema of late-event batches: the stream's columns, then `_partition`,
    /// `_window_start`, `_watermark` and `_reason`.
    pub fn late_schema(&self) -> SchemaRef {
        Arc::clone(&self.late_schema)
    }

    /// Returns the current watermark (epoch ms; `i64::MIN` before any).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Returns the arrival clock: the latest arrival time seen (`None` before any).
    pub fn arrival_clock(&self) -> Option<i64> {
        self.clock
    }

    /// Returns how many (event, window) pairs were too late to count so far.
    pub fn late_count(&self) -> u64 {
        self.late_count
    }

    /// Returns the number of open windows and of groups across them.
    pub fn open_state(&self) -> (usize, usize) {
        if let Some(sessions) = &self.sessions {
            return (sessions.len(), sessions.len());
        }
        let groups = self.windows.values().map(|window| window.table.len()).sum();
        (self.windows.len(), groups)
    }

    /// Returns an estimate of the bytes held by open windows.
    pub fn state_bytes(&self) -> usize {
        if let Some(sessions) = &self.sessions {
            return sessions.size();
        }
        self.windows
            .values()
            .map(|window| window.table.size())
            .sum()
    }

    /// Processes a batch from `partition` that arrived at `arrival_ms` (the log's append
    /// time of its records; any clock that replays identically).
    ///
    /// # Errors
    ///
    /// A batch whose schema is not the stream's, an unknown partition, use after
    /// [`finish`](Self::finish), or a failure inside DataFusion. Bad events are not errors:
    /// they come back in [`OperatorOutput::errors`].
    pub fn process(
        &mut self,
        partition: u32,
        batch: &RecordBatch,
        arrival_ms: i64,
    ) -> Result<OperatorOutput, EngineError> {
        let clock = *self.input_clock(partition, "process")?;
        let PreparedBatch {
            prepared,
            prefix,
            errors,
            ..
        } = PreparedBatch::new(&self.plan, partition, batch.clone())?;
        self.start_batch(partition, arrival_ms);
        let mut output = OperatorOutput {
            errors,
            ..OperatorOutput::default()
        };
        let trace = Trace {
            positions: None,
            prefix: &prefix,
        };
        let (late, _) = self.process_rows(partition, clock, &prepared, &trace, &mut output)?;
        let late_events = (&self.late_schema, &mut self.late_count);
        add_late_events(
            late_events,
            partition,
            (batch, &prepared),
            &late,
            &mut output,
        )?;
        Ok(output)
    }

    /// Processes one shard's rows of a batch (see `sharded.rs`): `prepared` holds the rows
    /// whose keys this operator owns, and `trace` where each stands in the whole batch and
    /// the event times of the whole batch, so that the watermark moves exactly as it does
    /// for one operator that sees every row. Late events come back with their positions in
    /// the whole batch's prepared rows, for the caller to merge.
    pub(crate) fn process_shard(
        &mut self,
        partition: u32,
        arrival_ms: i64,
        prepared: &Prepared,
        trace: &Trace<'_>,
    ) -> Result<ShardOutput, EngineError> {
        let clock = *self.input_clock(partition, "process")?;
        self.start_batch(partition, arrival_ms);
        let mut output = OperatorOutput::default();
        let (late, marks) = self.process_rows(partition, clock, prepared, trace, &mut output)?;
        Ok(ShardOutput {
            results: output.results,
            marks,
            late,
        })
    }

    /// Checks that a batch of `partition` may be processed: before
    /// [`finish`](Self::finish), from a known partition.
    pub(crate) fn check_partition(&mut self, partition: u32) -> Result<(), EngineError> {
        self.input_clock(partition, "process").map(|_| ())
    }

    /// Notes a batch's arrival on `partition`.
    fn start_batch(&mut self, partition: u32, arrival_ms: i64) {
        self.observe_arrival(arrival_ms);
        self.partitions[partition as usize].last_arrival = Some(arrival_ms);
        self.partitions[partition as usize].at_end = None;
    }

    /// The rows of a batch, in order: each is judged against the watermark as it stood
    /// before it (from `trace`), and whatever the watermark releases fires at the first
    /// position where it does. Ends with the partition's largest event time recorded and the
    /// watermark raised to where the whole batch left it. Returns the late events and where
    /// in `output.results` each emission starts.
    fn process_rows(
        &mut self,
        partition: u32,
        clock: PartitionClock,
        prepared: &Prepared,
        trace: &Trace<'_>,
        output: &mut OperatorOutput,
    ) -> Result<(Vec<LateEvent>, Vec<Mark>), EngineError> {
        let mut run = BatchRun {
            base: clock.max_event_time,
            others: self.others_watermark(partition),
            checked: 0,
            next_trigger: self.next_trigger(),
            marks: Vec::new(),
        };
        let mut segment = Segment::default();
        let late = if self.sessions.is_some() {
            self.session_rows(prepared, trace, &mut run, output)?
        } else {
            self.window_rows(prepared, trace, &mut run, &mut segment, output)?
        };
        let end = trace.len();
        self.step(&mut run, trace, end, prepared, &mut segment, output)?;
        self.flush(prepared, &mut segment)?;
        let max_event_time = run.max_event_time(trace, end);
        self.partitions[partition as usize].max_event_time = max_event_time;
        let first_result = self.emitted(output);
        self.advance_to(self.watermark_with(max_event_time, run.others), output)?;
        run.mark(first_result, end, Phase::Fire, self.emitted(output));
        if let Some(sessions) = &mut self.sessions {
            // The batch's session emissions wait in the session state until here, in order.
            sessions.flush(&self.plan, output)?;
        }
        Ok((late, run.marks))
    }

    /// How many result batches the current call has emitted: those in `output`, and those
    /// the session state holds back until the end of the batch.
    fn emitted(&self, output: &OperatorOutput) -> usize {
        output.results.len()
            + self
                .sessions
                .as_ref()
                .map_or(0, SessionState::pending_emissions)
    }

    /// The watermark before position `position` of the batch.
    fn trace_watermark(&self, run: &BatchRun, trace: &Trace<'_>, position: usize) -> i64 {
        self.watermark_with(run.max_event_time(trace, position), run.others)
    }

    /// Fires what the watermark releases at the positions from `run.checked` up to `upto`,
    /// each firing at the first position where the watermark reaches the next trigger, as
    /// it would for an operator that sees every row there.
    fn step(
        &mut self,
        run: &mut BatchRun,
        trace: &Trace<'_>,
        upto: usize,
        prepared: &Prepared,
        segment: &mut Segment,
        output: &mut OperatorOutput,
    ) -> Result<(), EngineError> {
        while let Some(low) = self.crossing(run, trace, run.checked, upto) {
            self.flush(prepared, segment)?;
            let first_result = self.emitted(output);
            self.advance_to(self.trace_watermark(run, trace, low), output)?;
            run.mark(first_result, low, Phase::Fire, self.emitted(output));
            run.next_trigger = self.next_trigger();
            run.checked = low + 1;
        }
        Ok(())
    }

    /// The per-row loop for tumbling and hopping windows: rows go into per-window segments,
    /// added to the windows' state before anything reads it.
    fn window_rows(
        &mut self,
        prepared: &Prepared,
        trace: &Trace<'_>,
        run: &mut BatchRun,
        segment: &mut Segment,
        output: &mut OperatorOutput,
    ) -> Result<Vec<LateEvent>, EngineError> {
        let spec = self.plan.window;
        let size_ms = spec.size_ms();
        let per_event = spec.windows_per_event();
        let mut starts = WindowStarts::new(spec);
        let mut late: Vec<LateEvent> = Vec::new();
        // Rows before this position cannot fire anything: the watermark before them is
        // below the next trigger.
        let mut quiet_until = self.next_crossing(run, trace, run.checked);
        for (row, &timestamp) in prepared.times.iter().enumerate() {
            let position = trace.position(row);
            if position >= quiet_until {
                self.step(run, trace, position, prepared, segment, output)?;
                quiet_until = self.next_crossing(run, trace, position + 1);
            }
            let watermark = self.trace_watermark(run, trace, position);
            let latest = starts.latest(timestamp);
            for nth in 0..per_event {
                let start = starts.nth(latest, nth);
                let end = start.saturating_add(size_ms);
                if end.saturating_add(self.allowed_lateness_ms) <= watermark {
                    late.push(LateEvent {
                        row: position as u32,
                        window_start: start,
                        watermark,
                        reason: format!(
                            "too late for window [{}, {}): watermark {} had passed its end plus the allowed lateness of {} ms",
                            time::format_millis(start),
                            time::format_millis(end),
                            time::format_millis(watermark),
                            self.allowed_lateness_ms
                        ),
                    });
                } else if end <= watermark {
                    self.flush(prepared, segment)?;
                    let first_result = self.emitted(output);
                    self.apply_late_update(prepared, row, start, output)?;
                    run.mark(first_result, position, Phase::Row, self.emitted(output));
                } else {
                    segment.push(nth, start, row as u32);
                    if end < run.next_trigger {
                        run.next_trigger = end;
                        quiet_until = self.next_crossing(run, trace, position + 1);
                    }
                }
            }
            run.checked = position + 1;
        }
        Ok(late)
    }

    /// The first position in `from..=to` where the watermark reaches `run.next_trigger`.
    /// The watermark never goes back, so it is found by bisection.
    fn crossing(&self, run: &BatchRun, trace: &Trace<'_>, from: usize, to: usize) -> Option<usize> {
        if from > to || self.trace_watermark(run, trace, to) < run.next_trigger {
            return None;
        }
        let (mut low, mut high) = (from, to);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.trace_watermark(run, trace, middle) >= run.next_trigger {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Some(low)
    }

    /// The first position from `from` on, to the whole batch's end, where the watermark
    /// reaches `run.next_trigger`; `usize::MAX` if it does not in this batch.
    fn next_crossing(&self, run: &BatchRun, trace: &Trace<'_>, from: usize) -> usize {
        self.crossing(run, trace, from, trace.len())
            .unwrap_or(usize::MAX)
    }

    /// The per-row loop for session windows (see `session.rs`).
    fn session_rows(
        &mut self,
        prepared: &Prepared,
        trace: &Trace<'_>,
        run: &mut BatchRun,
        output: &mut OperatorOutput,
    ) -> Result<Vec<LateEvent>, EngineError> {
        let plan = Arc::clone(&self.plan);
        let lateness = self.allowed_lateness_ms;
        let n_rows = prepared.times.len();
        let key_ids = self
            .sessions
            .as_mut()
            .expect("called for session windows")
            .intern(&prepared.keys, n_rows)?;
        let mut late: Vec<LateEvent> = Vec::new();
        let mut no_segment = Segment::default();
        let mut quiet_until = self.next_crossing(run, trace, run.checked);
        for (row, &timestamp) in prepared.times.iter().enumerate() {
            let position = trace.position(row);
            if position >= quiet_until {
                self.step(run, trace, position, prepared, &mut no_segment, output)?;
                quiet_until = self.next_crossing(run, trace, position + 1);
            }
            let watermark = self.trace_watermark(run, trace, position);
            let key = key_ids[row];
            let sessions = self.sessions.as_mut().expect("called for session windows");
            match sessions.assign(&plan, key, timestamp, watermark, lateness)? {
                Assignment::Open => {
                    sessions.update(key, timestamp, &prepared.args, &prepared.filters, row)?
                }
                Assignment::LateUpdate { key, start } => {
                    sessions.update(key, timestamp, &prepared.args, &prepared.filters, row)?;
                    let first_result = output.results.len() + sessions.pending_emissions();
                    sessions.emit(&plan, &[(key, start)], output)?;
                    sessions.mark_fired(key, start, lateness);
                    let emitted = output.results.len() + sessions.pending_emissions();
                    run.mark(first_result, position, Phase::Row, emitted);
                }
                Assignment::Late(reason) => late.push(LateEvent {
                    row: position as u32,
                    window_start: timestamp,
                    watermark,
                    reason,
                }),
            }
            let next_trigger = sessions.next_trigger();
            if next_trigger != run.next_trigger {
                run.next_trigger = next_trigger;
                quiet_until = self.next_crossing(run, trace, position + 1);
            }
            run.checked = position + 1;
        }
        Ok(late)
    }

    /// Moves the arrival clock to `arrival_ms` without data, so that idle partitions stop
    /// holding the watermark back; fires what that releases.
    ///
    /// # Errors
    ///
    /// Use after [`finish`](Self::finish); failures inside DataFusion.
    pub fn tick(&mut self, arrival_ms: i64) -> Result<OperatorOutput, EngineError> {
        if self.finished {
            return Err(EngineError::Misuse("tick after finish".to_string()));
        }
        self.observe_arrival(arrival_ms);
        let mut output = OperatorOutput::default();
        if let Some(watermark) = self.all_partitions_watermark() {
            self.advance_to(watermark, &mut output)?;
        }
        Ok(output)
    }

    /// Tells the operator that input `partition` has reached event time `event_time_ms` at
    /// arrival time `arrival_ms`, with events that went elsewhere (to the other window tasks
    /// of a repartitioned job): that input's watermark moves as if they had come here, and
    /// what that releases fires. An event time below what the input reached changes nothing.
    ///
    /// # Errors
    ///
    /// An unknown partition, use after [`finish`](Self::finish), failures inside DataFusion.
    pub fn advance_partition(
        &mut self,
        partition: u32,
        event_time_ms: i64,
        arrival_ms: i64,
    ) -> Result<OperatorOutput, EngineError> {
        let clock = self.input_clock(partition, "advance")?;
        clock.max_event_time = Some(
            clock
                .max_event_time
                .map_or(event_time_ms, |max| max.max(event_time_ms)),
        );
        clock.last_arrival = Some(arrival_ms);
        clock.at_end = None;
        self.observe_arrival(arrival_ms);
        let mut output = OperatorOutput::default();
        if let Some(watermark) = self.all_partitions_watermark() {
            self.advance_to(watermark, &mut output)?;
        }
        Ok(output)
    }

    /// Tells the operator that input `partition` holds nothing more that arrived up to
    /// `as_of_ms` (its source has reached its end, and was asked no earlier than that;
    /// `i64::MAX` for a source that will never have more): from here it may turn idle,
    /// `idle_timeout` of arrival time after its last batch, while the arrival clock has not
    /// passed `as_of_ms` and until it sends again. A later word replaces an earlier one. Fires
    /// what that releases.
    ///
    /// # Errors
    ///
    /// An unknown partition, use after [`finish`](Self::finish), failures inside DataFusion.
    pub fn input_at_end(
        &mut self,
        partition: u32,
        as_of_ms: i64,
    ) -> Result<OperatorOutput, EngineError> {
        self.input_clock(partition, "input_at_end")?.at_end = Some(as_of_ms);
        let mut output = OperatorOutput::default();
        if let Some(watermark) = self.all_partitions_watermark() {
            self.advance_to(watermark, &mut output)?;
        }
        Ok(output)
    }

    /// The clock of input `partition`, for `call`: an error after
    /// [`finish`](Self::finish) or for a partition the operator does not have.
    fn input_clock(
        &mut self,
        partition: u32,
        call: &str,
    ) -> Result<&mut PartitionClock, EngineError> {
        if self.finished {
            return Err(EngineError::Misuse(format!("{call} after finish")));
        }
        let partitions = self.partitions.len();
        self.partitions.get_mut(partition as usize).ok_or_else(|| {
            EngineError::Misuse(format!(
                "partition {partition} is outside the operator's {partitions} partitions"
            ))
        })
    }

    /// Ends a bounded input: the watermark goes to the end of time, every window fires and
    /// all state is dropped.
    ///
    /// # Errors
    ///
    /// Failures inside DataFusion.
    pub fn finish(&mut self) -> Result<OperatorOutput, EngineError> {
        let mut output = OperatorOutput::default();
        if !self.finished {
            self.advance_to(i64::MAX, &mut output)?;
            self.finished = true;
        }
        Ok(output)
    }

    fn observe_arrival(&mut self, arrival_ms: i64) {
        self.started_at.get_or_insert(arrival_ms);
        self.clock = Some(self.clock.map_or(arrival_ms, |clock| clock.max(arrival_ms)));
    }

    fn is_idle(&self, partition: &PartitionClock) -> bool {
        let (Some(timeout), Some(clock), Some(as_of)) =
            (self.options.idle_timeout, self.clock, partition.at_end)
        else {
            return false;
        };
        if as_of < clock {
            // Events have arrived elsewhere since the input last vouched for itself.
            return false;
        }
        let since = partition.last_arrival.or(self.started_at).unwrap_or(clock);
        clock.saturating_sub(since) >= duration_ms(timeout)
    }

    fn partition_watermark(&self, partition: &PartitionClock) -> i64 {
        partition.max_event_time.map_or(i64::MIN, |max| {
            max.saturating_sub(self.max_out_of_orderness_ms)
        })
    }

    /// The minimum watermark of the partitions other than `partition` that are not idle.
    fn others_watermark(&self, partition: u32) -> Option<i64> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(idx, clock)| *idx != partition as usize && !self.is_idle(clock))
            .map(|(_, clock)| self.partition_watermark(clock))
            .min()
    }

    /// The minimum watermark over partitions that are not idle. When every one is idle, the
    /// largest of theirs, as Flink's watermark valve does when all its channels turn idle:
    /// each has said it holds nothing more. (With a nonzero idle timeout that takes a
    /// [`tick`](Self::tick): the partition whose batch moved the arrival clock last is not idle
    /// before the clock has moved on by the timeout.) `None` for an operator without
    /// partitions.
    fn all_partitions_watermark(&self) -> Option<i64> {
        let watermarks = || {
            self.partitions
                .iter()
                .map(|clock| (self.is_idle(clock), self.partition_watermark(clock)))
        };
        watermarks()
            .filter(|(idle, _)| !idle)
            .map(|(_, watermark)| watermark)
            .min()
            .or_else(|| watermarks().map(|(_, watermark)| watermark).max())
            .map(|watermark| watermark.max(self.watermark))
    }

    fn watermark_with(&self, max_event_time: Option<i64>, others: Option<i64>) -> i64 {
        let own = max_event_time.map_or(i64::MIN, |max| {
            max.saturating_sub(self.max_out_of_orderness_ms)
        });
        let candidate = others.map_or(own, |others| own.min(others));
        self.watermark.max(candidate)
    }

    fn early_interval_ms(&self) -> Option<i64> {
        self.options
            .early_emit_interval
            .map(duration_ms)
            .filter(|ms| *ms > 0)
    }

    /// The lowest watermark at which something happens: a firing, an expiry, an early emission.
    fn next_trigger(&self) -> i64 {
        if let Some(sessions) = &self.sessions {
            return sessions.next_trigger();
        }
        let mut next = i64::MAX;
        for window in self.windows.values() {
            if window.fired {
                next = next.min(window.end.saturating_add(self.allowed_lateness_ms));
            } else {
                next = next.min(window.end);
            }
        }
        if self.early_interval_ms().is_some() {
            // Every boundary is seen where the watermark crosses it, open windows or not, so
            // that the next one is counted from there: the first real watermark sets the
            // first, whatever the batching.
            next = next.min(self.next_early.unwrap_or(i64::MIN + 1));
        }
        next
    }

    fn window_mut(&mut self, start: i64) -> Result<&mut Window, EngineError> {
        if !self.windows.contains_key(&start) {
            let end = start.saturating_add(self.plan.window.size_ms());
            let table = GroupTable::new(&self.plan)?;
            self.windows.insert(
                start,
                Window {
                    end,
                    table,
                    fired: false,
                },
            );
        }
        Ok(self.windows.get_mut(&start).expect("inserted above"))
    }

    /// Adds the pending rows of each window to its state.
    fn flush(&mut self, prepared: &Prepared, segment: &mut Segment) -> Result<(), EngineError> {
        for (start, rows) in segment.take() {
            self.update_window(prepared, start, &rows)?;
        }
        Ok(())
    }

    fn update_window(
        &mut self,
        prepared: &Prepared,
        start: i64,
        rows: &[u32],
    ) -> Result<Vec<usize>, EngineError> {
        let Prepared {
            keys,
            args,
            filters,
            ..
        } = prepared.columns_at(rows)?;
        let window = self.window_mut(start)?;
        Ok(window
            .table
            .update(rows.len(), &keys, &args, &filters)?
            .to_vec())
    }

    /// Adds one late row to a fired window and emits its group again.
    fn apply_late_update(
        &mut self,
        prepared: &Prepared,
        row: usize,
        start: i64,
        output: &mut OperatorOutput,
    ) -> Result<(), EngineError> {
        let groups = self.update_window(prepared, start, &[row as u32])?;
        let window = self.windows.get_mut(&start).expect("updated above");
        window.fired = true;
        if let Some(group) = groups.first().copied()
            && let Some(batch) = self.emit(start, Selection::Group(group), true, true)?
        {
            output.results.push(batch);
        }
        Ok(())
    }

    /// Raises the watermark to `watermark`: fires, expires and emits early what it releases.
    fn advance_to(
        &mut self,
        watermark: i64,
        output: &mut OperatorOutput,
    ) -> Result<(), EngineError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        if let Some(sessions) = &mut self.sessions {
            return sessions.advance(&self.plan, watermark, self.allowed_lateness_ms, output);
        }
        let due: Vec<i64> = self
            .windows
            .iter()
            .filter(|(_, window)| !window.fired && window.end <= watermark)
            .map(|(start, _)| *start)
            .collect();
        let keep = self.allowed_lateness_ms > 0;
        for start in due {
            if let Some(batch) = self.emit(start, Selection::All, true, keep)? {
                output.results.push(batch);
            }
            if keep {
                let window = self.windows.get_mut(&start).expect("due window exists");
                window.fired = true;
            } else {
                self.windows.remove(&start);
            }
        }
        let lateness = self.allowed_lateness_ms;
        self.windows.retain(|_, window| {
            !(window.fired && window.end.saturating_add(lateness) <= watermark)
        });
        if let Some(interval) = self
            .options
            .early_emit_interval
            .map(duration_ms)
            .filter(|ms| *ms > 0)
        {
            let crossed = self.next_early.is_some_and(|early| watermark >= early);
            if crossed {
                let open: Vec<i64> = self
                    .windows
                    .iter()
                    .filter(|(_, window)| {
                        !window.fired && window.table.dirty.iter().any(|dirty| *dirty)
                    })
                    .map(|(start, _)| *start)
                    .collect();
                for start in open {
                    if let Some(batch) = self.emit(start, Selection::Dirty, false, true)? {
                        output.results.push(batch);
                    }
                }
            }
            if watermark < i64::MAX {
                self.next_early = Some(floor_to(watermark, interval).saturating_add(interval));
            }
        }
        Ok(())
    }

    /// Emits groups of the window at `start` with their next version.
    fn emit(
        &mut self,
        start: i64,
        selection: Selection,
        is_final: bool,
        keep: bool,
    ) -> Result<Option<RecordBatch>, EngineError> {
        let plan = Arc::clone(&self.plan);
        let Some(window) = self.windows.get_mut(&start) else {
            return Ok(None);
        };
        let n_groups = window.table.len();
        let selected: Vec<u32> = match selection {
            Selection::All => (0..n_groups as u32).collect(),
            Selection::Dirty => (0..n_groups)
                .filter(|group| window.table.dirty[*group])
                .map(|group| group as u32)
                .collect(),
            Selection::Group(group) => vec![group as u32],
        };
        if selected.is_empty() {
            return Ok(None);
        }
        let mut versions = Vec::with_capacity(selected.len());
        for group in &selected {
            let group = *group as usize;
            window.table.versions[group] += 1;
            window.table.dirty[group] = false;
            versions.push(window.table.versions[group]);
        }
        let end = window.end;
        let evaluated = window.table.evaluate(&plan, keep)?;
        let all_selected = selected.len() == n_groups;
        let keys = if all_selected {
            evaluated.keys
        } else {
            select_all(&evaluated.keys, &selected)?
        };
        let aggregates = if all_selected {
            evaluated.aggregates
        } else {
            select_all(&evaluated.aggregates, &selected)?
        };
        let n_rows = selected.len();
        let batch = build_results(
            &plan,
            &keys,
            &vec![start; n_rows],
            &vec![end; n_rows],
            aggregates,
            versions,
            is_final,
        )?;
        Ok(Some(batch))
    }
}

/// Adds a batch's late events (rows of `prepared`) and failed events (`output.errors`, rows
/// of `input`), if any, to `output.late_events` as one batch of `schema`, and counts the late
/// ones.
pub(crate) fn add_late_events(
    (schema, late_count): (&SchemaRef, &mut u64),
    partition: u32,
    (input, prepared): (&RecordBatch, &Prepared),
    late: &[LateEvent],
    output: &mut OperatorOutput,
) -> Result<(), EngineError> {
    if late.is_empty() && output.errors.is_empty() {
        return Ok(());
    }
    *late_count += late.len() as u64;
    let batch = late_batch(schema, partition, input, prepared, late, &output.errors)?;
    output.late_events.push(batch);
    Ok(())
}

/// The late events of a batch (rows of `prepared`) and its failed events (rows of
/// `input`), merged in input order: the late-events output of one call.
fn late_batch(
    schema: &SchemaRef,
    partition: u32,
    input: &RecordBatch,
    prepared: &Prepared,
    late: &[LateEvent],
    errors: &[EventError],
) -> Result<RecordBatch, EngineError> {
    let mut rows: Vec<LateRow<'_>> = late
        .iter()
        .map(|event| LateRow {
            input_row: prepared.input_rows[event.row as usize],
            source: (1, event.row as usize),
            window_start: Some(event.window_start),
            watermark: Some(event.watermark),
            reason: &event.reason,
        })
        .collect();
    rows.extend(errors.iter().map(|error| LateRow {
        input_row: error.row as u32,
        source: (0, error.row),
        window_start: None,
        watermark: None,
        reason: &error.reason,
    }));
    rows.sort_by_key(|row| row.input_row);
    let indices: Vec<(usize, usize)> = rows.iter().map(|row| row.source).collect();
    let mut columns = (0..input.num_columns())
        .map(|column| {
            interleave(
                &[
                    input.column(column).as_ref(),
                    prepared.batch.column(column).as_ref(),
                ],
                &indices,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    columns.push(Arc::new(UInt32Array::from(vec![partition; rows.len()])));
    columns.push(Arc::new(TimestampMillisecondArray::from(
        rows.iter().map(|row| row.window_start).collect::<Vec<_>>(),
    )));
    columns.push(Arc::new(TimestampMillisecondArray::from(
        rows.iter().map(|row| row.watermark).collect::<Vec<_>>(),
    )));
    let mut reasons = StringBuilder::new();
    for row in &rows {
        reasons.append_value(row.reason);
    }
    columns.push(Arc::new(reasons.finish()));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// Builds result rows: the Aggregate node's columns (group slots, then aggregates), the
/// user's projection over them, then `_key`, `_window_start`, `_version`, `_final`.
pub(crate) fn build_results(
    plan: &JobPlan,
    keys: &[ArrayRef],
    starts: &[i64],
    ends: &[i64],
    aggregates: Vec<ArrayRef>,
    versions: Vec<u32>,
    is_final: bool,
) -> Result<RecordBatch, EngineError> {
    let n_rows = starts.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(plan.aggregate_schema.fields().len());
    for slot in &plan.group_slots {
        columns.push(match slot {
            GroupSlot::Key(idx) => Arc::clone(&keys[*idx]),
            GroupSlot::WindowStart => Arc::new(TimestampMillisecondArray::from(starts.to_vec())),
            GroupSlot::WindowEnd => Arc::new(TimestampMillisecondArray::from(ends.to_vec())),
        });
    }
    columns.extend(aggregates);
    let aggregate_batch = RecordBatch::try_new(Arc::clone(&plan.aggregate_schema), columns)?;
    let mut result_columns = plan
        .projection
        .iter()
        .map(|expr| expr.evaluate(&aggregate_batch)?.into_array(n_rows))
        .collect::<Result<Vec<_>, _>>()?;
    result_columns.push(Arc::new(render_keys(keys, n_rows)?));
    result_columns.push(Arc::new(TimestampMillisecondArray::from(starts.to_vec())));
    result_columns.push(Arc::new(UInt32Array::from(versions)));
    result_columns.push(Arc::new(BooleanArray::from(vec![is_final; n_rows])));
    Ok(RecordBatch::try_new(
        Arc::clone(&plan.result_schema),
        result_columns,
    )?)
}

/// Checks that `batch` has the columns of `plan`'s stream, by name and type, in order.
pub(crate) fn check_schema(plan: &JobPlan, batch: &RecordBatch) -> Result<(), EngineError> {
    let expected = plan.stream_schema.fields();
    let actual = batch.schema();
    let matches = actual.fields().len() == expected.len()
        && actual
            .fields()
            .iter()
            .zip(expected.iter())
            .all(|(a, e)| a.name() == e.name() && a.data_type() == e.data_type());
    if matches {
        return Ok(());
    }
    Err(EngineError::Schema(format!(
        "expected columns [{}], got [{}]",
        describe_fields(&plan.stream_schema),
        describe_fields(&actual)
    )))
}

fn describe_fields(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|field| format!("{}: {}", field.name(), field.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Drops rows without a usable event time and rows WHERE rejects, and evaluates the key,
/// argument and FILTER expressions once for the whole batch.
///
/// An event whose expressions fail (division by zero, a failed cast, an overflow) is
/// reported in `errors` with the reason and left out; the others go on. Errors come out
/// in input-row order.
pub(crate) fn prepare_events(
    plan: &JobPlan,
    partition: u32,
    input: &RecordBatch,
    errors: &mut Vec<EventError>,
) -> Result<Prepared, EngineError> {
    let times = event_times_ms(input.column(plan.event_time_index));
    let mut rows = Rows::all(input);
    if times
        .iter()
        .any(|time| time.is_none_or(|time| !EVENT_TIME_RANGE_MS.contains(&time)))
    {
        let mut keep = Vec::with_capacity(times.len());
        for (row, time) in times.iter().enumerate() {
            let reason = match time {
                None => Some(format!("event time `{}` is null", plan.event_time)),
                Some(time) if !EVENT_TIME_RANGE_MS.contains(time) => Some(format!(
                    "event time `{}` of {time} ms is outside the supported range (years 0000 to 9999)",
                    plan.event_time
                )),
                Some(_) => None,
            };
            keep.push(reason.is_none());
            if let Some(reason) = reason {
                errors.push(EventError {
                    partition,
                    row,
                    reason,
                });
            }
        }
        rows.retain(&BooleanArray::from(keep))?;
    }
    if let Some(filter) = &plan.filter {
        let mask = rows.evaluate(partition, errors, |batch| {
            Ok(filter.evaluate(batch)?.into_array(batch.num_rows())?)
        })?;
        // NULL counts as false, as in SQL.
        let keep: BooleanArray = mask
            .as_boolean()
            .iter()
            .map(|value| Some(value == Some(true)))
            .collect();
        rows.retain(&keep)?;
    }
    let (keys, args, filters) = rows.evaluate(partition, errors, |batch| {
        let n_rows = batch.num_rows();
        let keys = plan
            .keys
            .iter()
            .map(|key| key.evaluate(batch)?.into_array(n_rows))
            .collect::<Result<Vec<_>, _>>()?;
        let mut args = Vec::with_capacity(plan.aggregates.len());
        let mut filters = Vec::with_capacity(plan.aggregates.len());
        for aggregate in &plan.aggregates {
            args.push(
                aggregate
                    .args
                    .iter()
                    .map(|arg| arg.evaluate(batch)?.into_array(n_rows))
                    .collect::<Result<Vec<_>, _>>()?,
            );
            filters.push(match &aggregate.filter {
                Some(filter) => Some(
                    filter
                        .evaluate(batch)?
                        .into_array(n_rows)?
                        .as_boolean()
                        .clone(),
                ),
                None => None,
            });
        }
        Ok((keys, args, filters))
    })?;
    errors.sort_by_key(|error| error.row);
    let times = rows
        .input_rows
        .iter()
        .map(|&row| times[row as usize].expect("rows without an event time were dropped"))
        .collect();
    Ok(Prepared {
        batch: rows.batch,
        input_rows: rows.input_rows,
        times,
        keys,
        args,
        filters,
    })
}

/// A selection of an input batch's rows, as it narrows while a batch is prepared.
struct Rows {
    batch: RecordBatch,
    /// Each row's index in the input batch.
    input_rows: Vec<u32>,
}

impl Rows {
    fn all(input: &RecordBatch) -> Rows {
        Rows {
            batch: input.clone(),
            input_rows: (0..input.num_rows() as u32).collect(),
        }
    }

    /// Keeps the rows where `keep` is true.
    fn retain(&mut self, keep: &BooleanArray) -> Result<(), EngineError> {
        if keep.true_count() == keep.len() {
            return Ok(());
        }
        self.batch = filter_record_batch(&self.batch, keep)?;
        self.input_rows = self
            .input_rows
            .iter()
            .zip(keep.values().iter())
            .filter_map(|(row, keep)| keep.then_some(*row))
            .collect();
        Ok(())
    }

    /// Runs `evaluate` over the rows. When it fails, each row is evaluated alone: the rows
    /// that fail are reported in `errors` and left out, and the rest evaluated again. A
    /// failure that no single row reproduces is not about an event, and is returned.
    fn evaluate<T>(
        &mut self,
        partition: u32,
        errors: &mut Vec<EventError>,
        evaluate: impl Fn(&RecordBatch) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let batch_error = match evaluate(&self.batch) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let n_rows = self.batch.num_rows();
        let mut keep = Vec::with_capacity(n_rows);
        for row in 0..n_rows {
            match evaluate(&self.batch.slice(row, 1)) {
                Ok(_) => keep.push(true),
                Err(error) => {
                    keep.push(false);
                    errors.push(EventError {
                        partition,
                        row: self.input_rows[row] as usize,
                        reason: format!("evaluating the job's expressions failed: {error}"),
                    });
                }
            }
        }
        if keep.iter().all(|keep| *keep) {
            return Err(batch_error);
        }
        self.retain(&BooleanArray::from(keep))?;
        evaluate(&self.batch)
    }
}

/// Returns the rows of `array` at `rows`: a zero-copy slice when they are contiguous.
fn select(array: &ArrayRef, rows: &[u32]) -> Result<ArrayRef, EngineError> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(array.slice(0, 0));
    };
    if (*last - *first) as usize + 1 == rows.len() {
        return Ok(array.slice(*first as usize, rows.len()));
    }
    Ok(take(
        array.as_ref(),
        &UInt32Array::from(rows.to_vec()),
        None,
    )?)
}

fn select_all(arrays: &[ArrayRef], rows: &[u32]) -> Result<Vec<ArrayRef>, EngineError> {
    arrays.iter().map(|array| select(array, rows)).collect()
}

/// Renders group keys as a JSON array per row: `["/home",42]`; the upsert key of a result.
pub(crate) fn render_keys(
    keys: &[ArrayRef],
    n_rows: usize,
) -> Result<arrow::array::StringArray, EngineError> {
    let options = FormatOptions::default();
    let formatters = keys
        .iter()
        .map(|key| ArrayFormatter::try_new(key.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let quoted: Vec<bool> = keys
        .iter()
        .map(|key| !(key.data_type().is_numeric() || key.data_type() == &DataType::Boolean))
        .collect();
    let mut builder = StringBuilder::with_capacity(n_rows, n_rows * 16);
    let mut text = String::new();
    // A quoted value as formatted, before escaping.
    let mut value = String::new();
    for row in 0..n_rows {
        text.clear();
        text.push('[');
        for (idx, (key, formatter)) in keys.iter().zip(&formatters).enumerate() {
            if idx > 0 {
                text.push(',');
            }
            if key.is_null(row) {
                text.push_str("null");
            } else if quoted[idx] {
                value.clear();
                formatter.value(row).write(&mut value)?;
                text.push('"');
                let plain = value
                    .bytes()
                    .all(|byte| (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\');
                if plain {
                    text.push_str(&value);
                } else {
                    for ch in value.chars() {
                        match ch {
                            '"' => text.push_str("\\\""),
                            '\\' => text.push_str("\\\\"),
                            ch if ch.is_control() => {
                                text.push_str(&format!("\\u{:04x}", ch as u32));
                            }
                            ch => text.push(ch),
                        }
                    }
                }
                text.push('"');
            } else {
                formatter.value(row).write(&mut text)?;
            }
        }
        text.push(']');
        builder.append_value(&text);
    }
    Ok(builder.finish())
}

#[cfg(test)]
mod tests {
    use arrow::array::{BooleanArray, Int64Array, StringArray};

    use super::*;

    #[test]
    fn keys_render_as_json_arrays_with_strings_escaped() {
        let keys: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![
                Some("plain"),
                Some("a \"quote\" and a \\ backslash"),
                Some("tab\tand \u{1}, é, \u{85}"),
                None,
            ])),
            Arc::new(Int64Array::from(vec![Some(1), Some(-2), None, Some(30)])),
            Arc::new(BooleanArray::from(vec![true, false, true, false])),
        ];
        let rendered = render_keys(&keys, 4).expect("render");
        let rendered: Vec<&str> = rendered.iter().map(|key| key.expect("a key")).collect();
        assert_eq!(
            rendered,
            [
                r#"["plain",1,true]"#,
                r#"["a \"quote\" and a \\ backslash",-2,false]"#,
                r#"["tab\u0009and \u0001, é, \u0085",null,true]"#,
                r#"[null,30,false]"#,
            ]
        );
    }
}
