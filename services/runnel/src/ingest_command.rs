//! `runnel ingest`: sends a file of events to the ingest service over gRPC.
//!
//! JSONL lines go as they are; CSV and Parquet rows are converted to JSON objects (Arrow
//! readers, then the Arrow JSON writer, timestamps as epoch milliseconds). Batches are
//! unary `Ingest` calls, `--concurrency` of them in flight; a RESOURCE_EXHAUSTED answer is
//! retried after the service's `retry-after-ms` hint. A progress bar runs on stderr when it
//! is a terminal; the summary (`accepted N, rejected M` and the first rejection reasons)
//! goes to stdout.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use runnel_config::{Config, StreamConfig};
use runnel_ingest::proto::ingest_client::IngestClient;
use runnel_ingest::proto::{IngestRequest, IngestResponse, JsonEvents, ingest_request::Events};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{ClientArgs, Connection, ServiceEndpoint, connect};

/// How many rejection reasons the summary shows.
const SHOWN_REJECTIONS: usize = 5;

/// Arguments of `runnel ingest`.
#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// The stream to ingest into, as declared in the service's config.
    #[arg(long)]
    stream: String,
    /// Events: `.jsonl` (one JSON object per line, sent as is), `.csv` (with a header) or
    /// `.parquet`. CSV columns take the stream's declared types when this config declares
    /// the stream, and are inferred otherwise.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
    /// Events per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Requests in flight at once. Above 1, batches may land out of file order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Per request: if any event of a batch is rejected, append none of that batch.
    #[arg(long)]
    all_or_nothing: bool,
}

/// The formats `runnel ingest` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl FileFormat {
    fn of(path: &Path) -> anyhow::Result<FileFormat> {
        let extension = path
            .extension()
            .and_then(|extension| extension.to_str())
            .map(str::to_ascii_lowercase);
        Ok(match extension.as_deref() {
            Some("jsonl" | "ndjson" | "json") => FileFormat::Jsonl,
            Some("csv") => FileFormat::Csv,
            Some("parquet") => FileFormat::Parquet,
            _ => bail!(
                "{}: cannot tell the format from the file name; use .jsonl, .csv or .parquet",
                path.display()
            ),
        })
    }

    /// What a position in the file is called in messages.
    fn position_name(self) -> &'static str {
        match self {
            FileFormat::Jsonl => "line",
            FileFormat::Csv | FileFormat::Parquet => "row",
        }
    }
}

/// A batch of events read from the file.
#[derive(Debug)]
struct FileBatch {
    events: Vec<Bytes>,
    /// Per event, its line (JSONL) or row (CSV, Parquet) in the file, from 1.
    positions: Vec<u64>,
}

/// What the service answered, added up.
#[derive(Debug, Default)]
struct Summary {
    accepted: u64,
    rejected: u64,
    aborted_batches: u64,
    /// (file position, reason) of the first rejections, in file order.
    rejections: Vec<(u64, String)>,
}

