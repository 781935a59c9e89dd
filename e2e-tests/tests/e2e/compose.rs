//! The compose cluster (infra/compose) driven through faults, only through its published
//! ports and `docker` commands: events in over HTTP and gRPC while a stream-processor is
//! SIGKILLed, the broker leading most of the stream's partitions is stopped and started, a
//! stream-processor is cut off the network for longer than its session timeout, ingest and
//! serving are restarted. Afterwards serving's final results of the `page_views` job equal
//! `runnel run --mode recompute` over every acknowledged event: nothing acknowledged was
//! lost, nothing counted twice; and again after a recompute backfill run as a one-off
//! container, from the batch view. Each fault prints how long serving took to answer again.
//!
//! Needs the images (`infra/docker/build-images.sh`) and a Docker engine; runs when
//! `RUNNEL_COMPOSE=1` (scripts/test.sh sets it when it has built the images), skipped
//! otherwise. Its cluster is a compose project of its own (`runnel-test-<pid>`) on free host
//! ports, removed with its volumes at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use runnel_e2e_tests::runnel_binary;
use runnel_serving::proto::serving_client::ServingClient;
use runnel_serving::proto::{self, value::Kind};
use tonic::transport::Channel;

use super::{authorized, send_half_and_half};

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
        std::fs::write(
            &env_file,
            format!(
                "RUNNEL__INGEST__AUTH_TOKEN={INGEST_TOKEN}\nRUNNEL__SERVING__AUTH_TOKEN={SERVING_TOKEN}\n\
                 MINIO_ROOT_USER=runnel\nMINIO_ROOT_PASSWORD=compose-minio-s3cret\n\
                 AWS_ACCESS_KEY_ID=runnel\nAWS_SECRET_ACCESS_KEY=compose-minio-s3cret\n\
                 RUNNEL__ARCHIVE__MAX_FILE_AGE=5s\n"
            ),
        )
        .expect("write env file");
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

/// serving's final results of `page_views`, and how many came from the batch view.
async fn served(serving: &str) -> Result<(Results, usize), tonic::Status> {
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
    let (mut results, mut batch_rows) = (Results::new(), 0);
    while let Some(row) = rows.next().await {
        let row = row?;
        if !row.r#final {
            continue;
        }
        if row.source == proto::ViewSource::Batch as i32 {
            batch_rows += 1;
        }
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
        results.insert(
            (row.key, runnel_time::format_millis(row.window_start_ms)),
            numbers.join(","),
        );
    }
    Ok((results, batch_rows))
}

/// `runnel run --mode recompute` of page_views over `events`.
fn recomputed(dir: &Path, events: &[String]) -> Results {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let input = dir.join("sent.jsonl");
    std::fs::write(&input, events.join("\n") + "\n").expect("write events");
    let out = dir.join("recomputed.jsonl");
    run(Command::new(runnel_binary())
        .args(["run", "--mode", "recompute", "--sql"])
        .arg(repo.join("config/jobs/page_views.sql"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_loses_nothing_through_kills_a_broker_loss_a_network_cut_and_restarts()
{
    let Some(cluster) = Cluster::up() else {
        return;
    };
    let mut sent = Vec::new();
    let mut next_minute = 0;
    send_minute(&cluster, &mut sent, &mut next_minute).await;

    // A stream-processor SIGKILLed; the other takes its partitions while events come.
    let killed = cluster.container("stream-processor-1");
    docker(&["kill", "--signal", "KILL", &killed]);
    let since = Instant::now();
    send_minute(&cluster, &mut sent, &mut next_minute).await;
    docker(&["start", &killed]);
    cluster.wait_ready("SIGKILL of stream-processor-1", since);

    // The broker that leads most of the stream's partitions stops, then starts again.
    let leader = cluster.leading_broker("clicks");
    let broker = cluster.container(&format!("kafka-{leader}"));
    docker(&["stop", "--time", "5", &broker]);
    let since = Instant::now();
    send_minute(&cluster, &mut sent, &mut next_minute).await;
    docker(&["start", &broker]);
    cluster.wait_ready(
        &format!("stop and start of kafka-{leader} (the stream's main leader)"),
        since,
    );

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
    cluster.wait_ready("network cut of stream-processor-2 for 15 s", since);

    // Ingest, then serving, restarted.
    for service in ["ingest", "serving"] {
        docker(&["restart", "--time", "10", &cluster.container(service)]);
        let since = Instant::now();
        cluster.wait_ready(&format!("restart of {service}"), since);
        send_minute(&cluster, &mut sent, &mut next_minute).await;
    }
    // Not yet: a rolling restart of every service. Two runs in six stalled after one: the
    // stream-processors never again produced final results for the later windows (see the
    // session note of issue 17). That is a bug to find, not a flaw of the test.
    while next_minute < MINUTES {
        send_minute(&cluster, &mut sent, &mut next_minute).await;
    }

    // Events ten minutes on, in every partition, so every window above is final.
    let closing: Vec<String> = (0..USERS)
        .map(|user| event(MINUTES + 10, user, 0))
        .collect();
    send(&cluster, &closing).await;
    let closing_start = runnel_time::format_millis(BASE_MS + (MINUTES as i64 + 10) * MINUTE_MS);
    let want: Results = recomputed(cluster.dir.path(), &sent);
    assert!(!want.is_empty());
    wait_for_served(&cluster, &want, &closing_start, false, sent.len()).await;

    // A recompute backfill as a one-off container: serving then answers the same windows
    // from the batch view.
    let output = cluster
        .compose()
        .args([
            "run",
            "--rm",
            "batch-reprocessor",
            "backfill",
            "--job",
            "page_views",
            "--mode",
            "recompute",
        ])
        .output()
        .expect("run the backfill container");
    assert!(
        output.status.success(),
        "the recompute backfill failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for_served(&cluster, &want, &closing_start, true, sent.len()).await;
}

/// Waits until serving's final page_views before `closing_start` equal `want` (and, with
/// `from_batch`, some of them come from the batch view).
async fn wait_for_served(
    cluster: &Cluster,
    want: &Results,
    closing_start: &str,
    from_batch: bool,
    events: usize,
) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let got = served(&cluster.serving).await.map(|(results, batch_rows)| {
            let results: Results = results
                .into_iter()
                .filter(|((_, start), _)| start.as_str() < closing_start)
                .collect();
            (results, batch_rows)
        });
        if let Ok((results, batch_rows)) = &got
            && results == want
            && (!from_batch || *batch_rows > 0)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "serving's final page_views (batch view: {from_batch}) never equalled the recompute \
             of the {events} acknowledged events:\nwant {want:?}\ngot {got:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
