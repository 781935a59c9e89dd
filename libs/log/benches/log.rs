//! Log throughput benchmark: 100-byte records, batches of 1000, 4 partitions.
//!
//! Prints `BENCH <name> <value> <unit>` lines. `scripts/bench-log.sh` runs it in release with
//! a Kafka broker at `KAFKA_BOOTSTRAP` (scripts/lib/kafka.sh). Beside each backend's figures it prints a baseline
//! measured in the same run on the same disk: raw `write` + `fdatasync` of the same bytes
//! in the same batch sizes, so the log's append can be read as a ratio of what the disk does.
//! On Kafka it also prints one appender's throughput plain and in transactions committed every
//! 10,000 records (`kafka_transactional_vs_plain`: exactly-once's cost).
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_config::{EmbeddedLogConfig, KafkaLogConfig};
use runnel_log::{EmbeddedLog, KafkaLog, Log, ProduceRecord, StartOffset};

const RECORD_BYTES: usize = 100;
const BATCH: usize = 1000;
const PARTITIONS: u32 = 4;
/// Appends in flight at once, so that group commit has something to group.
const CONCURRENCY: usize = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn batch(batch_idx: usize) -> Vec<ProduceRecord> {
    let value = Bytes::from(vec![b'x'; RECORD_BYTES]);
    (0..BATCH)
        .map(|idx| ProduceRecord {
            key: None,
            value: value.clone(),
            timestamp: (batch_idx * BATCH + idx) as i64,
            headers: Vec::new(),
            // Each batch goes to one partition, as a Kafka producer batches per partition.
            partition: Some((batch_idx % PARTITIONS as usize) as u32),
        })
        .collect()
}

fn report(name: &str, records: usize, elapsed: Duration) -> f64 {
    let rate = records as f64 / elapsed.as_secs_f64();
    println!("BENCH {name} {rate:.0} records/s");
    rate
}

async fn produce(log: Arc<dyn Log>, topic: &str, n_batches: usize) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let log = Arc::clone(&log);
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            for batch_idx in (worker..n_batches).step_by(CONCURRENCY) {
                log.append(&topic, batch(batch_idx))
                    .await
                    .expect("append in benchmark");
            }
        }));
    }
    for task in tasks {
        task.await.expect("producer task");
    }
    started.elapsed()
}

async fn consume(log: Arc<dyn Log>, topic: &str, per_partition: usize) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for partition in 0..PARTITIONS {
        let log = Arc::clone(&log);
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            let mut reader = log
                .reader(&topic, partition, StartOffset::Earliest)
                .await
                .expect("reader");
            let mut read = 0;
            let mut checksum = 0u64;
            while read < per_partition {
                let records = reader
                    .next_batch(BATCH * 4, Duration::from_secs(10))
                    .await
                    .expect("read in benchmark");
                assert!(!records.is_empty(), "benchmark read stalled at {read}");
                read += records.len();
                checksum += records
                    .iter()
                    .map(|record| record.value.len() as u64)
                    .sum::<u64>();
            }
            assert_eq!(checksum, (read * RECORD_BYTES) as u64);
        }));
    }
    for task in tasks {
        task.await.expect("reader task");
    }
    started.elapsed()
}

/// Batches appended one after another, as a stream-processor task appends its outputs.
async fn produce_sequential(log: &dyn Log, topic: &str, n_batches: usize) -> Duration {
    let started = Instant::now();
    for batch_idx in 0..n_batches {
        log.append(topic, batch(batch_idx))
            .await
            .expect("append in benchmark");
    }
    started.elapsed()
}

/// The same batches through a Kafka transaction committed every `per_commit` batches (a
/// task's checkpoint), as with `stream-processor.exactly-once`.
async fn produce_transactional(
    log: &dyn Log,
    topic: &str,
    n_batches: usize,
    per_commit: usize,
) -> Duration {
    let mut writer = log
        .transactional_writer(&format!("bench-{}", std::process::id()))
        .await
        .expect("transactional writer");
    let started = Instant::now();
    for chunk in (0..n_batches).collect::<Vec<_>>().chunks(per_commit) {
        writer.begin().await.expect("begin");
        for &batch_idx in chunk {
            writer
                .append(topic, batch(batch_idx))
                .await
                .expect("append in a transaction");
        }
        writer.commit(&[]).await.expect("commit");
    }
    started.elapsed()
}

