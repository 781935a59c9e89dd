//! The one supervisor of services in one process: it starts a chosen set of runnel's
//! services over one log, each with its config, restarts a service that fails as its
//! [`RestartPolicy`] says, and stops them all with one shutdown. `runnel all`, the demo and
//! the serving benchmark start their services through it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use runnel_config::Config;
use runnel_log::Log;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

/// A service the supervisor can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Events in (with the archiver when `ingest.run-archiver` is set).
    Ingest,
    /// The jobs, live.
    StreamProcessor,
    /// Backfills run from the CLI; the service holds the log open.
    BatchReprocessor,
    /// Results out.
    Serving,
}

impl Service {
    /// The four services, in the order `runnel all` starts them.
    pub const ALL: [Service; 4] = [
        Service::Ingest,
        Service::StreamProcessor,
        Service::BatchReprocessor,
        Service::Serving,
    ];

    /// The service's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Service::Ingest => runnel_ingest::SERVICE_NAME,
            Service::StreamProcessor => runnel_stream_processor::SERVICE_NAME,
            Service::BatchReprocessor => runnel_batch_reprocessor::SERVICE_NAME,
            Service::Serving => runnel_serving::SERVICE_NAME,
        }
    }
}

/// How a failed service is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts in a row before the service is left stopped (0: never restarted).
    pub max_restarts: u32,
    /// The wait before the first restart, doubled for each one after.
    pub backoff: Duration,
    /// A service that ran this long before failing counts its restarts afresh.
    pub healthy_after: Duration,
}

impl RestartPolicy {
    /// `runnel all`'s: after 1, 2, 4, ... seconds, at most 5 times in a row; then the
    /// service stays stopped (logged at ERROR) while the others go on, so a failing
    /// stream-processor or serving never stops ingest.
    pub const RESTART: RestartPolicy = RestartPolicy {
        max_restarts: 5,
        backoff: Duration::from_secs(1),
        healthy_after: Duration::from_secs(300),
    };

    /// A failure is final: the demo and the benchmarks report it rather than hide it.
    pub const NEVER: RestartPolicy = RestartPolicy {
        max_restarts: 0,
        backoff: Duration::ZERO,
        healthy_after: Duration::MAX,
    };
}

/// Services running in this process.
pub struct Supervisor {
    shutdown: CancellationToken,
    services: JoinSet<(Service, anyhow::Result<()>)>,
    tasks: HashMap<tokio::task::Id, Service>,
    addresses: Vec<(Service, watch::Receiver<Option<SocketAddr>>)>,
}

impl Supervisor {
    /// Starts each of `services` with its config over `log`, until `shutdown` is cancelled
    /// (or [`Supervisor::stop`]). The caller opened the log and ensured the streams' topics
    /// (`runnel_server_common::open_storage`).
    pub fn start(
        log: &Arc<dyn Log>,
        services: Vec<(Service, Config)>,
        policy: RestartPolicy,
        shutdown: CancellationToken,
    ) -> Supervisor {
        let mut supervisor = Supervisor {
            shutdown: shutdown.clone(),
            services: JoinSet::new(),
            tasks: HashMap::new(),
            addresses: Vec::new(),
        };
        for (service, config) in services {
            let (bound, address) = watch::channel(None);
            supervisor.addresses.push((service, address));
            let (log, shutdown) = (Arc::clone(log), shutdown.clone());
            let task = supervisor.services.spawn(async move {
                let result = supervise(service, config, log, bound, policy, shutdown).await;
                (service, result)
            });
            supervisor.tasks.insert(task.id(), service);
        }
        info!(n_services = supervisor.services.len(), "services started");
        supervisor
    }

    /// The address `service` listens on, once it has bound it (ingest and serving; port 0
    /// in their config picks a free one, kept across restarts). An error if the service is
    /// not supervised here, listens on nothing, or stopped before it bound.
    pub async fn address(&self, service: Service) -> anyhow::Result<SocketAddr> {
        let mut address = self
            .addresses
            .iter()
            .find(|(supervised, _)| *supervised == service)
            .map(|(_, address)| address.clone())
            .with_context(|| format!("{} is not running here", service.name()))?;
        let bound = address
            .wait_for(Option::is_some)
            .await
            .with_context(|| format!("{} stopped before it listened", service.name()))?;
        bound.with_context(|| format!("{} listens on nothing", service.name()))
    }

    /// Waits for the next service to stop for good: the service and how it ended. `None`
    /// once none is left.
    pub async fn next_stopped(&mut self) -> Option<(Service, anyhow::Result<()>)> {
        Some(match self.services.join_next_with_id().await? {
            Ok((_, stopped)) => stopped,
            Err(join_error) => {
                let service = self.tasks[&join_error.id()];
                let context = format!("{} panicked", service.name());
                (
                    service,
                    Err(anyhow::Error::new(join_error).context(context)),
                )
            }
        })
    }

