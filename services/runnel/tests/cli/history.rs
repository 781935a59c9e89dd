//! The Parquet history through real processes: events sent with `runnel ingest` to a
//! `runnel ingest-service` that archives them, read back by DuckDB; and the archiver killed
//! with SIGKILL at random moments (`runnel archive --once`), several rounds, then run to the
//! end: the history is the same, file for file and byte for byte, as one uninterrupted run's
//! over the same log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_config::Config;
use runnel_log::{EmbeddedLog, Log, ProduceRecord};

const EVENTS: u64 = 120_000;
const ROUNDS: usize = 8;

fn runnel_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
}

fn write_config(dir: &Path, objects: &str) -> PathBuf {
    let path = dir.join(format!("{objects}.toml"));
    let toml = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
object-store-url = "file://{objects}"
[archive]
target-file-bytes = 65536
row-group-rows = 2000
"#,
        data = dir.join("data").display(),
        objects = dir.join(objects).display(),
    );
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Fills the `clicks` stream with canonical events and closes the log.
async fn fill_log(dir: &Path) {
    let config_path = write_config(dir, "unused");
    let config = Config::load(&[config_path], &Default::default()).expect("config");
    let log = EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
        .await
        .expect("open log");
    let stream = config.stream("clicks").expect("default stream");
    log.ensure_topic("clicks", stream.partitions)
        .await
        .expect("topic");
    let base = 1_795_305_600_000_i64;
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(5000) {
        let records = chunk
            .iter()
            .map(|&n| {
                let user = format!("user-{}", n % 101);
                ProduceRecord {
                    key: Some(Bytes::from(user.clone())),
                    value: Bytes::from(format!(
                        r#"{{"event_time":{},"user_id":"{user}","page":"/p/{}","country":"c{}","duration_ms":{n}}}"#,
                        base + n as i64 * 7,
                        n % 13,
                        n % 5
                    )),
                    timestamp: base + n as i64,
                    headers: Vec::new(),
                    partition: None,
                }
            })
            .collect();
        log.append("clicks", records).await.expect("append");
    }
    log.close().await;
}

/// Every file under `root` that the object store sees: relative path to bytes; the manifest
/// without its generation (which counts writes, so differs after recoveries).
fn history(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            // `name#<digits>` is object_store's temporary file of a put that a kill cut
            // short: the store neither lists nor reads it (its atomic put renames the
            // finished file into place), so it is not part of the history.
            if relative
                .rsplit_once('#')
                .is_some_and(|(_, suffix)| suffix.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let mut bytes = std::fs::read(&path).expect("read file");
            if relative.ends_with("_manifest.json") {
                let mut manifest: serde_json::Value =
                    serde_json::from_slice(&bytes).expect("manifest JSON");
                manifest["generation"] = serde_json::Value::Null;
                bytes = serde_json::to_vec(&manifest).expect("serialize");
            }
            files.insert(relative, bytes);
        }
    }
    files
}

