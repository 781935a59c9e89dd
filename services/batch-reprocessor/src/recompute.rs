//! Recompute (the Lambda batch layer): a job's DataFusion batch plan over the Parquet
//! history, into a batch view.
//!
//! The history's manifest says which files can hold events of `[from, horizon)` (by their
//! event-time bounds); each file's row groups are pruned by their event-time statistics and
//! its rows filtered to the range. The files are split among `workers` partitions of a
//! DataFusion table, so DataFusion aggregates each worker's files in parallel and merges the
//! partial aggregates; results are ordered by window and key, so the view is the same for
//! any number of workers.
//!
//! The view keeps the windows that lie wholly in the range: starting at or after `from`
//! (sessions: at or after `from + gap`, since an event before `from` could have opened them
//! earlier) and ending at or before the horizon (sessions: before it, since an event at
//! exactly a session's end would join it), so every window it holds counted every archived
//! event that belongs to it.
//!
//! A join of two windowed aggregates recomputes both sides over the same chunks (the right
//! side's history read as a second table, its rows not counted as the job's events) and
//! joins them per chunk; its horizon is the earlier of the two histories'.
//!
//! Two guards keep one bad event from costing the platform its memory or its results. The
//! range runs from the history's actual earliest event time (or `from`) to the horizon, and
//! its chunks are counted, in checked arithmetic, before any is planned: beyond
//! `batch-reprocessor.max-recompute-chunks` the recompute is refused, naming the event times
//! (file, partition, offset) that widened it. And a new generation that holds fewer windows
//! or events than the one it replaces is not written unless the request allows it.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::compute::kernels::cmp;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use bytes::Bytes;
use datafusion::catalog::{Session, TableProvider};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use runnel_archive::FileEntry;
use runnel_archive::parquet_file::{HistoryRead, open_history_file, with_string_views};
use runnel_config::Config;
use runnel_engine::WindowSpec;
use runnel_jobs::Job;
use runnel_time::{format_millis, now_millis};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use runnel_jobs::view::{
    VIEW_FORMAT, VIEWS_PREFIX, ViewFile, ViewManifest, generation_dir, load_view, save_view,
    view_dir,
};

use crate::{BatchError, get_json, put_json};

/// Rows per batch read from a history file.
const READ_BATCH_ROWS: usize = 32_768;

/// What to recompute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecomputeRequest {
    /// Windows starting before this (epoch ms) are left out; `None`: from the first event.
    pub from_ms: Option<i64>,
    /// Events from this on (epoch ms) are not read; `None`: up to the horizon.
    pub to_ms: Option<i64>,
    /// How many partitions the history's files are split into (at least 1).
    pub workers: usize,
    /// Whether the new view may hold fewer windows or events than the one it replaces;
    /// otherwise such a recompute fails with [`BatchError::WouldShrink`] and the previous
    /// view stays.
    pub allow_shrink: bool,
}

/// Counters of a recompute's progress, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    /// History files to read.
    pub files_total: AtomicU64,
    /// History files opened so far.
    pub files_done: AtomicU64,
    /// Events in the files to read (by the manifest).
    pub events_total: AtomicU64,
    /// Events read so far (before the range filter).
    pub events_done: AtomicU64,
}

/// The event time up to which the history is complete for `job`: the least, over the
/// partitions that have files, of the largest archived event time less the job's
/// out-of-orderness, less its allowed lateness. `None` without any file.
fn history_horizon(job: &Job, files: &[FileEntry]) -> Option<i64> {
    let mut largest: std::collections::BTreeMap<u32, i64> = std::collections::BTreeMap::new();
    for file in files {
        if let Some(max) = file.max_event_time {
            let slot = largest.entry(file.partition).or_insert(max);
            *slot = (*slot).max(max);
        }
    }
    let lag = i64::try_from(
        (job.options.max_out_of_orderness + job.options.allowed_lateness).as_millis(),
    )
    .unwrap_or(i64::MAX);
    largest.values().min().map(|max| max.saturating_sub(lag))
}

/// Whether a history file's event-time bounds overlap `range` (a file without event times
/// holds no window's events).
fn holds_events_in(file: &FileEntry, range: &Range<i64>) -> bool {
    match (file.min_event_time, file.max_event_time) {
        (Some(min), Some(max)) => min < range.end && max >= range.start,
        _ => false,
    }
}

/// Splits `files` into `workers` groups of about equal rows (largest first onto the
/// lightest group); the split only balances work, the view does not depend on it.
fn split(mut files: Vec<FileEntry>, workers: usize) -> Vec<Vec<FileEntry>> {
    files.sort_by(|a, b| {
        b.rows
            .cmp(&a.rows)
            .then(a.partition.cmp(&b.partition))
            .then(a.first_offset.cmp(&b.first_offset))
    });
    let mut groups: Vec<(u64, Vec<FileEntry>)> = vec![(0, Vec::new()); workers.max(1)];
    for file in files {
        if let Some(lightest) = groups.iter_mut().min_by_key(|(rows, _)| *rows) {
            lightest.0 += file.rows;
            lightest.1.push(file);
        }
    }
    groups.into_iter().map(|(_, files)| files).collect()
}

/// Event time each chunk of a recompute covers, at least (rounded up to whole windows).
const CHUNK_MS: i64 = 3_600_000;

/// A recompute under way: `views/<job>/<version>/_run.json`, replaced after each chunk, so
/// that an interrupted recompute of the same request resumes after its last finished chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RunState {
    /// The job's SQL: a run of other SQL is not resumed.
    sql: String,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    /// Fixed when the run started, so that its chunks agree.
    horizon_ms: Option<i64>,
    generation: u64,
    history_files: u64,
    /// Finished chunks, in order: their files and event counts.
    chunks: Vec<(Vec<ViewFile>, u64)>,
}

fn run_state_path(job: &Job) -> Path {
    view_dir(VIEWS_PREFIX, &job.job_name, job.version).join("_run.json")
}

async fn load_run_state(
    store: &dyn ObjectStore,
    job: &Job,
) -> Result<Option<RunState>, BatchError> {
    match get_json(store, &run_state_path(job)).await {
        // A run state that does not parse only costs the work it recorded.
        Err(BatchError::ViewInvalid { path, message }) => {
            warn!(%path, %message, "ignoring an unreadable recompute run state");
            Ok(None)
        }
        read => read,
    }
}

async fn save_run_state(
    store: &dyn ObjectStore,
    job: &Job,
    state: &RunState,
) -> Result<(), BatchError> {
    put_json(store, &run_state_path(job), state).await
}

/// One chunk: windows starting in `starts` (ending by the horizon), from events in `events`
/// (`starts` widened by what its last windows reach past it); `own` is the part of the event
/// time it counts events for, so that each event is counted once over the chunks.
#[derive(Debug, Clone)]
struct Chunk {
    starts: Range<i64>,
    events: Range<i64>,
    own: Range<i64>,
}

