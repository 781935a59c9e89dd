//! Window benchmark: the three jobs of issue 3 (TUMBLE 1 min, HOP 10 s / 1 min, SESSION 10 s,
//! each COUNT/SUM/MIN/MAX/AVG per key) over a deterministic Parquet file of events.
//!
//! Prints `BENCH <name> <value> <unit>` lines on stdout; progress goes to stderr.
//! `scripts/bench-windows.sh` runs it in release, one process per figure, beside DuckDB.
//!
//! Usage: `windows [generate | FIGURE...]`, where FIGURE is `live_tumble`, `live_hop`,
//! `live_session`, `recompute_tumble`, `recompute_hop`, `recompute_session`,
//! `state_bytes_per_window` or `state_bytes_per_session`. `generate` writes the data file
//! (or keeps it if it exists with the same parameters); with no argument (plain `cargo bench`)
//! it generates and runs every figure. A figure that fails or panics prints `BENCH <name> unavailable (<reason>)` and the
//! others still run.
//!
//! Environment: `BENCH_EVENTS` (default 10,000,000), `BENCH_DATA` (the Parquet file; default
//! `${RUNNEL_CACHE:-$HOME/.cache/runnel}/bench-windows/events-v1-<BENCH_EVENTS>.parquet`),
//! `BENCH_RUNS` (best of, default 3), `BENCH_BATCH_ROWS` (rows per batch fed to the live
//! operator, default 8192).
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::{
    AsArray, Float64Array, Int64Array, RecordBatch, RecordBatchReader, StringArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use runnel_engine::{JobPlan, OperatorOptions, WindowOperator};
use runnel_testkit::random::SplitMix64;

/// Bump when the generator changes, so that cached files are rewritten.
const GENERATOR_VERSION: u32 = 1;
const SEED: u64 = 0x5eed_0f2e_77e1;
/// 2023-11-14T22:14:00Z, a whole minute.
const START_MS: i64 = 1_700_000_040_000;
const EVENTS_PER_SECOND: i64 = 5_000;
const KEYS: u64 = 10_000;
const SHIFTED_PERCENT: u64 = 5;
const MAX_SHIFT_MS: u64 = 5_000;
const ROW_GROUP_ROWS: usize = 1_000_000;
const WRITE_BATCH_ROWS: usize = 100_000;
/// The watermark lag of every live job; equal to `MAX_SHIFT_MS`, so no event is late.
const MAX_OUT_OF_ORDERNESS: Duration = Duration::from_secs(5);
/// Parquet key-value metadata that records the generator's parameters.
const PARAMS_KEY: &str = "runnel.bench.windows.params";

const FIGURES: [&str; 8] = [
    "live_tumble",
    "live_hop",
    "live_session",
    "recompute_tumble",
    "recompute_hop",
    "recompute_session",
    "state_bytes_per_window",
    "state_bytes_per_session",
];

#[derive(Debug, Clone, Copy)]
enum Job {
    Tumble,
    Hop,
    Session,
}

impl Job {
    fn from_name(name: &str) -> Option<Job> {
        match name {
            "tumble" => Some(Job::Tumble),
            "hop" => Some(Job::Hop),
            "session" => Some(Job::Session),
            _ => None,
        }
    }

    fn sql(self) -> String {
        let window = match self {
            Job::Tumble => "TUMBLE(events, event_time, INTERVAL '1' MINUTE)",
            Job::Hop => "HOP(events, event_time, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)",
            Job::Session => "SESSION(events, event_time, INTERVAL '10' SECOND)",
        };
        format!(
            "SELECT key, window_start, window_end, COUNT(*) AS n, SUM(value) AS total, \
             MIN(value) AS lo, MAX(value) AS hi, AVG(value) AS mean\n\
             FROM {window}\n\
             GROUP BY key, window_start, window_end"
        )
    }
}

/// What the parameters of the run are.
struct Settings {
    events: usize,
    data: PathBuf,
    runs: usize,
    batch_rows: usize,
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => value
            .replace('_', "")
            .parse()
            .with_context(|| format!("parse {name}={value} as a count")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let events = env_usize("BENCH_EVENTS", 10_000_000)?;
        let data = match std::env::var_os("BENCH_DATA") {
            Some(path) => PathBuf::from(path),
            None => {
                let cache = match std::env::var_os("RUNNEL_CACHE") {
                    Some(cache) => PathBuf::from(cache),
                    None => PathBuf::from(
                        std::env::var_os("HOME").context("read HOME for the default cache")?,
                    )
                    .join(".cache/runnel"),
                };
                cache
                    .join("bench-windows")
                    .join(format!("events-v{GENERATOR_VERSION}-{events}.parquet"))
            }
        };
        Ok(Settings {
            events,
            data,
            runs: env_usize("BENCH_RUNS", 3)?.max(1),
            batch_rows: env_usize("BENCH_BATCH_ROWS", 8192)?.max(1),
        })
    }
}

fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("event_time", DataType::Int64, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
    ]))
}

