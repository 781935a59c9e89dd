//! `runnel backfill --mode recompute` as a process, over the history of a log the live
//! stream-processor has run over: the batch view equals live on every window no late event
//! touched, counts the late events on the others, is the same for 1 and 3 workers, and
//! opens in DuckDB. Over a history holding an out-of-range event time, a recompute is
//! refused by its chunk count, naming the event, and keeps the view; and a recompute that
//! would shrink the view is refused unless `--allow-shrink`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::stream::{Universe, fill_log, latest, read_topic, run_until_caught_up};

const WINDOW_MS: i64 = 10_000;

fn runnel(universe: &Universe, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--config")
        .arg(universe.root.join("runnel.toml"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run runnel");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "runnel {args:?} failed: {stderr}");
    // A backfill that succeeds has nothing to warn about (a recompute once warned on every
    // run that it could not delete a run state it never wrote).
    assert!(
        !stderr.contains("WARN"),
        "runnel {args:?} succeeded with warnings: {stderr}"
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// The batch view of version 1 of the universe's job: its manifest and its files.
fn view(universe: &Universe) -> (serde_json::Value, Vec<PathBuf>) {
    let objects = universe.root.join("data/objects");
    let manifest_path = objects.join(format!("views/{}/1/_manifest.json", universe.job));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("the view's manifest"))
            .expect("JSON manifest");
    let files = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|file| objects.join(file["path"].as_str().expect("path")))
        .collect();
    (manifest, files)
}

/// The view's rows by upsert key (`<_key>@<_window_start ms>`, as the results topic keys
/// them): views, total_ms, last_page.
fn view_rows(files: &[PathBuf]) -> BTreeMap<String, (i64, i64, String)> {
    let mut rows = BTreeMap::new();
    for path in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(path).expect("open view file"),
        )
        .expect("a Parquet file")
        .build()
        .expect("reader");
        for batch in reader {
            let batch: RecordBatch = batch.expect("batch");
            let column = |name: &str| batch.column_by_name(name).expect(name).clone();
            let (keys, starts) = (column("_key"), column("_window_start"));
            let (views, total, page) = (column("views"), column("total_ms"), column("last_page"));
            for row in 0..batch.num_rows() {
                let key = format!(
                    "{}@{}",
                    keys.as_string::<i32>().value(row),
                    starts.as_primitive::<TimestampMillisecondType>().value(row)
                );
                let value = (
                    views.as_primitive::<Int64Type>().value(row),
                    total.as_primitive::<Int64Type>().value(row),
                    page.as_string::<i32>().value(row).to_string(),
                );
                assert!(rows.insert(key.clone(), value).is_none(), "{key} twice");
            }
        }
    }
    rows
}

/// Epoch milliseconds of arrow_json's text for a zone-less millisecond timestamp.
fn millis(text: &str) -> i64 {
    runnel_time::parse_rfc3339_millis(&format!("{text}Z")).expect("a timestamp")
}

