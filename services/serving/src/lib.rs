//! runnel's serving service: answers queries on job results over gRPC
//! (`runnel.serving.v1.Serving`, with the standard health and reflection services), merging
//! each job's batch view and speed view.
//!
//! - The speed view (`views`, `follow`): per job version, the latest result of each key and
//!   window, read from the version's results topic from its first record (a restarted service
//!   rebuilds it so, and is NOT_SERVING on health until every version has read up to the
//!   log's end as of its start), then followed live; each stored update goes to subscribers.
//! - The batch view: the recompute's Parquet files under `views/<job>/<version>/`, loaded
//!   whole when its manifest names a new generation.
//! - The Lambda merge: a window the batch view covers (in its range, ending by its horizon)
//!   is answered from it, any other from the speed view.
//! - The job versions are the declared ones and those registered in the job catalog
//!   (`runnel_jobs`, by backfills), read every `serving.view-poll-interval`: a version a
//!   backfill in another process registers is served from then on, with no restart.
//! - The active version of each job is `jobs/<job>/active.json` (written by a replay backfill
//!   that caught up), else the lowest version; looked up every `serving.view-poll-interval`
//!   and switched in one store once its speed view is rebuilt, so a query sees one version
//!   or the other.
//!
//! Prometheus metrics (queries by method and code, their latency, subscribers, view sizes)
//! are served apart, on `serving.metrics-listen` (`GET /metrics`).
#![warn(missing_docs)]

