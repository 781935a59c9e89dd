//! The demo's screen: every second, what serving answers over gRPC, with the milestones.

use std::sync::atomic::Ordering;
use std::time::Instant;

use runnel_proto::client::Connection;
use runnel_proto::common::v1::value::Kind;
use runnel_proto::serving::v1::serving_client::ServingClient;
use runnel_proto::serving::v1::{self as proto};
use runnel_time::{format_millis, now_millis};

use super::generator::Generated;
use crate::terminal::source_name;
/// The screen's legend, one line under the jobs table: its columns, and the result lines'
/// `v18 final speed`.
const LEGEND: &str = "legend: times are HH:MM:SS in UTC; WATERMARK = event time up to which the job has seen every event; LAG = records not yet processed; SPEED / BATCH = windows held in the speed view (live results) / batch view (recomputed history); `v18 final speed` = version 18 of the window's result (each update adds one), final once the watermark passed its end (else early), answered from the speed view (or batch)";

fn text(value: Option<&runnel_proto::common::v1::Value>) -> String {
    match value.and_then(|value| value.kind.as_ref()) {
        None => "-".to_string(),
        Some(Kind::StringValue(text)) => text.clone(),
        Some(Kind::Int64Value(number)) => number.to_string(),
        Some(Kind::Float64Value(number)) => format!("{number:.1}"),
        Some(Kind::BoolValue(flag)) => flag.to_string(),
        Some(Kind::TimestampMs(millis)) => clock(*millis),
    }
}

/// `HH:MM:SS` of an epoch-ms time.
pub(super) fn clock(millis: i64) -> String {
    format_millis(millis)
        .get(11..19)
        .unwrap_or_default()
        .to_string()
}

fn column(window: &proto::WindowResult, columns: &[String], name: &str) -> String {
    text(
        columns
            .iter()
            .position(|column| column == name)
            .and_then(|index| window.values.get(index)),
    )
}

/// The `k` most viewed pages of the `page_views` window starting at `start`.
async fn top_pages(
    client: &mut ServingClient<Connection>,
    start: i64,
    k: u32,
) -> Result<proto::TopKResponse, tonic::Status> {
    Ok(client
        .top_k(proto::TopKRequest {
            job: "page_views".to_string(),
            window_start_ms: start,
            k,
            order_by: "views".to_string(),
            ascending: false,
        })
        .await?
        .into_inner())
}

/// One screen of what serving answers.
pub(super) async fn frame(
    client: &mut ServingClient<Connection>,
    started: Instant,
    counters: &Generated,
    milestones: &[String],
) -> anyhow::Result<String> {
    let mut out = String::new();
    let elapsed = started.elapsed().as_secs();
    let events = counters.events.load(Ordering::Relaxed);
    out.push_str(&format!(
        "runnel demo: ingest, stream-processor, batch-reprocessor and serving in one process (Ctrl-C stops)\n\
         {elapsed:>4} s  events ingested {events}, of them sent late {}, rejected {}\n\n",
        counters.late.load(Ordering::Relaxed),
        counters.rejected.load(Ordering::Relaxed),
    ));
    let jobs = client
        .list_jobs(proto::ListJobsRequest {})
        .await?
        .into_inner()
        .jobs;
    out.push_str(
        "JOB              VERSION  ACTIVE  WATERMARK  LAG   BATCH HORIZON  SPEED  BATCH\n",
    );
    for job in &jobs {
        for version in &job.versions {
            out.push_str(&format!(
                "{:<16} {:<8} {:<7} {:<10} {:<5} {:<14} {:<6} {}\n",
                job.name,
                version.version,
                if version.version == job.active_version {
                    "yes"
                } else {
                    ""
                },
                version.watermark_ms.map_or("-".to_string(), clock),
                version.lag_records,
                version.batch_horizon_ms.map_or("-".to_string(), clock),
                version.speed_windows,
                version.batch_windows,
            ));
        }
    }
    out.push_str(LEGEND);
    out.push('\n');
    let now = now_millis();
    // The last page_views window the watermark has passed (2 s out of orderness).
    let page_window = (now - 12_000).div_euclid(10_000) * 10_000;
    let top = top_pages(client, page_window, 5).await?;
    out.push_str(&format!(
        "\npage_views: top pages of {}-{} (TopK by views)\n",
        clock(page_window),
        clock(page_window + 10_000)
    ));
    for window in &top.windows {
        out.push_str(&format!(
            "  {:<12} {:>6} views  avg {:>7} ms  v{} {} {}\n",
            column(window, &top.column_names, "page"),
            column(window, &top.column_names, "views"),
            column(window, &top.column_names, "avg_ms"),
            window.version,
            if window.r#final { "final" } else { "early" },
            source_name(window),
        ));
    }
    let old_window = (now - 60_000).div_euclid(10_000) * 10_000;
    let old = top_pages(client, old_window, 1).await?;
    if let Some(window) = old.windows.first() {
        out.push_str(&format!(
            "  a minute before ({}): {} with {} views, from the {} view\n",
            clock(old_window),
            column(window, &old.column_names, "page"),
            column(window, &old.column_names, "views"),
            source_name(window),
        ));
    }
    let hop_window = (now - 32_000).div_euclid(10_000) * 10_000;
    let countries = client
        .get_window(proto::GetWindowRequest {
            job: "country_traffic".to_string(),
            window_start_ms: hop_window,
            page_size: 8,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    out.push_str(&format!(
        "\ncountry_traffic: clicks in {}-{} (GetWindow of a 30 s window sliding by 10 s)\n ",
        clock(hop_window),
        clock(hop_window + 30_000)
    ));
    for window in &countries.windows {
        out.push_str(&format!(
            " {} {}",
            column(window, &countries.column_names, "country"),
            column(window, &countries.column_names, "clicks")
        ));
    }
    out.push('\n');
    let plans = client
        .top_k(proto::TopKRequest {
            job: "user_plans".to_string(),
            window_start_ms: page_window,
            k: 3,
            order_by: "clicks".to_string(),
            ascending: false,
        })
        .await?
        .into_inner();
    out.push_str(&format!(
        "\nuser_plans: the busiest users of {}-{} with their plan as of their clicks (a join AS OF the table users)\n",
        clock(page_window),
        clock(page_window + 10_000)
    ));
    for window in &plans.windows {
        out.push_str(&format!(
            "  {:<8} plan {:<5} {:>3} clicks  v{} {}\n",
            column(window, &plans.column_names, "user_id"),
            column(window, &plans.column_names, "plan"),
            column(window, &plans.column_names, "clicks"),
            window.version,
            if window.r#final { "final" } else { "early" },
        ));
    }
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let sessions = client
            .query_windows(proto::QueryWindowsRequest {
                job: "user_sessions".to_string(),
                key: user.to_string(),
                from_ms: now - 600_000,
                to_ms: 0,
            })
            .await?
            .into_inner();
        if sessions.windows.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "\nuser_sessions: {user}'s last sessions (QueryWindows), from job version {}\n",
            sessions.windows[0].job_version
        ));
        for window in sessions.windows.iter().rev().take(3) {
            out.push_str(&format!(
                "  {}-{}  {:>3} clicks  {:>6} ms\n",
                clock(window.window_start_ms),
                window.window_end_ms.map_or("?".to_string(), clock),
                column(window, &sessions.column_names, "clicks"),
                column(window, &sessions.column_names, "total_ms"),
            ));
        }
        break;
    }
    out.push('\n');
    for milestone in milestones {
        out.push_str(milestone);
        out.push('\n');
    }
    Ok(out)
}
