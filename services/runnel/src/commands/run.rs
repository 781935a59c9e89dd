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
use runnel_engine::{JobPlan, OperatorOptions, OperatorOutput, PreparedBatch, ShardedOperator};

use crate::input::{BatchIter, FileFormat, declared_schema, open_input};

/// Arguments of `runnel run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// File holding the job's SQL, e.g. `SELECT ... FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) ...`.
    #[arg(long, value_name = "FILE")]
    sql: PathBuf,
    /// Events: `.parquet`, `.jsonl` (one JSON object per line) or `.csv` (with a header).
    /// The schema is the stream's, when the config declares the stream the SQL reads;
    /// otherwise the Parquet schema, or inferred from the first 1000 rows.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
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

/// Runs `runnel run`.
pub(crate) fn run(args: RunArgs, config: &Config) -> anyhow::Result<()> {
    let sql = std::fs::read_to_string(&args.sql)
        .with_context(|| format!("read {}", args.sql.display()))?;
    let (stream, time_column) =
        JobPlan::source_of(&sql).with_context(|| format!("check {}", args.sql.display()))?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let input_format = FileFormat::of(&args.input)?;
    let output_format =
        FileFormat::of_one_of(&args.out, &[FileFormat::Parquet, FileFormat::Jsonl])?;
    let declared = config
        .stream(&stream)
        .filter(|_| input_format != FileFormat::Parquet);
    let (schema, batches) = open_input(
        &args.input,
        input_format,
        declared.map(declared_schema),
        &time_column,
        args.batch_size,
    )?;
    let event_time = declared.map_or(time_column.as_str(), |stream| stream.event_time.as_str());
    let plan = Arc::new(
        JobPlan::compile(&sql, schema, event_time, &runnel_jobs::job_limits(config))
            .with_context(|| format!("compile {}", args.sql.display()))?,
    );
    if args.mode == RunMode::Recompute {
        return run_recompute(&args, config, &plan, input_format, batches, output_format);
    }
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
    let preparer = std::thread::spawn(move || {
        for batch in decoded {
            let prepared = batch
                .map_err(anyhow::Error::from)
                .and_then(|batch| Ok(PreparedBatch::new(&preparer_plan, 0, batch)?));
            if prepared_sender.send(prepared).is_err() {
                break;
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
                format!("read {} after {n_events} events", args.input.display())
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
        bail!("reading {} failed", args.input.display());
    }
    ran?;
    written.with_context(|| format!("write {}", args.out.display()))?;
    print_summary(&format!(
        "{n_events} events: {n_results} results to {}, {n_late} late to {}, {n_errors} rejected",
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

/// `--mode recompute`: the batch plan over the whole file; every event counts.
fn run_recompute(
    args: &RunArgs,
    config: &Config,
    plan: &JobPlan,
    input_format: FileFormat,
    batches: BatchIter,
    output_format: FileFormat,
) -> anyhow::Result<()> {
    let limit = config.batch_reprocessor.recompute_memory_limit;
    let context = runnel_engine::recompute_context(
        runnel_engine::recompute_config(),
        runnel_engine::recompute_runtime(usize::try_from(limit).unwrap_or(usize::MAX))?,
    );
    const TABLE: &str = "runnel_input";
    let runtime = tokio::runtime::Handle::current();
    if input_format == FileFormat::Parquet {
        let path = args.input.to_string_lossy().into_owned();
        runtime
            .block_on(context.register_parquet(
                TABLE,
                &path,
                datafusion::prelude::ParquetReadOptions::default(),
            ))
            .with_context(|| format!("register {}", args.input.display()))?;
    } else {
        let batches = batches
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("read {}", args.input.display()))?;
        let table = datafusion::datasource::MemTable::try_new(plan.stream_schema(), vec![batches])?;
        context.register_table(TABLE, Arc::new(table))?;
    }
    let results = runtime
        .block_on(runnel_engine::recompute(plan, &context, TABLE))
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
