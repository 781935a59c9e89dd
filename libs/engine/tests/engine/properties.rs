//! Property tests over random streams: batching does not change results, nor does sharding
//! the keys over operators, snapshots restore exactly, output is deterministic, and with no late events the live results equal a plain
//! DataFusion `GROUP BY date_bin(...)` over the same events, and the live sessions the plain
//! rule "a new session starts when the next event of the key is more than the gap later".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType, UInt32Type,
};
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use runnel_engine::{JobPlan, OperatorOptions, OperatorOutput, ShardedOperator, WindowOperator};

use crate::support::render;

const TUMBLE_JOB: &str = "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS total, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean
FROM TUMBLE(s, ts, INTERVAL '10' SECOND) GROUP BY k, window_start, window_end";

const HOP_JOB: &str = "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS total
FROM HOP(s, ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND) GROUP BY k, window_start, window_end";

const SESSION_JOB: &str = "SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS total, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean
FROM SESSION(s, ts, INTERVAL '3' SECOND) GROUP BY k, window_start, window_end";

/// Grouped by two columns: DataFusion's multi-column group values (see `groups.rs`'s
/// `emit_all`), where one column had a single key table.
const TWO_KEYS_JOB: &str =
    "SELECT k, v % 3 AS r, window_start, window_end, COUNT(*) AS n, SUM(v) AS total
FROM TUMBLE(s, ts, INTERVAL '10' SECOND) GROUP BY k, v % 3, window_start, window_end";

/// Largest disorder the generator produces: an event is at most this far behind the largest
/// event time before it.
const MAX_DISORDER_MS: i64 = 4_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, false),
        Field::new("k", DataType::Utf8, false),
        Field::new("v", DataType::Int64, false),
    ]))
}

#[derive(Debug, Clone)]
struct Event {
    ts: i64,
    key: String,
    value: i64,
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (0i64..2_500, 0i64..=MAX_DISORDER_MS, 0u8..5, -50i64..100),
        1..300,
    )
    .prop_map(|steps| {
        let mut clock = 100_000;
        steps
            .into_iter()
            .map(|(step, disorder, key, value)| {
                clock += step;
                Event {
                    ts: clock - disorder,
                    key: format!("k{key}"),
                    value,
                }
            })
            .collect()
    })
}

/// [`events`] on a clock of whole seconds, so that consecutive events of a key are often
/// exactly the session gap (3 s) apart, or one second more or less. Flooring adds up to
/// 999 ms of disorder.
fn whole_second_events() -> impl Strategy<Value = Vec<Event>> {
    events().prop_map(|events| {
        events
            .into_iter()
            .map(|event| Event {
                ts: event.ts / 1000 * 1000,
                ..event
            })
            .collect()
    })
}

