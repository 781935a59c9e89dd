//! `runnel backfill`: a job over its history, as a batch view (recompute) or through the
//! live operator (replay).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use runnel_batch_reprocessor::BatchError;
use runnel_batch_reprocessor::recompute::{Progress, RecomputeRequest, recompute_view};
use runnel_batch_reprocessor::replay::{ReplayOutcome, ReplayProgress};
use runnel_config::Config;
use runnel_time::{format_millis, parse_time_flag};
use tracing::warn;

use crate::client::ClientArgs;
use crate::terminal::progress_bar;

/// How a backfill runs the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// The live operator over the history, then the live log (Kappa): the same results,
    /// versions and late events as the live run.
    Replay,
    /// The DataFusion batch plan over the history between --from and --to (Lambda's batch
    /// layer): every archived event counted, into the batch view `views/<job>/<version>/`.
    Recompute,
}

/// Arguments of `runnel backfill`.
#[derive(Debug, Args)]
pub(crate) struct BackfillArgs {
    /// The job, by its `[[jobs]]` name (or its name in the job catalog, where earlier
    /// backfills registered their versions).
    #[arg(long)]
    job: String,
    /// The job's version, declared in the config or registered by an earlier backfill;
    /// default: the highest one.
    #[arg(long)]
    version: Option<u32>,
    /// Defines --version (required with it) from this SQL file instead of a `[[jobs]]`
    /// entry, with the other options (lateness, out-of-orderness, ...) of the job's highest
    /// known version (none, for a new job). The backfill registers it in the job catalog, so
    /// the running services serve it, and run it once a replay makes it active.
    #[arg(long, value_name = "FILE", requires = "version")]
    sql: Option<std::path::PathBuf>,
    /// Leaves out windows starting before this: RFC 3339 (`2026-11-01T00:00:00Z`), epoch
    /// milliseconds, or relative to now (`-24h`). Default: from the first archived event.
    #[arg(long, value_parser = parse_time_flag)]
    from: Option<i64>,
    /// Reads no event at or after this (same forms as --from). Default: up to the history's
    /// horizon.
    #[arg(long, value_parser = parse_time_flag)]
    to: Option<i64>,
    /// replay or recompute.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Recompute: how many ways the history's files are split, aggregated in parallel and
    /// merged. The view is the same for any number. (A replay runs one task per partition.)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    workers: u16,
    /// Replay: exit once caught up with the live log (and the version made active) instead
    /// of going on live until Ctrl-C.
    #[arg(long)]
    stop_when_caught_up: bool,
    /// Recompute: replace the batch view even if the new one holds fewer windows or events
    /// than the one it replaces (a narrower --from/--to, a history that lost events). Without
    /// it such a recompute fails and the previous view stays.
    #[arg(long)]
    allow_shrink: bool,
    /// Recompute: do not first ask the ingest service answering on `ingest.listen` to
    /// archive what the log holds now (`runnel archive --flush`).
    #[arg(long)]
    no_flush: bool,
}

