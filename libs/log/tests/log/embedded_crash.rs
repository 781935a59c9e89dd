//! Crash tests of the embedded backend (being written).
