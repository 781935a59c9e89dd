//! Bearer-token authentication and TLS for the services' ports (`auth-token`, `tls-cert`,
//! `tls-key` of `[ingest]` and `[serving]`).
//!
//! The token check is one axum middleware over the whole router, so gRPC and HTTP routes
//! of a port are guarded alike: a gRPC call without the right token ends UNAUTHENTICATED,
//! an HTTP request gets 401 with `WWW-Authenticate: Bearer`. Neither answer says more than
//! that the token is missing or wrong, and the request goes no further. The service logs
//! refusals at WARN, at most one line per 10 s with how many more there were, so that a
//! client deployed with the wrong token shows in the service's log without flooding it.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use runnel_config::PortSecurity;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// What a port asks of its callers.
#[derive(Debug, Clone)]
struct Guard {
    token: Arc<str>,
    /// Path prefixes anyone may call (e.g. the gRPC health service, for probes).
    open: &'static [&'static str],
    refusals: Arc<Refusals>,
}

/// How often refused requests are logged at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Refused requests not logged yet, and when the last line was.
#[derive(Debug, Default)]
struct Refusals(Mutex<(u64, Option<Instant>)>);

impl Refusals {
    /// Counts a refusal of `path` for `reason`; logs it (with the refusals not logged since
    /// the last line) unless a line was logged within [`REFUSAL_LOG_INTERVAL`].
    fn refused(&self, path: &str, reason: &str) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (unlogged, last_logged) = &mut *state;
        *unlogged += 1;
        if last_logged.is_some_and(|last| last.elapsed() < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *last_logged = Some(Instant::now());
        let refused = std::mem::take(unlogged);
        tracing::warn!(
            path,
            reason,
            refused_since_last_line = refused,
            "refused a request: wrong or missing bearer token (does the client have this service's auth-token?)"
        );
    }
}

/// Whether `a` equals `b`, in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn check(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if guard.open.iter().any(|open| path.starts_with(open)) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented.is_some_and(|token| same_secret(token.trim().as_bytes(), guard.token.as_bytes())) {
        return next.run(request).await;
    }
    let reason = if presented.is_some() {
        "the bearer token is not valid"
    } else {
        "a bearer token is required (header `authorization: Bearer <token>`)"
    };
    guard.refusals.refused(path, reason);
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unauthenticated(reason).into_http::<Body>();
    }
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(serde_json::json!({ "error": format!("unauthenticated: {reason}") })),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"runnel\""),
    );
    response
}

/// `router` with every request but those under the `open` path prefixes required to carry
/// `authorization: Bearer <token>` when the port has a token (`<section>.auth-token`);
/// `router` itself without one.
pub fn require_bearer(
    router: axum::Router,
    port: &PortSecurity<'_>,
    open: &'static [&'static str],
) -> axum::Router {
    match port.auth_token {
        Some(token) => router.layer(axum::middleware::from_fn_with_state(
            Guard {
                token: Arc::from(token.trim()),
                open,
                refusals: Arc::default(),
            },
            check,
        )),
        None => router,
    }
}

/// A TLS certificate or key that could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The certificate or key is not valid.
    #[error("{0}")]
    Invalid(#[source] tonic::transport::Error),
}

/// A gRPC server builder for the port: TLS with its `tls-cert` and `tls-key` (PEM files), or
/// plain HTTP/2 without them.
///
/// # Errors
///
/// [`TlsError`] if a file cannot be read or does not hold a certificate and key.
pub fn server(port: &PortSecurity<'_>) -> Result<Server, TlsError> {
    let (Some(cert), Some(key)) = (port.tls_cert, port.tls_key) else {
        return Ok(Server::builder());
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    Server::builder().tls_config(tls).map_err(TlsError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cres"));
        assert!(!same_secret(b"s3cret", b"s3cret!"));
        assert!(!same_secret(b"", b"x"));
    }
}
