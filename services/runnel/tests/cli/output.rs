//! What the CLI prints, for people and for scripts: quiet client commands, aligned tables,
//! JSON that parses, one time format, SQL errors with positions, secrets redacted, and a
//! non-zero exit when `runnel ingest` had rejections.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::query::{RunnelAll, succeeds};
use super::{JOB, KillOnDrop, rfc3339, write_inputs};

/// `runnel <args>` in `dir` (data folder `dir/data`) with `env` and no `RUST_LOG` or
/// `NO_COLOR` from the test's environment.
pub(super) fn runnel_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .current_dir(dir)
        .env("RUNNEL__STORAGE__DATA_DIR", dir.join("data"))
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .output()
        .expect("run runnel")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn client_commands_log_nothing_at_info_unless_verbose() {
    let dir = tempfile::tempdir().expect("temp dir");
    let quiet = runnel_with(dir.path(), &["config"], &[]);
    assert!(quiet.status.success(), "{}", text(&quiet.stderr));
    assert_eq!(
        text(&quiet.stderr),
        "",
        "a client command logs nothing at INFO"
    );

    let verbose = runnel_with(dir.path(), &["-v", "config"], &[]);
    let stderr = text(&verbose.stderr);
    assert!(stderr.contains("INFO"), "-v logs at INFO: {stderr}");
    assert!(stderr.contains("tracing initialized"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colours when stderr is not a terminal: {stderr:?}"
    );
    let debug = runnel_with(dir.path(), &["config", "-vv"], &[]);
    assert!(text(&debug.stderr).contains("tracing initialized"));

    let from_env = runnel_with(dir.path(), &["config"], &[("RUST_LOG", "info")]);
    assert!(
        text(&from_env.stderr).contains("tracing initialized"),
        "RUST_LOG decides when set: {}",
        text(&from_env.stderr)
    );
}

#[test]
fn config_redacts_secrets() {
    let dir = tempfile::tempdir().expect("temp dir");
    let printed = runnel_with(
        dir.path(),
        &["config"],
        &[
            ("RUNNEL__INGEST__AUTH_TOKEN", "ingest-s3cr3t"),
            ("RUNNEL__SERVING__AUTH_TOKEN", "serving-s3cr3t"),
            (
                "RUNNEL__STORAGE__OBJECT_STORE_OPTIONS__AWS_SECRET_ACCESS_KEY",
                "aws-s3cr3t",
            ),
            (
                "RUNNEL__STORAGE__OBJECT_STORE_OPTIONS__AWS_REGION",
                "eu-west-1",
            ),
        ],
    );
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    let stdout = text(&printed.stdout);
    assert!(!stdout.contains("s3cr3t"), "{stdout}");
    assert_eq!(stdout.matches("\"<redacted>\"").count(), 3, "{stdout}");
    assert!(stdout.contains("\"eu-west-1\""), "{stdout}");
}

#[test]
fn run_prints_times_in_rfc3339_with_z_and_a_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_inputs(dir.path());
    std::fs::write(dir.path().join("job.sql"), JOB).expect("write job");
    let run = runnel_with(
        dir.path(),
        &[
            "run",
            "--sql",
            "job.sql",
            "--input",
            "events.jsonl",
            "--out",
            "r.jsonl",
        ],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert_eq!(
        text(&run.stdout),
        "6 events: 3 results to r.jsonl, 1 late to r.late.jsonl, 0 rejected\n"
    );
    assert_eq!(text(&run.stderr), "", "nothing logged at INFO");
    let results = std::fs::read_to_string(dir.path().join("r.jsonl")).expect("results");
    assert!(
        results.contains(
            r#""window_start":"1970-01-01T00:00:00.000Z","window_end":"1970-01-01T00:01:00.000Z""#
        ),
        "{results}"
    );
    let late = std::fs::read_to_string(dir.path().join("r.late.jsonl")).expect("late events");
    let late: serde_json::Value = serde_json::from_str(late.trim()).expect("one late event");
    assert_eq!(late["_window_start"], "1970-01-01T00:00:00.000Z", "{late}");
    assert_eq!(
        late["_reason"],
        "too late for window [1970-01-01T00:00:00.000Z, 1970-01-01T00:01:00.000Z): watermark \
         1970-01-01T00:01:00.000Z had passed its end plus the allowed lateness of 0 ms",
        "{late}"
    );
}

#[test]
fn run_reports_planner_errors_at_their_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_inputs(dir.path());
    for (select, position, needle) in [
        // DataFusion calls this an internal error, "likely a bug in DataFusion".
        ("SUM(page) AS total", "line 1, column 59", "sum(Utf8)"),
        (
            "SUM(duraton_ms) AS total",
            "line 1, column 63",
            "duraton_ms",
        ),
        (
            "sum_of(duration_ms) AS total",
            "line 1, column 59",
            "sum_of",
        ),
    ] {
        let sql = JOB.replace("SUM(duration_ms) AS total_ms", select);
        std::fs::write(dir.path().join("job.sql"), &sql).expect("write job");
        let run = runnel_with(
            dir.path(),
            &[
                "run",
                "--sql",
                "job.sql",
                "--input",
                "events.jsonl",
                "--out",
                "r.jsonl",
            ],
            &[],
        );
        assert!(!run.status.success(), "{sql}");
        let stderr = text(&run.stderr);
        assert!(
            stderr.contains(&format!("invalid job SQL at {position}: ")) && stderr.contains(needle),
            "{sql}: {stderr}"
        );
        assert!(
            !stderr.contains("bug") && !stderr.contains("Internal error"),
            "{stderr}"
        );
    }
}

