//! The HTTP front end: `POST /v1/streams/{stream}/events` and `GET /healthz`; every other
//! request is answered 404 (405 for a wrong method on a route) with the JSON error body.
//!
//! The body is NDJSON (one JSON object per line; blank lines are skipped) or one JSON array
//! of objects. It is read as NDJSON when the content type says so (`application/x-ndjson`,
//! `application/jsonl`, ...), as an array when its first non-blank byte is `[`, and as
//! NDJSON otherwise (so a single-line object is one event). `?all_or_nothing=true` asks for
//! all-or-nothing.
//!
//! The body's bytes are taken from the in-flight budget as they arrive, never from what
//! `Content-Length` announces, so a request that sends only its head holds none of it. The
//! body must keep coming: no wait for its next piece may exceed `ingest.body-read-timeout`,
//! and past that first stretch it must average `ingest.min-body-bytes-per-second`.
//!
//! Answers, as JSON:
//! - 200 with `{stream, accepted, rejected, aborted, ranges, rejections}` once the batch is
//!   durable, also when some events were rejected;
//! - 422 with the same body when all-or-nothing was asked and an event was rejected;
//! - 400 for a body without events or a malformed array, 404 for an undeclared stream or a
//!   path that is no route, 405 for a wrong method, 408 for a body that stalls or trickles,
//!   413 for a body over `ingest.max-request-bytes`, 429 with `Retry-After` (seconds) and
//!   `retry-after-ms` when too many bytes are in flight, 503 when the log fails;
//!   all with `{code, error}`. An answer given before the body's end closes the connection.
//!
//! gRPC shares the port: a request with content type `application/grpc` goes to the gRPC
//! services ([`GRPC_SERVICES`]), and one for a method they do not have is answered
//! UNIMPLEMENTED; any other request never reaches them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::metrics::ResponseCode;
use crate::service::{Api, Batch, BatchOutcome, IngestFailure, Ingestor, PartitionRange};

/// The events endpoint.
const EVENTS_ROUTE: &str = "/v1/streams/{stream}/events";

/// The health probe: 200 while the service runs, 503 once it is stopping.
const HEALTHZ_ROUTE: &str = "/healthz";

/// The gRPC services of the port, by their full names (gRPC paths are `/<name>/<method>`).
pub(crate) const GRPC_SERVICES: [&str; 2] = [
    crate::proto::ingest_server::SERVICE_NAME,
    tonic_health::pb::health_server::SERVICE_NAME,
];

/// What a request that is no route is told.
const ROUTES: &str = "the routes are POST /v1/streams/{stream}/events, GET /healthz, \
     GET /metrics (Prometheus text), GET /status (the archiver's), and gRPC (content-type application/grpc) runnel.ingest.v1.Ingest and grpc.health.v1.Health";

/// Request paths are cut to this many bytes when quoted in an error.
const MAX_QUOTED_PATH_BYTES: usize = 256;

/// Query parameters of the events endpoint.
#[derive(Debug, Default, serde::Deserialize)]
struct IngestParams {
    #[serde(default)]
    all_or_nothing: bool,
}

/// The answer to a processed batch.
#[derive(Debug, serde::Serialize)]
struct IngestBody<'a> {
    stream: &'a str,
    accepted: u64,
    rejected: u64,
    aborted: bool,
    ranges: &'a [PartitionRange],
    rejections: Vec<RejectionBody<'a>>,
}

#[derive(Debug, serde::Serialize)]
struct RejectionBody<'a> {
    index: u32,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    reason: String,
}

#[derive(Debug, serde::Serialize)]
struct ErrorBody {
    code: &'static str,
    error: String,
}

/// Returns the HTTP routes; a wrong method on one of them is answered 405.
///
/// `shutdown` is the service's token: `GET /healthz` answers 503 once it is cancelled.
pub(crate) fn router(ingestor: Arc<Ingestor>, shutdown: CancellationToken) -> Router {
    Router::new()
        .route(EVENTS_ROUTE, post(post_events).fallback(method_not_allowed))
        .route(
            HEALTHZ_ROUTE,
            get(move || healthz(shutdown.clone())).fallback(method_not_allowed),
        )
        .with_state(ingestor)
}

