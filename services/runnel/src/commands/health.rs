//! `runnel health <service>`: whether a service of this config, on this machine, is ready.
//! For container health checks (infra/compose): exit status 0 when it is; otherwise an
//! error that says why, and a non-zero status.
//!
//! - ingest, serving: the standard gRPC health service (`grpc.health.v1.Health/Check`, no
//!   token needed) on the service's listen address answers SERVING. Serving answers
//!   NOT_SERVING until it has loaded its views and caught up with its results topics.
//! - stream-processor: `GET /status` on `stream-processor.metrics-listen` answers, and no job
//!   has been given up (`failed`).
//!
//! `--url` names the service's address instead of the config (`http://host:port`).

use std::time::Duration;

use anyhow::{Context, ensure};
use clap::{Args, ValueEnum};
use runnel_config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::client::{ClientArgs, connect, connect_address};

/// How long the whole check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(4);

/// The services with a health check.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Service {
    Ingest,
    Serving,
    StreamProcessor,
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The service to ask.
    #[arg(value_enum)]
    service: Service,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn run(args: HealthArgs, config: &Config) -> anyhow::Result<()> {
    tokio::time::timeout(CHECK_TIMEOUT, check(&args, config))
        .await
        .with_context(|| format!("no answer within {CHECK_TIMEOUT:?}"))??;
    Ok(())
}

async fn check(args: &HealthArgs, config: &Config) -> anyhow::Result<()> {
    let endpoint = match args.service {
        Service::Ingest => config.ingest.security(),
        Service::Serving => config.serving.security(),
        Service::StreamProcessor => {
            let address = match args.client.url() {
                Some(url) => url
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_string(),
                None => connect_address(&config.stream_processor.metrics_listen),
            };
            return stream_processor_status(&address).await;
        }
    };
    let connection = connect(&endpoint, &args.client).await?;
    let response = HealthClient::new(connection)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .with_context(|| format!("ask the {} service's health", endpoint.section))?;
    let status = response.into_inner().status();
    ensure!(
        status == ServingStatus::Serving,
        "the {} service says {} (not serving yet, or stopping)",
        endpoint.section,
        status.as_str_name()
    );
    Ok(())
}

/// `GET /status` of the stream-processor at `address` (`host:port`): answered, and no job
/// failed.
async fn stream_processor_status(address: &str) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connect to the stream-processor's /status at {address}"))?;
    stream
        .write_all(
            format!("GET /status HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .context("send GET /status")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .context("read the answer to GET /status")?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("GET /status: not an HTTP answer")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET /status answered `{}`",
        head.lines().next().unwrap_or_default()
    );
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(body).context("GET /status: not a JSON list of jobs")?;
    let failed: Vec<&str> = jobs
        .iter()
        .filter(|job| job["state"] == "failed")
        .filter_map(|job| job["job"].as_str())
        .collect();
    ensure!(
        failed.is_empty(),
        "jobs given up after repeated failures: {} (see the service's log)",
        failed.join(", ")
    );
    Ok(())
}
