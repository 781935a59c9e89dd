//! `runnel ingest`: sends a file of events to the ingest service over gRPC.
//!
//! JSONL lines go as they are; CSV and Parquet rows are converted to JSON objects (CSV
//! cells cast to the column types with Arrow, Parquet through Arrow's reader, then the Arrow
//! JSON writer, timestamps as epoch milliseconds). A CSV row with a cell that does not read
//! as its column's type is rejected here, with its line and column, and the rest of the file
//! goes on, as the service rejects a bad JSONL line. Batches are unary `Ingest` calls,
//! `--concurrency` of them in flight; a RESOURCE_EXHAUSTED answer is retried after the
//! service's `retry-after-ms` hint. A progress bar runs on stderr when it is a terminal; the
//! summary (`accepted N, rejected M` and the first rejection reasons) goes to stdout, and
//! any rejection makes the command fail unless `--allow-rejects`.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use runnel_config::Config;
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use runnel_proto::ingest::v1::{IngestRequest, IngestResponse, JsonEvents, ingest_request::Events};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::client::{ClientArgs, Connection, connect};
use crate::input::{FileBatch, FileFormat, count_events, read_batches};
use crate::terminal::progress_bar;

/// How many rejection reasons the summary shows.
const SHOWN_REJECTIONS: usize = 5;

/// Arguments of `runnel ingest`.
#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// The stream to ingest into, as declared in the service's config.
    #[arg(long)]
    stream: String,
    /// Events: `.jsonl` (one JSON object per line, sent as is), `.csv` (with a header) or
    /// `.parquet`. CSV columns take the stream's declared types when this config declares
    /// the stream, and are inferred otherwise.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
    /// Events per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Requests in flight at once. Above 1, batches may land out of file order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,
    /// Per request: if any event of a batch is rejected, append none of that batch.
    #[arg(long)]
    all_or_nothing: bool,
    /// Exits 0 even when events were rejected (by default any rejection fails the command,
    /// after the summary).
    #[arg(long)]
    allow_rejects: bool,
}

/// What the service answered and what could not be read, added up.
#[derive(Debug, Default)]
struct Summary {
    accepted: u64,
    /// Rejected by the service (gone to the stream's dead-letter topic).
    rejected: u64,
    /// Rows of the file that could not be read as events (not sent).
    unreadable: u64,
    aborted_batches: u64,
    /// (file position, reason) of the first rejections, in file order.
    rejections: Vec<(u64, String)>,
}

/// Runs `runnel ingest`.
pub(crate) async fn run(args: IngestArgs, config: &Config) -> anyhow::Result<()> {
    let format = FileFormat::of(&args.file)?;
    let connection = connect(&config.ingest.security(), &args.client).await?;
    let client = IngestClient::new(connection).max_decoding_message_size(usize::MAX);

    let declared = config.stream(&args.stream).cloned();
    let total = count_events(&args.file, format)
        .with_context(|| format!("read {}", args.file.display()))?;
    let progress = progress_bar(total);
    // Requests stay well under the request limit the service most likely has.
    let max_batch_bytes = config.ingest.max_request_bytes / 2;
    let (batches_tx, mut batches_rx) = mpsc::channel::<FileBatch>(args.concurrency as usize + 1);
    let reader = {
        let path = args.file.clone();
        let batch_size = args.batch_size as usize;
        tokio::task::spawn_blocking(move || {
            read_batches(
                &path,
                format,
                declared.as_ref(),
                batch_size,
                max_batch_bytes,
                &batches_tx,
            )
        })
    };

    let started = Instant::now();
    let mut summary = Summary::default();
    let mut in_flight: JoinSet<anyhow::Result<(FileBatch, IngestResponse)>> = JoinSet::new();
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            batch = batches_rx.recv(), if reading && in_flight.len() < args.concurrency as usize => {
                match batch {
                    Some(mut batch) => {
                        if !batch.unreadable.is_empty() {
                            progress.inc(batch.unreadable.len() as u64);
                            summary.add_unreadable(std::mem::take(&mut batch.unreadable));
                        }
                        if batch.events.is_empty() {
                            continue;
                        }
                        let request = IngestRequest {
                            stream: args.stream.clone(),
                            all_or_nothing: args.all_or_nothing,
                            events: Some(Events::Json(JsonEvents { events: batch.events.clone() })),
                        };
                        let client = client.clone();
                        in_flight.spawn(async move {
                            let response = send_with_retries(client, request).await?;
                            Ok((batch, response))
                        });
                    }
                    None => reading = false,
                }
            }
            Some(joined) = in_flight.join_next() => {
                let (batch, response) = joined.context("request task failed")??;
                progress.inc(batch.events.len() as u64);
                summary.add(&batch, &response);
                progress.set_message(format!(
                    "accepted {}, rejected {}",
                    summary.accepted,
                    summary.rejected + summary.unreadable
                ));
            }
        }
    }
    progress.finish_and_clear();
    reader
        .await
        .context("file reader task failed")?
        .with_context(|| format!("read {}", args.file.display()))?;
    summary.print(format, started.elapsed(), &args.stream)?;
    let n_rejected = summary.rejected + summary.unreadable;
    if n_rejected > 0 && !args.allow_rejects {
        bail!(
            "{} rejected (see above); pass --allow-rejects to accept rejections",
            events(n_rejected)
        );
    }
    Ok(())
}

