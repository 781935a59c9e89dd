//! `runnel query …` and `runnel results export`: the serving service's client.
//!
//! Each call prints an aligned table (key, window, the job's columns, result version, final,
//! which view answered), or with `--format json` one JSON array of objects, or with
//! `--format jsonl` one JSON object per line: all through [`RowPrinter`]. Times are RFC 3339
//! with `Z`. `results export` streams every current result of a job version into a Parquet
//! or JSONL file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use runnel_config::Config;
use runnel_proto::common::v1::value::Kind;
use runnel_proto::serving::v1::serving_client::ServingClient;
use runnel_proto::serving::v1::{self as proto};
use runnel_time::format_millis;
use serde_json::{Map, Value as Json, json};

use crate::client::{ClientArgs, Connection, connect_serving};
use crate::terminal::source_name;
use runnel_time::parse_time_flag;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// An aligned table.
    Table,
    /// One JSON array of objects (for `subscribe`, closed when it stops).
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// How long `query subscribe` waits for a first update (and again after each one) before it
/// says on stderr what it is waiting for.
const SUBSCRIBE_HINT_AFTER: Duration = Duration::from_secs(5);

/// The width of a time as printed (`2026-11-22T10:00:00.000Z`).
const TIME_WIDTH: usize = 24;

/// Prints rows as a table, a JSON array or JSON lines: the one formatting helper of
/// `runnel query`.
///
/// Callers give each row both ways, [`RowPrinter::cells`] for the table and
/// [`RowPrinter::object`] for JSON, and the printer uses the one its format needs. A table
/// is aligned: held until [`RowPrinter::finish`] and printed with each column as wide as its
/// widest cell; or, made with [`RowPrinter::streaming`], printed row by row, the header
/// before the first and again whenever a cell is wider than its column so far (columns then
/// widen with some room to spare), so that every row lines up with the header above it.
pub(crate) struct RowPrinter<W: Write> {
    out: W,
    format: Format,
    header: Vec<String>,
    widths: Vec<usize>,
    streaming: bool,
    /// Whether a streaming table has printed its header with the current widths.
    header_printed: bool,
    /// Table rows held until `finish`, when not streaming.
    held: Vec<Vec<String>>,
    /// JSON objects written so far.
    n_objects: usize,
}

impl<W: Write> RowPrinter<W> {
    /// A printer that prints everything at [`RowPrinter::finish`] (JSON lines at once).
    pub(crate) fn new(out: W, format: Format, header: Vec<String>) -> RowPrinter<W> {
        let widths = header.iter().map(|name| name.chars().count()).collect();
        RowPrinter {
            out,
            format,
            header,
            widths,
            streaming: false,
            header_printed: false,
            held: Vec::new(),
            n_objects: 0,
        }
    }

    /// A printer for rows that come one at a time: each is printed (and flushed) as it
    /// comes. A table's columns start at least `min_widths` wide.
    pub(crate) fn streaming(
        out: W,
        format: Format,
        header: Vec<String>,
        min_widths: &[usize],
    ) -> RowPrinter<W> {
        let mut printer = RowPrinter::new(out, format, header);
        printer.streaming = true;
        for (width, min) in printer.widths.iter_mut().zip(min_widths) {
            *width = (*width).max(*min);
        }
        printer
    }

    /// Adds a row as the table prints it; ignored by the JSON formats.
    pub(crate) fn cells(&mut self, cells: Vec<String>) -> std::io::Result<()> {
        if self.format != Format::Table {
            return Ok(());
        }
        if !self.streaming {
            self.held.push(cells);
            return Ok(());
        }
        for (width, cell) in self.widths.iter_mut().zip(&cells) {
            let cell_width = cell.chars().count();
            if cell_width > *width {
                // Room for the next few wider cells, so that the header rarely repeats.
                *width = cell_width.next_multiple_of(4);
                self.header_printed = false;
            }
        }
        if !self.header_printed {
            self.print_header()?;
            self.header_printed = true;
        }
        let line = self.line(&cells);
        writeln!(self.out, "{line}")?;
        self.out.flush()
    }