/// Why a recompute's range cannot be cut into chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PlanError {
    /// Counting the chunks gave more than the configured maximum.
    TooMany {
        /// Chunks the range needs.
        chunks: u128,
        /// Event time per chunk.
        length_ms: i64,
    },
    /// The first window start lies below `i64::MIN`: no window of the earliest event time
    /// can be represented.
    Unrepresentable {
        /// The earliest event time whose window can be represented.
        lowest_event: i64,
    },
    /// The window's size is not positive.
    BadWindow(String),
}

/// Cuts `[from, horizon)` into chunks of whole windows, starting at the window of
/// `max(from, first_event)`. Sessions are one chunk: a session can span any cut.
///
/// The chunks are counted (in `i128`, so no time arithmetic can overflow) before any is
/// allocated, and more than `max_chunks` are refused.
fn plan_chunks(
    window: WindowSpec,
    from: i64,
    first_event: i64,
    horizon: i64,
    max_chunks: u64,
) -> Result<Vec<Chunk>, PlanError> {
    let (size, reach) = match window {
        WindowSpec::Tumble { size_ms } => (size_ms, 0),
        WindowSpec::Hop { slide_ms, size_ms } => (size_ms, size_ms.saturating_sub(slide_ms)),
        WindowSpec::Session { .. } => {
            return Ok(vec![Chunk {
                starts: from..horizon,
                events: from..horizon,
                own: from..horizon,
            }]);
        }
    };
    if size <= 0 || reach < 0 {
        return Err(PlanError::BadWindow(format!(
            "the window's size ({size} ms) must be positive and at least its slide"
        )));
    }
    // Whole windows of about `CHUNK_MS`: at most `CHUNK_MS + size`, so it fits.
    let length = size.saturating_mul((CHUNK_MS - 1) / size + 1);
    let begin = from.max(first_event);
    let first_start = i128::from(begin) - i128::from(begin.rem_euclid(size));
    let horizon_wide = i128::from(horizon);
    let count = if first_start >= horizon_wide {
        0
    } else {
        (horizon_wide - first_start + i128::from(length) - 1) / i128::from(length)
    };
    if count > i128::from(max_chunks) {
        return Err(PlanError::TooMany {
            chunks: count.unsigned_abs(),
            length_ms: length,
        });
    }
    let Ok(mut start) = i64::try_from(first_start) else {
        // The first window start at or above `i64::MIN`, as an event time.
        let above_min = (-(i64::MIN.rem_euclid(size))).rem_euclid(size);
        let lowest_event = i64::MIN.saturating_add(above_min);
        return Err(PlanError::Unrepresentable { lowest_event });
    };
    let mut chunks = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while start < horizon {
        let end = start.saturating_add(length);
        // The first chunk holds every window the range keeps that starts before it too (a
        // hop window starting before the first event still holds it), and reads from `from`.
        let first = chunks.is_empty();
        let lowest = if first { from } else { start };
        chunks.push(Chunk {
            starts: if first { i64::MIN } else { start }..end,
            events: lowest..end.saturating_add(reach).min(horizon),
            own: lowest..end.min(horizon),
        });
        start = end;
    }
    debug_assert!(chunks.len() as u128 <= u128::from(max_chunks));
    Ok(chunks)
}

/// The chunks whose events `file` can hold: `chunks[first..last]` (the chunks' event ranges
/// grow on both ends, so they are contiguous).
fn chunk_span(chunks: &[Chunk], file: &FileEntry) -> Range<usize> {
    let (Some(min), Some(max)) = (file.min_event_time, file.max_event_time) else {
        return 0..0;
    };
    let first = chunks.partition_point(|chunk| chunk.events.end <= min);
    let last = chunks.partition_point(|chunk| chunk.events.start <= max);
    first..last.max(first)
}

/// Epoch milliseconds as RFC 3339, and as the number when far from today (years before 1
/// or after 9999 do not read well).
fn time_text(millis: i128) -> String {
    const YEAR_1: i128 = -62_135_596_800_000;
    const YEAR_10000: i128 = 253_402_300_800_000;
    match i64::try_from(millis) {
        Ok(millis) if (YEAR_1..YEAR_10000).contains(&i128::from(millis)) => format_millis(millis),
        _ => format!("{millis} ms"),
    }
}

/// A view's range as text: `[from, horizon)`.
pub(crate) fn range_text(from_ms: Option<i64>, horizon_ms: Option<i64>) -> String {
    format!(
        "[{}, {})",
        from_ms.map_or_else(
            || "the first event".to_string(),
            |from| time_text(from.into())
        ),
        horizon_ms.map_or_else(
            || "nothing archived".to_string(),
            |end| time_text(end.into())
        )
    )
}

/// Whether a view of `windows` windows from `events` events would shrink one of
/// `previous_windows` from `previous_events`: fewer events, or fewer windows. Sessions may
/// merge as events are added, so for them fewer windows count only when the events did not
/// grow.
fn shrinks(
    (windows, events): (u64, u64),
    (previous_windows, previous_events): (u64, u64),
    sessions: bool,
) -> bool {
    events < previous_events
        || (windows < previous_windows && (!sessions || events <= previous_events))
}

/// What a recompute did.
#[derive(Debug, Clone)]
pub struct RecomputeOutcome {
    /// The new view.
    pub view: ViewManifest,
    /// Chunks the range was cut into.
    pub chunks: usize,
    /// Of those, chunks an interrupted run had finished, which this one took over.
    pub resumed_chunks: usize,
}

