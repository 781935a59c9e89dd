//! The one file reader of the CLI: JSONL, CSV and Parquet files, told by their name
//! ([`FileFormat::of`]). `runnel run` reads a file as typed Arrow batches ([`open_input`]:
//! the stream's declared schema, or the one Arrow infers); `runnel ingest` reads it as JSON
//! events with their line or row ([`read_batches`]: JSONL lines as they are, CSV cells cast
//! to the column types, Parquet rows through the Arrow JSON writer, timestamps as epoch
//! milliseconds), a row that does not read rejected with its position while the rest goes
//! on.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchReader};
use arrow::compute::{cast, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use runnel_config::StreamConfig;
use tokio::sync::mpsc;

/// The file formats `runnel run` and `runnel ingest` read, told by the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl FileFormat {
    pub(crate) fn of(path: &Path) -> anyhow::Result<FileFormat> {
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

    /// [`FileFormat::of`], refused unless it is one of `allowed` (`runnel run` writes no
    /// CSV).
    pub(crate) fn of_one_of(path: &Path, allowed: &[FileFormat]) -> anyhow::Result<FileFormat> {
        let format = FileFormat::of(path)?;
        if !allowed.contains(&format) {
            bail!("{}: {format:?} is not supported here", path.display());
        }
        Ok(format)
    }

    /// What a position in the file is called in messages.
    pub(crate) fn position_name(self) -> &'static str {
        match self {
            FileFormat::Jsonl | FileFormat::Csv => "line",
            FileFormat::Parquet => "row",
        }
    }
}

/// A batch of events read from the file.
#[derive(Debug, Default)]
pub(crate) struct FileBatch {
    pub(crate) events: Vec<Bytes>,
    /// Per event, its line (JSONL, CSV) or row (Parquet) in the file, from 1.
    pub(crate) positions: Vec<u64>,
    /// Rows of the file that could not be read as events, with their position and reason:
    /// rejected here, not sent.
    pub(crate) unreadable: Vec<(u64, String)>,
}

pub(crate) fn declared_schema(stream: &StreamConfig) -> SchemaRef {
    Arc::clone(runnel_events::StreamSchema::new(stream).declared())
}

/// Reads `path` as record batches of `batch_size` rows.
pub(crate) fn open_input(
    path: &Path,
    format: FileFormat,
    declared: Option<SchemaRef>,
    time_column: &str,
    batch_size: usize,
) -> anyhow::Result<(SchemaRef, BatchIter)> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    match format {
        FileFormat::Parquet => {
            let reader = parquet_reader(file, batch_size)
                .with_context(|| format!("read {}", path.display()))?;
            let schema = reader.schema();
            Ok((schema, Box::new(reader)))
        }
        FileFormat::Jsonl | FileFormat::Csv => {
            let schema = match declared {
                Some(schema) => schema,
                None => {
                    let inferred = if format == FileFormat::Jsonl {
                        arrow::json::reader::infer_json_schema_from_seekable(
                            BufReader::new(&mut file),
                            Some(1000),
                        )
                        .with_context(|| format!("infer the schema of {}", path.display()))?
                        .0
                    } else {
                        arrow::csv::reader::Format::default()
                            .with_header(true)
                            .infer_schema(&mut file, Some(1000))
                            .with_context(|| format!("infer the schema of {}", path.display()))?
                            .0
                    };
                    file.rewind()
                        .with_context(|| format!("rewind {}", path.display()))?;
                    Arc::new(time_column_as_timestamp(&inferred, time_column))
                }
            };
            let reader: BatchIter = if format == FileFormat::Jsonl {
                Box::new(
                    arrow::json::ReaderBuilder::new(Arc::clone(&schema))
                        .with_batch_size(batch_size)
                        .build(BufReader::new(file))
                        .with_context(|| format!("read {}", path.display()))?,
                )
            } else {
                Box::new(
                    arrow::csv::ReaderBuilder::new(Arc::clone(&schema))
                        .with_header(true)
                        .with_batch_size(batch_size)
                        .build(file)
                        .with_context(|| format!("read {}", path.display()))?,
                )
            };
            Ok((schema, reader))
        }
    }
}

/// Inference reads RFC 3339 times as text; the event time column is read as a timestamp.
fn time_column_as_timestamp(schema: &Schema, time_column: &str) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            if field.name() == time_column && field.data_type() == &DataType::Utf8 {
                Field::new(
                    field.name(),
                    DataType::Timestamp(TimeUnit::Millisecond, None),
                    true,
                )
            } else {
                field.as_ref().clone()
            }
        })
        .collect();
    Schema::new(fields)
}

