//! Recompute of a join of two windowed aggregates (Nexmark q8 style) over real Parquet
//! history: `clicks` and `user_updates` on an embedded log, archived by the archiver,
//! recomputed into a batch view whose rows are checked against per-(user, window) counts
//! made here from the events themselves.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use runnel_batch_reprocessor::recompute::{RecomputeRequest, recompute_view};
use runnel_config::Config;
use runnel_log::{EmbeddedLog, Log, ProduceRecord};

/// A multiple of the window (2026-11-22T00:00:00Z).
const BASE_MS: i64 = 1_795_305_600_000;
const MINUTE: i64 = 60_000;
const JOB: &str = "clicks_and_updates";
/// The minutes with clicks and updates: two chunks of an hour's windows (from minute 0 and
/// from minute 60), and minute 62, past the horizon.
const MINUTES: [i64; 8] = [0, 1, 2, 3, 59, 60, 61, 62];
/// Every user's last click: the left side's history reaches minute 63:30.
const LAST_CLICK: i64 = BASE_MS + 63 * MINUTE + 30_000;
/// Every user's last update: the right side's history reaches only minute 62:30, so the
/// horizon is the right's (less the 2 s of out-of-orderness) and window 62 is past it.
const LAST_UPDATE: i64 = BASE_MS + 62 * MINUTE + 30_000;
const HORIZON: i64 = LAST_UPDATE - 2_000;

fn jobs_toml() -> String {
    format!(
        r#"
[[jobs]]
name = "{JOB}"
version = 1
sql = """
SELECT c.user_id, c.window_start, c.clicks, u.updates
FROM (SELECT user_id, window_start, window_end, COUNT(*) AS clicks
      FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
      GROUP BY user_id, window_start, window_end) AS c
LEFT JOIN (SELECT user_id, window_start, window_end, COUNT(*) AS updates
      FROM TUMBLE(user_updates, event_time, INTERVAL '1' MINUTE)
      GROUP BY user_id, window_start, window_end) AS u
ON c.user_id = u.user_id AND c.window_start = u.window_start
"""
max-out-of-orderness = "2s"
allowed-lateness = "0s"
"#
    )
}

/// User `user`'s clicks in `minute`, for users 0 to 2.
fn clicks_of(user: i64, minute: i64) -> i64 {
    1 + (user + minute) % 3
}

/// The clicks as (user, event time): users 0 to 2 click [`clicks_of`] times in each of
/// [`MINUTES`], user 3 twice in minutes 1 and 60 only (when it has no update); then
/// every user once at [`LAST_CLICK`].
fn clicks() -> Vec<(i64, i64)> {
    let mut clicks = Vec::new();
    for minute in MINUTES {
        for user in 0..3 {
            for n in 0..clicks_of(user, minute) {
                clicks.push((user, BASE_MS + minute * MINUTE + n * 7_000 + user * 100));
            }
        }
        if minute == 1 || minute == 60 {
            clicks.push((3, BASE_MS + minute * MINUTE + 20_000));
            clicks.push((3, BASE_MS + minute * MINUTE + 40_000));
        }
    }
    clicks.extend((0..4).map(|user| (user, LAST_CLICK)));
    clicks
}

/// The updates as (user, event time, deleted): users 0 and 1 update `1 + (2 user + minute) %
/// 4` times in each of [`MINUTES`], the second of them a delete; user 2 once in minutes 0,
/// 59 and 61 only; user 9, who never clicks, in minute 0; then every user once at
/// [`LAST_UPDATE`].
fn updates() -> Vec<(i64, i64, bool)> {
    let mut updates = Vec::new();
    for minute in MINUTES {
        for user in 0..2 {
            for n in 0..1 + (2 * user + minute) % 4 {
                updates.push((user, BASE_MS + minute * MINUTE + 5_000 + n * 11_000, n == 1));
            }
        }
        if [0, 59, 61].contains(&minute) {
            updates.push((2, BASE_MS + minute * MINUTE + 30_000, false));
        }
    }
    updates.push((9, BASE_MS + 10_000, false));
    updates.extend([0, 1, 2, 3, 9].map(|user| (user, LAST_UPDATE, false)));
    updates
}

fn record(user: i64, at: i64, value: String) -> ProduceRecord {
    ProduceRecord {
        key: Some(Bytes::from(format!("u{user}"))),
        value: Bytes::from(value),
        timestamp: at,
        headers: Vec::new(),
        partition: None,
    }
}

/// (user, window start) to (clicks, updates).
type Rows = BTreeMap<(String, i64), (i64, Option<i64>)>;

/// The join's rows of the windows ending by `horizon`, counted from the events: each
/// (user, window) with clicks, with its user's updates in that window (deletes count: they
/// are rows of the stream), or none.
fn expected(horizon: i64) -> Rows {
    let window = |at: i64| at - at.rem_euclid(MINUTE);
    let mut updates_per_window: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for (user, at, _) in updates() {
        *updates_per_window.entry((user, window(at))).or_default() += 1;
    }
    let mut rows = Rows::new();
    for (user, at) in clicks() {
        let start = window(at);
        if start + MINUTE > horizon {
            continue;
        }
        let row = rows
            .entry((format!("u{user}"), start))
            .or_insert((0, updates_per_window.get(&(user, start)).copied()));
        row.0 += 1;
    }
    rows
}

