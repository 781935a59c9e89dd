//! `GET /metrics` on the ingest port: after real HTTP and gRPC requests (accepted, rejected,
//! refused, all-or-nothing, an undeclared stream), every ingest family counts them, beside
//! the archiver's families, and the whole exposition parses.

use bytes::Bytes;
use prost::Message;
use runnel_metrics::{MetricType, ParsedMetrics, parse_text};
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::sandbox::{Sandbox, http_post, now_millis, read_response};

fn json_request(stream: &str, all_or_nothing: bool, events: Vec<String>) -> IngestRequest {
    IngestRequest {
        stream: stream.to_string(),
        all_or_nothing,
        events: Some(Events::Json(JsonEvents {
            events: events.into_iter().map(Bytes::from).collect(),
        })),
    }
}

/// Scrapes `GET /metrics` and parses it.
async fn scrape(sandbox: &Sandbox) -> ParsedMetrics {
    let mut stream = TcpStream::connect(sandbox.addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write request");
    let response = read_response(&mut stream).await;
    let text = String::from_utf8(response.body.clone()).expect("utf-8 exposition");
    assert_eq!(response.status, 200, "{text}");
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_text(&text).unwrap_or_else(|error| panic!("{error}\n{text}"))
}

#[tokio::test]
async fn requests_events_and_bytes_are_counted_by_protocol_stream_code_and_reason() {
    let sandbox = Sandbox::start().await;
    let before = scrape(&sandbox).await;
    assert_eq!(
        before.types.get("runnel_ingest_request_duration_seconds"),
        Some(&MetricType::Histogram)
    );
    before.assert_value(
        "runnel_ingest_events_accepted_total",
        &[("stream", "clicks")],
        0.0,
    );
    let now = now_millis();
    let valid = |user: &str| format!(r#"{{"event_time": {now}, "user_id": "{user}"}}"#);
    let wrong_type = format!(r#"{{"event_time": {now}, "user_id": "u9", "duration_ms": "x"}}"#);

    // HTTP: two accepted and one rejected; all-or-nothing refused; an undeclared stream.
    let mut http_bytes = 0;
    let body = [valid("u1"), valid("u2"), wrong_type.clone()].join("\n");
    http_bytes += body.len();
    let path = "/v1/streams/clicks/events";
    let response = http_post(sandbox.addr, path, None, body.as_bytes()).await;
    assert_eq!(response.status, 200);
    let body = [valid("u3"), wrong_type.clone()].join("\n");
    http_bytes += body.len();
    let response = http_post(
        sandbox.addr,
        "/v1/streams/clicks/events?all_or_nothing=true",
        None,
        body.as_bytes(),
    )
    .await;
    assert_eq!(response.status, 422);
    let body = valid("u4");
    http_bytes += body.len();
    let response = http_post(
        sandbox.addr,
        "/v1/streams/no-such-stream/events",
        None,
        body.as_bytes(),
    )
    .await;
    assert_eq!(response.status, 404);

    // gRPC: one accepted and one rejected; a request without events; a stream of two.
    let mut client = sandbox.grpc().await;
    let mut grpc_bytes = 0;
    let unary = json_request(
        "metrics",
        false,
        vec![
            format!(r#"{{"at": {now}, "value": 1.5}}"#),
            format!(r#"{{"at": {now}}}"#),
        ],
    );
    grpc_bytes += unary.encoded_len();
    let response = client.ingest(unary).await.expect("ingest").into_inner();
    assert_eq!((response.accepted, response.rejected), (1, 1));
    let empty = IngestRequest {
        stream: "clicks".to_string(),
        all_or_nothing: false,
        events: None,
    };
    grpc_bytes += empty.encoded_len();
    let refused = client.ingest(empty).await.expect_err("no events");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let batches = vec![
        json_request("clicks", false, vec![valid("u5"), valid("u6")]),
        json_request("clicks", false, vec![valid("u7")]),
    ];
    grpc_bytes += batches.iter().map(Message::encoded_len).sum::<usize>();
    let response = client
        .ingest_stream(futures::stream::iter(batches))
        .await
        .expect("ingest stream")
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (3, 0));

    let metrics = scrape(&sandbox).await;
    let requests = "runnel_ingest_requests_total";
    for (labels, n) in [
        (
            &[("protocol", "http"), ("stream", "clicks"), ("code", "200")][..],
            1.0,
        ),
        (
            &[("protocol", "http"), ("stream", "clicks"), ("code", "422")],
            1.0,
        ),
        (&[("protocol", "http"), ("code", "404")], 1.0),
        (
            &[("protocol", "grpc"), ("stream", "metrics"), ("code", "OK")],
            1.0,
        ),
        (
            &[
                ("protocol", "grpc"),
                ("stream", "clicks"),
                ("code", "INVALID_ARGUMENT"),
            ],
            1.0,
        ),
        (
            &[("protocol", "grpc"), ("stream", "clicks"), ("code", "OK")],
            2.0,
        ),
    ] {
        metrics.assert_value(requests, labels, n);
    }
    assert_eq!(metrics.family(requests).len(), 6, "no other series");
    let accepted = "runnel_ingest_events_accepted_total";
    metrics.assert_value(accepted, &[("stream", "clicks")], 5.0);
    metrics.assert_value(accepted, &[("stream", "metrics")], 1.0);
    let rejected = "runnel_ingest_events_rejected_total";
    metrics.assert_value(
        rejected,
        &[("stream", "clicks"), ("reason", "wrong_type")],
        2.0,
    );
    metrics.assert_value(
        rejected,
        &[("stream", "clicks"), ("reason", "all_or_nothing")],
        1.0,
    );
    metrics.assert_value(
        rejected,
        &[("stream", "metrics"), ("reason", "missing_field")],
        1.0,
    );
    metrics.assert_value(rejected, &[("reason", "unknown_stream")], 1.0);
    assert_eq!(metrics.family(rejected).len(), 4, "no other series");
    let bytes = "runnel_ingest_request_bytes_total";
    metrics.assert_value(bytes, &[("protocol", "http")], http_bytes as f64);
    metrics.assert_value(bytes, &[("protocol", "grpc")], grpc_bytes as f64);
    metrics.assert_value("runnel_ingest_in_flight_bytes", &[], 0.0);
    metrics.assert_value(
        "runnel_ingest_max_in_flight_bytes",
        &[],
        (1024 * 1024) as f64,
    );
    let durations = "runnel_ingest_request_duration_seconds";
    metrics.assert_value(&format!("{durations}_count"), &[("protocol", "http")], 3.0);
    metrics.assert_value(&format!("{durations}_count"), &[("protocol", "grpc")], 4.0);
    metrics.assert_value(
        &format!("{durations}_bucket"),
        &[("protocol", "grpc"), ("le", "+Inf")],
        4.0,
    );
    // The archiver's families are served beside the service's own.
    assert_eq!(
        metrics.types.get("runnel_archiver_lag_records"),
        Some(&MetricType::Gauge)
    );
    sandbox.stop().await;
}
