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
//! earlier) and ending at or before the horizon, so every window it holds counted every
//! archived event that belongs to it.

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
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::prelude::SessionContext;
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
use runnel_stream_processor::Job;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::view::{VIEW_FORMAT, ViewFile, ViewManifest, generation_dir, load_view, save_view};
use crate::{BatchError, get_json, put_json};
use runnel_events::validate::now_millis;

/// The folder under the object store's root where batch views live.
pub const VIEWS_PREFIX: &str = "views";

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
    crate::view::view_dir(VIEWS_PREFIX, &job.job_name, job.version).join("_run.json")
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

/// Cuts `[from, horizon)` into chunks of whole windows. Sessions are one chunk: a session
/// can span any cut.
fn chunks(window: WindowSpec, from: i64, first_event: i64, horizon: i64) -> Vec<Chunk> {
    let (size, reach) = match window {
        WindowSpec::Tumble { size_ms } => (size_ms, 0),
        WindowSpec::Hop { slide_ms, size_ms } => (size_ms, size_ms - slide_ms),
        WindowSpec::Session { .. } => {
            return vec![Chunk {
                starts: from..horizon,
                events: from..horizon,
                own: from..horizon,
            }];
        }
    };
    let length = size * ((CHUNK_MS + size - 1) / size).max(1);
    let begin = from.max(first_event);
    let mut start = begin - begin.rem_euclid(size);
    let mut chunks = Vec::new();
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
    chunks
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
/// The range is cut into chunks of about an hour of windows (one for sessions), each written
/// as its own file of the new generation; after each, the run's state is saved, and a later
/// recompute of the same request resumes after the last finished chunk.
///
/// # Errors
///
/// Store and Parquet failures, a history file whose columns are not the stream's, and
/// DataFusion's errors.
pub async fn recompute_view(
    config: &Config,
    job: &Job,
    request: RecomputeRequest,
    store: Arc<dyn ObjectStore>,
    progress: Arc<Progress>,
) -> Result<RecomputeOutcome, BatchError> {
    let stream = job.stream.name();
    let history = runnel_archive::load_manifest(store.as_ref(), &config.archive.prefix, stream)
        .await
        .map_err(|error| BatchError::Archive(Box::new(error)))?
        .map(|manifest| manifest.files)
        .unwrap_or_default();
    let previous = load_view(store.as_ref(), VIEWS_PREFIX, &job.job_name, job.version).await?;
    let resumed = load_run_state(store.as_ref(), job).await?.filter(|state| {
        state.sql == job.plan.sql()
            && state.from_ms == request.from_ms
            && state.to_ms == request.to_ms
            && previous
                .as_ref()
                .is_none_or(|view| view.generation < state.generation)
    });
    let horizon = match &resumed {
        Some(state) => state.horizon_ms,
        None => history_horizon(job, &history).map(|horizon| match request.to_ms {
            Some(to) => horizon.min(to),
            None => horizon,
        }),
    };
    let from = request.from_ms.unwrap_or(i64::MIN);
    let end = horizon.unwrap_or(i64::MIN);
    let files: Vec<FileEntry> = history
        .into_iter()
        .filter(|file| holds_events_in(file, &(from..end)))
        .collect();
    let first_event = files
        .iter()
        .filter_map(|file| file.min_event_time)
        .min()
        .unwrap_or(end);
    let chunks = chunks(job.plan.window(), from, first_event, end);
    let mut state = resumed.unwrap_or_else(|| RunState {
        sql: job.plan.sql().to_string(),
        from_ms: request.from_ms,
        to_ms: request.to_ms,
        horizon_ms: horizon,
        generation: previous.as_ref().map_or(1, |view| view.generation + 1),
        history_files: files.len() as u64,
        chunks: Vec::new(),
    });
    let resumed_chunks = state.chunks.len().min(chunks.len());
    // Each chunk's files, by the event times it reads.
    let chunk_files: Vec<Vec<FileEntry>> = chunks
        .iter()
        .map(|chunk| {
            files
                .iter()
                .filter(|file| holds_events_in(file, &chunk.events))
                .cloned()
                .collect()
        })
        .collect();
    let todo = &chunk_files[resumed_chunks..];
    progress.files_total.store(
        todo.iter().map(|files| files.len() as u64).sum(),
        Ordering::Relaxed,
    );
    progress.events_total.store(
        todo.iter().flatten().map(|file| file.rows).sum(),
        Ordering::Relaxed,
    );
    info!(
        job = %job.name,
        files = files.len(),
        from = request.from_ms,
        horizon,
        chunks = chunks.len(),
        done = resumed_chunks,
        workers = request.workers,
        "recomputing over the history"
    );
    let first_start = match job.plan.window() {
        WindowSpec::Session { gap_ms } if request.from_ms.is_some() => from.saturating_add(gap_ms),
        _ => from,
    };
    for (index, (chunk, files)) in chunks
        .iter()
        .zip(&chunk_files)
        .enumerate()
        .skip(resumed_chunks)
    {
        let counted = Arc::new(AtomicU64::new(0));
        let table = HistoryTable {
            groups: split(files.clone(), request.workers),
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
        let context = SessionContext::new_with_config(
            runnel_engine::recompute_config().with_target_partitions(request.workers.max(1)),
        );
        context
            .register_table("history", Arc::new(table))
            .map_err(|source| BatchError::DataFusion(source.to_string()))?;
        let started = std::time::Instant::now();
        let streams = runnel_engine::recompute_windows(&job.plan, &context, "history")
            .await
            .map_err(|source| BatchError::Engine {
                job: job.name.clone(),
                source,
            })?;
        // Each output partition is aggregated, filtered and encoded on its own task, into
        // its own file.
        let starts = chunk.starts.start.max(first_start)..chunk.starts.end;
        let dir = generation_dir(VIEWS_PREFIX, &job.job_name, job.version, state.generation);
        let writers: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(part, stream)| {
                let path = dir
                    .clone()
                    .join(format!("part-{index:05}-{part:03}.parquet"));
                let (schema, starts, store, name) = (
                    job.plan.result_schema(),
                    starts.clone(),
                    Arc::clone(&store),
                    job.name.clone(),
                );
                tokio::spawn(async move {
                    write_view_file(stream, &schema, &starts, end, store.as_ref(), path, &name)
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
        from_ms: request.from_ms,
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
    save_view(store.as_ref(), VIEWS_PREFIX, &manifest).await?;
    let run_state = run_state_path(job);
    if let Err(error) = store.delete(&run_state).await {
        warn!(path = %run_state, %error, "could not delete the finished run's state");
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
        rows = manifest.files.iter().map(|file| file.rows).sum::<u64>(),
        horizon,
        "batch view written"
    );
    Ok(RecomputeOutcome {
        view: manifest,
        chunks: chunks.len(),
        resumed_chunks,
    })
}

/// The rows of `batch` whose window starts in `starts` and ends at or before `horizon`.
fn keep_windows(
    batch: &RecordBatch,
    ends: &Int64Array,
    starts_in: &Range<i64>,
    horizon: i64,
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
            (Some(start), Some(end)) => Some(starts_in.contains(&start) && end <= horizon),
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
    horizon: i64,
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
        let kept = keep_windows(&batch, &ends, starts, horizon)?;
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
        let scan = StreamingTableExec::try_new(
            schema,
            partitions,
            None,
            Vec::<LexOrdering>::new(),
            false,
            None,
        )?;
        Ok(Arc::new(scan))
    }
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
