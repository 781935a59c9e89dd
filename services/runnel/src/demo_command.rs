//! `runnel demo`: the whole platform in one process on the embedded defaults.
//!
//! The four services run as tasks over one embedded log in a fresh folder. A generator
//! sends a click stream (users clicking in bursts, popular and rare pages, about 2% of the
//! events late by 5 to 60 s) to the ingest service over gRPC; three jobs run on it (tumbling
//! page views, hopping country traffic, user sessions). Every second the terminal shows what
//! the serving service answers over gRPC. After one phase the demo replays version 2 of
//! `user_sessions` (a longer session gap), which becomes the active version once it has
//! caught up with the live log; every three it recomputes `page_views` over the archived
//! history (its older windows then come from the batch view). Ctrl-C (or `--for`) stops
//! everything.

use std::collections::BinaryHeap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use runnel::supervisor::{RestartPolicy, Service, Supervisor};
use runnel_batch_reprocessor::recompute::{Progress, RecomputeRequest, recompute_view};
use runnel_batch_reprocessor::replay::{ReplayProgress, replay};
use runnel_config::Config;
use runnel_proto::client::{ClientEndpoint, Connection, connect};
use runnel_proto::common::v1::value::Kind;
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use runnel_proto::serving::v1::serving_client::ServingClient;
use runnel_proto::serving::v1::{self as proto};
use runnel_time::{format_millis, now_millis};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::query_command::source_name;

/// Arguments of `runnel demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Events per second the generator sends, on average.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(10..=100_000))]
    rate: u32,
    /// Stops by itself after this long (e.g. `90s`); default: at Ctrl-C.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    run_for: Option<Duration>,
    /// Seconds before the replay of `user_sessions` v2; `page_views` is recomputed every
    /// three times as long (from then on, older windows are answered from the batch view).
    #[arg(long, default_value_t = 20)]
    phase_seconds: u64,
    /// Where the demo keeps its log and object store; default: a fresh folder under the
    /// system's temporary folder, deleted at the end.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Prints each frame below the last instead of redrawing the screen (the default when
    /// stdout is not a terminal).
    #[arg(long)]
    plain: bool,
}

const SESSIONS_V1: &str =
    "SELECT user_id, window_start, window_end, COUNT(*) AS clicks, SUM(duration_ms) AS total_ms
FROM SESSION(clicks, event_time, INTERVAL '5' SECOND)
GROUP BY user_id, window_start, window_end";

/// The demo's layer over the embedded defaults: its folder, free ports, files archived
/// every few seconds, and its jobs. `with_v2` adds version 2 of `user_sessions`.
fn demo_toml(data_dir: &std::path::Path, with_v2: bool) -> String {
    let mut toml = format!(
        r#"[storage]
data-dir = "{data}"
[ingest]
listen = "127.0.0.1:0"
[serving]
listen = "127.0.0.1:0"
metrics-listen = "127.0.0.1:0"
view-poll-interval = "500ms"
[archive]
max-file-age = "5s"
poll-interval = "500ms"
[stream-processor]
metrics-listen = "127.0.0.1:0"
checkpoint-interval = "1s"

[[jobs]]
name = "page_views"
sql = """
SELECT page, window_start, window_end, COUNT(*) AS views, AVG(duration_ms) AS avg_ms
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND)
GROUP BY page, window_start, window_end
"""
max-out-of-orderness = "2s"
allowed-lateness = "20s"
early-emit-interval = "1s"
idle-timeout = "5s"

[[jobs]]
name = "country_traffic"
sql = """
SELECT country, window_start, window_end, COUNT(*) AS clicks, SUM(duration_ms) AS total_ms
FROM HOP(clicks, event_time, INTERVAL '10' SECOND, INTERVAL '30' SECOND)
GROUP BY country, window_start, window_end
"""
max-out-of-orderness = "2s"
idle-timeout = "5s"

[[jobs]]
name = "user_sessions"
sql = """
{SESSIONS_V1}
"""
max-out-of-orderness = "2s"
"#,
        data = data_dir.display().to_string().replace('\\', "\\\\"),
    );
    if with_v2 {
        toml.push_str(&format!(
            r#"
[[jobs]]
name = "user_sessions"
version = 2
sql = """
{}
"""
max-out-of-orderness = "2s"
"#,
            SESSIONS_V1.replace("INTERVAL '5' SECOND", "INTERVAL '10' SECOND")
        ));
    }
    toml
}

