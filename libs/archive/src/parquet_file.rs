//! Reading a Parquet file of known size from the object store, for the Parquet async reader,
//! and opening a history file ([`open_history_file`]).
//!
//! parquet 59 deprecates its own object-store reader in favour of implementing
//! [`AsyncFileReader`]; this is that implementation. The size comes from the manifest (or a
//! listing), so opening a file costs one ranged read for the footer.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::async_reader::{ParquetRecordBatchStream, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::statistics::Statistics;

use crate::{ArchiveError, FileEntry};

/// A Parquet file in an object store, of a known size.
#[derive(Debug, Clone)]
pub struct StoreFile {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl StoreFile {
    /// The file at `path`, `size` bytes long.
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        Self { store, path, size }
    }
}

fn external(error: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(error))
}

impl AsyncFileReader for StoreFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

/// How to read a history file: see [`open_history_file`].
#[derive(Debug, Clone)]
pub struct HistoryRead<'a> {
    /// Rows per batch.
    pub batch_rows: usize,
    /// The event time's column, for `event_time`.
    pub event_time_column: usize,
    /// With a half-open range of epoch milliseconds, row groups whose event-time statistics
    /// lie wholly outside it are skipped; the rows of the others are not filtered.
    pub event_time: Option<Range<i64>>,
    /// Only these columns (ascending indexes; the batches hold them in that order).
    pub columns: Option<&'a [usize]>,
    /// Strings as `Utf8View` (decoded without copying short values into one buffer, and
    /// compared inline by DataFusion's grouping) rather than the stream's `Utf8`.
    pub string_views: bool,
}

impl HistoryRead<'_> {
    /// Every row of every column, in the stream's positioned schema.
    pub fn whole(batch_rows: usize) -> Self {
        HistoryRead {
            batch_rows,
            event_time_column: 0,
            event_time: None,
            columns: None,
            string_views: false,
        }
    }
}

/// `schema` with its `Utf8` fields as `Utf8View`.
pub fn with_string_views(schema: &arrow::datatypes::Schema) -> arrow::datatypes::Schema {
    use arrow::datatypes::{DataType, Field};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::Utf8 => field.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => field.as_ref().clone(),
        })
        .collect();
    arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// A history file's batches, from [`open_history_file`].
///
/// parquet 59 panics on some damaged files (e.g. a dictionary-encoded page whose dictionary
/// is missing) where it should return an error; here such a panic ends the stream with an
/// error instead, so a damaged file is reported like any other (found by the
/// `parquet_history` fuzz target).
pub struct HistoryBatches {
    /// `None` once the decoder panicked: what it left behind is never polled again.
    inner: Option<ParquetRecordBatchStream<StoreFile>>,
}

impl std::fmt::Debug for HistoryBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryBatches").finish_non_exhaustive()
    }
}

impl futures::Stream for HistoryBatches {
    type Item = parquet::errors::Result<arrow::array::RecordBatch>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures::StreamExt::poll_next_unpin(inner, cx)
        }));
        match polled {
            Ok(poll) => poll,
            Err(panic) => {
                self.inner = None;
                std::task::Poll::Ready(Some(Err(decoder_panicked(panic.as_ref()))))
            }
        }
    }
}

/// The error for a panic of the Parquet reader.
fn decoder_panicked(panic: &(dyn std::any::Any + Send)) -> ParquetError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|message| message.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ParquetError::General(format!("the Parquet reader panicked: {message}"))
}

/// Opens a history file as a stream of batches in its own columns (the stream's positioned
/// schema), as `read` says.
///
/// # Errors
///
/// [`ArchiveError::Parquet`] if the footer cannot be read, [`ArchiveError::FileInvalid`] if
/// it lacks a column `read` asks for.
pub async fn open_history_file(
    store: &Arc<dyn ObjectStore>,
    file: &FileEntry,
    read: &HistoryRead<'_>,
) -> Result<HistoryBatches, ArchiveError> {
    match std::panic::AssertUnwindSafe(open_batches(store, file, read))
        .catch_unwind()
        .await
    {
        Ok(opened) => Ok(HistoryBatches {
            inner: Some(opened?),
        }),
        Err(panic) => Err(ArchiveError::Parquet {
            path: file.path.clone(),
            source: decoder_panicked(panic.as_ref()),
        }),
    }
}

