//! Join jobs in the services, as processes on one embedded log: clicks joined `LEFT` with
//! the table `users` (its changelog `user_updates`, with deletes) as of each click's event
//! time, counted per user (the tasks join) and per country (repartitioned: the routers
//! join). `runnel stream-processor` runs them live to the log's end; `runnel archive --once`
//! archives both streams; `runnel backfill --mode recompute` recomputes them over both
//! histories, and `--mode replay` runs their version 2 over both histories and the log. The
//! live, recomputed and replayed final windows are what the table's versions say. So are
//! those of an interval join of the clicks with the updates in the 30 s after each, per user
//! (the tasks join) and per country of the update (repartitioned: the routers join), and of
//! a join of two windowed aggregates: each user's clicks per minute, `LEFT` joined
//! with their updates that minute to a country other than `fr`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use runnel_config::Config;
use runnel_log::{EmbeddedLog, Log, ProduceRecord, StartOffset};

use crate::KillOnDrop;

/// A multiple of the window (2026-11-22T00:00:00Z).
const BASE_MS: i64 = 1_795_305_600_000;
const MINUTE: i64 = 60_000;
const USERS: i64 = 6;
const CLICKS: i64 = 1_200;
const COUNTRIES: [&str; 3] = ["fr", "de", "us"];
const JOB: &str = "clicks_by_country";
/// The same clicks per country: grouped by a column of the table, so repartitioned, and its
/// routers join.
const PER_COUNTRY: &str = "clicks_per_country";
/// Each click with the updates of its user in the 30 s after it: an interval join of two
/// streams (`user_updates` read as a stream), `LEFT`; its `clicks` column counts the clicks'
/// updates (a click with none counts 0, and makes a window of its own).
const THEN_UPDATED: &str = "clicks_then_updated";
const INTERVAL_MS: i64 = 30_000;
/// The same pairs counted per country of the update (`LEFT`: a click with none counts under
/// no country): grouped by a column of the second stream, so repartitioned, and its routers
/// join.
const UPDATED_PER_COUNTRY: &str = "updates_per_country";
/// Per user and minute, the clicks, and (`LEFT`) the updates to a country other than `fr`:
/// a join of two windowed aggregates.
const CLICKS_AND_UPDATES: &str = "clicks_and_updates";

/// Both jobs' `[[jobs]]` tables, at `version`.
fn jobs_toml(version: u32) -> String {
    let job = |name: &str, user: &str| {
        format!(
            r#"
[[jobs]]
name = "{name}"
version = {version}
sql = """
SELECT {user}u.country, window_start, window_end, COUNT(*) AS clicks
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c
LEFT JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
GROUP BY {user}u.country, window_start, window_end
"""
max-out-of-orderness = "2s"
allowed-lateness = "0s"
"#
        )
    };
    format!(
        r#"{}{}
[[jobs]]
name = "{THEN_UPDATED}"
version = {version}
sql = """
SELECT c.user_id, window_start, window_end, COUNT(u.event_time) AS clicks
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c
LEFT JOIN user_updates AS u ON c.user_id = u.user_id
  AND u.event_time BETWEEN c.event_time AND c.event_time + INTERVAL '30' SECOND
GROUP BY c.user_id, window_start, window_end
"""
max-out-of-orderness = "2s"
allowed-lateness = "0s"

[[jobs]]
name = "{UPDATED_PER_COUNTRY}"
version = {version}
sql = """
SELECT u.country, window_start, window_end, COUNT(*) AS clicks
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c
LEFT JOIN user_updates AS u ON c.user_id = u.user_id
  AND u.event_time BETWEEN c.event_time AND c.event_time + INTERVAL '30' SECOND
GROUP BY u.country, window_start, window_end
"""
max-out-of-orderness = "2s"
allowed-lateness = "0s"

[[jobs]]
name = "{CLICKS_AND_UPDATES}"
version = {version}
sql = """
SELECT c.user_id, c.window_start, c.clicks, u.updates
FROM (SELECT user_id, window_start, window_end, COUNT(*) AS clicks
      FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
      GROUP BY user_id, window_start, window_end) AS c
LEFT JOIN (SELECT user_id, window_start, window_end, COUNT(*) AS updates
      FROM TUMBLE(user_updates, event_time, INTERVAL '1' MINUTE)
      WHERE country <> 'fr'
      GROUP BY user_id, window_start, window_end) AS u
ON c.user_id = u.user_id AND c.window_start = u.window_start
"""
max-out-of-orderness = "2s"
allowed-lateness = "0s"
"#,
        job(JOB, "c.user_id, "),
        job(PER_COUNTRY, "")
    )
}