mod follow;
mod grpc;
mod metrics;
mod views;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use object_store::ObjectStore;
use runnel_config::Config;
use runnel_log::{Log, LogError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tracing::{Instrument, error, info, info_span, warn};

use crate::views::Jobs;

use runnel_proto::serving::v1 as proto;

/// The service's name in logs.
pub const SERVICE_NAME: &str = "serving";

/// Speed-view updates buffered per job for subscribers; a subscriber further behind is
/// dropped with RESOURCE_EXHAUSTED.
pub(crate) const SUBSCRIBER_BUFFER: usize = 65_536;

/// Everything the serving service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// The log could not be opened, or a stream's topic could not be created.
    #[error("open storage: {0}")]
    OpenStorage(#[source] LogError),
    /// The object store could not be opened.
    #[error("open the object store: {0}")]
    OpenStore(#[source] runnel_archive::ArchiveError),
    /// A job does not compile.
    #[error("job: {0}")]
    Job(#[source] runnel_jobs::JobsError),
    /// A results topic could not be read.
    #[error("results topic `{topic}`: {source}")]
    Log {
        /// The topic.
        topic: String,
        /// The underlying error.
        source: Box<LogError>,
    },
    /// Results that are not the job's result rows.
    #[error("results: {0}")]
    Results(String),
    /// A batch view (or active-version file) could not be read.
    #[error("batch view {path}: {message}")]
    BatchView {
        /// The object read.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The listen address could not be bound.
    #[error("listen on {address}: {source}")]
    Listen {
        /// `serving.listen`.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The metrics address could not be bound.
    #[error("listen on {address} (serving.metrics-listen): {source}")]
    MetricsListen {
        /// `serving.metrics-listen`.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The metrics endpoint failed while serving.
    #[error("serve metrics: {0}")]
    MetricsServe(#[source] std::io::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The server failed while serving.
    #[error("serve: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The TLS certificate or key could not be read or used.
    #[error("serving TLS: {0}")]
    Tls(#[source] runnel_server_common::security::TlsError),
}

/// The serving service, bound to its address, its views not yet rebuilt.
pub struct BoundServing {
    local_addr: SocketAddr,
    listener: TcpListener,
    config: Arc<Config>,
    log: Arc<dyn Log>,
    store: Arc<dyn ObjectStore>,
    jobs: Arc<Jobs>,
    metrics_server: metrics::MetricsServer,
    shutdown: CancellationToken,
}

/// Compiles every declared job version, ensures its results topic, and binds
/// `config.serving.listen` and `config.serving.metrics-listen` (port 0 picks a free port);
/// [`BoundServing::serve`] then serves until `shutdown` is cancelled.
///
/// # Errors
///
/// [`ServingError::OpenStore`], [`ServingError::Job`], [`ServingError::Log`],
/// [`ServingError::Listen`], [`ServingError::MetricsListen`].
pub async fn bind(
    config: &Config,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) -> Result<BoundServing, ServingError> {
    let store = runnel_archive::open_object_store(
        &config.object_store_url(),
        &config.storage.object_store_options,
    )
    .map_err(ServingError::OpenStore)?;
    let jobs = Jobs::default();
    for job_config in &config.jobs {
        let job = runnel_jobs::Job::compile(config, job_config).map_err(ServingError::Job)?;
        follow::add_version(&jobs, &job, log.as_ref()).await?;
    }
    let address = &config.serving.listen;
    let listen_error = |source| ServingError::Listen {
        address: address.clone(),
        source,
    };
    let listener = TcpListener::bind(address.as_str())
        .await
        .map_err(listen_error)?;
    let local_addr = listener.local_addr().map_err(listen_error)?;
    let metrics_server = metrics::MetricsServer::bind(&config.serving.metrics_listen).await?;
    Ok(BoundServing {
        local_addr,
        listener,
        config: Arc::new(config.clone()),
        log,
        store,
        jobs: Arc::new(jobs),
        metrics_server,
        shutdown,
    })
}

impl BoundServing {
    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address `GET /metrics` is served on.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_server.local_addr()
    }

    /// Rebuilds the speed views and loads the batch views in the background, and serves
    /// until the shutdown token is cancelled. Health says NOT_SERVING until every job
    /// version's speed view is rebuilt and the batch views were looked up once.
    ///
    /// # Errors
    ///
    /// [`ServingError::Log`] if a results topic cannot be read at the start;
    /// [`ServingError::Reflection`], [`ServingError::Serve`], [`ServingError::MetricsServe`].
    pub async fn serve(self) -> Result<(), ServingError> {
        let BoundServing {
            local_addr,
            listener,
            config,
            log,
            store,
            jobs,
            metrics_server,
            shutdown,
        } = self;
        let tasks_shutdown = shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        let serving_metrics = Arc::new(metrics::ServingMetrics::new());
        tasks.spawn(
            metrics_server
                .serve(
                    Arc::clone(&serving_metrics),
                    Arc::clone(&jobs),
                    tasks_shutdown.clone(),
                )
                .in_current_span(),
        );
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_not_serving::<proto::serving_server::ServingServer<grpc::GrpcServing>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        {
            let (store, config, jobs, shutdown) = (
                Arc::clone(&store),
                Arc::clone(&config),
                Arc::clone(&jobs),
                tasks_shutdown.clone(),
            );
            let mut followers = follow::Followers::new(Arc::clone(&log), shutdown.clone());
            tasks.spawn(
                async move {
                    for job in jobs.all() {
                        for view in job.versions() {
                            followers.follow(&job, &view).await?;
                        }
                    }
                    let mut reported = BTreeSet::new();
                    let mut serving = false;
                    let mut polled = false;
                    let mut ticker = tokio::time::interval(config.serving.view_poll_interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut readiness = tokio::time::interval(Duration::from_millis(50));
                    loop {
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            error = followers.failed() => return Err(error),
                            _ = ticker.tick() => {
                                match runnel_jobs::Catalog::load(store.as_ref(), &config).await {
                                    Ok(catalog) => {
                                        follow::add_catalog_versions(&catalog, &config, &jobs, &mut followers, &mut reported).await?;
                                        match follow::poll_views(store.as_ref(), &catalog, &jobs).await {
                                            Ok(()) => polled = true,
                                            Err(error) => warn!(%error, "could not look up the batch views; trying again"),
                                        }
                                    }
                                    Err(error) => warn!(%error, "could not read the job catalog; trying again"),
                                }
                            }
                            _ = readiness.tick(), if !serving => {}
                        }
                        let rebuilt = jobs.all().iter().all(|job| {
                            job.versions()
                                .iter()
                                .all(|view| view.ready.load(Ordering::Acquire))
                        });
                        if !serving && polled && rebuilt {
                            serving = true;
                            reporter
                                .set_serving::<proto::serving_server::ServingServer<grpc::GrpcServing>>()
                                .await;
                            reporter
                                .set_service_status("", tonic_health::ServingStatus::Serving)
                                .await;
                            info!("serving: every speed view rebuilt");
                        }
                    }
                }
                .in_current_span(),
            );
        }
        // Reflection v1, and v1alpha for the clients that only speak it (grpcio's Python
        // descriptor database among them).
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|error| ServingError::Reflection(error.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|error| ServingError::Reflection(error.to_string()))?;
        let service = proto::serving_server::ServingServer::new(grpc::GrpcServing {
            jobs: Arc::clone(&jobs),
            config: Arc::clone(&config),
            log: Arc::clone(&log),
            store: Arc::clone(&store),
        })
        .max_encoding_message_size(usize::MAX);
        // Health stays open to probes; the API and reflection ask for the token.
        let port = config.serving.security();
        let router = runnel_server_common::security::require_bearer(
            Routes::new(health)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(service)
                .into_axum_router(),
            &port,
            &["/grpc.health.v1.Health/"],
        )
        .layer(axum::middleware::from_fn_with_state(
            serving_metrics,
            metrics::observe_calls,
        ));
        let mut server =
            runnel_server_common::security::server(&port).map_err(ServingError::Tls)?;
        info!(
            address = %local_addr,
            tls = port.tls(),
            auth = port.auth_token.is_some(),
            "serving listening (gRPC)"
        );
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let shutdown_server = shutdown.clone();
        let served = tokio::select! {
            served = server
                .add_routes(Routes::from(router))
                .serve_with_incoming_shutdown(incoming, shutdown_server.cancelled_owned()) => {
                served.map_err(ServingError::Serve)
            }
            failed = tasks.join_next() => match failed {
                Some(Ok(Err(error))) => Err(error),
                Some(Err(join)) => Err(ServingError::Results(format!("a view task failed: {join}"))),
                _ => Ok(()),
            },
        };
        tasks_shutdown.cancel();
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(error)) = done {
                error!(%error, "a view task failed while stopping");
            }
        }
        served
    }
}

/// Runs the serving service until `shutdown` is cancelled, on the log that `config` selects.
///
/// # Errors
///
/// [`ServingError::OpenStorage`] if the log cannot be opened or a topic cannot be created;
/// the errors of [`run_with_log`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServingError> {
    let Some(log) = runnel_server_common::open_storage_waiting(&config, &shutdown)
        .await
        .map_err(ServingError::OpenStorage)?
    else {
        return Ok(());
    };
    let result = run_with_log(config, Arc::clone(&log), shutdown).await;
    log.close().await;
    result
}

/// Runs the serving service on a log that is already open, until `shutdown` is cancelled.
///
/// This is how `runnel all` runs every service in one process over one shared log; the
/// caller has ensured the declared streams' topics (`runnel_server_common::open_storage`).
///
/// # Errors
///
/// The errors of [`bind`] and [`BoundServing::serve`].
pub async fn run_with_log(
    config: Config,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) -> Result<(), ServingError> {
    async move {
        let bound = bind(&config, log, shutdown).await?;
        bound.serve().await?;
        info!("serving stopped");
        Ok(())
    }
    .instrument(info_span!("service", service = SERVICE_NAME))
    .await
}
