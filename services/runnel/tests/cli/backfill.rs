//! `runnel backfill --mode recompute` as a process, over the history of a log the live
//! stream-processor has run over: the batch view equals live on every window no late event
//! touched, counts the late events on the others, is the same for 1 and 3 workers, and
//! opens in DuckDB.

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
    assert!(
        output.status.success(),
        "runnel {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
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
    runnel_events::validate::parse_rfc3339_millis(&format!("{text}Z")).expect("a timestamp")
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
    let path = universe.root.join("runnel.toml");
    let toml = std::fs::read_to_string(&path).expect("config");
    let job = &toml[toml.find("[[jobs]]").expect("a job")..];
    let name = format!("name = \"{}\"\n", universe.job);
    let second = job.replacen(&name, &format!("{name}version = 2\n"), 1);
    std::fs::write(&path, format!("{toml}\n{second}")).expect("write config");
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