fn generator_params(events: usize) -> String {
    format!(
        "v{GENERATOR_VERSION} events={events} seed={SEED:#x} start_ms={START_MS} \
         per_second={EVENTS_PER_SECOND} keys={KEYS} shifted={SHIFTED_PERCENT}% \
         max_shift_ms={MAX_SHIFT_MS} row_group_rows={ROW_GROUP_ROWS} compression=zstd(1)"
    )
}

/// Returns the generator parameters recorded in `path`, or `None` if there is no such file.
fn recorded_params(path: &Path) -> anyhow::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("open {}", path.display())),
    };
    let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(file) else {
        // A truncated or foreign file: regenerate it.
        return Ok(Some(String::new()));
    };
    let params = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|pair| pair.key == PARAMS_KEY))
        .and_then(|pair| pair.value.clone())
        .unwrap_or_default();
    Ok(Some(params))
}

/// Writes the events to `settings.data` unless a file with the same parameters is there.
fn ensure_data(settings: &Settings) -> anyhow::Result<()> {
    let params = generator_params(settings.events);
    if recorded_params(&settings.data)?.as_deref() == Some(params.as_str()) {
        eprintln!("==> reusing {} ({params})", settings.data.display());
        return Ok(());
    }
    eprintln!("==> generating {} ({params})", settings.data.display());
    let started = Instant::now();
    if let Some(dir) = settings.data.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // Written beside the target and renamed, so an interrupted run leaves no partial file.
    let partial = settings
        .data
        .with_extension(format!("parquet.partial-{}", std::process::id()));
    let file = File::create(&partial).with_context(|| format!("create {}", partial.display()))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_key_value_metadata(Some(vec![KeyValue::new(PARAMS_KEY.to_string(), params)]))
        .build();
    let schema = events_schema();
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(properties))
        .context("start the Parquet writer")?;
    let key_names: Vec<String> = (0..KEYS).map(|key| format!("k{key:05}")).collect();
    let mut rng = SplitMix64(SEED);
    let mut written = 0;
    while written < settings.events {
        let rows = WRITE_BATCH_ROWS.min(settings.events - written);
        let mut times = Vec::with_capacity(rows);
        let mut keys = Vec::with_capacity(rows);
        let mut values = Vec::with_capacity(rows);
        for event_idx in written..written + rows {
            // In order at EVENTS_PER_SECOND; a few events shifted back by 1..=MAX_SHIFT_MS.
            let base = START_MS + event_idx as i64 * 1000 / EVENTS_PER_SECOND;
            let key = rng.next_u64() % KEYS;
            let value = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 1000.0;
            let shift = if rng.next_u64() % 100 < SHIFTED_PERCENT {
                1 + rng.next_u64() % MAX_SHIFT_MS
            } else {
                0
            };
            times.push(base - shift as i64);
            keys.push(key_names[key as usize].as_str());
            values.push(value);
        }
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(times)),
                Arc::new(StringArray::from(keys)),
                Arc::new(Float64Array::from(values)),
            ],
        )?;
        writer.write(&batch).context("write events")?;
        written += rows;
    }
    writer.close().context("finish the Parquet file")?;
    std::fs::rename(&partial, &settings.data)
        .with_context(|| format!("rename {} into place", partial.display()))?;
    eprintln!(
        "==> wrote {} events in {:.1}s",
        settings.events,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Reads the whole file into memory as batches of `batch_rows`.
fn read_events(settings: &Settings) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
    let file = File::open(&settings.data)
        .with_context(|| format!("open {} (run `generate` first)", settings.data.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .context("read Parquet metadata")?
        .with_batch_size(settings.batch_rows)
        .build()
        .context("start the Parquet reader")?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .context("read events")?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    anyhow::ensure!(
        rows == settings.events,
        "{} holds {rows} events, expected {}",
        settings.data.display(),
        settings.events
    );
    Ok((schema, batches))
}

fn file_schema(path: &Path) -> anyhow::Result<SchemaRef> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).context("read Parquet metadata")?;
    Ok(Arc::clone(builder.schema()))
}

