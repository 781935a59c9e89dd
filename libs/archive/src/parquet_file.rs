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

/// Opens a history file as a stream of batches in its own columns (the stream's positioned
/// schema), as `read` says.
///
/// # Errors
///
/// [`ArchiveError::Parquet`] if the footer cannot be read.
pub async fn open_history_file(
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
    let options = ArrowReaderOptions::new();
    let mut metadata = ArrowReaderMetadata::load_async(&mut reader, options.clone())
        .await
        .map_err(parquet_error)?;
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
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    builder.build().map_err(parquet_error)
}
