//! What runnel's tests and benchmarks share, written once. A dev-dependency only (the
//! workspace's layout test checks it): nothing here ships.
//!
//! - [`gate`]: an external server a test needs (a Kafka broker, an S3 server, a Python with
//!   DuckDB or grpcio), required (`RUNNEL_REQUIRE_*=1`, as `scripts/test.sh` sets) or skipped
//!   with a notice.
//! - [`process`]: a child process killed when dropped, and the address a runnel process logs
//!   when it listens.
//! - [`streams`]: the test streams' config, built rather than copied.
//! - [`tls`]: the test certificates (`e2e-tests/fixtures/tls`).
//! - [`random`]: a seeded PRNG (SplitMix64) and percentiles of a sorted sample.
#![warn(missing_docs)]

pub mod gate;
pub mod process;
pub mod random;
pub mod streams;
pub mod tls;
