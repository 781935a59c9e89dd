//! The `runnel` CLI: runs any service, all of them in one process, and works on the log.
//!
//! Flags are parsed here, config is loaded once and passed down; each service runs through
//! its library's `run`. `runnel ingest` is the ingest service's client, `runnel backfill`
//! runs the batch-reprocessor's backfills, and `runnel query` and `runnel results` are
//! serving's clients.

mod client;
mod commands;
mod input;
mod terminal;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use runnel::supervisor::{RestartPolicy, Service, Supervisor};
use runnel_config::Config;
use tokio_util::sync::CancellationToken;

use crate::commands::archive::ArchiveArgs;
use crate::commands::backfill::BackfillArgs;
use crate::commands::demo::DemoArgs;
use crate::commands::health::HealthArgs;
use crate::commands::ingest::IngestArgs;
use crate::commands::log::LogCommand;
use crate::commands::query::{QueryArgs, ResultsCommand};
use crate::commands::run::RunArgs;
use crate::commands::{archive, backfill, demo, health, ingest, log, query, run};

/// mimalloc rather than the system allocator: Arrow and DataFusion allocate a buffer per
/// column per batch, and glibc's malloc returned them to the kernel only to fault them in
/// again (a tenth of a recompute's time went to page faults, memset and memmove).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// runnel, a stream-processing platform: four services over one log.
///
/// Configuration is layered: the embedded defaults (see `runnel config`), then each
/// `--config FILE` in order, then `RUNNEL__SECTION__KEY` environment variables, e.g.
/// `RUNNEL__STORAGE__DATA_DIR=/tmp/runnel` or `RUNNEL__STORAGE__LOG__BACKEND=kafka`.
/// Logs go to stderr. The services (`ingest-service`, `stream-processor`,
/// `batch-reprocessor`, `serving`, `all`, `archive`) log at INFO; the client commands log
/// only warnings and errors unless `-v` (INFO) or `-vv` (DEBUG); `RUST_LOG` overrides both.
/// Colours only on a terminal, and never with `NO_COLOR` set.
#[derive(Debug, Parser)]
#[command(name = "runnel", version, propagate_version = true)]
struct Cli {
    /// A config file layered over the embedded defaults; repeat it to layer several, the
    /// last one winning. Goes before the subcommand: `runnel --config a.toml all`. Without
    /// it, the file `RUNNEL_CONFIG` names, if set (as in the container images).
    // Not `global`: clap does not merge a repeated global argument given on both sides of
    // the subcommand, it drops the parent's values (clap-rs/clap#3938), which would
    // silently ignore a config file. Here a misplaced `--config` is an error instead.
    #[arg(long = "config", value_name = "FILE", env = "RUNNEL_CONFIG")]
    config: Vec<PathBuf>,
    /// Writes logs to stderr as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    /// Logs more: `-v` logs INFO from client commands, `-vv` DEBUG (services: one level
    /// above their INFO). `RUST_LOG`, when set, decides instead.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the ingest service: events in over gRPC and HTTP, validated, appended to the log.
    ///
    /// Listens on `ingest.listen` for gRPC (`runnel.ingest.v1.Ingest`) and HTTP
    /// (`POST /v1/streams/{stream}/events`, NDJSON or a JSON array). Rejected events go to
    /// `<stream>.dead-letter` with their reason.
    IngestService,
    /// Runs the stream-processor service: the configured `[[jobs]]` on the live log.
    ///
    /// Results go to `<job>.results` as upserts and late events to `<job>.late`; tasks
    /// checkpoint to the object store and resume there after a crash. On Kafka, instances
    /// started with the same config share each job's partitions. Metrics on
    /// `stream-processor.metrics-listen` (`/metrics`, `/status`).
    StreamProcessor,
    /// Runs the batch-reprocessor service, which has no standing work: backfills run from `runnel backfill`.
    ///
    /// Backfills run with `runnel backfill`; the service opens the log, ensures every
    /// declared stream's topic and waits for Ctrl-C.
    BatchReprocessor,
    /// Runs the serving service: job results over gRPC, batch and speed views merged.
    ///
    /// Listens on `serving.listen` (`runnel.serving.v1.Serving`, with the standard health and
    /// reflection services). Windows ending by a batch view's horizon come from the batch
    /// view (`runnel backfill --mode recompute`), later ones from the results topics; each
    /// job answers from its active version. Query it with `runnel query`. Prometheus metrics
    /// on `serving.metrics-listen` (`/metrics`).
    Serving,
    /// Runs all four services in this process over one shared log, until Ctrl-C.
    ///
    /// This is the embedded default: one process, the log in `<data-dir>/log`. The log is
    /// opened once and shared by the services. It runs the config's `[[jobs]]`: by default
    /// the example jobs of `config/jobs/` over the example stream `clicks`. A service that
    /// fails is restarted (at most 5 times) while the others go on.
    All,
    /// Prints the effective configuration: defaults, files and environment merged, with
    /// secrets shown as "<redacted>".
    ///
    /// Redacted: `auth-token` values, and every value of `storage.object-store-options` and
    /// `storage.log.kafka.properties` whose key has a word (split at `_`, `.`, `-`) that is
    /// `key`, `token`, `secret`, `password`, `passwd`, `credential(s)`, `sas` or `signature`,
    /// or contains `secret`, `password` or `token` (`aws_access_key_id`,
    /// `aws_secret_access_key`, `sasl.password`, `ssl.key.pem`).
    Config,
    /// Runs one windowed SQL job over a file of events and writes its results.
    ///
    /// In live mode the events stream through the window operator in file order, as if
    /// they arrived on the log: results carry their versions, and late events go to a
    /// second file beside the results. Example:
    /// `runnel run --sql job.sql --input events.jsonl --out results.jsonl --max-out-of-orderness 5s`
    Run(RunArgs),
    /// Works on the log directly: appends records, tails a partition, shows offsets; checks
    /// and repairs the embedded log's files.
    ///
    /// Opens the log that the config selects (embedded or Kafka), with every declared
    /// stream's topic, as the services do; `check` and `repair` read the embedded log's
    /// folder without opening it, so they work when damage keeps it from opening.
    #[command(subcommand)]
    Log(LogCommand),
    /// Copies every stream's log into Parquet history on the object store.
    ///
    /// The ingest service runs the archiver itself (`ingest.run-archiver`); this runs it
    /// alone. Files go to `<object store>/<archive.prefix>/<stream>/date=YYYY-MM-DD/`, listed
    /// in `<stream>/_manifest.json`. Safe to kill at any point: a restart resumes without
    /// gaps or duplicates. A partition whose log is corrupt waits for `runnel log repair`
    /// while the others go on; `archive.metrics-listen` serves `/metrics` and `/status`.
    Archive(ArchiveArgs),
    /// Sends a file of events to the ingest service over gRPC and prints what it accepted.
    ///
    /// `.jsonl` lines go as they are; `.csv` and `.parquet` rows are sent as JSON objects.
    /// Example: `runnel ingest --stream clicks --file events.jsonl`. A progress bar shows on
    /// a terminal; the summary is `accepted N, rejected M` with the first reasons. Exits
    /// non-zero if the service cannot be reached or refuses the stream.
    Ingest(IngestArgs),
    /// Runs a job over its history: a batch view (recompute) or the live operator (replay).
    ///
    /// `--mode recompute` runs the job's DataFusion batch plan over the Parquet history
    /// between --from and --to, every archived event counted, and replaces the batch view
    /// `views/<job>/<version>/` (Parquet files and `_manifest.json` with the view's horizon).
    /// `--mode replay` runs the version with the live operator over the history and then
    /// the live log, resuming from its checkpoints; once caught up with the log it becomes
    /// the job's active version (`jobs/<job>/active.json`) and runs on live until Ctrl-C (or
    /// exits, with --stop-when-caught-up).
    /// Example: `runnel backfill --job views --mode recompute --workers 4`.
    // `--version` is the job's version here, not runnel's.
    #[command(disable_version_flag = true)]
    Backfill(BackfillArgs),
    /// Queries the serving service: a key's windows, one window's keys, top k, jobs, live
    /// updates.
    ///
    /// Examples: `runnel query windows --job page_views --key u1`,
    /// `runnel query window --job page_views --start 2026-11-22T10:00:00Z --all`,
    /// `runnel query topk --job page_views --start 2026-11-22T10:00:00Z --by views --k 5`,
    /// `runnel query jobs`, `runnel query subscribe --job page_views --format jsonl`.
    Query(QueryArgs),
    /// Works on job results through the serving service.
    #[command(subcommand)]
    Results(ResultsCommand),
    /// Runs the whole platform in this process with a generated click stream and shows
    /// live results read over gRPC; then a recompute and a new job version's replay.
    ///
    /// Needs nothing but this binary: the embedded log and a local object store in a fresh
    /// temporary folder (deleted at the end). The demo's own config is layered over the
    /// embedded defaults (`--config` files are not read; `RUNNEL__*` variables are).
    /// Ctrl-C stops it. Example: `cargo run --release -p runnel -- demo`.
    Demo(DemoArgs),
    /// Asks a service of this config, on this machine, whether it is ready: exit status 0
    /// when it is, otherwise an error that says why. For container health checks.
    ///
    /// ingest and serving: their gRPC health service answers SERVING (serving only once it
    /// has loaded its views and caught up). stream-processor: `GET /status` on
    /// `stream-processor.metrics-listen` answers, and no job has been given up. Example:
    /// `runnel health serving`.
    Health(HealthArgs),
}

