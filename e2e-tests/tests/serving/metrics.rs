//! Serving's `GET /metrics` on `serving.metrics-listen`: calls counted by method and gRPC
//! code (failed ones included) and timed, subscribers, and the views' sizes, after real
//! calls over loopback; the exposition parses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_metrics::{MetricType, ParsedMetrics, parse_text};
use runnel_proto::serving::v1::{self as proto, serving_client::ServingClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{JOB, USERS, Universe, user};

/// Scrapes `GET /metrics` at `address` and parses it.
async fn scrape(address: SocketAddr) -> ParsedMetrics {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let raw = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    parse_text(body).unwrap_or_else(|error| panic!("{error}\n{body}"))
}

/// Scrapes until `condition` holds (30 s at most).
async fn scrape_until(
    address: SocketAddr,
    what: &str,
    condition: impl Fn(&ParsedMetrics) -> bool,
) -> ParsedMetrics {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = scrape(address).await;
        if condition(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within 30 s: {:#?}",
            metrics.samples
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_are_counted_by_method_and_code_beside_subscribers_and_view_sizes() {
    let universe = Universe::start(3).await;
    let shutdown = CancellationToken::new();
    let bound = runnel_serving::bind(
        &universe.config,
        Arc::clone(&universe.log),
        shutdown.clone(),
    )
    .await
    .expect("bind serving");
    let metrics_addr = bound.metrics_addr();
    assert_ne!(metrics_addr.port(), 0);
    let channel = Channel::from_shared(format!("http://{}", bound.local_addr()))
        .expect("address")
        .connect_lazy();
    let task = tokio::spawn(bound.serve());
    let mut client = ServingClient::new(channel);

    // Windows 0 and 1 of every user fire (window 2 ends after the watermark); nothing is
    // counted while the views are rebuilt and filled.
    let speed = "runnel_serving_speed_view_windows";
    let version_1 = [("job", JOB), ("version", "1")];
    let metrics = scrape_until(metrics_addr, "the speed view filled", |metrics| {
        metrics.value(speed, &version_1) == Some((2 * USERS) as f64)
            && metrics.value("runnel_serving_view_ready", &version_1) == Some(1.0)
    })
    .await;
    assert!(
        metrics
            .value(speed, &[("job", JOB), ("version", "2")])
            .is_some(),
        "a series per declared version"
    );
    assert!(metrics.family("runnel_serving_queries_total").is_empty());
    metrics.assert_value("runnel_serving_batch_view_windows", &version_1, 0.0);
    metrics.assert_value("runnel_serving_active_version", &[("job", JOB)], 1.0);
    metrics.assert_value("runnel_serving_subscribers", &[("job", JOB)], 0.0);
    assert_eq!(
        metrics.types.get("runnel_serving_query_duration_seconds"),
        Some(&MetricType::Histogram)
    );

    // Two good calls, then one NOT_FOUND and two INVALID_ARGUMENT.
    let windows = client
        .query_windows(proto::QueryWindowsRequest {
            job: JOB.to_string(),
            key: user(3),
            from_ms: 0,
            to_ms: 0,
        })
        .await
        .expect("query windows")
        .into_inner();
    assert_eq!(windows.windows.len(), 2);
    let jobs = client
        .list_jobs(proto::ListJobsRequest {})
        .await
        .expect("list jobs")
        .into_inner();
    assert_eq!(jobs.jobs[0].versions[0].speed_windows, 2 * USERS);
    let not_found = client
        .query_windows(proto::QueryWindowsRequest {
            job: "no_such_job".to_string(),
            key: user(3),
            from_ms: 0,
            to_ms: 0,
        })
        .await
        .expect_err("an undeclared job");
    assert_eq!(not_found.code(), tonic::Code::NotFound);
    let no_k = client
        .top_k(proto::TopKRequest {
            job: JOB.to_string(),
            k: 0,
            ..Default::default()
        })
        .await
        .expect_err("k 0");
    assert_eq!(no_k.code(), tonic::Code::InvalidArgument);
    let bad_token = client
        .get_window(proto::GetWindowRequest {
            job: JOB.to_string(),
            page_token: "zz".to_string(),
            ..Default::default()
        })
        .await
        .expect_err("a foreign page token");
    assert_eq!(bad_token.code(), tonic::Code::InvalidArgument);

    // A subscriber counts while its stream is open.
    let subscription = client
        .subscribe(proto::SubscribeRequest {
            job: JOB.to_string(),
            key: String::new(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    let subscribers = "runnel_serving_subscribers";
    let metrics = scrape_until(metrics_addr, "one subscriber", |metrics| {
        metrics.value(subscribers, &[("job", JOB)]) == Some(1.0)
    })
    .await;
    let queries = "runnel_serving_queries_total";
    for (method, code, n) in [
        ("QueryWindows", "OK", 1.0),
        ("QueryWindows", "NOT_FOUND", 1.0),
        ("ListJobs", "OK", 1.0),
        ("TopK", "INVALID_ARGUMENT", 1.0),
        ("GetWindow", "INVALID_ARGUMENT", 1.0),
        ("Subscribe", "OK", 1.0),
    ] {
        metrics.assert_value(queries, &[("method", method), ("code", code)], n);
    }
    assert_eq!(metrics.family(queries).len(), 6, "no other series");
    let durations = "runnel_serving_query_duration_seconds";
    for (method, n) in [
        ("QueryWindows", 2.0),
        ("ListJobs", 1.0),
        ("TopK", 1.0),
        ("GetWindow", 1.0),
        ("Subscribe", 1.0),
        ("ExportResults", 0.0),
    ] {
        metrics.assert_value(&format!("{durations}_count"), &[("method", method)], n);
        metrics.assert_value(
            &format!("{durations}_bucket"),
            &[("method", method), ("le", "+Inf")],
            n,
        );
    }
    drop(subscription);
    scrape_until(metrics_addr, "no subscriber once it hung up", |metrics| {
        metrics.value(subscribers, &[("job", JOB)]) == Some(0.0)
    })
    .await;

    shutdown.cancel();
    task.await.expect("join").expect("serving stops cleanly");
    universe.processor_shutdown.cancel();
    universe
        .processor
        .await
        .expect("join")
        .expect("stream-processor stops cleanly");
}
