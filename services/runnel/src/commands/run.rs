//! `runnel run`: runs one job over one file, as if its events arrived on the log in file
//! order, and writes the results (and late events) to files.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use clap::{Args, ValueEnum};
use parquet::arrow::ArrowWriter;
use runnel_config::Config;
use runnel_engine::{
    JobPlan, JoinSources, LiveJoin, LiveJoinOptions, OperatorOptions, OperatorOutput,
    PreparedBatch, ShardedOperator, StreamSource, TableSource, WindowJoin, WindowJoinPlan,
    WindowOperator,
};

use crate::input::{BatchIter, FileFormat, declared_schema, open_input, read_parquet_whole};

/// Arguments of `runnel run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// File holding the job's SQL, e.g. `SELECT ... FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) ...`.
    #[arg(long, value_name = "FILE")]
    sql: PathBuf,
    /// Events: `.parquet`, `.jsonl` (one JSON object per line) or `.csv` (with a header).
    /// The schema is the stream's, when the config declares the stream the SQL reads;
    /// otherwise the Parquet schema, or inferred from the first 1000 rows. A job that joins
    /// a table takes two, by name: `--input clicks=clicks.jsonl --input users=users.jsonl`
    /// (a table's changelog, declared with `[[tables]]`, or the other stream of an interval
    /// join, is read whole before the stream). A join of two windowed aggregates takes each
    /// side's stream by name, read a batch of each in turn.
    #[arg(long, value_name = "[NAME=]FILE", required = true)]
    input: Vec<String>,
    /// Results: `.parquet` or `.jsonl`. Late events go beside it, in `<name>.late.<ext>`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// `live`: events stream through the window operator in file order, with watermarks,
    /// versions and late events. `recompute`: a DataFusion batch plan over the whole file,
    /// every event counted, no lateness cut-off (no late-events file), in at most
    /// `batch-reprocessor.recompute-memory-limit` bytes (then spilling to $TMPDIR).
    #[arg(long, value_enum, default_value = "live")]
    mode: RunMode,
    /// How far behind the largest event time seen the watermark stays, e.g. `5s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    max_out_of_orderness: Duration,
    /// How long after a window fires late events still update it, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    allowed_lateness: Duration,
    /// Emit early, non-final results each time the watermark crosses a multiple of this.
    #[arg(long, value_parser = humantime::parse_duration)]
    early_emit: Option<Duration>,
    /// Events per batch fed to the operator (results do not depend on it).
    #[arg(long, default_value_t = 8192)]
    batch_size: usize,
    /// `live`: operator shards, each a thread owning a share of the keys, with one watermark
    /// (results do not depend on it). Default: one per core but one, which the threads that
    /// read and prepare the input and write the results take.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
}

/// How `runnel run` evaluates the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RunMode {
    /// The streaming window operator, in file order.
    Live,
    /// The batch plan over the whole file.
    Recompute,
}

/// A results or late-events file being written.
enum OutputFile {
    Parquet(ArrowWriter<File>),
    Jsonl(arrow::json::LineDelimitedWriter<BufWriter<File>>),
}

impl OutputFile {
    fn create(path: &Path, format: FileFormat, schema: SchemaRef) -> anyhow::Result<OutputFile> {
        let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
        Ok(match format {
            FileFormat::Parquet => OutputFile::Parquet(
                ArrowWriter::try_new(file, schema, None)
                    .with_context(|| format!("start Parquet file {}", path.display()))?,
            ),
            _ => OutputFile::Jsonl(arrow::json::LineDelimitedWriter::new(BufWriter::new(file))),
        })
    }

