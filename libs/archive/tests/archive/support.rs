//! Fixtures: an embedded log with a `clicks` stream, canonical events, reading files back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use bytes::Bytes;
use object_store::ObjectStore;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use runnel_config::{Config, FieldConfig, FieldType, StreamConfig};
use runnel_log::{EmbeddedLog, Log, ProduceRecord};
use tempfile::TempDir;

pub(crate) const STREAM: &str = "clicks";
pub(crate) const DAY_MS: i64 = 86_400_000;
/// 2026-11-22T00:00:00Z.
pub(crate) const BASE_MS: i64 = 1_795_305_600_000;

/// One event as the tests know it: where it landed and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Event {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) ingest_time: i64,
    pub(crate) event_time: i64,
    pub(crate) user_id: String,
    pub(crate) page: String,
    pub(crate) duration_ms: Option<i64>,
}

pub(crate) struct Fixture {
    pub(crate) dir: TempDir,
    pub(crate) config: Config,
    pub(crate) log: Arc<dyn Log>,
    /// The log, when it is the embedded one (for retention and close).
    pub(crate) embedded: Option<Arc<EmbeddedLog>>,
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The stream (and topic): `clicks`, or a name unique to the run on a shared broker.
    pub(crate) stream: String,
}

/// A temporary folder and a config over it: the object store in `<dir>/objects`, small files.
fn base_config(stream: &str, partitions: u32) -> (TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded_defaults();
    config.storage.data_dir = dir.path().to_path_buf();
    config.storage.object_store_url = None;
    config.streams = vec![stream_config(stream, partitions)];
    config.archive.target_file_bytes = 16 * 1024;
    config.archive.row_group_rows = 1000;
    config.archive.poll_interval = Duration::from_millis(20);
    (dir, config)
}

pub(crate) fn stream_config(name: &str, partitions: u32) -> StreamConfig {
    let field = |name: &str, field_type, nullable| FieldConfig {
        name: name.to_string(),
        field_type,
        nullable,
    };
    StreamConfig::new(
        name,
        partitions,
        Some("user_id".to_string()),
        "event_time",
        vec![
            field("event_time", FieldType::Timestamp, false),
            field("user_id", FieldType::String, false),
            field("page", FieldType::String, false),
            field("duration_ms", FieldType::Int64, true),
        ],
    )
}

impl Fixture {
    /// A log in a temporary folder, a `file://` object store beside it, and a `clicks` stream.
    pub(crate) async fn new(partitions: u32) -> Fixture {
        let (dir, config) = base_config(STREAM, partitions);
        let log = Arc::new(
            EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
                .await
                .unwrap(),
        );
        Fixture::with_log(dir, config, log.clone(), Some(log)).await
    }

    /// The same on the Kafka broker at `KAFKA_BOOTSTRAP`, with a stream named for this run;
    /// `None` if no broker is configured (and none required by `RUNNEL_REQUIRE_KAFKA=1`).
    pub(crate) async fn kafka(partitions: u32) -> Option<Fixture> {
        let bootstrap = runnel_testkit::gate::kafka_bootstrap("a Kafka test")?;
        let stream = format!(
            "clicks-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let (dir, mut config) = base_config(&stream, partitions);
        config.storage.log.backend = runnel_config::LogBackend::Kafka;
        config.storage.log.kafka.bootstrap_servers = bootstrap;
        let log = Arc::new(runnel_log::KafkaLog::new(&config.storage.log.kafka).unwrap());
        Some(Fixture::with_log(dir, config, log, None).await)
    }

    async fn with_log(
        dir: TempDir,
        config: Config,
        log: Arc<dyn Log>,
        embedded: Option<Arc<EmbeddedLog>>,
    ) -> Fixture {
        let stream = config.streams[0].name.clone();
        log.ensure_topic(&stream, config.streams[0].partitions)
            .await
            .unwrap();
        let store = runnel_archive::open_object_store(
            &config.object_store_url(),
            &config.storage.object_store_options,
        )
        .unwrap();
        Fixture {
            dir,
            config,
            log,
            embedded,
            store,
            stream,
        }
    }

    pub(crate) fn log(&self) -> Arc<dyn Log> {
        self.log.clone()
    }

    /// The embedded log (panics on Kafka).
    pub(crate) fn embedded(&self) -> &EmbeddedLog {
        self.embedded.as_deref().expect("an embedded-log fixture")
    }

    pub(crate) fn objects_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("objects")
    }

    pub(crate) fn schema(&self) -> runnel_events::StreamSchema {
        runnel_events::StreamSchema::new(&self.config.streams[0])
    }

