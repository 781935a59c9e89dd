//! Whole-platform tests live in `tests/`: runnel's services as separate OS processes on
//! loopback, driven through their public APIs (`tests/e2e`), and the README's commands run as
//! written (`tests/newcomer`). This library holds what both use.

use std::path::{Path, PathBuf};

/// The `runnel` binary `cargo test --workspace` built beside the running test.
///
/// # Panics
///
/// When it is missing, saying how to build it.
pub fn runnel_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("runnel"))
        .expect("target folder");
    assert!(
        binary.try_exists().unwrap_or(false),
        "{} is missing: build it first (`cargo build -p runnel`, or run `cargo test --workspace`)",
        binary.display()
    );
    binary
}
