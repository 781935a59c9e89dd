//! `runnel run` with a job that joins its stream with a table: two inputs, live and
//! recompute alike.

use std::path::Path;

use crate::runnel;

const CONFIG: &str = r#"version = "1"
jobs = []

[[streams]]
name = "clicks"
partitions = 1
key = "user_id"
event-time = "event_time"
schema = [
  { name = "event_time", type = "timestamp" },
  { name = "user_id", type = "string" },
  { name = "duration_ms", type = "int64" },
]

[[streams]]
name = "user_updates"
partitions = 1
key = "user_id"
event-time = "updated_at"
schema = [
  { name = "updated_at", type = "timestamp" },
  { name = "user_id", type = "string" },
  { name = "plan", type = "string" },
  { name = "deleted", type = "bool" },
]

[[tables]]
name = "users"
stream = "user_updates"
tombstone = "deleted"
"#;

const JOB: &str =
    "SELECT u.plan, window_start, window_end, COUNT(*) AS clicks, SUM(c.duration_ms) AS total_ms
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c
LEFT JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
GROUP BY u.plan, window_start, window_end
";

/// u1 is on `free` from 00:00:10, on `pro` from 00:01:00, deleted at 00:02:30; the
/// changelog is not in time order. u2 has no row.
const USER_UPDATES: &str = r#"{"updated_at":"1970-01-01T00:01:00Z","user_id":"u1","plan":"pro","deleted":false}
{"updated_at":"1970-01-01T00:00:10Z","user_id":"u1","plan":"free","deleted":false}
{"updated_at":"1970-01-01T00:02:30Z","user_id":"u1","plan":"pro","deleted":true}
"#;

const CLICKS: &str = r#"{"event_time":"1970-01-01T00:00:05Z","user_id":"u1","duration_ms":1}
{"event_time":"1970-01-01T00:00:10Z","user_id":"u1","duration_ms":2}
{"event_time":"1970-01-01T00:00:20Z","user_id":"u2","duration_ms":4}
{"event_time":"1970-01-01T00:01:00Z","user_id":"u1","duration_ms":8}
{"event_time":"1970-01-01T00:02:29Z","user_id":"u1","duration_ms":16}
{"event_time":"1970-01-01T00:02:30Z","user_id":"u1","duration_ms":32}
"#;

fn write_inputs(dir: &Path) {
    std::fs::write(dir.join("runnel.toml"), CONFIG).expect("write config");
    std::fs::write(dir.join("job.sql"), JOB).expect("write job");
    std::fs::write(dir.join("clicks.jsonl"), CLICKS).expect("write clicks");
    std::fs::write(dir.join("users.jsonl"), USER_UPDATES).expect("write users");
}

/// The results' lines without their bookkeeping (`_version` and `_final` differ between
/// live and recompute only in early results, which this job has none of), sorted.
fn sorted_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("results");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn run_joins_clicks_with_the_users_version_at_each_click_live_and_in_recompute() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_inputs(dir.path());
    for mode in ["live", "recompute"] {
        let out = format!("{mode}.jsonl");
        let run = runnel(
            dir.path(),
            &[
                "--config",
                "runnel.toml",
                "run",
                "--sql",
                "job.sql",
                "--input",
                "clicks=clicks.jsonl",
                "--input",
                "users=users.jsonl",
                "--mode",
                mode,
                "--out",
                &out,
            ],
        );
        assert!(
            run.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let live = sorted_lines(&dir.path().join("live.jsonl"));
    let recompute = sorted_lines(&dir.path().join("recompute.jsonl"));
    assert_eq!(live, recompute, "live and recompute disagree");
    let text = live.join("\n");
    // 00:00:05 is before u1's first version, u2 has none: null plan. 00:00:10 is at `free`.
    for expected in [
        r#""window_start":"1970-01-01T00:00:00.000Z","window_end":"1970-01-01T00:01:00.000Z","clicks":2,"total_ms":5"#,
        r#""plan":"free","window_start":"1970-01-01T00:00:00.000Z","window_end":"1970-01-01T00:01:00.000Z","clicks":1,"total_ms":2"#,
        r#""plan":"pro","window_start":"1970-01-01T00:01:00.000Z","window_end":"1970-01-01T00:02:00.000Z","clicks":1,"total_ms":8"#,
        r#""plan":"pro","window_start":"1970-01-01T00:02:00.000Z","window_end":"1970-01-01T00:03:00.000Z","clicks":1,"total_ms":16"#,
        // Deleted at 00:02:30: the click then has no plan.
        r#""window_start":"1970-01-01T00:02:00.000Z","window_end":"1970-01-01T00:03:00.000Z","clicks":1,"total_ms":32"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert_eq!(live.len(), 5, "{text}");
}

#[test]
fn run_of_a_join_job_asks_for_the_tables_changelog() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_inputs(dir.path());
    let run = runnel(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "run",
            "--sql",
            "job.sql",
            "--input",
            "clicks.jsonl",
            "--out",
            "r.jsonl",
        ],
    );
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("joins the table `users`") && stderr.contains("--input users=FILE"),
        "{stderr}"
    );
}
