//! The four services as separate OS processes (`runnel ingest-service`, `stream-processor`,
//! `batch-reprocessor`, `serving`) on loopback, once over the embedded log (one folder the
//! processes share: each partition written by one of them, followed by the others) and
//! once over Kafka (the Apache Kafka broker that `scripts/test.sh` starts): events in over
//! HTTP and gRPC, results out through serving; every service SIGKILLed and restarted in turn
//! with no acknowledged event lost and no final result changed; a new job version, declared
//! only in the backfill's config, replayed by `runnel backfill` and switched to atomically,
//! the running serving and stream-processor following it through the job catalog with no
//! restart; bearer tokens required on both ports.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use runnel_e2e_tests::runnel_binary;
use runnel_proto::common::v1::value::Kind;
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use runnel_proto::serving::v1::serving_client::ServingClient;
use runnel_proto::serving::v1::{self as proto};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

mod compose;

const TOKEN: &str = "e2e-s3cret";
const USERS: u64 = 20;
const EVENTS_PER_USER_AND_WINDOW: u64 = 3;
const WINDOW_MS: i64 = 10_000;
/// 2026-01-01T00:00:00Z.
const BASE_MS: i64 = 1_767_225_600_000;

/// The broker's address from `KAFKA_BOOTSTRAP`; `None` (the test is skipped) when unset,
/// unless `RUNNEL_REQUIRE_KAFKA=1`.
fn kafka_bootstrap() -> Option<String> {
    runnel_testkit::gate::kafka_bootstrap("a Kafka test")
}

