//! The ingest port's `GET /metrics` (Prometheus text) and `GET /status` (JSON): the ingest
//! service's own families ([`IngestMetrics`]: requests, events accepted and rejected,
//! bytes, in-flight bytes, latency), and beside them, when the service runs the archiver
//! (`ingest.run-archiver`), the archiver's, per stream and partition (e.g.
//! `runnel_archiver_partition_corrupt{stream,partition} 1` while a partition waits for
//! `runnel log repair`); `/status` is the archiver's.
//!
//! Labels are bounded by the config: `stream` takes the declared streams' names only (an
//! undeclared stream's requests and events carry no `stream` label), `code` the HTTP statuses
//! and gRPC codes the service answers with, `reason` the validator's fixed reject codes plus
//! `unknown_stream` and `all_or_nothing`, never the reason's text.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use runnel_archive::ArchiverStatus;
use runnel_archive::status::ArchiverSnapshot;
use runnel_config::Config;
use runnel_metrics::{
    CounterMap, Exposition, Histogram, LATENCY_BUCKETS_SECONDS, Labels, MetricType,
};
use runnel_proto::grpc_code_name;

use crate::service::{Api, Ingestor};

/// Reject reason of the valid events of an all-or-nothing batch that another event of it
/// made fail: they are written nowhere.
pub(crate) const ALL_OR_NOTHING_REASON: &str = "all_or_nothing";

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ResponseCode {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status code.
    Grpc(&'static str),
}

impl ResponseCode {
    pub(crate) fn grpc(code: tonic::Code) -> ResponseCode {
        ResponseCode::Grpc(grpc_code_name(code))
    }
}

impl std::fmt::Display for ResponseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseCode::Http(status) => write!(f, "{status}"),
            ResponseCode::Grpc(code) => f.write_str(code),
        }
    }
}

/// A request's series: protocol, declared stream (if it is one) and answer.
type RequestKey = (Api, Option<Arc<str>>, ResponseCode);

/// The ingest service's own counters, which both front ends and the core report to.
#[derive(Debug)]
pub(crate) struct IngestMetrics {
    /// The declared streams' names, as labels.
    streams: HashMap<String, Arc<str>>,
    requests: CounterMap<RequestKey>,
    accepted: CounterMap<Arc<str>>,
    rejected: CounterMap<(Option<Arc<str>>, &'static str)>,
    http_bytes: AtomicU64,
    grpc_bytes: AtomicU64,
    http_durations: Histogram,
    grpc_durations: Histogram,
}

impl IngestMetrics {
    /// Counters at 0, with a series of accepted events for every declared stream.
    pub(crate) fn new(config: &Config) -> IngestMetrics {
        let streams: HashMap<String, Arc<str>> = config
            .streams
            .iter()
            .map(|stream| (stream.name.clone(), Arc::from(stream.name.as_str())))
            .collect();
        let accepted = CounterMap::new();
        for label in streams.values() {
            accepted.add(Arc::clone(label), 0);
        }
        IngestMetrics {
            streams,
            requests: CounterMap::new(),
            accepted,
            rejected: CounterMap::new(),
            http_bytes: AtomicU64::new(0),
            grpc_bytes: AtomicU64::new(0),
            http_durations: Histogram::new(LATENCY_BUCKETS_SECONDS),
            grpc_durations: Histogram::new(LATENCY_BUCKETS_SECONDS),
        }
    }

    /// The `stream` label of requests for `stream`: its name if it is declared, else none.
    pub(crate) fn stream_label(&self, stream: &str) -> Option<Arc<str>> {
        self.streams.get(stream).cloned()
    }

    /// A request was answered `code` after `elapsed`.
    pub(crate) fn request(
        &self,
        api: Api,
        stream: Option<Arc<str>>,
        code: ResponseCode,
        elapsed: Duration,
    ) {
        self.requests.add((api, stream, code), 1);
        match api {
            Api::Http => self.http_durations.observe_duration(elapsed),
            Api::Grpc => self.grpc_durations.observe_duration(elapsed),
        }
    }