/// Runs `runnel ingest`.
pub(crate) async fn run(args: IngestArgs, config: &Config) -> anyhow::Result<()> {
    let format = FileFormat::of(&args.file)?;
    let connection = connect(
        &ServiceEndpoint {
            name: "ingest",
            listen: &config.ingest.listen,
            auth_token: config.ingest.auth_token.as_deref(),
            tls_cert: config.ingest.tls_cert.as_deref(),
        },
        &args.client,
    )
    .await?;
    let client = IngestClient::new(connection).max_decoding_message_size(usize::MAX);

    let declared = config.stream(&args.stream).cloned();
    let total = count_events(&args.file, format)
        .with_context(|| format!("read {}", args.file.display()))?;
    let progress = progress_bar(total);
    // Requests stay well under the request limit the service most likely has.
    let max_batch_bytes = config.ingest.max_request_bytes / 2;
    let (batches_tx, mut batches_rx) = mpsc::channel::<FileBatch>(args.concurrency as usize + 1);
    let reader = {
        let path = args.file.clone();
        let batch_size = args.batch_size as usize;
        tokio::task::spawn_blocking(move || {
            read_batches(
                &path,
                format,
                declared.as_ref(),
                batch_size,
                max_batch_bytes,
                &batches_tx,
            )
        })
    };

    let started = Instant::now();
    let mut summary = Summary::default();
    let mut in_flight: JoinSet<anyhow::Result<(FileBatch, IngestResponse)>> = JoinSet::new();
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            batch = batches_rx.recv(), if reading && in_flight.len() < args.concurrency as usize => {
                match batch {
                    Some(batch) => {
                        let request = IngestRequest {
                            stream: args.stream.clone(),
                            all_or_nothing: args.all_or_nothing,
                            events: Some(Events::Json(JsonEvents { events: batch.events.clone() })),
                        };
                        let client = client.clone();
                        in_flight.spawn(async move {
                            let response = send_with_retries(client, request).await?;
                            Ok((batch, response))
                        });
                    }
                    None => reading = false,
                }
            }
            Some(joined) = in_flight.join_next() => {
                let (batch, response) = joined.context("request task failed")??;
                progress.inc(batch.events.len() as u64);
                summary.add(&batch, &response);
                progress.set_message(format!(
                    "accepted {}, rejected {}",
                    summary.accepted, summary.rejected
                ));
            }
        }
    }
    progress.finish_and_clear();
    reader
        .await
        .context("file reader task failed")?
        .with_context(|| format!("read {}", args.file.display()))?;
    summary.print(format, started.elapsed())
}

/// Sends one batch, retrying for as long as the service answers RESOURCE_EXHAUSTED.
async fn send_with_retries(
    mut client: IngestClient<Connection>,
    request: IngestRequest,
) -> anyhow::Result<IngestResponse> {
    loop {
        match client.ingest(request.clone()).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                let retry_after = status
                    .metadata()
                    .get(runnel_ingest::RETRY_AFTER_MS_METADATA)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_millis);
                tracing::debug!(
                    retry_after_ms = retry_after.as_millis() as u64,
                    "ingest service busy, retrying"
                );
                tokio::time::sleep(retry_after).await;
            }
            Err(status) => {
                bail!(
                    "ingest into `{}` failed: {} ({:?})",
                    request.stream,
                    status.message(),
                    status.code()
                )
            }
        }
    }
}

impl Summary {
    fn add(&mut self, batch: &FileBatch, response: &IngestResponse) {
        self.accepted += response.accepted;
        self.rejected += response.rejected;
        if response.aborted {
            self.aborted_batches += 1;
        }
        for rejection in &response.rejections {
            let position = batch
                .positions
                .get(rejection.index as usize)
                .copied()
                .unwrap_or_default();
            self.rejections.push((position, rejection.reason.clone()));
        }
        // Batches may complete out of order: keep the first ones in file order.
        self.rejections
            .sort_unstable_by_key(|(position, _)| *position);
        self.rejections.truncate(SHOWN_REJECTIONS);
    }

    fn print(&self, format: FileFormat, elapsed: Duration) -> anyhow::Result<()> {
        let mut out = String::new();
        out.push_str(&format!(
            "accepted {}, rejected {}",
            self.accepted, self.rejected
        ));
        if self.aborted_batches > 0 {
            out.push_str(&format!(
                " ({} batches not appended: all-or-nothing)",
                self.aborted_batches
            ));
        }
        out.push_str(&format!(" in {:.1} s\n", elapsed.as_secs_f64()));
        for (position, reason) in &self.rejections {
            out.push_str(&format!(
                "  {} {position}: {reason}\n",
                format.position_name()
            ));
        }
        if self.rejected > self.rejections.len() as u64 {
            out.push_str(&format!(
                "  ... and {} more (see the stream's dead-letter topic)\n",
                self.rejected - self.rejections.len() as u64
            ));
        }
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(out.as_bytes()) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(error) => Err(anyhow::Error::new(error).context("write to stdout")),
        }
    }
}

