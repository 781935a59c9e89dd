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
    JobPlan, OperatorOptions, OperatorOutput, PreparedBatch, ShardedOperator, TableSource,
    TemporalJoin,
};

use crate::input::{BatchIter, FileFormat, declared_schema, open_input};

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
    /// (the table's changelog, declared with `[[tables]]`, is read whole before the stream).
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

/// `results.jsonl` -> `results.late.jsonl`.
fn late_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let extension = out
        .extension()
        .map(|extension| extension.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.late.{extension}"))
}

/// The files `--input` names: the stream's, and a joined table's changelog.
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
                    bail!("--input names the table `{table}` twice");
                }
            } else if is(&name, stream) {
                if stream_file.replace(path).is_some() {
                    bail!("--input gives the stream `{stream}` twice");
                }
            } else {
                let name = name.unwrap_or_default();
                let reads = match table {
                    Some(table) => format!("the stream `{stream}` and the table `{table}`"),
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
            bail!(
                "the job joins the table `{table}`: give its changelog with --input {table}=FILE"
            );
        }
        Ok(Inputs {
            stream: stream_file,
            table: table_file,
        })
    }
}

/// A joined table's changelog, read whole.
struct Changelog {
    source: TableSource,
    path: PathBuf,
    batches: Vec<RecordBatch>,
}

/// Reads the changelog of `table` from `path`, with the schema its stream declares (or the
/// Parquet file's own).
fn read_changelog(
    config: &Config,
    table: &str,
    path: &Path,
    batch_size: usize,
) -> anyhow::Result<Changelog> {
    let (table_config, stream, key) = config.table(table).ok_or_else(|| {
        anyhow::anyhow!(
            "the job joins `{table}`, which the config does not declare: add [[tables]] name = \"{table}\", stream = \"<its changelog stream>\""
        )
    })?;
    let format = FileFormat::of(path)?;
    let declared = (format != FileFormat::Parquet).then(|| declared_schema(stream));
    let (schema, batches) = open_input(path, format, declared, &stream.event_time, batch_size)?;
    let batches = batches
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("read {}", path.display()))?;
    Ok(Changelog {
        source: TableSource {
            name: table_config.name.clone(),
            schema,
            key: key.to_string(),
            event_time: stream.event_time.clone(),
            tombstone: table_config.tombstone.clone(),
        },
        path: path.to_path_buf(),
        batches,
    })
}