fn compile(job: Job, schema: SchemaRef) -> anyhow::Result<Arc<JobPlan>> {
    let plan = JobPlan::compile(
        &job.sql(),
        schema,
        "event_time",
        &runnel_engine::JobLimits::default(),
    )
    .context("compile the job")?;
    Ok(Arc::new(plan))
}

/// What came out of a run: enough to keep the work observable and to cross-check engines.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Tally {
    rows: usize,
    /// Sum of the `n` column: events times windows per event when nothing is late.
    n_sum: i64,
}

impl Tally {
    fn add(&mut self, batches: &[RecordBatch]) -> anyhow::Result<()> {
        for batch in batches {
            self.rows += batch.num_rows();
            let n = batch
                .column_by_name("n")
                .context("result has no `n` column")?;
            let n = n
                .as_primitive_opt::<Int64Type>()
                .context("`n` is not an int64")?;
            self.n_sum += arrow::compute::sum(n).unwrap_or(0);
        }
        Ok(())
    }
}

fn options() -> OperatorOptions {
    OperatorOptions {
        partitions: 1,
        max_out_of_orderness: MAX_OUT_OF_ORDERNESS,
        ..Default::default()
    }
}

/// Feeds every batch to a new operator; with `finish`, ends the input too.
fn feed(
    plan: &Arc<JobPlan>,
    batches: &[RecordBatch],
    finish: bool,
) -> anyhow::Result<(WindowOperator, Tally)> {
    let mut operator = WindowOperator::new(Arc::clone(plan), options())?;
    let mut tally = Tally::default();
    let mut late = 0;
    for batch in batches {
        let output = operator.process(0, batch, 0)?;
        anyhow::ensure!(
            output.errors.is_empty(),
            "event errors: {:?}",
            output.errors.first()
        );
        late += output
            .late_events
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>();
        tally.add(&output.results)?;
    }
    if finish {
        tally.add(&operator.finish()?.results)?;
    }
    anyhow::ensure!(
        late == 0,
        "{late} events were late; the generator should make none"
    );
    Ok((operator, tally))
}

/// Runs `run` `runs` times and returns the best time with its tally; all tallies must agree.
fn best_of(
    figure: &str,
    runs: usize,
    mut run: impl FnMut() -> anyhow::Result<Tally>,
) -> anyhow::Result<(Duration, Tally)> {
    let mut best: Option<(Duration, Tally)> = None;
    for run_idx in 0..runs {
        let started = Instant::now();
        let tally = run()?;
        let elapsed = started.elapsed();
        eprintln!(
            "    {figure} run {}/{runs}: {:.3}s, {} result rows, sum(n) = {}",
            run_idx + 1,
            elapsed.as_secs_f64(),
            tally.rows,
            tally.n_sum
        );
        if let Some((_, first)) = best {
            anyhow::ensure!(
                first == tally,
                "run {} gave {tally:?}, not {first:?}",
                run_idx + 1
            );
        }
        if best.is_none_or(|(fastest, _)| elapsed < fastest) {
            best = Some((elapsed, tally));
        }
    }
    best.context("no run")
}

fn events_per_second(events: usize, elapsed: Duration) -> String {
    format!("{:.0} events/s", events as f64 / elapsed.as_secs_f64())
}

