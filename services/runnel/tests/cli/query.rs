//! `runnel all` as a real process (the four services over the embedded log), fed by
//! `runnel ingest` and queried by `runnel query` and `runnel results export` over gRPC.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;

use super::{KillOnDrop, rfc3339, runnel, start_listening};

/// A job over `clicks` grouped by its key, quick to checkpoint and to serve.
pub(super) const CONFIG: &str = r#"
[serving]
view-poll-interval = "100ms"
[stream-processor]
checkpoint-interval = "200ms"
[[jobs]]
name = "views"
sql = """
SELECT user_id, window_start, window_end, COUNT(*) AS views, SUM(duration_ms) AS total_ms
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
WHERE country <> 'test'
GROUP BY user_id, window_start, window_end
"""
"#;

/// `runnel all`, and the addresses its ingest and serving services logged.
pub(super) struct RunnelAll {
    _process: KillOnDrop,
    pub(super) ingest: String,
    pub(super) serving: String,
}

impl RunnelAll {
    pub(super) fn start(dir: &Path) -> RunnelAll {
        RunnelAll::start_with(dir, &[])
    }

    /// Starts it with more environment variables.
    pub(super) fn start_with(dir: &Path, env: &[(&str, &str)]) -> RunnelAll {
        // The test's events are from 1970.
        let mut env = env.to_vec();
        env.push(("RUNNEL__STREAMS__0__MAX_EVENT_TIME_BEHIND", "100000d"));
        let (process, urls) = start_listening(
            dir,
            &["--config", "runnel.toml", "all"],
            &env,
            &["ingest", "serving"],
        );
        RunnelAll {
            _process: process,
            ingest: urls["ingest"].clone(),
            serving: urls["serving"].clone(),
        }
    }
}

