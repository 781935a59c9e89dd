//! A client's connection to a runnel service: the URL (`https://` for TLS), the certificate
//! to trust (for a self-signed one), and `authorization: Bearer <token>` on every call. The
//! CLI, the tests and the benchmarks connect through [`connect`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse.
    #[error("`{url}` is not a valid URL: {source}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The certificate to trust could not be read.
    #[error("read the certificate to trust {path}: {source}")]
    Certificate {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be configured.
    #[error("configure TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The token is not a valid header value.
    #[error("the bearer token is not a valid header value")]
    Token,
    /// The service did not answer.
    #[error("connect to {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Where and how to reach a service.
#[derive(Debug, Clone, Default)]
pub struct ClientEndpoint<'a> {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// For `https://`: a PEM certificate to trust besides the system's roots.
    pub ca_cert: Option<&'a Path>,
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<&'a str>,
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Debug, Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The interceptor for `token` (none: calls go without one).
    ///
    /// # Errors
    ///
    /// [`ClientError::Token`] if the token is not a valid header value.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        token
            .map(|token| {
                format!("Bearer {}", token.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| ClientError::Token)
            })
            .transpose()
            .map(BearerToken)
    }
}

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
pub type Connection = InterceptedService<Channel, BearerToken>;

/// Where a client reaches a listen address: a wildcard address means this machine.
pub fn connect_address(listen: &str) -> String {
    listen
        .replace("0.0.0.0", "127.0.0.1")
        .replace("[::]", "[::1]")
}

/// Connects to `endpoint`.
///
/// # Errors
///
/// [`ClientError`]: a bad URL, certificate or token, or a service that does not answer.
pub async fn connect(endpoint: &ClientEndpoint<'_>) -> Result<Connection, ClientError> {
    let url = endpoint.url.clone();
    let mut channel = Endpoint::from_shared(url.clone())
        .map_err(|source| ClientError::Url {
            url: url.clone(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(path) = endpoint.ca_cert {
            let pem = std::fs::read(path).map_err(|source| ClientError::Certificate {
                path: path.to_path_buf(),
                source,
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        channel = channel.tls_config(tls).map_err(ClientError::Tls)?;
    }
    let token = BearerToken::new(endpoint.token)?;
    let channel = channel
        .connect()
        .await
        .map_err(|source| ClientError::Connect { url, source })?;
    Ok(InterceptedService::new(channel, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_reached_on_this_machine() {
        assert_eq!(connect_address("0.0.0.0:7301"), "127.0.0.1:7301");
        assert_eq!(connect_address("[::]:7301"), "[::1]:7301");
        assert_eq!(connect_address("10.0.0.1:7301"), "10.0.0.1:7301");
    }
}
