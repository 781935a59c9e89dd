//! The compose cluster (infra/compose) driven through faults, only through its published
//! ports and `docker` commands: events in over HTTP and gRPC while a stream-processor is
//! SIGKILLed, the broker leading most of the stream's partitions is stopped and started, a
//! stream-processor is cut off the network for longer than its session timeout, ingest and
//! serving are restarted, and every service is restarted in turn. After each fault serving is
//! ready again (the time is printed), every final result it serves equals
//! `runnel run --mode recompute` over the events acknowledged so far, and no final result seen
//! before has changed. At the end the final results equal the recompute of every acknowledged
//! event: nothing acknowledged was lost, nothing counted twice. Then a replay backfill of a
//! new version and a recompute backfill, each a one-off container, after which serving answers
//! the new version, from its batch view too. Last, bad deployment input: a missing token, a
//! token that cannot be one, a bucket that does not exist and a broker that cannot be reached
//! each give a clear error in the container's log (and a service that waits is not ready);
//! a client with a wrong token is refused, and ingest's log says so.
//!
//! Needs the images (`infra/docker/build-images.sh`) and a Docker engine; runs when
//! `RUNNEL_COMPOSE=1` (scripts/test.sh sets it when it has built the images), skipped
//! otherwise. Its cluster is a compose project of its own (`runnel-test-<pid>`) on free host
//! ports, removed with its volumes at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use runnel_e2e_tests::runnel_binary;
use runnel_proto::common::v1::value::Kind;
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use runnel_proto::serving::v1::serving_client::ServingClient;
use runnel_proto::serving::v1::{self as proto};
use tonic::transport::Channel;

use super::{authorized, post_http, send_half_and_half};

const INGEST_TOKEN: &str = "compose-ingest-s3cret";
const SERVING_TOKEN: &str = "compose-serving-s3cret";
const USERS: u64 = 40;
const EVENTS_PER_USER_AND_MINUTE: u64 = 3;
const PAGES: u64 = 5;
const MINUTE_MS: i64 = 60_000;
/// 2026-01-01T00:00:00Z.
const BASE_MS: i64 = 1_767_225_600_000;
/// Minutes of events, one batch each.
const MINUTES: u64 = 12;
/// How long a fault's recovery, or the final results, may take.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The compose project under test; `down -v` when dropped.
struct Cluster {
    project: String,
    dir: tempfile::TempDir,
    compose_file: PathBuf,
    /// The variables every compose command gets: the env file, the host ports.
    env: Vec<(&'static str, String)>,
    ingest: String,
    serving: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var("RUNNEL_COMPOSE_KEEP").as_deref() == Ok("1") {
            eprintln!("keeping compose project {}", self.project);
            return;
        }
        let _ = self
            .compose()
            .args(["down", "-v", "--timeout", "5"])
            .status();
    }
}

/// The cluster's env file: its tokens and keys.
fn env_file_text() -> String {
    format!(
        "RUNNEL__INGEST__AUTH_TOKEN={INGEST_TOKEN}\nRUNNEL__SERVING__AUTH_TOKEN={SERVING_TOKEN}\n\
         MINIO_ROOT_USER=runnel\nMINIO_ROOT_PASSWORD=compose-minio-s3cret\n\
         AWS_ACCESS_KEY_ID=runnel\nAWS_SECRET_ACCESS_KEY=compose-minio-s3cret\n\
         RUNNEL__ARCHIVE__MAX_FILE_AGE=5s\n"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Runs `command`; panics with its output unless it succeeds; returns its stdout.
fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn docker(args: &[&str]) -> String {
    run(Command::new("docker").args(args))
}

/// What `container` wrote, to stdout and stderr.
fn container_logs(container: &str) -> String {
    Command::new("docker")
        .args(["logs", container])
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr)
        })
        .unwrap_or_default()
}