    /// `bytes` of a request arrived (a piece of an HTTP body, a gRPC message).
    pub(crate) fn request_bytes(&self, api: Api, bytes: usize) {
        let counter = match api {
            Api::Http => &self.http_bytes,
            Api::Grpc => &self.grpc_bytes,
        };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `n` events of the declared stream `stream` were appended to it.
    pub(crate) fn accepted(&self, stream: &str, n: u64) {
        if let Some(label) = self.stream_label(stream) {
            self.accepted.add(label, n);
        }
    }

    /// `n` events sent to `stream` were rejected for `reason` (a fixed code).
    pub(crate) fn rejected(&self, stream: &str, reason: &'static str, n: u64) {
        self.rejected.add((self.stream_label(stream), reason), n);
    }

    /// Writes the families into `exposition`; the in-flight bytes are read from `ingestor`.
    fn encode(&self, ingestor: &Ingestor, exposition: &mut Exposition) {
        let mut family = exposition.family(
            "runnel_ingest_requests_total",
            MetricType::Counter,
            "Ingest requests answered (an HTTP POST, a gRPC Ingest call, each message of an IngestStream call), by protocol, declared stream and HTTP status or gRPC code.",
        );
        for ((api, stream, code), n) in self.requests.snapshot() {
            let mut labels = Labels::new().with("protocol", api.name());
            if let Some(stream) = stream {
                labels.push("stream", stream);
            }
            family.sample(&labels.with("code", code), n);
        }
        let mut family = exposition.family(
            "runnel_ingest_events_accepted_total",
            MetricType::Counter,
            "Events appended to their stream's topic.",
        );
        for (stream, n) in self.accepted.snapshot() {
            family.sample(&Labels::new().with("stream", stream), n);
        }
        let mut family = exposition.family(
            "runnel_ingest_events_rejected_total",
            MetricType::Counter,
            "Events not appended to a stream, by reason: the validator's reject code (the event went to the dead-letter topic), unknown_stream, or all_or_nothing (a valid event of an all-or-nothing batch another event failed).",
        );
        for ((stream, reason), n) in self.rejected.snapshot() {
            let mut labels = Labels::new();
            if let Some(stream) = stream {
                labels.push("stream", stream);
            }
            family.sample(&labels.with("reason", reason), n);
        }
        exposition
            .family(
                "runnel_ingest_request_bytes_total",
                MetricType::Counter,
                "Request bytes received: HTTP bodies as they arrive, gRPC messages as decoded.",
            )
            .sample(
                &Labels::new().with("protocol", Api::Http.name()),
                self.http_bytes.load(Ordering::Relaxed),
            )
            .sample(
                &Labels::new().with("protocol", Api::Grpc.name()),
                self.grpc_bytes.load(Ordering::Relaxed),
            );
        exposition
            .family(
                "runnel_ingest_in_flight_bytes",
                MetricType::Gauge,
                "Request bytes held in the in-flight budget now.",
            )
            .sample(&Labels::new(), ingestor.in_flight_bytes());
        exposition
            .family(
                "runnel_ingest_max_in_flight_bytes",
                MetricType::Gauge,
                "The in-flight budget (ingest.max-in-flight-bytes); a request over what is left is answered busy.",
            )
            .sample(&Labels::new(), ingestor.max_in_flight_bytes());
        exposition
            .family(
                "runnel_ingest_request_duration_seconds",
                MetricType::Histogram,
                "Time from a request's head (HTTP) or message (gRPC) to its answer, body reading, validation and durable appends included.",
            )
            .histogram(
                &Labels::new().with("protocol", Api::Http.name()),
                &self.http_durations.snapshot(),
            )
            .histogram(
                &Labels::new().with("protocol", Api::Grpc.name()),
                &self.grpc_durations.snapshot(),
            );
    }
}

/// Returns the routes `GET /metrics` (the service's families, then the archiver's) and
/// `GET /status` (the archiver's), to merge into the service's router.
pub(crate) fn router(ingestor: Arc<Ingestor>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(ingestor)
}

async fn metrics(State(ingestor): State<Arc<Ingestor>>) -> Exposition {
    let mut exposition = Exposition::new();
    ingestor.metrics().encode(&ingestor, &mut exposition);
    ArchiverStatus::process().encode_metrics(&mut exposition);
    exposition
}

async fn status() -> Json<ArchiverSnapshot> {
    Json(ArchiverStatus::process().snapshot())
}
