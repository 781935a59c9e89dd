//! Driver of `scripts/bench-stream.sh`: fills an embedded log with `clicks` events, times the
//! stream-processor service (a separate release process) through it, measures the decode
//! baseline and a per-stage breakdown, and measures append-to-result latency in process.
//!
//! Prints `BENCH <name> <value> <unit>` lines on stdout; progress goes to stderr. Every
//! command takes `--dir`, a work folder: the config files go there and the data folder
//! (embedded log, object store) is `<dir>/data`.
//!
//! - `fill --events N`: N events of `clicks` (4 partitions, keyed by `user_id`), ~108 bytes
//!   of JSON each, shaped as `scripts/bench-windows.sh`'s data: 5,000 per event-time second,
//!   10,000 keys, 5% shifted back by 1 ms to 5 s; written with `EmbeddedLog` in batches of
//!   20,000, then the log is closed. With `--kafka <bootstrap>`, to that cluster instead.
//! - `decode`: `decode_baseline`, the same log read and decoded with `EventDecoder`, one
//!   task per partition on a two-worker runtime (the service's layout), opening the log
//!   included; no operator, nothing written.
//! - `service --bin <runnel-stream-processor> --job tumble|hop|session`: starts the service
//!   with that one job and `RUNNEL__STREAM_PROCESSOR__CHECKPOINT_INTERVAL`, polls the tasks'
//!   checkpoint manifests every 10 ms and prints `stream_<job>`: events / (time from spawning
//!   the process until every partition's manifest has `source_offset` at its end offset).
//!   On stderr: when the job started (the service's JSON log), when every partition was
//!   processed (its `GET /status`), the service's CPU time and peak memory. With
//!   `--kafka <bootstrap>` the service reads and writes that cluster (filled by `fill --kafka`),
//!   and `--exactly-once` sets `stream-processor.exactly-once`.
//! - `stages --job J`: the task's per-batch steps (read, decode, project, operator, result
//!   encoding (`runnel_jobs::records`), snapshot) on one thread, timed separately: where a
//!   service run spends its CPU.
//! - `latency`: see `latency` below and the header of `scripts/bench-stream.sh`.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use runnel_config::Config;
use runnel_engine::WindowOperator;
use runnel_events::decode::EventDecoder;
use runnel_log::{EmbeddedLog, Log, ProduceRecord, StartOffset};
use runnel_testkit::random::{SplitMix64, percentile};
use tokio_util::sync::CancellationToken;

const STREAM: &str = "clicks";
/// The data generator of `libs/engine/benches/windows.rs`, with the `clicks` fields.
const SEED: u64 = 0x5eed_0f2e_77e1;
/// 2023-11-14T22:14:00Z, a whole minute.
const START_MS: i64 = 1_700_000_040_000;
const EVENTS_PER_SECOND: i64 = 5_000;
const KEYS: u64 = 10_000;
const SHIFTED_PERCENT: u64 = 5;
const MAX_SHIFT_MS: u64 = 5_000;
const FILL_BATCH: usize = 20_000;
/// The tasks' read size: the default `stream-processor.read-batch-records`.
const READ_BATCH: usize = 8192;
const POLL: Duration = Duration::from_millis(10);
/// Every job's `max-out-of-orderness`, as the window benchmark's live jobs.
const MAX_OUT_OF_ORDERNESS_MS: i64 = 5_000;
/// The tumbling window.
const WINDOW_MS: i64 = 60_000;

#[derive(Debug, Parser)]
struct Flags {
    /// The work folder: config files, and the data folder `<dir>/data`.
    #[arg(long)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Writes N events to `clicks` in a new embedded log (or on Kafka, with `--kafka`).
    Fill {
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        #[command(flatten)]
        log: LogTarget,
    },
    /// Prints `decode_baseline` and `decode_record_format`: reading and decoding the whole log,
    /// no operator.
    Decode,
    /// Runs the service process with one job until it has checkpointed the log's end.
    Service {
        /// The `runnel-stream-processor` binary.
        #[arg(long)]
        bin: PathBuf,
        #[arg(long, value_enum)]
        job: JobKind,
        /// `stream-processor.checkpoint-interval`, as an environment variable of the service.
        #[arg(long, default_value = "1s")]
        checkpoint_interval: String,
        #[arg(long, value_parser = parse_duration, default_value = "600s")]
        timeout: Duration,
        #[command(flatten)]
        log: LogTarget,
    },
    /// Times the task's steps one by one on one thread.
    Stages {
        #[arg(long, value_enum)]
        job: JobKind,
    },
    /// Append-to-result latency of the tumbling job with early results, service in process.
    Latency {
        /// Events appended per second.
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        warmup: Duration,
        /// Events acknowledged in this span, after the warm-up, are measured.
        #[arg(long, value_parser = parse_duration, default_value = "20s")]
        duration: Duration,
        /// Events keep flowing this long after the measured span, so that the watermark
        /// crosses the next emission points.
        #[arg(long, value_parser = parse_duration, default_value = "4s")]
        drain: Duration,
        #[arg(long, default_value = "1s")]
        early_emit_interval: String,
        #[arg(long, default_value = "1s")]
        checkpoint_interval: String,
    },
}

