//! Serving's metrics: `GET /metrics` in Prometheus' text format on `serving.metrics-listen`
//! (plain HTTP, no token), apart from the gRPC port.
//!
//! Calls are counted by a middleware over the gRPC routes ([`observe_calls`]), outside the
//! token check, so refused calls count too: by method (the six of
//! `runnel.serving.v1.Serving`; health and reflection are not counted) and gRPC code, read
//! from the answer's `grpc-status` header (an error) or OK. A call's duration runs until
//! its answer's head: for `Subscribe` and `ExportResults`, until the stream starts.
//! Subscribers and view sizes are read from the views when scraped.
//!
//! Series are bounded: `method` and `code` by the API, `job` and `version` by the declared
//! job versions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use runnel_metrics::{
    CounterMap, Exposition, Histogram, LATENCY_BUCKETS_SECONDS, Labels, MetricType,
    MetricsListener, TableFamily,
};
use runnel_proto::grpc_code_name;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ServingError;
use crate::views::{JobView, Jobs, VersionView};

/// The methods of `runnel.serving.v1.Serving`, as the `method` label spells them.
const METHODS: [&str; 6] = [
    "QueryWindows",
    "GetWindow",
    "TopK",
    "ListJobs",
    "Subscribe",
    "ExportResults",
];

/// The calls' counters and latency histograms.
#[derive(Debug)]
pub(crate) struct ServingMetrics {
    /// Calls by method and code.
    calls: CounterMap<(&'static str, &'static str)>,
    /// Durations, by method (as [`METHODS`]).
    durations: [Histogram; METHODS.len()],
}

impl ServingMetrics {
    pub(crate) fn new() -> ServingMetrics {
        ServingMetrics {
            calls: CounterMap::new(),
            durations: std::array::from_fn(|_| Histogram::new(LATENCY_BUCKETS_SECONDS)),
        }
    }
}

/// The index in [`METHODS`] of the Serving method `path` calls, if it is one.
fn method_of(path: &str) -> Option<usize> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(crate::proto::serving_server::SERVICE_NAME)?
        .strip_prefix('/')?;
    METHODS.iter().position(|known| *known == method)
}

/// Middleware: counts and times each call of a Serving method by its answer's gRPC code.
pub(crate) async fn observe_calls(
    State(metrics): State<Arc<ServingMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(method) = method_of(request.uri().path()) else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let response = next.run(request).await;
    // An error is answered trailers-only, its status in the head; a call that answers
    // carries its status in the trailers, after the head: OK.
    let code = match response.headers().get("grpc-status") {
        Some(status) => tonic::Code::from_bytes(status.as_bytes()),
        None if response.status().is_success() => tonic::Code::Ok,
        None => tonic::Code::Unknown,
    };
    metrics
        .calls
        .add((METHODS[method], grpc_code_name(code)), 1);
    metrics.durations[method].observe_duration(started.elapsed());
    response
}

/// Encodes the calls' metrics and the views' sizes.
fn encode(metrics: &ServingMetrics, jobs: &Jobs) -> Exposition {
    let mut exposition = Exposition::new();
    let mut family = exposition.family(
        "runnel_serving_queries_total",
        MetricType::Counter,
        "Calls of runnel.serving.v1.Serving, by method and gRPC code (refused ones included).",
    );
    for ((method, code), n) in metrics.calls.snapshot() {
        family.sample(&Labels::new().with("method", method).with("code", code), n);
    }
    let mut family = exposition.family(
        "runnel_serving_query_duration_seconds",
        MetricType::Histogram,
        "Time from a call's arrival to its answer's head (for Subscribe and ExportResults, to the stream's start), by method.",
    );
    for (method, durations) in METHODS.iter().zip(&metrics.durations) {
        family.histogram(&Labels::new().with("method", method), &durations.snapshot());
    }
    let jobs = jobs.all();
    let job_rows: Vec<(Labels, &JobView)> = jobs
        .iter()
        .map(|job| (Labels::new().with("job", &job.name), job.as_ref()))
        .collect();
    exposition.table(JOB_FAMILIES, &job_rows, &());
    let versions: Vec<(String, Arc<VersionView>)> = jobs
        .iter()
        .flat_map(|job| {
            job.versions()
                .into_iter()
                .map(|view| (job.name.clone(), view))
        })
        .collect();
    let version_rows: Vec<(Labels, &VersionView)> = versions
        .iter()
        .map(|(name, view)| {
            let labels = Labels::new()
                .with("job", name)
                .with("version", view.version);
            (labels, view.as_ref())
        })
        .collect();
    exposition.table(VERSION_FAMILIES, &version_rows, &());
    exposition
}

/// The families with a sample per job.
const JOB_FAMILIES: &[TableFamily<JobView>] = &[
    TableFamily {
        name: "runnel_serving_subscribers",
        metric_type: MetricType::Gauge,
        help: "Open Subscribe streams, by job.",
        value: |job, ()| Some(job.updates.receiver_count().into()),
    },
    TableFamily {
        name: "runnel_serving_active_version",
        metric_type: MetricType::Gauge,
        help: "The job version serving answers from.",
        value: |job, ()| Some(job.active.load(Ordering::Acquire).into()),
    },
];

/// The families with a sample per job version.
const VERSION_FAMILIES: &[TableFamily<VersionView>] = &[
    TableFamily {
        name: "runnel_serving_speed_view_windows",
        metric_type: MetricType::Gauge,
        help: "Windows (one per key and window) held in the job version's speed view.",
        value: |view, ()| Some(view.sizes().0.into()),
    },
    TableFamily {
        name: "runnel_serving_batch_view_windows",
        metric_type: MetricType::Gauge,
        help: "Windows held in the job version's batch view (0 without one).",
        value: |view, ()| Some(view.sizes().1.into()),
    },
    TableFamily {
        name: "runnel_serving_view_ready",
        metric_type: MetricType::Gauge,
        help: "1 once the job version's speed view is rebuilt from its results topic, else 0.",
        value: |view, ()| Some(view.ready.load(Ordering::Acquire).into()),
    },
];

/// The metrics endpoint, bound and ready to serve.
#[derive(Debug)]
pub(crate) struct MetricsServer {
    listener: MetricsListener,
}

impl MetricsServer {
    /// Binds `address` (`serving.metrics-listen`; port 0 picks a free port).
    pub(crate) async fn bind(address: &str) -> Result<MetricsServer, ServingError> {
        let listener =
            MetricsListener::bind(address)
                .await
                .map_err(|source| ServingError::MetricsListen {
                    address: address.to_string(),
                    source,
                })?;
        Ok(MetricsServer { listener })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` until `shutdown` is cancelled.
    pub(crate) async fn serve(
        self,
        metrics: Arc<ServingMetrics>,
        jobs: Arc<Jobs>,
        shutdown: CancellationToken,
    ) -> Result<(), ServingError> {
        let router = Router::new().route(
            "/metrics",
            get(move || async move { encode(&metrics, &jobs) }),
        );
        self.listener
            .serve(router, "serving metrics listening", shutdown)
            .await
            .map_err(ServingError::MetricsServe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_serving_methods_are_counted() {
        assert_eq!(
            method_of("/runnel.serving.v1.Serving/QueryWindows"),
            Some(0)
        );
        assert_eq!(
            method_of("/runnel.serving.v1.Serving/ExportResults"),
            Some(5)
        );
        assert_eq!(method_of("/runnel.serving.v1.Serving/Nope"), None);
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), None);
        assert_eq!(method_of("/runnel.serving.v1.ServingX/TopK"), None);
    }
}
