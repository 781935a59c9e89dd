//! How the CLI's clients reach a service: its URL (by default the config's listen address,
//! `https://` when the config gives the service a TLS certificate), the bearer token (by
//! default the config's `auth-token`) and the certificate to trust; the connection itself is
//! `runnel_proto::client`'s.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use runnel_config::{Config, PortSecurity};
use runnel_proto::ingest::v1::ingest_client::IngestClient;
use runnel_proto::ingest::v1::{FlushArchiveRequest, FlushArchiveResponse};
use runnel_proto::serving::v1::serving_client::ServingClient;

/// The flags of a service's client.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct ClientArgs {
    /// The service's URL; defaults to the config's listen address (https:// when the config
    /// gives the service a TLS certificate).
    #[arg(long, global = true)]
    url: Option<String>,
    /// The bearer token; defaults to the config's `auth-token` of the service.
    #[arg(long, global = true, env = "RUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A PEM certificate to trust for https:// (defaults to the config's `tls-cert` of the
    /// service, for a self-signed one).
    #[arg(long, global = true, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

impl ClientArgs {
    /// `--url`, if given.
    pub(crate) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }
}

pub(crate) use runnel_proto::client::{Connection, connect_address};

/// Connects to `service` as `args` and the config say.
pub(crate) async fn connect(
    service: &PortSecurity<'_>,
    args: &ClientArgs,
) -> anyhow::Result<Connection> {
    let scheme = if service.tls() { "https" } else { "http" };
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", connect_address(service.listen)));
    let endpoint = runnel_proto::client::ClientEndpoint {
        url: url.clone(),
        ca_cert: args.ca_cert.as_deref().or(service.tls_cert),
        token: args.token.as_deref().or(service.auth_token),
    };
    runnel_proto::client::connect(&endpoint)
        .await
        .with_context(|| format!("connect to the {} service at {url}", service.section))
}

/// A client of serving, as `args` and the config say.
pub(crate) async fn connect_serving(
    config: &Config,
    args: &ClientArgs,
) -> anyhow::Result<ServingClient<Connection>> {
    let connection = connect(&config.serving.security(), args).await?;
    Ok(ServingClient::new(connection).max_decoding_message_size(usize::MAX))
}

/// Asks the ingest service's archiver to finish its files at the log's end as it is now.
pub(crate) async fn flush_ingest_archiver(
    config: &Config,
    args: &ClientArgs,
) -> anyhow::Result<FlushArchiveResponse> {
    let connection = connect(&config.ingest.security(), args).await?;
    Ok(IngestClient::new(connection)
        .flush_archive(FlushArchiveRequest { timeout_ms: 0 })
        .await
        .context("flush the ingest service's archiver")?
        .into_inner())
}