/// Where the events are: the embedded log in `<dir>/data`, or a Kafka cluster.
#[derive(Debug, Default, clap::Args)]
struct LogTarget {
    /// Kafka's bootstrap servers: the stream and the job's topics live there instead.
    #[arg(long)]
    kafka: Option<String>,
    /// `stream-processor.exactly-once` (Kafka transactions; with `--kafka` only).
    #[arg(long)]
    exactly_once: bool,
}

/// The driver's durations (`600s`, `500ms`): humantime's, as runnel's config reads them.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("bad duration `{text}`: {error}"))
}

/// The three jobs of `scripts/bench-windows.sh`, on `clicks`: `key` is `user_id`, `value`
/// is `duration_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum JobKind {
    Tumble,
    Hop,
    Session,
}

impl JobKind {
    fn name(self) -> &'static str {
        match self {
            JobKind::Tumble => "stream_tumble",
            JobKind::Hop => "stream_hop",
            JobKind::Session => "stream_session",
        }
    }

    fn sql(self) -> String {
        let window = match self {
            JobKind::Tumble => "TUMBLE(clicks, event_time, INTERVAL '1' MINUTE)",
            JobKind::Hop => "HOP(clicks, event_time, INTERVAL '10' SECOND, INTERVAL '1' MINUTE)",
            JobKind::Session => "SESSION(clicks, event_time, INTERVAL '10' SECOND)",
        };
        format!(
            "SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(duration_ms) AS total, \
             MIN(duration_ms) AS lo, MAX(duration_ms) AS hi, AVG(duration_ms) AS mean\n\
             FROM {window}\n\
             GROUP BY user_id, window_start, window_end"
        )
    }
}

/// A job of the config file.
struct JobEntry {
    name: String,
    kind: JobKind,
    early_emit_interval: Option<String>,
}

/// Writes `<dir>/<file>`: the data folder, and `jobs` (watermark lag 5 s, as the window
/// benchmark's live jobs; no allowed lateness).
fn write_config(
    dir: &Path,
    file: &str,
    jobs: &[JobEntry],
    checkpoint_interval: Option<&str>,
    metrics_port: u16,
    log: &LogTarget,
) -> anyhow::Result<PathBuf> {
    let mut toml = format!(
        "version = \"1\"\n[storage]\ndata-dir = \"{}\"\n",
        dir.join("data").display()
    );
    if let Some(bootstrap) = &log.kafka {
        toml.push_str(&format!(
            "[storage.log]\nbackend = \"kafka\"\n[storage.log.kafka]\nbootstrap-servers = \"{bootstrap}\"\n"
        ));
    }
    toml.push_str("[stream-processor]\n");
    if log.exactly_once {
        toml.push_str("exactly-once = true\n");
    }
    if let Some(interval) = checkpoint_interval {
        toml.push_str(&format!("checkpoint-interval = \"{interval}\"\n"));
    }
    // A free port, so that runs do not collide with anything on the default one.
    if has_metrics_endpoint() {
        toml.push_str(&format!("metrics-listen = \"127.0.0.1:{metrics_port}\"\n"));
    }
    for job in jobs {
        toml.push_str(&format!(
            "[[jobs]]\nname = \"{}\"\nsql = \"\"\"\n{}\n\"\"\"\nmax-out-of-orderness = \"{MAX_OUT_OF_ORDERNESS_MS}ms\"\n",
            job.name,
            job.kind.sql()
        ));
        if let Some(interval) = &job.early_emit_interval {
            toml.push_str(&format!("early-emit-interval = \"{interval}\"\n"));
        }
    }
    let path = dir.join(file);
    std::fs::write(&path, toml).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Whether this build's service has `stream-processor.metrics-listen` (and `GET /status`).
fn has_metrics_endpoint() -> bool {
    runnel_config::DEFAULT_CONFIG_TOML.contains("\nmetrics-listen")
}

/// A free loopback port (0 if none could be had: the service then picks one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_or(0, |address| address.port())
}

/// Each partition's `source_offset` (processed up to) of `job` from the service's
/// `GET /status`, or `None` while it does not answer.
fn status_offsets(port: u16, job: &str) -> Option<Vec<u64>> {
    use std::io::{Read, Write};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(100)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let body = response.windows(4).position(|bytes| bytes == b"\r\n\r\n")? + 4;
    let status: serde_json::Value = serde_json::from_slice(&response[body..]).ok()?;
    let jobs = status.get("jobs").unwrap_or(&status).as_array()?;
    let job = jobs.iter().find(|candidate| candidate["job"] == job)?;
    job["partitions"]
        .as_array()?
        .iter()
        .map(|partition| partition["source_offset"].as_u64())
        .collect()
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(&[path.to_path_buf()], &HashMap::new())
        .with_context(|| format!("load {}", path.display()))
}