fn write_config(root: &Path) -> Config {
    let path = root.join("runnel.toml");
    let toml = runnel_testkit::streams::join_config(&root.join("data"), "200ms", &jobs_toml(1));
    std::fs::write(&path, toml).expect("write config");
    Config::load(&[path], &Default::default()).expect("valid config")
}

/// User `user`'s country at `at`: from minute `m` (plus `user` seconds) on, the country
/// `(user + m) % 3`; user 5 is deleted from minute 5 (plus 5 s) to minute 7.
fn country_at(user: i64, at: i64) -> Option<&'static str> {
    let since = |minute: i64| BASE_MS + minute * MINUTE + user * 1_000;
    let minute = (0..10).rev().find(|&minute| since(minute) <= at)?;
    if user == 5 && (5..7).contains(&minute) {
        return None;
    }
    Some(COUNTRIES[((user + minute) % 3) as usize])
}

fn changelog() -> Vec<ProduceRecord> {
    let mut records = Vec::new();
    for minute in 0..10 {
        for user in 0..USERS {
            let at = BASE_MS + minute * MINUTE + user * 1_000;
            let value = if user == 5 && (5..7).contains(&minute) {
                format!(r#"{{"event_time":{at},"user_id":"u{user}","deleted":true}}"#)
            } else {
                let country = COUNTRIES[((user + minute) % 3) as usize];
                format!(r#"{{"event_time":{at},"user_id":"u{user}","country":"{country}"}}"#)
            };
            records.push(ProduceRecord {
                key: Some(Bytes::from(format!("u{user}"))),
                value: Bytes::from(value),
                timestamp: at,
                headers: Vec::new(),
                partition: None,
            });
        }
    }
    records
}

/// Click `n`: user `n % 6` every half second over ten minutes.
fn click_at(n: i64) -> (i64, i64) {
    (n % USERS, BASE_MS + n * 500)
}

fn clicks() -> Vec<ProduceRecord> {
    (0..CLICKS)
        .map(|n| {
            let (user, at) = click_at(n);
            ProduceRecord {
                key: Some(Bytes::from(format!("u{user}"))),
                value: Bytes::from(format!(
                    r#"{{"event_time":{at},"user_id":"u{user}","page":"/p"}}"#
                )),
                timestamp: at,
                headers: Vec::new(),
                partition: None,
            }
        })
        .collect()
}

/// (user, country, window start) to clicks; no user for `PER_COUNTRY`.
type Windows = BTreeMap<(Option<String>, Option<String>, i64), i64>;

async fn open_log(config: &Config) -> Arc<EmbeddedLog> {
    Arc::new(
        EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
            .await
            .expect("open log"),
    )
}

/// The live run's final windows of `job`, from its results topic (none before the
/// stream-processor has made it).
async fn live_finals(log: &EmbeddedLog, job: &str) -> Windows {
    live_rows(log, job)
        .await
        .into_iter()
        .map(|(start, row)| {
            (
                (
                    row["user_id"].as_str().map(str::to_string),
                    row["country"].as_str().map(str::to_string),
                    start,
                ),
                row["clicks"].as_i64().expect("clicks"),
            )
        })
        .collect()
}

/// (user, window start) to clicks and updates: the window join's rows.
type Joined = BTreeMap<(String, i64), (i64, Option<i64>)>;

/// The live run's rows of the window join (each must be final, and its first version).
async fn live_joined(log: &EmbeddedLog, job: &str) -> Joined {
    live_rows(log, job)
        .await
        .into_iter()
        .map(|(start, row)| {
            assert_eq!(row["_version"].as_i64(), Some(1), "{row}");
            (
                (row["user_id"].as_str().expect("user_id").to_string(), start),
                (
                    row["clicks"].as_i64().expect("clicks"),
                    row["updates"].as_i64(),
                ),
            )
        })
        .filter(|((_, start), _)| start + MINUTE <= BASE_MS + 9 * MINUTE)
        .collect()
}

/// The latest version of each final window of `job`: its start and its row.
async fn live_rows(log: &EmbeddedLog, job: &str) -> Vec<(i64, serde_json::Value)> {
    let topic = runnel_jobs::results_topic(job);
    let mut latest: BTreeMap<String, (u64, serde_json::Value)> = BTreeMap::new();
    for partition in 0..2 {
        let end = match log.latest_offset(&topic, partition).await {
            Ok(end) => end,
            Err(runnel_log::LogError::UnknownTopic(_)) => return Vec::new(),
            Err(error) => panic!("{topic}: {error}"),
        };
        let mut reader = log
            .reader(&topic, partition, StartOffset::Earliest)
            .await
            .expect("reader");
        while reader.position() < end {
            for record in reader
                .next_batch(10_000, Duration::from_secs(1))
                .await
                .expect("read")
            {
                let key = String::from_utf8(record.key.expect("key").to_vec()).expect("utf-8");
                let row: serde_json::Value = serde_json::from_slice(&record.value).expect("JSON");
                let version = row["_version"].as_u64().expect("_version");
                if latest.get(&key).is_none_or(|(seen, _)| *seen < version) {
                    latest.insert(key, (version, row));
                }
            }
        }
    }
    latest
        .into_iter()
        .filter(|(_, (_, row))| row["_final"].as_bool() == Some(true))
        .map(|(key, (_, row))| {
            let (_, start) = key.rsplit_once('@').expect("<key>@<window start>");
            (start.parse().expect("epoch ms"), row)
        })
        .collect()
}

/// The batch view of `job`: its rows, read back from its Parquet files, and its horizon.
fn view_batches(root: &Path, job: &str) -> (Vec<RecordBatch>, i64) {
    let objects = root.join("data/objects");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(objects.join(format!("views/{job}/1/_manifest.json"))).expect("manifest"),
    )
    .expect("JSON");
    let mut batches = Vec::new();
    for file in manifest["files"].as_array().expect("files") {
        let path = objects.join(file["path"].as_str().expect("path"));
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).expect("open"))
                .expect("Parquet")
                .build()
                .expect("reader");
        batches.extend(reader.map(|batch| batch.expect("batch")));
    }
    (
        batches,
        manifest["horizon_ms"].as_i64().expect("horizon_ms"),
    )
}