/// Counts the events of a file: non-blank lines of JSONL, lines of CSV after the header,
/// rows of Parquet (from its metadata).
pub(crate) fn count_events(path: &Path, format: FileFormat) -> anyhow::Result<u64> {
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
pub(crate) fn read_batches(
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
        FileFormat::Csv => {
            if !read_csv(path, declared, batch_size, &mut batcher)? {
                return Ok(());
            }
        }
        FileFormat::Parquet => {
            let mut rows = 0_u64;
            for record_batch in parquet_batches(path, batch_size)? {
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

/// Reads a CSV file with a header into events, `batch_size` rows at a time: each cell cast
/// to its column's type (the stream's declared types, or those Arrow infers from the first
/// 1000 rows; an empty cell is null). A row with a cell that does not read as its type, or
/// with another number of fields than the header, is rejected with its line and column; the
/// rest of the file goes on. Returns false once the batches' receiver is gone.
fn read_csv(
    path: &Path,
    declared: Option<&StreamConfig>,
    batch_size: usize,
    batcher: &mut Batcher<'_>,
) -> anyhow::Result<bool> {
    let mut records = CsvRecords::new(BufReader::with_capacity(1 << 20, File::open(path)?));
    let Some((_, header)) = records.next_record()? else {
        return Ok(true);
    };
    let header = header.map_err(|reason| anyhow::anyhow!("line 1 (the header): {reason}"))?;
    let types = csv_types(path, &header, declared);
    let mut rows: Vec<(u64, Vec<String>)> = Vec::with_capacity(batch_size);
    loop {
        let record = records.next_record()?;
        let at_end = record.is_none();
        if let Some((line, fields)) = record {
            match fields {
                Ok(fields) if fields.len() == header.len() => rows.push((line, fields)),
                Ok(fields) => batcher.reject(
                    line,
                    format!(
                        "{} fields where the header has {}",
                        fields.len(),
                        header.len()
                    ),
                ),
                Err(reason) => batcher.reject(line, reason),
            }
        }
        let batch_full = rows.len() >= batch_size || (at_end && !rows.is_empty());
        if batch_full && !send_csv_rows(&header, &types, &std::mem::take(&mut rows), batcher)? {
            return Ok(false);
        }
        if at_end {
            return Ok(true);
        }
    }
}

/// The type of each CSV column: as the stream declares it (text for columns it does not
/// declare), or as Arrow infers it from the first 1000 rows when this config does not
/// declare the stream (all text if inference fails).
fn csv_types(path: &Path, header: &[String], declared: Option<&StreamConfig>) -> Vec<DataType> {
    if let Some(stream) = declared {
        return header
            .iter()
            .map(|name| {
                stream
                    .schema
                    .iter()
                    .find(|field| &field.name == name)
                    .map_or(DataType::Utf8, |field| {
                        runnel_events::arrow_type(field.field_type)
                    })
            })
            .collect();
    }
    let inferred = File::open(path)
        .map_err(arrow::error::ArrowError::from)
        .and_then(|mut file| {
            arrow::csv::reader::Format::default()
                .with_header(true)
                .infer_schema(&mut file, Some(1000))
        });
    match inferred {
        Ok((schema, _)) if schema.fields().len() == header.len() => schema
            .fields()
            .iter()
            .map(|field| field.data_type().clone())
            .collect(),
        Ok(_) | Err(_) => {
            tracing::warn!(
                file = %path.display(),
                "could not infer the CSV column types; sending every cell as text"
            );
            vec![DataType::Utf8; header.len()]
        }
    }
}

/// Casts a batch of CSV rows to their column types and hands the rows that read to the
/// batcher as JSON events, rejecting the others. Returns false once the receiver is gone.
fn send_csv_rows(
    header: &[String],
    types: &[DataType],
    rows: &[(u64, Vec<String>)],
    batcher: &mut Batcher<'_>,
) -> anyhow::Result<bool> {
    let mut bad: Vec<Option<String>> = vec![None; rows.len()];
    let mut fields = Vec::with_capacity(header.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(header.len());
    for (column_idx, (name, data_type)) in header.iter().zip(types).enumerate() {
        let text: arrow::array::StringArray = rows
            .iter()
            .map(|(_, cells)| Some(cells[column_idx].as_str()).filter(|cell| !cell.is_empty()))
            .collect();
        let column = cast_with_options(
            &text,
            data_type,
            &arrow::compute::CastOptions {
                safe: true,
                ..Default::default()
            },
        )?;
        for (row_idx, reason) in bad.iter_mut().enumerate() {
            if reason.is_none() && text.is_valid(row_idx) && column.is_null(row_idx) {
                *reason = Some(format!(
                    "column `{name}` (column {}): `{}` is not {}",
                    column_idx + 1,
                    text.value(row_idx),
                    type_name(data_type)
                ));
            }
        }
        fields.push(Field::new(name, data_type.clone(), true));
        columns.push(column);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let keep: arrow::array::BooleanArray =
        bad.iter().map(|reason| Some(reason.is_none())).collect();
    let kept = arrow::compute::filter_record_batch(&batch, &keep)?;
    let mut events = to_json_lines(&kept)?.into_iter();
    for ((line, _), reason) in rows.iter().zip(bad) {
        match reason {
            Some(reason) => batcher.reject(*line, reason),
            None => {
                let event = events.next().context("one JSON event per row that reads")?;
                if !batcher.push(event, *line) {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

/// A column type as messages name it: the stream schema's names where they apply.
fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Int64 => "an int64".to_string(),
        DataType::Float64 => "a float64".to_string(),
        DataType::Boolean => "a bool".to_string(),
        DataType::Timestamp(..) => "a timestamp".to_string(),
        other => format!("a {other}"),
    }
}

/// A CSV record: the line it starts on, and its fields or why they cannot be read.
type CsvRecord = (u64, Result<Vec<String>, String>);

/// The records of a CSV file, one at a time, each with the line it starts on (RFC 4180: a
/// quoted field may hold commas, doubled quotes and line breaks). Blank lines are skipped.
struct CsvRecords<R> {
    reader: R,
    /// Lines read so far.
    line: u64,
    buffer: Vec<u8>,
}

impl<R: BufRead> CsvRecords<R> {
    fn new(reader: R) -> Self {
        CsvRecords {
            reader,
            line: 0,
            buffer: Vec::new(),
        }
    }

    /// The next record: its first line, and its fields or why it cannot be read (not
    /// UTF-8, a quote left open at the end of the file).
    fn next_record(&mut self) -> std::io::Result<Option<CsvRecord>> {
        loop {
            self.buffer.clear();
            let first_line = self.line + 1;
            let mut in_quotes = false;
            loop {
                let start = self.buffer.len();
                if self.reader.read_until(b'\n', &mut self.buffer)? == 0 {
                    break;
                }
                self.line += 1;
                let quotes = self.buffer[start..]
                    .iter()
                    .filter(|&&byte| byte == b'"')
                    .count();
                in_quotes ^= quotes % 2 == 1;
                if !in_quotes {
                    break;
                }
            }
            if self.buffer.is_empty() {
                return Ok(None);
            }
            if self.buffer.trim_ascii().is_empty() {
                continue;
            }
            let record = match std::str::from_utf8(&self.buffer) {
                Err(error) => Err(format!("not UTF-8 ({error})")),
                Ok(_) if in_quotes => Err("a quoted field is not closed".to_string()),
                Ok(text) => Ok(split_csv_record(text.trim_end_matches(['\r', '\n']))),
            };
            return Ok(Some((first_line, record)));
        }
    }
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
                unreadable: Vec::new(),
            },
            current_bytes: 0,
            out,
        }
    }

    /// Records a row of the file that is not sent, with why.
    fn reject(&mut self, position: u64, reason: String) {
        self.current.unreadable.push((position, reason));
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
        if self.current.events.is_empty() && self.current.unreadable.is_empty() {
            return true;
        }
        let batch = std::mem::replace(
            &mut self.current,
            FileBatch {
                events: Vec::with_capacity(self.batch_size),
                positions: Vec::with_capacity(self.batch_size),
                unreadable: Vec::new(),
            },
        );
        self.current_bytes = 0;
        self.out.blocking_send(batch).is_ok()
    }
}

/// Record batches read from a file.
pub(crate) type BatchIter =
    Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>> + Send>;

fn parquet_batches(path: &Path, batch_size: usize) -> anyhow::Result<BatchIter> {
    Ok(Box::new(parquet_reader(File::open(path)?, batch_size)?))
}

/// Reads the whole Parquet file at `path` as batches of at most `batch_size` rows, in file
/// order, its row groups split in runs decoded on one thread per core (a changelog of a
/// million rows took a fifth of a recompute's wall time to read on one).
pub(crate) fn read_parquet_whole(
    path: &Path,
    batch_size: usize,
) -> anyhow::Result<(SchemaRef, Vec<RecordBatch>)> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::default())
        .with_context(|| format!("read the Parquet metadata of {}", path.display()))?;
    let schema = Arc::clone(metadata.schema());
    let n_row_groups = metadata.metadata().num_row_groups();
    let n_threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, n_row_groups.max(1));
    let row_groups: Vec<usize> = (0..n_row_groups).collect();
    let runs: Vec<&[usize]> = row_groups
        .chunks(n_row_groups.div_ceil(n_threads).max(1))
        .collect();
    let read_run = |row_groups: &[usize]| -> anyhow::Result<Vec<RecordBatch>> {
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
            .with_row_groups(row_groups.to_vec())
            .with_batch_size(batch_size)
            .build()
            .with_context(|| format!("read {}", path.display()))?;
        reader
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("read {}", path.display()))
    };
    let read: Vec<anyhow::Result<Vec<RecordBatch>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = runs
            .iter()
            .skip(1)
            .map(|run| scope.spawn(|| read_run(run)))
            .collect();
        let first = runs
            .first()
            .map_or_else(|| Ok(Vec::new()), |run| read_run(run));
        std::iter::once(first)
            .chain(threads.into_iter().map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a reader thread panicked")))
            }))
            .collect()
    });
    let mut batches = Vec::new();
    for run in read {
        batches.extend(run?);
    }
    Ok((schema, batches))
}

