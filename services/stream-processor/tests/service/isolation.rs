//! One bad event or one failing job does not stop the others: an event whose expressions
//! fail goes to its job's late topic with the reason, partition and offset while the job
//! goes on; a job whose task fails on something that is not an event (here, its checkpoint
//! folder is blocked) is restarted a bounded number of times, then reported failed on
//! `/status`, `/metrics` and beside its checkpoints, while the other jobs keep running.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_config::Config;
use runnel_jobs::{late_topic, results_topic};
use runnel_log::{EmbeddedLog, Log, ProduceRecord, StartOffset};
use runnel_stream_processor::{JobState, StatusRegistry};
use tokio_util::sync::CancellationToken;

use crate::status::get;

const BASE_MS: i64 = 1_795_305_600_000;

fn write_config(root: &Path) -> Config {
    let path = root.join("runnel.toml");
    let job = |name: &str, select: &str| {
        format!(
            r#"[[jobs]]
name = "{name}"
sql = """
SELECT page, window_start, window_end, {select}
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND)
GROUP BY page, window_start, window_end
"""
"#
        )
    };
    let toml = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
[stream-processor]
checkpoint-interval = "100ms"
metrics-listen = "127.0.0.1:0"
max-job-restarts = 2
job-restart-backoff = "50ms"
[[streams]]
name = "clicks"
partitions = 1
key = "page"
event-time = "event_time"
schema = [
  {{ name = "event_time", type = "timestamp" }},
  {{ name = "page", type = "string" }},
  {{ name = "duration_ms", type = "int64" }},
]
{scores}{counts}{broken}"#,
        data = root.join("data").display(),
        scores = job("scores", "SUM(100 / (duration_ms - 1)) AS score"),
        counts = job("counts", "COUNT(*) AS views"),
        broken = job("broken", "COUNT(*) AS views"),
    );
    std::fs::write(&path, toml).expect("write config");
    Config::load(&[path], &Default::default()).expect("valid config")
}

fn event(at_ms: i64, duration_ms: i64) -> ProduceRecord {
    ProduceRecord {
        partition: Some(0),
        key: Some(Bytes::from_static(b"/home")),
        value: Bytes::from(format!(
            r#"{{"event_time":{at_ms},"page":"/home","duration_ms":{duration_ms}}}"#
        )),
        timestamp: at_ms,
        headers: Vec::new(),
    }
}

/// Every record of `topic`'s partition 0, as JSON.
async fn read_all(log: &dyn Log, topic: &str) -> Vec<serde_json::Value> {
    let end = log.latest_offset(topic, 0).await.expect("end");
    let mut reader = log
        .reader(topic, 0, StartOffset::Earliest)
        .await
        .expect("reader");
    let mut rows = Vec::new();
    while reader.position() < end {
        for record in reader
            .next_batch(1000, Duration::from_secs(1))
            .await
            .expect("read")
        {
            rows.push(serde_json::from_slice(&record.value).expect("JSON"));
        }
    }
    rows
}

