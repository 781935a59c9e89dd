//! The Parquet history reader on arbitrary bytes: the input is put in an in-memory object
//! store as a history file and read through `runnel_archive::parquet_file::open_history_file`
//! twice, as the hybrid source reads it (every column, then each batch checked against the
//! stream's positioned schema) and as a recompute reads it (some columns, row groups pruned
//! by event time, strings as views).
//!
//! Asserts that a bad file is an error: no panic, no abort, no allocation beyond what a
//! Parquet page header may ask for (below). The reader itself turns a panic of the Parquet
//! decoder into an error (`HistoryBatches`), so only a panic that escapes it is a crash.
#![no_main]

use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use runnel_archive::FileEntry;
use runnel_archive::parquet_file::{HistoryRead, open_history_file};
use runnel_events::StreamSchema;
use runnel_fuzz::{
    NOW_MILLIS, allowing_caught_panics, block_on, set_max_allocation_bytes, stream_config,
};

const PATH: &str = "history/clicks/date=2026-11-21/0-0-6.parquet";

static STORE: LazyLock<Arc<dyn ObjectStore>> = LazyLock::new(|| Arc::new(InMemory::new()));
static SCHEMA: LazyLock<StreamSchema> = LazyLock::new(|| StreamSchema::new(&stream_config()));

/// Reads the file as `read` says; returns its batches, or `None` at the first error.
async fn read_all(file: &FileEntry, read: &HistoryRead<'_>) -> Option<Vec<RecordBatch>> {
    let mut stream = open_history_file(&STORE, file, read).await.ok()?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch.ok()?);
    }
    Some(batches)
}

/// parquet reserves a page's `uncompressed_page_size` (an i32 of its header) before
/// decompressing it (`serialized_reader.rs`, `decode_page`); the reservation is not memory
/// used, which `-rss_limit_mb` bounds.
const MAX_PAGE_RESERVATION_BYTES: usize = i32::MAX as usize;

fuzz_target!(
    init: set_max_allocation_bytes(MAX_PAGE_RESERVATION_BYTES),
    |data: &[u8]| allowing_caught_panics(|| check(data))
);

fn check(data: &[u8]) {
    block_on(async {
        STORE
            .put(
                &Path::from(PATH),
                PutPayload::from(Bytes::copy_from_slice(data)),
            )
            .await
            .expect("put into the in-memory store");
        let file = FileEntry {
            path: PATH.to_string(),
            partition: 0,
            first_offset: 0,
            last_offset: 6,
            rows: 7,
            bytes: data.len() as u64,
            min_event_time: None,
            max_event_time: None,
            min_ingest_time: NOW_MILLIS,
            max_ingest_time: NOW_MILLIS,
        };

        // The hybrid source: whole files, each batch taken as the stream's positioned schema.
        if let Some(batches) = read_all(&file, &HistoryRead::whole(8192)).await {
            for batch in batches {
                let _ = RecordBatch::try_new(
                    Arc::clone(SCHEMA.with_position()),
                    batch.columns().to_vec(),
                );
            }
        }

        // A recompute: a job's columns (event time, page, duration, score, offset), row groups
        // pruned to an hour of event time, strings as views.
        let columns = [0, 2, 4, 6, 9];
        let read = HistoryRead {
            batch_rows: 32_768,
            event_time_column: SCHEMA.event_time_index(),
            event_time: Some(NOW_MILLIS - 7_200_000..NOW_MILLIS - 3_600_000),
            columns: Some(&columns),
            string_views: true,
        };
        let _ = read_all(&file, &read).await;
    });
}