    fn write(&mut self, batches: &[RecordBatch]) -> anyhow::Result<()> {
        for batch in batches {
            match self {
                OutputFile::Parquet(writer) => writer.write(batch)?,
                OutputFile::Jsonl(writer) => writer.write(&times_as_rfc3339(batch)?)?,
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            OutputFile::Parquet(writer) => {
                writer.close()?;
            }
            OutputFile::Jsonl(mut writer) => writer.finish()?,
        }
        Ok(())
    }
}

/// Replaces every timestamp column by its text in RFC 3339 with `Z` (runnel's one format
/// for times, `runnel_time::format_millis`), which Arrow's JSON writer would print
/// without a zone.
fn times_as_rfc3339(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let millis = crate::input::timestamps_as_millis(batch)?;
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(millis.columns()) {
        if !matches!(field.data_type(), DataType::Timestamp(..)) {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
            continue;
        }
        let text: arrow::array::StringArray = column
            .as_primitive::<arrow::datatypes::Int64Type>()
            .iter()
            .map(|millis| millis.map(runnel_time::format_millis))
            .collect();
        fields.push(Field::new(
            field.name(),
            DataType::Utf8,
            field.is_nullable(),
        ));
        columns.push(Arc::new(text) as arrow::array::ArrayRef);
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// `results.jsonl` -> `results.late.jsonl`; with a stream (a window join's sides, whose late
/// events differ in their columns), `results.late.<stream>.jsonl`.
fn late_path(out: &Path, stream: Option<&str>) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let extension = out
        .extension()
        .map(|extension| extension.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stream {
        Some(stream) => out.with_file_name(format!("{stem}.late.{stream}.{extension}")),
        None => out.with_file_name(format!("{stem}.late.{extension}")),
    }
}

/// The files `--input` names: the stream's, and the joined table's changelog or stream's.
struct Inputs {
    stream: PathBuf,
    table: Option<(String, PathBuf)>,
}

impl Inputs {
    /// Sorts `--input [NAME=]FILE` out for a job reading `stream` and joining `table`.
    fn of(args: &[String], stream: &str, table: Option<&str>) -> anyhow::Result<Inputs> {
        let mut named: Vec<(Option<String>, PathBuf)> = Vec::new();
        for arg in args {
            // A path may hold `=`; a name may not hold `/`.
            match arg.split_once('=') {
                Some((name, path)) if !name.is_empty() && !name.contains('/') => {
                    named.push((Some(name.to_string()), PathBuf::from(path)));
                }
                _ => named.push((None, PathBuf::from(arg))),
            }
        }
        let is = |name: &Option<String>, of: &str| {
            name.as_deref()
                .is_none_or(|name| name.eq_ignore_ascii_case(of))
        };
        let mut stream_file = None;
        let mut table_file = None;
        for (name, path) in named {
            if let Some(table) = table
                && name
                    .as_deref()
                    .is_some_and(|name| name.eq_ignore_ascii_case(table))
            {
                if table_file.replace((table.to_string(), path)).is_some() {
                    bail!("--input names `{table}` twice");
                }
            } else if is(&name, stream) {
                if stream_file.replace(path).is_some() {
                    bail!("--input gives the stream `{stream}` twice");
                }
            } else {
                let name = name.unwrap_or_default();
                let reads = match table {
                    Some(table) => format!("`{stream}` and `{table}`"),
                    None => format!("the stream `{stream}`"),
                };
                bail!("--input names `{name}`, but the job reads {reads}");
            }
        }
        let stream_file = stream_file
            .ok_or_else(|| anyhow::anyhow!("give the stream's events: --input {stream}=FILE"))?;
        if let Some(table) = table
            && table_file.is_none()
        {
            bail!("the job joins `{table}`: give its rows with --input {table}=FILE");
        }
        Ok(Inputs {
            stream: stream_file,
            table: table_file,
        })
    }
}

/// A stream's file as `runnel run` reads it: with the schema the config declares for the
/// stream (not for Parquet, which carries its own), else the file's own or one inferred;
/// and the stream's event time column (the declared one, else the SQL's).
fn read_stream(
    config: &Config,
    stream: &str,
    time_column: &str,
    path: &Path,
    batch_size: usize,
) -> anyhow::Result<(SchemaRef, String, FileFormat, BatchIter)> {
    let format = FileFormat::of(path)?;
    let declared = config
        .stream(stream)
        .filter(|_| format != FileFormat::Parquet);
    let (schema, batches) = open_input(
        path,
        format,
        declared.map(declared_schema),
        time_column,
        batch_size,
    )?;
    let event_time = declared.map_or(time_column, |stream| stream.event_time.as_str());
    Ok((schema, event_time.to_string(), format, batches))
}

/// Registers a file read by [`read_stream`] as the table `name` of a recompute: a Parquet
/// file where it is, any other read whole into memory with `schema`.
fn register_input(
    context: &datafusion::prelude::SessionContext,
    name: &str,
    (path, format, batches): (&Path, FileFormat, BatchIter),
    schema: SchemaRef,
) -> anyhow::Result<()> {
    if format == FileFormat::Parquet {
        let file = path.to_string_lossy().into_owned();
        tokio::runtime::Handle::current()
            .block_on(context.register_parquet(
                name,
                &file,
                datafusion::prelude::ParquetReadOptions::default(),
            ))
            .with_context(|| format!("register {}", path.display()))?;
    } else {
        let batches = batches
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("read {}", path.display()))?;
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        context.register_table(name, Arc::new(table))?;
    }
    Ok(())
}

/// The other input of a join job, read whole: a table's changelog, or a second stream.
struct Joined {
    sources: JoinSources,
    path: PathBuf,
    batches: Vec<RecordBatch>,
}

/// Reads the input `name` that a job joins from `path`: a table's changelog when the config
/// declares a table `name`, else a stream's events; with the schema its stream declares (or
/// the Parquet file's own, or one inferred).
fn read_joined(
    config: &Config,
    name: &str,
    path: &Path,
    batch_size: usize,
) -> anyhow::Result<Joined> {
    let format = FileFormat::of(path)?;
    let table = config.table(name);
    let Some(stream) = table
        .map(|(_, stream, _)| stream)
        .or_else(|| config.stream(name))
    else {
        bail!(
            "the job joins `{name}`, which the config declares neither as a table ([[tables]]) nor as a stream ([[streams]])"
        );
    };
    let (schema, batches) = if format == FileFormat::Parquet {
        read_parquet_whole(path, batch_size)?
    } else {
        let declared = declared_schema(stream);
        let (schema, batches) =
            open_input(path, format, Some(declared), &stream.event_time, batch_size)?;
        let batches = batches
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("read {}", path.display()))?;
        (schema, batches)
    };
    let mut sources = JoinSources::default();
    match table {
        Some((table_config, _, key)) => sources.tables.push(TableSource {
            name: table_config.name.clone(),
            schema,
            key: key.to_string(),
            event_time: stream.event_time.clone(),
            tombstone: table_config.tombstone.clone(),
        }),
        None => sources.streams.push(StreamSource {
            name: stream.name.clone(),
            schema,
            event_time: stream.event_time.clone(),
        }),
    }
    Ok(Joined {
        sources,
        path: path.to_path_buf(),
        batches,
    })
}

/// Runs `runnel run`.
pub(crate) fn run(args: RunArgs, config: &Config) -> anyhow::Result<()> {
    let sql = std::fs::read_to_string(&args.sql)
        .with_context(|| format!("read {}", args.sql.display()))?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if let Some(streams) =
        WindowJoinPlan::streams_of(&sql).with_context(|| format!("check {}", args.sql.display()))?
    {
        return run_window_join(&args, config, &sql, streams);
    }
    let (stream, time_column) =
        JobPlan::source_of(&sql).with_context(|| format!("check {}", args.sql.display()))?;
    let table =
        JobPlan::joined_of(&sql).with_context(|| format!("check {}", args.sql.display()))?;
    let inputs = Inputs::of(&args.input, &stream, table.as_deref())?;
    let output_format =
        FileFormat::of_one_of(&args.out, &[FileFormat::Parquet, FileFormat::Jsonl])?;
    let (schema, event_time, input_format, batches) = read_stream(
        config,
        &stream,
        &time_column,
        &inputs.stream,
        args.batch_size,
    )?;
    let joined = inputs
        .table
        .as_ref()
        .map(|(table, path)| read_joined(config, table, path, args.batch_size))
        .transpose()?;
    let plan = Arc::new(
        JobPlan::compile_joined(
            &sql,
            schema,
            &event_time,
            &joined
                .as_ref()
                .map_or_else(JoinSources::default, |joined| joined.sources.clone()),
            &runnel_jobs::job_limits(config),
        )
        .with_context(|| format!("compile {}", args.sql.display()))?,
    );
    if args.mode == RunMode::Recompute {
        return run_recompute(
            &args,
            config,
            &plan,
            (&inputs.stream, input_format, batches),
            joined,
            output_format,
        );
    }
    // A join job: the other input goes into the join whole, before the stream, so that all
    // of it is there when the stream's rows come. A table's changelog: every version, none
    // late whatever the file's order (of rows at one time, the later in the file wins), and
    // stream rows are never late to it. A second stream: its rows are all stored, then it
    // ends (the join's watermark is the stream's), each stream row is joined with them at
    // once and not stored, and a stream row is late to the join only when it is later than
    // the out-of-orderness and lateness allow, as for the windows.
    let mut table_state = None;
    let join = match &joined {
        Some(joined) => {
            let mut join = LiveJoin::new(
                Arc::clone(&plan),
                &LiveJoinOptions {
                    stream_partitions: 1,
                    other_partitions: 1,
                    table_out_of_orderness: Duration::MAX,
                    stream_out_of_orderness: Duration::MAX,
                    max_out_of_orderness: args.max_out_of_orderness,
                    allowed_lateness: args.allowed_lateness,
                },
            )?;
            join.expect_whole_other(&joined.batches)?;
            let mut skipped = 0;
            for batch in &joined.batches {
                skipped += join.other(0, batch)?.errors.len();
            }
            // The other input is whole: a table's watermark goes to the end of time; a second
            // stream's rows are all stored, and each stream row is joined with them at once.
            join.other_ended()?;
            if !joined.sources.tables.is_empty() {
                table_state = Some((join.other_rows(), join.state_bytes()));
            }
            if skipped > 0 {
                tracing::warn!(
                    rows = skipped,
                    file = %joined.path.display(),
                    "rows without an event time left out"
                );
            }
            Some(join)
        }
        None => None,
    };
    let options = OperatorOptions {
        partitions: 1,
        max_out_of_orderness: args.max_out_of_orderness,
        allowed_lateness: args.allowed_lateness,
        idle_timeout: None,
        early_emit_interval: args.early_emit,
    };
    let shards = match args.shards {
        Some(shards) => shards,
        // The reader and writer threads take about a core between them.
        None => std::thread::available_parallelism().map_or(1, |cores| cores.get().max(2) - 1),
    };
    let mut operator = ShardedOperator::new(Arc::clone(&plan), options, shards)?;
    let late_out = late_path(&args.out, None);
    let mut results_file = OutputFile::create(&args.out, output_format, plan.result_schema())?;
    let mut late_file = OutputFile::create(&late_out, output_format, operator.late_schema())?;
    // Four threads in a pipeline, a few batches apart: the file is read and decoded on one,
    // each batch prepared for the operator (event times, keys, arguments) on a second, the
    // operator runs on this one, and its results are encoded and written on a fourth.
    let (decoded_sender, decoded) = std::sync::mpsc::sync_channel(4);
    let reader = std::thread::spawn(move || {
        for batch in batches {
            if decoded_sender.send(batch).is_err() {
                break;
            }
        }
    });
    let (prepared_sender, prepared) = std::sync::mpsc::sync_channel(4);
    let preparer_plan = Arc::clone(&plan);
    let join_rejected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let preparer_rejected = Arc::clone(&join_rejected);
    let join_late = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let preparer_late = Arc::clone(&join_late);
    let preparer = std::thread::spawn(move || {
        let mut join = join;
        let prepare_joined = |rows: Vec<RecordBatch>| -> anyhow::Result<Vec<PreparedBatch>> {
            rows.into_iter()
                .map(|rows| Ok(PreparedBatch::new(&preparer_plan, 0, rows)?))
                .collect()
        };
        let mut prepare = |batch: RecordBatch| -> anyhow::Result<Vec<PreparedBatch>> {
            let Some(join) = join.as_mut() else {
                return Ok(vec![PreparedBatch::new(&preparer_plan, 0, batch)?]);
            };
            let out = join.stream(0, &batch)?;
            let (rows, rejected) = (out.rows, out.errors.len());
            let late = out.late_stream.iter().map(RecordBatch::num_rows).sum();
            if rejected > 0
                && preparer_rejected.fetch_add(rejected, std::sync::atomic::Ordering::Relaxed) < 20
            {
                tracing::warn!(
                    rows = rejected,
                    "events without an event time rejected by the join"
                );
            }
            preparer_late.fetch_add(late, std::sync::atomic::Ordering::Relaxed);
            prepare_joined(rows)
        };
        let send = |prepared: anyhow::Result<Vec<PreparedBatch>>| -> bool {
            let prepared: Vec<anyhow::Result<PreparedBatch>> = match prepared {
                Ok(prepared) => prepared.into_iter().map(Ok).collect(),
                Err(error) => vec![Err(error)],
            };
            prepared
                .into_iter()
                .all(|prepared| prepared_sender.send(prepared).is_ok())
        };
        for batch in decoded {
            if !send(batch.map_err(anyhow::Error::from).and_then(&mut prepare)) {
                return;
            }
        }
        // The stream's end: what the join still holds (an interval join's unmatched rows).
        if let Some(join) = join.as_mut() {
            send(
                join.finish()
                    .map_err(anyhow::Error::from)
                    .and_then(|out| prepare_joined(out.rows)),
            );
        }
    });
    let (output_sender, outputs) = std::sync::mpsc::sync_channel::<OperatorOutput>(4);
    let writer = std::thread::spawn(move || -> anyhow::Result<()> {
        for output in outputs {
            results_file.write(&output.results)?;
            late_file.write(&output.late_events)?;
        }
        results_file.finish()?;
        late_file.finish()
    });
    let (mut n_events, mut n_results, mut n_late, mut n_errors) = (0usize, 0usize, 0usize, 0usize);
    let mut write = |output: OperatorOutput, batch_start: usize| -> bool {
        n_results += output
            .results
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>();
        n_late += output
            .late_events
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>();
        for error in &output.errors {
            n_errors += 1;
            if n_errors <= 20 {
                tracing::warn!(row = batch_start + error.row, reason = %error.reason, "event rejected");
            }
        }
        // A writer that stopped has its error waiting at its join below.
        output_sender.send(output).is_ok()
    };
    let run = || -> anyhow::Result<()> {
        for batch in prepared {
            let batch = batch.with_context(|| {
                format!("read {} after {n_events} events", inputs.stream.display())
            })?;
            let rows = batch.num_rows();
            if !write(operator.process_prepared(batch, 0)?, n_events) {
                return Ok(());
            }
            n_events += rows;
        }
        write(operator.finish()?, n_events);
        Ok(())
    };
    let ran = run();
    // The writer ends when its channel closes.
    drop(output_sender);
    let written = writer
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the results writer panicked")));
    if reader.join().is_err() || preparer.join().is_err() {
        bail!("reading {} failed", inputs.stream.display());
    }
    ran?;
    written.with_context(|| format!("write {}", args.out.display()))?;
    let rows = if plan.join().is_some() {
        "joined rows"
    } else {
        "events"
    };
    let n_errors = n_errors + join_rejected.load(std::sync::atomic::Ordering::Relaxed);
    let join_late = match join_late.load(std::sync::atomic::Ordering::Relaxed) {
        0 => String::new(),
        late => format!(", {late} too late for the join (not counted)"),
    };
    let table = match table_state {
        Some((versions, bytes)) => {
            format!("; the table held {versions} versions in {bytes} bytes")
        }
        None => String::new(),
    };
    print_summary(&format!(
        "{n_events} {rows}: {n_results} results to {}, {n_late} late to {}, {n_errors} rejected{join_late}{table}",
        args.out.display(),
        late_out.display()
    ))
}

/// Prints what the run wrote, on stdout (logs at INFO are for `-v`).
fn print_summary(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{line}") {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(anyhow::Error::new(error).context("write to stdout")),
    }
}

