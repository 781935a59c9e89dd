//! Driver of `scripts/bench-serving.sh`: runs ingest, the stream-processor and serving in
//! this one process on a fresh embedded log (in `--dir`), drives them over loopback gRPC and
//! prints `BENCH <name> <value> <unit>` lines on stdout; progress goes to stderr.
//!
//! - `query`: `--keys` users get one `clicks` event in each of `--windows-per-key` one-minute
//!   tumbling windows, appended straight to the log, plus one later "clock" event per
//!   partition so that the watermark passes every one of those windows; the live
//!   stream-processor computes the final results of job `query_tumble` and writes them to
//!   `query_tumble.results`, and serving reads them through its speed view (waited for with
//!   `ListJobs` until `speed_windows` is keys x windows). Then an open-loop load of `--qps`
//!   calls a second for `--warmup-seconds` (not counted) and `--seconds` (counted) is sent
//!   over `--channels` HTTP/2 connections: a dispatcher thread sends call `i` at
//!   `start + i / qps` whatever the calls before it are doing, and a call's latency runs from
//!   that scheduled time to its answer (no coordinated omission: a stalled service makes
//!   every call scheduled during the stall slow). First `grpc.health.v1.Health/Check` (the
//!   baseline: the same connections, rate and schedule, a call that touches no view), then
//!   `QueryWindows` of a random user (all its windows). Prints
//!   `query_baseline_{p50,p99}_ms`, `query_baseline_qps`, `query_{p50,p99}_ms` and
//!   `query_qps` (answers a second over the counted span).
//! - `e2e`: job `e2e_tumble` (COUNT per user over one-minute tumbling windows of `taps`,
//!   max-out-of-orderness 500 ms, `early-emit-interval = "1s"`). A `Subscribe` call filtered
//!   to one user is open while that user's events are sent one at a time through the ingest
//!   gRPC API, one every `--interval-ms`. Event `i` has event time `base + i` seconds, so
//!   each event moves the watermark across the next whole second: the early emission that
//!   carries it is due as soon as the stream-processor has read it (with wall-clock event
//!   times an event would wait up to the 1 s emission interval by design, which says
//!   nothing about the pipeline). An event's latency runs from the return of its `Ingest`
//!   call (acknowledged: durable in the log) to the arrival of the first update of its
//!   window whose COUNT covers it (the user's events of a window are counted in send order,
//!   so a count of `n` covers the first `n` events of the window). The first second of
//!   events is a warm-up. Prints `e2e_{p50,p99}_ms`. With `--processes <runnel binary>`
//!   the three services run instead as separate `runnel` processes on the one embedded log
//!   folder (ingest writes the stream, the stream-processor the results, serving follows
//!   them through the partitions' `published` files), and it prints
//!   `e2e_processes_{p50,p99}_ms`.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use futures::future::BoxFuture;
use runnel::supervisor::{RestartPolicy, Service, Supervisor};
use runnel_config::Config;
use runnel_log::{Log, ProduceRecord};
use runnel_proto::client::{ClientEndpoint, Connection};
use runnel_proto::common::v1::value::Kind;
use runnel_proto::serving::v1::serving_client::ServingClient;
use runnel_proto::serving::v1::{self as proto};
use runnel_testkit::random::percentile;
use runnel_testkit::streams::Stream;
use runnel_time::now_millis;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_client::HealthClient;

/// The job of the query figures and its stream.
const QUERY_JOB: &str = "query_tumble";
const QUERY_STREAM: &str = "clicks";
/// The job of the end-to-end figures and its stream.
const E2E_JOB: &str = "e2e_tumble";
const E2E_STREAM: &str = "taps";
/// The one user of the end-to-end run.
const E2E_USER: &str = "e2e-user";
const PARTITIONS: u32 = 4;
const WINDOW_MS: i64 = 60_000;
/// 2023-11-14T22:14:00Z, a whole minute: the first window of the query data.
const QUERY_BASE_MS: i64 = 1_700_000_040_000;
const FILL_BATCH: usize = 20_000;
/// Answers over this fraction failed: the figures are not reported.
const MAX_FAILED_FRACTION: f64 = 0.01;