#[test]
fn the_demo_explains_its_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("demo-data");
    let demo = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args([
            "demo",
            "--plain",
            "--rate",
            "50",
            "--for",
            "6s",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the demo");
    let stdout = text(&demo.stdout);
    assert!(demo.status.success(), "{stdout}{}", text(&demo.stderr));
    let legend = stdout
        .lines()
        .find(|line| line.starts_with("legend: "))
        .unwrap_or_else(|| panic!("no legend line:\n{stdout}"));
    for term in [
        "SPEED / BATCH",
        "speed view",
        "batch view",
        "`v18 final speed`",
    ] {
        assert!(legend.contains(term), "{legend} lacks {term}");
    }
}

fn jsonl_event(time: i64, user: &str, duration: &str) -> String {
    format!(
        "{{\"event_time\": \"{}\", \"user_id\": \"{user}\", \"page\": \"/a\", \"country\": \"de\", \"duration_ms\": {duration}}}\n",
        rfc3339(time)
    )
}

/// Checks that the cells of every row start where the columns of the header above it start.
#[track_caller]
fn check_aligned(table: &str, header_start: &str) {
    let starts = |line: &str| -> Vec<usize> {
        let bytes = line.as_bytes();
        (0..bytes.len())
            .filter(|&idx| bytes[idx] != b' ' && (idx == 0 || bytes[idx - 1] == b' '))
            .collect()
    };
    let mut header = Vec::new();
    for line in table.lines() {
        if line.starts_with(header_start) {
            header = starts(line);
        } else {
            assert!(!header.is_empty(), "a row before the header:\n{table}");
            assert_eq!(
                starts(line),
                header,
                "a row off its header's columns:\n{table}"
            );
        }
    }
}

/// A `runnel query subscribe` process, its stdout and stderr lines as they come.
struct Subscription {
    _process: KillOnDrop,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Subscription {
    fn start(dir: &Path, serving: &str) -> Subscription {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args([
                "--config",
                "runnel.toml",
                "query",
                "subscribe",
                "--job",
                "views",
                "--url",
                serving,
            ])
            .current_dir(dir)
            .env("RUNNEL__STORAGE__DATA_DIR", dir.join("data"))
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start runnel query subscribe");
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (lines_tx, lines_rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if lines_tx.send(line).is_err() {
                        break;
                    }
                }
            });
            lines_rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
        Subscription {
            _process: KillOnDrop(child),
            stdout,
            stderr,
        }
    }
}