/// Raw disk baseline: the same bytes the log writes (frames are 136 bytes for these records),
/// written in the same batch sizes, each batch followed by `fdatasync`, one file per partition
/// written by one thread each.
fn disk_baseline(dir: &std::path::Path, n_batches: usize) -> Duration {
    const FRAME_BYTES: usize = RECORD_BYTES + 36;
    let started = Instant::now();
    std::thread::scope(|scope| {
        for partition in 0..PARTITIONS as usize {
            let path = dir.join(format!("baseline-{partition}"));
            scope.spawn(move || {
                let mut file = File::create(&path).expect("create baseline file");
                let buf = vec![0x5a_u8; FRAME_BYTES * BATCH];
                for _ in (partition..n_batches).step_by(PARTITIONS as usize) {
                    file.write_all(&buf).expect("write baseline");
                    file.sync_data().expect("fdatasync baseline");
                }
            });
        }
    });
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is read from the arguments.
    let records = env_usize("BENCH_LOG_RECORDS", 2_000_000);
    let n_batches = records / BATCH;
    let records = n_batches * BATCH;
    let dir = tempfile::Builder::new()
        .prefix("runnel-bench-log")
        .tempdir_in(
            std::env::var("BENCH_DIR")
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )
        .expect("bench dir");

    let baseline = disk_baseline(dir.path(), n_batches);
    let baseline_rate = report("baseline_disk_write_fdatasync", records, baseline);

    let config = EmbeddedLogConfig {
        dir: None,
        segment_bytes: 256 << 20,
        index_interval_bytes: 4096,
        retention_bytes: u64::MAX,
        retention_age: Duration::from_secs(365 * 86400),
        retention_check_interval: Duration::from_secs(3600),
        retention_holds: Vec::new(),
    };
    let embedded = Arc::new(
        EmbeddedLog::open(&dir.path().join("log"), &config)
            .await
            .expect("open embedded log"),
    );
    embedded
        .ensure_topic("bench", PARTITIONS)
        .await
        .expect("create topic");
    let log: Arc<dyn Log> = embedded.clone();
    let append_rate = report(
        "embedded_append",
        records,
        produce(Arc::clone(&log), "bench", n_batches).await,
    );
    println!(
        "BENCH embedded_append_vs_disk_baseline {:.2} ratio",
        append_rate / baseline_rate
    );
    let per_partition = records / PARTITIONS as usize;
    report(
        "embedded_read",
        records,
        consume(log, "bench", per_partition).await,
    );
    embedded.close().await;

    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(bootstrap) if !bootstrap.is_empty() => {
            let kafka_records = env_usize("BENCH_KAFKA_RECORDS", 200_000);
            let kafka_batches = kafka_records / BATCH;
            let kafka_records = kafka_batches * BATCH;
            let kafka = Arc::new(
                KafkaLog::new(&KafkaLogConfig {
                    bootstrap_servers: bootstrap,
                    client_id: "runnel-bench".to_string(),
                    replication_factor: 1,
                    min_insync_replicas: None,
                    request_timeout: Duration::from_secs(60),
                    session_timeout: Duration::from_secs(10),
                    rebalance_timeout: Duration::from_secs(60),
                    group_instance_id: None,
                    properties: Default::default(),
                    aws_msk_iam: false,
                })
                .expect("kafka clients"),
            );
            let topic = format!("bench-{}", std::process::id());
            kafka
                .ensure_topic(&topic, PARTITIONS)
                .await
                .expect("create kafka topic");
            let log: Arc<dyn Log> = kafka;
            report(
                "kafka_produce",
                kafka_records,
                produce(Arc::clone(&log), &topic, kafka_batches).await,
            );
            report(
                "kafka_consume",
                kafka_records,
                consume(
                    Arc::clone(&log),
                    &topic,
                    kafka_records / PARTITIONS as usize,
                )
                .await,
            );
            // Exactly-once's cost: one appender, plain against transactional (a commit every
            // 10 batches, 10,000 records), on a topic of their own each.
            let plain_topic = format!("{topic}-sequential");
            let tx_topic = format!("{topic}-transactional");
            for topic in [&plain_topic, &tx_topic] {
                log.ensure_topic(topic, PARTITIONS)
                    .await
                    .expect("create kafka topic");
            }
            let plain = report(
                "kafka_produce_sequential",
                kafka_records,
                produce_sequential(log.as_ref(), &plain_topic, kafka_batches).await,
            );
            let transactional = report(
                "kafka_produce_transactional",
                kafka_records,
                produce_transactional(log.as_ref(), &tx_topic, kafka_batches, 10).await,
            );
            println!(
                "BENCH kafka_transactional_vs_plain {:.2} ratio",
                transactional / plain
            );
        }
        _ => println!("BENCH kafka_produce skipped (KAFKA_BOOTSTRAP not set)"),
    }
}