/// The job version `args` names: declared in the config or registered in `catalog`, or
/// defined by `--sql`.
fn job_version(
    args: &BackfillArgs,
    catalog: &runnel_jobs::Catalog,
) -> anyhow::Result<runnel_config::JobConfig> {
    let known: Vec<&runnel_jobs::CatalogVersion> = catalog.versions_of(&args.job).collect();
    let listed = |versions: &[&runnel_jobs::CatalogVersion]| -> String {
        let names: Vec<String> = versions
            .iter()
            .map(|version| {
                let origin = if version.declared {
                    "declared"
                } else {
                    "registered"
                };
                format!("{} ({origin})", version.job.id())
            })
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    if let Some(path) = &args.sql {
        let Some(version) = args.version else {
            anyhow::bail!("--sql defines a version: give it with --version");
        };
        let sql = std::fs::read_to_string(path)
            .with_context(|| format!("--sql: read {}", path.display()))?;
        let same = known.iter().find(|known| known.job.version == version);
        let mut job = match same.or(known.last()) {
            Some(base) => base.job.clone(),
            None => runnel_config::JobConfig {
                name: args.job.clone(),
                version,
                sql: None,
                sql_file: None,
                embedded_sql: None,
                max_out_of_orderness: Duration::ZERO,
                allowed_lateness: Duration::ZERO,
                early_emit_interval: None,
                idle_timeout: None,
            },
        };
        job.version = version;
        job.sql = Some(sql);
        job.sql_file = None;
        job.embedded_sql = None;
        if let Some(same) = same
            && same.declared
        {
            let declared = runnel_jobs::RegisteredVersion::of(&same.job, 0)?;
            let given = runnel_jobs::RegisteredVersion::of(&job, 0)?;
            if let Some(difference) = declared.difference(&given) {
                anyhow::bail!(
                    "--sql: job `{}` version {version} is declared in the config with {difference}; \
                     give another --version",
                    args.job
                );
            }
        }
        return Ok(job);
    }
    let Some(latest) = known.last() else {
        let every: Vec<&runnel_jobs::CatalogVersion> = catalog.versions.values().collect();
        anyhow::bail!(
            "--job: no job `{}` is declared or registered (known: {}); declare it in `[[jobs]]` \
             of a config file, or define a version with --version and --sql",
            args.job,
            listed(&every)
        );
    };
    let version = args.version.unwrap_or(latest.job.version);
    match known.iter().find(|known| known.job.version == version) {
        Some(found) => Ok(found.job.clone()),
        None => anyhow::bail!(
            "--version: job `{}` has no version {version} (known: {}); declare it in `[[jobs]]`, \
             or define it with --sql",
            args.job,
            listed(&known)
        ),
    }
}

/// Runs the backfill `args` describes.
pub(crate) async fn run(args: BackfillArgs, config: &Config) -> anyhow::Result<()> {
    let store = runnel_archive::open_object_store(
        &config.object_store_url(),
        &config.storage.object_store_options,
    )
    .context("open the object store")?;
    let catalog = runnel_jobs::Catalog::load(store.as_ref(), config)
        .await
        .context("read the job catalog")?;
    // A conflict of the chosen version with its registration fails the backfill when it
    // registers the version; the others are not this backfill's business.
    let job_config = job_version(&args, &catalog)?;
    let job_config = &job_config;
    if let (Some(from), Some(to)) = (args.from, args.to)
        && from >= to
    {
        anyhow::bail!("--from ({from}) must be before --to ({to})");
    }
    match args.mode {
        Mode::Recompute => {
            let job = runnel_jobs::Job::compile(config, job_config)
                .with_context(|| format!("compile job `{}`", job_config.id()))?;
            recompute(config, &job, &args, store).await
        }
        Mode::Replay => {
            if args.from.is_some() || args.to.is_some() {
                anyhow::bail!(
                    "--from and --to are for --mode recompute: a replay runs from the version's \
                     checkpoint, or from the first archived event, to the live log"
                );
            }
            if args.allow_shrink {
                anyhow::bail!(
                    "--allow-shrink is for --mode recompute: a replay writes no batch view"
                );
            }
            replay(config, job_config, store, args.stop_when_caught_up).await
        }
    }
}

async fn replay(
    config: &Config,
    job_config: &runnel_config::JobConfig,
    store: Arc<dyn object_store::ObjectStore>,
    stop_when_caught_up: bool,
) -> anyhow::Result<()> {
    // Installed before opening the log, so Ctrl-C during a slow open still stops cleanly.
    let shutdown = runnel_server_common::shutdown_on_signal().context("install signal handlers")?;
    let log = runnel_server_common::open_storage(config)
        .await
        .context("open storage")?;
    let progress = Arc::new(ReplayProgress::default());
    let started = Instant::now();
    let work = runnel_batch_reprocessor::replay::replay(
        config,
        job_config,
        log,
        store,
        Arc::clone(&progress),
        stop_when_caught_up,
        shutdown,
    );
    let mut work = std::pin::pin!(work);
    let bar = progress_bar(0);
    let mut announced = false;
    let outcome = loop {
        tokio::select! {
            done = &mut work => break done.context("replay")?,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                bar.set_length(progress.events_total.load(Ordering::Relaxed));
                bar.set_position(progress.events_done.load(Ordering::Relaxed));
                if progress.caught_up.load(Ordering::Relaxed) && !announced {
                    announced = true;
                    bar.finish_and_clear();
                    if !stop_when_caught_up {
                        writeln!(
                            std::io::stdout().lock(),
                            "job {} version {} caught up with the live log in {:.1}s and is now active; \
                             running live until Ctrl-C",
                            job_config.name,
                            job_config.version,
                            started.elapsed().as_secs_f64()
                        )
                        .context("write to stdout")?;
                        let (config, job, version) =
                            (config.clone(), job_config.name.clone(), job_config.version);
                        tokio::spawn(async move {
                            if let Err(error) = await_serving_switch(&config, &job, version).await {
                                warn!("{error:#}");
                            }
                        });
                    }
                }
            }
        }
    };
    bar.finish_and_clear();
    let events = progress.events_done.load(Ordering::Relaxed);
    let line = match outcome {
        ReplayOutcome::CaughtUp => format!(
            "job {} version {} replayed {events} events and caught up with the live log in {:.1}s; \
             it is now active",
            job_config.name,
            job_config.version,
            started.elapsed().as_secs_f64()
        ),
        ReplayOutcome::Stopped => format!(
            "replay of job {} version {} stopped after {events} events ({}); it resumes from its \
             checkpoints",
            job_config.name,
            job_config.version,
            if progress.caught_up.load(Ordering::Relaxed) {
                "caught up"
            } else {
                "not caught up yet"
            }
        ),
    };
    writeln!(std::io::stdout().lock(), "{line}").context("write to stdout")?;
    if outcome == ReplayOutcome::CaughtUp {
        await_serving_switch(config, &job_config.name, job_config.version).await?;
    }
    Ok(())
}