#[test]
fn query_and_ingest_output_serves_people_and_scripts() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("runnel.toml"), crate::query::CONFIG).expect("write config");
    let all = RunnelAll::start(dir.path());

    // Nothing comes while no window has closed: subscribe says what it waits for.
    let subscription = Subscription::start(dir.path(), &all.serving);
    let hint = subscription
        .stderr
        .recv_timeout(Duration::from_secs(30))
        .expect("a hint on stderr after a few seconds without updates");
    assert!(
        hint.starts_with("waiting for results of `views`")
            && hint.contains("watermark of every source partition")
            && hint.contains("has passed the window's end"),
        "{hint}"
    );

    // The first minute's events of u1 and u2 (and of u30, a longer key), then one event per
    // user at 3:20 so that every partition's watermark passes the first minute's end.
    let mut jsonl = String::new();
    for (time, user) in [
        (1_000, "u1"),
        (2_000, "u2"),
        (30_000, "u2"),
        (40_000, "user-30"),
    ] {
        jsonl.push_str(&jsonl_event(time, user, "100"));
    }
    for user in 0..40 {
        jsonl.push_str(&jsonl_event(200_000, &format!("u{user}"), "1"));
    }
    std::fs::write(dir.path().join("events.jsonl"), jsonl).expect("write events");
    let ingest = |file: &str, extra: &[&str]| {
        let mut args = vec![
            "ingest",
            "--stream",
            "clicks",
            "--file",
            file,
            "--url",
            &all.ingest,
        ];
        args.extend_from_slice(extra);
        runnel_with(dir.path(), &args, &[])
    };
    let ingested = ingest("events.jsonl", &[]);
    assert!(ingested.status.success(), "{}", text(&ingested.stderr));
    assert!(text(&ingested.stdout).starts_with("accepted 44, rejected 0"));

    // The subscription's rows line up with its header.
    let mut table = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while table
        .lines()
        .filter(|line| !line.starts_with("user_id"))
        .count()
        < 3
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = subscription
            .stdout
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("three updates within 60 s; so far:\n{table}"));
        table.push_str(&line);
        table.push('\n');
    }
    assert!(table.starts_with("user_id"), "{table}");
    check_aligned(&table, "user_id");
    drop(subscription);

    // Every page of a window: one header, aligned; one JSON array; JSON lines.
    let window = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            "runnel.toml",
            "query",
            "window",
            "--job",
            "views",
            "--start",
            "0",
            "--page-size",
            "1",
            "--url",
            &all.serving,
        ];
        args.extend_from_slice(extra);
        succeeds(dir.path(), &args)
    };
    let paged = window(&["--all"]);
    assert_eq!(
        paged
            .lines()
            .filter(|line| line.starts_with("user_id"))
            .count(),
        1,
        "one header over every page:\n{paged}"
    );
    assert_eq!(paged.lines().count(), 4, "three keys:\n{paged}");
    check_aligned(&paged, "user_id");
    let json = window(&["--all", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    let keys: Vec<&str> = rows
        .as_array()
        .expect("an array")
        .iter()
        .map(|row| row["key"].as_str().expect("a key"))
        .collect();
    assert_eq!(keys, [r#"["u1"]"#, r#"["u2"]"#, r#"["user-30"]"#], "{json}");
    assert_eq!(rows[1]["window_end"], "1970-01-01T00:01:00.000Z", "{json}");
    let jsonl = window(&["--all", "--format", "jsonl"]);
    assert_eq!(jsonl.lines().count(), 3, "{jsonl}");
    for line in jsonl.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("a JSON object per line");
    }
    // Without --all, the next page's token goes to stderr; stdout holds only rows.
    let first_page = runnel_with(
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
            "--page-size",
            "1",
            "--url",
            &all.serving,
            "--format",
            "json",
        ],
        &[],
    );
    assert!(first_page.status.success(), "{}", text(&first_page.stderr));
    let page: serde_json::Value =
        serde_json::from_str(&text(&first_page.stdout)).expect("one JSON document");
    assert_eq!(page.as_array().map(Vec::len), Some(1), "{page}");
    assert!(
        text(&first_page.stderr).starts_with("next page: --page-token "),
        "{}",
        text(&first_page.stderr)
    );
    let jobs = runnel_with(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "query",
            "jobs",
            "--url",
            &all.serving,
        ],
        &[],
    );
    assert!(jobs.status.success());
    assert_eq!(
        text(&jobs.stderr),
        "",
        "a client command logs nothing at INFO"
    );
    check_aligned(&text(&jobs.stdout), "job ");

    // Rejections fail `runnel ingest`, after a summary naming where they went.
    let bad = [
        jsonl_event(300_000, "u1", "1"),
        jsonl_event(300_000, "u2", "\"slow\""),
    ]
    .concat();
    std::fs::write(dir.path().join("bad.jsonl"), bad).expect("write bad events");
    let refused = ingest("bad.jsonl", &[]);
    let stdout = text(&refused.stdout);
    assert!(!refused.status.success(), "{stdout}");
    assert!(stdout.starts_with("accepted 1, rejected 1"), "{stdout}");
    assert!(
        stdout.contains(
            "rejected 1 event: 1 refused by the ingest service, kept with their reasons in the topic `clicks.dead-letter`"
        ),
        "{stdout}"
    );
    assert!(text(&refused.stderr).contains("--allow-rejects"));
    let allowed = ingest("bad.jsonl", &["--allow-rejects"]);
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));

    // A bad CSV cell rejects its row only, with its line and column.
    std::fs::write(
        dir.path().join("bad.csv"),
        format!(
            "event_time,user_id,page,country,duration_ms\n\
             {t},u1,/a,de,1\n\
             {t},u2,/a,de,slow\n\
             {t},u3,/a,de,3\n",
            t = rfc3339(300_000)
        ),
    )
    .expect("write csv");
    let csv = ingest("bad.csv", &[]);
    let stdout = text(&csv.stdout);
    assert!(!csv.status.success(), "{stdout}");
    assert!(stdout.starts_with("accepted 2, rejected 1"), "{stdout}");
    assert!(
        stdout.contains("line 3: column `duration_ms` (column 5): `slow` is not an int64"),
        "{stdout}"
    );
    assert!(
        stdout.contains("rejected 1 event: 1 unreadable in the file, not sent"),
        "{stdout}"
    );
}

