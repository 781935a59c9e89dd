//! `runnel run` with a job that joins its stream with a table, or with a second stream
//! within an interval: two inputs, live and recompute alike.

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
        stderr.contains("joins `users`") && stderr.contains("--input users=FILE"),
        "{stderr}"
    );
}

const ORDERS_CONFIG: &str = r#"version = "1"
jobs = []

[[streams]]
name = "orders"
partitions = 1
key = "order_id"
event-time = "event_time"
schema = [
  { name = "event_time", type = "timestamp" },
  { name = "order_id", type = "string" },
  { name = "region", type = "string" },
]

[[streams]]
name = "payments"
partitions = 1
key = "order_id"
event-time = "event_time"
schema = [
  { name = "event_time", type = "timestamp" },
  { name = "order_id", type = "string" },
  { name = "amount", type = "int64" },
]
"#;

const ORDERS_JOB: &str = "SELECT o.region, window_start, window_end, COUNT(*) AS orders, COUNT(p.amount) AS paid, SUM(p.amount) AS revenue
FROM TUMBLE(orders, event_time, INTERVAL '1' MINUTE) AS o
LEFT JOIN payments AS p ON o.order_id = p.order_id
  AND p.event_time BETWEEN o.event_time AND o.event_time + INTERVAL '1' HOUR
GROUP BY o.region, window_start, window_end
";

/// a1 is paid 30 min later, a2 exactly an hour later (the interval's edge), b1 an hour and
/// a second later (too late: unmatched), b2 never; c1's payment is before the order.
const ORDERS: &str = r#"{"event_time":"1970-01-01T00:00:10Z","order_id":"a1","region":"eu"}
{"event_time":"1970-01-01T00:00:20Z","order_id":"a2","region":"eu"}
{"event_time":"1970-01-01T00:00:30Z","order_id":"b1","region":"us"}
{"event_time":"1970-01-01T00:00:40Z","order_id":"b2","region":"us"}
{"event_time":"1970-01-01T00:00:50Z","order_id":"c1","region":"us"}
"#;

const PAYMENTS: &str = r#"{"event_time":"1970-01-01T00:00:49Z","order_id":"c1","amount":1}
{"event_time":"1970-01-01T00:30:10Z","order_id":"a1","amount":10}
{"event_time":"1970-01-01T01:00:20Z","order_id":"a2","amount":20}
{"event_time":"1970-01-01T01:00:31Z","order_id":"b1","amount":40}
"#;

#[test]
fn run_joins_orders_with_their_payments_within_an_hour_live_and_in_recompute() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("runnel.toml"), ORDERS_CONFIG).expect("write config");
    std::fs::write(dir.path().join("job.sql"), ORDERS_JOB).expect("write job");
    std::fs::write(dir.path().join("orders.jsonl"), ORDERS).expect("write orders");
    std::fs::write(dir.path().join("payments.jsonl"), PAYMENTS).expect("write payments");
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
                "orders.jsonl",
                "--input",
                "payments=payments.jsonl",
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
    for expected in [
        r#""region":"eu","window_start":"1970-01-01T00:00:00.000Z","window_end":"1970-01-01T00:01:00.000Z","orders":2,"paid":2,"revenue":30"#,
        r#""region":"us","window_start":"1970-01-01T00:00:00.000Z","window_end":"1970-01-01T00:01:00.000Z","orders":3,"paid":0"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert_eq!(live.len(), 2, "{text}");
}
