//! What the fuzz targets (`fuzz_targets/*.rs`) share: the stream they validate, decode and
//! compile jobs against, a fixed clock, a runtime for the async Parquet reader, and an
//! allocator that turns an oversized allocation into a crash.
//!
//! Built only by `cargo fuzz` (see `scripts/fuzz.sh`); the targets assert that no input
//! panics, aborts or asks for unbounded memory, plus a cheap invariant each.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Once};

use runnel_config::StreamConfig;

/// The largest single allocation a target may make, unless it sets another with
/// [`set_max_allocation_bytes`]. Every input is small (libFuzzer's `-max_len` follows the
/// largest seed, a few KiB), so a request beyond this is a size read from the input and
/// believed: it fails, and Rust aborts with "memory allocation of N bytes failed", which
/// libFuzzer reports as a crash. (libFuzzer's own `-malloc_limit_mb` needs a sanitizer's
/// allocator; the targets are built without one. Memory actually used is bounded by
/// `-rss_limit_mb`.)
pub const MAX_ALLOCATION_BYTES: usize = 256 << 20;

static ALLOCATION_LIMIT: AtomicUsize = AtomicUsize::new(MAX_ALLOCATION_BYTES);

/// Sets the largest single allocation this process may make, for a target whose
/// dependencies reserve sizes that the format bounds, but above [`MAX_ALLOCATION_BYTES`].
pub fn set_max_allocation_bytes(limit: usize) {
    ALLOCATION_LIMIT.store(limit, Ordering::Relaxed);
}

fn over_limit(size: usize) -> bool {
    size > ALLOCATION_LIMIT.load(Ordering::Relaxed)
}

/// The system allocator, refusing any one allocation over the limit.
struct BoundedAllocator;

// Safety: every call is forwarded to `System` unchanged, or refused with a null pointer,
// which `GlobalAlloc` allows.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if over_limit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if over_limit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if over_limit(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// The clock the validator measures event-time bounds from: 2026-11-21T12:00:00Z, two
/// hours after the seed events.
pub const NOW_MILLIS: i64 = 1_795_262_400_000;

/// The stream every target uses: `clicks` as `config/runnel.toml` declares it, plus a
/// nullable field of each remaining type, so that every field type is exercised.
pub fn stream_config() -> StreamConfig {
    let stream = serde_json::json!({
        "name": "clicks",
        "partitions": 4,
        "key": "user_id",
        "event-time": "event_time",
        "schema": [
            { "name": "event_time", "type": "timestamp" },
            { "name": "user_id", "type": "string" },
            { "name": "page", "type": "string" },
            { "name": "country", "type": "string" },
            { "name": "duration_ms", "type": "int64" },
            { "name": "referrer", "type": "string", "nullable": true },
            { "name": "score", "type": "float64", "nullable": true },
            { "name": "bot", "type": "bool", "nullable": true },
        ],
    });
    #[allow(clippy::expect_used)]
    serde_json::from_value(stream).expect("the fuzz stream is a valid stream config")
}

/// One single-threaded runtime per process for the targets that read through async code.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("build a current-thread runtime")
});

/// Runs `future` to completion on the targets' runtime.
pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.block_on(future)
}

thread_local! {
    /// The message and location of the last panic on this thread.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `f`, which may call code that catches panics on purpose (the history reader turns a
/// panic of the Parquet decoder into an error): a panic caught inside `f` is not a crash,
/// while one that escapes `f` still is, with its message and location printed.
///
/// libfuzzer-sys's panic hook aborts at any panic, caught or not; this replaces it with one
/// that only remembers the panic.
pub fn allowing_caught_panics(f: impl FnOnce()) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let message = info.to_string();
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(message));
        }));
    });
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
        if let Some(message) = LAST_PANIC.with(|last| last.borrow_mut().take()) {
            eprintln!("thread {message}");
        }
        std::panic::resume_unwind(panic);
    }
}
