//! Joins of two windowed aggregates on their windows (Nexmark q8 as written): what the SQL
//! may say, hand-made cases at the edges (a window's bounds, a side that is slower, a late
//! update within the allowed lateness and one past it, a null key, `LEFT`), and one job three
//! ways (live through two window operators and `WindowJoin`, recompute through DataFusion,
//! and a plain reference written here) over random streams, cuts and interleavings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Int64Type, TimestampMillisecondType};
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use runnel_engine::{
    EngineError, JobLimits, OperatorOptions, WindowJoin, WindowJoinPlan, WindowOperator,
};

use crate::joins::{
    DISORDER_MS, Row, cut, orders_batch, orders_schema, payments_batch, payments_schema,
    stream_rows,
};

const WINDOW_MS: i64 = 10_000;

/// Per order id and 10 s window: the orders and the first region, joined with the payments
/// and their sum.
const JOB: &str = "SELECT o.oid, o.window_start, o.orders, o.region, p.payments, p.paid
FROM (SELECT oid, window_start, window_end, COUNT(*) AS orders, MIN(region) AS region
      FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) GROUP BY oid, window_start, window_end) AS o
JOIN (SELECT oid, window_start, window_end, COUNT(*) AS payments, SUM(paid) AS paid
      FROM TUMBLE(payments, ts, INTERVAL '10' SECOND) GROUP BY oid, window_start, window_end) AS p
ON o.oid = p.oid AND o.window_start = p.window_start";

fn compile(sql: &str) -> Result<WindowJoinPlan, EngineError> {
    WindowJoinPlan::compile(
        sql,
        [(orders_schema(), "ts"), (payments_schema(), "ts")],
        &JobLimits::default(),
    )
}

fn job(left: bool) -> Arc<WindowJoinPlan> {
    hop_job(left, false)
}

/// [`JOB`], `LEFT` or not, with 10 s windows every 5 s where `hop`.
fn hop_job(left: bool, hop: bool) -> Arc<WindowJoinPlan> {
    let mut sql = if left {
        JOB.replace("\nJOIN", "\nLEFT JOIN")
    } else {
        JOB.to_string()
    };
    if hop {
        for stream in ["orders", "payments"] {
            sql = sql.replace(
                &format!("TUMBLE({stream}, ts, INTERVAL '10' SECOND)"),
                &format!("HOP({stream}, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND)"),
            );
        }
        assert!(!sql.contains("TUMBLE"));
    }
    Arc::new(compile(&sql).expect("compiles"))
}

fn refused(sql: &str) -> String {
    compile(sql).expect_err("the job is refused").to_string()
}

#[test]
fn a_window_join_names_its_streams_and_its_columns() {
    let streams = WindowJoinPlan::streams_of(JOB)
        .expect("parses")
        .expect("a window join");
    assert_eq!(
        streams,
        [
            ("orders".to_string(), "ts".to_string()),
            ("payments".to_string(), "ts".to_string())
        ]
    );
    assert_eq!(
        WindowJoinPlan::streams_of(
            "SELECT oid, window_start, COUNT(*) FROM TUMBLE(orders, ts, INTERVAL '1' SECOND) GROUP BY oid, window_start, window_end"
        )
        .expect("parses"),
        None
    );
    let plan = job(true);
    let schema = plan.result_schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "oid",
            "window_start",
            "orders",
            "region",
            "payments",
            "paid",
            "_key",
            "_window_start",
            "_version",
            "_final"
        ]
    );
    // A LEFT join's right columns may be null.
    assert!(schema.field(4).is_nullable());
    assert_eq!(plan.left().stream(), "orders");
    assert_eq!(plan.right().stream(), "payments");
}

