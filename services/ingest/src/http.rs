//! The HTTP front end: `POST /v1/streams/{stream}/events`.
//!
//! The body is NDJSON (one JSON object per line; blank lines are skipped) or one JSON array
//! of objects. It is read as NDJSON when the content type says so (`application/x-ndjson`,
//! `application/jsonl`, ...), as an array when its first non-blank byte is `[`, and as
//! NDJSON otherwise (so a single-line object is one event). `?all_or_nothing=true` asks for
//! all-or-nothing.
//!
//! Answers, as JSON:
//! - 200 with `{stream, accepted, rejected, aborted, ranges, rejections}` once the batch is
//!   durable, also when some events were rejected;
//! - 422 with the same body when all-or-nothing was asked and an event was rejected;
//! - 400 for a body without events or a malformed array, 404 for an undeclared stream,
//!   413 for a body over `ingest.max-request-bytes`, 429 with `Retry-After` (seconds) and
//!   `retry-after-ms` when too many bytes are in flight, 503 when the log fails;
//!   all with `{error, code}`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tracing::{Instrument, info_span, warn};

use crate::service::{Api, Batch, BatchOutcome, IngestFailure, Ingestor, PartitionRange};

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

/// Returns the HTTP routes.
pub(crate) fn router(ingestor: Arc<Ingestor>) -> Router {
    Router::new()
        .route("/v1/streams/{stream}/events", post(post_events))
        .with_state(ingestor)
}

async fn post_events(
    State(ingestor): State<Arc<Ingestor>>,
    Path(stream): Path<String>,
    Query(params): Query<IngestParams>,
    request_headers: HeaderMap,
    body: Body,
) -> Response {
    let span = info_span!("http_ingest", stream = %stream);
    async move {
        match ingest(&ingestor, &stream, params, &request_headers, body).await {
            Ok(outcome) => outcome_response(&stream, &outcome),
            Err(failure) => failure_response(&failure),
        }
    }
    .instrument(span)
    .await
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
    // With a known length the bytes are reserved before the body is read; otherwise after
    // (the read is bounded by the request limit either way).
    let (body, _permit) = match content_length {
        Some(length) => {
            let permit = ingestor.try_reserve(length)?;
            (read_body(ingestor, body, Some(length)).await?, permit)
        }
        None => {
            let body = read_body(ingestor, body, None).await?;
            let permit = ingestor.try_reserve(body.len())?;
            (body, permit)
        }
    };
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

/// Reads the whole body, refusing it as soon as it passes the request limit.
async fn read_body(
    ingestor: &Ingestor,
    body: Body,
    size_hint: Option<usize>,
) -> Result<Bytes, IngestFailure> {
    let mut chunks = body.into_data_stream();
    // One chunk is kept as it is; several are joined into one buffer.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| IngestFailure::ReadBody(error.to_string()))?;
        total += chunk.len();
        ingestor.check_request_size(total)?;
        if let Some(buffer) = joined.as_mut() {
            buffer.extend_from_slice(&chunk);
        } else if let Some(previous) = first.take() {
            let mut buffer = BytesMut::with_capacity(size_hint.unwrap_or(0).max(total));
            buffer.extend_from_slice(&previous);
            buffer.extend_from_slice(&chunk);
            joined = Some(buffer);
        } else {
            first = Some(chunk);
        }
    }
    Ok(match (first, joined) {
        (_, Some(buffer)) => buffer.freeze(),
        (Some(first), None) => first,
        (None, None) => Bytes::new(),
    })
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
        IngestFailure::Append { .. } => (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable"),
        IngestFailure::Validation(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    if matches!(
        failure,
        IngestFailure::Append { .. } | IngestFailure::Validation(_)
    ) {
        warn!(error = %failure, "ingest request failed");
    }
    let mut response = (
        status,
        axum::Json(ErrorBody {
            code,
            error: failure.to_string(),
        }),
    )
        .into_response();
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
    fn ndjson_content_types_are_recognised() {
        assert!(is_ndjson_content_type("application/x-ndjson"));
        assert!(is_ndjson_content_type("Application/JSONL; charset=utf-8"));
        assert!(!is_ndjson_content_type("application/json"));
    }
}
