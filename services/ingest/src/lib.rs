//! runnel's ingest service: events in over gRPC and HTTP, validated against their stream's
//! declared schema, appended to the log.
//!
//! One listen address (`ingest.listen`) serves both APIs: gRPC `runnel.ingest.v1.Ingest`
//! (unary `Ingest` and client-streaming `IngestStream`, JSON documents or typed rows; see
//! `proto/runnel/ingest/v1/ingest.proto`) and HTTP `POST /v1/streams/{stream}/events`
//! (NDJSON or a JSON array; see the `http` module), with the standard gRPC health service
//! (`grpc.health.v1.Health`) and `GET /healthz` beside them, both open without the token.
//! Requests are told apart by content type and path: gRPC requests
//! (`application/grpc`) go to the gRPC services, others to the HTTP routes; anything else
//! is answered 404 (405 for a wrong method) with the JSON error body, or UNIMPLEMENTED for
//! a gRPC request.
//!
//! The port guards itself against slow and abusive clients (the `connection` module):
//! connections are counted in total and per client address (`ingest.max-connections`,
//! `ingest.max-connections-per-client`; over them a connection is answered 503 and closed),
//! a request head must arrive within `ingest.header-read-timeout`, an HTTP body must keep
//! arriving (`ingest.body-read-timeout`, `ingest.min-body-bytes-per-second`; 408
//! otherwise), and HTTP/2 connections have a stream limit and keepalive pings
//! (`ingest.http2-*`).
//!
//! For each batch:
//! - Backpressure first: the request's bytes are taken from a budget of
//!   `ingest.max-in-flight-bytes` as they arrive, now or never; over it the answer is HTTP
//!   429 with `Retry-After` or gRPC RESOURCE_EXHAUSTED with `retry-after-ms` metadata,
//!   rather than a queue. Requests over `ingest.max-request-bytes` are refused whole
//!   (413 / OUT_OF_RANGE).
//! - Each event is validated (`runnel_events::validate`) into the record format: value =
//!   the declared fields as JSON, key = the stream's key field (the log partitions keyed
//!   records with Kafka's murmur2 partitioner and spreads unkeyed ones round robin),
//!   timestamp = ingest time (now, epoch milliseconds).
//! - Valid events are appended to the stream's topic, rejected ones to
//!   `<stream>.dead-letter` (one partition) with their raw bytes (cut to
//!   `ingest.max-event-bytes`, noted by a header) and headers naming the reason, the
//!   request index and the stream ([`headers`]). With all-or-nothing, a batch with any
//!   rejected event appends nothing to the stream. Events for an undeclared stream go to
//!   `_unknown-stream.dead-letter` and the answer is 404 / NOT_FOUND.
//! - The answer is sent once both appends are durable: it gives the accepted count, the
//!   partition/offset ranges they landed in, and each rejected event's index and reason.
//!
//! With `ingest.run-archiver` (the default) the service also runs the archiver
//! (`runnel_archive::run_archiver`) as a background task, copying every stream into the
//! Parquet history until shutdown.
//!
//! `GET /metrics` on the port serves Prometheus text: the service's requests, events
//! accepted and rejected, bytes, in-flight bytes and latency, then the archiver's families
//! (the `metrics` module); `GET /status` the archiver's status as JSON.
#![warn(missing_docs)]

mod connection;
mod grpc;
mod http;
mod metrics;
mod service;

use std::net::SocketAddr;
use std::sync::Arc;