/// The rows of the batch view's files.
async fn view_rows(store: &dyn ObjectStore, files: &[runnel_jobs::view::ViewFile]) -> Rows {
    let mut rows = Rows::new();
    for file in files {
        let bytes = store
            .get(&Path::from(file.path.as_str()))
            .await
            .expect("read a view file")
            .bytes()
            .await
            .expect("read a view file's bytes");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("Parquet")
            .build()
            .expect("reader");
        for batch in reader {
            let batch: RecordBatch = batch.expect("batch");
            let int64 = |name: &str| {
                let column = batch.column_by_name(name).expect(name);
                arrow::compute::cast(column, &DataType::Int64).expect("as int64")
            };
            let (starts, clicks, updates) =
                (int64("window_start"), int64("clicks"), int64("updates"));
            let (starts, clicks, updates) = (
                starts.as_primitive::<Int64Type>(),
                clicks.as_primitive::<Int64Type>(),
                updates.as_primitive::<Int64Type>(),
            );
            let users = batch.column_by_name("user_id").expect("user_id");
            let users = users.as_string::<i32>();
            for row in 0..batch.num_rows() {
                let key = (users.value(row).to_string(), starts.value(row));
                let value = (
                    clicks.value(row),
                    updates.is_valid(row).then(|| updates.value(row)),
                );
                assert!(
                    rows.insert(key.clone(), value).is_none(),
                    "(user, window) {key:?} twice in the view"
                );
            }
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_join_is_recomputed_over_both_histories_up_to_the_earlier_horizon() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("runnel.toml");
    let toml =
        runnel_testkit::streams::join_config(&dir.path().join("data"), "200ms", &jobs_toml());
    std::fs::write(&path, toml).expect("write config");
    let mut config = Config::load(&[path], &Default::default()).expect("valid config");
    // Several files per partition, so that the chunks read some of them only.
    config.archive.target_file_bytes = 512;
    config.archive.row_group_rows = 8;

    let log = Arc::new(
        EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
            .await
            .expect("open log"),
    );
    for topic in ["clicks", "user_updates"] {
        log.ensure_topic(topic, 2).await.expect("topic");
    }
    let click_records: Vec<ProduceRecord> = clicks()
        .into_iter()
        .map(|(user, at)| {
            let value = format!(r#"{{"event_time":{at},"user_id":"u{user}","page":"/p"}}"#);
            record(user, at, value)
        })
        .collect();
    let update_records: Vec<ProduceRecord> = updates()
        .into_iter()
        .map(|(user, at, deleted)| {
            let value = if deleted {
                format!(r#"{{"event_time":{at},"user_id":"u{user}","deleted":true}}"#)
            } else {
                format!(r#"{{"event_time":{at},"user_id":"u{user}","country":"fr"}}"#)
            };
            record(user, at, value)
        })
        .collect();
    log.append("clicks", click_records)
        .await
        .expect("append clicks");
    log.append("user_updates", update_records)
        .await
        .expect("append updates");
    let store = runnel_archive::open_object_store(
        &config.object_store_url(),
        &config.storage.object_store_options,
    )
    .expect("open the object store");
    let summary = runnel_archive::archive_until_caught_up(
        &config,
        Arc::clone(&log) as Arc<dyn Log>,
        Arc::clone(&store),
    )
    .await
    .expect("archive");
    log.close().await;
    assert!(summary.files > 4, "several files: {summary:?}");

    let job_config = config
        .jobs
        .iter()
        .find(|job| job.name == JOB)
        .expect("the job");
    let job = runnel_jobs::Job::compile(&config, job_config).expect("compile");
    assert!(job.window_join.is_some(), "a window join");
    let outcome = recompute_view(
        &config,
        &job,
        RecomputeRequest {
            from_ms: None,
            to_ms: None,
            workers: 2,
            allow_shrink: false,
        },
        Arc::clone(&store),
        Arc::default(),
    )
    .await
    .expect("recompute");

    // The horizon is the right side's: the left's history reaches a minute further.
    assert_eq!(outcome.view.horizon_ms, Some(HORIZON));
    assert_eq!(outcome.chunks, 2, "an hour of windows each");
    // Only the left side's events count, each once over the chunks.
    let clicks_before_horizon = clicks().iter().filter(|(_, at)| *at < HORIZON).count();
    assert_eq!(outcome.view.events, clicks_before_horizon as u64);

    let expected = expected(HORIZON);
    // The cases the rows must hold: a left row without a match, and a count with deletes.
    assert_eq!(expected[&("u3".to_string(), BASE_MS + MINUTE)], (2, None));
    assert_eq!(expected[&("u2".to_string(), BASE_MS + MINUTE)], (1, None));
    assert_eq!(
        expected[&("u1".to_string(), BASE_MS + 60 * MINUTE)],
        (clicks_of(1, 60), Some(3)),
        "updates at 5 s, 16 s (a delete) and 27 s"
    );
    assert!(
        !expected
            .keys()
            .any(|(_, start)| *start >= BASE_MS + 62 * MINUTE),
        "window 62 ends past the horizon"
    );
    let rows = view_rows(store.as_ref(), &outcome.view.files).await;
    assert_eq!(rows, expected);
    assert_eq!(outcome.view.windows(), expected.len() as u64);
    assert!(
        !rows.keys().any(|(user, _)| user == "u9"),
        "a right row without a left one is not joined"
    );
}