async fn open_log(config: &Config) -> anyhow::Result<Arc<EmbeddedLog>> {
    let log = EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
        .await
        .context("open the embedded log")?;
    Ok(Arc::new(log))
}

/// The log `config` names, the embedded one or Kafka; `close` lets the embedded one go,
/// for the service process to open.
struct AnyLog {
    log: Arc<dyn Log>,
    embedded: Option<Arc<EmbeddedLog>>,
}

impl AnyLog {
    async fn open(config: &Config) -> anyhow::Result<AnyLog> {
        match config.storage.log.backend {
            runnel_config::LogBackend::Embedded => {
                let embedded = open_log(config).await?;
                Ok(AnyLog {
                    log: embedded.clone(),
                    embedded: Some(embedded),
                })
            }
            runnel_config::LogBackend::Kafka => Ok(AnyLog {
                log: runnel_log::open_log(config).await.context("open Kafka")?,
                embedded: None,
            }),
        }
    }

    async fn close(self) {
        if let Some(embedded) = self.embedded {
            embedded.close().await;
        }
    }
}

async fn end_offsets(log: &dyn Log, topic: &str) -> anyhow::Result<Vec<u64>> {
    let partitions = log.partition_count(topic).await?;
    let mut ends = Vec::new();
    for partition in 0..partitions {
        ends.push(log.latest_offset(topic, partition).await?);
    }
    Ok(ends)
}

/// One event: its key index, event time and the record.
fn event(rng: &mut SplitMix64, base_ms: i64, n: u64, timestamp: i64) -> (u64, i64, ProduceRecord) {
    let countries = ["de", "fr", "us", "jp", "br"];
    let key = rng.next_u64() % KEYS;
    let duration_ms = rng.next_u64() % 30_000;
    let shift = if rng.next_u64() % 100 < SHIFTED_PERCENT {
        1 + rng.next_u64() % MAX_SHIFT_MS
    } else {
        0
    };
    let event_time = base_ms - shift as i64;
    let user = format!("user-{key:05}");
    let value = format!(
        r#"{{"event_time":{event_time},"user_id":"{user}","page":"/products/{}","country":"{}","duration_ms":{duration_ms}}}"#,
        n % 1000,
        countries[(n % 5) as usize],
    );
    let record = ProduceRecord {
        key: Some(Bytes::from(user)),
        value: Bytes::from(value),
        timestamp,
        headers: Vec::new(),
        partition: None,
    };
    (key, event_time, record)
}

