//! Load generator for `scripts/bench-ingest.sh`: sends ~100-byte `clicks` events to a
//! running ingest service over gRPC or HTTP for a fixed time and prints
//! `BENCH <name> <events/s> events/s`, counting only acknowledged (durable) events.
//!
//! Built by `scripts/bench-ingest.sh` (`build_bench_driver ingest_load`), then run as
//! `ingest_load --url http://127.0.0.1:7301 --api grpc`.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::transport::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Api {
    Grpc,
    Http,
}

/// Sends events to the ingest service as fast as it acknowledges them.
#[derive(Debug, Parser)]
struct Flags {
    /// The ingest service.
    #[arg(long, default_value = "http://127.0.0.1:7301")]
    url: String,
    #[arg(long, value_enum, default_value = "grpc")]
    api: Api,
    /// The stream: the default config's `clicks` (event_time, user_id, page, country,
    /// duration_ms).
    #[arg(long, default_value = "clicks")]
    stream: String,
    /// Events per request.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection (gRPC only; HTTP/1.1 has one).
    #[arg(long, default_value_t = 2)]
    in_flight: usize,
    /// Measured time, after the warm-up.
    #[arg(long, value_parser = humantime_duration, default_value = "10s")]
    duration: Duration,
    #[arg(long, value_parser = humantime_duration, default_value = "2s")]
    warmup: Duration,
    /// Name of the BENCH line.
    #[arg(long)]
    name: Option<String>,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("bad duration `{text}`"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(number)),
        "ms" => Ok(Duration::from_millis(number)),
        _ => Err(format!("bad duration `{text}`: use s or ms")),
    }
}

/// Builds batches of ~100-byte events; user ids spread over every partition.
fn batches(batch_size: usize, n_batches: usize) -> Vec<Vec<Bytes>> {
    let now = runnel_time::now_millis();
    let countries = ["de", "fr", "us", "jp", "br"];
    (0..n_batches)
        .map(|batch_idx| {
            (0..batch_size)
                .map(|idx| {
                    let n = batch_idx * batch_size + idx;
                    Bytes::from(format!(
                        r#"{{"event_time":{},"user_id":"user-{:05}","page":"/page/{:03}","country":"{}","duration_ms":{}}}"#,
                        now + (n % 1000) as i64,
                        n % 50_000,
                        n % 997,
                        countries[n % countries.len()],
                        n % 10_000
                    ))
                })
                .collect()
        })
        .collect()
}

struct Counters {
    acknowledged: AtomicU64,
    counting: AtomicBool,
    stop: AtomicBool,
}