/// Runs `runnel run`.
pub(crate) fn run(args: RunArgs, config: &Config) -> anyhow::Result<()> {
    let sql = std::fs::read_to_string(&args.sql)
        .with_context(|| format!("read {}", args.sql.display()))?;
    let (stream, time_column) =
        JobPlan::source_of(&sql).with_context(|| format!("check {}", args.sql.display()))?;
    let table = JobPlan::table_of(&sql).with_context(|| format!("check {}", args.sql.display()))?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let inputs = Inputs::of(&args.input, &stream, table.as_deref())?;
    let input_format = FileFormat::of(&inputs.stream)?;
    let output_format =
        FileFormat::of_one_of(&args.out, &[FileFormat::Parquet, FileFormat::Jsonl])?;
    let declared = config
        .stream(&stream)
        .filter(|_| input_format != FileFormat::Parquet);
    let (schema, batches) = open_input(
        &inputs.stream,
        input_format,
        declared.map(declared_schema),
        &time_column,
        args.batch_size,
    )?;
    let event_time = declared.map_or(time_column.as_str(), |stream| stream.event_time.as_str());
    let changelog = inputs
        .table
        .as_ref()
        .map(|(table, path)| read_changelog(config, table, path, args.batch_size))
        .transpose()?;
    let tables: Vec<TableSource> = changelog.iter().map(|log| log.source.clone()).collect();
    let plan = Arc::new(
        JobPlan::compile_with_tables(
            &sql,
            schema,
            event_time,
            &tables,
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
            changelog,
            output_format,
        );
    }
    // A join job: the table's changelog goes into the join whole, before the stream, so
    // every version is there when the stream's rows ask (none is late, whatever the file's
    // order; of rows at one time, the later in the file wins), and stream rows are never
    // late to the join: what is late is the window operator's to say, as for any job.
    let mut table_state = None;
    let join = match (&changelog, plan.join()) {
        (Some(changelog), Some(join_plan)) => {
            let stream_time = join_plan
                .stream_schema()
                .index_of(plan.event_time())
                .context("the event time among the stream's columns")?;
            let mut join = TemporalJoin::new(join_plan.temporal_join_spec(
                stream_time,
                1,
                Duration::MAX,
                Duration::MAX,
            ))?;
            let mut skipped = 0;
            for batch in &changelog.batches {
                skipped += join.process_table(0, batch)?.errors.len();
            }
            if skipped > 0 {
                tracing::warn!(
                    rows = skipped,
                    file = %changelog.path.display(),
                    "changelog rows without an event time left out"
                );
            }
            join.finish()?;
            table_state = Some((join.table_versions(), join.state_bytes()));
            Some(join)
        }
        _ => None,
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
    let late_out = late_path(&args.out);
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
    let preparer = std::thread::spawn(move || {
        let mut join = join;
        let mut prepare = |batch: RecordBatch| -> anyhow::Result<Vec<PreparedBatch>> {
            let Some(join) = join.as_mut() else {
                return Ok(vec![PreparedBatch::new(&preparer_plan, 0, batch)?]);
            };
            let joined = join.process_stream(&batch)?;
            for error in &joined.errors {
                if preparer_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 20 {
                    tracing::warn!(reason = %error.reason, "event rejected by the join");
                }
            }
            joined
                .rows
                .iter()
                .map(|rows| {
                    Ok(PreparedBatch::new(
                        &preparer_plan,
                        0,
                        preparer_plan.joined_rows(rows)?,
                    )?)
                })
                .collect()
        };
        for batch in decoded {
            let prepared = match batch.map_err(anyhow::Error::from).and_then(&mut prepare) {
                Ok(prepared) => prepared.into_iter().map(Ok).collect(),
                Err(error) => vec![Err(error)],
            };
            for prepared in prepared {
                if prepared_sender.send(prepared).is_err() {
                    return;
                }
            }
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
    let table = match table_state {
        Some((versions, bytes)) => {
            format!("; the table held {versions} versions in {bytes} bytes")
        }
        None => String::new(),
    };
    print_summary(&format!(
        "{n_events} {rows}: {n_results} results to {}, {n_late} late to {}, {n_errors} rejected{table}",
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
/// job's rows come from the AS OF join of the stream's file with the whole changelog, of
/// changelog rows at one time the later in the file winning, as live.
fn run_recompute(
    args: &RunArgs,
    config: &Config,
    plan: &JobPlan,
    (input, input_format, batches): (&Path, FileFormat, BatchIter),
    changelog: Option<Changelog>,
    output_format: FileFormat,
) -> anyhow::Result<()> {
    let limit = config.batch_reprocessor.recompute_memory_limit;
    let context = runnel_engine::recompute_context(
        runnel_engine::recompute_config(),
        runnel_engine::recompute_runtime(usize::try_from(limit).unwrap_or(usize::MAX))?,
    );
    const STREAM: &str = "runnel_input";
    let runtime = tokio::runtime::Handle::current();
    if input_format == FileFormat::Parquet {
        let path = input.to_string_lossy().into_owned();
        runtime
            .block_on(context.register_parquet(
                STREAM,
                &path,
                datafusion::prelude::ParquetReadOptions::default(),
            ))
            .with_context(|| format!("register {}", input.display()))?;
    } else {
        let batches = batches
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("read {}", input.display()))?;
        let schema = plan
            .join()
            .map_or_else(|| plan.stream_schema(), |join| join.stream_schema());
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        context.register_table(STREAM, Arc::new(table))?;
    }
    let mut table = STREAM;
    if let Some(changelog) = changelog {
        const CHANGELOG: &str = "runnel_changelog";
        const ORDER: &str = "__runnel_order";
        const JOINED: &str = "runnel_joined";
        // Each changelog row with its place in the file, which orders rows of one time.
        let mut fields: Vec<Field> = changelog
            .source
            .schema
            .fields()
            .iter()
            .map(|field| field.as_ref().clone())
            .collect();
        fields.push(Field::new(ORDER, DataType::UInt64, false));
        let schema = Arc::new(Schema::new(fields));
        let mut first = 0u64;
        let mut numbered = Vec::with_capacity(changelog.batches.len());
        for batch in changelog.batches {
            let rows = batch.num_rows() as u64;
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(arrow::array::UInt64Array::from_iter_values(
                first..first + rows,
            )));
            first += rows;
            numbered.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
        }
        let log = datafusion::datasource::MemTable::try_new(schema, vec![numbered])?;
        context.register_table(CHANGELOG, Arc::new(log))?;
        runtime
            .block_on(runnel_engine::register_joined(
                plan, &context, STREAM, CHANGELOG, ORDER, JOINED,
            ))
            .with_context(|| format!("join {}", changelog.path.display()))?;
        table = JOINED;
    }
    let results = runtime
        .block_on(runnel_engine::recompute(plan, &context, table))
        .context("recompute the job")?;
    let mut results_file = OutputFile::create(&args.out, output_format, plan.result_schema())?;
    results_file.write(&results)?;
    results_file.finish()?;
    print_summary(&format!(
        "{} results to {}",
        results.iter().map(RecordBatch::num_rows).sum::<usize>(),
        args.out.display()
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
            late_path(Path::new("out/results.jsonl")),
            Path::new("out/results.late.jsonl")
        );
        assert_eq!(
            late_path(Path::new("r.parquet")),
            Path::new("r.late.parquet")
        );
    }
}
