//! Hostile input, table-driven, through the whole platform: each case goes to `runnel all`'s
//! ingest port over HTTP, then through the live job, then a recompute over the history, then
//! serving. Nothing stops, nothing acknowledged is lost, and no earlier result changes.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::query::{RunnelAll, succeeds};
use crate::runnel;

/// A repartitioned job (it groups by page, the stream is keyed by user) with an expression
/// that fails on `duration_ms = 1`.
const CONFIG: &str = r#"
[serving]
view-poll-interval = "100ms"
[stream-processor]
checkpoint-interval = "200ms"
[[jobs]]
name = "scores"
sql = """
SELECT page, window_start, window_end, COUNT(*) AS views, SUM(100 / (duration_ms - 1)) AS score
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
GROUP BY page, window_start, window_end
"""
"#;

/// An HTTP/1.1 POST over loopback: the status code and the body.
fn post(url: &str, path: &str, body: &str) -> (u16, String) {
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect to ingest");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status: u16 = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn event(time: i64, user: &str, page: &str, duration_ms: i64) -> String {
    format!(
        r#"{{"event_time": {time}, "user_id": "{user}", "page": "{page}", "country": "de", "duration_ms": {duration_ms}}}"#
    )
}

/// One event per user at `time`, so that every source partition's watermark passes it.
fn advance_all(time: i64) -> String {
    (0..40)
        .map(|user| event(time, &format!("u{user}"), "/z", 2))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `scores` results of `page` as (window start, views, score, source), or none yet.
fn windows(dir: &Path, serving: &str, page: &str) -> Vec<(String, i64, i64, String)> {
    let answer = succeeds(
        dir,
        &[
            "--config",
            "runnel.toml",
            "query",
            "windows",
            "--job",
            "scores",
            "--key",
            page,
            "--url",
            serving,
            "--format",
            "jsonl",
        ],
    );
    answer
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            (
                row["window_start"].as_str().expect("start").to_string(),
                row["values"]["views"].as_i64().expect("views"),
                row["values"]["score"].as_i64().expect("score"),
                row["source"].as_str().expect("source").to_string(),
            )
        })
        .collect()
}

/// Waits up to 60 s until `page` has `n` final windows.
fn wait_for_windows(
    dir: &Path,
    serving: &str,
    page: &str,
    n: usize,
) -> Vec<(String, i64, i64, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = windows(dir, serving, page);
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{page}: {} of {n} windows in 60 s: {found:?}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Case {
    name: &'static str,
    path: &'static str,
    body: String,
    status: u16,
    /// What the answer's body must contain.
    answer: &'static str,
}

#[test]
fn hostile_events_and_requests_stop_nothing_and_change_no_earlier_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("runnel.toml"), CONFIG).expect("write config");
    let now = runnel_time::now_millis();
    let minute = |n: i64| (now / 60_000 - 30 + n) * 60_000;
    let events = "/v1/streams/clicks/events";

    let all = RunnelAll::start(dir.path());
    // The first minute: /a twice (100 / 10 + 100 / 50 = 12), then everyone past it.
    let first = [
        event(minute(0) + 1_000, "u1", "/a", 11),
        event(minute(0) + 2_000, "u2", "/a", 51),
        advance_all(minute(3)),
    ]
    .join("\n");
    let (status, body) = post(&all.ingest, events, &first);
    assert_eq!(status, 200, "{body}");
    let before = wait_for_windows(dir.path(), &all.serving, "/a", 1);
    assert_eq!(before[0].1, 2, "{before:?}");
    assert_eq!(before[0].2, 12, "{before:?}");

    let cases = [
        Case {
            name: "event time at i64::MIN",
            path: events,
            body: event(i64::MIN, "u1", "/a", 11),
            status: 200,
            answer: "event_time_too_far_behind",
        },
        Case {
            name: "event time at i64::MAX",
            path: events,
            body: event(i64::MAX, "u1", "/a", 11),
            status: 200,
            answer: "event_time_too_far_ahead",
        },
        Case {
            name: "year 0001",
            path: events,
            body: r#"{"event_time": "0001-01-01T00:00:00Z", "user_id": "u1", "page": "/a", "country": "de", "duration_ms": 11}"#
                .to_string(),
            status: 200,
            answer: "event_time_too_far_behind",
        },
        Case {
            name: "an event whose job expression divides by zero",
            path: events,
            body: event(minute(4) + 1_000, "u3", "/a", 1),
            status: 200,
            answer: r#""accepted":1"#,
        },
        Case {
            name: "a trailing slash",
            path: "/v1/streams/clicks/events/",
            body: event(minute(4) + 2_000, "u1", "/a", 11),
            status: 404,
            answer: "not_found",
        },
        Case {
            name: "a mistyped path",
            path: "/v1/stream/clicks/events",
            body: event(minute(4) + 2_000, "u1", "/a", 11),
            status: 404,
            answer: "not_found",
        },
    ];
    for case in &cases {
        let (status, body) = post(&all.ingest, case.path, &case.body);
        assert_eq!(status, case.status, "{}: {body}", case.name);
        assert!(body.contains(case.answer), "{}: {body}", case.name);
    }

    // The platform goes on: the next minute counts its good events, not the poison one.
    let second = [
        event(minute(4) + 3_000, "u1", "/a", 21),
        advance_all(minute(7)),
    ]
    .join("\n");
    let (status, body) = post(&all.ingest, events, &second);
    assert_eq!(status, 200, "{body}");
    let live = wait_for_windows(dir.path(), &all.serving, "/a", 2);
    assert_eq!(live[0], before[0], "the first minute's result changed");
    assert_eq!((live[1].1, live[1].2), (1, 5), "{live:?}");
    let jobs = succeeds(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "query",
            "jobs",
            "--url",
            &all.serving,
        ],
    );
    assert!(!jobs.contains("FAILED"), "{jobs}");
    drop(all);

    // The history holds every acknowledged event, the poison one too; a recompute over it
    // goes past that event as live did, and serving answers the same from the batch view.
    let archived = runnel(
        dir.path(),
        &["--config", "runnel.toml", "archive", "--once"],
    );
    assert!(
        archived.status.success(),
        "{}",
        String::from_utf8_lossy(&archived.stderr)
    );
    let recompute = runnel(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "backfill",
            "--job",
            "scores",
            "--mode",
            "recompute",
        ],
    );
    assert!(
        recompute.status.success(),
        "recompute: {}{}",
        String::from_utf8_lossy(&recompute.stdout),
        String::from_utf8_lossy(&recompute.stderr)
    );
    let all = RunnelAll::start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    let served = loop {
        let served = windows(dir.path(), &all.serving, "/a");
        if served.len() == 2 && served.iter().all(|window| window.3 == "batch") {
            break served;
        }
        assert!(
            Instant::now() < deadline,
            "no batch view for /a in 60 s: {served:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let values = |windows: &[(String, i64, i64, String)]| -> Vec<(String, i64, i64)> {
        windows
            .iter()
            .map(|(start, views, score, _)| (start.clone(), *views, *score))
            .collect()
    };
    assert_eq!(values(&served), values(&live));
}

