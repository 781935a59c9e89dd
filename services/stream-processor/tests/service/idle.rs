//! `idle-timeout` end to end: two jobs grouped by page (so both read through their
//! repartition topics, one operator input per source partition) over a stream whose second
//! partition falls silent after its first events. The job with an idle timeout fires its windows as
//! the first partition's events advance the arrival clock, once the silent partition's router
//! has said it is at its end; the job without one holds every window open at the silent
//! partition's watermark.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_config::Config;
use runnel_jobs::results_topic;
use runnel_log::{EmbeddedLog, Log, ProduceRecord, StartOffset};
use runnel_stream_processor::StatusRegistry;
use tokio_util::sync::CancellationToken;

const BASE_MS: i64 = 1_795_305_600_000;
/// Events of partition 0, one a second in event time and in log time.
const BUSY_EVENTS: i64 = 60;
const WINDOW_MS: i64 = 10_000;
const MAX_OUT_OF_ORDERNESS_MS: i64 = 1_000;

fn write_config(root: &Path) -> Config {
    let path = root.join("runnel.toml");
    let job = |name: &str, idle: &str| {
        format!(
            r#"[[jobs]]
name = "{name}"
sql = """
SELECT page, window_start, window_end, COUNT(*) AS views
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND)
GROUP BY page, window_start, window_end
"""
max-out-of-orderness = "{MAX_OUT_OF_ORDERNESS_MS}ms"
allowed-lateness = "0s"
{idle}
"#
        )
    };
    let clicks_stream = runnel_testkit::streams::Stream::clicks(
        2,
        Some("user_id"),
        &["event_time", "user_id", "page"],
    )
    .toml();
    let toml = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
[stream-processor]
checkpoint-interval = "200ms"
metrics-listen = "127.0.0.1:0"
{clicks_stream}{idle_job}
{stuck_job}"#,
        data = root.join("data").display(),
        idle_job = job("pages-idle", "idle-timeout = \"5s\""),
        stuck_job = job("pages-stuck", ""),
    );
    std::fs::write(&path, toml).expect("write config");
    Config::load(&[path], &Default::default()).expect("valid config")
}

fn event(partition: u32, at_ms: i64, page: &str) -> ProduceRecord {
    ProduceRecord {
        key: Some(Bytes::from(format!("user-{partition}"))),
        value: Bytes::from(format!(
            r#"{{"event_time":{at_ms},"user_id":"user-{partition}","page":"{page}"}}"#
        )),
        // The log time (the arrival clock) moves with the event time.
        timestamp: at_ms,
        headers: Vec::new(),
        partition: Some(partition),
    }
}

/// The latest version of each result of `job`: (page key, window start) to (views, final).
async fn latest_results(log: &dyn Log, job: &str) -> BTreeMap<(String, i64), (u64, bool)> {
    let topic = results_topic(job);
    let mut latest: BTreeMap<(String, i64), (u64, u64, bool)> = BTreeMap::new();
    for partition in 0..2 {
        let end = log.latest_offset(&topic, partition).await.expect("end");
        let mut reader = log
            .reader(&topic, partition, StartOffset::Earliest)
            .await
            .expect("reader");
        while reader.position() < end {
            for record in reader
                .next_batch(1000, Duration::from_secs(1))
                .await
                .expect("read")
            {
                let key = String::from_utf8(record.key.expect("key").to_vec()).expect("utf-8");
                let (group, window) = key.rsplit_once('@').expect("<key>@<window start>");
                let row: serde_json::Value = serde_json::from_slice(&record.value).expect("JSON");
                let version = row["_version"].as_u64().expect("_version");
                let value = (
                    version,
                    row["views"].as_u64().expect("views"),
                    row["_final"].as_bool().expect("_final"),
                );
                let slot = latest
                    .entry((group.to_string(), window.parse().expect("ms")))
                    .or_insert(value);
                if slot.0 < version {
                    *slot = value;
                }
            }
        }
    }
    latest
        .into_iter()
        .map(|(key, (_, views, fired))| (key, (views, fired)))
        .collect()
}