/// `GET /healthz`.
async fn healthz(shutdown: CancellationToken) -> Response {
    if shutdown.is_cancelled() {
        let body = serde_json::json!({ "service": crate::SERVICE_NAME, "status": "stopping" });
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let body = serde_json::json!({ "service": crate::SERVICE_NAME, "status": "serving" });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Whether a request is gRPC: its content type is `application/grpc` or a subtype of it
/// (`application/grpc+proto`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("application/grpc") && !value.starts_with("application/grpc-web")
        })
}

/// Whether `path` is under one of the port's gRPC services.
fn is_grpc_path(path: &str) -> bool {
    let Some(path) = path.strip_prefix('/') else {
        return false;
    };
    GRPC_SERVICES.iter().any(|service| {
        path.strip_prefix(service)
            .is_some_and(|method| method.starts_with('/'))
    })
}

/// Middleware: keeps gRPC and HTTP apart. A gRPC request for a path that is not one of the
/// gRPC services is answered UNIMPLEMENTED (in gRPC, as its client expects); any other
/// request for a gRPC service's path is answered 404, so that no gRPC status ever answers
/// a plain HTTP request.
pub(crate) async fn route_guard(request: Request, next: Next) -> Response {
    let grpc = is_grpc(request.headers());
    let grpc_path = is_grpc_path(request.uri().path());
    if grpc && !grpc_path {
        let path = quoted_path(request.uri());
        debug!(path, "gRPC request for an unknown service");
        return tonic::Status::unimplemented(format!(
            "no gRPC method `{path}` on this port; it serves {}",
            GRPC_SERVICES.join(" and ")
        ))
        .into_http::<Body>();
    }
    if !grpc && grpc_path {
        return not_found(request.method().clone(), request.uri().clone()).await;
    }
    next.run(request).await
}

/// The answer to a request that is no route: 404 naming the path and listing the routes.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    let path = quoted_path(&uri);
    debug!(%method, path, "no route");
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {path}; {ROUTES}"),
    )
}

/// The answer to a wrong method on a route: 405 (axum adds `Allow`).
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let path = quoted_path(&uri);
    debug!(%method, path, "method not allowed");
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}; {ROUTES}"),
    )
}

/// The request's path, cut to [`MAX_QUOTED_PATH_BYTES`] on a character boundary.
fn quoted_path(uri: &Uri) -> String {
    let path = uri.path();
    if path.len() <= MAX_QUOTED_PATH_BYTES {
        return path.to_string();
    }
    let mut end = MAX_QUOTED_PATH_BYTES;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end])
}

fn error_response(status: StatusCode, code: &'static str, error: String) -> Response {
    (status, axum::Json(ErrorBody { code, error })).into_response()
}

async fn post_events(
    State(ingestor): State<Arc<Ingestor>>,
    Path(stream): Path<String>,
    Query(params): Query<IngestParams>,
    request_headers: HeaderMap,
    body: Body,
) -> Response {
    let span = info_span!("http_ingest", stream = %stream);
    let started = Instant::now();
    let response = async {
        match ingest(&ingestor, &stream, params, &request_headers, body).await {
            Ok(outcome) => outcome_response(&stream, &outcome),
            Err(failure) => failure_response(&failure),
        }
    }
    .instrument(span)
    .await;
    let metrics = ingestor.metrics();
    metrics.request(
        Api::Http,
        metrics.stream_label(&stream),
        ResponseCode::Http(response.status().as_u16()),
        started.elapsed(),
    );
    response
}

async fn ingest(
    ingestor: &Ingestor,
    stream: &str,
    params: IngestParams,
    request_headers: &HeaderMap,
    body: Body,
) -> Result<BatchOutcome, IngestFailure> {
    let content_length = request_headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    // An announced length over the limit is refused before anything is read; the budget
    // is taken from the bytes as they arrive.
    if let Some(length) = content_length {
        ingestor.check_request_size(length)?;
    }
    let (body, _permit) = read_body(ingestor, body).await?;
    let ndjson = request_headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(is_ndjson_content_type);
    let events = split_events(&body, ndjson)?;
    ingestor
        .ingest(
            stream,
            Batch::Json(events),
            params.all_or_nothing,
            Api::Http,
        )
        .await
}