impl Command {
    /// Whether this command is a long-running service (or the demo's screen) rather than a
    /// client command that does its work and exits.
    fn is_service(&self) -> bool {
        match self {
            Command::IngestService
            | Command::StreamProcessor
            | Command::BatchReprocessor
            | Command::Serving
            | Command::All
            | Command::Archive(_)
            | Command::Demo(_) => true,
            Command::Config
            | Command::Run(_)
            | Command::Log(_)
            | Command::Ingest(_)
            | Command::Backfill(_)
            | Command::Query(_)
            | Command::Results(_)
            | Command::Health(_) => false,
        }
    }

    /// The log filter when `RUST_LOG` is unset: services log state changes at INFO; client
    /// commands and the demo (whose screen the logs would scroll away) only warnings. Each
    /// `-v` logs one level more.
    fn default_log_filter(&self, verbose: u8) -> &'static str {
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        let base = match self {
            Command::Demo(_) => 1,
            command if command.is_service() => 2,
            _ => 1,
        };
        LEVELS[(base + usize::from(verbose)).min(LEVELS.len() - 1)]
    }

    /// Returns the service name this command logs under.
    fn service_name(&self) -> &'static str {
        match self {
            Command::IngestService => runnel_ingest::SERVICE_NAME,
            Command::StreamProcessor => runnel_stream_processor::SERVICE_NAME,
            Command::BatchReprocessor => runnel_batch_reprocessor::SERVICE_NAME,
            Command::Serving => runnel_serving::SERVICE_NAME,
            Command::All
            | Command::Config
            | Command::Run(_)
            | Command::Log(_)
            | Command::Archive(_)
            | Command::Ingest(_)
            | Command::Backfill(_)
            | Command::Query(_)
            | Command::Results(_)
            | Command::Health(_)
            | Command::Demo(_) => "runnel",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let log_filter = cli.command.default_log_filter(cli.verbose);
    if let Command::Demo(args) = cli.command {
        runnel_server_common::init_tracing_with_default("runnel", cli.log_json, log_filter);
        let env = runnel_server_common::process_env()?;
        return demo::run(args, &env).await;
    }
    let config = runnel_server_common::load_config(&cli.config)?;
    runnel_server_common::init_tracing_with_default(
        cli.command.service_name(),
        cli.log_json,
        log_filter,
    );
    match cli.command {
        Command::IngestService => {
            let shutdown = shutdown_on_signal()?;
            runnel_ingest::run(config, shutdown)
                .await
                .context("run ingest service")?;
        }
        Command::StreamProcessor => {
            let shutdown = shutdown_on_signal()?;
            runnel_stream_processor::run(config, shutdown)
                .await
                .context("run stream-processor service")?;
        }
        Command::BatchReprocessor => {
            let shutdown = shutdown_on_signal()?;
            runnel_batch_reprocessor::run(config, shutdown)
                .await
                .context("run batch-reprocessor service")?;
        }
        Command::Serving => {
            let shutdown = shutdown_on_signal()?;
            runnel_serving::run(config, shutdown)
                .await
                .context("run serving service")?;
        }
        Command::All => {
            let shutdown = shutdown_on_signal()?;
            run_all(config, shutdown).await?;
        }
        Command::Config => print_config(&config)?,
        Command::Run(args) => {
            tokio::task::spawn_blocking(move || run::run(args, &config))
                .await
                .context("run the job")??;
        }
        Command::Log(log_command) => log::run(log_command, &config).await?,
        Command::Archive(args) => archive::run(args, &config).await?,
        Command::Ingest(args) => ingest::run(args, &config).await?,
        Command::Backfill(args) => backfill::run(args, &config).await?,
        Command::Query(args) => query::run_query(args, &config).await?,
        Command::Results(command) => query::run_results(command, &config).await?,
        Command::Health(args) => health::run(args, &config).await?,
        Command::Demo(_) => unreachable!("the demo runs above, on its own config"),
    }
    Ok(())
}

fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    runnel_server_common::shutdown_on_signal().context("install signal handlers")
}

/// Runs the four services as tasks of this process over one log until `shutdown` is
/// cancelled, restarting one that fails ([`RestartPolicy::RESTART`]: a failing
/// stream-processor or serving never stops ingest). Returns once every service has stopped:
/// the first error, if any service gave up or failed while stopping.
async fn run_all(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let log = runnel_server_common::open_storage(&config)
        .await
        .context("open storage")?;
    let services = Service::ALL
        .into_iter()
        .map(|service| (service, config.clone()))
        .collect();
    let result = Supervisor::start(&log, services, RestartPolicy::RESTART, shutdown)
        .wait()
        .await;
    log.close().await;
    result
}

/// Prints `config` in Rust's debug notation (`Config` is deserialize-only), its secrets
/// redacted.
fn print_config(config: &Config) -> anyhow::Result<()> {
    use std::io::Write;
    let config = redact_secrets(config);
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{config:#?}") {
        Ok(()) => Ok(()),
        // The reader of our output is gone (`runnel config | head`): done.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(anyhow::Error::new(error).context("write to stdout")),
    }
}

/// What `runnel config` prints instead of a secret.
const REDACTED: &str = "<redacted>";

/// `config` with its secrets replaced by [`REDACTED`]: the services' `auth-token`s, and the
/// options of the object store and of Kafka whose key names a secret ([`is_secret_key`]).
fn redact_secrets(config: &Config) -> Config {
    let mut config = config.clone();
    for token in [
        &mut config.ingest.auth_token,
        &mut config.serving.auth_token,
    ]
    .into_iter()
    .flatten()
    {
        *token = REDACTED.to_string();
    }
    for options in [
        &mut config.storage.object_store_options,
        &mut config.storage.log.kafka.properties,
    ] {
        for (key, value) in options.iter_mut() {
            if is_secret_key(key) {
                *value = REDACTED.to_string();
            }
        }
    }
    config
}