    /// Appends `count` canonical events, `per_append` per append call, the n-th (from
    /// `first_n`) with ingest time `ingest(n)`; returns them with their positions.
    pub(crate) async fn append(
        &self,
        first_n: u64,
        count: u64,
        per_append: u64,
        ingest: impl Fn(u64) -> i64,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        let mut n = first_n;
        while n < first_n + count {
            let end = (n + per_append).min(first_n + count);
            let batch: Vec<(ProduceRecord, Event)> = (n..end)
                .map(|n| {
                    let event = Event {
                        partition: 0,
                        offset: 0,
                        ingest_time: ingest(n),
                        event_time: BASE_MS + (n as i64) * 10,
                        user_id: format!("user-{}", n % 37),
                        page: format!("/page/{}", n % 11),
                        duration_ms: (n % 5 != 0).then_some(n as i64),
                    };
                    let record = ProduceRecord {
                        key: Some(Bytes::from(event.user_id.clone())),
                        value: Bytes::from(canonical_json(&event)),
                        timestamp: event.ingest_time,
                        headers: Vec::new(),
                        partition: None,
                    };
                    (record, event)
                })
                .collect();
            let (records, mut pending): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let positions = self.log.append(&self.stream, records).await.unwrap();
            for (event, position) in pending.iter_mut().zip(positions) {
                event.partition = position.partition;
                event.offset = position.offset;
            }
            events.extend(pending);
            n = end;
        }
        events
    }

    /// Appends a record whose value is `value`, to partition 0.
    pub(crate) async fn append_raw(&self, value: &str, ingest_time: i64) -> u64 {
        let record = ProduceRecord {
            key: None,
            value: Bytes::copy_from_slice(value.as_bytes()),
            timestamp: ingest_time,
            headers: Vec::new(),
            partition: Some(0),
        };
        self.log.append(&self.stream, vec![record]).await.unwrap()[0].offset
    }

    pub(crate) async fn archive(&self) -> runnel_archive::ArchiveSummary {
        runnel_archive::archive_until_caught_up(&self.config, self.log(), self.store.clone())
            .await
            .unwrap()
    }

    pub(crate) async fn manifest(&self) -> runnel_archive::Manifest {
        runnel_archive::load_manifest(
            self.store.as_ref(),
            &self.config.archive.prefix,
            &self.stream,
        )
        .await
        .unwrap()
        .expect("a manifest")
    }
}

/// Now, epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Each of `partitions` partitions' end offset after `events` (appended from offset 0).
pub(crate) fn partition_ends(events: &[Event], partitions: u32) -> Vec<u64> {
    (0..partitions)
        .map(|partition| {
            events
                .iter()
                .filter(|event| event.partition == partition)
                .count() as u64
        })
        .collect()
}

/// The record format, as the ingest service writes it.
pub(crate) fn canonical_json(event: &Event) -> String {
    let duration = match event.duration_ms {
        Some(value) => value.to_string(),
        None => "null".to_string(),
    };
    format!(
        r#"{{"event_time":{},"user_id":"{}","page":"{}","duration_ms":{}}}"#,
        event.event_time, event.user_id, event.page, duration
    )
}

/// Ingest time of the n-th event: one millisecond apart, from BASE_MS.
pub(crate) fn steady(n: u64) -> i64 {
    BASE_MS + n as i64
}

/// Turns batches of the stream's positioned schema back into events.
pub(crate) fn events_of(batches: &[RecordBatch]) -> Vec<Event> {
    let mut events = Vec::new();
    for batch in batches {
        let event_time = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let user = batch.column(1).as_string::<i32>();
        let page = batch.column(2).as_string::<i32>();
        let duration = batch.column(3).as_primitive::<Int64Type>();
        let partition = batch.column(4).as_primitive::<Int32Type>();
        let offset = batch.column(5).as_primitive::<Int64Type>();
        let ingest = batch.column(6).as_primitive::<TimestampMillisecondType>();
        for row in 0..batch.num_rows() {
            events.push(Event {
                partition: partition.value(row) as u32,
                offset: offset.value(row) as u64,
                ingest_time: ingest.value(row),
                event_time: event_time.value(row),
                user_id: user.value(row).to_string(),
                page: page.value(row).to_string(),
                duration_ms: (!duration.is_null(row)).then(|| duration.value(row)),
            });
        }
    }
    events
}

/// Reads one archived file with the synchronous Parquet reader.
pub(crate) fn read_file(path: &std::path::Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|batch| batch.unwrap())
        .collect()
}

/// Every file under `root`, relative path to bytes.
pub(crate) fn tree(root: &std::path::Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                files.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Sorted by partition and offset.
pub(crate) fn sorted(mut events: Vec<Event>) -> Vec<Event> {
    events.sort();
    events
}

/// Reads a partition through a hybrid source from the earliest offset to the log's end.
pub(crate) async fn read_partition_to_end(fixture: &Fixture, partition: u32) -> Vec<Event> {
    let end = fixture
        .log
        .latest_offset(&fixture.stream, partition)
        .await
        .unwrap();
    let mut source = runnel_archive::HybridSource::open(
        fixture.store.clone(),
        &fixture.config.archive.prefix,
        fixture.log(),
        &fixture.schema(),
        partition,
        runnel_archive::HybridStart::Earliest,
        200,
    )
    .await
    .unwrap();
    let mut read = Vec::new();
    while source.position() < end {
        let batch = source
            .next_batch(Duration::from_secs(5))
            .await
            .unwrap()
            .expect("a batch within 5 s");
        read.extend(events_of(&[batch]));
    }
    read
}

/// The events of one partition, in offset order.
pub(crate) fn of_partition(events: &[Event], partition: u32) -> Vec<Event> {
    sorted(
        events
            .iter()
            .filter(|event| event.partition == partition)
            .cloned()
            .collect(),
    )
}