/// An embedded universe under `dir` whose log the live stream-processor has run over to the
/// end and that is archived whole; with each partition's end offset.
async fn run_live_and_archive(dir: &std::path::Path) -> (Universe, Vec<u64>) {
    let mut universe = Universe::embedded(dir.join("u"));
    universe.with_pages = false;
    let ends = fill_log(&universe).await;
    run_until_caught_up(&universe, &ends);
    runnel(&universe, &["archive", "--once"]);
    (universe, ends)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recompute_agrees_with_live_and_counts_the_late_events() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (universe, ends) = run_live_and_archive(dir.path()).await;

    let summary = runnel(
        &universe,
        &["backfill", "--job", &universe.job, "--mode", "recompute"],
    );
    eprintln!("{summary}");
    let (manifest, files) = view(&universe);
    let one_worker = view_rows(&files);
    let horizon = manifest["horizon_ms"].as_i64().expect("a horizon");
    assert_eq!(manifest["generation"], 1);
    let before_horizon = (0..crate::stream::EVENTS)
        .filter(|&n| crate::stream::event_time(n) < horizon)
        .count() as u64;
    assert!(
        before_horizon < ends.iter().sum::<u64>(),
        "some events are past the horizon"
    );
    assert_eq!(
        manifest["events"].as_u64(),
        Some(before_horizon),
        "every archived event before the horizon counted once"
    );

    runnel(
        &universe,
        &[
            "backfill",
            "--job",
            &universe.job,
            "--mode",
            "recompute",
            "--workers",
            "3",
        ],
    );
    let (manifest, files) = view(&universe);
    assert_eq!(manifest["generation"], 2);
    assert_eq!(
        view_rows(&files),
        one_worker,
        "1 and 3 workers give the same view"
    );
    let old_generation = universe
        .root
        .join(format!("data/objects/views/{}/1/{:020}", universe.job, 1));
    assert!(
        std::fs::read_dir(&old_generation).map_or(true, |mut entries| entries.next().is_none()),
        "the first generation's files are deleted"
    );

    // Live: the latest version of every window, and the late events per window.
    let live = latest(&read_topic(&universe, &format!("{}.results", universe.job)).await);
    let late_raw = read_topic(&universe, &format!("{}.late", universe.job)).await;
    let mut late: BTreeMap<String, i64> = BTreeMap::new();
    for values in late_raw.values() {
        let row: serde_json::Value = serde_json::from_slice(&values[0]).expect("late JSON");
        let key = serde_json::to_string(&[row["user_id"].as_str().expect("user")]).expect("key");
        let start = millis(row["_window_start"].as_str().expect("window start"));
        *late.entry(format!("{key}@{start}")).or_default() += 1;
    }
    assert!(
        one_worker.len() > 100,
        "{} windows in the view",
        one_worker.len()
    );
    let mut touched = 0;
    for (key, (views, total_ms, last_page)) in &one_worker {
        let Some(live_row) = live.get(key) else {
            // Live never opened a window whose every event came too late.
            assert_eq!(
                late.get(key),
                Some(views),
                "{key} is in the view, and in live neither as a result nor as late events"
            );
            touched += 1;
            continue;
        };
        let live_views = live_row["views"].as_i64().expect("views");
        match late.get(key) {
            None => {
                assert_eq!(live_row["_final"], true, "{key}");
                assert_eq!(
                    (live_views, live_row["total_ms"].as_i64().expect("total")),
                    (*views, *total_ms),
                    "{key}: the view and live differ on a window no late event touched"
                );
                assert_eq!(
                    live_row["last_page"].as_str(),
                    Some(last_page.as_str()),
                    "{key}"
                );
            }
            Some(late_events) => {
                touched += 1;
                assert_eq!(
                    live_views + late_events,
                    *views,
                    "{key}: the view counts live's events and its late ones"
                );
            }
        }
    }
    assert!(touched > 0, "some window of the view had late events");
    // Complete up to the horizon: every window live fired that ends by then is there.
    for (key, row) in &live {
        let start: i64 = key.rsplit_once('@').expect("@").1.parse().expect("ms");
        if row["_final"] == true && start + WINDOW_MS <= horizon {
            assert!(
                one_worker.contains_key(key),
                "{key} ends before the horizon, not in the view"
            );
        }
    }

    read_with_duckdb(&files, &one_worker);

    // Interrupted after its first chunk, a recompute resumes there and writes the same view.
    let run_state = universe
        .root
        .join(format!("data/objects/views/{}/1/_run.json", universe.job));
    let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--config")
        .arg(universe.root.join("runnel.toml"))
        .args(["backfill", "--job", &universe.job, "--mode", "recompute"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the recompute");
    let child = super::KillOnDrop(child);
    let started = std::time::Instant::now();
    while !run_state.try_exists().expect("stat")
        && started.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(child);
    assert_eq!(
        view(&universe).0["generation"],
        2,
        "the killed recompute had finished: killed too late to test resuming"
    );
    let summary = runnel(
        &universe,
        &[
            "backfill",
            "--job",
            &universe.job,
            "--mode",
            "recompute",
            "--workers",
            "2",
        ],
    );
    eprintln!("{summary}");
    assert!(
        !summary.contains("(0 resumed"),
        "the second run resumed the first one's chunks: {summary}"
    );
    let (manifest, files) = view(&universe);
    assert_eq!(manifest["generation"], 3);
    assert_eq!(
        view_rows(&files),
        one_worker,
        "a resumed recompute gives the same view"
    );
    assert!(
        !run_state.try_exists().expect("stat"),
        "the finished run's state is removed"
    );
}

/// A second reader: DuckDB counts the view's rows and sums its views.
fn read_with_duckdb(files: &[PathBuf], rows: &BTreeMap<String, (i64, i64, String)>) {
    let Some(python) = super::duckdb_python() else {
        return;
    };
    let list: Vec<String> = files
        .iter()
        .map(|path| format!("'{}'", path.display()))
        .collect();
    let script = format!(
        "import duckdb\nprint(*duckdb.sql(\"SELECT count(*), sum(views) FROM read_parquet([{}])\").fetchone())",
        list.join(", ")
    );
    let output = Command::new(python)
        .args(["-c", &script])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "DuckDB: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected = format!(
        "{} {}",
        rows.len(),
        rows.values().map(|(views, _, _)| views).sum::<i64>()
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), expected);
}