/// A progress bar of `total` events on stderr, hidden when stderr is not a terminal; `{msg}`
/// follows the counts.
pub(crate) fn progress_bar(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let progress = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} events ({per_sec}, eta {eta}) {msg}")
    {
        progress.set_style(style);
    }
    progress
}

/// Counts the events of a file: non-blank lines of JSONL, lines of CSV after the header,
/// rows of Parquet (from its metadata).
fn count_events(path: &Path, format: FileFormat) -> anyhow::Result<u64> {
    let file = File::open(path)?;
    if format == FileFormat::Parquet {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        return Ok(builder.metadata().file_metadata().num_rows().max(0) as u64);
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut n_lines = 0_u64;
    let mut line_has_content = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        for &byte in chunk {
            if byte == b'\n' {
                n_lines += u64::from(line_has_content);
                line_has_content = false;
            } else if !byte.is_ascii_whitespace() {
                line_has_content = true;
            }
        }
        let consumed = chunk.len();
        reader.consume(consumed);
    }
    n_lines += u64::from(line_has_content);
    Ok(match format {
        FileFormat::Csv => n_lines.saturating_sub(1),
        FileFormat::Jsonl | FileFormat::Parquet => n_lines,
    })
}

/// Reads the file into batches of JSON events and sends them to `batches`.
fn read_batches(
    path: &Path,
    format: FileFormat,
    declared: Option<&StreamConfig>,
    batch_size: usize,
    max_batch_bytes: usize,
    batches: &mpsc::Sender<FileBatch>,
) -> anyhow::Result<()> {
    let mut batcher = Batcher::new(batch_size, max_batch_bytes, batches);
    match format {
        FileFormat::Jsonl => {
            let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
            let mut line = Vec::new();
            let mut line_number = 0;
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                line_number += 1;
                let trimmed = line.trim_ascii();
                if !trimmed.is_empty()
                    && !batcher.push(Bytes::copy_from_slice(trimmed), line_number)
                {
                    return Ok(());
                }
            }
        }
        FileFormat::Csv | FileFormat::Parquet => {
            let mut rows = 0_u64;
            for record_batch in arrow_batches(path, format, declared, batch_size)? {
                let record_batch = record_batch?;
                for event in to_json_lines(&record_batch)? {
                    rows += 1;
                    if !batcher.push(event, rows) {
                        return Ok(());
                    }
                }
            }
        }
    }
    batcher.flush();
    Ok(())
}

/// Cuts events into batches by count and bytes.
struct Batcher<'a> {
    batch_size: usize,
    max_batch_bytes: usize,
    current: FileBatch,
    current_bytes: usize,
    out: &'a mpsc::Sender<FileBatch>,
}

impl<'a> Batcher<'a> {
    fn new(batch_size: usize, max_batch_bytes: usize, out: &'a mpsc::Sender<FileBatch>) -> Self {
        Self {
            batch_size,
            max_batch_bytes,
            current: FileBatch {
                events: Vec::with_capacity(batch_size),
                positions: Vec::with_capacity(batch_size),
            },
            current_bytes: 0,
            out,
        }
    }

    /// Adds an event; returns false once the receiver is gone (the sender stopped).
    fn push(&mut self, event: Bytes, position: u64) -> bool {
        if !self.current.events.is_empty()
            && self.current_bytes + event.len() > self.max_batch_bytes
            && !self.flush()
        {
            return false;
        }
        self.current_bytes += event.len() + 8;
        self.current.events.push(event);
        self.current.positions.push(position);
        if self.current.events.len() >= self.batch_size {
            return self.flush();
        }
        true
    }

    fn flush(&mut self) -> bool {
        if self.current.events.is_empty() {
            return true;
        }
        let batch = std::mem::replace(
            &mut self.current,
            FileBatch {
                events: Vec::with_capacity(self.batch_size),
                positions: Vec::with_capacity(self.batch_size),
            },
        );
        self.current_bytes = 0;
        self.out.blocking_send(batch).is_ok()
    }
}

/// Record batches read from a CSV or Parquet file.
type BatchIter = Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>>;