/// The screen's legend, one line under the jobs table: its columns, and the result lines'
/// `v18 final speed`.
const LEGEND: &str = "legend: times are HH:MM:SS in UTC; WATERMARK = event time up to which the job has seen every event; LAG = records not yet processed; SPEED / BATCH = windows held in the speed view (live results) / batch view (recomputed history); `v18 final speed` = version 18 of the window's result (each update adds one), final once the watermark passed its end (else early), answered from the speed view (or batch)";

/// A small xorshift generator: the demo needs variety, not statistics.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const PAGES: [&str; 12] = [
    "/home",
    "/search",
    "/product/1",
    "/product/2",
    "/product/3",
    "/cart",
    "/checkout",
    "/help",
    "/blog",
    "/about",
    "/careers",
    "/pricing",
];
const COUNTRIES: [&str; 8] = ["de", "fr", "us", "br", "jp", "in", "gb", "es"];

/// Counters the screen shows.
#[derive(Debug, Default)]
struct Generated {
    events: AtomicU64,
    late: AtomicU64,
    rejected: AtomicU64,
}

/// Users click in bursts (a click every 0.3-3 s, ending with 15% chance after each), then
/// idle 15-60 s; pages are Zipf-like, 2% of events are sent late.
async fn generate(
    mut client: IngestClient<Connection>,
    rate: u32,
    counters: Arc<Generated>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    // About 7 clicks per 48 s cycle per user.
    let users = u64::from(rate) * 7;
    let started = now_millis();
    let mut next: BinaryHeap<std::cmp::Reverse<(i64, u64)>> = (0..users)
        .map(|user| std::cmp::Reverse((started + random.below(30_000) as i64, user)))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = now_millis();
        let mut events = Vec::new();
        while let Some(std::cmp::Reverse((at, user))) = next.peek().copied() {
            if at > now {
                break;
            }
            next.pop();
            let page_rank = (random.below(1000) * random.below(1000) / 1000 * PAGES.len() as u64
                / 1000) as usize;
            let page = PAGES[page_rank.min(PAGES.len() - 1)];
            let country = COUNTRIES[(user % COUNTRIES.len() as u64) as usize];
            let mut event_time = at;
            if random.chance(2) {
                event_time -= 5_000 + random.below(55_000) as i64;
                counters.late.fetch_add(1, Ordering::Relaxed);
            }
            events.push(Bytes::from(format!(
                r#"{{"event_time":{event_time},"user_id":"u{user}","page":"{page}","country":"{country}","duration_ms":{}}}"#,
                200 + random.below(5_000)
            )));
            let gap = if random.chance(15) {
                15_000 + random.below(45_000)
            } else {
                300 + random.below(2_700)
            };
            next.push(std::cmp::Reverse((at + gap as i64, user)));
        }
        if events.is_empty() {
            continue;
        }
        let sent = events.len() as u64;
        let answer = client
            .ingest(IngestRequest {
                stream: "clicks".to_string(),
                all_or_nothing: false,
                events: Some(Events::Json(JsonEvents { events })),
            })
            .await;
        match answer {
            Ok(response) => {
                let response = response.into_inner();
                counters
                    .events
                    .fetch_add(response.accepted, Ordering::Relaxed);
                counters
                    .rejected
                    .fetch_add(response.rejected, Ordering::Relaxed);
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                counters.rejected.fetch_add(sent, Ordering::Relaxed);
            }
            Err(status) => {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                return Err(anyhow::anyhow!(
                    "ingest refused the demo's events: {status}"
                ));
            }
        }
    }
}

fn text(value: Option<&runnel_proto::common::v1::Value>) -> String {
    match value.and_then(|value| value.kind.as_ref()) {
        None => "-".to_string(),
        Some(Kind::StringValue(text)) => text.clone(),
        Some(Kind::Int64Value(number)) => number.to_string(),
        Some(Kind::Float64Value(number)) => format!("{number:.1}"),
        Some(Kind::BoolValue(flag)) => flag.to_string(),
        Some(Kind::TimestampMs(millis)) => clock(*millis),
    }
}

/// `HH:MM:SS` of an epoch-ms time.
fn clock(millis: i64) -> String {
    format_millis(millis)
        .get(11..19)
        .unwrap_or_default()
        .to_string()
}

fn column(window: &proto::WindowResult, columns: &[String], name: &str) -> String {
    text(
        columns
            .iter()
            .position(|column| column == name)
            .and_then(|index| window.values.get(index)),
    )
}