impl Counters {
    fn acknowledge(&self, n: u64) {
        if self.counting.load(Ordering::Relaxed) {
            self.acknowledged.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let batches = Arc::new(batches(flags.batch_size, 64));
    let event_bytes: usize = batches[0].iter().map(Bytes::len).sum::<usize>() / flags.batch_size;
    let counters = Arc::new(Counters {
        acknowledged: AtomicU64::new(0),
        counting: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let mut workers = tokio::task::JoinSet::new();
    match flags.api {
        Api::Grpc => {
            for connection in 0..flags.connections {
                let channel = Endpoint::from_shared(flags.url.clone())?
                    .tcp_nodelay(true)
                    .initial_stream_window_size(Some(4 * 1024 * 1024))
                    .initial_connection_window_size(Some(16 * 1024 * 1024))
                    .connect()
                    .await
                    .with_context(|| format!("connect to {}", flags.url))?;
                let client = IngestClient::new(channel);
                for slot in 0..flags.in_flight {
                    let (mut client, batches, counters) =
                        (client.clone(), Arc::clone(&batches), Arc::clone(&counters));
                    let stream = flags.stream.clone();
                    let mut batch_idx = connection * flags.in_flight + slot;
                    workers.spawn(async move {
                        while !counters.stop.load(Ordering::Relaxed) {
                            let request = IngestRequest {
                                stream: stream.clone(),
                                all_or_nothing: false,
                                events: Some(Events::Json(JsonEvents {
                                    events: batches[batch_idx % batches.len()].clone(),
                                })),
                            };
                            batch_idx += 7;
                            match client.ingest(request).await {
                                Ok(response) => {
                                    let response = response.into_inner();
                                    if response.rejected > 0 {
                                        bail!(
                                            "{} events rejected: {:?}",
                                            response.rejected,
                                            response.rejections.first()
                                        );
                                    }
                                    counters.acknowledge(response.accepted);
                                }
                                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                                Err(status) => bail!("ingest failed: {status}"),
                            }
                        }
                        Ok(())
                    });
                }
            }
        }
        Api::Http => {
            let address = flags
                .url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let bodies: Arc<Vec<Bytes>> = Arc::new(
                batches
                    .iter()
                    .map(|events| {
                        let mut body = Vec::new();
                        for event in events {
                            body.extend_from_slice(event);
                            body.push(b'\n');
                        }
                        Bytes::from(body)
                    })
                    .collect(),
            );
            for connection in 0..flags.connections {
                let stream = TcpStream::connect(&address)
                    .await
                    .with_context(|| format!("connect to {address}"))?;
                stream.set_nodelay(true)?;
                let (bodies, counters) = (Arc::clone(&bodies), Arc::clone(&counters));
                let path = format!("/v1/streams/{}/events", flags.stream);
                let mut batch_idx = connection;
                let address = address.clone();
                workers.spawn(async move {
                    let mut stream = BufReader::new(stream);
                    while !counters.stop.load(Ordering::Relaxed) {
                        let body = &bodies[batch_idx % bodies.len()];
                        batch_idx += 7;
                        let head = format!(
                            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        stream.get_mut().write_all(head.as_bytes()).await?;
                        stream.get_mut().write_all(body).await?;
                        let (status, response, closes) = read_http_response(&mut stream).await?;
                        if closes {
                            // The service closes a connection it answered before the
                            // body's end (429 among them): go on over a new one.
                            let fresh = TcpStream::connect(&address)
                                .await
                                .with_context(|| format!("connect to {address}"))?;
                            fresh.set_nodelay(true)?;
                            stream = BufReader::new(fresh);
                        }
                        match status {
                            200 => {
                                let response: serde_json::Value = serde_json::from_slice(&response)?;
                                counters.acknowledge(response["accepted"].as_u64().unwrap_or(0));
                            }
                            429 => tokio::time::sleep(Duration::from_millis(10)).await,
                            _ => bail!("HTTP {status}: {}", String::from_utf8_lossy(&response)),
                        }
                    }
                    Ok(())
                });
            }
        }
    }
    tokio::time::sleep(flags.warmup).await;
    counters.counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(flags.duration).await;
    counters.counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    counters.stop.store(true, Ordering::Relaxed);
    while let Some(joined) = workers.join_next().await {
        joined.context("worker task")??;
    }
    let events = counters.acknowledged.load(Ordering::Relaxed);
    let rate = events as f64 / elapsed.as_secs_f64();
    let name = flags.name.unwrap_or_else(|| match flags.api {
        Api::Grpc => "grpc_ingest".to_string(),
        Api::Http => "http_ingest".to_string(),
    });
    eprintln!(
        "{name}: {events} events of ~{event_bytes} bytes acknowledged in {:.1} s",
        elapsed.as_secs_f64()
    );
    writeln!(std::io::stdout().lock(), "BENCH {name} {rate:.0} events/s")?;
    Ok(())
}

/// Reads one HTTP/1.1 response with a Content-Length body; says whether the service closes
/// the connection after it.
async fn read_http_response(
    stream: &mut BufReader<TcpStream>,
) -> anyhow::Result<(u16, Vec<u8>, bool)> {
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line `{line}`"))?;
    let mut content_length = 0;
    let mut closes = false;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            bail!("connection closed in the response head");
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse()?;
        }
        if let Some((name, value)) = trimmed.split_once(':')
            && name.eq_ignore_ascii_case("connection")
            && value.trim().eq_ignore_ascii_case("close")
        {
            closes = true;
        }
    }
    let mut body = vec![0; content_length];
    stream.read_exact(&mut body).await?;
    Ok((status, body, closes))
}
