//! Require or skip: a test that needs an external server reads where it is from the
//! environment (`scripts/test.sh` starts the servers and sets the variables). When the
//! variable is unset the test is skipped with a notice on stderr, unless the requiring
//! variable is `1` (as in CI), which fails it.

use std::path::PathBuf;

/// The value of `variable` (an external server's address, a tool's path), or `None` after a
/// notice naming `what` is skipped; unset (or empty) while `require` is `1`, it panics.
///
/// # Panics
///
/// When `variable` is unset and `require` is `1`.
pub fn external(variable: &str, require: &str, what: &str) -> Option<String> {
    external_in(|name| std::env::var(name).ok(), variable, require, what)
}

/// [`external`] over the environment `env`.
fn external_in(
    env: impl Fn(&str) -> Option<String>,
    variable: &str,
    require: &str,
    what: &str,
) -> Option<String> {
    match env(variable) {
        Some(value) if !value.is_empty() => Some(value),
        _ => {
            assert!(
                env(require).as_deref() != Some("1"),
                "{require}=1 but {variable} is not set: run through scripts/test.sh, which \
                 provides it"
            );
            eprintln!("skipped {what}: {variable} is not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// The Kafka broker's bootstrap address (`KAFKA_BOOTSTRAP`), required by
/// `RUNNEL_REQUIRE_KAFKA`.
pub fn kafka_bootstrap(what: &str) -> Option<String> {
    external("KAFKA_BOOTSTRAP", "RUNNEL_REQUIRE_KAFKA", what)
}

/// Apache Kafka's libraries folder, for its console tools (`RUNNEL_KAFKA_LIBS`), required by
/// `RUNNEL_REQUIRE_KAFKA`.
pub fn kafka_libs(what: &str) -> Option<PathBuf> {
    external("RUNNEL_KAFKA_LIBS", "RUNNEL_REQUIRE_KAFKA", what).map(PathBuf::from)
}

/// A Python with DuckDB (`RUNNEL_PYTHON`), required by `RUNNEL_REQUIRE_DUCKDB`.
pub fn duckdb_python(what: &str) -> Option<String> {
    external("RUNNEL_PYTHON", "RUNNEL_REQUIRE_DUCKDB", what)
}

/// A Python with grpcio and grpcio-reflection (`RUNNEL_PYTHON`), required by
/// `RUNNEL_REQUIRE_GRPCIO`.
pub fn grpcio_python(what: &str) -> Option<String> {
    external("RUNNEL_PYTHON", "RUNNEL_REQUIRE_GRPCIO", what)
}

/// The S3-compatible server's endpoint (`RUNNEL_S3_ENDPOINT`), required by
/// `RUNNEL_REQUIRE_S3`.
pub fn s3_endpoint(what: &str) -> Option<String> {
    external("RUNNEL_S3_ENDPOINT", "RUNNEL_REQUIRE_S3", what)
}

/// The S3 server's endpoint and an empty bucket on it (`RUNNEL_S3_ENDPOINT`,
/// `RUNNEL_S3_BUCKET`), required by `RUNNEL_REQUIRE_S3`.
pub fn s3_bucket(what: &str) -> Option<(String, String)> {
    let endpoint = s3_endpoint(what)?;
    let bucket = external("RUNNEL_S3_BUCKET", "RUNNEL_REQUIRE_S3", what)?;
    Some((endpoint, bucket))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn gate(env: &[(&str, &str)]) -> std::thread::Result<Option<String>> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        std::panic::catch_unwind(|| {
            external_in(|name| env.get(name).cloned(), "SERVER", "REQUIRE", "a test")
        })
    }

    #[test]
    fn a_server_is_used_when_set_skipped_when_not_and_required_fails_the_test() {
        assert_eq!(
            gate(&[("SERVER", "127.0.0.1:9092")]).ok(),
            Some(Some("127.0.0.1:9092".to_string()))
        );
        assert_eq!(gate(&[]).ok(), Some(None));
        assert_eq!(gate(&[("SERVER", ""), ("REQUIRE", "0")]).ok(), Some(None));
        assert!(
            gate(&[("REQUIRE", "1")]).is_err(),
            "required and unset fails"
        );
        assert!(
            gate(&[("SERVER", ""), ("REQUIRE", "1")]).is_err(),
            "empty counts as unset"
        );
    }
}