/// The text of column `name` in `row` of `batch`, if it has one.
fn text(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    batch
        .column_by_name(name)
        .map(|column| column.as_string::<i32>())
        .filter(|column| column.is_valid(row))
        .map(|column| column.value(row).to_string())
}

/// The batch view of the window join: its rows, and its horizon.
fn view_joined(root: &Path, job: &str) -> (Joined, i64) {
    let (batches, horizon) = view_batches(root, job);
    let mut joined = Joined::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).expect(name).clone();
        let (starts, clicks, updates) =
            (column("window_start"), column("clicks"), column("updates"));
        let updates = updates.as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            joined.insert(
                (
                    text(&batch, "user_id", row).expect("user_id"),
                    starts.as_primitive::<TimestampMillisecondType>().value(row),
                ),
                (
                    clicks.as_primitive::<Int64Type>().value(row),
                    updates.is_valid(row).then(|| updates.value(row)),
                ),
            );
        }
    }
    (joined, horizon)
}

/// The batch view's windows of `job`, and its horizon.
fn view(root: &Path, job: &str) -> (Windows, i64) {
    let (batches, horizon) = view_batches(root, job);
    let mut windows = Windows::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).expect(name).clone();
        let (starts, clicks) = (column("window_start"), column("clicks"));
        for row in 0..batch.num_rows() {
            windows.insert(
                (
                    text(&batch, "user_id", row),
                    text(&batch, "country", row),
                    starts.as_primitive::<TimestampMillisecondType>().value(row),
                ),
                clicks.as_primitive::<Int64Type>().value(row),
            );
        }
    }
    (windows, horizon)
}