/// Reads the whole body, taking its bytes from the in-flight budget as they arrive.
///
/// Refuses it as soon as it passes the request limit or the budget, when no piece of it
/// arrives within `ingest.body-read-timeout`, or when, past that first stretch, it has
/// averaged less than `ingest.min-body-bytes-per-second`.
async fn read_body(
    ingestor: &Ingestor,
    body: Body,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), IngestFailure> {
    let config = ingestor.config();
    let body_read_timeout = config.body_read_timeout;
    let min_rate = config.min_body_bytes_per_second;
    let started = Instant::now();
    let mut chunks = body.into_data_stream();
    let mut parts: Vec<Bytes> = Vec::new();
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut total = 0;
    loop {
        let idle_deadline = Instant::now() + body_read_timeout;
        let rate_deadline = rate_deadline(started, body_read_timeout, total, min_rate);
        let deadline = rate_deadline.map_or(idle_deadline, |rate| rate.min(idle_deadline));
        let Ok(next) = tokio::time::timeout_at(deadline, chunks.next()).await else {
            return Err(if rate_deadline.is_some_and(|rate| rate < idle_deadline) {
                IngestFailure::BodyTooSlow {
                    received: total,
                    elapsed: started.elapsed(),
                    min_rate,
                }
            } else {
                IngestFailure::BodyStalled {
                    received: total,
                    timeout: body_read_timeout,
                }
            });
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(|error| IngestFailure::ReadBody(error.to_string()))?;
        if chunk.is_empty() {
            continue;
        }
        total += chunk.len();
        ingestor.metrics().request_bytes(Api::Http, chunk.len());
        ingestor.check_request_size(total)?;
        let taken = ingestor.try_reserve(chunk.len())?;
        match permit.as_mut() {
            Some(permit) => permit.merge(taken),
            None => permit = Some(taken),
        }
        parts.push(chunk);
    }
    let body = match parts.len() {
        0 => Bytes::new(),
        1 => parts.swap_remove(0),
        _ => {
            let mut joined = BytesMut::with_capacity(total);
            for part in &parts {
                joined.extend_from_slice(part);
            }
            joined.freeze()
        }
    };
    Ok((body, permit))
}

/// When a body that has `received` bytes after starting at `started` falls under
/// `min_rate` bytes per second, counting only the time past `grace`; `None` without a
/// minimum rate, or before any byte has arrived (the wait for the first one is
/// `ingest.body-read-timeout`, which ends at the same time).
fn rate_deadline(
    started: Instant,
    grace: Duration,
    received: usize,
    min_rate: u64,
) -> Option<Instant> {
    if min_rate == 0 || received == 0 {
        return None;
    }
    let earned = Duration::from_secs_f64(received as f64 / min_rate as f64);
    Some(started + grace + earned)
}

fn is_ndjson_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonl"
            | "application/jsonlines"
            | "application/json-lines"
            | "application/x-jsonlines"
    )
}

/// Cuts a body into events: NDJSON lines, or the elements of a JSON array.
pub(crate) fn split_events(body: &Bytes, ndjson: bool) -> Result<Vec<Bytes>, IngestFailure> {
    let first = body.iter().position(|byte| !byte.is_ascii_whitespace());
    let events = match first {
        Some(start) if !ndjson && body[start] == b'[' => split_array(body, start)?,
        _ => split_lines(body),
    };
    if events.is_empty() {
        return Err(IngestFailure::NoEvents);
    }
    Ok(events)
}

fn split_lines(body: &Bytes) -> Vec<Bytes> {
    let mut events = Vec::new();
    let mut start = 0;
    while start < body.len() {
        let end = memchr_newline(&body[start..]).map_or(body.len(), |at| start + at);
        let line = trim_range(body, start, end);
        if !line.is_empty() {
            events.push(body.slice(line));
        }
        start = end + 1;
    }
    events
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&byte| byte == b'\n')
}