#[test]
fn run_live_writes_the_same_bytes_for_any_number_of_shards() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 3,000 clicks of 40 users, a tenth up to 6 s out of order, so that some are late with a 1 s
    // watermark lag and 2 s of allowed lateness (late updates and late events both).
    let mut random = runnel_testkit::random::SplitMix64(20);
    let mut clock = 0i64;
    let mut jsonl = String::new();
    for _ in 0..3_000 {
        clock += random.below(40) as i64;
        let time = (clock - random.below(6_000) as i64 * (random.below(10) == 0) as i64).max(0);
        jsonl.push_str(&format!(
            "{{\"event_time\": \"{}\", \"user_id\": \"u{}\", \"page\": \"/p{}\", \"country\": \"de\", \"duration_ms\": {}}}\n",
            rfc3339(time),
            random.below(40),
            random.below(5),
            random.below(1_000)
        ));
    }
    std::fs::write(dir.path().join("events.jsonl"), jsonl).expect("write events");
    for (name, window) in [
        (
            "hop",
            "HOP(clicks, event_time, INTERVAL '2' SECOND, INTERVAL '6' SECOND)",
        ),
        (
            "session",
            "SESSION(clicks, event_time, INTERVAL '1' SECOND)",
        ),
    ] {
        std::fs::write(
            dir.path().join("job.sql"),
            format!(
                "SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(duration_ms) AS total \
                 FROM {window} GROUP BY user_id, window_start, window_end"
            ),
        )
        .expect("write job");
        let outputs: Vec<(String, String)> = ["1", "2", "4"]
            .iter()
            .map(|shards| {
                let out = format!("{name}-{shards}.jsonl");
                let run = runnel_with(
                    dir.path(),
                    &[
                        "run",
                        "--sql",
                        "job.sql",
                        "--input",
                        "events.jsonl",
                        "--out",
                        &out,
                        "--max-out-of-orderness",
                        "1s",
                        "--allowed-lateness",
                        "2s",
                        "--batch-size",
                        "64",
                        "--shards",
                        shards,
                    ],
                    &[],
                );
                assert!(run.status.success(), "{}", text(&run.stderr));
                let read = |path: String| {
                    std::fs::read_to_string(dir.path().join(&path)).expect("read output")
                };
                (read(out), read(format!("{name}-{shards}.late.jsonl")))
            })
            .collect();
        let (results, late) = &outputs[0];
        assert!(results.lines().count() > 100, "{name}: {results}");
        assert!(
            results.contains("\"_final\":true") && results.contains("\"_version\":2"),
            "{name}: late updates too: {results}"
        );
        assert!(late.lines().count() > 10, "{name}: late events too: {late}");
        for (shards, output) in ["2", "4"].iter().zip(&outputs[1..]) {
            assert!(
                output == &outputs[0],
                "{name}: {shards} shards wrote other bytes than one"
            );
        }
    }
}
