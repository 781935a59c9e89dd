//! Integration tests of the history: the archiver, the hybrid source, and the files read by
//! real second readers (DuckDB) and written to a real S3-compatible server (moto).
//!
//! Every test runs on an embedded log in a temporary folder. DuckDB and S3 tests need
//! `RUNNEL_PYTHON` (a Python with `duckdb`) and `RUNNEL_S3_ENDPOINT`/`RUNNEL_S3_BUCKET`;
//! `scripts/test.sh` provides both. Without them the tests say so and pass, unless
//! `RUNNEL_REQUIRE_DUCKDB=1` / `RUNNEL_REQUIRE_S3=1`, as CI sets, which makes them fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod archiver;
mod corrupt;
mod external;
mod hybrid;
mod metrics;
mod support;
