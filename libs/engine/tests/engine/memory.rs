//! Recompute in a bounded memory pool: a session job over more events than the pool holds
//! spills and gives the same results as without a pool.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use runnel_engine::{
    JobLimits, JobPlan, recompute, recompute_config, recompute_context, recompute_runtime,
};

use crate::support::render;

const SESSION_JOB: &str = "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS total, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean
FROM SESSION(s, ts, INTERVAL '3' SECOND) GROUP BY k, window_start, window_end";

/// Smaller than what the recompute sorts: 400,000 events of about 40 bytes each. (At 8 MiB
/// a merge of spilled runs, which cannot spill, once found the pool taken by the others.)
const SMALL_POOL: usize = 12 << 20;

/// Batches small enough that a sort's share of [`SMALL_POOL`] holds a few.
fn config() -> datafusion::prelude::SessionConfig {
    recompute_config()
        .with_batch_size(1_024)
        .with_target_partitions(2)
}

/// 400,000 events of 5,000 keys over about 20 minutes, so that sessions both merge and end.
fn events() -> RecordBatch {
    let n = 400_000i64;
    let mut state = 7u64;
    let mut next = |bound: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % bound
    };
    let (mut times, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        times.push(i * 3 + next(2_000) as i64);
        keys.push(format!("key-{:05}", next(5_000)));
        values.push(next(1_000) as i64 - 100);
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(times)),
            Arc::new(StringArray::from(keys)),
            Arc::new(Int64Array::from(values)),
        ],
    )
    .expect("events")
}

async fn recomputed(context: SessionContext, events: &RecordBatch) -> Result<String, String> {
    let plan = JobPlan::compile(SESSION_JOB, events.schema(), "ts", &JobLimits::default())
        .expect("job compiles");
    context
        .register_batch("history", events.clone())
        .expect("register");
    let results = recompute(&plan, &context, "history")
        .await
        .map_err(|error| error.to_string())?;
    let mut text = String::new();
    render(&results, "result", &mut text);
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_recompute_in_a_small_pool_spills_and_equals_one_without() {
    let events = events();
    let unpooled = recomputed(SessionContext::new_with_config(config()), &events)
        .await
        .expect("recompute without a pool");
    assert!(
        unpooled.lines().count() > 5_000,
        "sessions end and start again"
    );

    // The pool binds: without a disk to spill to, the same pool is too small.
    let no_disk = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(SMALL_POOL)))
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()
        .expect("runtime");
    let refused = recomputed(recompute_context(config(), no_disk), &events)
        .await
        .expect_err("the pool is smaller than the recompute needs");
    assert!(refused.contains("Resources exhausted"), "{refused}");

    let runtime = recompute_runtime(SMALL_POOL).expect("runtime");
    let pooled = recomputed(recompute_context(config(), runtime), &events)
        .await
        .expect("recompute in the small pool");
    assert!(
        pooled == unpooled,
        "the pooled recompute gave other results"
    );
}