async fn recompute(
    config: &Config,
    job: &runnel_jobs::Job,
    args: &BackfillArgs,
    store: Arc<dyn object_store::ObjectStore>,
) -> anyhow::Result<()> {
    if !args.no_flush {
        flush_first(config).await?;
    }
    let progress = Arc::new(Progress::default());
    let request = RecomputeRequest {
        from_ms: args.from,
        to_ms: args.to,
        workers: usize::from(args.workers),
        allow_shrink: args.allow_shrink,
    };
    let started = Instant::now();
    let work = recompute_view(
        config,
        job,
        request,
        Arc::clone(&store),
        Arc::clone(&progress),
    );
    let mut work = std::pin::pin!(work);
    let bar = progress_bar(0);
    let outcome = loop {
        tokio::select! {
            done = &mut work => break match done {
                Ok(outcome) => outcome,
                Err(error @ BatchError::WouldShrink { .. }) => {
                    bar.finish_and_clear();
                    anyhow::bail!("recompute: {error}; pass --allow-shrink to replace it anyway");
                }
                Err(error) => return Err(anyhow::Error::new(error).context("recompute")),
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                bar.set_length(progress.events_total.load(Ordering::Relaxed));
                bar.set_position(progress.events_done.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "files {}/{}",
                    progress.files_done.load(Ordering::Relaxed),
                    progress.files_total.load(Ordering::Relaxed)
                ));
            }
        }
    };
    bar.finish_and_clear();
    let view = &outcome.view;
    let rows = view.windows();
    let horizon = view
        .horizon_ms
        .map_or_else(|| "none (nothing archived yet)".to_string(), format_millis);
    writeln!(
        std::io::stdout().lock(),
        "batch view views/{}/{}/ generation {}: {rows} windows complete up to {horizon}, from {} \
         events in {} history files, {} chunks ({} resumed from an interrupted run), {} \
         workers, {:.1}s",
        view.job,
        view.version,
        view.generation,
        view.events,
        view.history_files,
        outcome.chunks,
        outcome.resumed_chunks,
        args.workers,
        started.elapsed().as_secs_f64()
    )
    .context("write to stdout")?;
    match unarchived_records(config, job.stream.name(), store.as_ref()).await {
        Ok(0) => {}
        Ok(unarchived) => writeln!(
            std::io::stdout().lock(),
            "{unarchived} events of `{stream}` are in the log but not yet in the history, so not \
             in this view (serving answers their windows from the live results): the archiver \
             finishes a file once its records span archive.max-file-age ({age}) or reach \
             archive.target-file-bytes; to have them, run `runnel archive --flush` (the running \
             ingest service's archiver finishes its files now), or `runnel archive --once` when \
             no ingest service is running, then recompute again",
            stream = job.stream.name(),
            age = humantime::format_duration(config.archive.max_file_age),
        )
        .context("write to stdout")?,
        Err(error) => tracing::debug!(%error, "could not count the records not yet archived"),
    }
    Ok(())
}