/// How many checkpoints the replayed version's tasks have completed (pruned ones count
/// too: epochs only grow).
fn checkpoint_count(universe: &Universe) -> u64 {
    let dir = universe
        .root
        .join(format!("data/objects/checkpoints/{}.v2", universe.job));
    let Ok(partitions) = std::fs::read_dir(dir) else {
        return 0;
    };
    partitions
        .filter_map(Result::ok)
        .filter_map(|partition| std::fs::read_dir(partition.path()).ok())
        .flatten()
        .filter_map(Result::ok)
        .filter(|epoch| {
            epoch
                .path()
                .join("_checkpoint.json")
                .try_exists()
                .expect("stat")
        })
        .filter_map(|epoch| epoch.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// Declares version 2 of the universe's job with the same SQL and settings.
fn declare_version_2(universe: &Universe) {
    declare_version_2_of(universe, &universe.job);
}

/// Declares version 2 of `job` with the same SQL and settings.
fn declare_version_2_of(universe: &Universe, job: &str) {
    let path = universe.root.join("runnel.toml");
    let toml = std::fs::read_to_string(&path).expect("config");
    let name = format!("name = \"{job}\"\n");
    let start = toml
        .match_indices("[[jobs]]")
        .map(|(at, _)| at)
        .find(|&at| toml[at..].starts_with(&format!("[[jobs]]\n{name}")))
        .expect("the job's table");
    let end = toml[start + 1..]
        .find("[[jobs]]")
        .map_or(toml.len(), |next| start + 1 + next);
    let second = toml[start..end].replacen(&name, &format!("{name}version = 2\n"), 1);
    std::fs::write(&path, format!("{toml}\n{second}")).expect("write config");
}

/// The `(_partition, _offset)` of every late record of `topic`, sorted.
async fn late_positions(universe: &Universe, topic: &str) -> Vec<(u64, u64)> {
    let mut positions: Vec<(u64, u64)> = read_topic(universe, topic)
        .await
        .into_values()
        .flatten()
        .map(|value| {
            let row: serde_json::Value = serde_json::from_slice(&value).expect("JSON late record");
            (
                row["_partition"].as_u64().expect("_partition"),
                row["_offset"].as_u64().expect("_offset"),
            )
        })
        .collect();
    positions.sort_unstable();
    positions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_repartitioned_job_reads_the_history_and_gives_the_live_aggregates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let universe = Universe::embedded(dir.path().join("u"));
    let pages = format!("{}-pages", universe.job);
    // The pages job's lateness (an hour) covers every event of the data set: whether an
    // event is late through a repartition topic hangs on how the routers' copies
    // interleave (the window task's watermark is the least of its source partitions'), which
    // differs between any two runs, live or replayed.
    let ends = fill_log(&universe).await;
    run_until_caught_up(&universe, &ends);
    runnel(&universe, &["archive", "--once"]);
    declare_version_2_of(&universe, &pages);

    let summary = runnel(
        &universe,
        &[
            "backfill",
            "--job",
            &pages,
            "--version",
            "2",
            "--mode",
            "replay",
            "--stop-when-caught-up",
        ],
    );
    assert!(summary.contains("caught up"), "{summary}");

    // Input order through a repartition topic depends on how the routers' copies
    // interleave, so versions may differ: the latest version of every window holds the
    // same aggregates, and no event is late in either.
    let live = latest(&read_topic(&universe, &format!("{pages}.results")).await);
    let replayed = latest(&read_topic(&universe, &format!("{pages}.v2.results")).await);
    assert!(live.len() > 100, "{} live page windows", live.len());
    let differing: Vec<(
        &String,
        Option<&serde_json::Value>,
        Option<&serde_json::Value>,
    )> = live
        .keys()
        .chain(replayed.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|key| live.get(*key) != replayed.get(*key))
        .map(|key| (key, live.get(key), replayed.get(key)))
        .collect();
    assert!(
        differing.is_empty(),
        "replayed page aggregates differ from live at {} of {} windows, e.g. (window, live, replayed) {:?}",
        differing.len(),
        live.len(),
        &differing[..differing.len().min(3)]
    );
    let live_late = late_positions(&universe, &format!("{pages}.late")).await;
    let replayed_late = late_positions(&universe, &format!("{pages}.v2.late")).await;
    assert_eq!(live_late, replayed_late, "late events differ");
    // The replay read the stream's history: its routers copied every event into its own
    // repartition topic.
    let routed: usize = read_topic(&universe, &format!("{pages}.v2.repartition"))
        .await
        .into_values()
        .flatten()
        .filter(|value| !value.is_empty())
        .count();
    assert_eq!(
        routed as u64,
        crate::stream::EVENTS,
        "every event routed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_new_version_reproduces_live_and_resumes_after_kills() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The history holds the whole log: the replay reads it there, then the (empty) rest.
    let (universe, _) = run_live_and_archive(dir.path()).await;
    declare_version_2(&universe);

    let replay_args = [
        "backfill",
        "--job",
        universe.job.as_str(),
        "--version",
        "2",
        "--mode",
        "replay",
        "--stop-when-caught-up",
    ];
    let mut random = super::CrashRandom::from_env_or_clock();
    eprintln!("crash seed {}", random.seed());
    for round in 0..2 {
        let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .arg("--config")
            .arg(universe.root.join("runnel.toml"))
            .args(replay_args)
            .env("RUST_LOG", "warn")
            // Checkpoints come early, so a kill right after one leaves most of the work.
            .env("RUNNEL__STREAM_PROCESSOR__CHECKPOINT_INTERVAL", "20ms")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the replay");
        let child = super::KillOnDrop(child);
        // A whole replay takes about half a second here. Killed as soon as it has
        // checkpointed once more (a random moment within the next 10 ms).
        let started = std::time::Instant::now();
        let before = checkpoint_count(&universe);
        while checkpoint_count(&universe) == before
            && started.elapsed() < std::time::Duration::from_secs(30)
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(random.below(10)));
        drop(child);
        eprintln!("round {round}: SIGKILL after {:?}", started.elapsed());
    }
    let objects = universe.root.join("data/objects");
    let active_path = objects.join(format!("jobs/{}/active.json", universe.job));
    assert!(
        !active_path.try_exists().expect("stat"),
        "a killed replay had already caught up: the kills came too late to test resuming"
    );
    let checkpoints = objects.join(format!("checkpoints/{}.v2", universe.job));
    assert!(
        std::fs::read_dir(&checkpoints).is_ok_and(|mut partitions| partitions.next().is_some()),
        "the killed replays left checkpoints to resume from"
    );
    let summary = runnel(&universe, &replay_args);
    eprintln!("{summary}");
    assert!(summary.contains("caught up"), "{summary}");

    let job = &universe.job;
    let live = crate::stream::versions(&read_topic(&universe, &format!("{job}.results")).await);
    let replayed =
        crate::stream::versions(&read_topic(&universe, &format!("{job}.v2.results")).await);
    assert!(live.len() > 100, "{} live results", live.len());
    let differing: Vec<&(String, u64)> = live
        .keys()
        .chain(replayed.keys())
        .filter(|key| live.get(*key) != replayed.get(*key))
        .collect();
    assert!(
        differing.is_empty(),
        "replayed results differ from live at {} of {} (key, version)s, e.g. {:?}",
        differing.len(),
        live.len(),
        differing.first()
    );
    let first_copies =
        |late: BTreeMap<String, Vec<bytes::Bytes>>| -> BTreeMap<String, bytes::Bytes> {
            late.into_iter()
                .map(|(key, values)| {
                    assert!(
                        values.iter().all(|value| value == &values[0]),
                        "{key} copies differ"
                    );
                    (key, values[0].clone())
                })
                .collect()
        };
    let live_late = first_copies(read_topic(&universe, &format!("{job}.late")).await);
    let replayed_late = first_copies(read_topic(&universe, &format!("{job}.v2.late")).await);
    assert!(!live_late.is_empty(), "the data set has late events");
    assert_eq!(live_late, replayed_late, "late events differ");

    let active: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&active_path).expect("the active-version file"))
            .expect("JSON");
    assert_eq!(active["version"], 2);
}

