//! The status endpoint, fetched over real HTTP on loopback, reports what the service did
//! (offsets and lag, events, watermark, late events, results, checkpoints), matching what is
//! in the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_config::Config;
use runnel_log::{EmbeddedLog, Log, ProduceRecord};
use runnel_stream_processor::{JobStatus, StreamProcessorError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const JOB: &str = "views";
const PARTITIONS: u32 = 2;
const EVENTS: u64 = 4_000;
const BASE_MS: i64 = 1_795_305_600_000;
const WINDOW_MS: i64 = 10_000;
const MAX_OUT_OF_ORDERNESS_MS: i64 = 2_000;
const ALLOWED_LATENESS_MS: i64 = 5_000;

fn write_config(root: &Path, metrics_listen: &str) -> Config {
    let path = root.join("runnel.toml");
    let clicks_stream = runnel_testkit::streams::Stream::clicks(
        PARTITIONS,
        Some("user_id"),
        &["event_time", "user_id", "page", "duration_ms"],
    )
    .toml();
    let toml = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
[stream-processor]
checkpoint-interval = "200ms"
read-batch-records = 300
metrics-listen = "{metrics_listen}"
{clicks_stream}[[jobs]]
name = "{JOB}"
sql = """
SELECT user_id, window_start, window_end, COUNT(*) AS views, SUM(duration_ms) AS total_ms
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end
"""
max-out-of-orderness = "{MAX_OUT_OF_ORDERNESS_MS}ms"
allowed-lateness = "{ALLOWED_LATENESS_MS}ms"
"#,
        data = root.join("data").display(),
    );
    std::fs::write(&path, toml).expect("write config");
    Config::load(&[path], &Default::default()).expect("valid config")
}

/// Event `n`: 250 ms after event `n - 1` in event time, except every 17th, 4 s out of order
/// (an update within the lateness), and every 101st, a minute behind (too late).
fn event_time(n: u64) -> i64 {
    let mut event_time = BASE_MS + n as i64 * 250;
    if n.is_multiple_of(17) {
        event_time -= 4_000;
    }
    if n.is_multiple_of(101) {
        event_time -= 60_000;
    }
    event_time
}

fn partition_of(n: u64) -> u32 {
    (n % u64::from(PARTITIONS)) as u32
}

fn record(n: u64) -> ProduceRecord {
    let user = format!("user-{}", n % 53);
    ProduceRecord {
        key: Some(Bytes::from(user.clone())),
        value: Bytes::from(format!(
            r#"{{"event_time":{},"user_id":"{user}","page":"/p/{}","duration_ms":{}}}"#,
            event_time(n),
            n % 7,
            n % 1000
        )),
        timestamp: BASE_MS + n as i64,
        headers: Vec::new(),
        partition: Some(partition_of(n)),
    }
}