/// Waits up to 30 s for `done` to hold of the status of `job`.
async fn wait_for(
    status: &StatusRegistry,
    job: &str,
    what: &str,
    done: impl Fn(&runnel_stream_processor::JobStatus) -> bool,
) -> runnel_stream_processor::JobStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(job_status) = status.job(job)
            && done(&job_status)
        {
            return job_status;
        }
        assert!(
            Instant::now() < deadline,
            "{job}: not {what} in 30 s: {:?}",
            status.job(job)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_and_a_failing_job_stop_nothing_else() {
    let logs = crate::status::captured_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path());
    // The `broken` job's checkpoints of partition 0 cannot be written: a file stands where
    // their folder goes. That fails its task whatever the events are.
    let blocked = dir.path().join("data/objects/checkpoints/broken");
    std::fs::create_dir_all(&blocked).expect("create folders");
    std::fs::write(blocked.join("0"), b"not a folder").expect("block the folder");

    let embedded = Arc::new(
        EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
            .await
            .expect("open log"),
    );
    embedded.ensure_topic("clicks", 1).await.expect("topic");
    let log: Arc<dyn Log> = Arc::clone(&embedded) as Arc<dyn Log>;
    // Events at 1 s, 2 s (duration 1: 100 / 0 in `scores`), 3 s, then 25 s, which closes
    // the window [0 s, 10 s) and opens [20 s, 30 s).
    log.append(
        "clicks",
        vec![
            event(BASE_MS + 1_000, 11),
            event(BASE_MS + 2_000, 1),
            event(BASE_MS + 3_000, 51),
            event(BASE_MS + 25_000, 3),
        ],
    )
    .await
    .expect("append");

    let status = Arc::new(StatusRegistry::new());
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(runnel_stream_processor::run_with_status(
        config.clone(),
        Arc::clone(&log),
        Arc::clone(&status),
        shutdown.clone(),
    ));

    // `broken` fails, is restarted twice, and is given up.
    let broken = wait_for(&status, "broken", "failed", |job| {
        job.state == JobState::Failed
    })
    .await;
    assert_eq!(broken.restarts, 2, "{broken:?}");
    assert!(broken.partitions.is_empty(), "{broken:?}");
    let error = broken.last_error.as_deref().expect("the failure");
    assert!(
        error.contains("job `broken` partition 0 at source offset"),
        "{error}"
    );
    assert!(!service.is_finished(), "the service stopped with one job");
    let store = runnel_archive::open_object_store(
        &config.object_store_url(),
        &config.storage.object_store_options,
    )
    .expect("open store");
    let failure = runnel_jobs::checkpoint::job_failure(store.as_ref(), "checkpoints", "broken")
        .await
        .expect("read the failure")
        .expect("the failure is recorded for other processes");
    assert_eq!(failure.restarts, 2);
    assert_eq!(failure.error, error);

    // `scores` counted the good events and sent the poison one to its late topic.
    let scores = wait_for(&status, "scores", "past its first window", |job| {
        job.errors_total == 1 && job.partitions.first().is_some_and(|p| p.source_offset == 4)
    })
    .await;
    assert_eq!(scores.state, JobState::Running);
    let late = read_all(log.as_ref(), &late_topic("scores")).await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0]["_offset"], 1, "{late:?}");
    assert_eq!(late[0]["_partition"], 0, "{late:?}");
    assert_eq!(late[0]["duration_ms"], 1, "{late:?}");
    let reason = late[0]["_reason"].as_str().expect("a reason");
    assert!(reason.contains("Divide by zero"), "{reason}");
    let results = read_all(log.as_ref(), &results_topic("scores")).await;
    assert_eq!(results.len(), 1, "{results:?}");
    // 100 / 10 + 100 / 50: the two good events of the window.
    assert_eq!(results[0]["score"], 12, "{results:?}");

    // The other jobs go on: a later event closes the next window for both.
    log.append("clicks", vec![event(BASE_MS + 45_000, 5)])
        .await
        .expect("append");
    for job in ["scores", "counts"] {
        wait_for(&status, job, "at offset 5", |status| {
            status
                .partitions
                .first()
                .is_some_and(|p| p.source_offset == 5)
        })
        .await;
    }
    let views = read_all(log.as_ref(), &results_topic("counts")).await;
    let counts: Vec<i64> = views
        .iter()
        .map(|row| row["views"].as_i64().expect("views"))
        .collect();
    // The poison event of `scores` is an ordinary event here.
    assert_eq!(counts, [3, 1], "{views:?}");

    // The endpoint says which job failed.
    let address = logs_metrics_address(&logs, &status).await;
    let (_, _, metrics) = get(&address, "/metrics").await;
    assert!(
        metrics.contains("runnel_job_failed{job=\"broken\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runnel_job_failed{job=\"counts\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runnel_job_restarts_total{job=\"broken\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runnel_job_errors_total{job=\"scores\",partition=\"0\"} 1"),
        "{metrics}"
    );
    let (_, _, body) = get(&address, "/status").await;
    assert!(body.contains(r#""state":"failed""#), "{body}");

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), service)
        .await
        .expect("stops within 10 s")
        .expect("no panic")
        .expect("the service stops cleanly with a failed job");
}

/// The metrics address of the service whose status lists `scores`, from the logs.
async fn logs_metrics_address(logs: &std::sync::Mutex<Vec<u8>>, status: &StatusRegistry) -> String {
    assert!(status.job("scores").is_some());
    crate::status::metrics_address(logs, "scores").await
}