/// The window join's rows of the windows ending by `horizon`: per user and minute, the
/// clicks, and the updates to a country other than `fr` (none: no row on the right).
fn expected_joined(horizon: i64) -> Joined {
    let mut joined = Joined::new();
    for n in 0..CLICKS {
        let (user, at) = click_at(n);
        let start = at - at.rem_euclid(MINUTE);
        if start + MINUTE <= horizon {
            joined
                .entry((format!("u{user}"), start))
                .or_insert((0, None))
                .0 += 1;
        }
    }
    for ((user, start), (_, updates)) in &mut joined {
        let user: i64 = user[1..].parse().expect("u<n>");
        let update = start + user * 1_000;
        *updates = country_at(user, update)
            .filter(|country| *country != "fr")
            .map(|_| 1);
    }
    joined
}

/// What the windows ending by `horizon` hold, from the table's versions.
fn expected(horizon: i64) -> Windows {
    let mut windows = Windows::new();
    for n in 0..CLICKS {
        let (user, at) = click_at(n);
        let start = at - at.rem_euclid(MINUTE);
        if start + MINUTE <= horizon {
            *windows
                .entry((
                    Some(format!("u{user}")),
                    country_at(user, at).map(str::to_string),
                    start,
                ))
                .or_default() += 1;
        }
    }
    windows
}

/// What the interval job's windows ending by `horizon` hold: per user and minute, the
/// updates of the user in the 30 s after each click (bounds inclusive).
fn expected_interval(horizon: i64) -> Windows {
    let mut windows = Windows::new();
    for n in 0..CLICKS {
        let (user, at) = click_at(n);
        let start = at - at.rem_euclid(MINUTE);
        if start + MINUTE > horizon {
            continue;
        }
        let updates = (0..10)
            .map(|minute| BASE_MS + minute * MINUTE + user * 1_000)
            .filter(|update| (at..=at + INTERVAL_MS).contains(update))
            .count() as i64;
        *windows
            .entry((Some(format!("u{user}")), None, start))
            .or_default() += updates;
    }
    windows
}

/// What the repartitioned interval job's windows ending by `horizon` hold: per country of
/// the update (none for a delete) and minute, the pairs of a click with an update of its user
/// in the 30 s after it; a click with none counts under no country.
fn expected_interval_per_country(horizon: i64) -> Windows {
    let mut windows = Windows::new();
    for n in 0..CLICKS {
        let (user, at) = click_at(n);
        let start = at - at.rem_euclid(MINUTE);
        if start + MINUTE > horizon {
            continue;
        }
        let updates: Vec<i64> = (0..10)
            .map(|minute| BASE_MS + minute * MINUTE + user * 1_000)
            .filter(|update| (at..=at + INTERVAL_MS).contains(update))
            .collect();
        if updates.is_empty() {
            *windows.entry((None, None, start)).or_default() += 1;
        }
        for update in updates {
            let country = country_at(user, update).map(str::to_string);
            *windows.entry((None, country, start)).or_default() += 1;
        }
    }
    windows
}

