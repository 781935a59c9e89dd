//! A started ingest service and the helpers the tests share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use runnel_config::Config;
use runnel_log::{Log, Record, StartOffset};
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Streams of the tests: `clicks` keyed by user over 4 partitions, `metrics` unkeyed over 3;
/// no jobs.
fn streams() -> String {
    let clicks = runnel_testkit::streams::Stream::clicks(
        4,
        Some("user_id"),
        &["event_time", "user_id", "page", "duration_ms"],
    )
    .nullable(&["page", "duration_ms"])
    .option(r#"max-event-time-behind = "1d""#)
    .toml();
    format!(
        r#"
jobs = []

{clicks}
[[streams]]
name = "metrics"
partitions = 3
event-time = "at"
max-event-time-behind = "1d"
schema = [
  {{ name = "at", type = "int64" }},
  {{ name = "value", type = "float64" }},
  {{ name = "host", type = "string", nullable = true }},
]
"#
    )
}

/// The limits the tests run with.
pub(crate) const MAX_EVENT_BYTES: usize = 512;
pub(crate) const MAX_REQUEST_BYTES: usize = 64 * 1024;

pub(crate) struct Sandbox {
    pub(crate) addr: SocketAddr,
    pub(crate) log: Arc<dyn Log>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Sandbox {
    /// Starts the service with the test limits and 1 MiB of in-flight bytes.
    pub(crate) async fn start() -> Sandbox {
        Sandbox::start_with(&[]).await
    }

    /// Starts the service with extra `RUNNEL__*` overrides.
    pub(crate) async fn start_with(overrides: &[(&str, &str)]) -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("runnel.toml");
        std::fs::write(&config_path, streams()).expect("write config");
        let mut env: HashMap<String, String> = [
            (
                "RUNNEL__STORAGE__DATA_DIR",
                dir.path().display().to_string(),
            ),
            ("RUNNEL__INGEST__LISTEN", "127.0.0.1:0".to_string()),
            (
                "RUNNEL__INGEST__MAX_EVENT_BYTES",
                MAX_EVENT_BYTES.to_string(),
            ),
            (
                "RUNNEL__INGEST__MAX_REQUEST_BYTES",
                MAX_REQUEST_BYTES.to_string(),
            ),
            (
                "RUNNEL__INGEST__MAX_IN_FLIGHT_BYTES",
                (1024 * 1024).to_string(),
            ),
            ("RUNNEL__INGEST__RETRY_AFTER", "1500ms".to_string()),
            ("RUNNEL__INGEST__RUN_ARCHIVER", "false".to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect();
        for (key, value) in overrides {
            env.insert(key.to_string(), value.to_string());
        }
        let config = Config::load(&[config_path], &env).expect("valid config");
        let log = runnel_server_common::open_storage(&config)
            .await
            .expect("open storage");
        let shutdown = CancellationToken::new();
        let bound = runnel_ingest::bind(&config, Arc::clone(&log), shutdown.clone())
            .await
            .expect("bind");
        let addr = bound.local_addr();
        let server = tokio::spawn(async move {
            bound.serve().await.expect("serve");
        });
        Sandbox {
            addr,
            log,
            shutdown,
            server,
            _dir: dir,
        }
    }

    pub(crate) async fn grpc(&self) -> IngestClient<tonic::transport::Channel> {
        IngestClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect gRPC")
    }

    /// Every record of `topic`, partition by partition, in offset order.
    pub(crate) async fn records(&self, topic: &str) -> Vec<Record> {
        let n_partitions = self.log.partition_count(topic).await.expect("topic");
        let mut records = Vec::new();
        for partition in 0..n_partitions {
            records.extend(self.partition_records(topic, partition).await);
        }
        records
    }

    pub(crate) async fn partition_records(&self, topic: &str, partition: u32) -> Vec<Record> {
        let latest = self
            .log
            .latest_offset(topic, partition)
            .await
            .expect("latest offset");
        let mut reader = self
            .log
            .reader(topic, partition, StartOffset::Earliest)
            .await
            .expect("reader");
        let mut records = Vec::new();
        while reader.position() < latest {
            records.extend(
                reader
                    .next_batch(10_000, Duration::from_secs(1))
                    .await
                    .expect("read"),
            );
        }
        records
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("server stops within 10 s")
            .expect("server task");
    }
}

pub(crate) use runnel_time::now_millis;

/// A record's header by name.
pub(crate) fn header<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
    record
        .headers
        .iter()
        .find(|header| header.key == name)
        .map(|header| std::str::from_utf8(&header.value).expect("utf-8 header"))
}

/// An HTTP response: status, headers (names lowercased), body.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "response body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Writes the head of a POST with `Content-Length: content_length` on `stream`.
pub(crate) async fn write_post_head(
    stream: &mut TcpStream,
    path: &str,
    content_type: Option<&str>,
    content_length: usize,
) {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {content_length}\r\n"
    );
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
}

/// Reads a whole `Connection: close` response.
pub(crate) async fn read_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    parse_response(&raw)
}

/// Parses a whole HTTP/1.1 response (head and body).
pub(crate) fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).expect("utf-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// POSTs `body` to `path` and returns the response.
pub(crate) async fn http_post(
    addr: SocketAddr,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    write_post_head(&mut stream, path, content_type, body.len()).await;
    stream.write_all(body).await.expect("write body");
    read_response(&mut stream).await
}

/// POSTs NDJSON lines to a stream's events endpoint.
pub(crate) async fn post_lines(
    addr: SocketAddr,
    stream: &str,
    query: &str,
    lines: &[String],
) -> HttpResponse {
    let body = lines.join("\n");
    http_post(
        addr,
        &format!("/v1/streams/{stream}/events{query}"),
        Some("application/x-ndjson"),
        body.as_bytes(),
    )
    .await
}
