//! Plumbing shared by runnel's services and the `runnel` CLI: tracing setup, shutdown on
//! signals, reading the process environment for config, and opening the log with every
//! declared stream's topic in place.
//!
//! Each service's `main` calls [`init_tracing`] and [`shutdown_on_signal`], then hands the
//! token to the service's `run`, which opens the log with [`open_storage`].
#![warn(missing_docs)]

pub mod security;

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use runnel_config::{Config, ConfigError, ENV_PREFIX, LogBackend};
use runnel_log::{Log, LogError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Everything the shared server plumbing can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A signal handler could not be installed.
    #[error("install handler for {signal}: {source}")]
    InstallSignalHandler {
        /// The signal, e.g. "SIGTERM".
        signal: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("load config: {0}")]
    Config(#[from] ConfigError),
    /// A `RUNNEL__*` environment variable is not valid UTF-8, so it cannot be a config value.
    #[error("environment variable {name} is not valid UTF-8")]
    NonUnicodeEnv {
        /// The variable's name, lossily decoded.
        name: String,
    },
}

/// The flags every service binary takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceFlags {
    /// A config file layered over the embedded defaults; repeat it to layer several, the
    /// last one winning. `RUNNEL__SECTION__KEY` environment variables override them all.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Writes logs to stderr as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// Loads the embedded defaults, then `files`, then the process's `RUNNEL__*` variables.
///
/// # Errors
///
/// [`ServerError::Config`] naming the key and layer at fault; [`ServerError::NonUnicodeEnv`].
pub fn load_config(files: &[PathBuf]) -> Result<Config, ServerError> {
    let env = process_env()?;
    Ok(Config::load(files, &env)?)
}

/// Does what a service's `main` does before `run`: loads config, sets up tracing and
/// returns the config with a token cancelled on SIGINT or SIGTERM.
///
/// # Errors
///
/// Config errors; [`ServerError::InstallSignalHandler`].
///
/// # Panics
///
/// Panics if called outside a tokio runtime.
pub fn start_service(
    service_name: &str,
    flags: &ServiceFlags,
) -> Result<(Config, CancellationToken), ServerError> {
    let config = load_config(&flags.config)?;
    init_tracing(service_name, flags.log_json);
    let shutdown = shutdown_on_signal()?;
    Ok((config, shutdown))
}

/// Runs a service whose function is not built yet: says so at WARN with `missing`, holds
/// the log open as the real service will, and returns once `shutdown` is cancelled.
pub async fn hold_until_shutdown(
    service_name: &str,
    missing: &str,
    config: &Config,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) {
    let streams: Vec<&str> = config
        .streams
        .iter()
        .map(|stream| stream.name.as_str())
        .collect();
    info!(
        service = service_name,
        backend = backend_name(config),
        ?streams,
        "service started"
    );
    warn!(
        service = service_name,
        "{missing}: the service holds the log open and does nothing else"
    );
    shutdown.cancelled().await;
    drop(log);
    info!(service = service_name, "service stopped");
}

/// Installs the global `tracing` subscriber: human-readable or JSON lines on stderr.
///
/// The filter comes from `RUST_LOG` (e.g. `RUST_LOG=runnel_log=debug,info`) and defaults to
/// `info`; an invalid `RUST_LOG` is reported and the default used. Logs one event naming
/// `service_name` so that a log file says which binary wrote it. Calling it a second time in
/// one process (as tests may) leaves the first subscriber in place.
pub fn init_tracing(service_name: &str, json: bool) {
    init_tracing_with_default(service_name, json, "info");
}

/// [`init_tracing`] with another filter than `info` when `RUST_LOG` is unset: the CLI's
/// client commands log only warnings unless asked for more (`-v`), and so does the demo's
/// screen.
///
/// Text logs are coloured only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
pub fn init_tracing_with_default(service_name: &str, json: bool, default_filter: &str) {
    let (env_filter, filter_error) = match EnvFilter::try_from_default_env() {
        Ok(env_filter) => (env_filter, None),
        Err(error) => {
            // An unset RUST_LOG is not an error worth reporting; a malformed one is.
            let is_set = std::env::var_os(EnvFilter::DEFAULT_ENV).is_some();
            (EnvFilter::new(default_filter), is_set.then_some(error))
        }
    };
    let ansi = use_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let installed = if json {
        builder.json().try_init().is_ok()
    } else {
        builder.try_init().is_ok()
    };
    if !installed {
        return;
    }
    if let Some(error) = filter_error {
        warn!(%error, "invalid RUST_LOG, logging at info");
    }
    info!(
        service = service_name,
        version = env!("CARGO_PKG_VERSION"),
        "tracing initialized"
    );
}

/// Whether text logs are coloured: on a terminal, unless `NO_COLOR` is set to anything
/// but the empty string.
fn use_colours(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Returns a token that is cancelled when the process receives SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed before this returns, and a spawned task waits for the signal.
/// A second signal after the first exits the process at once with status 130, for when a
/// graceful shutdown hangs.
///
/// # Errors
///
/// [`ServerError::InstallSignalHandler`] if a handler cannot be installed. This is an error
/// rather than a log line so that a service never runs without a way to stop it gracefully.
///
/// # Panics
///
/// Panics if called outside a tokio runtime.
pub fn shutdown_on_signal() -> Result<CancellationToken, ServerError> {
    let mut signals = Signals::install()?;
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        let signal = signals.recv().await;
        info!(signal, "received signal, shutting down");
        cancel.cancel();
        let signal = signals.recv().await;
        warn!(
            signal,
            "received a second signal, exiting without a graceful shutdown"
        );
        std::process::exit(130);
    });
    Ok(shutdown)
}