    /// Adds a row as JSON prints it; ignored by the table.
    pub(crate) fn object(&mut self, object: &Json) -> std::io::Result<()> {
        match self.format {
            Format::Table => return Ok(()),
            Format::Jsonl => writeln!(self.out, "{object}")?,
            Format::Json => {
                let separator = if self.n_objects == 0 { "[" } else { "," };
                writeln!(self.out, "{separator}")?;
                write!(self.out, "{object}")?;
            }
        }
        self.n_objects += 1;
        if self.streaming {
            self.out.flush()?;
        }
        Ok(())
    }

    /// Prints what is held (a table) or closes what is open (a JSON array).
    pub(crate) fn finish(mut self) -> std::io::Result<()> {
        match self.format {
            Format::Table if !self.streaming => {
                for row in &self.held {
                    for (width, cell) in self.widths.iter_mut().zip(row) {
                        *width = (*width).max(cell.chars().count());
                    }
                }
                self.print_header()?;
                for row in std::mem::take(&mut self.held) {
                    let line = self.line(&row);
                    writeln!(self.out, "{line}")?;
                }
            }
            Format::Table | Format::Jsonl => {}
            Format::Json if self.n_objects == 0 => writeln!(self.out, "[]")?,
            Format::Json => writeln!(self.out, "\n]")?,
        }
        self.out.flush()
    }

    fn print_header(&mut self) -> std::io::Result<()> {
        let line = self.line(&self.header);
        writeln!(self.out, "{line}")
    }

    /// Cells padded to the column widths, two spaces apart.
    fn line(&self, cells: &[String]) -> String {
        cells
            .iter()
            .zip(&self.widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    }
}

/// Arguments of `runnel query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Output format: an aligned table, a JSON array, or JSON lines.
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    call: QueryCall,
}

#[derive(Debug, Subcommand)]
enum QueryCall {
    /// One key's windows in a time range (QueryWindows).
    Windows {
        #[arg(long)]
        job: String,
        /// The group key: one value (`u1`, `42`) or a JSON array (`[42,"de"]`).
        #[arg(long)]
        key: String,
        /// Windows starting at or after this (epoch ms, RFC 3339, or relative to now like `-1h`); default: all.
        #[arg(long, value_parser = parse_time_flag)]
        from: Option<i64>,
        /// Windows starting before this (epoch ms, RFC 3339, or relative to now like `-1h`); default: no bound.
        #[arg(long, value_parser = parse_time_flag)]
        to: Option<i64>,
        /// While the key has no window in the range (its events not processed yet, or the
        /// service still rebuilding its views), ask again, for up to this long (`10s`).
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Every key of one window, a page at a time (GetWindow); the next page's token is
    /// printed on stderr.
    Window {
        #[arg(long)]
        job: String,
        /// The window's start (epoch ms, RFC 3339, or relative to now like `-1h`).
        #[arg(long, value_parser = parse_time_flag)]
        start: i64,
        /// Keys per page (0: the service's default).
        #[arg(long, default_value_t = 0)]
        page_size: u32,
        /// The token a previous page printed, for the next page.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Fetches every page, printed as one table (or one JSON array).
        #[arg(long)]
        all: bool,
    },
    /// The k keys of one window with the largest value of a column (TopK).
    Topk {
        #[arg(long)]
        job: String,
        /// The window's start (epoch ms, RFC 3339, or relative to now like `-1h`).
        #[arg(long, value_parser = parse_time_flag)]
        start: i64,
        #[arg(long, default_value_t = 10)]
        k: u32,
        /// A numeric result column of the job.
        #[arg(long)]
        by: String,
        /// Smallest first.
        #[arg(long)]
        ascending: bool,
    },
    /// Each job: versions, the active one, watermark and lag (as of each partition's last
    /// checkpoint, taken every stream-processor.checkpoint-interval) and batch horizon
    /// (ListJobs).
    Jobs,
    /// Live updates of a job's results until Ctrl-C (Subscribe).
    ///
    /// A window's result comes once the watermark (the least event time over every source
    /// partition, less the job's max-out-of-orderness) passes its end, or earlier with the
    /// job's early-emit-interval. After 5 s without an update, stderr says what it waits
    /// for.
    Subscribe {
        #[arg(long)]
        job: String,
        /// Only this key's windows.
        #[arg(long)]
        key: Option<String>,
    },
}

/// Arguments of `runnel results export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[arg(long)]
    job: String,
    /// The job version; default: the active one.
    #[arg(long = "version")]
    job_version: Option<u32>,
    /// `.parquet` or `.jsonl`.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// `runnel results …`.
#[derive(Debug, Subcommand)]
pub(crate) enum ResultsCommand {
    /// Writes every current result of a job version to a Parquet or JSONL file.
    ///
    /// Example: `runnel results export --job page_views --out results.parquet`.
    // `--version` is the job's version here, not runnel's.
    #[command(disable_version_flag = true)]
    Export(ExportArgs),
}

/// A gRPC status as an error that says what the service said.
fn refused(call: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call}: {:?}: {}", status.code(), status.message())
}