#[test]
fn what_is_not_a_window_join_is_refused_where_it_is_written() {
    let no_window = JOB.replace(" AND o.window_start = p.window_start", "");
    let message = refused(&no_window);
    assert!(
        message.contains("line 6, column 4") && message.contains("o.window_start = p.window_start"),
        "{message}"
    );
    let session = JOB.replace(
        "TUMBLE(payments, ts, INTERVAL '10' SECOND)",
        "SESSION(payments, ts, INTERVAL '10' SECOND)",
    );
    assert!(
        refused(&session).contains("session windows"),
        "{}",
        refused(&session)
    );
    let other_size = JOB.replace(
        "TUMBLE(payments, ts, INTERVAL '10' SECOND)",
        "TUMBLE(payments, ts, INTERVAL '20' SECOND)",
    );
    assert!(
        refused(&other_size).contains("the same window"),
        "{}",
        refused(&other_size)
    );
    // The error in a side points into the job as written.
    let unknown = JOB.replace("SUM(paid)", "SUM(pay)");
    let message = refused(&unknown);
    assert!(message.contains("line 4"), "{message}");
    let expression = JOB.replace("p.paid\n", "p.paid + 1\n");
    assert!(
        refused(&expression).contains("by name"),
        "{}",
        refused(&expression)
    );
    let unknown_side = JOB.replace("p.payments", "q.payments");
    assert!(
        refused(&unknown_side).contains("`q` is neither side"),
        "{}",
        refused(&unknown_side)
    );
    let ambiguous = JOB.replace("o.orders", "oid AS o2");
    assert!(
        refused(&ambiguous).contains("ambiguous"),
        "{}",
        refused(&ambiguous)
    );
    let types = JOB.replace("o.oid = p.oid", "o.oid = p.paid");
    assert!(refused(&types).contains("one type"), "{}", refused(&types));
    let where_clause = format!("{JOB}\nWHERE o.orders > 1");
    assert!(
        refused(&where_clause).contains("no WHERE"),
        "{}",
        refused(&where_clause)
    );
    let right_join = JOB.replace("\nJOIN", "\nRIGHT JOIN");
    assert!(
        refused(&right_join).contains("LEFT JOIN"),
        "{}",
        refused(&right_join)
    );
}

/// What the live run gave: the joined results, and each side's late events.
struct Live {
    results: Vec<RecordBatch>,
    late: [usize; 2],
}

/// The job live: each side's batches through its own window operator, interleaved as
/// `order` says (true: the next orders batch), every result and watermark into the join.
fn live(
    plan: &Arc<WindowJoinPlan>,
    batches: [Vec<RecordBatch>; 2],
    order: &[bool],
    lateness: Duration,
) -> Live {
    live_restored(plan, batches, order, lateness, None)
}

/// [`live`]; with `restore_at`, both window operators and the join are snapshotted and
/// restored from their snapshots before that batch.
fn live_restored(
    plan: &Arc<WindowJoinPlan>,
    batches: [Vec<RecordBatch>; 2],
    order: &[bool],
    lateness: Duration,
    restore_at: Option<usize>,
) -> Live {
    let options = OperatorOptions {
        partitions: 1,
        max_out_of_orderness: Duration::from_millis(DISORDER_MS as u64),
        allowed_lateness: lateness,
        idle_timeout: None,
        early_emit_interval: None,
    };
    let mut operators = [
        WindowOperator::new(Arc::clone(plan.left()), options).expect("left operator"),
        WindowOperator::new(Arc::clone(plan.right()), options).expect("right operator"),
    ];
    let mut join = WindowJoin::new(Arc::clone(plan), lateness);
    let mut out = Live {
        results: Vec::new(),
        late: [0, 0],
    };
    let mut queues = batches.map(|batches| batches.into_iter());
    let mut steps = order.iter().copied().chain(std::iter::repeat(true));
    let mut arrival = 0;
    let mut step = |side: usize, batch: Option<RecordBatch>, out: &mut Live| {
        if restore_at.is_some_and(|at| at as i64 == arrival) {
            for (side, plan) in [plan.left(), plan.right()].into_iter().enumerate() {
                let bytes = operators[side].snapshot().expect("snapshot the windows");
                operators[side] = WindowOperator::restore(Arc::clone(plan), options, &bytes)
                    .expect("restore the windows");
            }
            let bytes = join.snapshot().expect("snapshot the join");
            join =
                WindowJoin::restore(Arc::clone(plan), lateness, &bytes).expect("restore the join");
        }
        arrival += 1;
        let (output, watermark) = match batch {
            Some(batch) => {
                let output = operators[side]
                    .process(0, &batch, arrival)
                    .expect("process");
                (output, operators[side].watermark())
            }
            None => (operators[side].finish().expect("finish"), i64::MAX),
        };
        out.late[side] += output
            .late_events
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>();
        join.results(side, &output.results).expect("results");
        out.results
            .extend(join.advance(side, watermark).expect("advance"));
    };
    loop {
        let wanted = usize::from(!steps.next().unwrap_or(true));
        // A side that is done gives its turn to the other.
        let side = if queues[wanted].len() > 0 {
            wanted
        } else {
            1 - wanted
        };
        let Some(batch) = queues[side].next() else {
            break;
        };
        step(side, Some(batch), &mut out);
    }
    step(0, None, &mut out);
    step(1, None, &mut out);
    assert_eq!(
        join.held_rows(),
        0,
        "the join holds nothing after both ends"
    );
    out
}