    /// Waits until every service has stopped; the first error, if a service gave up or
    /// failed while stopping.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_error: Option<anyhow::Error> = None;
        while let Some((_, result)) = self.next_stopped().await {
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => {
                info!("all services stopped");
                Ok(())
            }
        }
    }

    /// Stops every service and waits for them, as [`Supervisor::wait`].
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Runs `service` until `shutdown`, restarting it as `policy` says.
async fn supervise(
    service: Service,
    mut config: Config,
    log: Arc<dyn Log>,
    bound: watch::Sender<Option<SocketAddr>>,
    policy: RestartPolicy,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = service.name();
    let mut restarts_in_row = 0_u32;
    loop {
        let started = Instant::now();
        let error = match run_once(service, &mut config, &log, &bound, shutdown.child_token()).await
        {
            Ok(()) => return Ok(()),
            Err(error) => error.context(format!("run {name} service")),
        };
        if shutdown.is_cancelled() {
            error!(
                service = name,
                error = format!("{error:#}"),
                "service failed while stopping"
            );
            return Err(error);
        }
        if started.elapsed() >= policy.healthy_after {
            restarts_in_row = 0;
        }
        if restarts_in_row >= policy.max_restarts {
            if policy.max_restarts > 0 {
                error!(
                    service = name,
                    error = format!("{error:#}"),
                    restarts = restarts_in_row,
                    "service failed again after its restarts; it stays stopped, the other services go on"
                );
            }
            return Err(error);
        }
        let delay = policy.backoff.saturating_mul(1 << restarts_in_row);
        restarts_in_row += 1;
        warn!(
            service = name,
            error = format!("{error:#}"),
            retry_in = ?delay,
            restart = restarts_in_row,
            max_restarts = policy.max_restarts,
            "service failed; restarting it"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Err(error),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One run of `service`. Ingest and serving report the address they bound, and listen on
/// it again when restarted (so a port-0 config keeps its port).
async fn run_once(
    service: Service,
    config: &mut Config,
    log: &Arc<dyn Log>,
    bound: &watch::Sender<Option<SocketAddr>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let log = Arc::clone(log);
    match service {
        Service::Ingest => {
            let ingest = runnel_ingest::bind(config, Arc::clone(&log), shutdown)
                .instrument(info_span!("service", service = service.name()))
                .await?;
            config.ingest.listen = ingest.local_addr().to_string();
            bound.send_replace(Some(ingest.local_addr()));
            ingest.run().await?;
        }
        Service::Serving => {
            let span = info_span!("service", service = service.name());
            let serving = runnel_serving::bind(config, log, shutdown)
                .instrument(span.clone())
                .await?;
            config.serving.listen = serving.local_addr().to_string();
            bound.send_replace(Some(serving.local_addr()));
            serving.serve().instrument(span).await?;
        }
        Service::StreamProcessor => {
            runnel_stream_processor::run_with_log(config.clone(), log, shutdown).await?;
        }
        Service::BatchReprocessor => {
            runnel_batch_reprocessor::run_with_log(config.clone(), log, shutdown).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(data_dir: &std::path::Path, serving_listen: &str) -> Config {
        let env: HashMap<String, String> = [
            ("RUNNEL__STORAGE__DATA_DIR", data_dir.display().to_string()),
            ("RUNNEL__INGEST__LISTEN", "127.0.0.1:0".to_string()),
            ("RUNNEL__INGEST__RUN_ARCHIVER", "false".to_string()),
            ("RUNNEL__SERVING__LISTEN", serving_listen.to_string()),
            ("RUNNEL__SERVING__METRICS_LISTEN", "127.0.0.1:0".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        Config::load(&[], &env).expect("valid config")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn services_report_their_addresses_and_stop_with_one_shutdown() {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let config = config(data_dir.path(), "127.0.0.1:0");
        let log = runnel_server_common::open_storage(&config)
            .await
            .expect("open the log");
        let supervisor = Supervisor::start(
            &log,
            vec![
                (Service::Ingest, config.clone()),
                (Service::Serving, config.clone()),
            ],
            RestartPolicy::NEVER,
            CancellationToken::new(),
        );
        let ingest = supervisor.address(Service::Ingest).await.expect("ingest");
        let serving = supervisor.address(Service::Serving).await.expect("serving");
        assert_ne!(ingest.port(), 0);
        assert_ne!(serving.port(), 0);
        tokio::net::TcpStream::connect(serving)
            .await
            .expect("serving listens where it says");
        let error = supervisor
            .address(Service::StreamProcessor)
            .await
            .expect_err("not supervised here");
        assert!(error.to_string().contains("not running here"), "{error}");
        tokio::time::timeout(Duration::from_secs(30), supervisor.stop())
            .await
            .expect("stops within 30 s")
            .expect("stops cleanly");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_that_keeps_failing_is_restarted_then_left_stopped_and_named() {
        let data_dir = tempfile::tempdir().expect("temp dir");
        // Serving's port is taken, so each of its runs fails to listen.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("take a port");
        let address = taken.local_addr().expect("address").to_string();
        let config = config(data_dir.path(), &address);
        let log = runnel_server_common::open_storage(&config)
            .await
            .expect("open the log");
        let policy = RestartPolicy {
            max_restarts: 2,
            backoff: Duration::from_millis(20),
            healthy_after: Duration::from_secs(300),
        };
        let started = Instant::now();
        let mut supervisor = Supervisor::start(
            &log,
            vec![
                (Service::Serving, config.clone()),
                (Service::Ingest, config.clone()),
            ],
            policy,
            CancellationToken::new(),
        );
        let error = supervisor
            .address(Service::Serving)
            .await
            .expect_err("serving never listens");
        assert!(
            error.to_string().contains("stopped before it listened"),
            "{error}"
        );
        let (service, result) = supervisor.next_stopped().await.expect("a service stopped");
        assert_eq!(service, Service::Serving);
        let message = format!("{:#}", result.expect_err("serving failed"));
        assert!(
            message.contains("run serving service") && message.contains(&address),
            "{message}"
        );
        // Two restarts, after 20 and 40 ms: the failure is final only after both.
        assert!(started.elapsed() >= Duration::from_millis(60));
        // Ingest goes on, and stops cleanly with the shutdown (serving's end was taken above).
        supervisor
            .address(Service::Ingest)
            .await
            .expect("ingest listens");
        tokio::time::timeout(Duration::from_secs(30), supervisor.stop())
            .await
            .expect("stops within 30 s")
            .expect("ingest stops cleanly");
    }
}