fn arrow_batches(
    path: &Path,
    format: FileFormat,
    declared: Option<&StreamConfig>,
    batch_size: usize,
) -> anyhow::Result<BatchIter> {
    let mut file = File::open(path)?;
    if format == FileFormat::Parquet {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .context("read Parquet metadata")?
            .with_batch_size(batch_size)
            .build()?;
        return Ok(Box::new(reader));
    }
    let schema: SchemaRef = match declared {
        Some(stream) => csv_schema_of(path, stream)?,
        None => {
            let (schema, _) = arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(&mut file, Some(1000))
                .context("infer the CSV schema")?;
            file = File::open(path)?;
            Arc::new(schema)
        }
    };
    let reader = arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .with_batch_size(batch_size)
        .build(file)?;
    Ok(Box::new(reader))
}

/// The schema to read a CSV file of a declared stream with: the header's columns, typed as
/// declared where the stream declares them, text otherwise.
fn csv_schema_of(path: &Path, stream: &StreamConfig) -> anyhow::Result<SchemaRef> {
    let mut header = String::new();
    BufReader::new(File::open(path)?).read_line(&mut header)?;
    let fields: Vec<Field> = split_csv_header(header.trim_end_matches(['\r', '\n']))
        .into_iter()
        .map(|name| {
            let data_type = stream
                .schema
                .iter()
                .find(|field| field.name == name)
                .map_or(DataType::Utf8, |field| {
                    runnel_events::arrow_type(field.field_type)
                });
            Field::new(name, data_type, true)
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// Splits a CSV header line into column names (quotes removed).
fn split_csv_header(line: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => names.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    names.push(current);
    names
}

/// Writes each row of `batch` as one JSON object, timestamps as epoch milliseconds.
fn to_json_lines(batch: &RecordBatch) -> anyhow::Result<Vec<Bytes>> {
    let batch = timestamps_as_millis(batch)?;
    let mut buffer = Vec::with_capacity(batch.num_rows() * 128);
    let mut writer = arrow::json::LineDelimitedWriter::new(&mut buffer);
    writer.write(&batch).context("write rows as JSON")?;
    writer.finish().context("write rows as JSON")?;
    let buffer = Bytes::from(buffer);
    let mut events = Vec::with_capacity(batch.num_rows());
    let mut start = 0;
    for (idx, &byte) in buffer.iter().enumerate() {
        if byte == b'\n' {
            events.push(buffer.slice(start..idx));
            start = idx + 1;
        }
    }
    if start < buffer.len() {
        events.push(buffer.slice(start..));
    }
    Ok(events)
}

/// Replaces every timestamp column by its epoch milliseconds (Int64), which the service
/// reads whatever the time zone or unit.
fn timestamps_as_millis(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|field| matches!(field.data_type(), DataType::Timestamp(..)))
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(_, zone) => {
                let millis = cast(
                    column,
                    &DataType::Timestamp(TimeUnit::Millisecond, zone.clone()),
                )?;
                columns.push(cast(&millis, &DataType::Int64)?);
                fields.push(Field::new(field.name(), DataType::Int64, true));
            }
            _ => {
                columns.push(Arc::clone(column));
                fields.push(field.as_ref().clone());
            }
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray, TimestampMicrosecondArray};

    use super::*;

    #[test]
    fn rows_become_json_objects_with_millisecond_times() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "event_time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())),
                true,
            ),
            Field::new("user_id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![1_500_000, 2_000_999])
                        .with_timezone("+02:00"),
                ),
                Arc::new(StringArray::from(vec![Some("a\"b"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .expect("batch");
        let lines = to_json_lines(&batch).expect("json");
        assert_eq!(
            lines,
            [
                Bytes::from_static(br#"{"event_time":1500,"user_id":"a\"b","n":1}"#),
                Bytes::from_static(br#"{"event_time":2000,"n":2}"#),
            ]
        );
    }

    #[test]
    fn csv_headers_split_with_quotes() {
        assert_eq!(
            split_csv_header(r#"a,"b,c","d""e",f"#),
            ["a", "b,c", "d\"e", "f"]
        );
    }
}