fn live(settings: &Settings, job: Job, figure: &str) -> anyhow::Result<String> {
    let (schema, batches) = read_events(settings)?;
    let plan = compile(job, schema)?;
    let (elapsed, _) = best_of(figure, settings.runs, || {
        feed(&plan, &batches, true).map(|(_, tally)| tally)
    })?;
    Ok(events_per_second(settings.events, elapsed))
}

fn recompute(settings: &Settings, job: Job, figure: &str) -> anyhow::Result<String> {
    let plan = compile(job, file_schema(&settings.data)?)?;
    let path = settings
        .data
        .to_str()
        .context("the data path is not UTF-8")?
        .to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    let (elapsed, _) = best_of(figure, settings.runs, || {
        runtime.block_on(async {
            // Timed from here: registering reads the file's metadata, and the plan reads it.
            let context = SessionContext::new_with_config(runnel_engine::recompute_config());
            context
                .register_parquet("events", &path, ParquetReadOptions::default())
                .await
                .context("register the Parquet file")?;
            let results = runnel_engine::recompute(&plan, &context, "events").await?;
            let mut tally = Tally::default();
            tally.add(&results)?;
            Ok(tally)
        })
    })?;
    Ok(events_per_second(settings.events, elapsed))
}

/// Bytes per open (key, window) group, after `job` saw every event and before `finish` drops
/// the state: `state_bytes_per_window` for the tumbling job, `state_bytes_per_session` for
/// the session job.
fn state_bytes_per_window(settings: &Settings, job: Job) -> anyhow::Result<String> {
    let (schema, batches) = read_events(settings)?;
    let plan = compile(job, schema)?;
    let (operator, _) = feed(&plan, &batches, false)?;
    let (windows, groups) = operator.open_state();
    let bytes = operator.state_bytes();
    eprintln!("    state: {windows} open windows, {groups} groups, {bytes} bytes");
    anyhow::ensure!(groups > 0, "no open groups to measure");
    Ok(format!("{:.1} bytes", bytes as f64 / groups as f64))
}

fn run_figure(settings: &Settings, figure: &str) -> anyhow::Result<String> {
    if figure == "state_bytes_per_window" {
        return state_bytes_per_window(settings, Job::Tumble);
    }
    if figure == "state_bytes_per_session" {
        return state_bytes_per_window(settings, Job::Session);
    }
    let (mode, job) = figure
        .split_once('_')
        .and_then(|(mode, job)| Some((mode, Job::from_name(job)?)))
        .with_context(|| format!("unknown figure `{figure}`; known: {}", FIGURES.join(", ")))?;
    match mode {
        "live" => live(settings, job, figure),
        "recompute" => recompute(settings, job, figure),
        _ => anyhow::bail!("unknown figure `{figure}`; known: {}", FIGURES.join(", ")),
    }
}

/// One line, short enough to read beside the figures.
fn short_reason(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or("").trim();
    let mut short: String = line.chars().take(160).collect();
    if short.len() < line.len() {
        short.push_str("...");
    }
    short
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        format!("panic: {message}")
    } else if let Some(message) = payload.downcast_ref::<String>() {
        format!("panic: {message}")
    } else {
        "panic".to_string()
    }
}

/// Prints the figure's line, or why it is unavailable; never panics.
fn report(settings: &Settings, figure: &str) {
    eprintln!("==> {figure}");
    let line = match std::panic::catch_unwind(AssertUnwindSafe(|| run_figure(settings, figure))) {
        Ok(Ok(value)) => value,
        Ok(Err(error)) => {
            eprintln!("    {figure} failed: {error:#}");
            format!("unavailable ({})", short_reason(&format!("{error:#}")))
        }
        Err(payload) => format!("unavailable ({})", short_reason(&panic_message(&*payload))),
    };
    println!("BENCH {figure} {line}");
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; flags are ignored, the rest are commands.
    let commands: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .collect();
    let settings = Settings::from_env()?;
    if commands.is_empty() {
        ensure_data(&settings)?;
        for figure in FIGURES {
            report(&settings, figure);
        }
        return Ok(());
    }
    for command in &commands {
        if command == "generate" {
            ensure_data(&settings)?;
        } else {
            report(&settings, command);
        }
    }
    Ok(())
}