/// The installed SIGINT and SIGTERM handlers.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Result<Signals, ServerError> {
        use tokio::signal::unix::{SignalKind, signal};
        let install = |signal_name, kind| {
            signal(kind).map_err(|source| ServerError::InstallSignalHandler {
                signal: signal_name,
                source,
            })
        };
        Ok(Signals {
            interrupt: install("SIGINT", SignalKind::interrupt())?,
            terminate: install("SIGTERM", SignalKind::terminate())?,
        })
    }

    /// Waits for the next signal and returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// The installed Ctrl-C handler (no SIGTERM outside Unix).
#[cfg(not(unix))]
struct Signals {
    ctrl_c: tokio::signal::windows::CtrlC,
}

#[cfg(not(unix))]
impl Signals {
    fn install() -> Result<Signals, ServerError> {
        let ctrl_c = tokio::signal::windows::ctrl_c().map_err(|source| {
            ServerError::InstallSignalHandler {
                signal: "Ctrl-C",
                source,
            }
        })?;
        Ok(Signals { ctrl_c })
    }

    /// Waits for the next Ctrl-C.
    async fn recv(&mut self) -> &'static str {
        self.ctrl_c.recv().await;
        "Ctrl-C"
    }
}

/// Returns the process environment as the map that `Config::load` reads.
///
/// Variables that are not valid UTF-8 are skipped, unless their name starts with
/// `RUNNEL__`: such a variable was meant as config, so it is an error rather than ignored.
///
/// # Errors
///
/// [`ServerError::NonUnicodeEnv`] for a non-UTF-8 `RUNNEL__*` variable.
pub fn process_env() -> Result<HashMap<String, String>, ServerError> {
    let mut env = HashMap::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => {
                env.insert(name, value);
            }
            (Ok(name), Err(_)) if name.starts_with(ENV_PREFIX) => {
                return Err(ServerError::NonUnicodeEnv { name });
            }
            (Err(name), _) if name.to_string_lossy().starts_with(ENV_PREFIX) => {
                return Err(ServerError::NonUnicodeEnv {
                    name: name.to_string_lossy().into_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(env)
}

/// Opens the log that `config` selects and ensures a topic for every declared stream.
///
/// For the embedded backend, opening runs crash recovery (a torn tail is truncated and
/// reported). Each stream's topic is created with the stream's partition count, or checked
/// to have it.
///
/// # Errors
///
/// The [`LogError`] of opening the log, or of a stream whose topic cannot be created or
/// exists with another partition count.
pub async fn open_storage(config: &Config) -> Result<Arc<dyn Log>, LogError> {
    let log = runnel_log::open_log(config).await?;
    for stream in &config.streams {
        log.ensure_topic(&stream.name, stream.partitions).await?;
    }
    match config.storage.log.backend {
        LogBackend::Embedded => info!(
            backend = "embedded",
            dir = %config.embedded_log_dir().display(),
            n_streams = config.streams.len(),
            "storage opened"
        ),
        LogBackend::Kafka => info!(
            backend = "kafka",
            bootstrap_servers = config.storage.log.kafka.bootstrap_servers,
            n_streams = config.streams.len(),
            "storage opened"
        ),
    }
    Ok(log)
}

/// How long a service waits before it tries again to reach a log it could not reach.
const STORAGE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the object store's check may take before it counts as not answering (its client
/// retries a connection that fails for minutes by itself).
const OBJECT_STORE_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// [`open_storage`] for a service: while the log cannot be reached (a Kafka cluster that does
/// not answer, a name that does not resolve), or the object store does not answer a listing
/// of its root (a bucket that does not exist, keys it refuses, an endpoint that does not
/// answer), logs why at ERROR and tries again every 5 s rather than exit, so a deployment
/// whose broker is down or misnamed, or whose bucket is wrong, shows one clear cause in the
/// log and an unready health check instead of a crash loop. `None` once `shutdown` is
/// cancelled first.
///
/// # Errors
///
/// Those of [`open_storage`] that waiting cannot mend.
pub async fn open_storage_waiting(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<Arc<dyn Log>>, LogError> {
    let log = loop {
        match open_storage(config).await {
            Ok(log) => break log,
            Err(error) if error.is_unavailable() => {
                tracing::error!(
                    backend = backend_name(config),
                    bootstrap_servers = config.storage.log.kafka.bootstrap_servers,
                    %error,
                    retry_in_s = STORAGE_RETRY.as_secs(),
                    "cannot reach the log; not ready, trying again"
                );
            }
            Err(error) => return Err(error),
        }
        if !wait_to_retry(shutdown).await {
            return Ok(None);
        }
    };
    let url = config.object_store_url();
    while let Some(problem) = object_store_problem(config).await {
        tracing::error!(
            object_store = url,
            problem,
            retry_in_s = STORAGE_RETRY.as_secs(),
            "cannot use the object store; not ready, trying again"
        );
        if !wait_to_retry(shutdown).await {
            return Ok(None);
        }
    }
    Ok(Some(log))
}

/// Waits [`STORAGE_RETRY`]; `false` if `shutdown` is cancelled first.
async fn wait_to_retry(shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(STORAGE_RETRY) => true,
    }
}

/// What keeps `config`'s object store from answering a listing of its root, if anything. A
/// URL that cannot be opened at all is left to the service, which opens the store itself and
/// refuses it.
async fn object_store_problem(config: &Config) -> Option<String> {
    let store = runnel_archive::open_object_store(
        &config.object_store_url(),
        &config.storage.object_store_options,
    )
    .ok()?;
    match tokio::time::timeout(OBJECT_STORE_CHECK, store.list_with_delimiter(None)).await {
        Ok(Ok(_)) => None,
        Ok(Err(error)) => Some(error.to_string()),
        Err(_) => Some(format!(
            "no answer within {} s",
            OBJECT_STORE_CHECK.as_secs()
        )),
    }
}

/// Returns the name of the log backend `config` selects, as written in config: "embedded"
/// or "kafka".
pub fn backend_name(config: &Config) -> &'static str {
    match config.storage.log.backend {
        LogBackend::Embedded => "embedded",
        LogBackend::Kafka => "kafka",
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        service: ServiceFlags,
    }

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colours(true, None));
        assert!(use_colours(true, Some(OsStr::new(""))));
        assert!(!use_colours(true, Some(OsStr::new("1"))));
        assert!(!use_colours(false, None));
        assert!(!use_colours(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn service_flags_parse_repeated_configs_in_order() {
        use clap::CommandFactory;
        Flags::command().debug_assert();
        let flags = Flags::try_parse_from([
            "x",
            "--config",
            "a.toml",
            "--config",
            "b.toml",
            "--log-json",
        ])
        .expect("valid flags");
        assert_eq!(
            flags.service.config,
            [PathBuf::from("a.toml"), PathBuf::from("b.toml")]
        );
        assert!(flags.service.log_json);
    }
}
