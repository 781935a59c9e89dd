//! The engine's integration tests, one binary: golden cases (`tests/golden/<case>/`) and
//! property tests over random streams, and recompute in a bounded memory pool.

mod golden;
mod joins;
mod memory;
mod properties;
mod support;
mod window_joins;