fn batch_of(events: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(
                events.iter().map(|event| event.ts).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                events
                    .iter()
                    .map(|event| event.key.as_str())
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                events.iter().map(|event| event.value).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("event batch")
}

/// Cuts `events` at the (sorted, deduplicated) `cuts`.
fn batches(events: &[Event], cuts: &[usize]) -> Vec<RecordBatch> {
    let mut bounds: Vec<usize> = cuts.iter().map(|cut| cut % (events.len() + 1)).collect();
    bounds.push(0);
    bounds.push(events.len());
    bounds.sort_unstable();
    bounds.dedup();
    bounds
        .windows(2)
        .map(|pair| batch_of(&events[pair[0]..pair[1]]))
        .collect()
}

fn plan(sql: &str) -> Arc<JobPlan> {
    Arc::new(
        JobPlan::compile(sql, schema(), "ts", &runnel_engine::JobLimits::default())
            .expect("job compiles"),
    )
}

/// Runs the batches; before each batch whose index is in `restore_before`, the operator is
/// snapshotted and replaced by one restored from the snapshot.
fn run(
    plan: &Arc<JobPlan>,
    options: OperatorOptions,
    batches: &[RecordBatch],
    restore_before: &[usize],
) -> OperatorOutput {
    let mut operator = WindowOperator::new(Arc::clone(plan), options).expect("operator");
    let mut output = OperatorOutput::default();
    for (idx, batch) in batches.iter().enumerate() {
        if restore_before.contains(&idx) {
            let bytes = operator.snapshot().expect("snapshot");
            operator = WindowOperator::restore(Arc::clone(plan), options, &bytes).expect("restore");
        }
        output.append(operator.process(0, batch, idx as i64).expect("process"));
    }
    output.append(operator.finish().expect("finish"));
    output
}

/// The tumbling (0), hopping (1) or session (other) job, with `options` (no early results
/// for sessions, which refuse them).
fn window_job(window: u8, options: OperatorOptions) -> (Arc<JobPlan>, OperatorOptions) {
    match window {
        0 => (plan(TUMBLE_JOB), options),
        1 => (plan(HOP_JOB), options),
        3 => (plan(TWO_KEYS_JOB), options),
        _ => (
            plan(SESSION_JOB),
            OperatorOptions {
                early_emit_interval: None,
                ..options
            },
        ),
    }
}

/// Runs the batches through `shards` operator shards.
fn run_sharded(
    plan: &Arc<JobPlan>,
    options: OperatorOptions,
    batches: &[RecordBatch],
    shards: usize,
) -> OperatorOutput {
    let mut operator = ShardedOperator::new(Arc::clone(plan), options, shards).expect("operator");
    let mut output = OperatorOutput::default();
    for (idx, batch) in batches.iter().enumerate() {
        output.append(operator.process(0, batch, idx as i64).expect("process"));
    }
    output.append(operator.finish().expect("finish"));
    output
}

/// Fails with the first line where two renderings differ, not the whole of both.
fn same_output(expected: &str, actual: &str) -> Result<(), TestCaseError> {
    if expected == actual {
        return Ok(());
    }
    let (expected_lines, actual_lines): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), actual.lines().collect());
    let line = expected_lines
        .iter()
        .zip(&actual_lines)
        .position(|(a, b)| a != b)
        .unwrap_or(expected_lines.len().min(actual_lines.len()));
    Err(TestCaseError::fail(format!(
        "outputs differ at line {} of {}/{}:\n  expected: {}\n  actual:   {}",
        line + 1,
        expected_lines.len(),
        actual_lines.len(),
        expected_lines.get(line).unwrap_or(&"<end>"),
        actual_lines.get(line).unwrap_or(&"<end>")
    )))
}

fn rendered(output: &OperatorOutput) -> String {
    let mut text = String::new();
    render(&output.results, "result", &mut text);
    render(&output.late_events, "late", &mut text);
    text
}

fn options(out_of_orderness_ms: u64, lateness_ms: u64, early_ms: Option<u64>) -> OperatorOptions {
    OperatorOptions {
        partitions: 1,
        max_out_of_orderness: Duration::from_millis(out_of_orderness_ms),
        allowed_lateness: Duration::from_millis(lateness_ms),
        idle_timeout: None,
        early_emit_interval: early_ms.map(Duration::from_millis),
    }
}

fn any_options() -> impl Strategy<Value = OperatorOptions> {
    (
        prop::sample::select(vec![0u64, 1_000, 3_000]),
        prop::sample::select(vec![0u64, 5_000]),
        prop::option::of(prop::sample::select(vec![2_000u64, 5_000])),
    )
        .prop_map(|(out_of_orderness, lateness, early)| options(out_of_orderness, lateness, early))
}

/// Final results keyed by (key, window start): the latest version of each.
type Finals = BTreeMap<(String, i64), Vec<String>>;

fn finals(output: &OperatorOutput) -> Finals {
    let mut latest: BTreeMap<(String, i64), (u32, Vec<String>)> = BTreeMap::new();
    for batch in &output.results {
        let keys = batch.column_by_name("k").expect("k").as_string::<i32>();
        let starts = batch
            .column_by_name("window_start")
            .expect("window_start")
            .as_primitive::<TimestampMillisecondType>();
        let versions = batch
            .column_by_name("_version")
            .expect("_version")
            .as_primitive::<UInt32Type>();
        for row in 0..batch.num_rows() {
            let values = ["n", "total", "lo", "hi", "mean"]
                .iter()
                .filter_map(|name| batch.column_by_name(name))
                .map(|column| {
                    arrow::util::display::array_value_to_string(column, row).expect("display")
                })
                .collect();
            let key = (keys.value(row).to_string(), starts.value(row));
            let version = versions.value(row);
            let entry = latest.entry(key).or_insert((0, Vec::new()));
            assert!(
                version > entry.0,
                "versions of one key and window only grow"
            );
            *entry = (version, values);
        }
    }
    latest
        .into_iter()
        .map(|(key, (_, values))| (key, values))
        .collect()
}