async fn open_batches(
    store: &Arc<dyn ObjectStore>,
    file: &FileEntry,
    read: &HistoryRead<'_>,
) -> Result<ParquetRecordBatchStream<StoreFile>, ArchiveError> {
    let mut reader = StoreFile::new(
        Arc::clone(store),
        Path::from(file.path.as_str()),
        file.bytes,
    );
    let parquet_error = |source| ArchiveError::Parquet {
        path: file.path.clone(),
        source,
    };
    // The Arrow types come from the Parquet schema, which gives back the stream's types,
    // rather than from the Arrow schema the writer embeds in the footer: arrow-ipc 59 panics
    // on some invalid ones (found by the `parquet_history` fuzz target).
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let mut metadata = ArrowReaderMetadata::load_async(&mut reader, options.clone())
        .await
        .map_err(parquet_error)?;
    crate::page_header::check_dictionary_pages(&mut reader, metadata.metadata(), file.bytes)
        .await
        .map_err(|message| ArchiveError::FileInvalid {
            path: file.path.clone(),
            message,
        })?;
    if read.string_views {
        let views = Arc::new(with_string_views(metadata.schema()));
        metadata = ArrowReaderMetadata::try_new(
            Arc::clone(metadata.metadata()),
            options.with_schema(views),
        )
        .map_err(parquet_error)?;
    }
    let mut builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
        .with_batch_size(read.batch_rows);
    if let Some(range) = &read.event_time {
        let column = read.event_time_column;
        let keep: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, group)| {
                let statistics = (column < group.num_columns())
                    .then(|| group.column(column).statistics())
                    .flatten();
                match statistics {
                    Some(Statistics::Int64(values)) => match (values.min_opt(), values.max_opt()) {
                        (Some(&min), Some(&max)) => max >= range.start && min < range.end,
                        _ => true,
                    },
                    _ => true,
                }
            })
            .map(|(index, _)| index)
            .collect();
        builder = builder.with_row_groups(keep);
    }
    if let Some(columns) = read.columns {
        // `ProjectionMask::roots` panics on a column the file does not have (a file of
        // another schema, or a damaged one).
        let n_columns = builder.parquet_schema().root_schema().get_fields().len();
        if let Some(&column) = columns.iter().find(|&&column| column >= n_columns) {
            return Err(ArchiveError::FileInvalid {
                path: file.path.clone(),
                message: format!("column {column} was asked for, but the file has {n_columns}"),
            });
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    builder.build().map_err(parquet_error)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch};
    use object_store::PutPayload;
    use object_store::memory::InMemory;
    use parquet::arrow::ArrowWriter;

    use super::*;

    /// Puts `batch` in a Parquet file in a fresh in-memory store.
    async fn store_file(batch: &RecordBatch) -> (Arc<dyn ObjectStore>, FileEntry) {
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None).expect("writer");
        writer.write(batch).expect("write");
        writer.close().expect("close");
        put_file(bytes).await
    }

    /// Puts `bytes` as a history file in a fresh in-memory store.
    async fn put_file(bytes: Vec<u8>) -> (Arc<dyn ObjectStore>, FileEntry) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let file = FileEntry {
            path: "history/s/date=2026-11-21/0-0-1.parquet".to_string(),
            partition: 0,
            first_offset: 0,
            last_offset: 1,
            rows: 2,
            bytes: bytes.len() as u64,
            min_event_time: Some(1),
            max_event_time: Some(2),
            min_ingest_time: 0,
            max_ingest_time: 0,
        };
        store
            .put(&Path::from(file.path.as_str()), PutPayload::from(bytes))
            .await
            .expect("put");
        (store, file)
    }

    /// The Arrow schema embedded in the footer is not read (arrow-ipc panics on some invalid
    /// ones); the Parquet schema gives back every type a stream's history holds.
    #[tokio::test]
    async fn history_files_read_back_with_their_written_types() {
        use arrow::array::{ArrayRef, TimestampMillisecondArray};
        use arrow::array::{BooleanArray, Float64Array, Int32Array, StringArray};
        let batch = RecordBatch::try_from_iter([
            (
                "t",
                Arc::new(TimestampMillisecondArray::from(vec![Some(1), None])) as ArrayRef,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![Some("a"), None])) as ArrayRef,
            ),
            (
                "i",
                Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef,
            ),
            (
                "f",
                Arc::new(Float64Array::from(vec![Some(0.5), None])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(BooleanArray::from(vec![Some(true), None])) as ArrayRef,
            ),
            ("p", Arc::new(Int32Array::from(vec![3, 3])) as ArrayRef),
        ])
        .expect("batch");
        let (store, file) = store_file(&batch).await;
        let mut stream = open_history_file(&store, &file, &HistoryRead::whole(16))
            .await
            .expect("open");
        let read = futures::StreamExt::next(&mut stream)
            .await
            .expect("a batch")
            .expect("read");
        assert_eq!(read, batch);
    }

    /// Reads every batch of `bytes` as a history file.
    async fn read_whole(bytes: &[u8]) -> Result<usize, ArchiveError> {
        let (store, file) = put_file(bytes.to_vec()).await;
        let mut batches = open_history_file(&store, &file, &HistoryRead::whole(8192)).await?;
        let mut rows = 0;
        while let Some(batch) = futures::StreamExt::next(&mut batches).await {
            rows += batch
                .map_err(|source| ArchiveError::Parquet {
                    path: file.path.clone(),
                    source,
                })?
                .num_rows();
        }
        Ok(rows)
    }

    /// Found by the `parquet_history` fuzz target (`libs/fuzz/regressions/parquet_history/`):
    /// files on which parquet 59 panics are read, or are an error.
    #[tokio::test]
    async fn damaged_files_that_panic_parquet_are_read_or_are_errors() {
        // A bit width of 80 in the Arrow schema embedded in the footer, which arrow-ipc
        // panics on; that schema is not read (the file is damaged elsewhere too).
        let bytes = include_bytes!(
            "../../fuzz/regressions/parquet_history/arrow-ipc-int-bit-width-80.parquet"
        );
        let _ = read_whole(bytes).await;
        // A dictionary-encoded page without its dictionary: the decoder's panic.
        let bytes = include_bytes!(
            "../../fuzz/regressions/parquet_history/dictionary-page-missing.parquet"
        );
        let error = read_whole(bytes)
            .await
            .expect_err("a damaged page")
            .to_string();
        // Its chunks' dictionary pages are not where the footer says: refused before the
        // decoder (which panicked: "Decoder for dict should have been set").
        assert!(
            error.contains("its dictionary page has no readable header"),
            "{error}"
        );
    }

    /// Found by the `parquet_history` fuzz target: a dictionary page header claiming 1.4
    /// billion values made parquet 59 ask for an 11.6 GB buffer (an abort, where memory is
    /// short); the header is checked first.
    #[tokio::test]
    async fn a_dictionary_page_claiming_more_values_than_it_holds_is_invalid() {
        let bytes = include_bytes!(
            "../../fuzz/regressions/parquet_history/dictionary-page-of-1.4-billion-values.parquet"
        );
        let error = read_whole(bytes)
            .await
            .expect_err("a damaged header")
            .to_string();
        assert!(error.contains("its dictionary page claims"), "{error}");
    }

    /// The headers of the dictionary pages the writer writes read back, with their counts.
    #[tokio::test]
    async fn dictionary_page_headers_of_a_written_file_read_back() {
        let batch = RecordBatch::try_from_iter([(
            "event_time",
            Arc::new(Int64Array::from(vec![5, 7, 5, 7, 9])) as arrow::array::ArrayRef,
        )])
        .expect("batch");
        let (store, file) = store_file(&batch).await;
        let mut reader = StoreFile::new(
            Arc::clone(&store),
            Path::from(file.path.as_str()),
            file.bytes,
        );
        let metadata = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
            .await
            .expect("footer");
        let chunk = metadata.metadata().row_group(0).column(0);
        let offset = chunk.dictionary_page_offset().expect("a dictionary page") as u64;
        assert_eq!(
            offset,
            chunk.byte_range().0,
            "the dictionary page comes first"
        );
        let bytes = reader
            .get_bytes(offset..file.bytes.min(offset + 256))
            .await
            .expect("header bytes");
        let header = crate::page_header::parse_page_header(&bytes).expect("a header");
        assert_eq!(header.page_type, 2, "a dictionary page");
        assert_eq!(header.dictionary_values, Some(3), "three distinct values");
        assert_eq!(header.uncompressed_page_size, 24);
        crate::page_header::check_dictionary_pages(&mut reader, metadata.metadata(), file.bytes)
            .await
            .expect("a sound file passes");
    }

    /// Found by the `parquet_history` fuzz target: asking a file for a column it does not
    /// have panicked inside `ProjectionMask::roots`.
    #[tokio::test]
    async fn a_file_without_the_asked_columns_is_invalid_not_a_panic() {
        let batch = RecordBatch::try_from_iter([(
            "event_time",
            Arc::new(Int64Array::from(vec![1, 2])) as arrow::array::ArrayRef,
        )])
        .expect("batch");
        let (store, file) = store_file(&batch).await;
        let read = HistoryRead {
            columns: Some(&[0, 3]),
            ..HistoryRead::whole(16)
        };
        let error = open_history_file(&store, &file, &read)
            .await
            .expect_err("a missing column is an error");
        assert!(
            matches!(&error, ArchiveError::FileInvalid { message, .. }
                if message == "column 3 was asked for, but the file has 1"),
            "{error}"
        );
    }
}
