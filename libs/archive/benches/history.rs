//! Archiver and hybrid-source throughput on an embedded log in a temporary folder.
//!
//! Prints `BENCH <name> <value> <unit>` lines:
//! - `decode_baseline`: reading every partition from the log and decoding it to Arrow, with
//!   nothing written: the floor under both figures below, measured in the same run;
//! - `archive`: `archive_until_caught_up` over the same records (read, decode, Parquet with
//!   zstd, manifest), and `archive_vs_decode` as a ratio;
//! - `hybrid_read`: hybrid sources over every partition, 3/4 of the records from the history
//!   and 1/4 from the log, and `hybrid_read_vs_decode`.
//!
//! `RUNNEL_BENCH_EVENTS` sets the number of events (default 2,000,000, about 100 bytes each).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_archive::{HybridSource, HybridStart};
use runnel_config::Config;
use runnel_events::StreamSchema;
use runnel_events::decode::EventDecoder;
use runnel_log::{EmbeddedLog, Log, ProduceRecord, StartOffset};

const STREAM: &str = "clicks";

fn bench(name: &str, value: f64, unit: &str) {
    println!("BENCH {name} {value:.0} {unit}");
}

fn ratio(name: &str, value: f64) {
    println!("BENCH {name} {value:.2} ratio");
}

async fn append(log: &EmbeddedLog, first: u64, count: u64, now: i64) {
    let countries = ["de", "fr", "us", "jp", "br"];
    for start in (first..first + count).step_by(10_000) {
        let end = (start + 10_000).min(first + count);
        let records = (start..end)
            .map(|n| {
                let user = format!("user-{:06}", n % 100_000);
                let value = format!(
                    r#"{{"event_time":{},"user_id":"{user}","page":"/products/{}","country":"{}","duration_ms":{}}}"#,
                    now + n as i64,
                    n % 1000,
                    countries[(n % 5) as usize],
                    n % 30_000
                );
                ProduceRecord {
                    key: Some(Bytes::from(user)),
                    value: Bytes::from(value),
                    timestamp: now + (n / 1000) as i64,
                    headers: Vec::new(),
                    partition: None,
                }
            })
            .collect();
        log.append(STREAM, records).await.unwrap();
    }
}

/// Reads and decodes every partition from the log, one task per partition.
async fn decode_all(log: Arc<EmbeddedLog>, schema: &StreamSchema, partitions: u32) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        let (log, schema) = (Arc::clone(&log), schema.clone());
        tasks.spawn(async move {
            let end = log.latest_offset(STREAM, partition).await.unwrap();
            let mut reader = log
                .reader(STREAM, partition, StartOffset::Earliest)
                .await
                .unwrap();
            let decoder = EventDecoder::new(&schema);
            let mut rows = 0;
            let mut position = 0;
            while position < end {
                let records = reader
                    .next_batch(16_384, Duration::from_secs(1))
                    .await
                    .unwrap();
                position = records.last().unwrap().offset + 1;
                rows += decoder.decode(&records).unwrap().batch.num_rows() as u64;
            }
            rows
        });
    }
    let mut rows = 0;
    while let Some(done) = tasks.join_next().await {
        rows += done.unwrap();
    }
    rows
}

async fn run() {
    let events: u64 = std::env::var("RUNNEL_BENCH_EVENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded_defaults();
    config.storage.data_dir = dir.path().to_path_buf();
    config.storage.object_store_url = None;
    config.streams.truncate(1);
    let partitions = config.streams[0].partitions;
    let schema = StreamSchema::new(&config.streams[0]);
    let log = Arc::new(
        EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
            .await
            .unwrap(),
    );
    log.ensure_topic(STREAM, partitions).await.unwrap();
    let now = 1_795_305_600_000;
    let archived = events * 3 / 4;
    append(&log, 0, archived, now).await;

    let started = Instant::now();
    let rows = decode_all(Arc::clone(&log), &schema, partitions).await;
    let decode_rate = rows as f64 / started.elapsed().as_secs_f64();
    bench("decode_baseline", decode_rate, "events/s");

    let store = runnel_archive::open_object_store(
        &config.object_store_url(),
        &config.storage.object_store_options,
    )
    .unwrap();
    let started = Instant::now();
    let summary = runnel_archive::archive_until_caught_up(&config, log.clone(), store.clone())
        .await
        .unwrap();
    let archive_rate = summary.rows as f64 / started.elapsed().as_secs_f64();
    assert_eq!(summary.rows, archived);
    bench("archive", archive_rate, "events/s");
    ratio("archive_vs_decode", archive_rate / decode_rate);
    let bytes: u64 = runnel_archive::load_manifest(store.as_ref(), "history", STREAM)
        .await
        .unwrap()
        .unwrap()
        .files
        .iter()
        .map(|file| file.bytes)
        .sum();
    bench(
        "archive_bytes_per_event",
        bytes as f64 / archived as f64,
        "bytes",
    );

    append(&log, archived, events - archived, now).await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        let (log, store, schema) = (log.clone(), store.clone(), schema.clone());
        tasks.spawn(async move {
            let end = log.latest_offset(STREAM, partition).await.unwrap();
            let mut source = HybridSource::open(
                store,
                "history",
                log,
                &schema,
                partition,
                HybridStart::Earliest,
                16_384,
            )
            .await
            .unwrap();
            let mut rows = 0;
            while source.position() < end {
                let batch = source
                    .next_batch(Duration::from_secs(1))
                    .await
                    .unwrap()
                    .expect("a batch");
                rows += batch.num_rows() as u64;
            }
            rows
        });
    }
    let mut rows = 0;
    while let Some(done) = tasks.join_next().await {
        rows += done.unwrap();
    }
    assert_eq!(rows, events);
    let hybrid_rate = rows as f64 / started.elapsed().as_secs_f64();
    bench("hybrid_read", hybrid_rate, "events/s");
    ratio("hybrid_read_vs_decode", hybrid_rate / decode_rate);
    log.close().await;
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