impl Cluster {
    fn up() -> Option<Cluster> {
        if std::env::var("RUNNEL_COMPOSE").as_deref() != Ok("1") {
            eprintln!(
                "skipped: RUNNEL_COMPOSE is not 1 (scripts/test.sh sets it once the images are built)"
            );
            return None;
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = tempfile::tempdir().expect("temp dir");
        let env_file = dir.path().join("runnel.env");
        std::fs::write(&env_file, env_file_text()).expect("write env file");
        let (ingest_port, serving_port) = (free_port(), free_port());
        let cluster = Cluster {
            project: format!("runnel-test-{}", std::process::id()),
            compose_file: repo.join("infra/compose/docker-compose.yml"),
            env: vec![
                ("RUNNEL_ENV_FILE", env_file.display().to_string()),
                ("RUNNEL_INGEST_PORT", ingest_port.to_string()),
                ("RUNNEL_SERVING_PORT", serving_port.to_string()),
                ("RUNNEL_PROMETHEUS_PORT", free_port().to_string()),
                ("RUNNEL_MINIO_PORT", free_port().to_string()),
            ],
            ingest: format!("http://127.0.0.1:{ingest_port}"),
            serving: format!("http://127.0.0.1:{serving_port}"),
            dir,
        };
        let started = Instant::now();
        run(cluster.compose().args(["up", "-d"]));
        cluster.wait_ready("the cluster's start", started);
        Some(cluster)
    }

    /// docker-compose (Debian's 1.29) or `docker compose`, on this project.
    fn compose(&self) -> Command {
        let mut command = if Command::new("docker-compose")
            .arg("version")
            .output()
            .is_ok()
        {
            Command::new("docker-compose")
        } else {
            let mut command = Command::new("docker");
            command.arg("compose");
            command
        };
        command
            .args(["-p", &self.project, "-f"])
            .arg(&self.compose_file)
            .envs(self.env.iter().map(|(name, value)| (name, value)));
        command
    }

    /// The container of `service`.
    fn container(&self, service: &str) -> String {
        let id = run(self.compose().args(["ps", "-q", service]));
        let id = id.trim();
        assert!(!id.is_empty(), "no container for {service}");
        id.to_string()
    }

    /// Waits until ingest and serving say they are ready and serving answers an export;
    /// prints and returns the time since `since`.
    fn wait_ready(&self, what: &str, since: Instant) -> Duration {
        let deadline = Instant::now() + READY_TIMEOUT;
        for (service, url, token) in [
            ("ingest", &self.ingest, INGEST_TOKEN),
            ("serving", &self.serving, SERVING_TOKEN),
        ] {
            loop {
                let health = Command::new(runnel_binary())
                    .args(["health", service, "--url", url, "--token", token])
                    .env("RUST_BACKTRACE", "0")
                    .output()
                    .expect("run runnel health");
                if health.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: {service} not ready within {READY_TIMEOUT:?}: {}\n{}",
                    String::from_utf8_lossy(&health.stderr),
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        let ready = since.elapsed();
        eprintln!(
            "FAULT {what}: serving ready again after {:.1} s",
            ready.as_secs_f64()
        );
        ready
    }

    /// Waits until `container`'s health check passes.
    fn wait_healthy(&self, container: &str, what: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let health = docker(&["inspect", "--format", "{{.State.Health.Status}}", container]);
            if health.trim() == "healthy" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not healthy within {READY_TIMEOUT:?} ({})\n{}",
                health.trim(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs a one-off container of `service` (`compose run --rm --no-deps` with `options`,
    /// then `command`, empty for the service's own), with `env_file` (text) in place of the
    /// cluster's env file; whether it succeeded, and its output.
    fn one_off(
        &self,
        service: &str,
        env_file: &str,
        options: &[&str],
        command: &[&str],
    ) -> (bool, String) {
        let path = self.dir.path().join(format!("{service}-one-off.env"));
        std::fs::write(&path, env_file).expect("write env file");
        let output = self
            .compose()
            .env("RUNNEL_ENV_FILE", &path)
            .args(["run", "--rm", "--no-deps", "-T"])
            .args(options)
            .arg(service)
            .args(command)
            .output()
            .expect("run a one-off container");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// Starts `service` as a detached one-off container with the variables `env` over the
    /// cluster's, checks that it keeps running, logs `says` (twice: it tries again) and fails
    /// its health check, then removes it.
    fn waits_not_ready(&self, service: &str, env: &[(&str, &str)], says: &str, names: &str) {
        let mut command = self.compose();
        command.args(["run", "-d", "--no-deps"]);
        for (name, value) in env {
            command.args(["-e", &format!("{name}={value}")]);
        }
        let started = run(command.arg(service));
        // docker-compose prints the container's name, `docker compose` its id.
        let container = started
            .lines()
            .last()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .unwrap_or_else(|| panic!("no container from `run -d`: {started}"))
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(90);
        let logs = loop {
            let logs = container_logs(&container);
            if logs.matches(says).count() >= 2 {
                break logs;
            }
            let state = docker(&["inspect", "--format", "{{.State.Status}}", &container]);
            assert!(
                state.trim() == "running" && Instant::now() < deadline,
                "{service} with {env:?}: `{says}` not logged twice within 90 s, or the \
                 container stopped ({}): {logs}",
                state.trim()
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        assert!(
            logs.contains(names),
            "{service}: the log names {names}: {logs}"
        );
        let health = Command::new("docker")
            .args(["exec", &container, "runnel", "health", service])
            .output()
            .expect("docker exec runnel health");
        assert!(
            !health.status.success(),
            "{service} with {env:?} says it is ready"
        );
        let _ = Command::new("docker")
            .args(["rm", "-f", &container])
            .output();
    }

    fn logs(&self) -> String {
        self.compose()
            .args(["logs", "--tail", "20", "--no-color"])
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The Kafka broker (1, 2 or 3) that leads most partitions of `topic`.
    fn leading_broker(&self, topic: &str) -> u32 {
        let described = docker(&[
            "exec",
            &self.container("kafka-1"),
            "java",
            "-Xmx256m",
            "-cp",
            "/opt/kafka/libs/*",
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            "kafka-1:9092",
            "--describe",
            "--topic",
            topic,
        ]);
        let mut leads: BTreeMap<u32, usize> = BTreeMap::new();
        for line in described.lines() {
            if let Some(leader) = line
                .split_once("Leader: ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|leader| leader.parse().ok())
            {
                *leads.entry(leader).or_default() += 1;
            }
        }
        leads
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .map(|(broker, _)| broker)
            .unwrap_or_else(|| panic!("no leaders in:\n{described}"))
    }
}

fn event(minute: u64, user: u64, i: u64) -> String {
    let time = BASE_MS + minute as i64 * MINUTE_MS + i as i64 * 15_000 + user as i64 * 100;
    let country = if (user + i).is_multiple_of(7) {
        "test"
    } else {
        "de"
    };
    format!(
        r#"{{"event_time":{time},"user_id":"u{user:02}","page":"/p{}","country":"{country}","duration_ms":{}}}"#,
        (user + i + minute) % PAGES,
        user * 10 + minute + i
    )
}

/// Sends `lines` to the cluster's ingest: half over HTTP, half over gRPC.
async fn send(cluster: &Cluster, lines: &[String]) {
    send_half_and_half(&cluster.ingest, "clicks", lines, INGEST_TOKEN).await;
}

/// Sends minute `next`'s events, keeps them in `sent`, and moves `next` on.
async fn send_minute(cluster: &Cluster, sent: &mut Vec<String>, next: &mut u64) {
    let lines = minute(*next);
    send(cluster, &lines).await;
    sent.extend(lines);
    *next += 1;
}

fn minute(minute: u64) -> Vec<String> {
    (0..EVENTS_PER_USER_AND_MINUTE)
        .flat_map(|i| (0..USERS).map(move |user| event(minute, user, i)))
        .collect()
}

/// (key, window start as RFC 3339) -> the result's values, as JSON text.
type Results = BTreeMap<(String, String), String>;

/// serving's final results of `page_views` (its active version).
struct Served {
    results: Results,
    /// How many of them came from the batch view.
    batch_rows: usize,
    /// The job versions that computed them.
    versions: BTreeSet<u32>,
}

async fn served(serving: &str) -> Result<Served, tonic::Status> {
    let channel = Channel::from_shared(serving.to_string())
        .expect("address")
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let mut rows = ServingClient::new(channel)
        .export_results(authorized(
            proto::ExportResultsRequest {
                job: "page_views".to_string(),
                version: 0,
            },
            Some(SERVING_TOKEN),
        ))
        .await?
        .into_inner();
    let mut served = Served {
        results: Results::new(),
        batch_rows: 0,
        versions: BTreeSet::new(),
    };
    while let Some(row) = rows.next().await {
        let row = row?;
        if !row.r#final {
            continue;
        }
        if row.source == proto::ViewSource::Batch as i32 {
            served.batch_rows += 1;
        }
        served.versions.insert(row.job_version);
        // views, total_ms, max_ms, users: the values after page, window_start, window_end.
        let numbers: Vec<String> = row
            .values
            .iter()
            .skip(3)
            .map(|value| match &value.kind {
                Some(Kind::Int64Value(number)) => number.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        served.results.insert(
            (row.key, runnel_time::format_millis(row.window_start_ms)),
            numbers.join(","),
        );
    }
    Ok(served)
}

/// The job's SQL as deployed (version 1).
fn page_views_sql() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/jobs/page_views.sql")
}

/// Version 2 of page_views, which a replay backfill deploys: the same columns, test traffic
/// counted too, so its results differ from version 1's.
const PAGE_VIEWS_V2: &str = "SELECT page, window_start, window_end,
       COUNT(*) AS views, SUM(duration_ms) AS total_ms, MAX(duration_ms) AS max_ms,
       COUNT(DISTINCT user_id) AS users
FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)
GROUP BY page, window_start, window_end
";

/// `runnel run --mode recompute` of the job in `sql` over `events`.
fn recomputed(dir: &Path, events: &[String], sql: &Path) -> Results {
    let input = dir.join("sent.jsonl");
    std::fs::write(&input, events.join("\n") + "\n").expect("write events");
    let out = dir.join("recomputed.jsonl");
    run(Command::new(runnel_binary())
        .args(["run", "--mode", "recompute", "--sql"])
        .arg(sql)
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out));
    std::fs::read_to_string(&out)
        .expect("read recomputed")
        .lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("JSON row");
            let numbers: Vec<String> = ["views", "total_ms", "max_ms", "users"]
                .iter()
                .map(|name| row[name].to_string())
                .collect();
            (
                (
                    row["_key"].as_str().expect("_key").to_string(),
                    row["_window_start"]
                        .as_str()
                        .expect("_window_start")
                        .to_string(),
                ),
                numbers.join(","),
            )
        })
        .collect()
}

/// After a fault (begun at `since`): every final result serving gives equals the recompute
/// over the events acknowledged so far, and every final result `seen` before is given again,
/// unchanged (a restarted serving reads them back first); waits until serving gives every
/// window before the last minute sent (those the watermark has passed) and prints how long
/// after the fault that was.
async fn check_finals(
    cluster: &Cluster,
    sent: &[String],
    seen: &mut Results,
    what: &str,
    since: Instant,
) {
    let want = recomputed(cluster.dir.path(), sent, &page_views_sql());
    let last_minute = sent
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| event["event_time"].as_i64())
        .max()
        .map(|time| runnel_time::format_millis(time - time.rem_euclid(MINUTE_MS)))
        .expect("events sent");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match served(&cluster.serving).await {
            Ok(Served { results, .. }) => {
                for (window, values) in &results {
                    assert_eq!(
                        want.get(window),
                        Some(values),
                        "{what}: the final result of {window:?} is not the recompute's over \
                         the {} events acknowledged so far",
                        sent.len()
                    );
                }
                for (window, values) in seen.iter() {
                    if let Some(now) = results.get(window) {
                        assert_eq!(
                            now, values,
                            "{what}: the final result of {window:?} changed"
                        );
                    }
                }
                let missing = want
                    .keys()
                    .filter(|(_, start)| *start < last_minute)
                    .filter(|window| !results.contains_key(*window))
                    .count();
                if missing == 0 && seen.keys().all(|window| results.contains_key(window)) {
                    eprintln!(
                        "CHECK {what}: final results complete {:.1} s after the fault: {} \
                         windows, each the recompute's; the {} seen before unchanged",
                        since.elapsed().as_secs_f64(),
                        results.len(),
                        seen.len()
                    );
                    *seen = results;
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{what}: {missing} windows before {last_minute} still not final, or final \
                     results seen before missing\n{}",
                    cluster.logs()
                );
            }
            Err(status) => assert!(
                Instant::now() < deadline,
                "{what}: serving's export failed: {status}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_loses_nothing_through_kills_a_broker_loss_a_network_cut_and_restarts()
{
    let Some(cluster) = Cluster::up() else {
        return;
    };
    let mut sent = Vec::new();
    let mut seen = Results::new();
    let mut next_minute = 0;
    send_minute(&cluster, &mut sent, &mut next_minute).await;

    // A stream-processor SIGKILLed; the other takes its partitions while events come.
    let killed = cluster.container("stream-processor-1");
    docker(&["kill", "--signal", "KILL", &killed]);
    let since = Instant::now();
    send_minute(&cluster, &mut sent, &mut next_minute).await;
    docker(&["start", &killed]);
    let what = "SIGKILL of stream-processor-1";
    cluster.wait_ready(what, since);
    check_finals(&cluster, &sent, &mut seen, what, since).await;

    // The broker that leads most of the stream's partitions stops, then starts again.
    let leader = cluster.leading_broker("clicks");
    let broker = cluster.container(&format!("kafka-{leader}"));
    docker(&["stop", "--time", "5", &broker]);
    let since = Instant::now();
    send_minute(&cluster, &mut sent, &mut next_minute).await;
    docker(&["start", &broker]);
    let what = format!("stop and start of kafka-{leader} (the stream's main leader)");
    cluster.wait_ready(&what, since);
    check_finals(&cluster, &sent, &mut seen, &what, since).await;

    // A stream-processor cut off for longer than its session timeout (10 s): the other takes
    // its partitions; what the cut-off one does meanwhile must not be seen.
    let cut = cluster.container("stream-processor-2");
    let network = format!("{}_default", cluster.project);
    docker(&["network", "disconnect", &network, &cut]);
    let since = Instant::now();
    send_minute(&cluster, &mut sent, &mut next_minute).await;
    std::thread::sleep(Duration::from_secs(15));
    send_minute(&cluster, &mut sent, &mut next_minute).await;
    docker(&["network", "connect", &network, &cut]);
    let what = "network cut of stream-processor-2 for 15 s";
    cluster.wait_ready(what, since);
    check_finals(&cluster, &sent, &mut seen, what, since).await;

    // Ingest, then serving, restarted.
    for service in ["ingest", "serving"] {
        docker(&["restart", "--time", "10", &cluster.container(service)]);
        let since = Instant::now();
        let what = format!("restart of {service}");
        cluster.wait_ready(&what, since);
        send_minute(&cluster, &mut sent, &mut next_minute).await;
        check_finals(&cluster, &sent, &mut seen, &what, since).await;
    }
    // A rolling restart of every service, one at a time, each healthy before the next,
    // events flowing between them.
    let since = Instant::now();
    for service in [
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "minio",
        "ingest",
        "stream-processor-1",
        "stream-processor-2",
        "serving",
    ] {
        let container = cluster.container(service);
        docker(&["restart", "--time", "10", &container]);
        cluster.wait_healthy(&container, &format!("rolling restart: {service}"));
        if next_minute < MINUTES {
            send_minute(&cluster, &mut sent, &mut next_minute).await;
        }
    }
    let what = "rolling restart of every service";
    cluster.wait_ready(what, since);
    check_finals(&cluster, &sent, &mut seen, what, since).await;
    while next_minute < MINUTES {
        send_minute(&cluster, &mut sent, &mut next_minute).await;
    }

    // A client with a wrong token is refused over HTTP and gRPC, and ingest's log says so;
    // its event (a page no other event has) must not be counted.
    let intruder = vec![event(MINUTES - 1, USERS, 0).replace("\"page\":\"/p", "\"page\":\"/x")];
    assert_eq!(
        post_http(&cluster.ingest, "clicks", &intruder, Some("not-the-token")).await,
        401
    );
    let refused = IngestClient::connect(cluster.ingest.clone())
        .await
        .expect("connect to ingest")
        .ingest(authorized(
            IngestRequest {
                stream: "clicks".to_string(),
                all_or_nothing: true,
                events: Some(Events::Json(JsonEvents {
                    events: intruder.iter().cloned().map(Bytes::from).collect(),
                })),
            },
            Some("not-the-token"),
        ))
        .await
        .expect_err("a wrong token is refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        container_logs(&cluster.container("ingest"))
            .contains("refused a request: wrong or missing bearer token"),
        "ingest's log does not say it refused a request"
    );

    // Events ten minutes on, in every partition, so every window above is final.
    let closing: Vec<String> = (0..USERS)
        .map(|user| event(MINUTES + 10, user, 0))
        .collect();
    send(&cluster, &closing).await;
    let closing_start = runnel_time::format_millis(BASE_MS + (MINUTES as i64 + 10) * MINUTE_MS);
    let want = recomputed(cluster.dir.path(), &sent, &page_views_sql());
    assert!(!want.is_empty());
    wait_for_served(&cluster, &want, &closing_start, 1, false, sent.len()).await;

    // A new version by a replay backfill in a one-off container: once it has caught up it is
    // active, the stream-processors run it live and serving answers it.
    let v2 = cluster.dir.path().join("page_views_v2.sql");
    std::fs::write(&v2, PAGE_VIEWS_V2).expect("write version 2");
    let mount = format!("{}:/etc/runnel/page_views_v2.sql:ro", v2.display());
    let (replayed, output) = cluster.one_off(
        "batch-reprocessor",
        &env_file_text(),
        &["-v", &mount],
        &[
            "backfill",
            "--job",
            "page_views",
            "--version",
            "2",
            "--sql",
            "/etc/runnel/page_views_v2.sql",
            "--mode",
            "replay",
            "--stop-when-caught-up",
        ],
    );
    assert!(replayed, "the replay backfill failed: {output}");
    let want_v2 = recomputed(cluster.dir.path(), &sent, &v2);
    assert_ne!(want_v2, want, "version 2 counts the test traffic too");
    wait_for_served(&cluster, &want_v2, &closing_start, 2, false, sent.len()).await;

    // A recompute backfill of it, a one-off container too: serving answers the same windows
    // from the batch view.
    let (recomputed_ok, output) = cluster.one_off(
        "batch-reprocessor",
        &env_file_text(),
        &[],
        &["backfill", "--job", "page_views", "--mode", "recompute"],
    );
    assert!(recomputed_ok, "the recompute backfill failed: {output}");
    wait_for_served(&cluster, &want_v2, &closing_start, 2, true, sent.len()).await;

    // Bad deployment input. A missing token, or one that cannot be a token: the container
    // stops at once and says which setting and why (the token itself is not shown).
    let no_ingest_token: String = env_file_text()
        .lines()
        .filter(|line| !line.starts_with("RUNNEL__INGEST__AUTH_TOKEN="))
        .map(|line| format!("{line}\n"))
        .collect();
    let (started, output) = cluster.one_off("ingest", &no_ingest_token, &[], &[]);
    assert!(!started, "ingest started with no token on 0.0.0.0");
    assert!(
        output.contains("ingest.auth-token") && output.contains("is not set"),
        "{output}"
    );
    let spaced = env_file_text().replace(
        &format!("RUNNEL__SERVING__AUTH_TOKEN={SERVING_TOKEN}"),
        "RUNNEL__SERVING__AUTH_TOKEN=two words",
    );
    let (started, output) = cluster.one_off("serving", &spaced, &[], &[]);
    assert!(!started, "serving started with a token that has a space");
    assert!(
        output.contains("serving.auth-token") && output.contains("a space at character 4"),
        "{output}"
    );
    assert!(
        !output.contains("two words"),
        "the token is shown: {output}"
    );
    // A bucket that does not exist, a broker that cannot be reached: the service waits,
    // saying why every 5 s, and is not ready.
    cluster.waits_not_ready(
        "serving",
        &[("RUNNEL__STORAGE__OBJECT_STORE_URL", "s3://no-such-bucket")],
        "cannot use the object store; not ready, trying again",
        "no-such-bucket",
    );
    cluster.waits_not_ready(
        "serving",
        &[
            (
                "RUNNEL__STORAGE__LOG__KAFKA__BOOTSTRAP_SERVERS",
                "kafka-nowhere:9092",
            ),
            ("RUNNEL__STORAGE__LOG__KAFKA__REQUEST_TIMEOUT", "2s"),
        ],
        "cannot reach the log; not ready, trying again",
        "kafka-nowhere:9092",
    );
}

/// Waits until serving's final page_views before `closing_start` equal `want`, all from job
/// version `version` (and, with `from_batch`, some of them from the batch view).
async fn wait_for_served(
    cluster: &Cluster,
    want: &Results,
    closing_start: &str,
    version: u32,
    from_batch: bool,
    events: usize,
) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let got = served(&cluster.serving).await.map(|mut served| {
            served
                .results
                .retain(|(_, start), _| start.as_str() < closing_start);
            served
        });
        if let Ok(served) = &got
            && served.results == *want
            && served.versions == BTreeSet::from([version])
            && (!from_batch || served.batch_rows > 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "serving's final page_views (version {version}, batch view: {from_batch}) never \
             equalled the recompute of the {events} acknowledged events:\nwant {want:?}\ngot {:?}\n{}",
            got.map(|served| (served.results, served.versions, served.batch_rows)),
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