/// A Parquet file's reader, `batch_size` rows at a time.
fn parquet_reader(file: File, batch_size: usize) -> anyhow::Result<ParquetRecordBatchReader> {
    ParquetRecordBatchReaderBuilder::try_new(file)
        .context("read Parquet metadata")?
        .with_batch_size(batch_size)
        .build()
        .context("read the Parquet file")
}

/// Splits a CSV record into its fields (quotes removed, doubled quotes as one).
fn split_csv_record(line: &str) -> Vec<String> {
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
pub(crate) fn timestamps_as_millis(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
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

    use runnel_config::Config;

    use super::*;

    #[test]
    fn a_whole_parquet_file_reads_in_file_order_over_its_row_groups() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("rows.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(3))
            .build();
        let mut writer = parquet::arrow::ArrowWriter::try_new(
            File::create(&path).expect("create the file"),
            Arc::clone(&schema),
            Some(properties),
        )
        .expect("writer");
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(0..10))],
        )
        .expect("batch");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let (read_schema, batches) = read_parquet_whole(&path, 2).expect("read");
        assert_eq!(read_schema, schema);
        let values: Vec<i64> = batches
            .iter()
            .flat_map(|batch| {
                assert!(batch.num_rows() <= 2);
                batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("int64")
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(values, (0..10).collect::<Vec<i64>>());
    }

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

    /// The records of `csv` as (line, fields or reason).
    fn records(csv: &str) -> Vec<CsvRecord> {
        let mut records = CsvRecords::new(csv.as_bytes());
        let mut out = Vec::new();
        while let Some(record) = records.next_record().expect("read from memory") {
            out.push(record);
        }
        out
    }

    #[test]
    fn csv_records_know_their_line() {
        let fields = |fields: &[&str]| Ok(fields.iter().map(|field| field.to_string()).collect());
        assert_eq!(
            records("a,b\r\n1,\"two\nlines\"\n\n3,\"x\"\"y\"\n4,\"open\n"),
            [
                (1, fields(&["a", "b"])),
                (2, fields(&["1", "two\nlines"])),
                (5, fields(&["3", "x\"y"])),
                (6, Err("a quoted field is not closed".to_string())),
            ]
        );
    }

    #[test]
    fn a_bad_csv_cell_rejects_its_row_only() {
        let (batches_tx, mut batches_rx) = mpsc::channel(16);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.csv");
        std::fs::write(
            &path,
            "event_time,user_id,duration_ms\n\
             1970-01-01T00:00:01Z,u1,5\n\
             1970-01-01T00:00:02Z,u2,five\n\
             yesterday,u3,7\n\
             1970-01-01T00:00:04Z,u4\n\
             1970-01-01T00:00:05Z,,9\n",
        )
        .expect("write csv");
        let stream: StreamConfig = Config::load(&[], &Default::default())
            .expect("default config")
            .stream("clicks")
            .expect("clicks is declared")
            .clone();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                read_batches(
                    &path,
                    FileFormat::Csv,
                    Some(&stream),
                    2,
                    1 << 20,
                    &batches_tx,
                )
                .expect("the file reads");
                drop(batches_tx);
            });
        });
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        while let Ok(batch) = batches_rx.try_recv() {
            events.extend(batch.positions.into_iter().zip(batch.events));
            unreadable.extend(batch.unreadable);
        }
        unreadable.sort();
        assert_eq!(
            events,
            [
                (
                    2,
                    Bytes::from_static(br#"{"event_time":1000,"user_id":"u1","duration_ms":5}"#)
                ),
                (
                    6,
                    Bytes::from_static(br#"{"event_time":5000,"duration_ms":9}"#)
                ),
            ]
        );
        assert_eq!(
            unreadable,
            [
                (
                    3,
                    "column `duration_ms` (column 3): `five` is not an int64".to_string()
                ),
                (
                    4,
                    "column `event_time` (column 1): `yesterday` is not a timestamp".to_string()
                ),
                (5, "2 fields where the header has 3".to_string()),
            ]
        );
    }

    #[test]
    fn csv_records_split_with_quotes() {
        assert_eq!(
            split_csv_record(r#"a,"b,c","d""e",f"#),
            ["a", "b,c", "d\"e", "f"]
        );
    }
}