/// Recomputes `job` over the history into its batch view (replacing the previous one) and
/// returns the new view's manifest.
///
/// The range runs from `from` (or the history's earliest event time) to the horizon; it is
/// cut into chunks of about an hour of windows (one for sessions), each written as its own
/// file of the new generation; after each, the run's state is saved, and a later recompute
/// of the same request resumes after the last finished chunk. The chunks are counted before
/// any is planned, and a range that needs more than `batch-reprocessor.max-recompute-chunks`
/// is refused before anything is read or written.
///
/// A join of two windowed aggregates is recomputed whole, each chunk's windows from both
/// streams' histories; its horizon is the earlier of the two, and none (nothing to
/// recompute) while either stream has nothing archived.
///
/// The new view replaces the previous one whole, so one that holds fewer windows or events
/// is refused unless `request.allow_shrink`: its files are deleted and the previous view
/// stays.
///
/// # Errors
///
/// [`BatchError::RangeRefused`] for a range over the chunk limit (naming the outlying event
/// times) or whose windows cannot be represented; [`BatchError::WouldShrink`] for a view
/// that would shrink unasked; store and Parquet failures, a history file whose columns are
/// not the stream's, and DataFusion's errors.
pub async fn recompute_view(
    config: &Config,
    job: &Job,
    request: RecomputeRequest,
    store: Arc<dyn ObjectStore>,
    progress: Arc<Progress>,
) -> Result<RecomputeOutcome, BatchError> {
    crate::register_version(store.as_ref(), &job.config).await?;
    let stream = job.stream.name();
    let history = runnel_archive::load_manifest(store.as_ref(), &config.archive.prefix, stream)
        .await
        .map_err(|error| BatchError::Archive(Box::new(error)))?
        .map(|manifest| manifest.files)
        .unwrap_or_default();
    // A join job's other input: a table's changelog, every version before each chunk's
    // end; or a second stream, its rows within the interval around the chunk's; or a window
    // join's right side's stream, its rows of the chunk's windows.
    let other_history = match job.other_input() {
        Some(other) => runnel_archive::load_manifest(
            store.as_ref(),
            &config.archive.prefix,
            other.stream.name(),
        )
        .await
        .map_err(|error| BatchError::Archive(Box::new(error)))?
        .map(|manifest| manifest.files)
        .unwrap_or_default(),
        None => Vec::new(),
    };
    let previous = load_view(store.as_ref(), VIEWS_PREFIX, &job.job_name, job.version).await?;
    let resumed = load_run_state(store.as_ref(), job).await?.filter(|state| {
        state.sql == job.sql()
            && state.from_ms == request.from_ms
            && state.to_ms == request.to_ms
            && previous
                .as_ref()
                .is_none_or(|view| view.generation < state.generation)
    });
    let horizon = match &resumed {
        Some(state) => state.horizon_ms,
        None => history_horizon(job, &history)
            .and_then(|horizon| match interval_of(job) {
                // An interval join's rows up to the horizon pair with the second stream's up
                // to the horizon plus the interval's upper bound: its history must hold them.
                Some((_, upper)) if !other_history.is_empty() => Some(
                    horizon.min(
                        history_horizon(job, &other_history)
                            .map_or(i64::MIN, |other| other.saturating_sub(upper.max(0))),
                    ),
                ),
                // A window join's window is complete when both sides' histories hold it. A
                // right side with nothing archived leaves no horizon, as a left side with
                // nothing archived does: its stream's events may be in the log, not yet
                // archived, and the view would hold its left rows unmatched until the next
                // recompute.
                _ if job.window_join.is_some() => {
                    history_horizon(job, &other_history).map(|right| horizon.min(right))
                }
                _ => Some(horizon),
            })
            .map(|horizon| match request.to_ms {
                Some(to) => horizon.min(to),
                None => horizon,
            }),
    };
    let from = request.from_ms.unwrap_or(i64::MIN);
    let end = horizon.unwrap_or(i64::MIN);
    // The latest end a kept window may have. Events at or after the horizon are not read, and
    // an event at exactly a session's end would still join it: a session is complete only
    // when it ends before the horizon.
    let ends_by = match job.plan.window() {
        WindowSpec::Session { .. } => end.saturating_sub(1),
        WindowSpec::Tumble { .. } | WindowSpec::Hop { .. } => end,
    };
    // The files that hold events of the range; the range starts at their earliest event
    // time (when `from` is earlier), not at the extremes of the time type.
    let files: Vec<FileEntry> = history
        .iter()
        .filter(|file| file.rows > 0 && holds_events_in(file, &(from..end)))
        .cloned()
        .collect();
    let first_event = files
        .iter()
        .filter_map(|file| file.min_event_time)
        .min()
        .unwrap_or(end);
    let max_chunks = config.batch_reprocessor.max_recompute_chunks;
    // Nothing archived yet (no horizon), or no event in the range: no chunk to plan.
    let planned = if horizon.is_none() || files.is_empty() {
        Ok(Vec::new())
    } else {
        plan_chunks(job.plan.window(), from, first_event, end, max_chunks)
    };
    let chunks = match planned {
        Ok(chunks) => chunks,
        Err(refused) => {
            let refusal = RangeRefusal {
                job,
                history: &history,
                files: &files,
                from: request.from_ms,
                first_event,
                horizon: end,
                max_chunks,
            };
            return Err(refusal.describe(&store, refused).await);
        }
    };
    let mut state = resumed.unwrap_or_else(|| RunState {
        sql: job.sql().to_string(),
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        horizon_ms: horizon,
        generation: previous.as_ref().map_or(1, |view| view.generation + 1),
        history_files: files.len() as u64,
        chunks: Vec::new(),
    });
    let resumed_chunks = state.chunks.len().min(chunks.len());
    // Each file's chunks, by the event times they read (a file is read by every chunk its
    // event-time bounds overlap).
    let spans: Vec<Range<usize>> = files.iter().map(|file| chunk_span(&chunks, file)).collect();
    let (mut files_total, mut events_total) = (0, 0);
    for (file, span) in files.iter().zip(&spans) {
        let todo = span.end.saturating_sub(span.start.max(resumed_chunks)) as u64;
        files_total += todo;
        events_total += todo.saturating_mul(file.rows);
    }
    progress.files_total.store(files_total, Ordering::Relaxed);
    progress.events_total.store(events_total, Ordering::Relaxed);
    info!(
        job = %job.name,
        files = files.len(),
        from = request.from_ms,
        first_event,
        horizon,
        chunks = chunks.len(),
        done = resumed_chunks,
        workers = request.workers,
        "recomputing over the history"
    );
    let keep_from = match job.plan.window() {
        WindowSpec::Session { gap_ms } if request.from_ms.is_some() => from.saturating_add(gap_ms),
        _ => from,
    };
    // The files by the first chunk that reads them; `active` holds those the current chunk
    // reads.
    let mut by_first: Vec<usize> = (0..files.len())
        .filter(|&file| !spans[file].is_empty())
        .collect();
    by_first.sort_by_key(|&file| spans[file].start);
    let mut by_first = by_first.into_iter().peekable();
    let mut active: Vec<usize> = Vec::new();
    // One memory pool for the whole recompute: its chunks run one after the other.
    let limit = config.batch_reprocessor.recompute_memory_limit;
    let runtime = runnel_engine::recompute_runtime(usize::try_from(limit).unwrap_or(usize::MAX))
        .map_err(|source| BatchError::DataFusion(source.to_string()))?;
    for (index, chunk) in chunks.iter().enumerate() {
        while let Some(file) = by_first.next_if(|&file| spans[file].start <= index) {
            active.push(file);
        }
        active.retain(|&file| spans[file].end > index);
        if index < resumed_chunks {
            continue;
        }
        if active.is_empty() {
            // No file holds events of this chunk: it holds no window.
            state.chunks.push((Vec::new(), 0));
            continue;
        }
        let chunk_files: Vec<FileEntry> = active.iter().map(|&file| files[file].clone()).collect();
        let counted = Arc::new(AtomicU64::new(0));
        let table = HistoryTable {
            groups: split(chunk_files, request.workers),
            job_columns: job.input_columns.clone(),
            positioned: Arc::new(with_string_views(job.stream.with_position())),
            schema: Arc::new(with_string_views(&job.input_schema)),
            chunk: Arc::new(ChunkRead {
                store: Arc::clone(&store),
                event_time_column: job.stream.event_time_index(),
                events: chunk.events.clone(),
                own: chunk.own.clone(),
                counted: Arc::clone(&counted),
                progress: Arc::clone(&progress),
            }),
        };
        let context = runnel_engine::recompute_context(
            runnel_engine::recompute_config().with_target_partitions(request.workers.max(1)),
            Arc::clone(&runtime),
        );
        context
            .register_table("history", Arc::new(table))
            .map_err(|source| BatchError::DataFusion(source.to_string()))?;
        let started = std::time::Instant::now();
        let streams = match (&job.window_join, &job.joined) {
            (Some(window_join), _) => {
                // Both sides have the same windows: the right side's rows of the chunk's
                // events are those of its windows.
                let right = other_input_history(
                    &window_join.right,
                    &other_history,
                    chunk.events.clone(),
                    (Arc::clone(&store), request.workers),
                );
                context
                    .register_table("right_history", Arc::new(right))
                    .map_err(|source| BatchError::DataFusion(source.to_string()))?;
                let joined = runnel_engine::recompute_window_join(
                    &window_join.plan,
                    &context,
                    ["history", "right_history"],
                )
                .await
                .map_err(|source| BatchError::Engine {
                    job: job.name.clone(),
                    source,
                })?;
                vec![window_join_results(joined, job.plan.window())?]
            }
            (None, joined) => {
                let input = match joined {
                    None => "history",
                    Some(table) => {
                        register_table_history(
                            job,
                            (table, &other_history),
                            &chunk.events,
                            (&context, Arc::clone(&store), request.workers),
                        )
                        .await?;
                        "joined"
                    }
                };
                runnel_engine::recompute_windows(&job.plan, &context, input)
                    .await
                    .map_err(|source| BatchError::Engine {
                        job: job.name.clone(),
                        source,
                    })?
            }
        };
        // Each output partition is aggregated, filtered and encoded on its own task, into
        // its own file.
        let starts = chunk.starts.start.max(keep_from)..chunk.starts.end;
        let dir = generation_dir(VIEWS_PREFIX, &job.job_name, job.version, state.generation);
        let writers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(part, stream)| {
                let path = dir
                    .clone()
                    .join(format!("part-{index:05}-{part:03}.parquet"));
                let (schema, starts, store, name) = (
                    job.result_schema(),
                    starts.clone(),
                    Arc::clone(&store),
                    job.name.clone(),
                );
                tokio::spawn(async move {
                    write_view_file(
                        stream,
                        &schema,
                        &starts,
                        ends_by,
                        store.as_ref(),
                        path,
                        &name,
                    )
                    .await
                })
            })
            .collect();
        let mut files = Vec::new();
        for writer in writers {
            let written = writer.await.map_err(|error| {
                BatchError::DataFusion(format!("a view writer failed: {error}"))
            })?;
            files.extend(written?);
        }
        debug!(chunk = index, files = files.len(), elapsed = ?started.elapsed(), "chunk written");
        state.chunks.push((files, counted.load(Ordering::Relaxed)));
        save_run_state(store.as_ref(), job, &state).await?;
    }

    let manifest = ViewManifest {
        format: VIEW_FORMAT,
        job: job.job_name.clone(),
        version: job.version,
        generation: state.generation,
        // Exactly the window starts the chunks kept, so that serving lets the view answer
        // for no window it did not recompute.
        from_ms: request.from_ms.map(|_| keep_from),
        to_ms: request.to_ms,
        horizon_ms: horizon,
        history_files: state.history_files,
        events: state.chunks.iter().map(|(_, events)| events).sum(),
        files: state
            .chunks
            .iter()
            .flat_map(|(files, _)| files.iter().cloned())
            .collect(),
        created_at_ms: now_millis(),
    };
    if let Some(previous) = &previous
        && !request.allow_shrink
    {
        let windows = manifest.windows();
        let previous_windows = previous.windows();
        let sessions = matches!(job.plan.window(), WindowSpec::Session { .. });
        if shrinks(
            (windows, manifest.events),
            (previous_windows, previous.events),
            sessions,
        ) {
            discard_generation(store.as_ref(), job, &manifest).await;
            return Err(BatchError::WouldShrink {
                job: job.job_name.clone(),
                version: job.version,
                generation: manifest.generation,
                windows,
                events: manifest.events,
                range: range_text(manifest.from_ms, manifest.horizon_ms),
                previous_generation: previous.generation,
                previous_windows,
                previous_events: previous.events,
                previous_range: range_text(previous.from_ms, previous.horizon_ms),
            });
        }
    }
    save_view(store.as_ref(), VIEWS_PREFIX, &manifest).await?;
    let run_state = run_state_path(job);
    match store.delete(&run_state).await {
        // A run that finished without saving a state (its chunks all done in one go) has none.
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(error) => warn!(path = %run_state, %error, "could not delete the finished run's state"),
    }
    if let Some(previous) = previous {
        for file in previous.files {
            let old = Path::from(file.path.as_str());
            if let Err(error) = store.delete(&old).await {
                warn!(path = %old, %error, "could not delete a file of the previous view");
            }
        }
    }
    info!(
        job = %job.name,
        generation = manifest.generation,
        rows = manifest.windows(),
        horizon,
        "batch view written"
    );
    Ok(RecomputeOutcome {
        view: manifest,
        chunks: chunks.len(),
        resumed_chunks,
    })
}

