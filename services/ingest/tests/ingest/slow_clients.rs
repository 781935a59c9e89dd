//! Slow and abusive clients: connections that send only a request head, a head that never
//! ends, nothing at all, or a body a byte a second are timed out, hold none of the in-flight
//! budget meanwhile, and do not stop a normal client; connections over the per-client
//! limit are refused at once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sandbox::{
    HttpResponse, MAX_REQUEST_BYTES, Sandbox, now_millis, parse_response, post_lines,
    read_response, write_post_head,
};

/// The timeouts the tests run with: short, so that each test takes a few seconds.
const TIMEOUT_OVERRIDES: [(&str, &str); 5] = [
    ("RUNNEL__INGEST__HEADER_READ_TIMEOUT", "2s"),
    ("RUNNEL__INGEST__BODY_READ_TIMEOUT", "2s"),
    ("RUNNEL__INGEST__MIN_BODY_BYTES_PER_SECOND", "1000"),
    ("RUNNEL__INGEST__MAX_CONNECTIONS", "400"),
    ("RUNNEL__INGEST__MAX_CONNECTIONS_PER_CLIENT", "200"),
];

/// The longest any abusive connection may live in these tests.
const CUT_WITHIN: Duration = Duration::from_secs(10);

/// Reads until the server closes the connection (a reset counts as closing); returns what
/// was read.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let read = tokio::time::timeout(CUT_WITHIN, stream.read_to_end(&mut raw)).await;
    assert!(
        read.is_ok(),
        "the server closes the connection within {CUT_WITHIN:?}; read so far: {}",
        String::from_utf8_lossy(&raw)
    );
    raw
}

/// A body sent one byte a second (spaces), with the server's answer read meanwhile.
struct SlowBody {
    answer: Vec<u8>,
    bytes_sent: usize,
    elapsed: Duration,
}