fn value_json(value: &runnel_proto::common::v1::Value) -> Json {
    match &value.kind {
        None => Json::Null,
        Some(Kind::StringValue(text)) => json!(text),
        Some(Kind::Int64Value(number)) => json!(number),
        Some(Kind::Float64Value(number)) => json!(number),
        Some(Kind::BoolValue(flag)) => json!(flag),
        Some(Kind::TimestampMs(millis)) => json!(format_millis(*millis)),
    }
}

fn value_text(value: &runnel_proto::common::v1::Value) -> String {
    match &value.kind {
        None => "null".to_string(),
        Some(Kind::StringValue(text)) => text.clone(),
        Some(Kind::Int64Value(number)) => number.to_string(),
        Some(Kind::Float64Value(number)) => number.to_string(),
        Some(Kind::BoolValue(flag)) => flag.to_string(),
        Some(Kind::TimestampMs(millis)) => format_millis(*millis),
    }
}

fn window_json(columns: &[String], window: &proto::WindowResult) -> Json {
    let mut object = Map::new();
    object.insert("job".into(), json!(window.job));
    object.insert("job_version".into(), json!(window.job_version));
    object.insert("key".into(), json!(window.key));
    object.insert(
        "window_start".into(),
        json!(format_millis(window.window_start_ms)),
    );
    if let Some(end) = window.window_end_ms {
        object.insert("window_end".into(), json!(format_millis(end)));
    }
    let mut values = Map::new();
    for (index, value) in window.values.iter().enumerate() {
        let name = columns
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("column_{index}"));
        values.insert(name, value_json(value));
    }
    object.insert("values".into(), Json::Object(values));
    object.insert("version".into(), json!(window.version));
    object.insert("final".into(), json!(window.r#final));
    object.insert("source".into(), json!(source_name(window)));
    Json::Object(object)
}

/// Prints windows in `format` through a [`RowPrinter`].
fn print_windows(
    printer: &mut RowPrinter<impl Write>,
    columns: &[String],
    windows: &[proto::WindowResult],
) -> std::io::Result<()> {
    for window in windows {
        printer.cells(table_row(columns, window))?;
        printer.object(&window_json(columns, window))?;
    }
    Ok(())
}

/// Whether the table leads with the key and window start: when the job's columns lack the
/// window start, they would not say which window a row is.
fn leads_with_key(columns: &[String]) -> bool {
    !columns.iter().any(|name| name == "window_start")
}

fn table_header(columns: &[String]) -> Vec<String> {
    let mut header = Vec::new();
    if leads_with_key(columns) {
        header.extend(["key", "window_start"].map(String::from));
    }
    header.extend(columns.iter().cloned());
    header.extend(["version", "final", "source"].map(String::from));
    header
}

fn table_row(columns: &[String], window: &proto::WindowResult) -> Vec<String> {
    let mut row = Vec::new();
    if leads_with_key(columns) {
        row.extend([window.key.clone(), format_millis(window.window_start_ms)]);
    }
    row.extend(window.values.iter().map(value_text));
    row.extend([
        window.version.to_string(),
        window.r#final.to_string(),
        source_name(window).to_string(),
    ]);
    row
}

/// The least widths of the table's columns before any row: times are as wide as printed.
fn table_min_widths(header: &[String]) -> Vec<usize> {
    header
        .iter()
        .map(|name| match name.as_str() {
            "window_start" | "window_end" => TIME_WIDTH,
            _ => 0,
        })
        .collect()
}

/// Runs `runnel query …`.
pub(crate) async fn run_query(args: QueryArgs, config: &Config) -> anyhow::Result<()> {
    let mut client = connect_serving(config, &args.client).await?;
    let stdout = std::io::stdout();
    let format = args.format;
    match args.call {
        QueryCall::Windows {
            job,
            key,
            from,
            to,
            wait,
        } => {
            let request = proto::QueryWindowsRequest {
                job,
                key,
                from_ms: from.unwrap_or(i64::MIN),
                to_ms: to.unwrap_or(0),
            };
            let deadline = wait.map(|wait| std::time::Instant::now() + wait);
            let answer = loop {
                let answered = client.query_windows(request.clone()).await;
                let waiting = deadline.is_some_and(|deadline| std::time::Instant::now() < deadline);
                match answered {
                    Ok(answer) if !answer.get_ref().windows.is_empty() || !waiting => {
                        break answer.into_inner();
                    }
                    Err(status) if status.code() != tonic::Code::Unavailable || !waiting => {
                        return Err(refused("QueryWindows", status));
                    }
                    _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                }
            };
            let columns = &answer.column_names;
            let mut printer = RowPrinter::new(stdout.lock(), format, table_header(columns));
            print_windows(&mut printer, columns, &answer.windows)?;
            printer.finish()?;
        }
        QueryCall::Window {
            job,
            start,
            page_size,
            mut page_token,
            all,
        } => {
            // Every page goes to one printer: one header, one alignment, one JSON array.
            let mut printer: Option<RowPrinter<_>> = None;
            loop {
                let page = client
                    .get_window(proto::GetWindowRequest {
                        job: job.clone(),
                        window_start_ms: start,
                        page_size,
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(|status| refused("GetWindow", status))?
                    .into_inner();
                let printer = printer.get_or_insert_with(|| {
                    RowPrinter::new(stdout.lock(), format, table_header(&page.column_names))
                });
                print_windows(printer, &page.column_names, &page.windows)?;
                if page.next_page_token.is_empty() {
                    break;
                }
                if !all {
                    // On stderr, so that stdout holds nothing but rows in the asked-for format.
                    eprintln!(
                        "next page: --page-token {} (or --all for every page)",
                        page.next_page_token
                    );
                    break;
                }
                page_token = page.next_page_token;
            }
            if let Some(printer) = printer {
                printer.finish()?;
            }
        }
        QueryCall::Topk {
            job,
            start,
            k,
            by,
            ascending,
        } => {
            let answer = client
                .top_k(proto::TopKRequest {
                    job,
                    window_start_ms: start,
                    k,
                    order_by: by,
                    ascending,
                })
                .await
                .map_err(|status| refused("TopK", status))?
                .into_inner();
            let columns = &answer.column_names;
            let mut printer = RowPrinter::new(stdout.lock(), format, table_header(columns));
            print_windows(&mut printer, columns, &answer.windows)?;
            printer.finish()?;
        }
        QueryCall::Jobs => {
            let jobs = client
                .list_jobs(proto::ListJobsRequest {})
                .await
                .map_err(|status| refused("ListJobs", status))?
                .into_inner()
                .jobs;
            print_jobs(stdout.lock(), format, &jobs)?;
        }
        QueryCall::Subscribe { job, key } => {
            subscribe(&mut client, format, job, key).await?;
        }
    }
    Ok(())
}

/// `runnel query subscribe`: prints updates as they come until Ctrl-C or the service ends
/// the stream, and says on stderr what it waits for when nothing comes.
async fn subscribe(
    client: &mut ServingClient<Connection>,
    format: Format,
    job: String,
    key: Option<String>,
) -> anyhow::Result<()> {
    let columns = column_names(client, &job, None).await?;
    let key_filter = key.clone();
    let mut updates = client
        .subscribe(proto::SubscribeRequest {
            job: job.clone(),
            key: key.unwrap_or_default(),
        })
        .await
        .map_err(|status| refused("Subscribe", status))?
        .into_inner();
    let header = table_header(&columns);
    let min_widths = table_min_widths(&header);
    let mut printer = RowPrinter::streaming(std::io::stdout(), format, header, &min_widths);
    let mut hint_at = Some(tokio::time::Instant::now() + SUBSCRIBE_HINT_AFTER);
    loop {
        let hint_due = async {
            match hint_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = hint_due => {
                hint_at = None;
                let hint = waiting_hint(client, &job, key_filter.as_deref()).await;
                eprintln!("{hint}");
            }
            update = updates.next() => {
                let Some(update) = update else { break };
                let update = update.map_err(|status| refused("Subscribe", status))?;
                printer.cells(table_row(&columns, &update))?;
                printer.object(&window_json(&columns, &update))?;
                hint_at = Some(tokio::time::Instant::now() + SUBSCRIBE_HINT_AFTER);
            }
        }
    }
    printer.finish()?;
    Ok(())
}

/// One line on what `query subscribe` is waiting for: the rule, and the job's progress as
/// ListJobs reports it (serving reports the least watermark over the job's partitions, not
/// each partition's).
async fn waiting_hint(
    client: &mut ServingClient<Connection>,
    job: &str,
    key: Option<&str>,
) -> String {
    let of_key = key.map_or_else(String::new, |key| format!(" for key {key}"));
    let rule = format!(
        "waiting for results of `{job}`{of_key}: a window's result comes once the watermark of every source partition (its latest event time less the job's max-out-of-orderness) has passed the window's end, or earlier with the job's early-emit-interval"
    );
    let jobs = match client.list_jobs(proto::ListJobsRequest {}).await {
        Ok(answer) => answer.into_inner().jobs,
        Err(status) => return format!("{rule} (ListJobs: {})", status.message()),
    };
    let Some(version) = jobs.iter().find(|info| info.name == job).and_then(|info| {
        info.versions
            .iter()
            .find(|version| version.version == info.active_version)
    }) else {
        return rule;
    };
    let progress = match (&version.failure, version.watermark_ms) {
        (Some(failure), _) => format!("version {} FAILED: {failure}", version.version),
        (None, None) => format!(
            "version {} has no watermark yet: no task has checkpointed an event; {} records wait",
            version.version, version.lag_records
        ),
        (None, Some(watermark)) => format!(
            "version {}'s watermark is {} with {} records not yet processed; a partition that gets no new events holds it back (the job's idle-timeout lets it go)",
            version.version,
            format_millis(watermark),
            version.lag_records
        ),
    };
    format!("{rule}; {progress}")
}

fn print_jobs(out: impl Write, format: Format, jobs: &[proto::JobInfo]) -> anyhow::Result<()> {
    let optional_time = |millis: Option<i64>| millis.map_or_else(|| "-".to_string(), format_millis);
    let header = [
        "job",
        "version",
        "active",
        "watermark",
        "lag",
        "batch_horizon",
        "speed",
        "batch",
        "ready",
        "state",
    ]
    .map(String::from)
    .to_vec();
    let mut printer = RowPrinter::new(out, format, header);
    for job in jobs {
        let versions: Vec<Json> = job
            .versions
            .iter()
            .map(|version| {
                json!({
                    "version": version.version,
                    "watermark": version.watermark_ms.map(format_millis),
                    "lag_records": version.lag_records,
                    "batch_horizon": version.batch_horizon_ms.map(format_millis),
                    "speed_windows": version.speed_windows,
                    "batch_windows": version.batch_windows,
                    "ready": version.ready,
                    "failure": version.failure,
                    "columns": version.column_names,
                })
            })
            .collect();
        printer.object(
            &json!({ "job": job.name, "active_version": job.active_version, "versions": versions }),
        )?;
        for version in &job.versions {
            printer.cells(vec![
                job.name.clone(),
                version.version.to_string(),
                (version.version == job.active_version).to_string(),
                optional_time(version.watermark_ms),
                version.lag_records.to_string(),
                optional_time(version.batch_horizon_ms),
                version.speed_windows.to_string(),
                version.batch_windows.to_string(),
                version.ready.to_string(),
                match &version.failure {
                    Some(failure) => format!("FAILED: {failure}"),
                    None => "ok".to_string(),
                },
            ])?;
        }
    }
    printer.finish()?;
    Ok(())
}

/// The result column names of `job`'s version `version` (default: the active one).
async fn column_names(
    client: &mut ServingClient<Connection>,
    job: &str,
    version: Option<u32>,
) -> anyhow::Result<Vec<String>> {
    let jobs = client
        .list_jobs(proto::ListJobsRequest {})
        .await
        .map_err(|status| refused("ListJobs", status))?
        .into_inner()
        .jobs;
    let Some(info) = jobs.iter().find(|info| info.name == job) else {
        bail!("--job: the serving service has no job `{job}`");
    };
    let version = version.unwrap_or(info.active_version);
    info.versions
        .iter()
        .find(|info| info.version == version)
        .map(|info| info.column_names.clone())
        .with_context(|| format!("--version: job `{job}` has no version {version}"))
}

/// Runs `runnel results …`.
pub(crate) async fn run_results(command: ResultsCommand, config: &Config) -> anyhow::Result<()> {
    let ResultsCommand::Export(args) = command;
    let parquet = match args
        .out
        .extension()
        .and_then(|extension| extension.to_str())
    {
        Some("parquet") => true,
        Some("jsonl" | "ndjson") => false,
        _ => bail!("--out: {}: write .parquet or .jsonl", args.out.display()),
    };
    let mut client = connect_serving(config, &args.client).await?;
    let columns = column_names(&mut client, &args.job, args.job_version).await?;
    let mut rows = client
        .export_results(proto::ExportResultsRequest {
            job: args.job.clone(),
            version: args.job_version.unwrap_or(0),
        })
        .await
        .map_err(|status| refused("ExportResults", status))?
        .into_inner();
    let mut windows = Vec::new();
    while let Some(row) = rows.next().await {
        windows.push(row.map_err(|status| refused("ExportResults", status))?);
    }
    if parquet {
        write_parquet(&args.out, &columns, &windows)?;
    } else {
        let file =
            File::create(&args.out).with_context(|| format!("create {}", args.out.display()))?;
        let mut out = BufWriter::new(file);
        for window in &windows {
            writeln!(out, "{}", window_json(&columns, window))?;
        }
        out.flush()
            .with_context(|| format!("write {}", args.out.display()))?;
    }
    writeln!(
        std::io::stdout().lock(),
        "exported {} results of job `{}` to {}",
        windows.len(),
        args.job,
        args.out.display()
    )
    .context("write to stdout")?;
    Ok(())
}

/// The Arrow type of a result column: that of its first non-null value (text if none).
fn column_type(windows: &[proto::WindowResult], index: usize) -> DataType {
    let kind = windows.iter().find_map(|window| {
        window
            .values
            .get(index)
            .and_then(|value| value.kind.as_ref())
    });
    match kind {
        Some(Kind::Int64Value(_)) => DataType::Int64,
        Some(Kind::Float64Value(_)) => DataType::Float64,
        Some(Kind::BoolValue(_)) => DataType::Boolean,
        Some(Kind::TimestampMs(_)) => DataType::Timestamp(TimeUnit::Millisecond, None),
        Some(Kind::StringValue(_)) | None => DataType::Utf8,
    }
}

/// Results as Parquet: the job's columns, then `_key`, `_window_start`, `_window_end`,
/// `_version`, `_final`, `_source` and `_job_version`.
fn write_parquet(
    path: &Path,
    columns: &[String],
    windows: &[proto::WindowResult],
) -> anyhow::Result<()> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (index, name) in columns.iter().enumerate() {
        let data_type = column_type(windows, index);
        let values = windows.iter().map(|window| {
            window
                .values
                .get(index)
                .and_then(|value| value.kind.as_ref())
        });
        let array: ArrayRef = match &data_type {
            DataType::Int64 => {
                let mut builder = Int64Builder::new();
                for value in values {
                    builder.append_option(match value {
                        Some(Kind::Int64Value(number)) => Some(*number),
                        _ => None,
                    });
                }
                Arc::new(builder.finish())
            }
            DataType::Float64 => {
                let mut builder = Float64Builder::new();
                for value in values {
                    builder.append_option(match value {
                        Some(Kind::Float64Value(number)) => Some(*number),
                        #[allow(clippy::cast_precision_loss)]
                        Some(Kind::Int64Value(number)) => Some(*number as f64),
                        _ => None,
                    });
                }
                Arc::new(builder.finish())
            }
            DataType::Boolean => {
                let mut builder = BooleanBuilder::new();
                for value in values {
                    builder.append_option(match value {
                        Some(Kind::BoolValue(flag)) => Some(*flag),
                        _ => None,
                    });
                }
                Arc::new(builder.finish())
            }
            DataType::Timestamp(_, _) => {
                let mut builder = TimestampMillisecondBuilder::new();
                for value in values {
                    builder.append_option(match value {
                        Some(Kind::TimestampMs(millis)) => Some(*millis),
                        _ => None,
                    });
                }
                Arc::new(builder.finish())
            }
            _ => {
                let mut builder = StringBuilder::new();
                for value in values {
                    builder.append_option(value.map(|value| {
                        value_text(&runnel_proto::common::v1::Value {
                            kind: Some(value.clone()),
                        })
                    }));
                }
                Arc::new(builder.finish())
            }
        };
        fields.push(Field::new(name, data_type, true));
        arrays.push(array);
    }
    let mut keys = StringBuilder::new();
    let mut starts = TimestampMillisecondBuilder::new();
    let mut ends = TimestampMillisecondBuilder::new();
    let mut versions = UInt32Builder::new();
    let mut finals = BooleanBuilder::new();
    let mut sources = StringBuilder::new();
    let mut job_versions = UInt32Builder::new();
    for window in windows {
        keys.append_value(&window.key);
        starts.append_value(window.window_start_ms);
        ends.append_option(window.window_end_ms);
        versions.append_value(window.version);
        finals.append_value(window.r#final);
        sources.append_value(source_name(window));
        job_versions.append_value(window.job_version);
    }
    let timestamp = DataType::Timestamp(TimeUnit::Millisecond, None);
    fields.extend([
        Field::new("_key", DataType::Utf8, false),
        Field::new("_window_start", timestamp.clone(), false),
        Field::new("_window_end", timestamp, true),
        Field::new("_version", DataType::UInt32, false),
        Field::new("_final", DataType::Boolean, false),
        Field::new("_source", DataType::Utf8, false),
        Field::new("_job_version", DataType::UInt32, false),
    ]);
    arrays.extend([
        Arc::new(keys.finish()) as ArrayRef,
        Arc::new(starts.finish()),
        Arc::new(ends.finish()),
        Arc::new(versions.finish()),
        Arc::new(finals.finish()),
        Arc::new(sources.finish()),
        Arc::new(job_versions.finish()),
    ]);
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).context("build the results")?;
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None)
        .with_context(|| format!("write {}", path.display()))?;
    writer
        .write(&batch)
        .with_context(|| format!("write {}", path.display()))?;
    writer
        .close()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<String> {
        ["key", "window_start", "views", "version", "final", "source"]
            .map(String::from)
            .to_vec()
    }

    fn row(key: &str, views: i64) -> (Vec<String>, Json) {
        let cells = vec![
            key.to_string(),
            format_millis(1_795_341_600_000),
            views.to_string(),
            "1".to_string(),
            "true".to_string(),
            "speed".to_string(),
        ];
        (cells, json!({ "key": key, "views": views }))
    }

    /// Prints `rows` as `format`, streaming or not.
    fn printed(format: Format, streaming: bool, rows: &[(&str, i64)]) -> String {
        let mut out = Vec::new();
        let mut printer = if streaming {
            let min_widths = table_min_widths(&header());
            RowPrinter::streaming(&mut out, format, header(), &min_widths)
        } else {
            RowPrinter::new(&mut out, format, header())
        };
        for (key, views) in rows {
            let (cells, object) = row(key, *views);
            printer.cells(cells).expect("print");
            printer.object(&object).expect("print");
        }
        printer.finish().expect("finish");
        String::from_utf8(out).expect("UTF-8")
    }

    /// Checks that every row's cells start where the columns of the header above it start.
    #[track_caller]
    fn check_aligned(table: &str) {
        let starts = |line: &str| -> Vec<usize> {
            let bytes = line.as_bytes();
            (0..bytes.len())
                .filter(|&idx| bytes[idx] != b' ' && (idx == 0 || bytes[idx - 1] == b' '))
                .collect()
        };
        let mut header_starts = Vec::new();
        for line in table.lines() {
            if line.starts_with("key ") {
                header_starts = starts(line);
                continue;
            }
            assert!(
                !header_starts.is_empty(),
                "a row before any header:\n{table}"
            );
            assert_eq!(starts(line), header_starts, "not aligned:\n{table}");
        }
    }

    #[test]
    fn tables_line_up_with_their_header() {
        let rows = [
            (r#"["u1"]"#, 2),
            (r#"["a-much-longer-key"]"#, 1234567),
            (r#"["u2"]"#, 3),
        ];
        let table = printed(Format::Table, false, &rows);
        check_aligned(&table);
        assert_eq!(table.lines().count(), 4, "{table}");
        expect_line(
            &table,
            0,
            "key                    window_start              views    version  final  source",
        );
        let streamed = printed(Format::Table, true, &rows);
        check_aligned(&streamed);
        assert!(
            streamed
                .lines()
                .filter(|line| line.starts_with("key "))
                .count()
                <= 2,
            "the header repeats only when a column widens:\n{streamed}"
        );
        // Short keys never widen past the first row's room.
        let streamed = printed(Format::Table, true, &[(r#"["u1"]"#, 1), (r#"["u10"]"#, 22)]);
        check_aligned(&streamed);
        assert_eq!(streamed.lines().count(), 3, "{streamed}");
    }

    #[track_caller]
    fn expect_line(text: &str, index: usize, expect: &str) {
        assert_eq!(text.lines().nth(index), Some(expect), "{text}");
    }

    #[test]
    fn json_is_one_array_and_jsonl_one_object_per_line() {
        for streaming in [false, true] {
            let json = printed(Format::Json, streaming, &[("a", 1), ("b", 2)]);
            let parsed: Json = serde_json::from_str(&json).expect("one JSON document");
            assert_eq!(
                parsed,
                json!([{ "key": "a", "views": 1 }, { "key": "b", "views": 2 }])
            );
            assert_eq!(printed(Format::Json, streaming, &[]), "[]\n");
            let jsonl = printed(Format::Jsonl, streaming, &[("a", 1), ("b", 2)]);
            assert_eq!(
                jsonl,
                "{\"key\":\"a\",\"views\":1}\n{\"key\":\"b\",\"views\":2}\n"
            );
            assert_eq!(printed(Format::Jsonl, streaming, &[]), "");
        }
    }
}
