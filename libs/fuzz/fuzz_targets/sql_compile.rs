//! The SQL front end (`runnel_engine::JobPlan::source_of` and `JobPlan::compile`) on arbitrary
//! text, against the input the stream-processor compiles a job of the fuzz stream against:
//! its declared fields, `_offset` and `_ingest_time` (`libs/jobs/src/job.rs`).
//!
//! Besides "no panic" (nor a stack overflow): a job that compiles names its source and the
//! stream's event time, keeps within the default `JobLimits` (positive intervals, at most
//! `max-windows-per-event` windows per event), and gives a result schema with the engine's
//! columns.
#![no_main]

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{Schema, SchemaRef};
use libfuzzer_sys::fuzz_target;
use runnel_engine::{JobLimits, JobPlan, KEY_COLUMN, WINDOW_START_COLUMN, WindowSpec};
use runnel_events::{INGEST_TIME_COLUMN, OFFSET_COLUMN, StreamSchema};
use runnel_fuzz::stream_config;

static INPUT: LazyLock<SchemaRef> = LazyLock::new(|| {
    let stream = StreamSchema::new(&stream_config());
    let mut fields: Vec<_> = stream.declared().fields().iter().cloned().collect();
    let positioned = stream.with_position();
    for column in [OFFSET_COLUMN, INGEST_TIME_COLUMN] {
        let index = positioned.index_of(column).expect("positioned column");
        fields.push(Arc::new(positioned.field(index).clone()));
    }
    Arc::new(Schema::new(fields))
});

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let source = JobPlan::source_of(sql);
    let limits = JobLimits::default();
    let Ok(plan) = JobPlan::compile(sql, Arc::clone(&INPUT), "event_time", &limits) else {
        return;
    };
    let (_stream, time_column) = source.expect("a job that compiles has a source");
    assert_eq!(time_column, "event_time");
    assert_eq!(plan.event_time(), "event_time");
    let intervals = match plan.window() {
        WindowSpec::Tumble { size_ms } => vec![size_ms],
        WindowSpec::Hop { slide_ms, size_ms } => vec![slide_ms, size_ms],
        WindowSpec::Session { gap_ms } => vec![gap_ms],
    };
    for interval_ms in intervals {
        assert!(
            0 < interval_ms && interval_ms <= limits.max_window_interval_ms,
            "a window interval of {interval_ms} ms compiled"
        );
    }
    assert!(plan.window().windows_per_event() <= limits.max_windows_per_event as usize);
    let result = plan.result_schema();
    assert!(result.index_of(KEY_COLUMN).is_ok());
    assert!(result.index_of(WINDOW_START_COLUMN).is_ok());
    let _ = plan.groups_by_column("user_id");
});