#[derive(Debug, Parser)]
struct Flags {
    /// The work folder: the config file, and the data folder `<dir>/data`.
    #[arg(long)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// QueryWindows latency and rate under an open-loop load, with the health check as
    /// baseline.
    Query {
        /// Users (keys) held by the serving service.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Windows per user.
        #[arg(long, default_value_t = 3)]
        windows_per_key: u64,
        /// Calls offered a second.
        #[arg(long, default_value_t = 10_000)]
        qps: u64,
        /// The counted span, seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The load before the counted span, seconds.
        #[arg(long, default_value_t = 2)]
        warmup_seconds: u64,
        /// HTTP/2 connections the calls are spread over.
        #[arg(long, default_value_t = 4)]
        channels: usize,
        /// A call not answered in this long fails (and counts at this latency).
        #[arg(long, default_value_t = 5_000)]
        timeout_ms: u64,
    },
    /// Ingest acknowledgement to Subscribe update, early results every second.
    E2e {
        /// Measured span, seconds (after a one-second warm-up).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// One event sent every this many milliseconds.
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        /// Run the services as processes of this `runnel` binary rather than in this one.
        #[arg(long)]
        processes: Option<PathBuf>,
    },
}

/// Writes `<dir>/runnel.toml`: the data folder, loopback ports (`listen`: ingest's and
/// serving's, else any free one), no archiver, the two streams and the two jobs.
fn write_config(dir: &Path, listen: Option<(SocketAddr, SocketAddr)>) -> anyhow::Result<Config> {
    let (ingest_listen, serving_listen) = listen.map_or_else(
        || ("127.0.0.1:0".to_string(), "127.0.0.1:0".to_string()),
        |(ingest, serving)| (ingest.to_string(), serving.to_string()),
    );
    let stream = |name: &str| {
        Stream::clicks(
            PARTITIONS,
            Some("user_id"),
            &["event_time", "user_id", "duration_ms"],
        )
        .named(name)
        .toml()
    };
    let toml = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
[ingest]
listen = "{ingest_listen}"
run-archiver = false
[stream-processor]
metrics-listen = "127.0.0.1:0"
[serving]
listen = "{serving_listen}"
metrics-listen = "127.0.0.1:0"
{query_stream}{e2e_stream}
[[jobs]]
name = "{QUERY_JOB}"
sql = """
SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(duration_ms) AS total
FROM TUMBLE({QUERY_STREAM}, event_time, INTERVAL '1' MINUTE)
GROUP BY user_id, window_start, window_end
"""
max-out-of-orderness = "5s"

[[jobs]]
name = "{E2E_JOB}"
sql = """
SELECT user_id, window_start, window_end, COUNT(*) AS n
FROM TUMBLE({E2E_STREAM}, event_time, INTERVAL '1' MINUTE)
GROUP BY user_id, window_start, window_end
"""
max-out-of-orderness = "500ms"
early-emit-interval = "1s"
"#,
        data = dir.join("data").display(),
        query_stream = stream(QUERY_STREAM),
        e2e_stream = stream(E2E_STREAM),
    );
    let path = dir.join("runnel.toml");
    std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
    Config::load(std::slice::from_ref(&path), &HashMap::new())
        .with_context(|| format!("load {}", path.display()))
}

/// The three services, running in this process on one log under runnel's supervisor.
struct Services {
    serving: SocketAddr,
    ingest: SocketAddr,
    supervisor: Supervisor,
}

impl Services {
    async fn start(config: &Config, log: &Arc<dyn Log>) -> anyhow::Result<Services> {
        let supervisor = Supervisor::start(
            log,
            vec![
                (Service::StreamProcessor, config.clone()),
                (Service::Serving, config.clone()),
                (Service::Ingest, config.clone()),
            ],
            RestartPolicy::NEVER,
            CancellationToken::new(),
        );
        Ok(Services {
            serving: supervisor.address(Service::Serving).await?,
            ingest: supervisor.address(Service::Ingest).await?,
            supervisor,
        })
    }

    /// A new HTTP/2 connection to serving.
    async fn serving_channel(&self) -> anyhow::Result<Connection> {
        connect(self.serving).await
    }

    /// Stops the services; a failure is reported, not returned (the figures are out).
    async fn stop(self) {
        match tokio::time::timeout(Duration::from_secs(30), self.supervisor.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("    a service failed: {error:#}"),
            Err(_) => eprintln!("    the services did not stop within 30 s"),
        }
    }
}