/// Per partition, the watermark after all events and the number of late events, by the
/// brief's rules: watermark = largest event time so far - max-out-of-orderness; an event is
/// late when its window's end plus the allowed lateness is at or below the watermark just
/// before it.
fn expected() -> BTreeMap<u32, (i64, u64)> {
    let mut max_event_time: BTreeMap<u32, i64> = BTreeMap::new();
    let mut late: BTreeMap<u32, u64> = BTreeMap::new();
    for n in 0..EVENTS {
        let partition = partition_of(n);
        let time = event_time(n);
        if let Some(max) = max_event_time.get(&partition) {
            let watermark = max - MAX_OUT_OF_ORDERNESS_MS;
            let window_end = time.div_euclid(WINDOW_MS) * WINDOW_MS + WINDOW_MS;
            if window_end + ALLOWED_LATENESS_MS <= watermark {
                *late.entry(partition).or_default() += 1;
            }
        }
        let max = max_event_time.entry(partition).or_insert(time);
        *max = (*max).max(time);
    }
    max_event_time
        .into_iter()
        .map(|(partition, max)| {
            (
                partition,
                (
                    max - MAX_OUT_OF_ORDERNESS_MS,
                    late.get(&partition).copied().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// Log lines of this test binary, as JSON (one global subscriber for all its tests).
pub(crate) fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let _ = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(Arc::clone(&sink)))
            .try_init();
        logs
    }))
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The address of the `metrics listening` INFO line of the service that runs `job` (other
/// tests of this binary run services too, and log to the same subscriber).
pub(crate) async fn metrics_address(logs: &Mutex<Vec<u8>>, job: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = String::from_utf8_lossy(&logs.lock().expect("log buffer")).into_owned();
        for line in text.lines() {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if event["fields"]["message"] == "metrics listening"
                && let Some(address) = event["fields"]["address"].as_str()
            {
                // Another test's service may have stopped since it logged its line.
                let Some((_, _, body)) = try_get(address, "/status").await else {
                    continue;
                };
                if body.contains(&format!(r#""job":"{job}""#)) {
                    return address.to_string();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no `metrics listening` line of a service running {job} in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP/1.1 GET of `path`: the status line, the lowercase headers and the body.
pub(crate) async fn get(address: &str, path: &str) -> (String, BTreeMap<String, String>, String) {
    try_get(address, path)
        .await
        .expect("connect to the metrics endpoint")
}

/// As [`get`], or `None` if nothing listens at `address`.
async fn try_get(address: &str, path: &str) -> Option<(String, BTreeMap<String, String>, String)> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .expect("read response");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line").to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .expect("a content length")
        .parse()
        .expect("a number");
    assert_eq!(body.len(), length, "{response}");
    Some((status_line, headers, body.to_string()))
}

async fn status(address: &str) -> Vec<JobStatus> {
    let (status_line, headers, body) = get(address, "/status").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let value: serde_json::Value = serde_json::from_str(&body).expect("JSON status");
    // `JobStatus` serializes but does not deserialize: rebuild what the test reads.
    value
        .as_array()
        .expect("an array of jobs")
        .iter()
        .map(|job| JobStatus {
            job: job["job"].as_str().expect("job").to_string(),
            stream: job["stream"].as_str().expect("stream").to_string(),
            watermark_ms: job["watermark_ms"].as_i64(),
            lag_records: job["lag_records"].as_u64().expect("lag"),
            events_total: job["events_total"].as_u64().expect("events"),
            events_per_second: job["events_per_second"].as_f64().expect("rate"),
            late_events_total: job["late_events_total"].as_u64().expect("late"),
            results_total: job["results_total"].as_u64().expect("results"),
            errors_total: job["errors_total"].as_u64().expect("errors"),
            state: match job["state"].as_str().expect("state") {
                "running" => runnel_stream_processor::JobState::Running,
                "restarting" => runnel_stream_processor::JobState::Restarting,
                "failed" => runnel_stream_processor::JobState::Failed,
                other => panic!("unknown job state {other}"),
            },
            restarts: job["restarts"].as_u64().expect("restarts") as u32,
            last_error: job["last_error"].as_str().map(str::to_string),
            partitions: serde_json::from_value::<Vec<serde_json::Value>>(job["partitions"].clone())
                .expect("partitions")
                .into_iter()
                .map(|partition| runnel_stream_processor::PartitionStatus {
                    partition: partition["partition"].as_u64().expect("partition") as u32,
                    watermark_ms: partition["watermark_ms"].as_i64(),
                    source_offset: partition["source_offset"].as_u64().expect("offset"),
                    end_offset: partition["end_offset"].as_u64().expect("end"),
                    lag_records: partition["lag_records"].as_u64().expect("lag"),
                    events_total: partition["events_total"].as_u64().expect("events"),
                    events_per_second: partition["events_per_second"].as_f64().expect("rate"),
                    late_events_total: partition["late_events_total"].as_u64().expect("late"),
                    results_total: partition["results_total"].as_u64().expect("results"),
                    errors_total: partition["errors_total"].as_u64().expect("errors"),
                    last_checkpoint: partition["last_checkpoint"].as_object().map(|checkpoint| {
                        runnel_stream_processor::CheckpointStatus {
                            epoch: checkpoint["epoch"].as_u64().expect("epoch"),
                            source_offset: checkpoint["source_offset"].as_u64().expect("offset"),
                            completed_at_ms: checkpoint["completed_at_ms"].as_i64(),
                            duration_seconds: checkpoint["duration_seconds"].as_f64(),
                        }
                    }),
                    other_offsets: partition["other_offsets"]
                        .as_array()
                        .map(|offsets| {
                            offsets
                                .iter()
                                .map(|offset| offset.as_u64().expect("offset"))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
            routed: serde_json::from_value::<Vec<serde_json::Value>>(job["routed"].clone())
                .expect("routed")
                .into_iter()
                .map(|routed| runnel_stream_processor::RoutedPartition {
                    partition: routed["partition"].as_u64().expect("partition") as u32,
                    source_offset: routed["source_offset"].as_u64().expect("offset"),
                    routed_total: routed["routed_total"].as_u64().expect("routed"),
                })
                .collect(),
        })
        .collect()
}

/// The value of the sample `series` (name and labels, as written) in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    let line = text
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"));
    line[prefix.len()..]
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_status_report_offsets_lag_events_watermark_and_late_events() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), "127.0.0.1:0");
    let embedded = Arc::new(
        EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
            .await
            .expect("open log"),
    );
    embedded
        .ensure_topic("clicks", PARTITIONS)
        .await
        .expect("topic");
    let log: Arc<dyn Log> = Arc::clone(&embedded) as Arc<dyn Log>;
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(runnel_stream_processor::run_with_log(
        config,
        Arc::clone(&log),
        shutdown.clone(),
    ));
    let address = metrics_address(&logs, JOB).await;

    // The job's status exists before any event: nothing processed, no watermark.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let jobs = status(&address).await;
        if jobs.first().is_some_and(|job| job.partitions.len() == 2) {
            break jobs;
        }
        assert!(Instant::now() < deadline, "no job status: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(before[0].job, JOB);
    assert_eq!(before[0].stream, "clicks");
    assert_eq!(before[0].events_total, 0);
    assert_eq!(before[0].watermark_ms, None);

    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(500) {
        log.append("clicks", chunk.iter().map(|&n| record(n)).collect())
            .await
            .expect("append");
    }
    let mut ends = Vec::new();
    for partition in 0..PARTITIONS {
        ends.push(
            log.latest_offset("clicks", partition)
                .await
                .expect("end offset"),
        );
    }
    assert_eq!(ends.iter().sum::<u64>(), EVENTS);

    // Caught up: every partition processed to its end, the end offset read since, and a
    // checkpoint taken there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let jobs = status(&address).await;
        let job = jobs.into_iter().next().expect("the job");
        let caught_up = job.partitions.iter().all(|partition| {
            let end = ends[partition.partition as usize];
            partition.source_offset == end
                && partition.end_offset == end
                && partition
                    .last_checkpoint
                    .as_ref()
                    .is_some_and(|checkpoint| checkpoint.source_offset == end)
        });
        if caught_up {
            break job;
        }
        assert!(Instant::now() < deadline, "not caught up in 60 s: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expected = expected();
    assert_eq!(job.lag_records, 0);
    assert_eq!(job.events_total, EVENTS);
    let expected_late: u64 = expected.values().map(|(_, late)| late).sum();
    assert!(expected_late > 10, "the data set has late events");
    assert_eq!(job.late_events_total, expected_late);
    assert_eq!(
        job.watermark_ms,
        expected.values().map(|(watermark, _)| *watermark).min()
    );
    let mut results_in_log = 0;
    let mut late_in_log = 0;
    for partition in &job.partitions {
        let number = partition.partition;
        let (watermark, late) = expected[&number];
        assert_eq!(partition.lag_records, 0, "{partition:?}");
        assert_eq!(
            partition.events_total, ends[number as usize],
            "{partition:?}"
        );
        assert_eq!(partition.watermark_ms, Some(watermark), "{partition:?}");
        assert_eq!(partition.late_events_total, late, "{partition:?}");
        let checkpoint = partition.last_checkpoint.as_ref().expect("a checkpoint");
        assert!(checkpoint.epoch >= 1, "{partition:?}");
        assert!(checkpoint.completed_at_ms.is_some(), "{partition:?}");
        assert!(checkpoint.duration_seconds.is_some(), "{partition:?}");
        // What the task says it emitted is what its partition of the outputs holds.
        let results = log
            .latest_offset(&format!("{JOB}.results"), number)
            .await
            .expect("results end");
        assert_eq!(partition.results_total, results, "{partition:?}");
        results_in_log += results;
        late_in_log += log
            .latest_offset(&format!("{JOB}.late"), number)
            .await
            .expect("late end");
    }
    assert!(results_in_log > 0);
    assert_eq!(job.results_total, results_in_log);
    assert_eq!(job.late_events_total, late_in_log);

    let (status_line, headers, text) = get(&address, "/metrics").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for family in [
        "# TYPE runnel_job_watermark_ms gauge",
        "# TYPE runnel_job_lag_records gauge",
        "# TYPE runnel_job_events_total counter",
        "# TYPE runnel_job_events_per_second gauge",
        "# TYPE runnel_job_late_events_total counter",
        "# TYPE runnel_job_results_total counter",
        "# TYPE runnel_job_last_checkpoint_epoch gauge",
        "# TYPE runnel_job_checkpoint_duration_seconds gauge",
    ] {
        assert!(text.lines().any(|line| line == family), "{family}:\n{text}");
    }
    for partition in &job.partitions {
        let number = partition.partition;
        let labels = format!("{{job=\"{JOB}\",partition=\"{number}\"}}");
        let (watermark, late) = expected[&number];
        let value = |name: &str| sample(&text, &format!("{name}{labels}"));
        assert_eq!(value("runnel_job_lag_records"), 0.0);
        assert_eq!(
            value("runnel_job_events_total"),
            ends[number as usize] as f64
        );
        assert_eq!(value("runnel_job_watermark_ms"), watermark as f64);
        assert_eq!(value("runnel_job_late_events_total"), late as f64);
        assert_eq!(
            value("runnel_job_results_total"),
            partition.results_total as f64
        );
        assert_eq!(
            value("runnel_job_log_end_offset"),
            ends[number as usize] as f64
        );
        assert!(value("runnel_job_last_checkpoint_epoch") >= 1.0);
        assert!(value("runnel_job_checkpoint_duration_seconds") >= 0.0);
    }
    let rate = sample(
        &text,
        &format!("runnel_job_events_per_second{{job=\"{JOB}\"}}"),
    );
    assert!(rate.is_finite() && rate >= 0.0, "{rate}");

    let (status_line, _, _) = get(&address, "/nothing").await;
    assert_eq!(status_line, "HTTP/1.1 404 Not Found");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("the service stops within 30 s")
        .expect("the service does not panic")
        .expect("the service stops cleanly");
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "the metrics endpoint stops with the service"
    );
    let logs = String::from_utf8_lossy(&logs.lock().expect("log buffer")).into_owned();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(r#""level":"ERROR""#))
        // `isolation` fails its `broken` job on purpose, in this test binary's one log.
        .filter(|line| !line.contains(r#""job":"broken""#))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    embedded.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_address_in_use_stops_the_service_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("address").to_string();
    let config = write_config(dir.path(), &address);
    let embedded = Arc::new(
        EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
            .await
            .expect("open log"),
    );
    embedded
        .ensure_topic("clicks", PARTITIONS)
        .await
        .expect("topic");
    let run = runnel_stream_processor::run_with_log(
        config,
        Arc::clone(&embedded) as Arc<dyn Log>,
        CancellationToken::new(),
    );
    let error = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the service stops at once")
        .expect_err("the address is in use");
    assert!(
        matches!(error, StreamProcessorError::MetricsListen { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&address) && message.contains("stream-processor.metrics-listen"),
        "{message}"
    );
    embedded.close().await;
}
