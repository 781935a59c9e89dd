//! Backends under test: how to open, restart and name topics on each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runnel_config::{EmbeddedLogConfig, KafkaLogConfig};
use runnel_log::{EmbeddedLog, KafkaLog, Log, ProduceRecord, Record};

/// A backend the conformance suite runs against.
pub(crate) enum Fixture {
    Embedded {
        dir: tempfile::TempDir,
        config: EmbeddedLogConfig,
        log: Arc<EmbeddedLog>,
    },
    Kafka {
        config: KafkaLogConfig,
        log: Arc<KafkaLog>,
        run_id: String,
    },
}

static TOPIC_COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) fn embedded_config() -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        dir: None,
        segment_bytes: 1 << 20,
        index_interval_bytes: 4096,
        retention_bytes: u64::MAX,
        retention_age: Duration::from_secs(365 * 86400),
        retention_check_interval: Duration::from_secs(3600),
        retention_holds: Vec::new(),
    }
}

impl Fixture {
    pub(crate) async fn embedded() -> Fixture {
        Fixture::embedded_with(embedded_config()).await
    }

    pub(crate) async fn embedded_with(config: EmbeddedLogConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("create temp dir");
        let log = Arc::new(
            EmbeddedLog::open(dir.path(), &config)
                .await
                .expect("open embedded log"),
        );
        Fixture::Embedded { dir, config, log }
    }

    /// The Kafka fixture, or `None` (after a notice) when no broker is configured and none
    /// is required.
    pub(crate) fn kafka() -> Option<Fixture> {
        Fixture::kafka_at("KAFKA_BOOTSTRAP", |_| {})
    }

    /// The Kafka fixture on the broker whose address is in the environment variable
    /// `variable`, with `change` made to its config; `None` (after a notice) when the
    /// variable is not set and no broker is required.
    pub(crate) fn kafka_at(
        variable: &str,
        change: impl FnOnce(&mut KafkaLogConfig),
    ) -> Option<Fixture> {
        let bootstrap =
            runnel_testkit::gate::external(variable, "RUNNEL_REQUIRE_KAFKA", "a Kafka test")?;
        let mut config = KafkaLogConfig {
            bootstrap_servers: bootstrap,
            client_id: "runnel-test".to_string(),
            replication_factor: 1,
            min_insync_replicas: None,
            request_timeout: Duration::from_secs(30),
            session_timeout: Duration::from_secs(6),
            rebalance_timeout: Duration::from_secs(20),
            group_instance_id: None,
            properties: Default::default(),
            aws_msk_iam: false,
        };
        change(&mut config);
        let log = Arc::new(KafkaLog::new(&config).expect("create kafka clients"));
        let run_id = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after epoch")
                .as_millis()
        );
        Some(Fixture::Kafka {
            config,
            log,
            run_id,
        })
    }

    /// A second Kafka log (its own clients, as another process has) with `change` made to
    /// the fixture's config; `None` on the embedded fixture.
    pub(crate) fn another_kafka_log(
        &self,
        change: impl FnOnce(&mut KafkaLogConfig),
    ) -> Option<Arc<dyn Log>> {
        let Fixture::Kafka { config, .. } = self else {
            return None;
        };
        let mut config = config.clone();
        change(&mut config);
        Some(Arc::new(
            KafkaLog::new(&config).expect("create kafka clients"),
        ))
    }

    pub(crate) fn log(&self) -> Arc<dyn Log> {
        match self {
            Fixture::Embedded { log, .. } => Arc::clone(log) as Arc<dyn Log>,
            Fixture::Kafka { log, .. } => Arc::clone(log) as Arc<dyn Log>,
        }
    }

    /// A topic name no other test (or earlier run, on a shared broker) uses.
    pub(crate) fn topic(&self, name: &str) -> String {
        let n = TOPIC_COUNTER.fetch_add(1, Ordering::Relaxed);
        match self {
            Fixture::Embedded { .. } => format!("{name}-{n}"),
            Fixture::Kafka { run_id, .. } => format!("{name}-{run_id}-{n}"),
        }
    }

    /// Drops the clients (embedded: closes the log) and opens new ones on the same storage,
    /// as a restarted process would.
    pub(crate) async fn restart(&mut self) {
        match self {
            Fixture::Embedded { dir, config, log } => {
                log.close().await;
                *log = Arc::new(
                    EmbeddedLog::open(dir.path(), config)
                        .await
                        .expect("reopen embedded log"),
                );
            }
            Fixture::Kafka { config, log, .. } => {
                *log = Arc::new(KafkaLog::new(config).expect("recreate kafka clients"));
            }
        }
    }
}

pub(crate) fn record(key: Option<&str>, value: &str, timestamp: i64) -> ProduceRecord {
    ProduceRecord {
        key: key.map(|key| Bytes::copy_from_slice(key.as_bytes())),
        value: Bytes::copy_from_slice(value.as_bytes()),
        timestamp,
        headers: Vec::new(),
        partition: None,
    }
}

pub(crate) fn to_partition(partition: u32, value: &str, timestamp: i64) -> ProduceRecord {
    ProduceRecord {
        partition: Some(partition),
        ..record(None, value, timestamp)
    }
}

/// Reads exactly `count` records from a partition starting at `start`, failing after 30 s.
pub(crate) async fn read_n(
    log: &dyn Log,
    topic: &str,
    partition: u32,
    start: runnel_log::StartOffset,
    count: usize,
) -> Vec<Record> {
    let mut reader = log
        .reader(topic, partition, start)
        .await
        .expect("open reader");
    read_n_from(reader.as_mut(), count).await
}

pub(crate) async fn read_n_from(
    reader: &mut dyn runnel_log::PartitionReader,
    count: usize,
) -> Vec<Record> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut records = Vec::new();
    while records.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {count} records in 30 s",
            records.len()
        );
        let batch = reader
            .next_batch(count - records.len(), Duration::from_millis(500))
            .await
            .expect("read batch");
        records.extend(batch);
    }
    records
}

pub(crate) fn value_str(record: &Record) -> &str {
    std::str::from_utf8(&record.value).expect("test values are UTF-8")
}