/// A new HTTP/2 connection to the service at `address`, as every client makes it.
async fn connect(address: SocketAddr) -> anyhow::Result<Connection> {
    runnel_proto::client::connect(&ClientEndpoint {
        url: format!("http://{address}"),
        ..ClientEndpoint::default()
    })
    .await
    .with_context(|| format!("connect to {address}"))
}

/// Ingest, the stream-processor and serving as `runnel` processes on one embedded log,
/// killed when dropped.
struct Processes {
    children: Vec<std::process::Child>,
}

impl Processes {
    fn start(runnel: &Path, dir: &Path) -> anyhow::Result<Processes> {
        // The children run in `dir`: a relative path would be looked up from there.
        let runnel = std::fs::canonicalize(runnel)
            .with_context(|| format!("find the runnel binary {}", runnel.display()))?;
        let runnel = runnel.as_path();
        let mut processes = Processes {
            children: Vec::new(),
        };
        for service in ["ingest-service", "stream-processor", "serving"] {
            let log_path = dir.join(format!("{service}.log"));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("create {}", log_path.display()))?;
            let child = std::process::Command::new(runnel)
                .arg("--config")
                .arg(dir.join("runnel.toml"))
                .arg(service)
                .current_dir(dir)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {} {service}", runnel.display()))?;
            processes.children.push(child);
        }
        Ok(processes)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback address with a port that was free a moment ago.
fn free_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    listener.local_addr().context("the free port's address")
}

/// Waits until a connection to `address` succeeds.
async fn wait_listening(address: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match connect(address).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context("the service did not listen within 120 s"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until health says SERVING (every speed view rebuilt).
async fn wait_serving(channel: &Connection) -> anyhow::Result<()> {
    let mut health = HealthClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|answer| answer.into_inner().status());
        if matches!(
            status,
            Ok(tonic_health::pb::health_check_response::ServingStatus::Serving)
        ) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "serving did not become SERVING within 120 s (last: {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `job`'s version 1 as ListJobs reports it.
async fn job_info(
    client: &mut ServingClient<Connection>,
    job: &str,
) -> anyhow::Result<proto::JobVersionInfo> {
    let jobs = client
        .list_jobs(proto::ListJobsRequest {})
        .await
        .context("ListJobs")?
        .into_inner()
        .jobs;
    jobs.into_iter()
        .find(|info| info.name == job)
        .and_then(|info| info.versions.into_iter().find(|info| info.version == 1))
        .with_context(|| format!("ListJobs does not list job `{job}` version 1"))
}

/// A random number per call index (splitmix64), so that every run asks the same keys.
fn mix(index: u64) -> u64 {
    let mut z = index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn user(index: u64) -> String {
    format!("user-{index:06}")
}

fn event(time: i64, user: &str, duration_ms: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"event_time":{time},"user_id":"{user}","duration_ms":{duration_ms}}}"#
    ))
}

/// Appends the query data straight to the log: one event per user and window, window by
/// window, then one clock event per partition that moves the watermark past them all.
async fn fill(log: &Arc<dyn Log>, keys: u64, windows: u64) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(FILL_BATCH);
    for window in 0..windows {
        for key in 0..keys {
            let time = QUERY_BASE_MS
                + window as i64 * WINDOW_MS
                + (mix(key ^ (window << 40)) % WINDOW_MS as u64) as i64;
            let user = user(key);
            batch.push(ProduceRecord {
                key: Some(Bytes::from(user.clone())),
                value: event(time, &user, key % 1000),
                timestamp: time,
                headers: Vec::new(),
                partition: None,
            });
            if batch.len() == FILL_BATCH {
                log.append(QUERY_STREAM, std::mem::take(&mut batch))
                    .await
                    .context("append the query data")?;
            }
        }
    }
    let clock = QUERY_BASE_MS + windows as i64 * WINDOW_MS + 10_000;
    for partition in 0..PARTITIONS {
        batch.push(ProduceRecord {
            key: Some(Bytes::from_static(b"clock")),
            value: event(clock, "clock", 0),
            timestamp: clock,
            headers: Vec::new(),
            partition: Some(partition),
        });
    }
    log.append(QUERY_STREAM, batch)
        .await
        .context("append the query data")?;
    Ok(())
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Answered, but not with what the data holds.
    Wrong,
    Failed,
    TimedOut,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    index: u64,
    latency: Duration,
    outcome: Outcome,
}

type Call = Arc<dyn Fn(u64) -> BoxFuture<'static, Result<bool, String>> + Send + Sync>;