/// The `k` most viewed pages of the `page_views` window starting at `start`.
async fn top_pages(
    client: &mut ServingClient<Connection>,
    start: i64,
    k: u32,
) -> Result<proto::TopKResponse, tonic::Status> {
    Ok(client
        .top_k(proto::TopKRequest {
            job: "page_views".to_string(),
            window_start_ms: start,
            k,
            order_by: "views".to_string(),
            ascending: false,
        })
        .await?
        .into_inner())
}

/// One screen of what serving answers.
async fn frame(
    client: &mut ServingClient<Connection>,
    started: Instant,
    counters: &Generated,
    milestones: &[String],
) -> anyhow::Result<String> {
    let mut out = String::new();
    let elapsed = started.elapsed().as_secs();
    let events = counters.events.load(Ordering::Relaxed);
    out.push_str(&format!(
        "runnel demo: ingest, stream-processor, batch-reprocessor and serving in one process (Ctrl-C stops)\n\
         {elapsed:>4} s  events ingested {events}, of them sent late {}, rejected {}\n\n",
        counters.late.load(Ordering::Relaxed),
        counters.rejected.load(Ordering::Relaxed),
    ));
    let jobs = client
        .list_jobs(proto::ListJobsRequest {})
        .await?
        .into_inner()
        .jobs;
    out.push_str(
        "JOB              VERSION  ACTIVE  WATERMARK  LAG   BATCH HORIZON  SPEED  BATCH\n",
    );
    for job in &jobs {
        for version in &job.versions {
            out.push_str(&format!(
                "{:<16} {:<8} {:<7} {:<10} {:<5} {:<14} {:<6} {}\n",
                job.name,
                version.version,
                if version.version == job.active_version {
                    "yes"
                } else {
                    ""
                },
                version.watermark_ms.map_or("-".to_string(), clock),
                version.lag_records,
                version.batch_horizon_ms.map_or("-".to_string(), clock),
                version.speed_windows,
                version.batch_windows,
            ));
        }
    }
    out.push_str(LEGEND);
    out.push('\n');
    let now = now_millis();
    // The last page_views window the watermark has passed (2 s out of orderness).
    let page_window = (now - 12_000).div_euclid(10_000) * 10_000;
    let top = top_pages(client, page_window, 5).await?;
    out.push_str(&format!(
        "\npage_views: top pages of {}-{} (TopK by views)\n",
        clock(page_window),
        clock(page_window + 10_000)
    ));
    for window in &top.windows {
        out.push_str(&format!(
            "  {:<12} {:>6} views  avg {:>7} ms  v{} {} {}\n",
            column(window, &top.column_names, "page"),
            column(window, &top.column_names, "views"),
            column(window, &top.column_names, "avg_ms"),
            window.version,
            if window.r#final { "final" } else { "early" },
            source_name(window),
        ));
    }
    let old_window = (now - 60_000).div_euclid(10_000) * 10_000;
    let old = top_pages(client, old_window, 1).await?;
    if let Some(window) = old.windows.first() {
        out.push_str(&format!(
            "  a minute before ({}): {} with {} views, from the {} view\n",
            clock(old_window),
            column(window, &old.column_names, "page"),
            column(window, &old.column_names, "views"),
            source_name(window),
        ));
    }
    let hop_window = (now - 32_000).div_euclid(10_000) * 10_000;
    let countries = client
        .get_window(proto::GetWindowRequest {
            job: "country_traffic".to_string(),
            window_start_ms: hop_window,
            page_size: 8,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    out.push_str(&format!(
        "\ncountry_traffic: clicks in {}-{} (GetWindow of a 30 s window sliding by 10 s)\n ",
        clock(hop_window),
        clock(hop_window + 30_000)
    ));
    for window in &countries.windows {
        out.push_str(&format!(
            " {} {}",
            column(window, &countries.column_names, "country"),
            column(window, &countries.column_names, "clicks")
        ));
    }
    out.push('\n');
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let sessions = client
            .query_windows(proto::QueryWindowsRequest {
                job: "user_sessions".to_string(),
                key: user.to_string(),
                from_ms: now - 600_000,
                to_ms: 0,
            })
            .await?
            .into_inner();
        if sessions.windows.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\nuser_sessions: {user}'s last sessions (QueryWindows), from job version {}\n",
            sessions.windows[0].job_version
        ));
        for window in sessions.windows.iter().rev().take(3) {
            out.push_str(&format!(
                "  {}-{}  {:>3} clicks  {:>6} ms\n",
                clock(window.window_start_ms),
                window.window_end_ms.map_or("?".to_string(), clock),
                column(window, &sessions.column_names, "clicks"),
                column(window, &sessions.column_names, "total_ms"),
            ));
        }
        break;
    }
    out.push('\n');
    for milestone in milestones {
        out.push_str(milestone);
        out.push('\n');
    }
    Ok(out)
}