/// Joined rows by (window start, order id): (orders, region, payments, paid).
type Joined = BTreeMap<(i64, String), (i64, String, Option<i64>, Option<i64>)>;

fn joined(results: &[RecordBatch]) -> Joined {
    let mut rows = Joined::new();
    for batch in results {
        let column = |name: &str| Arc::clone(batch.column_by_name(name).expect(name));
        let (oid, start, orders, region, payments, paid) = (
            column("oid"),
            column("_window_start"),
            column("orders"),
            column("region"),
            column("payments"),
            column("paid"),
        );
        let (oid, start, orders, region, payments, paid) = (
            oid.as_string::<i32>(),
            start.as_primitive::<TimestampMillisecondType>(),
            orders.as_primitive::<Int64Type>(),
            region.as_string::<i32>(),
            payments.as_primitive::<Int64Type>(),
            paid.as_primitive::<Int64Type>(),
        );
        for row in 0..batch.num_rows() {
            let key = (start.value(row), oid.value(row).to_string());
            let value = (
                orders.value(row),
                region.value(row).to_string(),
                (!payments.is_null(row)).then(|| payments.value(row)),
                (!paid.is_null(row)).then(|| paid.value(row)),
            );
            assert!(
                rows.insert(key.clone(), value).is_none(),
                "{key:?} emitted twice"
            );
        }
    }
    rows
}

/// The plain rule: each side grouped by order id and window, then joined on both. Windows
/// are 10 s long, every 10 s, or every 5 s where `hop`.
fn reference(orders: &[Row], payments: &[Row], left: bool, hop: bool) -> Joined {
    let slide = if hop { WINDOW_MS / 2 } else { WINDOW_MS };
    // The starts of the windows `[start, start + 10 s)` that hold `ts`.
    let windows = |ts: i64| {
        let last = ts.div_euclid(slide) * slide;
        (0..WINDOW_MS / slide).map(move |nth| last - nth * slide)
    };
    let mut per_order: BTreeMap<(i64, String), (i64, String)> = BTreeMap::new();
    for (ts, oid, region) in orders {
        for start in windows(*ts) {
            let entry = per_order
                .entry((start, oid.clone()))
                .or_insert((0, format!("r{region}")));
            entry.0 += 1;
            entry.1 = entry.1.clone().min(format!("r{region}"));
        }
    }
    let mut per_payment: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    for (ts, oid, paid) in payments {
        for start in windows(*ts) {
            let entry = per_payment.entry((start, oid.clone())).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += paid;
        }
    }
    per_order
        .into_iter()
        .filter_map(|(key, (orders, region))| match per_payment.get(&key) {
            Some(&(payments, paid)) => Some((key, (orders, region, Some(payments), Some(paid)))),
            None if left => Some((key, (orders, region, None, None))),
            None => None,
        })
        .collect()
}

fn recomputed(plan: &WindowJoinPlan, orders: &[Row], payments: &[Row]) -> Vec<RecordBatch> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let context = SessionContext::new();
        context
            .register_batch("orders_history", orders_batch(orders))
            .expect("register orders");
        context
            .register_batch("payments_history", payments_batch(payments))
            .expect("register payments");
        runnel_engine::recompute_window_join(plan, &context, ["orders_history", "payments_history"])
            .await
            .expect("recompute")
    })
}

fn rendered(batches: &[RecordBatch]) -> String {
    let mut text = String::new();
    crate::support::render(batches, "result", &mut text);
    text
}

fn row(ts: i64, oid: &str, value: i64) -> Row {
    (ts, oid.to_string(), value)
}

