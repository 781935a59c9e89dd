//! Join jobs in the service: clicks (2 partitions, keyed by user) joined `LEFT` with the
//! table `users` (its changelog `user_updates`, 2 partitions, with a tombstone) as of each
//! click's event time, counted per user, country and 10 s window (the tasks join), and per
//! country and window (repartitioned: the routers join).
//!
//! The service is stopped after the first clicks and started again: the join's table and
//! its changelog offsets come back from the checkpoint (a changelog read again from the start
//! would find its rows late, which the late topic would show), a changelog row behind the
//! table's watermark goes to the late topic keyed `users/<partition>:<offset>`, and the final
//! windows are those of the table's versions as of each click. Clicks after the table's
//! watermark are joined once the changelog has been read to its end (the table is quiet).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_config::Config;
use runnel_jobs::{late_topic, results_topic};
use runnel_log::{EmbeddedLog, Log, ProduceRecord, Record, StartOffset};
use runnel_stream_processor::StatusRegistry;
use tokio_util::sync::CancellationToken;

/// A multiple of the window.
const BASE_MS: i64 = 1_795_305_600_000;
const SECOND: i64 = 1_000;

/// The AS OF jobs: per user and country (the tasks join), and per country (repartitioned:
/// the routers join).
const AS_OF_JOBS: &str = r#"[[jobs]]
name = "clicks_by_country"
sql = """
SELECT c.user_id, u.country, window_start, window_end, COUNT(*) AS clicks
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND) AS c
LEFT JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
GROUP BY c.user_id, u.country, window_start, window_end
"""
max-out-of-orderness = "1s"
allowed-lateness = "0s"

[[jobs]]
name = "clicks_per_country"
sql = """
SELECT u.country, window_start, window_end, COUNT(*) AS clicks
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND) AS c
LEFT JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
GROUP BY u.country, window_start, window_end
"""
max-out-of-orderness = "1s"
allowed-lateness = "0s"
"#;

/// The config of the test's streams and the table `users`, with `jobs`, checkpointing every
/// `checkpoint_interval`.
fn write_config(root: &Path, jobs: &str, checkpoint_interval: &str) -> Config {
    let path = root.join("runnel.toml");
    let toml = runnel_testkit::streams::join_config(&root.join("data"), checkpoint_interval, jobs);
    std::fs::write(&path, toml).expect("write config");
    Config::load(&[path], &Default::default()).expect("valid config")
}

/// User `user` lives in partition 0 (`a`) or 1 (`b`) of both streams.
fn partition_of(user: &str) -> u32 {
    u32::from(user != "a")
}

fn click(user: &str, second: i64) -> ProduceRecord {
    let at = BASE_MS + second * SECOND;
    ProduceRecord {
        key: Some(Bytes::from(format!("user-{user}"))),
        value: Bytes::from(format!(
            r#"{{"event_time":{at},"user_id":"user-{user}","page":"/p"}}"#
        )),
        timestamp: at,
        headers: Vec::new(),
        partition: Some(partition_of(user)),
    }
}