/// Deletes a refused generation's files and the run state that names them, so that the
/// next recompute starts afresh. Failures are logged: the files are unreferenced either way.
async fn discard_generation(store: &dyn ObjectStore, job: &Job, manifest: &ViewManifest) {
    for file in &manifest.files {
        let path = Path::from(file.path.as_str());
        if let Err(error) = store.delete(&path).await {
            warn!(%path, %error, "could not delete a file of a refused view generation");
        }
    }
    let run_state = run_state_path(job);
    if let Err(error) = store.delete(&run_state).await {
        warn!(path = %run_state, %error, "could not delete a refused run's state");
    }
}

/// What a refused range is described with.
struct RangeRefusal<'a> {
    job: &'a Job,
    /// Every file of the history.
    history: &'a [FileEntry],
    /// The files holding events of the range.
    files: &'a [FileEntry],
    from: Option<i64>,
    first_event: i64,
    horizon: i64,
    max_chunks: u64,
}

/// Outlying rows named in a refusal, at most.
const OUTLIERS_SHOWN: usize = 5;

/// Outlying files scanned for their rows in a refusal, at most.
const OUTLYING_FILES_SCANNED: usize = 8;

impl RangeRefusal<'_> {
    /// The refusal of the range as an error: the range, the chunk count, the limit and its
    /// key, and what widened the range: `from`, or the earliest files with their outlying
    /// rows (scanned from the files: partition, offset, event time).
    async fn describe(&self, store: &Arc<dyn ObjectStore>, refused: PlanError) -> BatchError {
        let job = format!("job `{}` version {}", self.job.name, self.job.version);
        // Event times before `lowest` widened the range: with this horizon, the limit allows
        // no earlier start.
        let (length_ms, chunks, lowest) = match refused {
            PlanError::BadWindow(message) => {
                return BatchError::RangeRefused(format!("recompute of {job}: {message}"));
            }
            PlanError::TooMany { chunks, length_ms } => {
                let lowest =
                    i128::from(self.horizon) - i128::from(self.max_chunks) * i128::from(length_ms);
                let lowest = i64::try_from(lowest.max(i128::from(i64::MIN))).unwrap_or(i64::MIN);
                (length_ms, Some(chunks), lowest)
            }
            PlanError::Unrepresentable { lowest_event } => (0, None, lowest_event),
        };
        let begin = self.from.unwrap_or(i64::MIN).max(self.first_event);
        let range = format!(
            "[{}, {})",
            time_text(begin.into()),
            time_text(self.horizon.into())
        );
        let mut message = match chunks {
            Some(chunks) => format!(
                "recompute of {job} refused before reading anything: its range {range} needs \
                 {chunks} chunks of {length_ms} ms, more than batch-reprocessor.max-recompute-chunks \
                 ({})",
                self.max_chunks
            ),
            None => format!(
                "recompute of {job} refused before reading anything: its range {range} starts \
                 before the earliest window start that can be represented"
            ),
        };
        match self.from {
            Some(from) if from >= self.first_event => message.push_str(&format!(
                "; it starts at the asked-for start (--from), {}",
                time_text(from.into())
            )),
            _ => message.push_str(&format!(
                "; it starts at the history's earliest event time, {}",
                time_text(self.first_event.into())
            )),
        }
        let mut outlying: Vec<&FileEntry> = self
            .files
            .iter()
            .filter(|file| file.min_event_time.is_some_and(|min| min < lowest))
            .collect();
        outlying.sort_by_key(|file| file.min_event_time);
        message.push_str(&format!(
            "; history files with event times before {}, the earliest the limit allows ({} of \
             {}):",
            time_text(lowest.into()),
            outlying.len(),
            self.files.len(),
        ));
        for file in outlying.iter().take(OUTLIERS_SHOWN) {
            message.push_str(&format!(
                " {} (partition {}, offsets {}-{}, event times {} to {}),",
                file.path,
                file.partition,
                file.first_offset,
                file.last_offset,
                file.min_event_time
                    .map_or("-".to_string(), |t| time_text(t.into())),
                file.max_event_time
                    .map_or("-".to_string(), |t| time_text(t.into())),
            ));
        }
        if outlying.len() > OUTLIERS_SHOWN {
            message.push_str(&format!(" and {} more,", outlying.len() - OUTLIERS_SHOWN));
        }
        message.pop();
        match self.outlying_rows(store, &outlying, begin..lowest).await {
            Ok((rows, examples)) if rows > 0 => {
                message.push_str(&format!("; {rows} event(s) there lie before it:"));
                for (partition, offset, time) in &examples {
                    message.push_str(&format!(
                        " partition {partition} offset {offset} at {},",
                        time_text((*time).into())
                    ));
                }
                message.pop();
                if rows > examples.len() as u64 {
                    message.push_str(", ...");
                }
            }
            Ok(_) => {}
            Err(error) => {
                warn!(%error, "could not scan the outlying history files for a refusal");
            }
        }
        let rest = self
            .files
            .iter()
            .filter(|file| !outlying.iter().any(|out| out.path == file.path))
            .filter_map(|file| file.min_event_time)
            .min();
        if let Some(rest) = rest {
            message.push_str(&format!(
                "; the other files' event times start at {}",
                time_text(rest.into())
            ));
        }
        if let Some((partition, latest)) = self.horizon_partition() {
            message.push_str(&format!(
                "; it ends at the horizon, set by partition {partition}'s latest event time {}",
                time_text(latest.into())
            ));
        }
        message.push_str(
            ". Leave the outlying events out with --from (and --to), or raise \
             batch-reprocessor.max-recompute-chunks",
        );
        BatchError::RangeRefused(message)
    }

    /// The partition whose latest archived event time sets the horizon, and that time.
    fn horizon_partition(&self) -> Option<(u32, i64)> {
        let mut largest: std::collections::BTreeMap<u32, i64> = std::collections::BTreeMap::new();
        for file in self.history {
            if let Some(max) = file.max_event_time {
                let slot = largest.entry(file.partition).or_insert(max);
                *slot = (*slot).max(max);
            }
        }
        largest.into_iter().min_by_key(|&(_, max)| max)
    }

    /// How many rows of `files` (the first [`OUTLYING_FILES_SCANNED`]) have event times in
    /// `outlying`, with the first [`OUTLIERS_SHOWN`] as (partition, offset, event time).
    async fn outlying_rows(
        &self,
        store: &Arc<dyn ObjectStore>,
        files: &[&FileEntry],
        outlying: Range<i64>,
    ) -> Result<(u64, Vec<(u32, i64, i64)>), BatchError> {
        let event_time_column = self.job.stream.event_time_index();
        let offset_column = self.job.stream.declared().fields().len() + 1;
        let columns = [event_time_column, offset_column];
        let (mut rows, mut examples) = (0, Vec::new());
        for file in files.iter().take(OUTLYING_FILES_SCANNED) {
            let read = HistoryRead {
                batch_rows: READ_BATCH_ROWS,
                event_time_column,
                event_time: Some(outlying.clone()),
                columns: Some(&columns),
                string_views: false,
            };
            let mut batches = open_history_file(store, file, &read)
                .await
                .map_err(|error| BatchError::Archive(Box::new(error)))?;
            while let Some(batch) = batches.next().await {
                let batch = batch.map_err(|source| BatchError::Parquet {
                    path: file.path.clone(),
                    message: source.to_string(),
                })?;
                let arrow =
                    |source: arrow::error::ArrowError| BatchError::Arrow(source.to_string());
                let times =
                    arrow::compute::cast(batch.column(0), &DataType::Int64).map_err(arrow)?;
                let offsets =
                    arrow::compute::cast(batch.column(1), &DataType::Int64).map_err(arrow)?;
                let (times, offsets) = (
                    times.as_primitive::<Int64Type>(),
                    offsets.as_primitive::<Int64Type>(),
                );
                for row in 0..batch.num_rows() {
                    if times.is_null(row) || !outlying.contains(&times.value(row)) {
                        continue;
                    }
                    rows += 1;
                    if examples.len() < OUTLIERS_SHOWN {
                        let offset = if offsets.is_null(row) {
                            -1
                        } else {
                            offsets.value(row)
                        };
                        examples.push((file.partition, offset, times.value(row)));
                    }
                }
            }
        }
        Ok((rows, examples))
    }
}