/// A service process, SIGKILLed when dropped; its log goes to `<dir>/<name>.<n>.log`.
struct Process {
    child: Child,
    address: Option<String>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Platform {
    dir: PathBuf,
    binary: PathBuf,
    starts: u32,
}

impl Platform {
    /// Starts `runnel --config <config> <args>`; with `listening`, waits for the log line
    /// starting with it and returns the address it names.
    fn start(&mut self, config: &str, args: &[&str], listening: Option<&str>) -> Process {
        self.starts += 1;
        let log_path = self.dir.join(format!("{}.{}.log", args[0], self.starts));
        let mut child = Command::new(&self.binary)
            .arg("--config")
            .arg(self.dir.join(config))
            .args(args)
            .arg("--log-json")
            .current_dir(&self.dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start runnel");
        let stderr = child.stderr.take().expect("stderr");
        let log = std::fs::File::create(log_path)
            .ok()
            .map(|file| Box::new(file) as Box<dyn std::io::Write + Send>);
        let address_rx =
            runnel_testkit::process::logged_addresses(stderr, listening.as_slice(), log);
        let address = listening.map(|wanted| {
            let (_, address) = address_rx
                .recv_timeout(Duration::from_secs(90))
                .unwrap_or_else(|_| panic!("`runnel {}` never logged `{wanted}`", args[0]));
            format!("http://{address}")
        });
        Process { child, address }
    }
}

fn event(window: u64, user: u64, i: u64) -> String {
    let time = BASE_MS + window as i64 * WINDOW_MS + i as i64 * 2_000 + user as i64 * 10;
    format!(
        r#"{{"event_time":{time},"user_id":"u{user:02}","page":"/p","country":"de","duration_ms":{}}}"#,
        user * 10 + window + i
    )
}

fn expected_total(window: u64, user: u64) -> i64 {
    (0..EVENTS_PER_USER_AND_WINDOW)
        .map(|i| (user * 10 + window + i) as i64)
        .sum()
}

/// POSTs NDJSON events to the ingest service's HTTP route; returns the status code.
async fn post_http(address: &str, stream: &str, lines: &[String], token: Option<&str>) -> u16 {
    let host = address.trim_start_matches("http://");
    let body = lines.join("\n");
    let mut head = format!(
        "POST /v1/streams/{stream}/events HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    let mut socket = tokio::net::TcpStream::connect(host).await.expect("connect");
    socket.write_all(head.as_bytes()).await.expect("write");
    socket.write_all(body.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"))
}

fn authorized<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    request
}

/// Sends window `window`'s events: half over HTTP, half over gRPC, each acknowledged.
async fn send_window(ingest: &str, stream: &str, window: u64) {
    let mut lines = Vec::new();
    for i in 0..EVENTS_PER_USER_AND_WINDOW {
        for user in 0..USERS {
            lines.push(event(window, user, i));
        }
    }
    send_half_and_half(ingest, stream, &lines, TOKEN).await;
}

/// Sends `lines`: the first half over HTTP, the rest over gRPC, each half acknowledged whole.
async fn send_half_and_half(ingest: &str, stream: &str, lines: &[String], token: &str) {
    let (http, grpc) = lines.split_at(lines.len() / 2);
    assert_eq!(
        post_http(ingest, stream, http, Some(token)).await,
        200,
        "HTTP ingest"
    );
    let mut client = IngestClient::connect(ingest.to_string())
        .await
        .expect("connect to ingest");
    let response = client
        .ingest(authorized(
            IngestRequest {
                stream: stream.to_string(),
                all_or_nothing: true,
                events: Some(Events::Json(JsonEvents {
                    events: grpc.iter().cloned().map(Bytes::from).collect(),
                })),
            },
            Some(token),
        ))
        .await
        .expect("ingest over gRPC")
        .into_inner();
    assert_eq!(response.accepted, grpc.len() as u64, "gRPC ingest");
}

/// (key, window start) -> (result version, n, total, job version) of every exported result.
type Results = BTreeMap<(String, i64), (u32, i64, i64, u32)>;

async fn export(serving: &str, job: &str) -> Result<Results, tonic::Status> {
    let channel = Channel::from_shared(serving.to_string())
        .expect("address")
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut client = ServingClient::new(channel);
    let mut rows = client
        .export_results(authorized(
            proto::ExportResultsRequest {
                job: job.to_string(),
                version: 0,
            },
            Some(TOKEN),
        ))
        .await?
        .into_inner();
    let int = |value: Option<&runnel_proto::common::v1::Value>| match value
        .and_then(|value| value.kind.as_ref())
    {
        Some(Kind::Int64Value(number)) => *number,
        _ => -1,
    };
    let mut results = Results::new();
    while let Some(row) = rows.next().await {
        let row = row?;
        if !row.r#final {
            continue;
        }
        results.insert(
            (row.key.clone(), row.window_start_ms),
            (
                row.version,
                int(row.values.get(3)),
                int(row.values.get(4)),
                row.job_version,
            ),
        );
    }
    Ok(results)
}

/// What serving must answer once windows `0..windows` are final, for job version `version`.
fn expected(windows: u64, version: u32) -> BTreeMap<(String, i64), (i64, i64, u32)> {
    let mut expected = BTreeMap::new();
    for window in 0..windows {
        for user in 0..USERS {
            expected.insert(
                (
                    format!(r#"["u{user:02}"]"#),
                    BASE_MS + window as i64 * WINDOW_MS,
                ),
                (
                    EVENTS_PER_USER_AND_WINDOW as i64,
                    expected_total(window, user) * i64::from(version),
                    version,
                ),
            );
        }
    }
    expected
}

/// Waits until serving's final results of windows `0..windows` are as expected (90 s).
async fn wait_for_results(
    serving: &str,
    job: &str,
    windows: u64,
    version: u32,
    what: &str,
) -> Results {
    let want = expected(windows, version);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seen = export(serving, job).await;
        if let Ok(results) = &seen {
            let got: BTreeMap<(String, i64), (i64, i64, u32)> = results
                .iter()
                .filter(|((_, start), _)| *start < BASE_MS + windows as i64 * WINDOW_MS)
                .map(|(key, (_, n, total, job_version))| (key.clone(), (*n, *total, *job_version)))
                .collect();
            if got == want {
                return results.clone();
            }
            let differing = want
                .iter()
                .find(|(key, value)| got.get(*key) != Some(*value))
                .map(|(key, value)| (key, value, got.get(key)));
            assert!(
                Instant::now() < deadline,
                "{what}: serving never answered the expected results; {} of {} windows; \
                 first difference (key, expected (n, total, job version), got): {differing:?}",
                got.len(),
                want.len(),
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "{what}: serving never answered: {seen:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_as_processes_on_the_embedded_log_survive_kills_and_switch_versions() {
    // The processes share `<data-dir>/log`; a SIGKILLed stream-processor's group lock and
    // partition locks go with it, so its successor starts at once.
    four_services_survive_kills_and_switch_versions(
        "[storage.log]\nbackend = \"embedded\"\n",
        Duration::ZERO,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_services_as_processes_on_kafka_survive_kills_and_switch_versions() {
    let Some(bootstrap) = kafka_bootstrap() else {
        return;
    };
    // The stream-processor is a static member of its jobs' groups: restarted after its
    // SIGKILL under the same id, it gets its partitions back at once (the replay joins as a
    // dynamic member whatever the config says).
    four_services_survive_kills_and_switch_versions(
        &format!(
            "[storage.log]\nbackend = \"kafka\"\n[storage.log.kafka]\n\
             bootstrap-servers = \"{bootstrap}\"\nsession-timeout = \"6s\"\n\
             rebalance-timeout = \"15s\"\ngroup-instance-id = \"stream-processor-0\"\n"
        ),
        Duration::ZERO,
    )
    .await;
}

/// The scenario, with the `[storage.log]` tables of `log_config`; the stream-processor's
/// successor starts `restart_wait` after it was killed.
async fn four_services_survive_kills_and_switch_versions(log_config: &str, restart_wait: Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let suffix = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis()
    );
    let stream = format!("e2e_clicks_{suffix}");
    let job = format!("e2e_views_{suffix}");
    let sql = |total: &str| {
        format!(
            "SELECT user_id, window_start, window_end, COUNT(*) AS n, {total} AS total\n\
             FROM TUMBLE({stream}, event_time, INTERVAL '10' SECOND)\n\
             GROUP BY user_id, window_start, window_end"
        )
    };
    let clicks_stream = runnel_testkit::streams::Stream::clicks(
        2,
        Some("user_id"),
        &["event_time", "user_id", "page", "country", "duration_ms"],
    )
    .named(&stream)
    .toml();
    let base = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
object-store-url = "file://{objects}"
{log_config}
[ingest]
listen = "127.0.0.1:0"
auth-token = "{TOKEN}"
[archive]
max-file-age = "2s"
poll-interval = "500ms"
[stream-processor]
metrics-listen = "127.0.0.1:0"
checkpoint-interval = "500ms"
job-poll-interval = "200ms"
[serving]
listen = "127.0.0.1:0"
metrics-listen = "127.0.0.1:0"
auth-token = "{TOKEN}"
view-poll-interval = "200ms"
{clicks_stream}[[jobs]]
name = "{job}"
sql = """
{v1}
"""
max-out-of-orderness = "1s"
"#,
        data = dir.path().join("data").display(),
        objects = dir.path().join("objects").display(),
        v1 = sql("SUM(duration_ms)"),
    );
    let with_v2 = format!(
        "{base}\n[[jobs]]\nname = \"{job}\"\nversion = 2\nsql = \"\"\"\n{}\n\"\"\"\nmax-out-of-orderness = \"1s\"\n",
        sql("2 * SUM(duration_ms)")
    );
    // Only the backfill's config declares version 2: the services learn it from the job
    // catalog, where the backfill registers it.
    std::fs::write(dir.path().join("v1.toml"), &base).expect("write config");
    std::fs::write(dir.path().join("v2.toml"), &with_v2).expect("write config");
    let mut platform = Platform {
        dir: dir.path().to_path_buf(),
        binary: runnel_binary(),
        starts: 0,
    };

    let mut ingest = platform.start("v1.toml", &["ingest-service"], Some("ingest listening"));
    let mut processor = platform.start("v1.toml", &["stream-processor"], None);
    let mut batch = platform.start("v1.toml", &["batch-reprocessor"], None);
    let mut serving = platform.start("v1.toml", &["serving"], Some("serving listening"));
    let ingest_url = ingest.address.clone().expect("ingest address");
    let serving_url = serving.address.clone().expect("serving address");

    // Without the token: 401, UNAUTHENTICATED, and nothing leaks.
    assert_eq!(
        post_http(&ingest_url, &stream, &[event(0, 0, 0)], None).await,
        401
    );
    assert_eq!(
        post_http(&ingest_url, &stream, &[event(0, 0, 0)], Some("wrong")).await,
        401
    );
    let refused = IngestClient::connect(ingest_url.clone())
        .await
        .expect("connect")
        .ingest(IngestRequest {
            stream: stream.clone(),
            all_or_nothing: false,
            events: Some(Events::Json(JsonEvents {
                events: vec![Bytes::from(event(0, 0, 0))],
            })),
        })
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let refused = ServingClient::new(
        Channel::from_shared(serving_url.clone())
            .expect("address")
            .connect()
            .await
            .expect("connect"),
    )
    .list_jobs(proto::ListJobsRequest {})
    .await
    .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(!refused.message().contains(&job));

    // Windows 0-2 in; 0 and 1 are final once window 2's events pass their ends.
    for window in 0..3 {
        send_window(&ingest_url, &stream, window).await;
    }
    let before_kills = wait_for_results(&serving_url, &job, 2, 1, "before the kills").await;

    // Each service SIGKILLed and restarted in turn, one more window after each.
    drop(ingest);
    ingest = platform.start("v1.toml", &["ingest-service"], Some("ingest listening"));
    let ingest_url = ingest.address.clone().expect("ingest address");
    send_window(&ingest_url, &stream, 3).await;
    drop(processor);
    tokio::time::sleep(restart_wait).await;
    processor = platform.start("v1.toml", &["stream-processor"], None);
    send_window(&ingest_url, &stream, 4).await;
    drop(serving);
    serving = platform.start("v1.toml", &["serving"], Some("serving listening"));
    let serving_url = serving.address.clone().expect("serving address");
    send_window(&ingest_url, &stream, 5).await;
    drop(batch);
    batch = platform.start("v1.toml", &["batch-reprocessor"], None);
    for window in 6..8 {
        send_window(&ingest_url, &stream, window).await;
    }
    // Every acknowledged event counted: windows 0-6 are final with all their events.
    let after_kills = wait_for_results(&serving_url, &job, 7, 1, "after the kills").await;
    for (key, result) in &before_kills {
        assert_eq!(
            after_kills.get(key),
            Some(result),
            "a final result changed across the kills: {key:?}"
        );
    }

    // Version 2, declared only in the backfill's config, replayed by a backfill process over
    // the history and the log; once caught up it is the active version, and serving (which
    // was never restarted with a config naming it) answers from it.
    let backfill = Command::new(&platform.binary)
        .arg("--config")
        .arg(dir.path().join("v2.toml"))
        .args([
            "backfill",
            "--job",
            &job,
            "--version",
            "2",
            "--mode",
            "replay",
            "--stop-when-caught-up",
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the backfill");
    assert!(
        backfill.status.success(),
        "backfill: {}{}",
        String::from_utf8_lossy(&backfill.stdout),
        String::from_utf8_lossy(&backfill.stderr)
    );
    wait_for_results(&serving_url, &job, 7, 2, "after the switch to version 2").await;
    // The running stream-processor follows the switch: it runs version 2 live from the
    // replay's checkpoints, so windows sent after the backfill stopped are counted by it.
    for window in 8..10 {
        send_window(&ingest_url, &stream, window).await;
    }
    wait_for_results(
        &serving_url,
        &job,
        9,
        2,
        "version 2 run live by the stream-processor after the switch",
    )
    .await;

    drop(batch);
    drop(processor);
    drop(serving);
    drop(ingest);
}

/// The Kafka libraries' folder (`RUNNEL_KAFKA_LIBS`, which `scripts/test.sh` exports);
/// `None` (the test is skipped) when unset, unless `RUNNEL_REQUIRE_KAFKA=1`.
fn kafka_libs() -> Option<PathBuf> {
    runnel_testkit::gate::kafka_libs("an interop test with Kafka's console tools")
}

/// Interop, as a Kafka user would do it with tools runnel did not write: Kafka's own console
/// producer writes JSON events, keyed by the stream's key and with RFC 3339 event times,
/// straight into the stream's topic (no ingest service), and the job's results appear in
/// serving; with exactly-once on, Kafka's console consumer (`--isolation-level
/// read_committed`) reads the transactional results topic, each result version once. (That
/// crashes leave no duplicate for such a reader is the SIGKILL test of
/// `services/runnel/tests/cli/stream.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafkas_console_tools_write_events_and_read_each_result_once() {
    let Some(bootstrap) = kafka_bootstrap() else {
        return;
    };
    let Some(libs) = kafka_libs() else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let suffix = format!(
        "{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis()
    );
    let stream = format!("interop_clicks_{suffix}");
    let job = format!("interop_views_{suffix}");
    let clicks_stream = runnel_testkit::streams::Stream::clicks(
        2,
        Some("user_id"),
        &["event_time", "user_id", "page", "country", "duration_ms"],
    )
    .named(&stream)
    .toml();
    let config = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
object-store-url = "file://{objects}"
[storage.log]
backend = "kafka"
[storage.log.kafka]
bootstrap-servers = "{bootstrap}"
[stream-processor]
metrics-listen = "127.0.0.1:0"
checkpoint-interval = "300ms"
exactly-once = true
[serving]
listen = "127.0.0.1:0"
metrics-listen = "127.0.0.1:0"
auth-token = "{TOKEN}"
view-poll-interval = "200ms"
{clicks_stream}[[jobs]]
name = "{job}"
sql = """
SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(duration_ms) AS total
FROM TUMBLE({stream}, event_time, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end
"""
max-out-of-orderness = "1s"
"#,
        data = dir.path().join("data").display(),
        objects = dir.path().join("objects").display(),
    );
    std::fs::write(dir.path().join("interop.toml"), &config).expect("write config");
    let mut platform = Platform {
        dir: dir.path().to_path_buf(),
        binary: runnel_binary(),
        starts: 0,
    };
    // The services create the stream's topic (the broker creates none by itself).
    let serving = platform.start("interop.toml", &["serving"], Some("serving listening"));
    let processor = platform.start("interop.toml", &["stream-processor"], None);
    let serving_url = serving.address.clone().expect("serving address");

    console_produce(&libs, &bootstrap, &stream, 0..3);
    // Windows 0 and 1 are final once window 2's events pass their ends.
    wait_for_results(&serving_url, &job, 2, 1, "events from the console producer").await;
    // More windows, through a restarted stream-processor (SIGKILL, then a new process).
    drop(processor);
    let processor = platform.start("interop.toml", &["stream-processor"], None);
    console_produce(&libs, &bootstrap, &stream, 3..6);
    wait_for_results(&serving_url, &job, 5, 1, "after the restart").await;

    // Kafka's own console consumer, read_committed, reads the transactional results topic
    // (exactly-once is on): each result version once, in order, past the transaction markers.
    let consumed = Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .args([
            "org.apache.kafka.tools.consumer.ConsoleConsumer",
            "--bootstrap-server",
            &bootstrap,
            "--topic",
            &format!("{job}.results"),
            "--from-beginning",
            "--isolation-level",
            "read_committed",
            "--timeout-ms",
            "5000",
            "--property",
            "print.key=true",
            "--property",
            "key.separator=|",
        ])
        .output()
        .expect("run Kafka's console consumer (java)");
    let mut versions: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&consumed.stdout).lines() {
        let Some((key, value)) = line.split_once('|') else {
            continue;
        };
        let row: serde_json::Value = serde_json::from_str(value).expect("a JSON result");
        versions
            .entry(key.to_string())
            .or_default()
            .push(row["_version"].as_u64().expect("_version"));
    }
    let windows = versions.len();
    assert!(
        windows >= 5 * USERS as usize,
        "the console consumer read {windows} windows: {}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    for (key, read) in &versions {
        let once: Vec<u64> = (1..=read.len() as u64).collect();
        assert_eq!(
            read, &once,
            "versions of {key} as Kafka's console consumer read them"
        );
    }
    drop(processor);
    drop(serving);
}

/// Writes windows `windows` of the test's events into `topic` with Kafka's own console
/// producer: `<key>|<JSON value>` lines, as `kafka-console-producer --property parse.key=true`
/// reads them, with event times in RFC 3339 (not the epoch milliseconds runnel's ingest
/// writes).
fn console_produce(libs: &Path, bootstrap: &str, topic: &str, windows: std::ops::Range<u64>) {
    let mut lines = String::new();
    for window in windows {
        for i in 0..EVENTS_PER_USER_AND_WINDOW {
            for user in 0..USERS {
                let mut value: serde_json::Value =
                    serde_json::from_str(&event(window, user, i)).expect("event JSON");
                let millis = value["event_time"].as_i64().expect("epoch ms");
                value["event_time"] = serde_json::Value::String(runnel_time::format_millis(millis));
                lines.push_str(&format!("u{user:02}|{value}\n"));
            }
        }
    }
    let mut producer = Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .args([
            "org.apache.kafka.tools.ConsoleProducer",
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--property",
            "parse.key=true",
            "--property",
            "key.separator=|",
            "--producer-property",
            "acks=all",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start Kafka's console producer (java)");
    producer
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.as_bytes())
        .expect("write the events");
    let produced = producer.wait_with_output().expect("the console producer");
    assert!(
        produced.status.success(),
        "the console producer failed: {}",
        String::from_utf8_lossy(&produced.stderr)
    );
}