/// A changelog row: `country` for `user` from `second` on, or its delete (`None`).
fn update(user: &str, second: i64, country: Option<&str>) -> ProduceRecord {
    let at = BASE_MS + second * SECOND;
    let value = match country {
        Some(country) => {
            format!(r#"{{"event_time":{at},"user_id":"user-{user}","country":"{country}"}}"#)
        }
        None => format!(r#"{{"event_time":{at},"user_id":"user-{user}","deleted":true}}"#),
    };
    ProduceRecord {
        key: Some(Bytes::from(format!("user-{user}"))),
        value: Bytes::from(value),
        timestamp: at,
        headers: Vec::new(),
        partition: Some(partition_of(user)),
    }
}

async fn read_all(log: &dyn Log, topic: &str) -> Vec<Record> {
    let mut records = Vec::new();
    for partition in 0..2 {
        let end = match log.latest_offset(topic, partition).await {
            Ok(end) => end,
            // Nothing written yet.
            Err(runnel_log::LogError::UnknownTopic(_)) => return records,
            Err(error) => panic!("{topic}: {error}"),
        };
        let mut reader = log
            .reader(topic, partition, StartOffset::Earliest)
            .await
            .expect("reader");
        while reader.position() < end {
            records.extend(
                reader
                    .next_batch(1000, Duration::from_secs(1))
                    .await
                    .expect("read"),
            );
        }
    }
    records
}

/// (user, country, seconds from the base) to clicks; `clicks_per_country` has no user.
type Windows = BTreeMap<(Option<String>, Option<String>, i64), u64>;

/// The final windows of `job`, an AS OF job.
async fn final_windows(log: &dyn Log, job: &str) -> Windows {
    final_rows(log, job)
        .await
        .into_iter()
        .map(|(second, row)| {
            (
                (
                    row["user_id"].as_str().map(str::to_string),
                    row["country"].as_str().map(str::to_string),
                    second,
                ),
                row["clicks"].as_u64().expect("clicks"),
            )
        })
        .collect()
}

/// The latest version of each final window of `job`: its start (seconds from the base) and
/// its row.
async fn final_rows(log: &dyn Log, job: &str) -> Vec<(i64, serde_json::Value)> {
    let mut latest: BTreeMap<String, (u64, serde_json::Value)> = BTreeMap::new();
    for record in read_all(log, &results_topic(job)).await {
        let key = String::from_utf8(record.key.expect("key").to_vec()).expect("utf-8");
        let row: serde_json::Value = serde_json::from_slice(&record.value).expect("JSON");
        let version = row["_version"].as_u64().expect("_version");
        if latest.get(&key).is_none_or(|(seen, _)| *seen < version) {
            latest.insert(key, (version, row));
        }
    }
    latest
        .into_iter()
        .filter(|(_, (_, row))| row["_final"].as_bool() == Some(true))
        .map(|(key, (_, row))| {
            let (_, start) = key.rsplit_once('@').expect("<key>@<window start>");
            let start: i64 = start.parse().expect("epoch ms");
            ((start - BASE_MS) / SECOND, row)
        })
        .collect()
}

struct Running {
    embedded: Arc<EmbeddedLog>,
    log: Arc<dyn Log>,
    status: Arc<StatusRegistry>,
    shutdown: CancellationToken,
    service: tokio::task::JoinHandle<Result<(), runnel_stream_processor::StreamProcessorError>>,
}

impl Running {
    /// The service over the test's streams in `root`, running `jobs`.
    async fn start(root: &Path, jobs: &str) -> Running {
        Running::start_checkpointing(root, jobs, "100ms").await
    }

    /// The service, checkpointing every `checkpoint_interval`.
    async fn start_checkpointing(root: &Path, jobs: &str, checkpoint_interval: &str) -> Running {
        let config = write_config(root, jobs, checkpoint_interval);
        let embedded = Arc::new(
            EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
                .await
                .expect("open log"),
        );
        for topic in ["clicks", "user_updates"] {
            embedded.ensure_topic(topic, 2).await.expect("topic");
        }
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

    /// Waits until both jobs' window tasks have read `events` events (the routers of
    /// `clicks_per_country` have joined them: they had read the changelog first).
    async fn wait_for_events(&self, jobs: &[&str], events: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let read = |job: &str| self.status.job(job).map_or(0, |job| job.events_total);
            if jobs.iter().all(|job| read(job) >= events) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{events} events not read in 60 s: {:?}",
                self.status.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Appends `records` to `topic`.
    async fn append(&self, topic: &str, records: Vec<ProduceRecord>) {
        self.log.append(topic, records).await.expect("append");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.service.await.expect("join").expect("clean stop");
        self.embedded.close().await;
    }

    /// Stops the service as a crash would: its tasks and routers dropped where they are, no
    /// last checkpoint.
    async fn crash(self) {
        self.service.abort();
        assert!(self.service.await.is_err_and(|error| error.is_cancelled()));
        self.embedded.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_job_counts_each_click_with_the_users_version_as_of_its_time_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let running = Running::start(dir.path(), AS_OF_JOBS).await;
    // a: FR, then DE from 15 s. b: US, deleted at 25 s. The table's watermark stops at 14 s
    // (the smaller partition's largest time, 15 s, less 1 s): later clicks are joined once
    // the changelog is read to its end.
    running
        .append(
            "user_updates",
            vec![
                update("a", 0, Some("FR")),
                update("a", 15, Some("DE")),
                update("b", 0, Some("US")),
                update("b", 25, None),
            ],
        )
        .await;
    running
        .append(
            "clicks",
            vec![click("a", 1), click("a", 12), click("b", 5), click("b", 21)],
        )
        .await;
    // Both jobs have joined these clicks before the stop: the table they restore has its
    // watermark at 14 s, which makes the next changelog row late.
    running
        .wait_for_events(&["clicks_by_country", "clicks_per_country"], 4)
        .await;
    running.stop().await;

    let running = Running::start(dir.path(), AS_OF_JOBS).await;
    // Behind the table's watermark: late, and the table keeps FR for a at 12 s.
    running
        .append("user_updates", vec![update("a", 11, Some("ES"))])
        .await;
    running
        .append(
            "clicks",
            vec![
                click("a", 16),
                click("a", 22),
                click("b", 26),
                // Close the windows up to 50 s in both partitions.
                click("a", 60),
                click("b", 60),
            ],
        )
        .await;
    let expected: Windows = [
        (("user-a", Some("FR"), 0), 1),
        (("user-a", Some("FR"), 10), 1),
        (("user-a", Some("DE"), 10), 1),
        (("user-a", Some("DE"), 20), 1),
        (("user-b", Some("US"), 0), 1),
        (("user-b", Some("US"), 20), 1),
        (("user-b", None, 20), 1),
    ]
    .into_iter()
    .map(|((user, country, second), clicks)| {
        (
            (Some(user.to_string()), country.map(str::to_string), second),
            clicks,
        )
    })
    .collect();
    // The same clicks per country: the routers join, the window tasks count.
    let mut per_country = Windows::new();
    for ((_, country, second), clicks) in &expected {
        *per_country
            .entry((None, country.clone(), *second))
            .or_default() += clicks;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (job, expected) in [
        ("clicks_by_country", &expected),
        ("clicks_per_country", &per_country),
    ] {
        loop {
            let windows = final_windows(running.log.as_ref(), job).await;
            if windows == *expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{job}: final windows {windows:?}, not {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The one late row of each job is the changelog row behind the table's watermark (for
    // `clicks_per_country` its routers': they join): the restart read the changelog on from
    // its checkpointed offsets, not again from the start.
    for job in ["clicks_by_country", "clicks_per_country"] {
        let late: Vec<(String, serde_json::Value)> =
            read_all(running.log.as_ref(), &late_topic(job))
                .await
                .into_iter()
                .map(|record| {
                    (
                        String::from_utf8(record.key.expect("key").to_vec()).expect("utf-8"),
                        serde_json::from_slice(&record.value).expect("JSON"),
                    )
                })
                .collect();
        assert_eq!(late.len(), 1, "{job}: {late:?}");
        assert_eq!(late[0].0, "users/0:2", "{job}: {late:?}");
        assert_eq!(late[0].1["country"], "ES", "{job}: {late:?}");
        let reason = late[0].1["_reason"].as_str().expect("_reason");
        assert!(reason.contains("table's watermark"), "{job}: {reason}");
    }
    running.stop().await;
}

/// The interval join: `clicks` paired with the updates of their user within the 5 s after
/// them (bounds inclusive), `LEFT`, counted per user and window. Every task holds the
/// updates (the second stream, broadcast as the table is); a click with none is counted
/// with nulls once the interval has passed. The updates stream goes quiet before the last
/// clicks: once it is read to its end it stops holding the join's watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_join_job_pairs_each_click_with_the_updates_in_its_interval_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = "clicks_then_updates";
    let jobs = r#"
[[jobs]]
name = "clicks_then_updates"
sql = """
SELECT c.user_id, window_start, window_end, COUNT(*) AS pairs, COUNT(u.country) AS updated
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND) AS c
LEFT JOIN user_updates AS u ON c.user_id = u.user_id
  AND u.event_time BETWEEN c.event_time AND c.event_time + INTERVAL '5' SECOND
GROUP BY c.user_id, window_start, window_end
"""
max-out-of-orderness = "1s"
allowed-lateness = "0s"
"#;
    let running = Running::start(dir.path(), jobs).await;
    // a: clicks at 1 and 12, updates at 3 (paired with 1) and 20 (after 12's interval).
    // b: clicks at 5 and 21, updates at 5 (at 5's lower edge), 26 (at 21's upper edge), 27.
    running
        .append(
            "user_updates",
            vec![update("a", 3, Some("FR")), update("b", 5, Some("US"))],
        )
        .await;
    running
        .append("clicks", vec![click("a", 1), click("b", 5), click("a", 12)])
        .await;
    running.wait_for_events(&[job], 3).await;
    running.stop().await;

    let running = Running::start(dir.path(), jobs).await;
    running
        .append(
            "user_updates",
            vec![
                update("a", 20, Some("DE")),
                update("b", 26, Some("US")),
                update("b", 27, Some("US")),
            ],
        )
        .await;
    running
        .append(
            "clicks",
            vec![click("b", 21), click("a", 60), click("b", 60)],
        )
        .await;
    // (user, window start) to (pairs, updated).
    let expected: BTreeMap<(String, i64), (u64, u64)> = [
        (("user-a", 0), (1, 1)),
        (("user-b", 0), (1, 1)),
        (("user-a", 10), (1, 0)),
        (("user-b", 20), (1, 1)),
    ]
    .into_iter()
    .map(|((user, second), counts)| ((user.to_string(), second), counts))
    .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let windows: BTreeMap<(String, i64), (u64, u64)> = final_rows(running.log.as_ref(), job)
            .await
            .into_iter()
            .map(|(second, row)| {
                (
                    (
                        row["user_id"].as_str().expect("user_id").to_string(),
                        second,
                    ),
                    (
                        row["pairs"].as_u64().expect("pairs"),
                        row["updated"].as_u64().expect("updated"),
                    ),
                )
            })
            .collect();
        if windows == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "final windows {windows:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let late = read_all(running.log.as_ref(), &late_topic(job)).await;
    assert!(late.is_empty(), "{late:?}");
    running.stop().await;
}

/// Per user and 10 s window, the clicks and the updates, `LEFT`: a join of two windowed
/// aggregates.
const WINDOW_JOIN_JOB: &str = r#"
[[jobs]]
name = "clicks_and_updates"
sql = """
SELECT c.user_id, c.window_start, c.clicks, u.updates
FROM (SELECT user_id, window_start, window_end, COUNT(*) AS clicks
      FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND)
      GROUP BY user_id, window_start, window_end) AS c
LEFT JOIN (SELECT user_id, window_start, window_end, COUNT(*) AS updates
      FROM TUMBLE(user_updates, event_time, INTERVAL '10' SECOND)
      GROUP BY user_id, window_start, window_end) AS u
ON c.user_id = u.user_id AND c.window_start = u.window_start
"""
max-out-of-orderness = "1s"
allowed-lateness = "0s"
"#;

/// `records` stamped with the log time of now, as the ingest service stamps them: a window
/// join's right side lets a partition read to its end idle only until a record that arrived
/// after that comes elsewhere, by the records' log times.
fn arriving_now(records: Vec<ProduceRecord>) -> Vec<ProduceRecord> {
    let now = runnel_time::now_millis();
    records
        .into_iter()
        .map(|record| ProduceRecord {
            timestamp: now,
            ..record
        })
        .collect()
}

/// A join of two windowed aggregates: per user and 10 s window, the clicks (the task's own
/// partition) and the updates (the whole `user_updates` stream, in every task), `LEFT`. The
/// service stops while a window's left rows wait for the right side's watermark: they, the
/// right side's windows and the right stream's offsets come back from the checkpoint. Each
/// joined row is emitted once, final; a right event past its window goes to the late topic
/// once (one task reports it), keyed `user_updates/<partition>:<offset>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_join_job_joins_each_window_once_both_sides_have_passed_it_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = "clicks_and_updates";
    let jobs = WINDOW_JOIN_JOB;
    let running = Running::start(dir.path(), jobs).await;
    // Clicks: a at 1, 2 and 12, b at 5. Updates: a at 3 and 4, b at 5. The left side of
    // task 0 has closed the window at 0 s (its watermark is 11 s), the right side has not
    // (3 s): its left rows wait in the join.
    running
        .append(
            "user_updates",
            arriving_now(vec![
                update("a", 3, Some("FR")),
                update("a", 4, Some("FR")),
                update("b", 5, Some("US")),
            ]),
        )
        .await;
    running
        .append(
            "clicks",
            arriving_now(vec![
                click("a", 1),
                click("a", 2),
                click("b", 5),
                click("a", 12),
            ]),
        )
        .await;
    running.wait_for_events(&[job], 4).await;
    running.stop().await;

    let running = Running::start(dir.path(), jobs).await;
    // b at 15 has no click in its window (no row: the join is `LEFT`); a has no update in
    // the window at 10 s (a row with no updates).
    running
        .append(
            "user_updates",
            arriving_now(vec![
                update("a", 20, Some("DE")),
                update("b", 15, Some("US")),
                update("b", 27, Some("US")),
                update("a", 60, Some("DE")),
                update("b", 60, Some("US")),
            ]),
        )
        .await;
    running
        .append(
            "clicks",
            arriving_now(vec![click("b", 21), click("a", 60), click("b", 60)]),
        )
        .await;
    // (user, window start) to (clicks, updates).
    let expected: BTreeMap<(String, i64), (u64, Option<u64>)> = [
        (("user-a", 0), (2, Some(2))),
        (("user-b", 0), (1, Some(1))),
        (("user-a", 10), (1, None)),
        (("user-b", 20), (1, Some(1))),
    ]
    .into_iter()
    .map(|((user, second), counts)| ((user.to_string(), second), counts))
    .collect();
    let joined =
        |rows: Vec<(i64, serde_json::Value)>| -> BTreeMap<(String, i64), (u64, Option<u64>)> {
            rows.into_iter()
                .map(|(second, row)| {
                    assert_eq!(row["_version"].as_u64(), Some(1), "{row}");
                    (
                        (
                            row["user_id"].as_str().expect("user_id").to_string(),
                            second,
                        ),
                        (
                            row["clicks"].as_u64().expect("clicks"),
                            row["updates"].as_u64(),
                        ),
                    )
                })
                .collect()
        };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let windows = joined(final_rows(running.log.as_ref(), job).await);
        if windows == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "joined windows {windows:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each joined row once: no window was joined twice, before or after the restart.
    let results = read_all(running.log.as_ref(), &results_topic(job)).await;
    assert_eq!(results.len(), expected.len(), "{results:?}");
    assert!(
        read_all(running.log.as_ref(), &late_topic(job))
            .await
            .is_empty(),
        "nothing is late before the late update"
    );

    // An update of b at 2 s, long after the right side closed that window: late, reported
    // once, and the joined row stays.
    running
        .append(
            "user_updates",
            arriving_now(vec![update("b", 2, Some("US"))]),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !read_all(running.log.as_ref(), &late_topic(job))
            .await
            .is_empty()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no late update in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other task saw it too; give it the time to (wrongly) report it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late = read_all(running.log.as_ref(), &late_topic(job)).await;
    assert_eq!(late.len(), 1, "{late:?}");
    let key = String::from_utf8(late[0].key.clone().expect("key").to_vec()).expect("utf-8");
    // b's updates are partition 1's: at 5, 15, 27, 60, then this one at offset 4.
    assert_eq!(key, "user_updates/1:4", "{key}");
    let row: serde_json::Value = serde_json::from_slice(&late[0].value).expect("JSON");
    assert_eq!(row["user_id"], "user-b", "{row}");
    assert_eq!(
        joined(final_rows(running.log.as_ref(), job).await),
        expected,
        "the late update changed nothing"
    );
    running.stop().await;
}

/// A window join with an idle timeout whose right stream has a partition that never gets an
/// event: read to the log's end while the other partition's records arrive a second later,
/// it turns idle, does not hold the right side's watermark, and the windows are joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_join_is_not_held_by_a_right_partition_without_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = "clicks_and_updates";
    let jobs = format!("{WINDOW_JOIN_JOB}idle-timeout = \"1s\"\n");
    let running = Running::start(dir.path(), &jobs).await;
    // Only a's partition (0) of `user_updates` gets updates; b's clicks close b's windows.
    running
        .append(
            "user_updates",
            arriving_now(vec![
                update("a", 3, Some("FR")),
                update("a", 30, Some("FR")),
            ]),
        )
        .await;
    running
        .append(
            "clicks",
            arriving_now(vec![
                click("a", 1),
                click("a", 30),
                click("b", 2),
                click("b", 30),
            ]),
        )
        .await;
    // Partition 1 is idle only once records arrive (by their log time) a second after its
    // last word, or after the task started: a's update at 40, a second later.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    running
        .append(
            "user_updates",
            arriving_now(vec![update("a", 40, Some("FR"))]),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: BTreeMap<(String, i64), Option<u64>> = final_rows(running.log.as_ref(), job)
            .await
            .into_iter()
            .map(|(second, row)| {
                (
                    (
                        row["user_id"].as_str().expect("user_id").to_string(),
                        second,
                    ),
                    row["updates"].as_u64(),
                )
            })
            .collect();
        let expected = BTreeMap::from([
            (("user-a".to_string(), 0), Some(1)),
            (("user-b".to_string(), 0), None),
        ]);
        if rows == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "joined windows {rows:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await;
}

/// An interval join job grouped by a column of the second stream: its routers join, and
/// route each click's rows (one per update in its interval, or its `LEFT` row) in offset
/// order, numbered. The service crashes before any checkpoint: the routers route everything
/// again, and the window tasks, reading the repartition topic from its start, drop every
/// copy by its offset and number. The final windows count each pair once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_join_job_grouped_by_the_other_streams_column_counts_each_pair_once_across_a_crash()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    let job = "updates_after_clicks";
    let jobs = r#"
[[jobs]]
name = "updates_after_clicks"
sql = """
SELECT u.country, window_start, window_end, COUNT(*) AS clicks
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND) AS c
LEFT JOIN user_updates AS u ON c.user_id = u.user_id
  AND u.event_time BETWEEN c.event_time AND c.event_time + INTERVAL '5' SECOND
GROUP BY u.country, window_start, window_end
"""
max-out-of-orderness = "1s"
allowed-lateness = "0s"
"#;
    // a: clicks at 1, 12 and 60; updates at 3 (FR, with 1) and 20 (after 12's interval).
    // b: clicks at 5, 21 and 60; updates at 5 (at 5's lower edge), 23 and 26 (both in 21's,
    // the second at its upper edge) and 27 (after it).
    let append = |log: Arc<dyn Log>| async move {
        log.append(
            "user_updates",
            vec![
                update("a", 3, Some("FR")),
                update("b", 5, Some("US")),
                update("a", 20, Some("DE")),
                update("b", 23, Some("US")),
                update("b", 26, Some("US")),
                update("b", 27, Some("US")),
            ],
        )
        .await
        .expect("append");
        log.append(
            "clicks",
            vec![
                click("a", 1),
                click("b", 5),
                click("a", 12),
                click("b", 21),
                click("a", 60),
                click("b", 60),
            ],
        )
        .await
        .expect("append");
    };
    // (country, window start) to clicks.
    let expected: Windows = [
        (Some("FR"), 0, 1),
        (Some("US"), 0, 1),
        (None, 10, 1),
        (Some("US"), 20, 2),
    ]
    .into_iter()
    .map(|(country, second, clicks)| ((None, country.map(str::to_string), second), clicks))
    .collect();
    // No checkpoint before the crash: an hour between two.
    let running = Running::start_checkpointing(dir.path(), jobs, "1h").await;
    append(Arc::clone(&running.log)).await;
    let expected = &expected;
    let wait_for = |log: Arc<dyn Log>, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let windows = final_windows(log.as_ref(), job).await;
            if windows == *expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: final windows {windows:?}, not {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_for(Arc::clone(&running.log), "before the crash").await;
    let routed = read_all(running.log.as_ref(), &format!("{job}.repartition")).await;
    let copies = routed
        .iter()
        .filter(|record| {
            record
                .headers
                .iter()
                .any(|header| header.key == "runnel-source-copy" && header.value.as_ref() == b"1")
        })
        .count();
    assert_eq!(
        copies, 1,
        "b's click at 21 joins two updates: its second row is copy 1"
    );
    running.crash().await;

    let running = Running::start(dir.path(), jobs).await;
    // The routers start again from the stream's start: every row is routed twice.
    let deadline = Instant::now() + Duration::from_secs(60);
    while read_all(running.log.as_ref(), &format!("{job}.repartition"))
        .await
        .iter()
        .filter(|record| record.key.is_some())
        .count()
        < 2 * routed.iter().filter(|record| record.key.is_some()).count()
    {
        assert!(Instant::now() < deadline, "the routers did not route again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(Arc::clone(&running.log), "after the crash").await;
    let late = read_all(running.log.as_ref(), &late_topic(job)).await;
    assert!(late.is_empty(), "{late:?}");
    running.stop().await;
}
