//! The engine's integration tests, one binary: golden cases (`tests/golden/<case>/`).

mod golden;