/// When an ingest service answers on `ingest.listen`, has its archiver finish its files at
/// the log's end as it is now, so the recompute reads every event acknowledged before. With
/// none answering, the history stays as it is (the recompute says what it left out).
async fn flush_first(config: &Config) -> anyhow::Result<()> {
    let address = crate::client::connect_address(&config.ingest.listen);
    if !answers(&address).await {
        return Ok(());
    }
    match crate::client::flush_ingest_archiver(config, &ClientArgs::default()).await {
        Ok(response) => {
            let flushed = response
                .partitions
                .iter()
                .filter(|partition| partition.flushed)
                .count();
            writeln!(
                std::io::stdout().lock(),
                "the ingest service's archiver at {address} archived what the log held first: \
                 {flushed} of {} partitions flushed",
                response.partitions.len()
            )
            .context("write to stdout")?;
        }
        Err(error) => warn!(
            "could not have the ingest service at {address} archive what the log holds first \
             ({error:#}); recomputing over the history as it is"
        ),
    }
    Ok(())
}

/// Whether something accepts connections on `address` (within 2 s).
async fn answers(address: &str) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .is_ok_and(|connected| connected.is_ok())
}

/// How long a replay that caught up waits for the serving service to answer from its
/// version (a few of serving's `view-poll-interval`s, and the rebuild of the version's
/// speed view).
const SERVING_SWITCH_WAIT: Duration = Duration::from_secs(30);

/// When a serving service answers on `serving.listen`, waits until it answers from
/// `version` of `job` (it reads the active version every `serving.view-poll-interval`), and
/// says so; one that has not switched after [`SERVING_SWITCH_WAIT`] is named in a warning.
async fn await_serving_switch(config: &Config, job: &str, version: u32) -> anyhow::Result<()> {
    let address = crate::client::connect_address(&config.serving.listen);
    if !answers(&address).await {
        return Ok(());
    }
    let mut client = match crate::client::connect_serving(config, &ClientArgs::default()).await {
        Ok(client) => client,
        Err(error) => {
            warn!(
                "could not ask the serving service at {address} which version it answers from: {error:#}"
            );
            return Ok(());
        }
    };
    let deadline = Instant::now() + SERVING_SWITCH_WAIT;
    loop {
        match client
            .list_jobs(runnel_proto::serving::v1::ListJobsRequest {})
            .await
        {
            Ok(answer) => {
                if answer
                    .get_ref()
                    .jobs
                    .iter()
                    .any(|served| served.name == job && served.active_version == version)
                {
                    writeln!(
                        std::io::stdout().lock(),
                        "the serving service at {address} answers job {job} from version {version}"
                    )
                    .context("write to stdout")?;
                    return Ok(());
                }
            }
            Err(status) => {
                warn!(
                    "could not ask the serving service at {address} which version it answers from: {}",
                    status.message()
                );
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            warn!(
                "the serving service at {address} still answers job {job} from another version \
                 after {}s; its log says why (does its config declare the job's stream?)",
                SERVING_SWITCH_WAIT.as_secs()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Records of `stream` in the log after its archived history, over every partition.
async fn unarchived_records(
    config: &Config,
    stream: &str,
    store: &dyn object_store::ObjectStore,
) -> anyhow::Result<u64> {
    let manifest = runnel_archive::load_manifest(store, &config.archive.prefix, stream).await?;
    let log = runnel_server_common::open_storage(config).await?;
    let partitions = log.partition_count(stream).await?;
    let mut unarchived = 0;
    for partition in 0..partitions {
        let end = log.latest_offset(stream, partition).await?;
        let archived = match manifest
            .as_ref()
            .and_then(|manifest| manifest.next_offset(partition))
        {
            Some(next) => next,
            None => log.earliest_offset(stream, partition).await?,
        };
        unarchived += end.saturating_sub(archived);
    }
    Ok(unarchived)
}