/// The job run by `runnel_engine::recompute` over all events registered as a table.
fn recomputed(plan: &JobPlan, events: &[Event]) -> OperatorOutput {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let results = runtime.block_on(async {
        let context = SessionContext::new();
        context
            .register_batch("history", batch_of(events))
            .expect("register");
        runnel_engine::recompute(plan, &context, "history")
            .await
            .expect("recompute")
    });
    OperatorOutput {
        results,
        ..OperatorOutput::default()
    }
}

/// `SESSION_JOB`'s sessions by the plain rule, independent of the engine: per key, in event
/// time order, a new session starts when the next event is more than the gap (3 s) later.
/// The values are COUNT, SUM, MIN and MAX as `finals` renders them (AVG left out).
fn reference_sessions(events: &[Event]) -> Finals {
    const GAP_MS: i64 = 3_000;
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for event in events {
        by_key.entry(event.key.as_str()).or_default().push(event);
    }
    let mut sessions = Finals::new();
    for (key, mut events) in by_key {
        events.sort_by_key(|event| event.ts);
        let mut current: Vec<&Event> = Vec::new();
        let mut flush = |current: &mut Vec<&Event>| {
            if let Some(first) = current.first() {
                let values: Vec<i64> = current.iter().map(|event| event.value).collect();
                sessions.insert(
                    (key.to_string(), first.ts),
                    vec![
                        values.len().to_string(),
                        values.iter().sum::<i64>().to_string(),
                        values.iter().min().expect("one value").to_string(),
                        values.iter().max().expect("one value").to_string(),
                    ],
                );
            }
            current.clear();
        };
        for event in events {
            if current
                .last()
                .is_some_and(|last| event.ts - last.ts > GAP_MS)
            {
                flush(&mut current);
            }
            current.push(event);
        }
        flush(&mut current);
    }
    sessions
}

