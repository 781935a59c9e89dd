//! The log's integration tests: one conformance suite run against every backend, and the
//! embedded backend's crash tests. One test binary for the crate.
//!
//! The Kafka half needs a Kafka-protocol broker at `KAFKA_BOOTSTRAP`. Without it the Kafka
//! tests print a notice and pass, unless `RUNNEL_REQUIRE_KAFKA=1` (set by `scripts/test.sh`
//! and so in CI), where a missing broker fails them. The TLS tests (`tls`) need the same
//! broker's TLS listener at `KAFKA_TLS_BOOTSTRAP` and its CA at `KAFKA_TLS_CA`, likewise.

mod cluster;
mod conformance;
mod embedded_crash;
mod embedded_repair;
mod embedded_shared;
mod fixtures;
mod group;
mod tls;
mod transactions;
