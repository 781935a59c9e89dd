//! Whole-platform tests live in `tests/e2e/`: runnel's services as separate OS processes on
//! loopback, driven through their public APIs. This library is empty.