/// One batch of side `side` through its operator into the join: the joined rows it lets
/// out, and how many of its events were late.
fn feed(
    join: &mut WindowJoin,
    operator: &mut WindowOperator,
    side: usize,
    batch: &RecordBatch,
) -> (Vec<RecordBatch>, usize) {
    let out = operator.process(0, batch, 0).expect("process");
    join.results(side, &out.results).expect("results");
    let late = out.late_events.iter().map(RecordBatch::num_rows).sum();
    (
        join.advance(side, operator.watermark()).expect("advance"),
        late,
    )
}

#[test]
fn a_window_is_joined_once_both_sides_are_past_its_end_and_lateness() {
    let plan = job(true);
    let lateness = Duration::from_secs(5);
    let options = OperatorOptions {
        partitions: 1,
        max_out_of_orderness: Duration::ZERO,
        allowed_lateness: lateness,
        idle_timeout: None,
        early_emit_interval: None,
    };
    let mut orders_op = WindowOperator::new(Arc::clone(plan.left()), options).expect("op");
    let mut payments_op = WindowOperator::new(Arc::clone(plan.right()), options).expect("op");
    let mut join = WindowJoin::new(Arc::clone(&plan), lateness);
    // Window [0 s, 10 s): o1 paid at 9.999 s (in it) and at 10 s (the next window's); o2
    // never pays in it (LEFT: nulls).
    feed(
        &mut join,
        &mut orders_op,
        0,
        &orders_batch(&[row(1_000, "o1", 1), row(2_000, "o2", 2)]),
    );
    feed(
        &mut join,
        &mut payments_op,
        1,
        &payments_batch(&[row(9_999, "o1", 4), row(10_000, "o1", 8)]),
    );
    // Both watermarks past the window's end: it has fired on both sides, but a late event
    // may still update it for 5 s, so nothing is joined yet.
    let (out, _) = feed(
        &mut join,
        &mut orders_op,
        0,
        &orders_batch(&[row(12_000, "o3", 1)]),
    );
    assert!(out.is_empty());
    // A late payment within the lateness updates the payments' window [0, 10 s).
    let (out, late) = feed(
        &mut join,
        &mut payments_op,
        1,
        &payments_batch(&[row(3_000, "o1", 16), row(14_000, "o3", 1)]),
    );
    assert_eq!((out.len(), late), (0, 0));
    // The orders reach 15 s (the window's end plus the lateness); the payments are at 14 s:
    // the join waits for the slower side.
    let (out, _) = feed(
        &mut join,
        &mut orders_op,
        0,
        &orders_batch(&[row(15_000, "o3", 1)]),
    );
    assert!(out.is_empty());
    let (out, late) = feed(
        &mut join,
        &mut payments_op,
        1,
        &payments_batch(&[row(15_000, "o9", 1), row(3_500, "o2", 32)]),
    );
    // The payment at 3.5 s came at watermark 15 s: too late, not counted anywhere.
    assert_eq!(late, 1);
    let rows = joined(&out);
    assert_eq!(
        rows,
        BTreeMap::from([
            (
                (0, "o1".to_string()),
                (1, "r1".to_string(), Some(2), Some(20))
            ),
            ((0, "o2".to_string()), (1, "r2".to_string(), None, None)),
        ])
    );
    let text = rendered(&out);
    assert!(text.contains(r#""_key":"[\"o1\",\"o1\"]""#), "{text}");
    assert!(text.contains(r#""_key":"[\"o2\",null]""#), "{text}");
    assert!(text.contains(r#""_version":1,"_final":true"#), "{text}");
    // The next window [10 s, 20 s) has not fired on either side: nothing of it is held.
    assert_eq!(join.held_rows(), 0);
    // The ends: o3's two orders meet its payment; the payments of o1 at 10 s and o9 have
    // no orders in their window.
    join.results(0, &orders_op.finish().expect("finish").results)
        .expect("results");
    assert!(join.advance(0, i64::MAX).expect("advance").is_empty());
    // o3's group of window [10 s, 20 s), held until the payments' side closes it.
    assert_eq!(join.held_rows(), 1);
    join.results(1, &payments_op.finish().expect("finish").results)
        .expect("results");
    let rows = joined(&join.advance(1, i64::MAX).expect("advance"));
    assert_eq!(
        rows,
        BTreeMap::from([(
            (10_000, "o3".to_string()),
            (2, "r1".to_string(), Some(1), Some(1))
        )])
    );
    assert_eq!(join.held_rows(), 0);
}

#[test]
fn a_null_key_matches_nothing() {
    let plan = job(true);
    let orders = arrow::array::RecordBatch::try_new(
        orders_schema(),
        vec![
            Arc::new(Int64Array::from(vec![1_000, 2_000])),
            Arc::new(StringArray::from(vec![None, Some("o1")])),
            Arc::new(StringArray::from(vec![Some("r1"), Some("r2")])),
        ],
    )
    .expect("orders");
    let payments = arrow::array::RecordBatch::try_new(
        payments_schema(),
        vec![
            Arc::new(Int64Array::from(vec![1_500, 2_500])),
            Arc::new(StringArray::from(vec![None, Some("o1")])),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .expect("payments");
    let out = live(
        &plan,
        [vec![orders], vec![payments]],
        &[true, false],
        Duration::ZERO,
    );
    let text = rendered(&out.results);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains(r#""oid":"o1","window_start":"1970-01-01T00:00:00","orders":1,"region":"r2","payments":1,"paid":2"#), "{text}");
    assert!(
        text.contains(r#""region":"r1","_key":"[null,null]""#),
        "{text}"
    );
    let inner = live(&job(false), [vec![], vec![]], &[], Duration::ZERO);
    assert!(inner.results.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_window_join_with_nothing_late_equals_recompute_and_the_plain_rule(
        orders in stream_rows(3),
        payments in stream_rows(50),
        order_cuts in prop::collection::vec(any::<usize>(), 0..8),
        payment_cuts in prop::collection::vec(any::<usize>(), 0..8),
        order in prop::collection::vec(any::<bool>(), 0..20),
        left in any::<bool>(),
        hop in any::<bool>(),
        lateness_ms in prop_oneof![Just(0u64), 1u64..8_000],
    ) {
        let plan = hop_job(left, hop);
        let batches = [
            cut(&orders, &order_cuts).iter().map(|rows| orders_batch(rows)).collect(),
            cut(&payments, &payment_cuts).iter().map(|rows| payments_batch(rows)).collect(),
        ];
        let output = live(&plan, batches, &order, Duration::from_millis(lateness_ms));
        prop_assert_eq!(output.late, [0, 0]);
        prop_assert_eq!(joined(&output.results), reference(&orders, &payments, left, hop));
        prop_assert_eq!(rendered(&output.results), rendered(&recomputed(&plan, &orders, &payments)));
    }

    #[test]
    fn a_window_join_restored_at_a_random_step_continues_like_the_original(
        orders in stream_rows(3),
        payments in stream_rows(50),
        order_cuts in prop::collection::vec(any::<usize>(), 0..8),
        payment_cuts in prop::collection::vec(any::<usize>(), 0..8),
        order in prop::collection::vec(any::<bool>(), 0..20),
        left in any::<bool>(),
        lateness_ms in prop_oneof![Just(0u64), 1u64..8_000],
        restore_at in 0usize..18,
    ) {
        let plan = job(left);
        let batches = || -> [Vec<RecordBatch>; 2] {[
            cut(&orders, &order_cuts).iter().map(|rows| orders_batch(rows)).collect(),
            cut(&payments, &payment_cuts).iter().map(|rows| payments_batch(rows)).collect(),
        ]};
        let lateness = Duration::from_millis(lateness_ms);
        let unbroken = live(&plan, batches(), &order, lateness);
        let restored = live_restored(&plan, batches(), &order, lateness, Some(restore_at));
        prop_assert_eq!(rendered(&unbroken.results), rendered(&restored.results));
        prop_assert_eq!(unbroken.late, restored.late);
    }
}

#[test]
fn a_window_join_snapshot_of_another_job_is_refused() {
    let join = WindowJoin::new(job(false), Duration::ZERO);
    let bytes = join.snapshot().expect("snapshot");
    let error = WindowJoin::restore(job(true), Duration::ZERO, &bytes)
        .expect_err("another job's snapshot")
        .to_string();
    assert!(error.contains("of another job"), "{error}");
    assert!(WindowJoin::restore(job(false), Duration::ZERO, &bytes[..10]).is_err());
}