fn trim_range(body: &[u8], mut start: usize, mut end: usize) -> std::ops::Range<usize> {
    while start < end && body[start].is_ascii_whitespace() {
        start += 1;
    }
    while end > start && body[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    start..end
}

/// Splits the top-level elements of the JSON array starting at `open` by scanning its
/// structure (strings, escapes, nesting); each element is validated on its own later.
fn split_array(body: &Bytes, open: usize) -> Result<Vec<Bytes>, IngestFailure> {
    let bytes = &body[..];
    let mut events = Vec::new();
    let mut depth = 0_usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut element_start = open + 1;
    let mut idx = open + 1;
    let mut closed_at = None;
    while idx < bytes.len() {
        let byte = bytes[idx];
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else {
            match byte {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b']' => {
                    closed_at = Some(idx);
                    break;
                }
                b'}' => {
                    return Err(IngestFailure::BadBody(format!(
                        "unbalanced `}}` at byte {idx}"
                    )));
                }
                b',' if depth == 0 => {
                    let element = trim_range(bytes, element_start, idx);
                    events.push(body.slice(element));
                    element_start = idx + 1;
                }
                _ => {}
            }
        }
        idx += 1;
    }
    let Some(close) = closed_at else {
        return Err(IngestFailure::BadBody(format!(
            "the array opened at byte {open} is not closed"
        )));
    };
    let last = trim_range(bytes, element_start, close);
    if last.is_empty() {
        if !events.is_empty() {
            return Err(IngestFailure::BadBody(format!(
                "trailing comma before `]` at byte {close}"
            )));
        }
    } else {
        events.push(body.slice(last));
    }
    if let Some(extra) = bytes[close + 1..]
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
    {
        return Err(IngestFailure::BadBody(format!(
            "unexpected bytes after the array at byte {}",
            close + 1 + extra
        )));
    }
    Ok(events)
}

fn outcome_response(stream: &str, outcome: &BatchOutcome) -> Response {
    let body = IngestBody {
        stream,
        accepted: outcome.accepted,
        rejected: outcome.rejections.len() as u64,
        aborted: outcome.aborted,
        ranges: &outcome.ranges,
        rejections: outcome
            .rejections
            .iter()
            .map(|rejection| RejectionBody {
                index: rejection.index,
                code: rejection.reason.code(),
                field: rejection.reason.field(),
                reason: rejection.reason.to_string(),
            })
            .collect(),
    };
    let status = if outcome.aborted {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

fn failure_response(failure: &IngestFailure) -> Response {
    let (status, code) = match failure {
        IngestFailure::UnknownStream { .. } => (StatusCode::NOT_FOUND, "unknown_stream"),
        IngestFailure::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, "busy"),
        IngestFailure::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
        IngestFailure::NoEvents => (StatusCode::BAD_REQUEST, "no_events"),
        IngestFailure::BadBody(_) => (StatusCode::BAD_REQUEST, "bad_body"),
        IngestFailure::ReadBody(_) => (StatusCode::BAD_REQUEST, "unreadable_body"),
        IngestFailure::BodyStalled { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        IngestFailure::BodyTooSlow { .. } => (StatusCode::REQUEST_TIMEOUT, "body_too_slow"),
        IngestFailure::Append { .. } => (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable"),
        IngestFailure::Validation(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    // These are answered before the body's end (the budget and the limits are checked as
    // it arrives), so the rest of it must not be read as the next request.
    let closes = matches!(
        failure,
        IngestFailure::Busy { .. }
            | IngestFailure::TooLarge { .. }
            | IngestFailure::ReadBody(_)
            | IngestFailure::BodyStalled { .. }
            | IngestFailure::BodyTooSlow { .. }
    );
    if matches!(
        failure,
        IngestFailure::BodyStalled { .. } | IngestFailure::BodyTooSlow { .. }
    ) {
        debug!(error = %failure, "request body timed out");
    }
    if matches!(
        failure,
        IngestFailure::Append { .. } | IngestFailure::Validation(_)
    ) {
        warn!(error = %failure, "ingest request failed");
    }
    let mut response = error_response(status, code, failure.to_string());
    if closes {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let IngestFailure::Busy { retry_after, .. } = failure {
        let millis = retry_after.as_millis();
        let seconds = millis.div_ceil(1000).max(1);
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        headers.insert("retry-after-ms", HeaderValue::from(millis as u64));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(body: &str, ndjson: bool, expect: &[&str]) {
        let events = split_events(&Bytes::copy_from_slice(body.as_bytes()), ndjson)
            .unwrap_or_else(|failure| panic!("{body}: {failure}"));
        let events: Vec<&str> = events
            .iter()
            .map(|event| std::str::from_utf8(event).expect("utf-8"))
            .collect();
        assert_eq!(events, expect, "{body}");
    }

    #[track_caller]
    fn check_error(body: &str, expect: &str) {
        match split_events(&Bytes::copy_from_slice(body.as_bytes()), false) {
            Ok(events) => panic!("{body}: split into {events:?}"),
            Err(failure) => assert_eq!(failure.to_string(), expect, "{body}"),
        }
    }

    #[test]
    fn ndjson_lines_are_events_and_blank_lines_skipped() {
        check(
            "{\"a\":1}\n\n  {\"b\":2}\r\n{bad\n",
            false,
            &["{\"a\":1}", "{\"b\":2}", "{bad"],
        );
        check("{\"a\":1}", false, &["{\"a\":1}"]);
        check("[1]\n[2]", true, &["[1]", "[2]"]);
    }

    #[test]
    fn array_elements_are_events() {
        check(
            r#" [ {"a": "x,]}\"{"}, {"b": [1, {"c": 2}]} ,3, "s" ] "#,
            false,
            &[
                r#"{"a": "x,]}\"{"}"#,
                r#"{"b": [1, {"c": 2}]}"#,
                "3",
                r#""s""#,
            ],
        );
        check(
            "[{\"a\":1}\n,\n{\"b\":\n2}]",
            false,
            &["{\"a\":1}", "{\"b\":\n2}"],
        );
        check("[{,}, {\"a\" 1}]", false, &["{,}", "{\"a\" 1}"]);
    }

    #[test]
    fn malformed_arrays_and_empty_bodies_are_refused() {
        check_error("", "the request holds no events");
        check_error(" \n ", "the request holds no events");
        check_error("[]", "the request holds no events");
        check_error(
            "[{\"a\":1}",
            "the body is not a JSON array: the array opened at byte 0 is not closed",
        );
        check_error(
            "[{\"a\":1},]",
            "the body is not a JSON array: trailing comma before `]` at byte 9",
        );
        check_error(
            "[{\"a\":1}] x",
            "the body is not a JSON array: unexpected bytes after the array at byte 10",
        );
        check_error(
            "[}]",
            "the body is not a JSON array: unbalanced `}` at byte 1",
        );
    }

    #[test]
    fn a_body_may_trickle_only_at_the_minimum_rate_after_the_grace() {
        let started = Instant::now();
        let grace = Duration::from_secs(10);
        assert_eq!(rate_deadline(started, grace, 0, 1000), None, "nothing yet");
        assert_eq!(rate_deadline(started, grace, 5000, 0), None, "no minimum");
        assert_eq!(
            rate_deadline(started, grace, 5000, 1000),
            Some(started + Duration::from_secs(15))
        );
        assert_eq!(
            rate_deadline(started, grace, 1, 1000),
            Some(started + Duration::from_millis(10_001))
        );
    }

    #[test]
    fn grpc_paths_are_the_grpc_services_methods() {
        assert!(is_grpc_path("/runnel.ingest.v1.Ingest/Ingest"));
        assert!(is_grpc_path("/grpc.health.v1.Health/Check"));
        assert!(is_grpc_path("/runnel.ingest.v1.Ingest/"));
        assert!(!is_grpc_path("/runnel.ingest.v1.Ingestx/Ingest"));
        assert!(!is_grpc_path("/runnel.ingest.v1.Ingest"));
        assert!(!is_grpc_path("/v1/streams/clicks/events"));
        assert!(!is_grpc_path("runnel.ingest.v1.Ingest/Ingest"));
        let grpc = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(content_type).expect("header"),
            );
            is_grpc(&headers)
        };
        assert!(grpc("application/grpc"));
        assert!(grpc("application/grpc+proto"));
        assert!(!grpc("application/grpc-web"));
        assert!(!grpc("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn quoted_paths_are_cut_on_a_character_boundary() {
        let uri: Uri = "/v1/stream/clicks/events?x=1".parse().expect("uri");
        assert_eq!(quoted_path(&uri), "/v1/stream/clicks/events");
        let long = format!("/{}", "%C3%A9".repeat(100));
        let uri: Uri = long.parse().expect("uri");
        let quoted = quoted_path(&uri);
        assert!(quoted.ends_with("..."), "{quoted}");
        assert!(quoted.len() <= MAX_QUOTED_PATH_BYTES + 3, "{quoted}");
    }

    #[test]
    fn ndjson_content_types_are_recognised() {
        assert!(is_ndjson_content_type("application/x-ndjson"));
        assert!(is_ndjson_content_type("Application/JSONL; charset=utf-8"));
        assert!(!is_ndjson_content_type("application/json"));
    }
}