/// The rows of `batch` whose window starts in `starts` and ends at or before `ends_by`.
fn keep_windows(
    batch: &RecordBatch,
    ends: &Int64Array,
    starts_in: &Range<i64>,
    ends_by: i64,
) -> Result<RecordBatch, BatchError> {
    let arrow = |source: arrow::error::ArrowError| BatchError::Arrow(source.to_string());
    let starts = batch
        .column_by_name("_window_start")
        .ok_or_else(|| BatchError::Arrow("results without `_window_start`".to_string()))?;
    let starts = arrow::compute::cast(starts, &DataType::Int64).map_err(arrow)?;
    let starts = starts.as_primitive::<Int64Type>();
    let keep: BooleanArray = starts
        .iter()
        .zip(ends.iter())
        .map(|(start, end)| match (start, end) {
            (Some(start), Some(end)) => Some(starts_in.contains(&start) && end <= ends_by),
            _ => Some(false),
        })
        .collect();
    arrow::compute::filter_record_batch(batch, &keep).map_err(arrow)
}

/// Writes the results of one output partition that [`keep_windows`] keeps as a view file at
/// `path`: `None` if it keeps none.
async fn write_view_file(
    mut results: runnel_engine::WindowResults,
    schema: &SchemaRef,
    starts: &Range<i64>,
    ends_by: i64,
    store: &dyn ObjectStore,
    path: Path,
    job: &str,
) -> Result<Option<ViewFile>, BatchError> {
    let parquet_error = |source: parquet::errors::ParquetError| BatchError::Parquet {
        path: path.to_string(),
        message: source.to_string(),
    };
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(properties))
        .map_err(parquet_error)?;
    let mut rows = 0;
    while let Some(computed) = results.next().await {
        let (batch, ends) = computed.map_err(|source| BatchError::Engine {
            job: job.to_string(),
            source,
        })?;
        let kept = keep_windows(&batch, &ends, starts, ends_by)?;
        if kept.num_rows() > 0 {
            rows += kept.num_rows() as u64;
            writer.write(&kept).map_err(parquet_error)?;
        }
    }
    if rows == 0 {
        return Ok(None);
    }
    let bytes = Bytes::from(writer.into_inner().map_err(parquet_error)?);
    let size = bytes.len() as u64;
    store
        .put(&path, PutPayload::from(bytes))
        .await
        .map_err(|source| BatchError::store("write", &path, source))?;
    Ok(Some(ViewFile {
        path: path.to_string(),
        rows,
        bytes: size,
    }))
}