/// `--mode recompute`: the batch plan over the whole file; every event counts. A join
/// job's rows come from the join of the stream's file with the whole other file: AS OF a
/// changelog (of rows at one time the later in the file winning, as live), or within an
/// interval of a second stream.
fn run_recompute(
    args: &RunArgs,
    config: &Config,
    plan: &JobPlan,
    (input, input_format, batches): (&Path, FileFormat, BatchIter),
    joined: Option<Joined>,
    output_format: FileFormat,
) -> anyhow::Result<()> {
    let context = recompute_context(config)?;
    const STREAM: &str = "runnel_input";
    let runtime = tokio::runtime::Handle::current();
    let schema = plan
        .join()
        .map_or_else(|| plan.stream_schema(), |join| join.stream_schema());
    register_input(&context, STREAM, (input, input_format, batches), schema)?;
    let mut table = STREAM;
    if let (Some(joined), Some(join_plan)) = (joined, plan.join()) {
        const RIGHT: &str = "runnel_joined_input";
        const ORDER: &str = "__runnel_order";
        const JOINED: &str = "runnel_joined";
        // Each row with its place in the file, which orders changelog rows of one time.
        let mut fields: Vec<Field> = join_plan
            .right_schema()
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        fields.push(Field::new(ORDER, DataType::UInt64, false));
        let schema = Arc::new(Schema::new(fields));
        let mut first = 0u64;
        let mut numbered = Vec::with_capacity(joined.batches.len());
        for batch in joined.batches {
            let rows = batch.num_rows() as u64;
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(arrow::array::UInt64Array::from_iter_values(
                first..first + rows,
            )));
            first += rows;
            numbered.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
        }
        let right = datafusion::datasource::MemTable::try_new(schema, vec![numbered])?;
        context.register_table(RIGHT, Arc::new(right))?;
        runtime
            .block_on(runnel_engine::register_joined(
                plan, &context, STREAM, RIGHT, ORDER, JOINED,
            ))
            .with_context(|| format!("join {}", joined.path.display()))?;
        table = JOINED;
    }
    let results = runtime
        .block_on(runnel_engine::recompute(plan, &context, table))
        .context("recompute the job")?;
    write_recomputed(&args.out, output_format, plan.result_schema(), &results)
}