pub(super) fn succeeds(dir: &Path, args: &[&str]) -> String {
    let run = runnel(dir, args);
    assert!(
        run.status.success(),
        "runnel {args:?}: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[test]
fn query_and_export_read_results_from_the_serving_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The first minute's events, then one event per user at 3:20 so that every partition's
    // watermark passes the first minute's end.
    let mut events: Vec<(i64, String, &str, &str, i64)> = vec![
        (1_000, "u1".into(), "/a", "de", 100),
        (2_000, "u2".into(), "/b", "de", 200),
        (30_000, "u2".into(), "/a", "fr", 300),
        (45_000, "u3".into(), "/a", "test", 50),
    ];
    events.extend((0..40).map(|user| (200_000, format!("u{user}"), "/z", "de", 1)));
    let jsonl: String = events
        .iter()
        .map(|(time, user, page, country, duration)| {
            format!(
                "{{\"event_time\": \"{}\", \"user_id\": \"{user}\", \"page\": \"{page}\", \"country\": \"{country}\", \"duration_ms\": {duration}}}\n",
                rfc3339(*time)
            )
        })
        .collect();
    std::fs::write(dir.path().join("events.jsonl"), jsonl).expect("write events");
    std::fs::write(dir.path().join("runnel.toml"), CONFIG).expect("write config");
    let all = RunnelAll::start(dir.path());
    let ingested = succeeds(
        dir.path(),
        &[
            "ingest",
            "--stream",
            "clicks",
            "--file",
            "events.jsonl",
            "--url",
            &all.ingest,
        ],
    );
    assert!(
        ingested.starts_with("accepted 44, rejected 0"),
        "{ingested}"
    );

    // u2 in the first minute: two events; u3's one is filtered out (country `test`).
    let query = |key: &str| {
        succeeds(
            dir.path(),
            &[
                "--config",
                "runnel.toml",
                "query",
                "windows",
                "--job",
                "views",
                "--key",
                key,
                "--url",
                &all.serving,
                "--format",
                "jsonl",
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let answer = query("u2");
        if !answer.trim().is_empty() {
            break answer;
        }
        assert!(Instant::now() < deadline, "no result for u2 within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let rows: Vec<serde_json::Value> = answer
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(rows.len(), 1, "{answer}");
    assert_eq!(rows[0]["key"], r#"["u2"]"#);
    assert_eq!(rows[0]["window_start"], "1970-01-01T00:00:00.000Z");
    assert_eq!(rows[0]["values"]["views"], 2);
    assert_eq!(rows[0]["values"]["total_ms"], 500);
    assert_eq!(rows[0]["final"], true);
    assert_eq!(rows[0]["source"], "speed");
    let u1 = query(r#"["u1"]"#);
    assert!(
        u1.contains(r#""views":1"#) && u1.contains(r#""total_ms":100"#),
        "{u1}"
    );
    assert_eq!(query("u3"), "", "no window without events");

    let table = succeeds(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "query",
            "window",
            "--job",
            "views",
            "--start",
            "0",
            "--url",
            &all.serving,
        ],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two keys: {table}");
    assert!(
        lines[0].starts_with("user_id") && lines[0].contains("views"),
        "{table}"
    );
    let top = succeeds(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "query",
            "topk",
            "--job",
            "views",
            "--start",
            "1970-01-01T00:00:00Z",
            "--by",
            "total_ms",
            "--k",
            "1",
            "--url",
            &all.serving,
        ],
    );
    assert!(
        top.lines().nth(1).is_some_and(|row| row.starts_with("u2 ")),
        "{top}"
    );
    let jobs = succeeds(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "query",
            "jobs",
            "--url",
            &all.serving,
        ],
    );
    assert!(
        jobs.lines()
            .nth(1)
            .is_some_and(|row| row.starts_with("views")),
        "{jobs}"
    );

    // Export to Parquet, read back by the parquet crate; and to JSON lines.
    let exported = succeeds(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "results",
            "export",
            "--job",
            "views",
            "--out",
            "results.parquet",
            "--url",
            &all.serving,
        ],
    );
    assert!(exported.starts_with("exported 2 results"), "{exported}");
    let file = std::fs::File::open(dir.path().join("results.parquet")).expect("open export");
    let batches: Vec<RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("a Parquet file")
            .build()
            .expect("reader")
            .collect::<Result<_, _>>()
            .expect("read export");
    let mut views: BTreeMap<String, i64> = BTreeMap::new();
    for batch in &batches {
        let keys = batch
            .column_by_name("_key")
            .expect("_key")
            .as_string::<i32>();
        let counts = batch
            .column_by_name("views")
            .expect("views")
            .as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            views.insert(keys.value(row).to_string(), counts.value(row));
        }
    }
    assert_eq!(
        views,
        BTreeMap::from([(r#"["u1"]"#.to_string(), 1), (r#"["u2"]"#.to_string(), 2)])
    );
    succeeds(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "results",
            "export",
            "--job",
            "views",
            "--out",
            "results.jsonl",
            "--url",
            &all.serving,
        ],
    );
    let jsonl = std::fs::read_to_string(dir.path().join("results.jsonl")).expect("read jsonl");
    assert_eq!(jsonl.lines().count(), 2, "{jsonl}");

    // A bad query says which field.
    let refused = runnel(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "query",
            "windows",
            "--job",
            "nope",
            "--key",
            "x",
            "--url",
            &all.serving,
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("NotFound") && stderr.contains("job: `nope` is not declared"),
        "{stderr}"
    );
}

#[test]
fn archive_flush_puts_every_acknowledged_event_in_the_history_for_a_recompute() {
    let dir = tempfile::tempdir().expect("temp dir");
    let jsonl: String = (0..40)
        .map(|n| {
            format!(
                "{{\"event_time\": \"{}\", \"user_id\": \"u{n}\", \"page\": \"/a\", \"country\": \"de\", \"duration_ms\": {n}}}\n",
                rfc3339(1_000 * n)
            )
        })
        .collect();
    std::fs::write(dir.path().join("events.jsonl"), jsonl).expect("write events");
    std::fs::write(dir.path().join("runnel.toml"), CONFIG).expect("write config");
    let all = RunnelAll::start(dir.path());
    let ingest = [
        "--config",
        "runnel.toml",
        "ingest",
        "--stream",
        "clicks",
        "--file",
        "events.jsonl",
        "--url",
        &all.ingest,
    ];
    assert!(succeeds(dir.path(), &ingest).starts_with("accepted 40, rejected 0"));
    let recompute = [
        "--config",
        "runnel.toml",
        "backfill",
        "--job",
        "views",
        "--mode",
        "recompute",
    ];
    // archive.max-file-age (5 min) has not passed: the history holds none of them yet.
    let mut no_flush = recompute.to_vec();
    no_flush.push("--no-flush");
    let before = succeeds(dir.path(), &no_flush);
    assert!(
        before.contains("40 events of `clicks` are in the log but not yet in the history"),
        "{before}"
    );
    assert!(before.contains("runnel archive --flush"), "{before}");

    let flushed = succeeds(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "archive",
            "--flush",
            "--url",
            &all.ingest,
        ],
    );
    // Every partition of both default streams, clicks and user_updates (empty), 4 each.
    assert!(flushed.contains("flushed 8 of 8 partitions"), "{flushed}");
    let after = succeeds(dir.path(), &recompute);
    assert!(!after.contains("not yet in the history"), "{after}");
    // One file per partition, each finished early by the flush.
    assert!(after.contains("in 4 history files"), "{after}");

    // A recompute asks the ingest service to flush by itself first.
    let later: String = (40..50)
        .map(|n| {
            format!(
                "{{\"event_time\": \"{}\", \"user_id\": \"u{n}\", \"page\": \"/a\", \"country\": \"de\", \"duration_ms\": {n}}}\n",
                rfc3339(1_000 * n)
            )
        })
        .collect();
    std::fs::write(dir.path().join("events.jsonl"), later).expect("write events");
    assert!(succeeds(dir.path(), &ingest).starts_with("accepted 10, rejected 0"));
    // The recompute finds the ingest service where its config says it listens.
    let listen = all.ingest.trim_start_matches("http://");
    let run = crate::output::runnel_with(
        dir.path(),
        &recompute,
        &[("RUNNEL__INGEST__LISTEN", listen)],
    );
    let flushed_first = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{flushed_first}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        // The archiver flushes every stream's partitions, user_updates' too.
        flushed_first.contains("archived what the log held first: 8 of 8 partitions flushed"),
        "{flushed_first}"
    );
    assert!(
        !flushed_first.contains("not yet in the history"),
        "{flushed_first}"
    );
}