use runnel_config::Config;
use runnel_log::{Log, LogError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tracing::{Instrument, info, info_span};

use crate::connection::ConnectionLimits;

pub use grpc::{BATCHES_DONE_METADATA, RETRY_AFTER_MS_METADATA};
pub use service::{PartitionRange, UNKNOWN_STREAM_CODE, headers};

use runnel_proto::ingest::v1 as proto;

/// The service's name in logs.
pub const SERVICE_NAME: &str = "ingest";

/// Everything the ingest service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The log could not be opened, or a stream's topic could not be created.
    #[error("open storage: {0}")]
    OpenStorage(#[source] LogError),
    /// A dead-letter topic could not be created.
    #[error("ensure the dead-letter topics: {0}")]
    DeadLetterTopics(#[source] LogError),
    /// The listen address could not be bound.
    #[error("listen on {address}: {source}")]
    Listen {
        /// `ingest.listen`.
        address: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server failed while serving.
    #[error("serve: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The TLS certificate or key could not be read or used.
    #[error("ingest TLS: {0}")]
    Tls(#[source] runnel_server_common::security::TlsError),
    /// The archiver could not start (object store) or failed fatally.
    #[error("archiver: {0}")]
    Archive(#[source] runnel_archive::ArchiveError),
}

/// The ingest service, bound to its address and ready to serve.
pub struct BoundIngest {
    local_addr: SocketAddr,
    listener: TcpListener,
    ingestor: Arc<service::Ingestor>,
    shutdown: CancellationToken,
    /// What [`BoundIngest::run`] starts the archiver with.
    config: Config,
    log: Arc<dyn Log>,
}

/// Binds `config.ingest.listen` (port 0 picks a free port) and ensures the dead-letter
/// topics; [`BoundIngest::serve`] then serves until `shutdown` is cancelled.
///
/// The caller has ensured the declared streams' topics (`runnel_server_common::open_storage`).
///
/// # Errors
///
/// [`IngestError::DeadLetterTopics`], [`IngestError::Listen`].
pub async fn bind(
    config: &Config,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) -> Result<BoundIngest, IngestError> {
    let ingestor = service::Ingestor::new(config, Arc::clone(&log))
        .await
        .map_err(IngestError::DeadLetterTopics)?;
    let address = &config.ingest.listen;
    let listen_error = |source| IngestError::Listen {
        address: address.clone(),
        source,
    };
    let listener = TcpListener::bind(address.as_str())
        .await
        .map_err(listen_error)?;
    let local_addr = listener.local_addr().map_err(listen_error)?;
    Ok(BoundIngest {
        local_addr,
        listener,
        ingestor: Arc::new(ingestor),
        shutdown,
        config: config.clone(),
        log,
    })
}

impl BoundIngest {
    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves gRPC and HTTP until the shutdown token is cancelled, then lets requests in
    /// progress finish.
    ///
    /// # Errors
    ///
    /// [`IngestError::Tls`], [`IngestError::Serve`].
    pub async fn serve(self) -> Result<(), IngestError> {
        let config = self.ingestor.config().clone();
        let grpc = proto::ingest_server::IngestServer::new(grpc::GrpcIngest {
            ingestor: Arc::clone(&self.ingestor),
        })
        // A larger message is refused by tonic with OUT_OF_RANGE, naming the limit.
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(usize::MAX);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        set_health(&health_reporter, tonic_health::ServingStatus::Serving).await;
        let routes = Routes::new(grpc)
            .add_service(health)
            .into_axum_router()
            .merge(http::router(
                Arc::clone(&self.ingestor),
                self.shutdown.clone(),
            ))
            .merge(metrics::router(Arc::clone(&self.ingestor)))
            .fallback(http::not_found)
            .layer(axum::middleware::from_fn(http::route_guard));
        // Health stays open to probes; the rest asks for the token when one is set.
        let port = config.security();
        let router = runnel_server_common::security::require_bearer(
            routes,
            &port,
            &["/grpc.health.v1.Health/", "/healthz"],
        )
        .layer(axum::middleware::from_fn(connection::track_requests));
        let server = runnel_server_common::security::server(&port).map_err(IngestError::Tls)?;
        info!(
            address = %self.local_addr,
            tls = port.tls(),
            auth = port.auth_token.is_some(),
            max_connections = config.max_connections,
            max_connections_per_client = config.max_connections_per_client,
            "ingest listening (gRPC and HTTP)"
        );
        let incoming = connection::incoming(
            self.listener,
            ConnectionLimits {
                max_connections: config.max_connections,
                max_connections_per_client: config.max_connections_per_client,
                header_read_timeout: config.header_read_timeout,
                answer_refusals: !port.tls(),
            },
        );
        let shutdown = self.shutdown.clone();
        let stopping = async move {
            shutdown.cancelled().await;
            set_health(&health_reporter, tonic_health::ServingStatus::NotServing).await;
        };
        server
            .accept_http1(true)
            .http2_adaptive_window(Some(true))
            .initial_stream_window_size(Some(4 * 1024 * 1024))
            .initial_connection_window_size(Some(16 * 1024 * 1024))
            .max_concurrent_streams(Some(config.http2_max_concurrent_streams))
            .http2_keepalive_interval(Some(config.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .add_routes(Routes::from(router))
            .serve_with_incoming_shutdown(incoming, stopping)
            .await
            .map_err(IngestError::Serve)
    }
}

/// Sets the health of the whole server (`""`) and of `runnel.ingest.v1.Ingest`.
async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(proto::ingest_server::SERVICE_NAME, status)
        .await;
}

/// Runs the ingest service until `shutdown` is cancelled, on the log that `config` selects.
///
/// # Errors
///
/// [`IngestError::OpenStorage`] if the log cannot be opened or a topic cannot be created;
/// the errors of [`run_with_log`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), IngestError> {
    let Some(log) = runnel_server_common::open_storage_waiting(&config, &shutdown)
        .await
        .map_err(IngestError::OpenStorage)?
    else {
        return Ok(());
    };
    let result = run_with_log(config, Arc::clone(&log), shutdown).await;
    log.close().await;
    result
}

impl BoundIngest {
    /// Serves until the shutdown token given to [`bind`] is cancelled, with the archiver
    /// beside it when `ingest.run-archiver` is set: what [`run_with_log`] does once bound.
    /// A caller that needs the address before serving (`runnel all`'s supervisor, whose
    /// config may say port 0) binds, reads [`BoundIngest::local_addr`], then runs this.
    ///
    /// # Errors
    ///
    /// The errors of [`BoundIngest::serve`]; [`IngestError::Archive`] if the archiver fails.
    pub async fn run(self) -> Result<(), IngestError> {
        let (shutdown, config, log) = (
            self.shutdown.clone(),
            self.config.clone(),
            Arc::clone(&self.log),
        );
        async move {
            // The archiver's own token: it stops when the service stops, whatever stopped it.
            let archiver_shutdown = shutdown.child_token();
            let archiver = if config.ingest.run_archiver {
                let url = config.object_store_url();
                let store =
                    runnel_archive::open_object_store(&url, &config.storage.object_store_options)
                        .map_err(IngestError::Archive)?;
                let (config, log, shutdown) =
                    (config.clone(), Arc::clone(&log), archiver_shutdown.clone());
                Some(tokio::spawn(
                    async move { runnel_archive::run_archiver(&config, log, store, shutdown).await }
                        .in_current_span(),
                ))
            } else {
                None
            };
            let served = self.serve().await;
            if let Some(archiver) = archiver {
                archiver_shutdown.cancel();
                match archiver.await {
                    Ok(result) => result.map_err(IngestError::Archive)?,
                    Err(join_error) => {
                        return Err(IngestError::Archive(runnel_archive::ArchiveError::Task {
                            stream: "*".to_string(),
                            message: join_error.to_string(),
                        }));
                    }
                }
            }
            served?;
            info!("ingest stopped");
            Ok(())
        }
        .instrument(info_span!("service", service = SERVICE_NAME))
        .await
    }
}

/// Runs the ingest service on a log that is already open, until `shutdown` is cancelled.
///
/// This is how `runnel all` runs every service in one process over one shared log; the
/// caller has ensured the declared streams' topics (`runnel_server_common::open_storage`).
///
/// # Errors
///
/// The errors of [`bind`] and [`BoundIngest::run`].
pub async fn run_with_log(
    config: Config,
    log: Arc<dyn Log>,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let bound = bind(&config, log, shutdown)
        .instrument(info_span!("service", service = SERVICE_NAME))
        .await?;
    bound.run().await
}