/// Whether an option's key names a secret: one of its words (split at anything but letters
/// and digits) is `key`, `token`, `secret`, `password`, `passwd`, `credential(s)`, `sas` or
/// `signature`, or the key contains `secret`, `password` or `token` anywhere. When in doubt
/// this hides: `ssl.key.location` is a path, and redacted too.
fn is_secret_key(key: &str) -> bool {
    const WORDS: [&str; 9] = [
        "key",
        "token",
        "secret",
        "password",
        "passwd",
        "credential",
        "credentials",
        "sas",
        "signature",
    ];
    let key = key.to_ascii_lowercase();
    ["secret", "password", "token"]
        .iter()
        .any(|part| key.contains(part))
        || key
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| WORDS.contains(&word))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_files_go_before_the_subcommand_and_log_json_anywhere() {
        let cli = Cli::try_parse_from([
            "runnel",
            "--config",
            "a.toml",
            "--config",
            "b.toml",
            "all",
            "--log-json",
        ])
        .expect("valid flags");
        assert_eq!(
            cli.config,
            [PathBuf::from("a.toml"), PathBuf::from("b.toml")]
        );
        assert!(cli.log_json);
        assert!(matches!(cli.command, Command::All));
        let cli = Cli::try_parse_from(["runnel", "--log-json", "config"]).expect("valid flags");
        assert!(cli.log_json);
        assert!(Cli::try_parse_from(["runnel", "all", "--config", "a.toml"]).is_err());
    }

    #[test]
    fn client_commands_log_warnings_and_services_info_unless_verbose() {
        let filter = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("valid flags");
            cli.command.default_log_filter(cli.verbose)
        };
        assert_eq!(filter(&["runnel", "config"]), "warn");
        assert_eq!(filter(&["runnel", "query", "jobs"]), "warn");
        assert_eq!(filter(&["runnel", "-v", "query", "jobs"]), "info");
        assert_eq!(filter(&["runnel", "query", "jobs", "-vv"]), "debug");
        assert_eq!(filter(&["runnel", "all"]), "info");
        assert_eq!(filter(&["runnel", "serving", "-v"]), "debug");
        assert_eq!(filter(&["runnel", "archive"]), "info");
        assert_eq!(filter(&["runnel", "demo"]), "warn");
        assert_eq!(filter(&["runnel", "-vvvvv", "all"]), "trace");
    }

    #[test]
    fn secret_keys_are_recognised() {
        for secret in [
            "aws_access_key_id",
            "aws_secret_access_key",
            "AWS_SESSION_TOKEN",
            "azure_storage_account_key",
            "google_service_account_key",
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "azure_storage_sas_key",
            "bearer_token",
            "private-key",
        ] {
            assert!(is_secret_key(secret), "{secret}");
        }
        for plain in [
            "aws_region",
            "aws_endpoint",
            "aws_allow_http",
            "bucket",
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "keyspace",
        ] {
            assert!(!is_secret_key(plain), "{plain}");
        }
    }

    #[test]
    fn config_printout_redacts_secrets() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let file = dir.path().join("secrets.toml");
        std::fs::write(
            &file,
            r#"
[storage.object-store-options]
aws_access_key_id = "AKIAS3CR3T"
aws_secret_access_key = "aws-s3cr3t"
aws_region = "eu-west-1"
[storage.log.kafka.properties]
"sasl.password" = "kafka-s3cr3t"
"security.protocol" = "SASL_SSL"
"#,
        )
        .expect("write config");
        let env = [
            ("RUNNEL__INGEST__AUTH_TOKEN", "ingest-s3cr3t"),
            ("RUNNEL__SERVING__AUTH_TOKEN", "serving-s3cr3t"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
        let config = Config::load(&[file], &env).expect("valid config");
        let printed = format!("{:#?}", redact_secrets(&config));
        assert!(!printed.to_lowercase().contains("s3cr3t"), "{printed}");
        assert_eq!(printed.matches("\"<redacted>\"").count(), 5, "{printed}");
        assert!(printed.contains("\"eu-west-1\""), "{printed}");
        assert!(printed.contains("\"SASL_SSL\""), "{printed}");
    }

    #[test]
    fn a_subcommand_is_required() {
        assert!(Cli::try_parse_from(["runnel"]).is_err());
    }

    #[tokio::test]
    async fn all_opens_the_log_and_stops_on_shutdown() {
        let data_dir = tempfile::tempdir().expect("create temp dir");
        let env = [
            (
                "RUNNEL__STORAGE__DATA_DIR".to_string(),
                data_dir.path().display().to_string(),
            ),
            // A free port, so that the test runs beside a service on the default one.
            (
                "RUNNEL__INGEST__LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            (
                "RUNNEL__STREAM_PROCESSOR__METRICS_LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            (
                "RUNNEL__SERVING__LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
            (
                "RUNNEL__SERVING__METRICS_LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
        ]
        .into_iter()
        .collect();
        let config = Config::load(&[], &env).expect("valid config");
        let shutdown = CancellationToken::new();
        let all = tokio::spawn(run_all(config, shutdown.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!all.is_finished(), "services stopped before shutdown");
        shutdown.cancel();
        let res = tokio::time::timeout(std::time::Duration::from_secs(10), all)
            .await
            .expect("services stop within 10 s after shutdown")
            .expect("run_all does not panic");
        res.expect("services stop cleanly");
        assert!(data_dir.path().join("log").is_dir(), "embedded log created");
    }
}
