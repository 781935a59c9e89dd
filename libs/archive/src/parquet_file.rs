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
use parquet::arrow::arrow_reader::ArrowReaderOptions;
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

/// Opens a history file as a stream of batches of `batch_rows` rows in its own columns (the
/// stream's positioned schema), or only those of `columns` (ascending indexes; the batches
/// hold them in that order). With `event_time` (a half-open range of epoch milliseconds),
/// row groups whose event-time statistics (column `event_time_column`) lie wholly outside it
/// are skipped; the rows of the others are not filtered.
///
/// # Errors
///
/// [`ArchiveError::Parquet`] if the footer cannot be read.
pub async fn open_history_file(
    store: &Arc<dyn ObjectStore>,
    file: &FileEntry,
    batch_rows: usize,
    event_time_column: usize,
    event_time: Option<Range<i64>>,
    columns: Option<&[usize]>,
) -> Result<ParquetRecordBatchStream<StoreFile>, ArchiveError> {
    let reader = StoreFile::new(
        Arc::clone(store),
        Path::from(file.path.as_str()),
        file.bytes,
    );
    let parquet_error = |source| ArchiveError::Parquet {
        path: file.path.clone(),
        source,
    };
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(parquet_error)?
        .with_batch_size(batch_rows);
    if let Some(range) = event_time {
        let keep: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .enumerate()
            .filter(|(_, group)| {
                let statistics = (event_time_column < group.num_columns())
                    .then(|| group.column(event_time_column).statistics())
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
    if let Some(columns) = columns {
        let mask = ProjectionMask::roots(builder.parquet_schema(), columns.iter().copied());
        builder = builder.with_projection(mask);
    }
    builder.build().map_err(parquet_error)
}