async fn send_slow_body(addr: SocketAddr) -> SlowBody {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    write_post_head(
        &mut stream,
        "/v1/streams/clicks/events",
        Some("application/x-ndjson"),
        1000,
    )
    .await;
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let bytes_sent = Arc::new(AtomicUsize::new(0));
    let writer_task = {
        let bytes_sent = Arc::clone(&bytes_sent);
        tokio::spawn(async move {
            for _ in 0..1000 {
                if writer.write_all(b" ").await.is_err() {
                    return;
                }
                bytes_sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CUT_WITHIN, reader.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    writer_task.abort();
    assert!(read.is_ok(), "the slow body is cut within {CUT_WITHIN:?}");
    SlowBody {
        answer,
        bytes_sent: bytes_sent.load(Ordering::SeqCst),
        elapsed,
    }
}

fn event(user_id: &str) -> String {
    format!(
        r#"{{"event_time": {}, "user_id": "{user_id}"}}"#,
        now_millis()
    )
}

/// The user ids a normal client saw acknowledged, and when each batch was.
#[derive(Debug, Default)]
struct Acknowledged {
    users: Vec<String>,
    at: Vec<Instant>,
}

/// Sends batches over HTTP, each on a new connection, until `stop`; a batch may be retried
/// twice (a 429 or 503 answer), no more.
async fn ingest_over_http(addr: SocketAddr, stop: Arc<AtomicUsize>) -> Acknowledged {
    let mut acknowledged = Acknowledged::default();
    let mut batch_idx = 0;
    while stop.load(Ordering::SeqCst) == 0 || batch_idx < 5 {
        let users: Vec<String> = (0..5)
            .map(|idx| format!("http-{batch_idx}-{idx}"))
            .collect();
        let lines: Vec<String> = users.iter().map(|user| event(user)).collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let response = post_lines(addr, "clicks", "", &lines).await;
            if response.status == 200 {
                assert_eq!(response.json()["accepted"], 5);
                break;
            }
            assert!(
                attempt < 3 && [429, 503].contains(&response.status),
                "batch {batch_idx}, attempt {attempt}: {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acknowledged.users.extend(users);
        acknowledged.at.push(Instant::now());
        batch_idx += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acknowledged
}

/// As [`ingest_over_http`], over gRPC on one channel.
async fn ingest_over_grpc(sandbox_addr: SocketAddr, stop: Arc<AtomicUsize>) -> Acknowledged {
    let mut client = runnel_proto::ingest::v1::ingest_client::IngestClient::connect(format!(
        "http://{sandbox_addr}"
    ))
    .await
    .expect("connect gRPC");
    let mut acknowledged = Acknowledged::default();
    let mut batch_idx = 0;
    while stop.load(Ordering::SeqCst) == 0 || batch_idx < 5 {
        let users: Vec<String> = (0..5)
            .map(|idx| format!("grpc-{batch_idx}-{idx}"))
            .collect();
        let request = IngestRequest {
            stream: "clicks".to_string(),
            all_or_nothing: false,
            events: Some(Events::Json(JsonEvents {
                events: users.iter().map(|user| Bytes::from(event(user))).collect(),
            })),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.ingest(request.clone()).await {
                Ok(response) => {
                    assert_eq!(response.into_inner().accepted, 5);
                    break;
                }
                Err(status) => {
                    assert!(
                        attempt < 3 && status.code() == tonic::Code::ResourceExhausted,
                        "batch {batch_idx}, attempt {attempt}: {status}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        acknowledged.users.extend(users);
        acknowledged.at.push(Instant::now());
        batch_idx += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acknowledged
}

#[tokio::test]
async fn slow_clients_are_timed_out_while_a_normal_client_keeps_ingesting() {
    let sandbox = Sandbox::start_with(&TIMEOUT_OVERRIDES).await;
    let addr = sandbox.addr;

    // 100 connections send a head announcing a whole request (100 x 64 KiB, six times the
    // 1 MiB budget) and no body.
    let heads_sent = Instant::now();
    let mut header_only = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        write_post_head(
            &mut stream,
            "/v1/streams/clicks/events",
            Some("application/x-ndjson"),
            MAX_REQUEST_BYTES,
        )
        .await;
        header_only.push(stream);
    }
    // Ten send a head that never ends, five send nothing.
    let mut unfinished_heads = Vec::new();
    for idx in 0..10 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(
                format!("POST /v1/streams/clicks/events HTTP/1.1\r\nHost: slow-{idx}\r\n")
                    .as_bytes(),
            )
            .await
            .expect("write a part of a head");
        unfinished_heads.push(stream);
    }
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let slow_body = tokio::spawn(send_slow_body(addr));

    // Meanwhile, normal clients over HTTP and gRPC.
    let stop = Arc::new(AtomicUsize::new(0));
    let http_client = tokio::spawn(ingest_over_http(addr, Arc::clone(&stop)));
    let grpc_client = tokio::spawn(ingest_over_grpc(addr, Arc::clone(&stop)));

    // The header-only requests are answered 408 once their body has not come for 2 s.
    let mut first_cut = None;
    for (idx, mut stream) in header_only.into_iter().enumerate() {
        let raw = read_until_closed(&mut stream).await;
        first_cut.get_or_insert_with(|| heads_sent.elapsed());
        let response = parse_response(&raw);
        assert_eq!(
            response.status,
            408,
            "header-only connection {idx}: {}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(response.header("connection"), Some("close"));
        let body = response.json();
        assert_eq!(body["code"], "body_timeout", "{body}");
        assert!(
            body["error"]
                .as_str()
                .expect("error")
                .contains("ingest.body-read-timeout"),
            "{body}"
        );
    }
    let first_cut = first_cut.expect("100 connections");
    assert!(
        first_cut >= Duration::from_millis(1900),
        "not cut before the body timeout: {first_cut:?}"
    );
    // The unfinished and silent connections are closed without an answer.
    for mut stream in unfinished_heads.into_iter().chain(silent) {
        let raw = read_until_closed(&mut stream).await;
        assert!(
            !raw.starts_with(b"HTTP/1.1 2"),
            "{}",
            String::from_utf8_lossy(&raw)
        );
    }
    // The slow body is answered 408 too, for its rate.
    let slow = slow_body.await.expect("slow body task");
    let response: HttpResponse = parse_response(&slow.answer);
    assert_eq!(
        response.status,
        408,
        "{}",
        String::from_utf8_lossy(&slow.answer)
    );
    assert_eq!(response.header("connection"), Some("close"));
    let body = response.json();
    assert_eq!(body["code"], "body_too_slow", "{body}");
    assert!(
        (1..=8).contains(&slow.bytes_sent),
        "{} bytes sent",
        slow.bytes_sent
    );
    assert!(slow.elapsed < Duration::from_secs(8), "{:?}", slow.elapsed);

    // The normal clients went on all along, also while every abusive connection was open;
    // every event they saw acknowledged is in the log, and nothing else is.
    stop.store(1, Ordering::SeqCst);
    let over_http = http_client.await.expect("HTTP client");
    let over_grpc = grpc_client.await.expect("gRPC client");
    let cut_at = heads_sent + first_cut;
    for (api, acknowledged) in [("HTTP", &over_http), ("gRPC", &over_grpc)] {
        let n_before_cut = acknowledged.at.iter().filter(|at| **at < cut_at).count();
        assert!(
            n_before_cut >= 3,
            "{api}: {n_before_cut} batches acknowledged while the slow connections were open"
        );
    }
    let acknowledged: BTreeSet<String> =
        over_http.users.into_iter().chain(over_grpc.users).collect();
    let in_log: BTreeSet<String> = sandbox
        .records("clicks")
        .await
        .iter()
        .map(|record| {
            let value: serde_json::Value = serde_json::from_slice(&record.value).expect("json");
            value["user_id"].as_str().expect("user_id").to_string()
        })
        .collect();
    assert_eq!(in_log, acknowledged, "no acknowledged event is lost");
    sandbox.stop().await;
}

#[tokio::test]
async fn a_head_without_its_body_holds_no_budget() {
    // The budget is one maximal request, which the head announces.
    let budget = MAX_REQUEST_BYTES.to_string();
    let mut overrides = TIMEOUT_OVERRIDES.to_vec();
    overrides.push(("RUNNEL__INGEST__MAX_IN_FLIGHT_BYTES", &budget));
    overrides.push(("RUNNEL__INGEST__BODY_READ_TIMEOUT", "20s"));
    let sandbox = Sandbox::start_with(&overrides).await;
    let mut held = TcpStream::connect(sandbox.addr).await.expect("connect");
    write_post_head(
        &mut held,
        "/v1/streams/clicks/events",
        Some("application/x-ndjson"),
        MAX_REQUEST_BYTES,
    )
    .await;
    let line = event("held");
    held.write_all(line.as_bytes()).await.expect("write");
    // Give the server time to read the head and the line.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for idx in 0..5 {
        let response = post_lines(sandbox.addr, "clicks", "", &[event(&format!("u{idx}"))]).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
    }
    // The held request completes later, as it was announced.
    let rest = vec![b'\n'; MAX_REQUEST_BYTES - line.len()];
    held.write_all(&rest).await.expect("write the rest");
    let response = read_response(&mut held).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["accepted"], 1);
    assert_eq!(sandbox.records("clicks").await.len(), 6);
    sandbox.stop().await;
}

#[tokio::test]
async fn connections_over_the_per_client_limit_are_refused_at_once() {
    let mut overrides = TIMEOUT_OVERRIDES.to_vec();
    overrides.retain(|(key, _)| !key.contains("MAX_CONNECTIONS"));
    overrides.push(("RUNNEL__INGEST__MAX_CONNECTIONS", "8"));
    overrides.push(("RUNNEL__INGEST__MAX_CONNECTIONS_PER_CLIENT", "4"));
    overrides.push(("RUNNEL__INGEST__HEADER_READ_TIMEOUT", "20s"));
    let sandbox = Sandbox::start_with(&overrides).await;
    let mut admitted = Vec::new();
    for _ in 0..4 {
        admitted.push(TcpStream::connect(sandbox.addr).await.expect("connect"));
    }
    // Let the server accept them.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let response = post_lines(sandbox.addr, "clicks", "", &[event("refused")]).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once: {:?}",
        started.elapsed()
    );
    assert_eq!(
        response.status,
        503,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("retry-after"), Some("1"));
    let body = response.json();
    assert_eq!(body["code"], "too_many_connections");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("ingest.max-connections-per-client"),
        "{body}"
    );

    // The admitted connections are served as usual.
    let line = event("admitted");
    let mut first = admitted.remove(0);
    write_post_head(
        &mut first,
        "/v1/streams/clicks/events",
        Some("application/x-ndjson"),
        line.len(),
    )
    .await;
    first.write_all(line.as_bytes()).await.expect("write");
    let response = read_response(&mut first).await;
    assert_eq!(response.status, 200);

    // Once connections close, their places are given back.
    drop(first);
    drop(admitted.pop());
    let mut accepted = None;
    for _ in 0..50 {
        let response = post_lines(sandbox.addr, "clicks", "", &[event("later")]).await;
        if response.status == 200 {
            accepted = Some(response);
            break;
        }
        assert_eq!(response.status, 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(accepted.is_some(), "a connection is admitted again");
    let users: BTreeSet<String> = sandbox
        .records("clicks")
        .await
        .iter()
        .map(|record| {
            let value: serde_json::Value = serde_json::from_slice(&record.value).expect("json");
            value["user_id"].as_str().expect("user_id").to_string()
        })
        .collect();
    assert_eq!(
        users,
        BTreeSet::from(["admitted".to_string(), "later".to_string()])
    );
    drop(admitted);
    sandbox.stop().await;
}