/// The figures of one load run.
struct LoadFigures {
    p50_ms: f64,
    p99_ms: f64,
    qps: f64,
}

/// Offers `qps` calls a second for `warmup + seconds` seconds on an open-loop schedule and
/// measures those scheduled in the last `seconds`. `call(i)` makes call `i` and answers
/// whether the answer was right.
async fn open_loop(
    what: &str,
    qps: u64,
    warmup_seconds: u64,
    seconds: u64,
    timeout: Duration,
    call: Call,
) -> anyhow::Result<LoadFigures> {
    ensure!(
        qps > 0 && seconds > 0,
        "--qps and --seconds must be positive"
    );
    let total = qps * (warmup_seconds + seconds);
    let warmup_calls = qps * warmup_seconds;
    let samples = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let done = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let runtime = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(20);
    let scheduled_at = move |index: u64| {
        start + Duration::from_nanos((u128::from(index) * 1_000_000_000 / u128::from(qps)) as u64)
    };
    // The schedule is kept by a thread of its own: tokio's timer wheel has 1 ms ticks, a
    // tenth of a call's time budget.
    let dispatcher = {
        let (samples, done, first_error) = (
            Arc::clone(&samples),
            Arc::clone(&done),
            Arc::clone(&first_error),
        );
        std::thread::Builder::new()
            .name("bench-dispatch".to_string())
            .spawn(move || {
                let mut late = Vec::with_capacity(total as usize);
                for index in 0..total {
                    let scheduled = scheduled_at(index);
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    late.push(Instant::now().saturating_duration_since(scheduled));
                    let answer = call(index);
                    let (samples, done, first_error) = (
                        Arc::clone(&samples),
                        Arc::clone(&done),
                        Arc::clone(&first_error),
                    );
                    runtime.spawn(async move {
                        let answer = tokio::time::timeout(timeout, answer).await;
                        let latency = Instant::now().saturating_duration_since(scheduled);
                        let outcome = match answer {
                            Ok(Ok(true)) => Outcome::Ok,
                            Ok(Ok(false)) => Outcome::Wrong,
                            Ok(Err(error)) => {
                                first_error
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .get_or_insert(error);
                                Outcome::Failed
                            }
                            Err(_) => Outcome::TimedOut,
                        };
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Sample {
                                index,
                                latency,
                                outcome,
                            });
                        done.fetch_add(1, Ordering::Release);
                    });
                }
                late
            })
            .context("start the dispatcher thread")?
    };
    let end = scheduled_at(total) + timeout + Duration::from_secs(1);
    while done.load(Ordering::Acquire) < total as usize && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut late = tokio::task::spawn_blocking(move || dispatcher.join())
        .await
        .context("join the dispatcher")?
        .map_err(|_| anyhow::anyhow!("the dispatcher thread panicked"))?;
    late.sort();
    let samples: Vec<Sample> = samples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let measured_start = scheduled_at(warmup_calls);
    let measured: Vec<&Sample> = samples
        .iter()
        .filter(|sample| sample.index >= warmup_calls)
        .collect();
    let expected = (total - warmup_calls) as usize;
    let unanswered = expected.saturating_sub(measured.len());
    let count = |outcome| {
        measured
            .iter()
            .filter(|sample| sample.outcome == outcome)
            .count()
    };
    let (ok, wrong, failed, timed_out) = (
        count(Outcome::Ok),
        count(Outcome::Wrong),
        count(Outcome::Failed),
        count(Outcome::TimedOut) + unanswered,
    );
    // The last answer of a measured call, relative to the measured span's start.
    let last_answer = measured
        .iter()
        .map(|sample| {
            scheduled_at(sample.index).saturating_duration_since(measured_start) + sample.latency
        })
        .max()
        .unwrap_or_default();
    let mut latencies: Vec<f64> = measured
        .iter()
        .map(|sample| sample.latency.as_secs_f64() * 1e3)
        .chain(std::iter::repeat_n(timeout.as_secs_f64() * 1e3, unanswered))
        .collect();
    ensure!(!latencies.is_empty(), "{what}: no call was measured");
    latencies.sort_by(f64::total_cmp);
    let span = (seconds as f64).max(last_answer.as_secs_f64());
    let qps_done = ok as f64 / span;
    let late_ms = |fraction: f64| {
        late.get(((late.len() as f64 * fraction) as usize).min(late.len().saturating_sub(1)))
            .map_or(0.0, |late| late.as_secs_f64() * 1e3)
    };
    eprintln!(
        "    {what}: {expected} calls measured ({qps}/s offered for {seconds}s after \
         {warmup_seconds}s of warm-up): {ok} right, {wrong} wrong, {failed} failed, \
         {timed_out} timed out; {qps_done:.0}/s answered right over {span:.2}s"
    );
    eprintln!(
        "    {what} latency from the scheduled send: min {:.3} ms, p50 {:.3}, p90 {:.3}, \
         p99 {:.3}, p99.9 {:.3}, max {:.3}",
        latencies[0],
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        latencies[latencies.len() - 1],
    );
    eprintln!(
        "    dispatcher lateness (sent after the scheduled time): p50 {:.3} ms, p99 {:.3}, \
         max {:.3}",
        late_ms(0.5),
        late_ms(0.99),
        late_ms(1.0)
    );
    let first_error = first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(error) = &first_error {
        eprintln!("    {what}: the first failure: {error}");
    }
    let bad = wrong + failed + timed_out;
    if bad as f64 > MAX_FAILED_FRACTION * expected as f64 {
        bail!(
            "{what}: {bad} of {expected} calls failed, timed out or were answered wrong \
             (over {}%; first failure: {})",
            MAX_FAILED_FRACTION * 100.0,
            first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(LoadFigures {
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        qps: qps_done,
    })
}

#[allow(clippy::too_many_arguments)]
async fn query(
    dir: &Path,
    keys: u64,
    windows_per_key: u64,
    qps: u64,
    seconds: u64,
    warmup_seconds: u64,
    channels: usize,
    timeout_ms: u64,
) -> anyhow::Result<()> {
    ensure!(
        keys > 0 && windows_per_key > 0,
        "--keys and --windows-per-key must be positive"
    );
    let config = write_config(dir, None)?;
    let log = runnel_server_common::open_storage(&config)
        .await
        .context("open the embedded log")?;
    let started = Instant::now();
    fill(&log, keys, windows_per_key).await?;
    eprintln!(
        "    appended {} events for {keys} users to `{QUERY_STREAM}` in {:.1}s",
        keys * windows_per_key + u64::from(PARTITIONS),
        started.elapsed().as_secs_f64()
    );
    let services = Services::start(&config, &log).await?;
    let outcome = query_load(
        &services,
        keys,
        windows_per_key,
        qps,
        seconds,
        warmup_seconds,
        channels,
        Duration::from_millis(timeout_ms),
    )
    .await;
    services.stop().await;
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn query_load(
    services: &Services,
    keys: u64,
    windows_per_key: u64,
    qps: u64,
    seconds: u64,
    warmup_seconds: u64,
    channels: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let first = services.serving_channel().await?;
    wait_serving(&first).await?;
    let mut client = ServingClient::new(first.clone());
    let expected = keys * windows_per_key;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let info = job_info(&mut client, QUERY_JOB).await?;
        if info.ready && info.speed_windows >= expected {
            ensure!(
                info.speed_windows == expected,
                "the speed view holds {} windows, not {expected}",
                info.speed_windows
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the speed view holds {} of {expected} windows after 600 s",
            info.speed_windows
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "    the serving speed view holds {expected} windows of {keys} users, {:.1}s after the \
         services started",
        started.elapsed().as_secs_f64()
    );
    let mut connections = vec![first];
    while connections.len() < channels.max(1) {
        connections.push(services.serving_channel().await?);
    }
    let connections = Arc::new(connections);

    let health_call: Call = {
        let connections = Arc::clone(&connections);
        Arc::new(move |index: u64| {
            let channel = connections[index as usize % connections.len()].clone();
            Box::pin(async move {
                let answer = HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map_err(|status| status.to_string())?;
                Ok(answer.into_inner().status()
                    == tonic_health::pb::health_check_response::ServingStatus::Serving)
            })
        })
    };
    let query_call: Call = {
        let connections = Arc::clone(&connections);
        Arc::new(move |index: u64| {
            let channel = connections[index as usize % connections.len()].clone();
            let key = user(mix(index) % keys);
            Box::pin(async move {
                let answer = ServingClient::new(channel)
                    .query_windows(proto::QueryWindowsRequest {
                        job: QUERY_JOB.to_string(),
                        key,
                        from_ms: 0,
                        to_ms: 0,
                    })
                    .await
                    .map_err(|status| status.to_string())?;
                Ok(answer.into_inner().windows.len() as u64 == windows_per_key)
            })
        })
    };

    eprintln!(
        "    baseline: grpc.health.v1.Health/Check, {qps}/s over {} connections",
        connections.len()
    );
    let baseline = open_loop(
        "health check",
        qps,
        warmup_seconds,
        seconds,
        timeout,
        health_call,
    )
    .await;
    match &baseline {
        Ok(figures) => {
            println!("BENCH query_baseline_p50_ms {:.3} ms", figures.p50_ms);
            println!("BENCH query_baseline_p99_ms {:.3} ms", figures.p99_ms);
            println!("BENCH query_baseline_qps {:.0} queries/s", figures.qps);
        }
        Err(error) => eprintln!("    the baseline failed: {error:#}"),
    }
    eprintln!(
        "    QueryWindows of a random user of {keys}, {qps}/s over {} connections",
        connections.len()
    );
    let figures = open_loop(
        "QueryWindows",
        qps,
        warmup_seconds,
        seconds,
        timeout,
        query_call,
    )
    .await?;
    println!("BENCH query_p50_ms {:.3} ms", figures.p50_ms);
    println!("BENCH query_p99_ms {:.3} ms", figures.p99_ms);
    println!("BENCH query_qps {:.0} queries/s", figures.qps);
    baseline.map(|_| ())
}

async fn e2e(
    dir: &Path,
    seconds: u64,
    interval_ms: u64,
    processes: Option<&Path>,
) -> anyhow::Result<()> {
    ensure!(
        seconds > 0 && interval_ms > 0,
        "--seconds and --interval-ms must be positive"
    );
    if let Some(runnel) = processes {
        let (ingest, serving) = (free_address()?, free_address()?);
        write_config(dir, Some((ingest, serving)))?;
        let processes = Processes::start(runnel, dir)?;
        wait_listening(ingest).await?;
        wait_listening(serving).await?;
        let outcome = e2e_run(ingest, serving, seconds, interval_ms, "e2e_processes").await;
        drop(processes);
        return outcome;
    }
    let config = write_config(dir, None)?;
    let log = runnel_server_common::open_storage(&config)
        .await
        .context("open the embedded log")?;
    let services = Services::start(&config, &log).await?;
    let outcome = e2e_run(
        services.ingest,
        services.serving,
        seconds,
        interval_ms,
        "e2e",
    )
    .await;
    services.stop().await;
    outcome
}

/// Measures ingest acknowledgement to Subscribe update against the services at `ingest` and
/// `serving`; prints `<figure>_p50_ms` and `<figure>_p99_ms`.
async fn e2e_run(
    ingest: SocketAddr,
    serving: SocketAddr,
    seconds: u64,
    interval_ms: u64,
    figure: &str,
) -> anyhow::Result<()> {
    let channel = connect(serving).await?;
    wait_serving(&channel).await?;
    let mut client = ServingClient::new(channel);
    let info = job_info(&mut client, E2E_JOB).await?;
    let n_column = info
        .column_names
        .iter()
        .position(|name| name == "n")
        .context("job `e2e_tumble` has no column `n`")?;
    let mut ingest =
        runnel_proto::ingest::v1::ingest_client::IngestClient::new(connect(ingest).await?);

    let warmup_events = (1_000 / interval_ms).max(1) as usize;
    let events = warmup_events + (seconds * 1_000 / interval_ms) as usize;
    // Event i at base + i seconds, every one in the past (ingest refuses events over an
    // hour ahead); base is a whole minute.
    let base = (now_millis() - (events as i64 + 120) * 1_000).div_euclid(WINDOW_MS) * WINDOW_MS;
    let event_time = |index: usize| base + index as i64 * 1_000;

    let mut updates = client
        .subscribe(proto::SubscribeRequest {
            job: E2E_JOB.to_string(),
            key: E2E_USER.to_string(),
        })
        .await
        .context("Subscribe")?
        .into_inner();
    // (arrival, window start, COUNT) of each update, in arrival order.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(update) = updates.next().await {
            let at = Instant::now();
            let update = update.context("the Subscribe stream failed")?;
            let n = match update
                .values
                .get(n_column)
                .and_then(|value| value.kind.clone())
            {
                Some(Kind::Int64Value(n)) => n,
                other => bail!("an update's `n` is {other:?}, not an integer"),
            };
            if seen_tx.send((at, update.window_start_ms, n)).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });

    eprintln!(
        "    sending {events} events of `{E2E_USER}` to `{E2E_STREAM}` through ingest, one \
         every {interval_ms} ms ({warmup_events} of warm-up), event time one second apart"
    );
    let mut acked = Vec::with_capacity(events);
    let mut ingest_ms = Vec::with_capacity(events);
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for index in 0..events {
        ticker.tick().await;
        let sent = Instant::now();
        let answer = ingest
            .ingest(runnel_proto::ingest::v1::IngestRequest {
                stream: E2E_STREAM.to_string(),
                all_or_nothing: true,
                events: Some(runnel_proto::ingest::v1::ingest_request::Events::Json(
                    runnel_proto::ingest::v1::JsonEvents {
                        events: vec![event(event_time(index), E2E_USER, index as u64)],
                    },
                )),
            })
            .await
            .with_context(|| format!("ingest event {index}"))?
            .into_inner();
        let at = Instant::now();
        ensure!(
            answer.accepted == 1,
            "ingest did not accept event {index}: {:?}",
            answer.rejections
        );
        acked.push(at);
        ingest_ms.push(at.duration_since(sent).as_secs_f64() * 1e3);
    }
    // The last events' updates are on their way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    reader.abort();
    match reader.await {
        Ok(Err(error)) => return Err(error),
        Ok(Ok(())) => eprintln!("    WARNING: the Subscribe stream ended early"),
        Err(_) => {}
    }
    let mut seen = Vec::new();
    while let Ok(update) = seen_rx.try_recv() {
        seen.push(update);
    }

    // Event i is the c-th of its window: visible once an update of that window counts c.
    let mut latencies = Vec::with_capacity(events);
    let mut missing = 0_usize;
    let mut in_window: HashMap<i64, i64> = HashMap::new();
    for (index, acked_at) in acked.iter().enumerate() {
        let window = event_time(index).div_euclid(WINDOW_MS) * WINDOW_MS;
        let count = in_window.entry(window).or_default();
        *count += 1;
        if index < warmup_events {
            continue;
        }
        let count = *count;
        match seen
            .iter()
            .find(|(_, start, n)| *start == window && *n >= count)
        {
            Some((at, _, _)) => {
                latencies.push(at.saturating_duration_since(*acked_at).as_secs_f64() * 1e3);
            }
            None => missing += 1,
        }
    }
    eprintln!(
        "    {} updates received; {} of {} measured events seen, {missing} never",
        seen.len(),
        latencies.len(),
        events - warmup_events
    );
    ensure!(
        missing as f64 <= MAX_FAILED_FRACTION * (events - warmup_events) as f64,
        "{missing} of {} measured events never showed in a Subscribe update",
        events - warmup_events
    );
    ensure!(
        !latencies.is_empty(),
        "no measured event showed in an update"
    );
    latencies.sort_by(f64::total_cmp);
    ingest_ms.sort_by(f64::total_cmp);
    eprintln!(
        "    ingest call (send to acknowledgement): p50 {:.2} ms, p99 {:.2}, max {:.2}",
        percentile(&ingest_ms, 0.5),
        percentile(&ingest_ms, 0.99),
        ingest_ms[ingest_ms.len() - 1]
    );
    eprintln!(
        "    acknowledgement to Subscribe update: min {:.2} ms, p50 {:.2}, p90 {:.2}, \
         p99 {:.2}, max {:.2}",
        latencies[0],
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
    println!(
        "BENCH {figure}_p50_ms {:.2} ms",
        percentile(&latencies, 0.5)
    );
    println!(
        "BENCH {figure}_p99_ms {:.2} ms",
        percentile(&latencies, 0.99)
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let dir = flags.dir.as_path();
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    // The services' log lines, filtered by `RUST_LOG` (the script sets `warn`).
    runnel_server_common::init_tracing("serving-bench", false);
    match flags.command {
        Action::Query {
            keys,
            windows_per_key,
            qps,
            seconds,
            warmup_seconds,
            channels,
            timeout_ms,
        } => {
            query(
                dir,
                keys,
                windows_per_key,
                qps,
                seconds,
                warmup_seconds,
                channels,
                timeout_ms,
            )
            .await
        }
        Action::E2e {
            seconds,
            interval_ms,
            processes,
        } => e2e(dir, seconds, interval_ms, processes.as_deref()).await,
    }
}