/// What every scan of one chunk shares: where and what it reads, and what it reports.
#[derive(Debug)]
struct ChunkRead {
    store: Arc<dyn ObjectStore>,
    /// The event time's column in the files.
    event_time_column: usize,
    /// Rows with event times outside this are left out.
    events: Range<i64>,
    /// The event times whose rows this chunk counts in `counted`.
    own: Range<i64>,
    counted: Arc<AtomicU64>,
    progress: Arc<Progress>,
}

/// The history files of one chunk as a DataFusion table of the job's input columns, one
/// partition per worker. A scan reads only the columns the query needs (and the event time,
/// for the range filter) from the Parquet files.
#[derive(Debug)]
struct HistoryTable {
    groups: Vec<Vec<FileEntry>>,
    /// The job's input columns among the positioned ones.
    job_columns: Vec<usize>,
    positioned: SchemaRef,
    /// The job's input schema.
    schema: SchemaRef,
    chunk: Arc<ChunkRead>,
}

#[async_trait::async_trait]
impl TableProvider for HistoryTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&wanted)?);
        // File columns to read, ascending (the reader yields them in file order).
        let mut read: Vec<usize> = wanted
            .iter()
            .map(|&index| self.job_columns[index])
            .collect();
        read.push(self.chunk.event_time_column);
        read.sort_unstable();
        read.dedup();
        let at = |column: usize| read.iter().position(|&read| read == column).unwrap_or(0);
        let scan = Arc::new(Scan {
            output: wanted
                .iter()
                .map(|&index| at(self.job_columns[index]))
                .collect(),
            time_at: at(self.chunk.event_time_column),
            positioned_read: Arc::new(self.positioned.project(&read)?),
            read,
            schema: Arc::clone(&schema),
        });
        let partitions: Vec<Arc<dyn PartitionStream>> = self
            .groups
            .iter()
            .map(|files| {
                Arc::new(HistoryPartition {
                    files: files.clone(),
                    chunk: Arc::clone(&self.chunk),
                    scan: Arc::clone(&scan),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        runnel_engine::partition_streams_exec(schema, partitions)
    }
}

/// An interval join job's bounds (ms), `None` for any other job.
fn interval_of(job: &Job) -> Option<(i64, i64)> {
    match job.plan.join()?.form() {
        runnel_engine::JoinForm::Interval { lower_ms, upper_ms } => Some((lower_ms, upper_ms)),
        runnel_engine::JoinForm::AsOf { .. } => None,
    }
}

/// Registers in `context`, as `joined`, a join job's rows of the chunk (the table
/// `history`, rows of `events`) joined with its other input's history (`other_history`,
/// its files): a table's changelog, every row before the chunk's end, ordered within a time by
/// the log offset (the table is its changelog as archived when the recompute runs: a
/// version not yet archived is not seen, the archiver following the log by its roll
/// interval); or a second stream, its rows within the interval around the chunk's.
async fn register_table_history(
    job: &Job,
    (joined, other_history): (&runnel_jobs::JoinedInput, &[FileEntry]),
    events: &Range<i64>,
    (context, store, workers): (
        &datafusion::prelude::SessionContext,
        Arc<dyn ObjectStore>,
        usize,
    ),
) -> Result<(), BatchError> {
    let before = match interval_of(job) {
        Some((lower, upper)) => {
            events.start.saturating_add(lower)..events.end.saturating_add(upper).saturating_add(1)
        }
        None => i64::MIN..events.end,
    };
    let history = other_input_history(joined, other_history, before, (store, workers));
    context
        .register_table("other_history", Arc::new(history))
        .map_err(|source| BatchError::DataFusion(source.to_string()))?;
    runnel_engine::register_joined(
        &job.plan,
        context,
        "history",
        "other_history",
        runnel_events::OFFSET_COLUMN,
        "joined",
    )
    .await
    .map_err(|source| BatchError::Engine {
        job: job.name.clone(),
        source,
    })
}

/// A join job's other input (its table's changelog, its second stream, or its window join's
/// right side's stream) as a table of its rows with event times in `events`, from the files
/// of `other_history` that can hold them, split among `workers`.
fn other_input_history(
    other: &runnel_jobs::JoinedInput,
    other_history: &[FileEntry],
    events: Range<i64>,
    (store, workers): (Arc<dyn ObjectStore>, usize),
) -> HistoryTable {
    let files: Vec<FileEntry> = other_history
        .iter()
        .filter(|file| file.rows > 0 && holds_events_in(file, &events))
        .cloned()
        .collect();
    HistoryTable {
        groups: split(files, workers),
        job_columns: other.input_columns.clone(),
        positioned: Arc::new(with_string_views(other.stream.with_position())),
        schema: Arc::new(with_string_views(&other.input_schema)),
        chunk: Arc::new(ChunkRead {
            store,
            event_time_column: other.stream.event_time_index(),
            events,
            // The other input's rows are not the job's events: none is counted, and the
            // progress they would move is not the one shown.
            own: 0..0,
            counted: Arc::new(AtomicU64::new(0)),
            progress: Arc::new(Progress::default()),
        }),
    }
}

/// A window join's recomputed rows as the results [`write_view_file`] writes: each batch
/// with its rows' window ends, `_window_start` plus the length of `window` (both sides'
/// tumbling or hopping window).
fn window_join_results(
    batches: Vec<RecordBatch>,
    window: WindowSpec,
) -> Result<runnel_engine::WindowResults, BatchError> {
    let arrow = |source: arrow::error::ArrowError| BatchError::Arrow(source.to_string());
    let size_ms = window.size_ms();
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        let starts = batch.column_by_name("_window_start").ok_or_else(|| {
            BatchError::Arrow("window join results without `_window_start`".to_string())
        })?;
        let starts = arrow::compute::cast(starts, &DataType::Int64).map_err(arrow)?;
        let ends: Int64Array = starts
            .as_primitive::<Int64Type>()
            .unary(|start| start.saturating_add(size_ms));
        results.push(Ok((batch, ends)));
    }
    Ok(futures::stream::iter(results).boxed())
}

/// The columns one scan reads, and how it turns them into its rows.
#[derive(Debug)]
struct Scan {
    /// The file columns read, ascending.
    read: Vec<usize>,
    /// The stream's positioned schema, projected to `read`.
    positioned_read: SchemaRef,
    /// The scanned columns, as positions in `read`.
    output: Vec<usize>,
    /// The event time's position in `read`.
    time_at: usize,
    /// The scanned schema.
    schema: SchemaRef,
}

impl Scan {
    /// The columns read from a history file as the scanned rows: checked against the
    /// stream's types, filtered to event times in the chunk's `events`; the rows with event
    /// times in its `own` are added to its `counted`.
    fn job_rows(&self, chunk: &ChunkRead, batch: &RecordBatch) -> Result<RecordBatch, BatchError> {
        let arrow = |source: arrow::error::ArrowError| BatchError::Arrow(source.to_string());
        let batch =
            RecordBatch::try_new(Arc::clone(&self.positioned_read), batch.columns().to_vec())
                .map_err(|error| {
                    BatchError::Arrow(format!(
                        "a history file's columns are not the stream's: {error}"
                    ))
                })?;
        let times = batch.column(self.time_at);
        let times = match times.data_type() {
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                arrow::compute::cast(times, &DataType::Int64).map_err(arrow)?
            }
            _ => Arc::clone(times),
        };
        let times = times.as_primitive_opt::<Int64Type>().ok_or_else(|| {
            BatchError::Arrow(format!(
                "a history file's event times are {}, not epoch milliseconds",
                times.data_type()
            ))
        })?;
        // Most batches lie wholly inside both ranges: their bounds say so without comparing
        // each row.
        let bounds = (times.null_count() == 0)
            .then(|| arrow::compute::min(times).zip(arrow::compute::max(times)))
            .flatten();
        let holds_all = |range: &Range<i64>| {
            bounds.is_some_and(|(min, max)| range.start <= min && max < range.end)
        };
        let within = |range: &Range<i64>| -> Result<BooleanArray, BatchError> {
            arrow::compute::and(
                &cmp::gt_eq(times, &Int64Array::new_scalar(range.start)).map_err(arrow)?,
                &cmp::lt(times, &Int64Array::new_scalar(range.end)).map_err(arrow)?,
            )
            .map_err(arrow)
        };
        let counted = if holds_all(&chunk.own) {
            times.len()
        } else {
            within(&chunk.own)?.true_count()
        };
        chunk.counted.fetch_add(counted as u64, Ordering::Relaxed);
        let projected = batch.project(&self.output).map_err(arrow)?;
        let projected =
            RecordBatch::try_new(Arc::clone(&self.schema), projected.columns().to_vec())
                .map_err(arrow)?;
        if holds_all(&chunk.events) {
            return Ok(projected);
        }
        let keep = within(&chunk.events)?;
        if keep.true_count() == keep.len() {
            return Ok(projected);
        }
        arrow::compute::filter_record_batch(&projected, &keep).map_err(arrow)
    }
}