/// The same aggregation as `TUMBLE_JOB`, by DataFusion over all events at once.
fn datafusion_date_bin(events: &[Event]) -> Finals {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let context = SessionContext::new();
        context.register_batch("s", batch_of(events)).expect("register");
        let frame = context
            .sql(
                "SELECT k, arrow_cast(arrow_cast(date_bin(INTERVAL '10 seconds', to_timestamp_millis(ts), TIMESTAMP '1970-01-01T00:00:00'), 'Timestamp(Millisecond, None)'), 'Int64') AS window_start,
                        COUNT(*) AS n, SUM(v) AS total, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean
                 FROM s GROUP BY 1, 2",
            )
            .await
            .expect("plan");
        let mut finals = Finals::new();
        for batch in frame.collect().await.expect("run") {
            let keys = batch.column(0).as_string::<i32>();
            let starts = batch.column(1).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                let values = (2..7)
                    .map(|column| arrow::util::display::array_value_to_string(batch.column(column), row).expect("display"))
                    .collect();
                finals.insert((keys.value(row).to_string(), starts.value(row)), values);
            }
        }
        finals
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn batching_does_not_change_the_output(
        events in events(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        options in any_options(),
        hop in any::<bool>(),
    ) {
        let plan = plan(if hop { HOP_JOB } else { TUMBLE_JOB });
        let whole = rendered(&run(&plan, options, &batches(&events, &[]), &[]));
        let cut = rendered(&run(&plan, options, &batches(&events, &cuts), &[]));
        same_output(&whole, &cut)?;
    }

    #[test]
    fn batching_does_not_change_session_output(
        events in events(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        options in any_options(),
    ) {
        let options = OperatorOptions { early_emit_interval: None, ..options };
        let plan = plan(SESSION_JOB);
        let whole = rendered(&run(&plan, options, &batches(&events, &[]), &[]));
        let cut = rendered(&run(&plan, options, &batches(&events, &cuts), &[]));
        same_output(&whole, &cut)?;
    }

    #[test]
    fn sharding_does_not_change_the_output(
        events in events(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        options in any_options(),
        window in 0u8..3,
    ) {
        let (plan, options) = window_job(window, options);
        let cut = batches(&events, &cuts);
        let one = run_sharded(&plan, options, &batches(&events, &[]), 1);
        // Byte for byte, for any number of shards and any batching.
        for shards in [2, 4] {
            same_output(&rendered(&one), &rendered(&run_sharded(&plan, options, &cut, shards)))?;
        }
        // The same rows as one operator: the late events in the same order, the results
        // ordered differently only within one firing.
        let plain = run(&plan, options, &cut, &[]);
        let mut late = String::new();
        render(&plain.late_events, "late", &mut late);
        let mut sharded_late = String::new();
        render(&one.late_events, "late", &mut sharded_late);
        same_output(&late, &sharded_late)?;
        let sorted_lines = |output: &OperatorOutput| {
            let mut text = String::new();
            render(&output.results, "result", &mut text);
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.sort();
            lines.join("\n")
        };
        same_output(&sorted_lines(&plain), &sorted_lines(&one))?;
        prop_assert_eq!(finals(&plain), finals(&one));
    }

    #[test]
    fn without_late_events_live_sessions_follow_the_plain_rule_and_equal_recompute(
        events in whole_second_events(),
    ) {
        let plan = plan(SESSION_JOB);
        // The watermark trails by the largest disorder (flooring adds up to 999 ms).
        let options = options(MAX_DISORDER_MS as u64 + 1_000, 0, None);
        let live = run(&plan, options, &batches(&events, &[5, 60]), &[]);
        prop_assert!(live.late_events.is_empty());
        let live_finals = finals(&live);
        let without_mean: Finals = live_finals
            .iter()
            .map(|(key, values)| (key.clone(), values[..4].to_vec()))
            .collect();
        prop_assert_eq!(without_mean, reference_sessions(&events));
        prop_assert_eq!(live_finals, finals(&recomputed(&plan, &events)));
    }

    #[test]
    fn without_late_events_live_sessions_equal_recompute(events in events()) {
        let plan = plan(SESSION_JOB);
        let live = run(&plan, options(MAX_DISORDER_MS as u64, 0, None), &batches(&events, &[11, 40]), &[]);
        prop_assert!(live.late_events.is_empty());
        prop_assert_eq!(finals(&live), finals(&recomputed(&plan, &events)));
    }

    #[test]
    fn a_restored_snapshot_continues_like_the_original(
        events in events(),
        cuts in prop::collection::vec(any::<usize>(), 1..12),
        restore_at in prop::collection::vec(0usize..12, 1..4),
        options in any_options(),
        window in 0u8..4,
    ) {
        let (plan, options) = window_job(window, options);
        let batches = batches(&events, &cuts);
        let unbroken = rendered(&run(&plan, options, &batches, &[]));
        let restored = rendered(&run(&plan, options, &batches, &restore_at));
        same_output(&unbroken, &restored)?;
    }

    #[test]
    fn without_late_events_live_equals_a_datafusion_date_bin_group_by(events in events()) {
        // The watermark trails by the largest disorder, so no event is ever late.
        let options = options(MAX_DISORDER_MS as u64, 0, None);
        let output = run(&plan(TUMBLE_JOB), options, &batches(&events, &[7, 50, 51, 200]), &[]);
        prop_assert!(output.late_events.is_empty());
        prop_assert_eq!(finals(&output), datafusion_date_bin(&events));
    }

    #[test]
    fn without_late_events_live_equals_recompute(events in events(), hop in any::<bool>()) {
        let plan = plan(if hop { HOP_JOB } else { TUMBLE_JOB });
        let options = options(MAX_DISORDER_MS as u64, 0, None);
        let live = run(&plan, options, &batches(&events, &[3, 90]), &[]);
        prop_assert!(live.late_events.is_empty());
        let batch = recomputed(&plan, &events);
        prop_assert_eq!(finals(&live), finals(&batch));
    }
}

#[test]
fn the_same_input_gives_byte_identical_output() {
    let events: Vec<Event> = (0..500)
        .map(|idx| Event {
            ts: 100_000 + idx * 97 - (idx % 7) * 1_500,
            key: format!("k{}", idx % 13),
            value: idx % 31,
        })
        .collect();
    let plan = plan(TUMBLE_JOB);
    let options = options(1_000, 5_000, Some(2_000));
    let ipc = |output: &OperatorOutput| {
        let mut writer =
            arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &plan.result_schema())
                .expect("writer");
        for batch in &output.results {
            writer.write(batch).expect("write");
        }
        writer.into_inner().expect("bytes")
    };
    let first = run(&plan, options, &batches(&events, &[100, 250]), &[]);
    let second = run(&plan, options, &batches(&events, &[100, 250]), &[]);
    assert!(
        !first.results.is_empty() && !first.late_events.is_empty(),
        "the input exercises late events"
    );
    assert_eq!(ipc(&first), ipc(&second));
    assert_eq!(rendered(&first), rendered(&second));
}

#[test]
fn snapshots_are_refused_by_another_job() {
    let mut operator =
        WindowOperator::new(plan(TUMBLE_JOB), options(0, 0, None)).expect("operator");
    let output = operator
        .process(
            0,
            &batch_of(&[Event {
                ts: 1,
                key: "a".into(),
                value: 1,
            }]),
            0,
        )
        .expect("process");
    assert!(output.results.is_empty());
    let bytes = operator.snapshot().expect("snapshot");
    let other = WindowOperator::restore(plan(HOP_JOB), options(0, 0, None), &bytes);
    assert!(matches!(
        other,
        Err(runnel_engine::EngineError::Snapshot(_))
    ));
    let other_options = WindowOperator::restore(plan(TUMBLE_JOB), options(0, 1_000, None), &bytes);
    assert!(matches!(
        other_options,
        Err(runnel_engine::EngineError::Snapshot(_))
    ));
    let garbage = WindowOperator::restore(plan(TUMBLE_JOB), options(0, 0, None), b"not a snapshot");
    assert!(matches!(
        garbage,
        Err(runnel_engine::EngineError::Snapshot(_))
    ));
}

/// An input's word that it is at its end, and the arrival time it vouches up to, survive a
/// snapshot: restored, the input turns idle while the arrival clock is within its word, and
/// not once the clock has passed it.
#[test]
fn an_inputs_end_and_its_time_survive_a_snapshot() {
    let options = OperatorOptions {
        partitions: 2,
        idle_timeout: Some(Duration::from_secs(10)),
        ..options(0, 0, None)
    };
    let event = |ts: i64| {
        batch_of(&[Event {
            ts,
            key: "a".into(),
            value: 1,
        }])
    };
    // Input 1 vouches up to `as_of`; input 0's event arriving at 11,000 (input 1 silent for
    // 11 s) fires [0, 10,000) only if input 1 is idle then.
    let fires = |as_of: i64| {
        let mut operator = WindowOperator::new(plan(TUMBLE_JOB), options).expect("operator");
        operator.process(0, &event(1_000), 0).expect("process");
        operator.input_at_end(1, as_of).expect("input at end");
        let bytes = operator.snapshot().expect("snapshot");
        let mut restored =
            WindowOperator::restore(plan(TUMBLE_JOB), options, &bytes).expect("restore");
        let output = restored
            .process(0, &event(14_000), 11_000)
            .expect("process");
        !output.results.is_empty()
    };
    assert!(fires(20_000), "vouched up to 20,000: idle at 11,000");
    assert!(
        !fires(5_000),
        "vouched up to 5,000 only: not idle at 11,000"
    );
}

/// A session job with `COUNT(DISTINCT)`, whose DataFusion accumulator learns its state's
/// columns from its first group, snapshots with no session open: fresh, after its sessions
/// fired, and restored from such a snapshot (the compose test's stream-processor failed
/// there, on every restart, after a SIGKILL).
#[test]
fn a_session_job_with_count_distinct_snapshots_with_no_session_open() {
    let plan = plan(
        "SELECT k, window_start, window_end, COUNT(DISTINCT v) AS values_seen
         FROM SESSION(s, ts, INTERVAL '3' SECOND) GROUP BY k, window_start, window_end",
    );
    let options = options(0, 0, None);
    let restored = |operator: &mut WindowOperator| {
        let bytes = operator.snapshot().expect("snapshot");
        WindowOperator::restore(Arc::clone(&plan), options, &bytes).expect("restore")
    };
    let mut operator = WindowOperator::new(Arc::clone(&plan), options).expect("operator");
    let mut operator = restored(&mut operator);
    let event = |ts: i64, key: &str, value: i64| Event {
        ts,
        key: key.to_string(),
        value,
    };
    let mut output = OperatorOutput::default();
    output.append(
        operator
            .process(
                0,
                &batch_of(&[event(1_000, "a", 1), event(1_500, "a", 2)]),
                0,
            )
            .expect("process"),
    );
    let mut operator = restored(&mut operator);
    // Far later: the session of `a` fires and closes; none is open at the next snapshot.
    output.append(
        operator
            .process(0, &batch_of(&[event(100_000, "b", 1)]), 1)
            .expect("process"),
    );
    output.append(operator.finish().expect("finish"));
    let mut operator = restored(&mut operator);
    let mut operator = restored(&mut operator);
    output.append(operator.finish().expect("finish"));
    let rendered = rendered(&output);
    assert!(
        rendered.contains(r#""k":"a""#) && rendered.contains(r#""values_seen":2"#),
        "{rendered}"
    );
}
