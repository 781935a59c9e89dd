//! How the CLI's clients reach a service: its URL (by default the config's listen address,
//! `https://` when the config gives the service a TLS certificate), the bearer token (by
//! default the config's `auth-token`) and the certificate to trust.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

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

/// What the config says of a service, for its clients.
pub(crate) struct ServiceEndpoint<'a> {
    pub name: &'a str,
    pub listen: &'a str,
    pub auth_token: Option<&'a str>,
    pub tls_cert: Option<&'a std::path::Path>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub(crate) struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// A connection to a service, with its token on every call.
pub(crate) type Connection = InterceptedService<Channel, BearerToken>;

/// Where a client reaches a listen address: a wildcard address means this machine.
pub(crate) fn connect_address(listen: &str) -> String {
    listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]")
}

/// Connects to `service` as `args` and the config say.
pub(crate) async fn connect(
    service: &ServiceEndpoint<'_>,
    args: &ClientArgs,
) -> anyhow::Result<Connection> {
    let scheme = if service.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{}", connect_address(service.listen)));
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("--url: `{url}` is not a valid URL"))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let trusted = args.ca_cert.as_deref().or(service.tls_cert);
        let mut tls = ClientTlsConfig::new();
        if let Some(path) = trusted {
            let pem = std::fs::read(path)
                .with_context(|| format!("--ca-cert: read {}", path.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).context("configure TLS")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("connect to the {} service at {url}", service.name))?;
    let token = args
        .token
        .as_deref()
        .or(service.auth_token)
        .map(|token| {
            format!("Bearer {}", token.trim())
                .parse::<MetadataValue<Ascii>>()
                .context("--token: not a valid header value")
        })
        .transpose()?;
    Ok(InterceptedService::new(channel, BearerToken(token)))
}

#[cfg(test)]
mod tests {
    use super::connect_address;

    #[test]
    fn wildcard_listen_addresses_are_reached_on_this_machine() {
        assert_eq!(connect_address("0.0.0.0:7301"), "127.0.0.1:7301");
        assert_eq!(connect_address("[::]:7301"), "[::1]:7301");
        assert_eq!(connect_address("10.0.0.1:7301"), "10.0.0.1:7301");
    }
}
