//! The engine's integration tests, one binary: golden cases (`tests/golden/<case>/`) and
//! property tests over random streams.

mod golden;
mod properties;
mod support;