/// A recompute's session: `batch-reprocessor.recompute-memory-limit` bytes, then spilling.
fn recompute_context(config: &Config) -> anyhow::Result<datafusion::prelude::SessionContext> {
    let limit = config.batch_reprocessor.recompute_memory_limit;
    Ok(runnel_engine::recompute_context(
        runnel_engine::recompute_config(),
        runnel_engine::recompute_runtime(usize::try_from(limit).unwrap_or(usize::MAX))?,
    ))
}

/// Writes a recompute's results to `out` and says how many.
fn write_recomputed(
    out: &Path,
    format: FileFormat,
    schema: SchemaRef,
    results: &[RecordBatch],
) -> anyhow::Result<()> {
    let mut results_file = OutputFile::create(out, format, schema)?;
    results_file.write(results)?;
    results_file.finish()?;
    print_summary(&format!(
        "{} results to {}",
        results.iter().map(RecordBatch::num_rows).sum::<usize>(),
        out.display()
    ))
}

/// `runnel run` of a join of two windowed aggregates: each side's stream through its own
/// window operator (live: a batch of each file in turn, both sides' results and watermarks
/// into the `WindowJoin`), or each side recomputed and the two joined (recompute).
fn run_window_join(
    args: &RunArgs,
    config: &Config,
    sql: &str,
    streams: [(String, String); 2],
) -> anyhow::Result<()> {
    if args.early_emit.is_some() {
        bail!(
            "a join of two windowed aggregates joins final results only: --early-emit does not apply"
        );
    }
    if args.shards.is_some_and(|shards| shards != 1) {
        bail!(
            "a join of two windowed aggregates runs one operator per side: --shards does not apply"
        );
    }
    let inputs = Inputs::of(&args.input, &streams[0].0, Some(&streams[1].0))?;
    let Some((_, right_path)) = &inputs.table else {
        bail!(
            "give the stream `{}`'s events: --input {0}=FILE",
            streams[1].0
        );
    };
    let paths = [inputs.stream.as_path(), right_path.as_path()];
    let output_format =
        FileFormat::of_one_of(&args.out, &[FileFormat::Parquet, FileFormat::Jsonl])?;
    let [left, right] = [0, 1].map(|side| {
        read_stream(
            config,
            &streams[side].0,
            &streams[side].1,
            paths[side],
            args.batch_size,
        )
    });
    let (
        (left_schema, left_time, left_format, left_batches),
        (right_schema, right_time, right_format, right_batches),
    ) = (left?, right?);
    let plan = Arc::new(
        WindowJoinPlan::compile(
            sql,
            [
                (left_schema, left_time.as_str()),
                (right_schema, right_time.as_str()),
            ],
            &runnel_jobs::job_limits(config),
        )
        .with_context(|| format!("compile {}", args.sql.display()))?,
    );
    if args.mode == RunMode::Recompute {
        let context = recompute_context(config)?;
        const TABLES: [&str; 2] = ["runnel_left_input", "runnel_right_input"];
        register_input(
            &context,
            TABLES[0],
            (paths[0], left_format, left_batches),
            plan.left().stream_schema(),
        )?;
        register_input(
            &context,
            TABLES[1],
            (paths[1], right_format, right_batches),
            plan.right().stream_schema(),
        )?;
        let results = tokio::runtime::Handle::current()
            .block_on(runnel_engine::recompute_window_join(
                &plan, &context, TABLES,
            ))
            .context("recompute the job")?;
        return write_recomputed(&args.out, output_format, plan.result_schema(), &results);
    }
    let options = OperatorOptions {
        partitions: 1,
        max_out_of_orderness: args.max_out_of_orderness,
        allowed_lateness: args.allowed_lateness,
        idle_timeout: None,
        early_emit_interval: None,
    };
    let mut operators = [
        WindowOperator::new(Arc::clone(plan.left()), options)?,
        WindowOperator::new(Arc::clone(plan.right()), options)?,
    ];
    let mut join = WindowJoin::new(Arc::clone(&plan), args.allowed_lateness);
    let late_paths = [0, 1].map(|side| late_path(&args.out, Some(&streams[side].0)));
    let mut results_file = OutputFile::create(&args.out, output_format, plan.result_schema())?;
    let mut late_files = [
        OutputFile::create(&late_paths[0], output_format, operators[0].late_schema())?,
        OutputFile::create(&late_paths[1], output_format, operators[1].late_schema())?,
    ];
    let mut batches = [left_batches, right_batches];
    let (mut n_events, mut n_results, mut n_late, mut n_errors) =
        ([0usize; 2], 0usize, [0usize; 2], 0usize);
    let mut ended = [false, false];
    // One batch of each side in turn, as two logs read side by side; a side's end finishes
    // its operator (its watermark to the end of time).
    while ended != [true, true] {
        for side in 0..2 {
            if ended[side] {
                continue;
            }
            let (output, watermark) = match batches[side].next() {
                Some(batch) => {
                    let batch = batch.with_context(|| {
                        format!(
                            "read {} after {} events",
                            paths[side].display(),
                            n_events[side]
                        )
                    })?;
                    let start = n_events[side];
                    n_events[side] += batch.num_rows();
                    let output = operators[side].process(0, &batch, 0)?;
                    for error in &output.errors {
                        n_errors += 1;
                        if n_errors <= 20 {
                            tracing::warn!(file = %paths[side].display(), row = start + error.row, reason = %error.reason, "event rejected");
                        }
                    }
                    (output, operators[side].watermark())
                }
                None => {
                    ended[side] = true;
                    (operators[side].finish()?, i64::MAX)
                }
            };
            n_late[side] += output
                .late_events
                .iter()
                .map(RecordBatch::num_rows)
                .sum::<usize>();
            late_files[side].write(&output.late_events)?;
            join.results(side, &output.results)?;
            let joined = join.advance(side, watermark)?;
            n_results += joined.iter().map(RecordBatch::num_rows).sum::<usize>();
            results_file.write(&joined)?;
        }
    }
    results_file
        .finish()
        .with_context(|| format!("write {}", args.out.display()))?;
    for (file, path) in late_files.into_iter().zip(&late_paths) {
        file.finish()
            .with_context(|| format!("write {}", path.display()))?;
    }
    print_summary(&format!(
        "{} {} events and {} {} events: {n_results} results to {}, {} late to {}, {} late to {}, {n_errors} rejected",
        n_events[0],
        streams[0].0,
        n_events[1],
        streams[1].0,
        args.out.display(),
        n_late[0],
        late_paths[0].display(),
        n_late[1],
        late_paths[1].display(),
    ))
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::TimeUnit;

    use super::*;

    #[test]
    fn jsonl_times_are_rfc3339_with_a_zone() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new(
                "seen",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())),
                true,
            ),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(arrow::array::TimestampMillisecondArray::from(vec![
                    1_795_341_600_000,
                ])),
                Arc::new(
                    arrow::array::TimestampMicrosecondArray::from(vec![Some(1_500)])
                        .with_timezone("+02:00"),
                ),
                Arc::new(arrow::array::Int64Array::from(vec![3])),
            ],
        )
        .expect("batch");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("r.jsonl");
        let mut file =
            OutputFile::create(&path, FileFormat::Jsonl, batch.schema()).expect("create");
        file.write(&[batch]).expect("write");
        file.finish().expect("finish");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"window_start\":\"2026-11-22T10:00:00.000Z\",\"seen\":\"1970-01-01T00:00:00.001Z\",\"n\":3}\n"
        );
    }

    #[test]
    fn late_events_go_beside_the_results() {
        assert_eq!(
            late_path(Path::new("out/results.jsonl"), None),
            Path::new("out/results.late.jsonl")
        );
        assert_eq!(
            late_path(Path::new("r.parquet"), None),
            Path::new("r.late.parquet")
        );
        assert_eq!(
            late_path(Path::new("r.jsonl"), Some("payments")),
            Path::new("r.late.payments.jsonl")
        );
    }
}
