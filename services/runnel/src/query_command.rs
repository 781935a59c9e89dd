//! `runnel query …` and `runnel results export`: the serving service's client.
//!
//! Each call prints a table (key, window, the job's columns, result version, final, which
//! view answered) or, with `--format json`, one JSON object per window. `results export`
//! streams every current result of a job version into a Parquet or JSONL file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder, UInt32Builder,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use runnel_config::Config;
use runnel_events::validate::format_millis;
use runnel_serving::proto::serving_client::ServingClient;
use runnel_serving::proto::{self, value::Kind};
use serde_json::{Map, Value as Json, json};

use crate::client::{ClientArgs, Connection, ServiceEndpoint, connect};

use crate::backfill_command::parse_time;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// An aligned table.
    Table,
    /// One JSON object per window (JSON lines).
    Json,
}

/// Arguments of `runnel query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Output format.
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
        /// Windows starting at or after this (epoch ms or RFC 3339); default: all.
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// Windows starting before this (epoch ms or RFC 3339); default: no bound.
        #[arg(long, value_parser = parse_time)]
        to: Option<i64>,
    },
    /// Every key of one window, a page at a time (GetWindow).
    Window {
        #[arg(long)]
        job: String,
        /// The window's start (epoch ms or RFC 3339).
        #[arg(long, value_parser = parse_time)]
        start: i64,
        /// Keys per page (0: the service's default).
        #[arg(long, default_value_t = 0)]
        page_size: u32,
        /// The token a previous page printed, for the next page.
        #[arg(long, default_value = "")]
        page_token: String,
        /// Fetches every page.
        #[arg(long)]
        all: bool,
    },
    /// The k keys of one window with the largest value of a column (TopK).
    Topk {
        #[arg(long)]
        job: String,
        /// The window's start (epoch ms or RFC 3339).
        #[arg(long, value_parser = parse_time)]
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
    /// Each job: versions, the active one, watermark, lag and batch horizon (ListJobs).
    Jobs,
    /// Live updates of a job's results until Ctrl-C (Subscribe).
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

async fn connect_serving(
    config: &Config,
    args: &ClientArgs,
) -> anyhow::Result<ServingClient<Connection>> {
    let connection = connect(
        &ServiceEndpoint {
            name: "serving",
            listen: &config.serving.listen,
            auth_token: config.serving.auth_token.as_deref(),
            tls_cert: config.serving.tls_cert.as_deref(),
        },
        args,
    )
    .await?;
    Ok(ServingClient::new(connection).max_decoding_message_size(usize::MAX))
}

/// A gRPC status as an error that says what the service said.
fn refused(call: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call}: {:?}: {}", status.code(), status.message())
}

fn value_json(value: &proto::Value) -> Json {
    match &value.kind {
        None => Json::Null,
        Some(Kind::StringValue(text)) => json!(text),
        Some(Kind::Int64Value(number)) => json!(number),
        Some(Kind::Float64Value(number)) => json!(number),
        Some(Kind::BoolValue(flag)) => json!(flag),
        Some(Kind::TimestampMs(millis)) => json!(format_millis(*millis)),
    }
}

fn value_text(value: &proto::Value) -> String {
    match &value.kind {
        None => "null".to_string(),
        Some(Kind::StringValue(text)) => text.clone(),
        Some(Kind::Int64Value(number)) => number.to_string(),
        Some(Kind::Float64Value(number)) => number.to_string(),
        Some(Kind::BoolValue(flag)) => flag.to_string(),
        Some(Kind::TimestampMs(millis)) => format_millis(*millis),
    }
}

pub(crate) fn source_name(window: &proto::WindowResult) -> &'static str {
    match window.source() {
        proto::ViewSource::Batch => "batch",
        proto::ViewSource::Speed => "speed",
        proto::ViewSource::Unspecified => "?",
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

/// Prints windows as a table or JSON lines.
fn print_windows(
    out: &mut impl Write,
    format: Format,
    columns: &[String],
    windows: &[proto::WindowResult],
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            for window in windows {
                writeln!(out, "{}", window_json(columns, window))?;
            }
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = windows
                .iter()
                .map(|window| table_row(columns, window))
                .collect();
            print_table(out, &table_header(columns), &rows)?;
        }
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

fn print_table(
    out: &mut impl Write,
    header: &[String],
    rows: &[Vec<String>],
) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|name| name.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(header))?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

/// Runs `runnel query …`.
pub(crate) async fn run_query(args: QueryArgs, config: &Config) -> anyhow::Result<()> {
    let mut client = connect_serving(config, &args.client).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.call {
        QueryCall::Windows { job, key, from, to } => {
            let answer = client
                .query_windows(proto::QueryWindowsRequest {
                    job,
                    key,
                    from_ms: from.unwrap_or(i64::MIN),
                    to_ms: to.unwrap_or(0),
                })
                .await
                .map_err(|status| refused("QueryWindows", status))?
                .into_inner();
            print_windows(&mut out, args.format, &answer.column_names, &answer.windows)?;
        }
        QueryCall::Window {
            job,
            start,
            page_size,
            mut page_token,
            all,
        } => loop {
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
            print_windows(&mut out, args.format, &page.column_names, &page.windows)?;
            if page.next_page_token.is_empty() {
                break;
            }
            if !all {
                if args.format == Format::Table {
                    writeln!(out, "next page: --page-token {}", page.next_page_token)?;
                } else {
                    writeln!(
                        out,
                        "{}",
                        json!({ "next_page_token": page.next_page_token })
                    )?;
                }
                break;
            }
            page_token = page.next_page_token;
        },
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
            print_windows(&mut out, args.format, &answer.column_names, &answer.windows)?;
        }
        QueryCall::Jobs => {
            let jobs = client
                .list_jobs(proto::ListJobsRequest {})
                .await
                .map_err(|status| refused("ListJobs", status))?
                .into_inner()
                .jobs;
            print_jobs(&mut out, args.format, &jobs)?;
        }
        QueryCall::Subscribe { job, key } => {
            let columns = column_names(&mut client, &job, None).await?;
            let mut updates = client
                .subscribe(proto::SubscribeRequest {
                    job,
                    key: key.unwrap_or_default(),
                })
                .await
                .map_err(|status| refused("Subscribe", status))?
                .into_inner();
            if args.format == Format::Table {
                writeln!(out, "{}", table_header(&columns).join("  "))?;
            }
            out.flush()?;
            drop(out);
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    update = updates.next() => {
                        let Some(update) = update else { break };
                        let update = update.map_err(|status| refused("Subscribe", status))?;
                        let mut out = std::io::stdout().lock();
                        // One line per update as it comes: a table is not aligned.
                        match args.format {
                            Format::Json => writeln!(out, "{}", window_json(&columns, &update))?,
                            Format::Table => {
                                writeln!(out, "{}", table_row(&columns, &update).join("  "))?;
                            }
                        }
                        out.flush()?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn print_jobs(out: &mut impl Write, format: Format, jobs: &[proto::JobInfo]) -> anyhow::Result<()> {
    let optional_time = |millis: Option<i64>| millis.map_or_else(|| "-".to_string(), format_millis);
    match format {
        Format::Json => {
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
                writeln!(
                    out,
                    "{}",
                    json!({ "job": job.name, "active_version": job.active_version, "versions": versions })
                )?;
            }
        }
        Format::Table => {
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
            .map(String::from);
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .flat_map(|job| {
                    job.versions.iter().map(|version| {
                        vec![
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
                        ]
                    })
                })
                .collect();
            print_table(out, &header, &rows)?;
        }
    }
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
                        value_text(&proto::Value {
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
