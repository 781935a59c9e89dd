//! The `runnel` crate's library: what the CLI and the benchmarks share, the
//! [`supervisor`] that runs a chosen set of services in one process.
#![warn(missing_docs)]

pub mod supervisor;