/// A job that asks for unbounded work is refused where it is declared: in `runnel run`
/// with the interval's position, and in config with the key.
#[test]
fn jobs_over_the_limits_are_refused_in_run_and_in_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    crate::write_inputs(dir.path());
    std::fs::write(
        dir.path().join("hop.sql"),
        "SELECT page, window_start, window_end, COUNT(*) AS views\n\
         FROM HOP(clicks, event_time, INTERVAL '1' MILLISECOND, INTERVAL '365' DAY)\n\
         GROUP BY page, window_start, window_end",
    )
    .expect("write job");
    let run = runnel(
        dir.path(),
        &[
            "run",
            "--sql",
            "hop.sql",
            "--input",
            "events.jsonl",
            "--out",
            "r.jsonl",
        ],
    );
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("line 2, column 65")
            && stderr.contains("31536000000 windows")
            && stderr.contains("limits.max-windows-per-event"),
        "{stderr}"
    );
    assert!(
        std::fs::metadata(dir.path().join("r.jsonl")).map_or(true, |file| file.len() == 0),
        "no output for a refused job"
    );

    std::fs::write(
        dir.path().join("late.toml"),
        "[[jobs]]\nname = \"views\"\nsql = \"SELECT 1\"\nallowed-lateness = \"1000d\"\n",
    )
    .expect("write config");
    let config = runnel(dir.path(), &["--config", "late.toml", "config"]);
    assert!(!config.status.success());
    let stderr = String::from_utf8_lossy(&config.stderr);
    assert!(
        stderr.contains("jobs[0].allowed-lateness")
            && stderr.contains("limits.max-window-interval"),
        "{stderr}"
    );
}

/// In `runnel all`, a service that keeps failing (here serving, whose port is taken) is
/// restarted and never stops the others: ingest goes on acknowledging events.
#[test]
fn a_failing_service_never_stops_ingest_in_runnel_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let taken_address = taken.local_addr().expect("address").to_string();
    let (mut process, urls) = crate::start_listening(
        dir.path(),
        &["all"],
        &[("RUNNEL__SERVING__LISTEN", taken_address.as_str())],
        &["ingest"],
    );
    let now = runnel_time::now_millis();
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        assert!(
            process.0.try_wait().expect("process state").is_none(),
            "runnel all stopped when serving failed (round {round})"
        );
        let (status, body) = post(
            &urls["ingest"],
            "/v1/streams/clicks/events",
            &event(now + round, "u1", "/a", 11),
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""accepted":1"#), "{body}");
    }
    drop(taken);
}
