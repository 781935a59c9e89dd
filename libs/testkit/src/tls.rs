//! The test certificates: a CA (`ca.pem`) and a server certificate for `localhost` and
//! 127.0.0.1 that it signed (`server.pem`, `server.key`), in `e2e-tests/fixtures/tls`.

use std::path::PathBuf;

/// The path of TLS fixture `name`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../e2e-tests/fixtures/tls")
        .join(name)
}