/// Runs `runnel` with `args` to its end, killed (and the test failed) after `limit`.
fn runnel_within(
    universe: &Universe,
    args: &[&str],
    limit: std::time::Duration,
) -> std::process::Output {
    let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .arg("--config")
        .arg(universe.root.join("runnel.toml"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start runnel");
    let mut child = super::KillOnDrop(child);
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                pipe.read_to_end(&mut bytes).expect("read a pipe");
            }
            bytes
        })
    };
    let stdout = read(child.0.stdout.take().map(|pipe| Box::new(pipe) as _));
    let stderr = read(child.0.stderr.take().map(|pipe| Box::new(pipe) as _));
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < limit,
            "runnel {args:?} still runs after {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// An embedded universe under `dir` whose log (the data set of `fill_log`) is archived whole;
/// no stream-processor ran.
async fn archived(dir: &std::path::Path) -> Universe {
    let mut universe = Universe::embedded(dir.join("u"));
    universe.with_pages = false;
    fill_log(&universe).await;
    runnel(&universe, &["archive", "--once"]);
    universe
}

/// One event written into the history as another producer's file could hold it.
struct HistoryRow {
    event_time: i64,
    user: &'static str,
    duration_ms: i64,
}

/// Appends a file holding `rows` to partition `partition` of the universe's history and
/// names it in the manifest, past the ingest path and its event-time bounds (as history
/// written before them, or by another tool, can hold it). Returns its path in the store and
/// each row's offset.
fn add_history_file(
    universe: &Universe,
    partition: u32,
    rows: &[HistoryRow],
) -> (String, Vec<i64>) {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMillisecondArray};

    let config =
        runnel_config::Config::load(&[universe.root.join("runnel.toml")], &Default::default())
            .expect("config");
    let schema = runnel_events::StreamSchema::new(&config.streams[0]);
    let objects = universe.root.join("data/objects");
    let manifest_path = objects.join(format!("history/{}/_manifest.json", universe.stream));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).expect("the history's manifest"))
            .expect("JSON");
    let first = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .filter(|file| file["partition"] == partition)
        .map(|file| file["last_offset"].as_u64().expect("last offset") + 1)
        .max()
        .expect("the partition has history");
    let last = first + rows.len() as u64 - 1;
    let offsets: Vec<i64> = (first..=last).map(|offset| offset as i64).collect();
    let ingest_time = 1_795_305_600_000_i64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::from(
            rows.iter().map(|row| row.event_time).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|row| row.user).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(vec!["/p/injected"; rows.len()])),
        Arc::new(StringArray::from(vec!["de"; rows.len()])),
        Arc::new(Int64Array::from(
            rows.iter().map(|row| row.duration_ms).collect::<Vec<_>>(),
        )),
        Arc::new(Int32Array::from(vec![partition as i32; rows.len()])),
        Arc::new(Int64Array::from(offsets.clone())),
        Arc::new(TimestampMillisecondArray::from(vec![
            ingest_time;
            rows.len()
        ])),
    ];
    let batch = RecordBatch::try_new(Arc::clone(schema.with_position()), columns)
        .expect("the stream's columns");
    let mut bytes = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
    let path = format!(
        "history/{}/date=2026-11-22/{partition}-{first:020}-{last:020}.parquet",
        universe.stream
    );
    let file = objects.join(&path);
    std::fs::create_dir_all(file.parent().expect("a folder")).expect("create folder");
    std::fs::write(&file, &bytes).expect("write the file");
    // The partition's last entry, with this file's fields.
    let mut entry = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .rfind(|file| file["partition"] == partition)
        .expect("the partition has history")
        .clone();
    let times = rows.iter().map(|row| row.event_time);
    for (field, value) in [
        ("path", serde_json::json!(path)),
        ("first_offset", first.into()),
        ("last_offset", last.into()),
        ("rows", rows.len().into()),
        ("bytes", bytes.len().into()),
        ("min_event_time", times.clone().min().into()),
        ("max_event_time", times.max().into()),
        ("min_ingest_time", ingest_time.into()),
        ("max_ingest_time", ingest_time.into()),
    ] {
        entry[field] = value;
    }
    manifest["files"].as_array_mut().expect("files").push(entry);
    let mut files = manifest["files"].as_array().expect("files").clone();
    files.sort_by_key(|file| {
        (
            file["partition"].as_u64().expect("partition"),
            file["first_offset"].as_u64().expect("offset"),
        )
    });
    manifest["files"] = serde_json::Value::Array(files);
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).expect("JSON"),
    )
    .expect("write the manifest");
    (path, offsets)
}