/// One worker's share of a chunk's history: its files, read one after the other, as the
/// scan's rows.
#[derive(Debug)]
struct HistoryPartition {
    files: Vec<FileEntry>,
    chunk: Arc<ChunkRead>,
    scan: Arc<Scan>,
}

impl PartitionStream for HistoryPartition {
    fn schema(&self) -> &SchemaRef {
        &self.scan.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (chunk, scan) = (Arc::clone(&self.chunk), Arc::clone(&self.scan));
        let opened = futures::stream::iter(self.files.clone()).then(move |file| {
            let (chunk, scan) = (Arc::clone(&chunk), Arc::clone(&scan));
            async move {
                let read = HistoryRead {
                    batch_rows: READ_BATCH_ROWS,
                    event_time_column: chunk.event_time_column,
                    event_time: Some(chunk.events.clone()),
                    columns: Some(&scan.read),
                    string_views: true,
                };
                let stream = open_history_file(&chunk.store, &file, &read)
                    .await
                    .map_err(|error| {
                        datafusion::error::DataFusionError::External(Box::new(error))
                    })?;
                chunk.progress.files_done.fetch_add(1, Ordering::Relaxed);
                let path = file.path;
                Ok::<_, datafusion::error::DataFusionError>(stream.map(move |batch| {
                    batch.map_err(|source| {
                        datafusion::error::DataFusionError::External(Box::new(
                            BatchError::Parquet {
                                path: path.clone(),
                                message: source.to_string(),
                            },
                        ))
                    })
                }))
            }
        });
        let (chunk, scan) = (Arc::clone(&self.chunk), Arc::clone(&self.scan));
        let rows = opened.try_flatten().and_then(move |batch| {
            chunk
                .progress
                .events_done
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            let rows = scan
                .job_rows(&chunk, &batch)
                .map_err(|error| datafusion::error::DataFusionError::External(Box::new(error)));
            futures::future::ready(rows)
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.scan.schema),
            rows,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    /// 2026-11-22T00:00:00Z.
    const BASE: i64 = 1_795_305_600_000;
    const TEN_SECONDS: WindowSpec = WindowSpec::Tumble { size_ms: 10_000 };

    #[track_caller]
    fn too_many(result: Result<Vec<Chunk>, PlanError>) -> u128 {
        match result {
            Err(PlanError::TooMany { chunks, .. }) => chunks,
            other => panic!("expected TooMany, got {other:?}"),
        }
    }

    #[test]
    fn chunks_of_a_day_of_history_cover_every_window_start_once() {
        let chunks = plan_chunks(TEN_SECONDS, i64::MIN, BASE + 1_234, BASE + 24 * HOUR, 100)
            .expect("a day fits");
        assert_eq!(chunks.len(), 24);
        assert_eq!(
            chunks[0].starts.start,
            i64::MIN,
            "the first chunk keeps earlier starts"
        );
        assert_eq!(chunks[0].events.start, i64::MIN);
        assert_eq!(chunks[1].starts.start, BASE + HOUR);
        for pair in chunks.windows(2) {
            assert_eq!(
                pair[0].starts.end, pair[1].starts.start,
                "contiguous starts"
            );
            assert_eq!(
                pair[0].own.end, pair[1].own.start,
                "each event counted once"
            );
        }
        assert_eq!(chunks[23].events.end, BASE + 24 * HOUR);
    }

    #[test]
    fn an_event_at_i64_min_is_refused_by_count_without_overflow() {
        // One chunk per hour from i64::MIN to 2026: about 2.6 billion, counted, not planned.
        let chunks = too_many(plan_chunks(TEN_SECONDS, i64::MIN, i64::MIN, BASE, 100_000));
        assert_eq!(
            chunks,
            (i128::from(BASE) - i128::from(i64::MIN)).unsigned_abs() / 3_600_000 + 1
        );
        let hop = WindowSpec::Hop {
            slide_ms: 1_000,
            size_ms: 60_000,
        };
        too_many(plan_chunks(hop, i64::MIN, i64::MIN, i64::MAX, 10_000_000));
    }

    #[test]
    fn a_year_0001_event_is_refused_with_the_chunk_count_the_finding_saw() {
        let year_1 = -62_135_596_800_000;
        // The finding saw 17,758,595 chunks, with a horizon 11 hours later.
        let chunks = too_many(plan_chunks(TEN_SECONDS, i64::MIN, year_1, BASE, 100_000));
        assert_eq!(chunks, 17_758_584);
        // Left out by `from`, the same history is a day.
        let chunks = plan_chunks(TEN_SECONDS, BASE - 24 * HOUR, year_1, BASE, 100_000)
            .expect("from leaves it out");
        assert_eq!(chunks.len(), 24);
        assert_eq!(
            chunks[0].events.start,
            BASE - 24 * HOUR,
            "reads from `from`"
        );
    }

    #[test]
    fn windows_below_i64_min_are_refused_and_the_top_of_the_range_saturates() {
        let refused = plan_chunks(TEN_SECONDS, i64::MIN, i64::MIN, i64::MIN + 5, 100);
        let Err(PlanError::Unrepresentable { lowest_event }) = refused else {
            panic!("expected Unrepresentable, got {refused:?}");
        };
        assert_eq!(lowest_event.rem_euclid(10_000), 0, "a window start");
        assert!(lowest_event > i64::MIN && lowest_event < i64::MIN + 10_000);
        let top = i64::MAX - 5;
        let chunks = plan_chunks(TEN_SECONDS, i64::MIN, top - HOUR, i64::MAX, 100)
            .expect("an hour below i64::MAX");
        assert!(!chunks.is_empty() && chunks.len() <= 2);
        assert_eq!(chunks.last().map(|chunk| chunk.starts.end), Some(i64::MAX));
    }

    #[test]
    fn a_window_that_is_not_positive_is_refused() {
        let tumble = WindowSpec::Tumble { size_ms: 0 };
        assert!(matches!(
            plan_chunks(tumble, 0, 0, HOUR, 100),
            Err(PlanError::BadWindow(_))
        ));
    }

    #[test]
    fn sessions_are_one_chunk_and_an_empty_range_none() {
        let session = WindowSpec::Session { gap_ms: 60_000 };
        let chunks = plan_chunks(session, i64::MIN, i64::MIN, BASE, 1).expect("one chunk");
        assert_eq!(chunks.len(), 1);
        assert!(
            plan_chunks(TEN_SECONDS, BASE, BASE, BASE, 1)
                .expect("empty")
                .is_empty()
        );
    }

    fn file(min: i64, max: i64) -> FileEntry {
        FileEntry {
            path: "clicks/x.parquet".to_string(),
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            rows: 1,
            bytes: 1,
            min_event_time: Some(min),
            max_event_time: Some(max),
            min_ingest_time: 0,
            max_ingest_time: 0,
        }
    }

    #[test]
    fn a_file_is_read_by_the_chunks_its_event_times_overlap() {
        let chunks =
            plan_chunks(TEN_SECONDS, i64::MIN, BASE, BASE + 10 * HOUR, 100).expect("ten hours");
        for (min, max) in [
            (BASE, BASE),
            (BASE + HOUR - 1, BASE + HOUR),
            (i64::MIN, BASE + 3 * HOUR),
            (BASE + 9 * HOUR, i64::MAX),
            (BASE + 20 * HOUR, i64::MAX),
        ] {
            let span = chunk_span(&chunks, &file(min, max));
            let expected: Vec<usize> = (0..chunks.len())
                .filter(|&index| holds_events_in(&file(min, max), &chunks[index].events))
                .collect();
            assert_eq!(span.collect::<Vec<_>>(), expected, "{min}..={max}");
        }
    }

    #[test]
    fn fewer_windows_or_events_shrink_a_view_but_merged_sessions_do_not() {
        assert!(
            shrinks((0, 0), (100, 4_000), false),
            "the empty generation of the finding"
        );
        assert!(shrinks((99, 4_000), (100, 4_000), false));
        assert!(shrinks((100, 3_999), (100, 4_000), false));
        assert!(!shrinks((100, 4_000), (100, 4_000), false), "the same view");
        assert!(!shrinks((120, 5_000), (100, 4_000), false));
        assert!(
            shrinks((99, 5_000), (100, 4_000), false),
            "fixed windows never merge"
        );
        assert!(
            !shrinks((99, 5_000), (100, 4_000), true),
            "sessions merge as events come"
        );
        assert!(shrinks((99, 4_000), (100, 4_000), true));
    }

    #[test]
    fn times_read_as_rfc_3339_within_years_1_to_9999_and_as_numbers_beyond() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time_text(-62_135_596_800_000), "0001-01-01T00:00:00.000Z");
        assert_eq!(
            time_text(i64::MIN.into()),
            "-9223372036854775808 ms",
            "no year -292 million"
        );
        assert_eq!(
            time_text(i128::from(i64::MIN) - 5),
            "-9223372036854775813 ms"
        );
        assert_eq!(
            range_text(None, None),
            "[the first event, nothing archived)"
        );
        assert_eq!(
            range_text(Some(0), Some(1_000)),
            "[1970-01-01T00:00:00.000Z, 1970-01-01T00:00:01.000Z)"
        );
    }
}