async fn fill(dir: &Path, events: u64, target: &LogTarget) -> anyhow::Result<()> {
    let config = load_config(&write_config(dir, "fill.toml", &[], None, 0, target)?)?;
    let partitions = config
        .stream(STREAM)
        .context("the default config declares `clicks`")?
        .partitions;
    let log = AnyLog::open(&config).await?;
    log.log.ensure_topic(STREAM, partitions).await?;
    let started = Instant::now();
    let mut rng = SplitMix64(SEED);
    let mut bytes = 0_usize;
    let batches = (0..events).step_by(FILL_BATCH).map(|written| {
        let count = (FILL_BATCH as u64).min(events - written);
        let records: Vec<ProduceRecord> = (written..written + count)
            .map(|n| {
                // In order at EVENTS_PER_SECOND; ingested as it happens.
                let base = START_MS + n as i64 * 1000 / EVENTS_PER_SECOND;
                event(&mut rng, base, n, base).2
            })
            .collect();
        bytes += records
            .iter()
            .map(|record| record.value.len())
            .sum::<usize>();
        let log = Arc::clone(&log.log);
        async move { log.append(STREAM, records).await.context("append events") }
    });
    // Kafka is fast with appends in flight at once; `buffered` starts them in order, and
    // each hands all its records to the producer when first polled, so the partitions keep
    // the events' order. The embedded log is filled one append at a time, as always.
    let in_flight = if target.kafka.is_some() { 4 } else { 1 };
    let mut appended = futures::stream::iter(batches).buffered(in_flight);
    while let Some(positions) = appended.next().await {
        positions?;
    }
    drop(appended);
    let ends = end_offsets(log.log.as_ref(), STREAM).await?;
    log.close().await;
    eprintln!(
        "    filled {events} events ({:.1} bytes of JSON each) in {:.1}s; partition ends {ends:?}",
        bytes as f64 / events.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints `decode_baseline` (arrow_json for every run: the yardstick of earlier runs) and
/// `decode_record_format` (the decoder the service uses: the record format's own parser).
async fn decode(dir: &Path) -> anyhow::Result<()> {
    decode_pass(dir, "decode_baseline", true).await?;
    decode_pass(dir, "decode_record_format", false).await
}

async fn decode_pass(dir: &Path, name: &'static str, general: bool) -> anyhow::Result<()> {
    let config = load_config(&dir.join("fill.toml"))?;
    let schema = runnel_events::StreamSchema::new(config.stream(STREAM).context("`clicks`")?);
    let started = Instant::now();
    let log = open_log(&config).await?;
    let opened = started.elapsed();
    let ends = end_offsets(log.as_ref(), STREAM).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (partition, &end) in ends.iter().enumerate() {
        let (log, decoder) = (Arc::clone(&log), EventDecoder::new(&schema));
        tasks.spawn(async move {
            let mut reader = log
                .reader(STREAM, partition as u32, StartOffset::Earliest)
                .await?;
            let mut rows = 0_u64;
            while reader.position() < end {
                let records = reader
                    .next_batch(READ_BATCH, Duration::from_secs(1))
                    .await?;
                let decoded = if general {
                    decoder.decode_general(&records)?
                } else {
                    decoder.decode(&records)?
                };
                rows += decoded.batch.num_rows() as u64;
            }
            anyhow::Ok(rows)
        });
    }
    let mut rows = 0;
    while let Some(done) = tasks.join_next().await {
        rows += done??;
    }
    let elapsed = started.elapsed();
    log.close().await;
    let events: u64 = ends.iter().sum();
    ensure!(rows == events, "decoded {rows} rows of {events} records");
    eprintln!(
        "    {name}: {rows} events in {:.2}s (opening the log: {:.2}s)",
        elapsed.as_secs_f64(),
        opened.as_secs_f64()
    );
    println!(
        "BENCH {name} {:.0} events/s",
        rows as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// The `source_offset` of each partition's newest complete checkpoint.
fn checkpointed_offsets(data: &Path, job: &str, partitions: usize) -> Vec<Option<u64>> {
    (0..partitions)
        .map(|partition| {
            let dir = data.join(format!("objects/checkpoints/{job}/{partition}"));
            let entries = std::fs::read_dir(&dir).ok()?;
            entries
                .filter_map(|entry| std::fs::read(entry.ok()?.path().join("_checkpoint.json")).ok())
                .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                .filter_map(|manifest| manifest["source_offset"].as_u64())
                .max()
        })
        .collect()
}

/// User and system CPU seconds and peak resident memory (MiB) of a running process.
fn process_usage(pid: u32) -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Clock ticks are 100 per second on Linux.
    let ticks = |index: usize| Some(fields.get(index)?.parse::<f64>().ok()? / 100.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks(11)?, ticks(12)?, peak_kib / 1024.0))
}

/// Stops the service with SIGTERM (it closes the log), or SIGKILL after 10 s.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Milliseconds since the epoch of a UTC timestamp as `tracing` writes it
/// (`2026-11-22T06:24:22.398682Z`), read by runnel's one RFC 3339 parser.
fn parse_utc_ms(text: &str) -> Option<i64> {
    runnel_time::parse_rfc3339_millis(text).ok()
}

/// The first time (epoch ms) each message appears in a JSON-lines service log.
fn logged_times(path: &Path) -> HashMap<String, i64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut times = HashMap::new();
    for line in text.lines() {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(message), Some(at)) = (
            entry["fields"]["message"].as_str(),
            entry["timestamp"].as_str().and_then(parse_utc_ms),
        ) else {
            continue;
        };
        times.entry(message.to_string()).or_insert(at);
    }
    times
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

async fn service(
    dir: &Path,
    bin: &Path,
    kind: JobKind,
    checkpoint_interval: &str,
    timeout: Duration,
    target: &LogTarget,
) -> anyhow::Result<()> {
    // The job's name is its figure's: on Kafka, each run's topics and groups are its own.
    let job = match (&target.kafka, target.exactly_once) {
        (None, _) => kind.name().to_string(),
        (Some(_), false) => format!("{}_kafka", kind.name()),
        (Some(_), true) => format!("{}_kafka_exactly_once", kind.name()),
    };
    let job = job.as_str();
    let metrics_port = free_port();
    let config_path = write_config(
        dir,
        &format!("{job}.toml"),
        &[JobEntry {
            name: job.to_string(),
            kind,
            early_emit_interval: None,
        }],
        None,
        metrics_port,
        target,
    )?;
    let config = load_config(&config_path)?;
    let data = config.storage.data_dir.clone();
    let ends = {
        let log = AnyLog::open(&config).await?;
        let ends = end_offsets(log.log.as_ref(), STREAM).await?;
        log.close().await;
        ends
    };
    let events: u64 = ends.iter().sum();
    let log_path = dir.join(format!("{job}.log"));
    let log_file = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    let started = Instant::now();
    let spawned_ms = runnel_time::now_millis();
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&config_path)
        .arg("--log-json")
        .env(
            "RUNNEL__STREAM_PROCESSOR__CHECKPOINT_INTERVAL",
            checkpoint_interval,
        )
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let mut caught_up_at = vec![None; ends.len()];
    // Diagnostics from `GET /status`: when every partition was processed to its end
    // (before the checkpoint that says so), and how long the endpoint took to answer.
    let (mut processed_at, mut slowest_status) = (None, Duration::ZERO);
    let poll_status = has_metrics_endpoint() && metrics_port != 0;
    let mut last_progress = Instant::now();
    let outcome = loop {
        if poll_status && processed_at.is_none() {
            let asked = Instant::now();
            let offsets = status_offsets(metrics_port, job);
            if offsets.is_some() {
                slowest_status = slowest_status.max(asked.elapsed());
            }
            if offsets.as_ref() == Some(&ends) {
                processed_at = Some(started.elapsed());
            }
        }
        let offsets = checkpointed_offsets(&data, job, ends.len());
        for (partition, offset) in offsets.iter().enumerate() {
            if caught_up_at[partition].is_none() && *offset == Some(ends[partition]) {
                caught_up_at[partition] = Some(started.elapsed());
            }
        }
        if caught_up_at.iter().all(Option::is_some) {
            break Ok(started.elapsed());
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            let done: u64 = offsets.iter().map(|offset| offset.unwrap_or(0)).sum();
            eprintln!(
                "    {job}: {:.0}s, {done} of {events} events checkpointed",
                started.elapsed().as_secs_f64()
            );
            last_progress = Instant::now();
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!(
                "the service exited early ({status}): {}",
                tail(&log_path)
            ));
        }
        if started.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "not caught up after {}s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    let usage = process_usage(child.id());
    stop(&mut child);
    let elapsed = outcome?;
    let log = AnyLog::open(&config).await?;
    let results: u64 = end_offsets(log.log.as_ref(), &format!("{job}.results"))
        .await?
        .iter()
        .sum();
    let late: u64 = end_offsets(log.log.as_ref(), &format!("{job}.late"))
        .await?
        .iter()
        .sum();
    log.close().await;
    let seconds =
        |at: Option<Duration>| at.map_or("?".to_string(), |at| format!("{:.2}s", at.as_secs_f64()));
    // From the service's own log lines: when it had opened the log and started the job.
    let logged = logged_times(&log_path);
    let since_spawn = |message: &str| {
        logged
            .get(message)
            .map(|&at| Duration::from_millis((at - spawned_ms).max(0) as u64))
    };
    let opening = match (
        logged.get("tracing initialized"),
        logged.get("opened embedded log"),
    ) {
        (Some(&from), Some(&to)) => format!("{:.2}s", (to - from) as f64 / 1e3),
        _ => "?".to_string(),
    };
    let job_started = since_spawn("starting job");
    eprintln!(
        "    {job}: job started at {} (opening the log took {opening}), every partition \
         processed to its end at {} (GET /status), checkpointed at {:.2}s",
        seconds(job_started),
        seconds(processed_at),
        elapsed.as_secs_f64()
    );
    if let (Some(from), Some(to)) = (job_started, processed_at) {
        eprintln!(
            "    {job}: processing alone (job started to processed): {:.0} events/s",
            events as f64 / (to.saturating_sub(from)).as_secs_f64().max(1e-9)
        );
    }
    if poll_status {
        eprintln!(
            "    {job}: GET /status took up to {:.0} ms to answer while the tasks ran",
            slowest_status.as_secs_f64() * 1e3
        );
    }
    let per_partition: Vec<String> = caught_up_at
        .iter()
        .map(|at| format!("{:.2}s", at.unwrap_or_default().as_secs_f64()))
        .collect();
    eprintln!(
        "    {job}: {events} events, caught up in {:.2}s (per partition: {}); \
         {results} result records, {late} late events",
        elapsed.as_secs_f64(),
        per_partition.join(" ")
    );
    if let Some((user, system, peak_mib)) = usage {
        eprintln!(
            "    {job}: service CPU {user:.1}s user + {system:.1}s system = {:.2} cores busy \
             on average; peak RSS {peak_mib:.0} MiB",
            (user + system) / elapsed.as_secs_f64()
        );
    }
    println!(
        "BENCH {job} {:.0} events/s",
        events as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

#[derive(Default)]
struct StageTimes {
    read: Duration,
    decode: Duration,
    project: Duration,
    operator: Duration,
    encode: Duration,
    snapshot: Duration,
    results: usize,
    snapshot_bytes: usize,
}

/// Runs the task's steps for every partition in turn on this thread, timing each.
async fn stages(dir: &Path, kind: JobKind) -> anyhow::Result<()> {
    let config_path = write_config(
        dir,
        "stages.toml",
        &[JobEntry {
            name: format!("stages_{}", kind.name()),
            kind,
            early_emit_interval: None,
        }],
        None,
        0,
        &LogTarget::default(),
    )?;
    let config = load_config(&config_path)?;
    let job = runnel_jobs::Job::compile(&config, &config.jobs[0])?;
    let log = open_log(&config).await?;
    let ends = end_offsets(log.as_ref(), STREAM).await?;
    let decoder = EventDecoder::new(&job.stream);
    let mut times = StageTimes::default();
    let started = Instant::now();
    for (partition, &end) in ends.iter().enumerate() {
        let mut operator = WindowOperator::new(Arc::clone(&job.plan), job.options)?;
        let mut reader = log
            .reader(STREAM, partition as u32, StartOffset::Earliest)
            .await?;
        while reader.position() < end {
            let at = Instant::now();
            let records = reader
                .next_batch(READ_BATCH, Duration::from_secs(1))
                .await?;
            times.read += at.elapsed();
            let at = Instant::now();
            let decoded = decoder.decode(&records)?;
            times.decode += at.elapsed();
            let at = Instant::now();
            let arrival = records
                .iter()
                .map(|record| record.timestamp)
                .max()
                .unwrap_or(0);
            let input = job.project(&decoded.batch)?;
            times.project += at.elapsed();
            let at = Instant::now();
            let output = operator.process(0, &input, arrival)?;
            times.operator += at.elapsed();
            let at = Instant::now();
            times.results +=
                runnel_jobs::records::result_records(&output.results, 0, arrival)?.len();
            times.encode += at.elapsed();
        }
        let at = Instant::now();
        times.snapshot_bytes += operator.snapshot()?.len();
        times.snapshot += at.elapsed();
    }
    let total = started.elapsed();
    log.close().await;
    let events: u64 = ends.iter().sum();
    let name = kind.name();
    eprintln!(
        "    stages of {name}, one thread, {events} events, {:.2}s in all ({:.0} events/s; \
         the service has 2 cores for 4 tasks):",
        total.as_secs_f64(),
        events as f64 / total.as_secs_f64()
    );
    for (stage, time) in [
        ("read", times.read),
        ("decode", times.decode),
        ("project", times.project),
        ("operator", times.operator),
        ("encode results", times.encode),
        ("snapshot (once per partition, at the end)", times.snapshot),
    ] {
        eprintln!(
            "      {stage:<42} {:>7.3}s {:>5.1}%  {:>12.0} events/s alone",
            time.as_secs_f64(),
            100.0 * time.as_secs_f64() / total.as_secs_f64(),
            events as f64 / time.as_secs_f64().max(1e-9)
        );
    }
    eprintln!(
        "      {} result rows encoded; snapshots at the end: {} bytes over {} partitions",
        times.results,
        times.snapshot_bytes,
        ends.len()
    );
    let job_short = name.trim_start_matches("stream_");
    for (stage, time) in [
        ("read", times.read),
        ("decode", times.decode),
        ("operator", times.operator),
        ("encode", times.encode),
        ("all", total),
    ] {
        println!(
            "BENCH stage_{job_short}_{stage} {:.0} events/s",
            events as f64 / time.as_secs_f64().max(1e-9)
        );
    }
    Ok(())
}

/// What the generator appended: per event its key, window and acknowledgement.
struct Appended {
    /// Each event in append order.
    events: Vec<AppendedEvent>,
    /// For each append: the index of its first event and when it was acknowledged.
    batches: Vec<(usize, Instant)>,
}

struct AppendedEvent {
    key: u32,
    event_time: i64,
    partition: u32,
}

/// A result record as a reader saw it.
struct Seen {
    key: u32,
    window_start: i64,
    n: u64,
    at: Instant,
}

#[derive(serde::Deserialize)]
struct ResultRow {
    user_id: String,
    n: u64,
}

/// Appends `rate` events per second, in one append at a time, for `run`.
async fn generate(log: Arc<EmbeddedLog>, rate: u64, run: Duration) -> anyhow::Result<Appended> {
    let mut appended = Appended {
        events: Vec::new(),
        batches: Vec::new(),
    };
    let mut rng = SplitMix64(SEED);
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut sent = 0_u64;
    while started.elapsed() < run {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if due <= sent {
            continue;
        }
        let now = runnel_time::now_millis();
        let first = appended.events.len();
        let mut records = Vec::with_capacity((due - sent) as usize);
        for n in sent..due {
            let (key, event_time, record) = event(&mut rng, now, n, now);
            appended.events.push(AppendedEvent {
                key: key as u32,
                event_time,
                partition: 0,
            });
            records.push(record);
        }
        let positions = log.append(STREAM, records).await.context("append events")?;
        appended.batches.push((first, Instant::now()));
        for (event, position) in appended.events[first..].iter_mut().zip(positions) {
            event.partition = position.partition;
        }
        sent = due;
    }
    Ok(appended)
}

/// Tails one partition of the results topic until `stop`.
async fn tail_results(
    log: Arc<EmbeddedLog>,
    topic: String,
    partition: u32,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Seen>> {
    let mut reader = log.reader(&topic, partition, StartOffset::Earliest).await?;
    let mut seen = Vec::new();
    loop {
        let records = tokio::select! {
            () = stop.cancelled() => return Ok(seen),
            read = reader.next_batch(10_000, Duration::from_millis(200)) => read?,
        };
        let at = Instant::now();
        for record in records {
            let key = record.key.context("a result has a key")?;
            let key = std::str::from_utf8(&key).context("a UTF-8 key")?;
            let window_start: i64 = key
                .rsplit_once('@')
                .and_then(|(_, start)| start.parse().ok())
                .with_context(|| format!("a window start in key `{key}`"))?;
            let row: ResultRow = serde_json::from_slice(&record.value).context("a result row")?;
            let user: u32 = row
                .user_id
                .strip_prefix("user-")
                .and_then(|index| index.parse().ok())
                .with_context(|| format!("a generated user id, not `{}`", row.user_id))?;
            seen.push(Seen {
                key: user,
                window_start,
                n: row.n,
                at,
            });
        }
    }
}

/// Latency of the tumbling job with early results: the service in this process on the
/// log that a generator task appends to.
///
/// For each event acknowledged in the measured span, latency is the time from its
/// acknowledgement (the generator's `append` returned) to the moment a reader of
/// `<job>.results` first returned a record for the event's (user, window) whose `n`
/// (COUNT(*)) covers it: a user's events sit in one partition in append order (one append
/// at a time), so the result with count `n` covers exactly that user's first `n` events
/// of the window.
async fn latency(
    dir: &Path,
    rate: u64,
    warmup: Duration,
    duration: Duration,
    drain: Duration,
    early_emit_interval: &str,
    checkpoint_interval: &str,
) -> anyhow::Result<()> {
    let job = "latency_tumble";
    let config_path = write_config(
        dir,
        "latency.toml",
        &[JobEntry {
            name: job.to_string(),
            kind: JobKind::Tumble,
            early_emit_interval: Some(early_emit_interval.to_string()),
        }],
        Some(checkpoint_interval),
        0,
        &LogTarget::default(),
    )?;
    let config = load_config(&config_path)?;
    // The service's log lines, filtered by `RUST_LOG` (the script sets `warn`).
    runnel_server_common::init_tracing("stream-bench", false);
    let partitions = config.stream(STREAM).context("`clicks`")?.partitions;
    let log = open_log(&config).await?;
    log.ensure_topic(STREAM, partitions).await?;
    let results_topic = runnel_jobs::results_topic(job);
    log.ensure_topic(&results_topic, partitions).await?;

    let stop_readers = CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        readers.spawn(tail_results(
            Arc::clone(&log),
            results_topic.clone(),
            partition,
            stop_readers.clone(),
        ));
    }
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(runnel_stream_processor::run_with_log(
        config,
        Arc::clone(&log) as Arc<dyn Log>,
        shutdown.clone(),
    ));
    let started = Instant::now();
    eprintln!(
        "    appending {rate} events/s for {}s ({}s warm-up, {}s measured, {}s drain)",
        (warmup + duration + drain).as_secs(),
        warmup.as_secs(),
        duration.as_secs(),
        drain.as_secs()
    );
    let appended = generate(Arc::clone(&log), rate, warmup + duration + drain).await;
    // Results of the last emission point may still be on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_readers.cancel();
    shutdown.cancel();
    let mut seen = Vec::new();
    while let Some(done) = readers.join_next().await {
        seen.extend(done??);
    }
    service.await??;
    log.close().await;
    let appended = appended?;
    let elapsed = appended
        .batches
        .last()
        .map(|(_, at)| at.duration_since(started))
        .unwrap_or_default();
    eprintln!(
        "    appended {} events in {} appends, {:.0} events/s acknowledged; {} result records",
        appended.events.len(),
        appended.batches.len(),
        appended.events.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        seen.len()
    );

    // The acknowledgement of each event, and of the event after which its first result
    // was due.
    let mut acked_at = Vec::with_capacity(appended.events.len());
    for (batch_idx, &(first, acked)) in appended.batches.iter().enumerate() {
        let last = appended
            .batches
            .get(batch_idx + 1)
            .map_or(appended.events.len(), |(next, _)| *next);
        acked_at.extend(std::iter::repeat_n(acked, last - first));
    }
    let interval = parse_duration(early_emit_interval).map_err(anyhow::Error::msg)?;
    let triggers = emission_triggers(
        &appended.events,
        MAX_OUT_OF_ORDERNESS_MS,
        interval.as_millis() as i64,
    );
    // Per (user, window): its events in append order.
    let mut groups: HashMap<(u32, i64), Vec<usize>> = HashMap::new();
    for (event_idx, event) in appended.events.iter().enumerate() {
        let window = event.event_time - event.event_time.rem_euclid(WINDOW_MS);
        groups
            .entry((event.key, window))
            .or_default()
            .push(event_idx);
    }
    let mut results: BTreeMap<(u32, i64), Vec<(Instant, u64)>> = BTreeMap::new();
    for result in seen {
        results
            .entry((result.key, result.window_start))
            .or_default()
            .push((result.at, result.n));
    }
    let measured = (started + warmup)..(started + warmup + duration);
    let milliseconds = |later: Instant, earlier: Instant| {
        later.saturating_duration_since(earlier).as_secs_f64() * 1e3
    };
    let (mut latencies_ms, mut pipeline_ms) = (Vec::new(), Vec::new());
    let (mut missing, mut too_many, mut before_trigger) = (0_usize, 0_usize, 0_usize);
    for (group, event_idxs) in &groups {
        let mut covered = 0_usize;
        for &(at, n) in results.get(group).map(Vec::as_slice).unwrap_or_default() {
            let n = n as usize;
            if n > event_idxs.len() {
                too_many += 1;
            }
            let n = n.min(event_idxs.len());
            if n <= covered {
                continue;
            }
            for &event_idx in &event_idxs[covered..n] {
                let acked = acked_at[event_idx];
                if !measured.contains(&acked) {
                    continue;
                }
                latencies_ms.push(milliseconds(at, acked));
                if let Some(trigger) = triggers[event_idx] {
                    if at < acked_at[trigger] {
                        before_trigger += 1;
                    }
                    pipeline_ms.push(milliseconds(at, acked_at[trigger]));
                }
            }
            covered = n;
        }
        missing += event_idxs[covered..]
            .iter()
            .filter(|&&event_idx| measured.contains(&acked_at[event_idx]))
            .count();
    }
    ensure!(
        too_many == 0,
        "{too_many} results count more events than were appended for their user and window"
    );
    if missing > 0 {
        eprintln!("    WARNING: {missing} measured events never showed in a result");
    }
    if before_trigger > 0 {
        eprintln!(
            "    WARNING: {before_trigger} events showed in a result before the event that \
             should have released it was acknowledged (the model of emission points is off)"
        );
    }
    ensure!(
        !latencies_ms.is_empty(),
        "no measured event showed in a result"
    );
    for (what, name, values) in [
        ("acknowledged to result", "latency", &mut latencies_ms),
        (
            "emission point's event acknowledged to result",
            "latency_pipeline",
            &mut pipeline_ms,
        ),
    ] {
        if values.is_empty() {
            println!("BENCH {name}_p50_ms unavailable (no event had an emission point)");
            println!("BENCH {name}_p99_ms unavailable (no event had an emission point)");
            continue;
        }
        values.sort_by(f64::total_cmp);
        eprintln!(
            "    {what}, {} events: min {:.1} ms, p50 {:.1}, p90 {:.1}, p99 {:.1}, \
             p99.9 {:.1}, max {:.1}",
            values.len(),
            values[0],
            percentile(values, 0.5),
            percentile(values, 0.9),
            percentile(values, 0.99),
            percentile(values, 0.999),
            values[values.len() - 1]
        );
        println!("BENCH {name}_p50_ms {:.1} ms", percentile(values, 0.5));
        println!("BENCH {name}_p99_ms {:.1} ms", percentile(values, 0.99));
    }
    Ok(())
}

/// For each event, the index of the event after which the operator emits the groups it
/// changed: the first event, from it on in its partition, whose event time raises the
/// partition's watermark (largest event time less `lag_ms`) to the next multiple of
/// `interval_ms` above the watermark the event met. Early results and window ends (whole
/// minutes) both fall on such multiples, and the operator emits when the watermark reaches
/// one, after the rows before. `None` if the run ended first.
fn emission_triggers(
    events: &[AppendedEvent],
    lag_ms: i64,
    interval_ms: i64,
) -> Vec<Option<usize>> {
    let mut triggers = vec![None; events.len()];
    let mut watermarks: HashMap<u32, i64> = HashMap::new();
    let mut waiting: HashMap<u32, VecDeque<(i64, usize)>> = HashMap::new();
    for (event_idx, event) in events.iter().enumerate() {
        let candidate = event.event_time - lag_ms;
        // The first event of a partition sets its first watermark.
        let watermark = watermarks.entry(event.partition).or_insert(candidate);
        let next_point = watermark.div_euclid(interval_ms) * interval_ms + interval_ms;
        *watermark = (*watermark).max(candidate);
        let queue = waiting.entry(event.partition).or_default();
        queue.push_back((next_point, event_idx));
        while let Some(&(point, waiting_idx)) = queue.front() {
            if point > *watermark {
                break;
            }
            triggers[waiting_idx] = Some(event_idx);
            queue.pop_front();
        }
    }
    triggers
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let dir = flags.dir.as_path();
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    match flags.command {
        Action::Fill { events, log } => fill(dir, events, &log).await,
        Action::Decode => decode(dir).await,
        Action::Service {
            bin,
            job,
            checkpoint_interval,
            timeout,
            log,
        } => service(dir, &bin, job, &checkpoint_interval, timeout, &log).await,
        Action::Stages { job } => stages(dir, job).await,
        Action::Latency {
            rate,
            warmup,
            duration,
            drain,
            early_emit_interval,
            checkpoint_interval,
        } => {
            latency(
                dir,
                rate,
                warmup,
                duration,
                drain,
                &early_emit_interval,
                &checkpoint_interval,
            )
            .await
        }
    }
}