/// Runs `runnel demo`.
pub(crate) async fn run(
    args: DemoArgs,
    env: &std::collections::HashMap<String, String>,
) -> anyhow::Result<()> {
    let shutdown = runnel_server_common::shutdown_on_signal().context("install signal handlers")?;
    let (data_dir, remove_after) = match &args.data_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "runnel-demo-{}-{}",
                std::process::id(),
                now_millis()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let load = |with_v2: bool| -> anyhow::Result<Config> {
        let path = data_dir.join(if with_v2 { "demo-v2.toml" } else { "demo.toml" });
        std::fs::write(&path, demo_toml(&data_dir, with_v2))
            .with_context(|| format!("write {}", path.display()))?;
        Config::load(&[path], env).context("load the demo's config")
    };
    // The stream-processor runs the jobs as first declared; serving also knows version 2 of
    // user_sessions, which the replay brings in.
    let config = load(false)?;
    let serving_config = load(true)?;
    let result = run_demo(&args, &config, &serving_config, shutdown.clone()).await;
    shutdown.cancel();
    if remove_after {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    result
}

async fn run_demo(
    args: &DemoArgs,
    config: &Config,
    serving_config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let log = runnel_server_common::open_storage(config)
        .await
        .context("open the embedded log")?;
    let store = runnel_archive::open_object_store(
        &config.object_store_url(),
        &config.storage.object_store_options,
    )
    .context("open the object store")?;
    let services_shutdown = shutdown.child_token();
    // Ingest (with its archiver), the stream-processor running the jobs as first declared,
    // and serving, which also knows version 2 of user_sessions that the replay brings in.
    let mut services = Supervisor::start(
        &log,
        vec![
            (Service::Ingest, config.clone()),
            (Service::StreamProcessor, config.clone()),
            (Service::Serving, serving_config.clone()),
        ],
        RestartPolicy::NEVER,
        services_shutdown.clone(),
    );
    let ingest_url = format!("http://{}", services.address(Service::Ingest).await?);
    let serving_url = format!("http://{}", services.address(Service::Serving).await?);
    // The demo's own tasks beside the services: the event generator and the replay.
    let mut tasks: JoinSet<anyhow::Result<&'static str>> = JoinSet::new();
    let ingest_client = IngestClient::new(
        connect(&ClientEndpoint {
            url: ingest_url,
            ..ClientEndpoint::default()
        })
        .await
        .context("connect to ingest")?,
    );
    let counters = Arc::new(Generated::default());
    {
        let (counters, shutdown) = (Arc::clone(&counters), services_shutdown.clone());
        let rate = args.rate;
        tasks.spawn(async move {
            generate(ingest_client, rate, counters, shutdown).await?;
            Ok("generator")
        });
    }
    let mut client = ServingClient::new(
        connect(&ClientEndpoint {
            url: serving_url.clone(),
            ..ClientEndpoint::default()
        })
        .await
        .context("connect to serving")?,
    );
    let plain = args.plain || !std::io::stdout().is_terminal();
    let started = Instant::now();
    let phase = Duration::from_secs(args.phase_seconds);
    let mut milestones = vec![format!(
        "[{:>3} s] serving at {serving_url}; try `runnel query jobs --url {serving_url}` in another terminal",
        0
    )];
    let recompute_progress = Arc::new(Progress::default());
    let mut recompute: Option<tokio::task::JoinHandle<anyhow::Result<String>>> = None;
    let mut next_recompute = 3 * phase;
    // The milestone line the latest recompute rewrites.
    let mut recompute_line: Option<usize> = None;
    let replay_progress = Arc::new(ReplayProgress::default());
    let mut replay_started = false;
    let mut switched = false;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            stopped = services.next_stopped() => {
                match stopped {
                    Some((_, Ok(()))) if shutdown.is_cancelled() => {}
                    Some((service, Ok(()))) => anyhow::bail!("{} stopped unexpectedly", service.name()),
                    Some((_, Err(error))) => return Err(error),
                    None => break,
                }
            }
            finished = tasks.join_next(), if !tasks.is_empty() => {
                match finished {
                    Some(Ok(Ok(name))) if shutdown.is_cancelled() => { let _ = name; }
                    Some(Ok(Ok(name))) => anyhow::bail!("{name} stopped unexpectedly"),
                    Some(Ok(Err(error))) => return Err(error),
                    Some(Err(join)) => return Err(anyhow::Error::new(join).context("a demo task failed")),
                    None => break,
                }
            }
            _ = ticker.tick() => {}
        }
        let elapsed = started.elapsed();
        if args.run_for.is_some_and(|limit| elapsed >= limit) {
            break;
        }
        // The batch layer runs again every three phases, each run moving the horizon on.
        if recompute.is_none() && elapsed >= next_recompute {
            next_recompute = elapsed + 3 * phase;
            if recompute_line.is_none() {
                milestones.push(format!(
                    "[{:>3} s] recomputing page_views over the archived history every {} s (runnel backfill --mode recompute)",
                    elapsed.as_secs(),
                    (3 * phase).as_secs()
                ));
            }
            let (config, store, progress) = (
                config.clone(),
                Arc::clone(&store),
                Arc::clone(&recompute_progress),
            );
            recompute = Some(tokio::spawn(async move {
                let job_config = config
                    .jobs
                    .iter()
                    .find(|job| job.name == "page_views")
                    .context("page_views is declared")?;
                let job = runnel_jobs::Job::compile(&config, job_config)?;
                let outcome = recompute_view(
                    &config,
                    &job,
                    RecomputeRequest {
                        from_ms: None,
                        to_ms: None,
                        workers: 2,
                        allow_shrink: false,
                    },
                    store,
                    progress,
                )
                .await?;
                Ok(format!(
                    "batch view of page_views: {} windows complete up to {}, from {} events",
                    outcome.view.files.iter().map(|file| file.rows).sum::<u64>(),
                    outcome.view.horizon_ms.map_or("-".to_string(), clock),
                    outcome.view.events
                ))
            }));
        }
        if recompute
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
            && let Some(done) = recompute.take()
        {
            let message = match done.await {
                Ok(Ok(message)) => message,
                Ok(Err(error)) => format!("recompute failed: {error:#}"),
                Err(join) => format!("recompute failed: {join}"),
            };
            let line = format!("[{:>3} s] {message}", elapsed.as_secs());
            match recompute_line {
                Some(index) => milestones[index] = line,
                None => {
                    recompute_line = Some(milestones.len());
                    milestones.push(line);
                }
            }
        }
        if !replay_started && elapsed >= phase {
            replay_started = true;
            milestones.push(format!(
                "[{:>3} s] user_sessions changed (session gap 5 s -> 10 s): replaying version 2 over the history, then the live log",
                elapsed.as_secs()
            ));
            let (config, log, store, progress, shutdown) = (
                serving_config.clone(),
                Arc::clone(&log),
                Arc::clone(&store),
                Arc::clone(&replay_progress),
                services_shutdown.clone(),
            );
            tasks.spawn(async move {
                let job_config = config
                    .jobs
                    .iter()
                    .find(|job| job.name == "user_sessions" && job.version == 2)
                    .context("user_sessions v2 is declared")?
                    .clone();
                replay(&config, &job_config, log, store, progress, false, shutdown)
                    .await
                    .context("replay user_sessions v2")?;
                Ok("replay")
            });
        }
        let frame = match frame(&mut client, started, &counters, &milestones).await {
            Ok(frame) => frame,
            Err(error) => format!("(serving not ready yet: {error})\n"),
        };
        if replay_started && !switched && replay_progress.caught_up.load(Ordering::Relaxed) {
            switched = frame.contains("from job version 2");
            if switched {
                milestones.push(format!(
                    "[{:>3} s] user_sessions version 2 caught up and is now the active version: serving switched to it",
                    elapsed.as_secs()
                ));
            }
        }
        let mut stdout = std::io::stdout().lock();
        if plain {
            writeln!(stdout, "{frame}{}", "-".repeat(72))?;
        } else {
            write!(stdout, "\x1b[2J\x1b[H{frame}")?;
        }
        stdout.flush()?;
    }
    services_shutdown.cancel();
    while let Some(finished) = tasks.join_next().await {
        if let Ok(Err(error)) = finished {
            tracing::warn!(error = %format!("{error:#}"), "a demo task failed while stopping");
        }
    }
    if let Err(error) = services.wait().await {
        tracing::warn!(error = %format!("{error:#}"), "a service failed while stopping");
    }
    writeln!(std::io::stdout().lock(), "demo stopped")?;
    Ok(())
}