/// The view's window starts and manifest, and its files on disk, as a comparable snapshot.
fn view_snapshot(universe: &Universe) -> (serde_json::Value, BTreeMap<String, (i64, i64, String)>) {
    let (manifest, files) = view(universe);
    for file in &files {
        assert!(
            file.try_exists().expect("stat"),
            "{} is gone",
            file.display()
        );
    }
    (manifest, view_rows(&files))
}

/// The view generation folders that hold files, and whether a run state is left.
fn leftovers(universe: &Universe) -> (Vec<String>, bool) {
    let dir = universe
        .root
        .join(format!("data/objects/views/{}/1", universe.job));
    let mut generations: Vec<String> = std::fs::read_dir(&dir)
        .expect("the view's folder")
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_dir(entry.path()).is_ok_and(|mut files| files.next().is_some())
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    generations.sort();
    (
        generations,
        dir.join("_run.json").try_exists().expect("stat"),
    )
}

/// Chunks of an hour (360 windows of 10 s) that `[the window of first_event, horizon)` needs.
fn hour_chunks(first_event: i64, horizon: i64) -> u128 {
    let start = i128::from(first_event) - i128::from(first_event.rem_euclid(WINDOW_MS));
    (i128::from(horizon) - start + 3_599_999).unsigned_abs() / 3_600_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_recompute_refuses_a_range_an_outlying_event_time_widens_and_keeps_the_view() {
    let dir = tempfile::tempdir().expect("temp dir");
    let universe = archived(dir.path()).await;
    let limit = std::time::Duration::from_secs(120);
    let recompute = [
        "backfill",
        "--job",
        universe.job.as_str(),
        "--mode",
        "recompute",
    ];
    runnel(&universe, &recompute);
    let (good_manifest, good_rows) = view_snapshot(&universe);
    let horizon = good_manifest["horizon_ms"].as_i64().expect("a horizon");
    let first_window: i64 = good_rows
        .keys()
        .map(|key| {
            key.rsplit_once('@')
                .expect("@")
                .1
                .parse::<i64>()
                .expect("ms")
        })
        .min()
        .expect("windows");

    // An event of the year 1 in partition 1, as the finding's: 17.8 million chunks.
    let year_1 = -62_135_596_800_000;
    let (year_1_file, year_1_offsets) = add_history_file(
        &universe,
        1,
        &[HistoryRow {
            event_time: year_1,
            user: "user-1",
            duration_ms: 5,
        }],
    );
    let refused = runnel_within(&universe, &recompute, limit);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    eprintln!("{stderr}");
    assert!(
        !refused.status.success(),
        "a year-1 event was recomputed: {stderr}"
    );
    for expected in [
        format!("{} chunks", hour_chunks(year_1, horizon)),
        "more than batch-reprocessor.max-recompute-chunks (100000)".to_string(),
        year_1_file.clone(),
        format!(
            "partition 1 offset {} at 0001-01-01T00:00:00.000Z",
            year_1_offsets[0]
        ),
        "--from".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "the refusal names `{expected}`: {stderr}"
        );
    }
    assert_eq!(
        view_snapshot(&universe),
        (good_manifest.clone(), good_rows.clone()),
        "the view stays"
    );
    assert_eq!(
        leftovers(&universe),
        (vec![format!("{:020}", 1)], false),
        "a refused range writes nothing"
    );

    // An event at i64::MIN in partition 0, in a file with a good event of a new user: the
    // range would start at the lowest millisecond there is.
    let (min_file, min_offsets) = add_history_file(
        &universe,
        0,
        &[
            HistoryRow {
                event_time: i64::MIN,
                user: "user-0",
                duration_ms: 7,
            },
            HistoryRow {
                event_time: first_window + 1_000,
                user: "user-injected",
                duration_ms: 11,
            },
        ],
    );
    let refused = runnel_within(&universe, &recompute, limit);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    eprintln!("{stderr}");
    assert!(
        !refused.status.success(),
        "an i64::MIN event was recomputed: {stderr}"
    );
    for expected in [
        format!("{} chunks", hour_chunks(i64::MIN, horizon)),
        "batch-reprocessor.max-recompute-chunks".to_string(),
        min_file.clone(),
        format!(
            "partition 0 offset {} at -9223372036854775808 ms",
            min_offsets[0]
        ),
        format!(
            "partition 1 offset {} at 0001-01-01T00:00:00.000Z",
            year_1_offsets[0]
        ),
        "2 event(s) there lie before it".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "the refusal names `{expected}`: {stderr}"
        );
    }
    assert_eq!(
        view_snapshot(&universe),
        (good_manifest.clone(), good_rows.clone()),
        "the view stays"
    );
    assert_eq!(leftovers(&universe), (vec![format!("{:020}", 1)], false));

    // A --from inside the outlying stretch is refused too, by its own start.
    let refused = runnel_within(
        &universe,
        &[
            "backfill",
            "--job",
            &universe.job,
            "--mode",
            "recompute",
            "--from",
            "2000-01-01T00:00:00Z",
        ],
        limit,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    eprintln!("{stderr}");
    assert!(
        !refused.status.success(),
        "26 years of chunks were recomputed: {stderr}"
    );
    assert!(
        stderr.contains("it starts at the asked-for start (--from), 2000-01-01T00:00:00.000Z"),
        "{stderr}"
    );
    assert_eq!(leftovers(&universe), (vec![format!("{:020}", 1)], false));

    // From the first good window on, the same history gives the good view, plus the good
    // event of the outlying file.
    let from = first_window.to_string();
    let summary = runnel(
        &universe,
        &[
            "backfill",
            "--job",
            &universe.job,
            "--mode",
            "recompute",
            "--from",
            &from,
        ],
    );
    eprintln!("{summary}");
    let (manifest, rows) = view_snapshot(&universe);
    assert_eq!(manifest["generation"], 2);
    assert_eq!(manifest["horizon_ms"], good_manifest["horizon_ms"]);
    assert_eq!(manifest["from_ms"], first_window);
    assert_eq!(
        manifest["events"].as_u64(),
        good_manifest["events"].as_u64().map(|events| events + 1),
        "the outlying events are left out, the good one counted"
    );
    let mut expected = good_rows.clone();
    expected.insert(
        format!(r#"["user-injected"]@{first_window}"#),
        (1, 11, "/p/injected".to_string()),
    );
    assert_eq!(rows, expected, "the good data's windows, every one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_recompute_that_would_shrink_the_view_is_refused_unless_allow_shrink() {
    let dir = tempfile::tempdir().expect("temp dir");
    let universe = archived(dir.path()).await;
    let limit = std::time::Duration::from_secs(120);
    let job = universe.job.as_str();
    runnel(
        &universe,
        &["backfill", "--job", job, "--mode", "recompute"],
    );
    let (first_manifest, first_rows) = view_snapshot(&universe);
    let first_windows = first_rows.len();
    let first_events = first_manifest["events"].as_u64().expect("events");

    // The same version with other SQL is refused: a version's definition never changes once
    // a backfill registered it, and the view stays.
    let config_path = universe.root.join("runnel.toml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    let filtered = config.replacen(
        "GROUP BY user_id",
        "WHERE user_id < 'user-2'\nGROUP BY user_id",
        1,
    );
    assert_ne!(filtered, config);
    std::fs::write(&config_path, &filtered).expect("write config");
    let refused = runnel_within(
        &universe,
        &["backfill", "--job", job, "--mode", "recompute"],
        limit,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("version 1 is already registered")
            && stderr.contains("other SQL")
            && stderr.contains("declare the change as a new version"),
        "{stderr}"
    );
    std::fs::write(&config_path, &config).expect("write config");
    assert_eq!(
        view_snapshot(&universe),
        (first_manifest.clone(), first_rows.clone())
    );

    // The same range, fewer windows: the history lost the files of every partition but 0
    // (as if they were deleted), so a recompute counts fewer events.
    let history_manifest = universe.root.join(format!(
        "data/objects/history/{}/_manifest.json",
        universe.stream
    ));
    let whole_history = std::fs::read(&history_manifest).expect("the history's manifest");
    let mut lost: serde_json::Value = serde_json::from_slice(&whole_history).expect("JSON");
    lost["files"]
        .as_array_mut()
        .expect("files")
        .retain(|file| file["partition"] == 0);
    std::fs::write(&history_manifest, serde_json::to_vec(&lost).expect("JSON"))
        .expect("write the history's manifest");
    let refused = runnel_within(
        &universe,
        &["backfill", "--job", job, "--mode", "recompute"],
        limit,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    eprintln!("{stderr}");
    assert!(
        !refused.status.success(),
        "the view shrank unasked: {stderr}"
    );
    for expected in [
        format!(
            "fewer than generation 1 it would replace ({first_windows} windows from \
             {first_events} events"
        ),
        "the new generation 2 holds".to_string(),
        "--allow-shrink".to_string(),
    ] {
        assert!(
            stderr.contains(&expected),
            "the refusal says `{expected}`: {stderr}"
        );
    }
    assert_eq!(
        view_snapshot(&universe),
        (first_manifest.clone(), first_rows.clone()),
        "the previous generation stays whole"
    );
    assert_eq!(
        leftovers(&universe),
        (vec![format!("{:020}", 1)], false),
        "the refused generation's files and run state are deleted"
    );

    let summary = runnel(
        &universe,
        &[
            "backfill",
            "--job",
            job,
            "--mode",
            "recompute",
            "--allow-shrink",
        ],
    );
    eprintln!("{summary}");
    let (manifest, rows) = view_snapshot(&universe);
    assert_eq!(manifest["generation"], 2);
    assert!(
        !rows.is_empty() && rows.len() < first_windows,
        "{} windows after {first_windows}",
        rows.len()
    );
    assert!(rows.keys().all(|key| first_rows.contains_key(key)));
    assert_eq!(leftovers(&universe), (vec![format!("{:020}", 2)], false));

    // Back to the whole history: more windows, no flag needed. Then a narrower range, which
    // would drop the windows before it, is refused too.
    std::fs::write(&history_manifest, &whole_history).expect("write the history's manifest");
    runnel(
        &universe,
        &["backfill", "--job", job, "--mode", "recompute"],
    );
    let (manifest, rows) = view_snapshot(&universe);
    assert_eq!(manifest["generation"], 3);
    assert_eq!(rows, first_rows, "the same history gives the same view");
    let later = manifest["horizon_ms"].as_i64().expect("a horizon") - 600_000;
    let later = (later - later.rem_euclid(WINDOW_MS)).to_string();
    let narrower = [
        "backfill",
        "--job",
        job,
        "--mode",
        "recompute",
        "--from",
        &later,
    ];
    let refused = runnel_within(&universe, &narrower, limit);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    eprintln!("{stderr}");
    assert!(
        !refused.status.success(),
        "a narrower range shrank the view unasked: {stderr}"
    );
    assert!(stderr.contains("--allow-shrink"), "{stderr}");
    assert_eq!(view_snapshot(&universe), (manifest, rows));
    let mut allowed = narrower.to_vec();
    allowed.push("--allow-shrink");
    runnel(&universe, &allowed);
    let (manifest, rows) = view_snapshot(&universe);
    assert_eq!(manifest["generation"], 4);
    assert_eq!(manifest["from_ms"].as_i64(), later.parse().ok());
    let expected: BTreeMap<String, (i64, i64, String)> = first_rows
        .into_iter()
        .filter(|(key, _)| {
            key.rsplit_once('@')
                .expect("@")
                .1
                .parse::<i64>()
                .expect("ms")
                >= later.parse::<i64>().expect("ms")
        })
        .collect();
    assert_eq!(rows, expected, "the windows from --from on");

    // A replay writes no view: the flag is refused there.
    let output = runnel_within(
        &universe,
        &[
            "backfill",
            "--job",
            job,
            "--mode",
            "replay",
            "--allow-shrink",
        ],
        limit,
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--allow-shrink is for --mode recompute")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recompute_before_archiving_says_what_it_left_out_and_how_to_archive() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut universe = Universe::embedded(dir.path().join("u"));
    universe.with_pages = false;
    let ends = fill_log(&universe).await;
    let summary = runnel(
        &universe,
        &["backfill", "--job", &universe.job, "--mode", "recompute"],
    );
    let events: u64 = ends.iter().sum();
    assert!(
        summary.contains(&format!(
            "{events} events of `{}` are in the log but not yet in the history",
            universe.stream
        )),
        "{summary}"
    );
    assert!(summary.contains("runnel archive --once"), "{summary}");
    runnel(&universe, &["archive", "--once"]);
    let summary = runnel(
        &universe,
        &["backfill", "--job", &universe.job, "--mode", "recompute"],
    );
    assert!(!summary.contains("not yet in the history"), "{summary}");
}