fn runnel(root: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--config")
        .arg(root.join("runnel.toml"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run runnel");
    assert!(
        output.status.success(),
        "runnel {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_jobs_run_live_and_their_recompute_and_replay_agree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let config = write_config(root);
    let log = open_log(&config).await;
    for topic in ["clicks", "user_updates"] {
        log.ensure_topic(topic, 2).await.expect("topic");
    }
    log.append("user_updates", changelog())
        .await
        .expect("append");
    log.append("clicks", clicks()).await.expect("append");
    log.close().await;

    let process_log = root.join("stream-processor.log");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("--config")
            .arg(root.join("runnel.toml"))
            .arg("stream-processor")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&process_log).expect("log file"))
            .spawn()
            .expect("start runnel stream-processor"),
    );
    // The clicks run to 9:59 or later in both partitions: less 2 s of out-of-orderness, the
    // windows up to 9:00 are complete, live and in the view.
    let complete = expected(BASE_MS + 9 * MINUTE);
    assert!(
        complete.keys().any(|(_, country, _)| country.is_none()),
        "a deleted user's clicks"
    );
    let complete_per_country = per_country(&complete);
    let complete_interval = expected_interval(BASE_MS + 9 * MINUTE);
    assert!(
        complete_interval.values().all(|pairs| *pairs > 0),
        "clicks with an update in their interval: {complete_interval:?}"
    );
    let complete_interval_per_country = expected_interval_per_country(BASE_MS + 9 * MINUTE);
    assert!(
        complete_interval_per_country
            .keys()
            .any(|(_, country, _)| country.is_none()),
        "clicks without an update, or with a delete: {complete_interval_per_country:?}"
    );
    let complete_joined = expected_joined(BASE_MS + 9 * MINUTE);
    assert!(
        complete_joined
            .values()
            .any(|(_, updates)| updates.is_none())
            && complete_joined
                .values()
                .any(|(_, updates)| updates.is_some()),
        "windows with and without a right row: {complete_joined:?}"
    );
    // Live: read while the stream-processor runs (another process on the same log folder),
    // until both jobs' final windows are the table's versions' (the repartitioned one's
    // window tasks may still be reading after the direct job has checkpointed its end).
    let deadline = Instant::now() + Duration::from_secs(120);
    let log = open_log(&config).await;
    loop {
        let live = (
            covered(live_finals(&log, JOB).await, BASE_MS + 9 * MINUTE),
            covered(live_finals(&log, PER_COUNTRY).await, BASE_MS + 9 * MINUTE),
            covered(live_finals(&log, THEN_UPDATED).await, BASE_MS + 9 * MINUTE),
            live_joined(&log, CLICKS_AND_UPDATES).await,
            covered(
                live_finals(&log, UPDATED_PER_COUNTRY).await,
                BASE_MS + 9 * MINUTE,
            ),
        );
        if live
            == (
                complete.clone(),
                complete_per_country.clone(),
                complete_interval.clone(),
                complete_joined.clone(),
                complete_interval_per_country.clone(),
            )
        {
            break;
        }
        let text = || std::fs::read_to_string(&process_log).unwrap_or_default();
        if let Some(status) = child.0.try_wait().expect("poll") {
            panic!("the stream-processor exited: {status}\n{}", text());
        }
        assert!(
            Instant::now() < deadline,
            "live final windows after 120 s: {live:?}, not {complete:?}, {complete_per_country:?}, {complete_interval:?}, {complete_joined:?} and {complete_interval_per_country:?}; its log:\n{}",
            text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log.close().await;
    drop(child);

    // Serving shows the window join like any other job: one window's rows over gRPC.
    let (_serving, urls) = crate::start_listening(
        root,
        &["--config", "runnel.toml", "serving"],
        &[],
        &["serving"],
    );
    let window = BASE_MS + 3 * MINUTE;
    let wanted: Joined = complete_joined
        .iter()
        .filter(|((_, start), _)| *start == window)
        .map(|(key, value)| (key.clone(), *value))
        .collect();
    assert_eq!(wanted.len(), USERS as usize, "{wanted:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let served: Joined = runnel(
            root,
            &[
                "query",
                "window",
                "--job",
                CLICKS_AND_UPDATES,
                "--start",
                &window.to_string(),
                "--all",
                "--format",
                "jsonl",
                "--url",
                &urls["serving"],
            ],
        )
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("JSON");
            assert_eq!(row["final"], true, "{line}");
            let row = &row["values"];
            (
                (
                    row["user_id"]
                        .as_str()
                        .unwrap_or_else(|| panic!("user_id in {line}"))
                        .to_string(),
                    window,
                ),
                (
                    row["clicks"].as_i64().expect("clicks"),
                    row["updates"].as_i64(),
                ),
            )
        })
        .collect();
        if served == wanted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "served {served:?}, not {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(_serving);

    runnel(root, &["archive", "--once"]);
    runnel(root, &["backfill", "--job", JOB, "--mode", "recompute"]);
    for job in [
        PER_COUNTRY,
        THEN_UPDATED,
        CLICKS_AND_UPDATES,
        UPDATED_PER_COUNTRY,
    ] {
        runnel(root, &["backfill", "--job", job, "--mode", "recompute"]);
    }
    let (recomputed, horizon) = view(root, JOB);
    let (recomputed_per_country, _) = view(root, PER_COUNTRY);
    // The interval job's horizon also waits for the updates' history: its clicks pair with
    // updates up to 30 s later.
    let (recomputed_interval, interval_horizon) = view(root, THEN_UPDATED);
    assert!(
        (BASE_MS + 8 * MINUTE..=horizon - INTERVAL_MS).contains(&interval_horizon),
        "interval horizon {interval_horizon}, horizon {horizon}"
    );
    assert_eq!(
        recomputed_interval,
        expected_interval(interval_horizon),
        "recompute of the interval join"
    );
    let (recomputed_interval_per_country, per_country_horizon) = view(root, UPDATED_PER_COUNTRY);
    assert_eq!(per_country_horizon, interval_horizon);
    assert_eq!(
        recomputed_interval_per_country,
        expected_interval_per_country(interval_horizon),
        "recompute of the repartitioned interval join"
    );
    assert!(
        (BASE_MS + 9 * MINUTE..BASE_MS + 10 * MINUTE).contains(&horizon),
        "horizon {horizon}"
    );
    assert_eq!(recomputed, complete, "recompute");
    // The window join's horizon is the earlier of its two streams': the updates end at 9:05.
    let (recomputed_joined, joined_horizon) = view_joined(root, CLICKS_AND_UPDATES);
    assert!(
        (BASE_MS + 9 * MINUTE..=horizon).contains(&joined_horizon),
        "window join horizon {joined_horizon}, horizon {horizon}"
    );
    assert_eq!(
        recomputed_joined,
        expected_joined(joined_horizon),
        "recompute of the window join"
    );
    assert_eq!(
        recomputed_per_country, complete_per_country,
        "recompute per country"
    );

    // Replay: version 2 of each job, the live tasks (and routers) over the history of both
    // streams and then the log.
    let path = root.join("runnel.toml");
    let toml = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, format!("{toml}{}", jobs_toml(2))).expect("write config");
    for job in [
        JOB,
        PER_COUNTRY,
        THEN_UPDATED,
        CLICKS_AND_UPDATES,
        UPDATED_PER_COUNTRY,
    ] {
        let summary = runnel(
            root,
            &[
                "backfill",
                "--job",
                job,
                "--version",
                "2",
                "--mode",
                "replay",
                "--stop-when-caught-up",
            ],
        );
        assert!(summary.contains("caught up"), "{summary}");
    }
    let log = open_log(&config).await;
    let replayed = (
        covered(
            live_finals(&log, &format!("{JOB}.v2")).await,
            BASE_MS + 9 * MINUTE,
        ),
        covered(
            live_finals(&log, &format!("{PER_COUNTRY}.v2")).await,
            BASE_MS + 9 * MINUTE,
        ),
    );
    let replayed_interval = covered(
        live_finals(&log, &format!("{THEN_UPDATED}.v2")).await,
        BASE_MS + 9 * MINUTE,
    );
    let replayed_joined = live_joined(&log, &format!("{CLICKS_AND_UPDATES}.v2")).await;
    let replayed_interval_per_country = covered(
        live_finals(&log, &format!("{UPDATED_PER_COUNTRY}.v2")).await,
        BASE_MS + 9 * MINUTE,
    );
    log.close().await;
    assert_eq!(
        replayed_interval_per_country, complete_interval_per_country,
        "replay of the repartitioned interval join"
    );
    assert_eq!(
        replayed_interval, complete_interval,
        "replay of the interval join"
    );
    assert_eq!(
        replayed_joined, complete_joined,
        "replay of the window join"
    );
    assert_eq!(replayed.0, complete, "replay");
    assert_eq!(replayed.1, complete_per_country, "replay per country");
}

/// The windows of `windows` that end by `horizon`.
fn covered(windows: Windows, horizon: i64) -> Windows {
    windows
        .into_iter()
        .filter(|((_, _, start), _)| start + MINUTE <= horizon)
        .collect()
}

/// `windows` summed over users.
fn per_country(windows: &Windows) -> Windows {
    let mut per_country = Windows::new();
    for ((_, country, start), clicks) in windows {
        *per_country
            .entry((None, country.clone(), *start))
            .or_default() += clicks;
    }
    per_country
}
