//! `runnel run` with a job that joins its stream with a table, or with a second stream
//! within an interval, or that joins two windowed aggregates on their windows: two inputs,
//! live and recompute alike.

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

/// Nexmark q8's form: two windowed aggregates, each over its own stream, joined on their
/// windows and the order id.
const WINDOW_JOIN_JOB: &str = "SELECT o.order_id, o.window_start, o.orders, p.amount
FROM (SELECT order_id, window_start, window_end, COUNT(*) AS orders
      FROM TUMBLE(orders, event_time, INTERVAL '1' MINUTE)
      GROUP BY order_id, window_start, window_end) AS o
LEFT JOIN (SELECT order_id, window_start, window_end, SUM(amount) AS amount
           FROM TUMBLE(payments, event_time, INTERVAL '1' MINUTE)
           GROUP BY order_id, window_start, window_end) AS p
ON o.order_id = p.order_id AND o.window_start = p.window_start
";

/// a1 is ordered in the first two minutes and paid in both (at the first minute's last
/// millisecond, and at the second's first); a2 is paid only in a minute it has no order.
/// The payment at 00:00:30 comes after one at 00:01:00.
const WINDOW_ORDERS: &str = r#"{"event_time":"1970-01-01T00:00:10Z","order_id":"a1","region":"eu"}
{"event_time":"1970-01-01T00:00:20Z","order_id":"a2","region":"eu"}
{"event_time":"1970-01-01T00:01:10Z","order_id":"a1","region":"eu"}
"#;

const WINDOW_PAYMENTS: &str = r#"{"event_time":"1970-01-01T00:00:59.999Z","order_id":"a1","amount":1}
{"event_time":"1970-01-01T00:01:00Z","order_id":"a1","amount":2}
{"event_time":"1970-01-01T00:00:30Z","order_id":"a1","amount":8}
{"event_time":"1970-01-01T00:02:00Z","order_id":"a2","amount":4}
"#;

#[test]
fn run_joins_two_windowed_aggregates_on_their_windows_live_and_in_recompute() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("runnel.toml"), ORDERS_CONFIG).expect("write config");
    std::fs::write(dir.path().join("job.sql"), WINDOW_JOIN_JOB).expect("write job");
    std::fs::write(dir.path().join("orders.jsonl"), WINDOW_ORDERS).expect("write orders");
    std::fs::write(dir.path().join("payments.jsonl"), WINDOW_PAYMENTS).expect("write payments");
    let run = |mode: &str, out: &str, out_of_orderness: &str| {
        let run = runnel(
            dir.path(),
            &[
                "--config",
                "runnel.toml",
                "run",
                "--sql",
                "job.sql",
                "--input",
                "orders=orders.jsonl",
                "--input",
                "payments=payments.jsonl",
                "--mode",
                mode,
                "--max-out-of-orderness",
                out_of_orderness,
                "--out",
                out,
            ],
        );
        assert!(
            run.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        String::from_utf8_lossy(&run.stdout).into_owned()
    };
    run("recompute", "recompute.jsonl", "0s");
    // With a minute of out-of-orderness nothing is late: live equals recompute.
    let summary = run("live", "live.jsonl", "1m");
    assert!(summary.contains("0 late to"), "{summary}");
    let live = sorted_lines(&dir.path().join("live.jsonl"));
    assert_eq!(
        live,
        sorted_lines(&dir.path().join("recompute.jsonl")),
        "live and recompute disagree"
    );
    let text = live.join("\n");
    for expected in [
        r#"{"order_id":"a1","window_start":"1970-01-01T00:00:00.000Z","orders":1,"amount":9,"_key":"[\"a1\",\"a1\"]","_window_start":"1970-01-01T00:00:00.000Z","_version":1,"_final":true}"#,
        r#"{"order_id":"a1","window_start":"1970-01-01T00:01:00.000Z","orders":1,"amount":2,"#,
        r#"{"order_id":"a2","window_start":"1970-01-01T00:00:00.000Z","orders":1,"_key":"[\"a2\",null]","#,
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    assert_eq!(live.len(), 3, "{text}");
    // Without it the payment at 00:00:30 is late, reported beside the results under its
    // stream's name, and a1's first minute has only the payment in time.
    let summary = run("live", "strict.jsonl", "0s");
    assert!(summary.contains("1 late to"), "{summary}");
    let late = sorted_lines(&dir.path().join("strict.late.payments.jsonl"));
    assert_eq!(late.len(), 1, "{late:?}");
    assert!(late[0].contains(r#""amount":8"#), "{late:?}");
    assert!(sorted_lines(&dir.path().join("strict.late.orders.jsonl")).is_empty());
    let strict = sorted_lines(&dir.path().join("strict.jsonl")).join("\n");
    assert!(
        strict.contains(r#""window_start":"1970-01-01T00:00:00.000Z","orders":1,"amount":1,"#),
        "{strict}"
    );
}