/// Sends one batch, retrying for as long as the service answers RESOURCE_EXHAUSTED.
async fn send_with_retries(
    mut client: IngestClient<Connection>,
    request: IngestRequest,
) -> anyhow::Result<IngestResponse> {
    loop {
        match client.ingest(request.clone()).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                let retry_after = status
                    .metadata()
                    .get(runnel_ingest::RETRY_AFTER_MS_METADATA)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<u64>().ok())
                    .map_or(Duration::from_secs(1), Duration::from_millis);
                tracing::debug!(
                    retry_after_ms = retry_after.as_millis() as u64,
                    "ingest service busy, retrying"
                );
                tokio::time::sleep(retry_after).await;
            }
            Err(status) => {
                bail!(
                    "ingest into `{}` failed: {} ({:?})",
                    request.stream,
                    status.message(),
                    status.code()
                )
            }
        }
    }
}

impl Summary {
    fn add_unreadable(&mut self, unreadable: Vec<(u64, String)>) {
        self.unreadable += unreadable.len() as u64;
        self.rejections.extend(unreadable);
        self.keep_first_rejections();
    }

    fn keep_first_rejections(&mut self) {
        // Batches may complete out of order: keep the first ones in file order.
        self.rejections
            .sort_unstable_by_key(|(position, _)| *position);
        self.rejections.truncate(SHOWN_REJECTIONS);
    }

    fn add(&mut self, batch: &FileBatch, response: &IngestResponse) {
        self.accepted += response.accepted;
        self.rejected += response.rejected;
        if response.aborted {
            self.aborted_batches += 1;
        }
        for rejection in &response.rejections {
            let position = batch
                .positions
                .get(rejection.index as usize)
                .copied()
                .unwrap_or_default();
            self.rejections.push((position, rejection.reason.clone()));
        }
        self.keep_first_rejections();
    }

    fn print(&self, format: FileFormat, elapsed: Duration, stream: &str) -> anyhow::Result<()> {
        let mut out = String::new();
        let n_rejected = self.rejected + self.unreadable;
        out.push_str(&format!(
            "accepted {}, rejected {n_rejected}",
            self.accepted
        ));
        if self.aborted_batches > 0 {
            out.push_str(&format!(
                " ({} batches not appended: all-or-nothing)",
                self.aborted_batches
            ));
        }
        out.push_str(&format!(" in {:.1} s\n", elapsed.as_secs_f64()));
        for (position, reason) in &self.rejections {
            out.push_str(&format!(
                "  {} {position}: {reason}\n",
                format.position_name()
            ));
        }
        if n_rejected > self.rejections.len() as u64 {
            out.push_str(&format!(
                "  ... and {} more\n",
                n_rejected - self.rejections.len() as u64
            ));
        }
        if n_rejected > 0 {
            let mut places = Vec::new();
            if self.rejected > 0 {
                let topic = runnel_events::dead_letter_topic(stream);
                places.push(format!(
                    "{} refused by the ingest service, kept with their reasons in the topic `{topic}` (runnel log tail --topic {topic} --partition 0)",
                    self.rejected
                ));
            }
            if self.unreadable > 0 {
                places.push(format!(
                    "{} unreadable in the file, not sent",
                    self.unreadable
                ));
            }
            out.push_str(&format!(
                "rejected {}: {}\n",
                events(n_rejected),
                places.join("; ")
            ));
        }
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(out.as_bytes()) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(error) => Err(anyhow::Error::new(error).context("write to stdout")),
        }
    }
}

/// `1 event`, `2 events`.
fn events(n: u64) -> String {
    if n == 1 {
        "1 event".to_string()
    } else {
        format!("{n} events")
    }
}