/// Waits until the window tasks of both jobs have read `events` routed events.
async fn wait_until_read(status: &StatusRegistry, events: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let read = |job: &str| status.job(job).map_or(0, |job| job.events_total);
        if read("pages-idle") == events && read("pages-stuck") == events {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{events} events not read in 60 s: {:?}",
            status.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stream-processor running both jobs in this process over a fresh embedded log.
struct Running {
    embedded: Arc<EmbeddedLog>,
    log: Arc<dyn Log>,
    status: Arc<StatusRegistry>,
    shutdown: CancellationToken,
    service: tokio::task::JoinHandle<Result<(), runnel_stream_processor::StreamProcessorError>>,
}

impl Running {
    /// Stops the service cleanly and closes the log.
    async fn stop(self) {
        self.shutdown.cancel();
        self.service.await.expect("join").expect("clean stop");
        self.embedded.close().await;
    }
}

async fn start(root: &Path) -> Running {
    let config = write_config(root);
    let embedded = Arc::new(
        EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
            .await
            .expect("open log"),
    );
    embedded.ensure_topic("clicks", 2).await.expect("topic");
    let log: Arc<dyn Log> = Arc::clone(&embedded) as Arc<dyn Log>;
    let status = Arc::new(StatusRegistry::new());
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(runnel_stream_processor::run_with_status(
        config,
        Arc::clone(&log),
        Arc::clone(&status),
        shutdown.clone(),
    ));
    Running {
        embedded,
        log,
        status,
        shutdown,
        service,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_partition_holds_the_watermark_until_its_idle_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(dir.path()).await;
    let (log, status) = (Arc::clone(&running.log), Arc::clone(&running.status));

    // Partition 1 says one thing per page at the start and falls silent. Every window task
    // with a page reads it first, so the arrival clock starts there for each of them.
    let pages = ["/a", "/b", "/c"];
    let silent: Vec<ProduceRecord> = pages.iter().map(|page| event(1, BASE_MS, page)).collect();
    log.append("clicks", silent).await.expect("append");
    wait_until_read(&status, pages.len() as u64).await;
    // Partition 0 goes on for a minute.
    let busy = (0..BUSY_EVENTS)
        .map(|n| {
            event(
                0,
                BASE_MS + n * 1000,
                pages[usize::try_from(n).expect("small") % 3],
            )
        })
        .collect();
    log.append("clicks", busy).await.expect("append");
    wait_until_read(&status, pages.len() as u64 + BUSY_EVENTS as u64).await;

    // With the timeout: once partition 1's router has said it is at its end (its first read
    // that finds nothing new), partition 0's watermark rules, 59 s past the base; the windows
    // ending by then fire, each with every event of its window (partition 1's included).
    let watermark = BASE_MS + (BUSY_EVENTS - 1) * 1000 - MAX_OUT_OF_ORDERNESS_MS;
    let expected: BTreeMap<i64, u64> = (0..)
        .map(|window| BASE_MS + window * WINDOW_MS)
        .take_while(|start| start + WINDOW_MS <= watermark)
        .map(|start| (start, if start == BASE_MS { 13 } else { 10 }))
        .collect();
    assert_eq!(expected.len(), 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let idle = latest_results(log.as_ref(), "pages-idle").await;
        let fired: BTreeMap<i64, u64> = idle.iter().filter(|(_, (_, fired))| *fired).fold(
            BTreeMap::new(),
            |mut windows, ((_, start), (views, _))| {
                *windows.entry(*start).or_default() += views;
                windows
            },
        );
        if fired == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fired windows and their event counts: {fired:?}, not {expected:?}: {idle:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stuck = latest_results(log.as_ref(), "pages-stuck").await;
    running.stop().await;

    // Without it: partition 1's watermark (its one event, less the out-of-orderness) holds
    // every window open.
    assert!(
        stuck.values().all(|(_, fired)| !fired),
        "the job without an idle timeout fired a window: {stuck:?}"
    );
}

/// A page whose repartition partition gets no more events after its first: the routers'
/// progress markers carry both source partitions' event time there, so its window fires
/// once every source partition has moved past its end (and not only at an idle timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_further_events_fires_once_every_source_partition_moved_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = start(dir.path()).await;
    let (log, status) = (Arc::clone(&running.log), Arc::clone(&running.status));

    // Two pages whose groups land in different repartition partitions.
    let repartition_of =
        |page: &str| runnel_log::partition_for_key(format!("[\"{page}\"]").as_bytes(), 2);
    let quiet = "/quiet";
    let busy = ["/a", "/b", "/c", "/d", "/e"]
        .into_iter()
        .find(|page| repartition_of(page) != repartition_of(quiet))
        .expect("a page in the other repartition partition");
    log.append("clicks", vec![event(0, BASE_MS, quiet)])
        .await
        .expect("append");
    let busy_events: Vec<ProduceRecord> = (1..=30)
        .flat_map(|second| [0, 1].map(|partition| event(partition, BASE_MS + second * 1000, busy)))
        .collect();
    log.append("clicks", busy_events).await.expect("append");
    wait_until_read(&status, 61).await;

    let key = (format!("[\"{quiet}\"]"), BASE_MS);
    let deadline = Instant::now() + Duration::from_secs(30);
    for job in ["pages-stuck", "pages-idle"] {
        loop {
            let results = latest_results(log.as_ref(), job).await;
            if results.get(&key) == Some(&(1, true)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{job}: the quiet page's window never fired: {results:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    running.stop().await;
}
