//! `runnel demo`: the whole platform in one process on the embedded defaults.
//!
//! The four services run as tasks over one embedded log in a fresh folder. A generator
//! sends a click stream (users clicking in bursts, popular and rare pages, about 2% of the
//! events late by 5 to 60 s) and the users' plans (the changelog of the table `users`) to the
//! ingest service over gRPC; four jobs run on them (tumbling page views, hopping country
//! traffic, user sessions, and clicks per user joined with the user's plan as of each
//! click). Every second the terminal shows what
//! the serving service answers over gRPC. After one phase the demo replays version 2 of
//! `user_sessions` (a longer session gap), which becomes the active version once it has
//! caught up with the live log; every three it recomputes `page_views` over the archived
//! history (its older windows then come from the batch view). Ctrl-C (or `--for`) stops
//! everything.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use runnel::supervisor::{RestartPolicy, Service, Supervisor};
use runnel_batch_reprocessor::recompute::{Progress, RecomputeRequest, recompute_view};
use runnel_batch_reprocessor::replay::{ReplayProgress, replay};
use runnel_config::Config;
use runnel_proto::client::{ClientEndpoint, connect};
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use runnel_proto::serving::v1::serving_client::ServingClient;
use runnel_time::now_millis;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod generator;
mod screen;

use generator::{Generated, generate};
use screen::{clock, frame};

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

[[jobs]]
name = "user_plans"
sql = """
SELECT c.user_id, u.plan, window_start, window_end, COUNT(*) AS clicks
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND) AS c
LEFT JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id
GROUP BY c.user_id, u.plan, window_start, window_end
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