fn archive_to_the_end(config: &Path) {
    let output = runnel_command()
        .arg("--config")
        .arg(config)
        .args(["archive", "--once"])
        .output()
        .expect("run runnel archive");
    assert!(
        output.status.success(),
        "runnel archive --once failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archiver_killed_at_random_points_leaves_the_same_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    fill_log(dir.path()).await;

    let reference_config = write_config(dir.path(), "reference");
    let started = Instant::now();
    archive_to_the_end(&reference_config);
    let uninterrupted = started.elapsed();
    let reference = history(&dir.path().join("reference"));
    let files = reference
        .keys()
        .filter(|path| path.ends_with(".parquet"))
        .count();
    assert!(files > 20, "the reference run wrote {files} files");

    let mut random = super::CrashRandom::from_env_or_clock();
    let seed = random.seed();
    eprintln!(
        "crash seed {seed} (RUNNEL_CRASH_SEED replays it); uninterrupted run {uninterrupted:?}"
    );
    let crash_config = write_config(dir.path(), "objects");
    // Each run resumes where the last one stopped, so later runs have less to do: kill within
    // a third of a whole run, and halve that window whenever a run finished first.
    let mut window = (uninterrupted.as_millis() as u64 / 3).max(50);
    let mut killed = 0;
    for round in 0..ROUNDS {
        let mut child = runnel_command()
            .arg("--config")
            .arg(&crash_config)
            .args(["archive", "--once"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn runnel archive");
        // Anywhere in the run: start-up, recovery, mid-file, between file and manifest.
        let delay = Duration::from_millis(random.below(window));
        std::thread::sleep(delay);
        let finished = child.try_wait().expect("poll child").is_some();
        child.kill().expect("SIGKILL"); // SIGKILL on Unix
        child.wait().expect("reap");
        if finished {
            window = (window / 2).max(20);
        } else {
            killed += 1;
        }
        eprintln!("round {round}: killed after {delay:?} (finished first: {finished})");
    }
    assert!(
        killed >= ROUNDS / 2,
        "only {killed} of {ROUNDS} runs were killed mid-way"
    );
    archive_to_the_end(&crash_config);
    let recovered = history(&dir.path().join("objects"));
    let differing: Vec<&String> = reference
        .keys()
        .chain(recovered.keys())
        .filter(|path| reference.get(*path) != recovered.get(*path))
        .collect();
    assert!(
        differing.is_empty(),
        "seed {seed}: files that differ from the uninterrupted run: {differing:?}"
    );
}

#[test]
fn ingested_events_reach_the_history_and_open_in_duckdb() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    // An hour ago onwards, one event per second: inside the ingest bounds.
    let events: Vec<serde_json::Value> = (0..3000)
        .map(|n: i64| {
            serde_json::json!({
                "event_time": now - 3_600_000 + n * 1000,
                "user_id": format!("user-{}", n % 17),
                "page": format!("/p/{}", n % 7),
                "country": "de",
                "duration_ms": n,
            })
        })
        .collect();
    let jsonl: String = events.iter().map(|event| format!("{event}\n")).collect();
    std::fs::write(dir.path().join("events.jsonl"), jsonl).expect("write events");
    let service = super::IngestService::start_with(
        dir.path(),
        &[
            ("RUNNEL__ARCHIVE__MAX_FILE_AGE", "500ms"),
            ("RUNNEL__ARCHIVE__POLL_INTERVAL", "100ms"),
        ],
    );
    let run = super::runnel(
        dir.path(),
        &[
            "ingest",
            "--stream",
            "clicks",
            "--file",
            "events.jsonl",
            "--url",
            &service.url,
            "--batch-size",
            "500",
        ],
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.starts_with("accepted 3000, rejected 0"), "{stdout}");

    // The service's archiver finishes the files once they are 500 ms old.
    let manifest_path = dir
        .path()
        .join("data/objects/history/clicks/_manifest.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: u64 = std::fs::read(&manifest_path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .map(|manifest| {
                manifest["files"]
                    .as_array()
                    .map(|files| files.iter().filter_map(|f| f["rows"].as_u64()).sum())
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if rows == 3000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archived {rows} of 3000 rows after 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(service);

    let Some(python) = super::duckdb_python() else {
        return;
    };
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/lib/read_history_duckdb.py"
        ))
        .arg(dir.path().join("data/objects/history"))
        .arg("clicks")
        .output()
        .expect("run the DuckDB reader");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut read: Vec<(i64, String, String, i64)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("JSON row");
            (
                row["event_time"].as_i64().expect("event_time"),
                row["user_id"].as_str().expect("user_id").to_string(),
                row["page"].as_str().expect("page").to_string(),
                row["duration_ms"].as_i64().expect("duration_ms"),
            )
        })
        .collect();
    read.sort();
    let mut sent: Vec<(i64, String, String, i64)> = events
        .iter()
        .map(|event| {
            (
                event["event_time"].as_i64().expect("event_time"),
                event["user_id"].as_str().expect("user_id").to_string(),
                event["page"].as_str().expect("page").to_string(),
                event["duration_ms"].as_i64().expect("duration_ms"),
            )
        })
        .collect();
    sent.sort();
    assert_eq!(read, sent, "DuckDB reads exactly the events sent");
}
