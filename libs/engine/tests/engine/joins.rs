//! Jobs that join their stream with a table (`FOR SYSTEM_TIME AS OF`): what the SQL may
//! say, and one job three ways (live through the temporal join and the window operator,
//! recompute through the AS OF join, and a plain reference written here) with random
//! interleavings of the two inputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimestampMillisecondType, UInt32Type,
};
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use runnel_engine::{
    EngineError, JobLimits, JobPlan, OperatorOptions, OperatorOutput, TableSource, TemporalJoin,
    WindowOperator,
};

const WINDOW_MS: i64 = 10_000;

const COUNTRY_JOB: &str =
    "SELECT u.country, window_start, window_end, COUNT(*) AS n, SUM(c.amount) AS total
FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c
JOIN users FOR SYSTEM_TIME AS OF c.ts AS u ON c.uid = u.uid
GROUP BY u.country, window_start, window_end";

fn stream_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, true),
        Field::new("uid", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
    ]))
}

fn table_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, true),
        Field::new("uid", DataType::Utf8, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("deleted", DataType::Boolean, true),
    ]))
}

fn users() -> TableSource {
    TableSource {
        name: "users".to_string(),
        schema: table_schema(),
        key: "uid".to_string(),
        event_time: "ts".to_string(),
        tombstone: Some("deleted".to_string()),
    }
}

fn compile(sql: &str) -> Result<JobPlan, EngineError> {
    JobPlan::compile_with_tables(
        sql,
        stream_schema(),
        "ts",
        &[users()],
        &JobLimits::default(),
    )
}

fn refused(sql: &str) -> String {
    compile(sql).expect_err("the job is refused").to_string()
}

#[test]
fn a_join_job_windows_the_joined_rows() {
    let plan = compile(COUNTRY_JOB).expect("compiles");
    let join = plan.join().expect("the plan joins");
    assert_eq!(join.table().name, "users");
    let joined = plan.stream_schema();
    let names: Vec<&str> = joined
        .fields()
        .iter()
        .map(|field| field.name().as_str())
        .collect();
    // The table's columns the stream also has are renamed after the table's alias.
    assert_eq!(
        names,
        ["ts", "uid", "amount", "u_ts", "u_uid", "country", "deleted"]
    );
    let result_schema = plan.result_schema();
    let result: Vec<&str> = result_schema
        .fields()
        .iter()
        .map(|field| field.name().as_str())
        .collect();
    assert_eq!(
        &result[..5],
        ["country", "window_start", "window_end", "n", "total"]
    );
    assert_eq!(
        JobPlan::source_of(COUNTRY_JOB).expect("source"),
        ("clicks".to_string(), "ts".to_string())
    );
    assert_eq!(
        JobPlan::table_of(COUNTRY_JOB).expect("table"),
        Some("users".to_string())
    );
}

#[test]
fn joins_outside_the_supported_form_are_refused_where_they_are() {
    let without_as_of = refused(
        "SELECT u.country, window_start, window_end, COUNT(*) AS n\nFROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c\nJOIN users AS u ON c.uid = u.uid\nGROUP BY u.country, window_start, window_end",
    );
    assert!(
        without_as_of.contains("line 3, column 6")
            && without_as_of.contains("FOR SYSTEM_TIME AS OF"),
        "{without_as_of}"
    );
    let right = refused(
        "SELECT u.country, window_start, window_end, COUNT(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c RIGHT JOIN users FOR SYSTEM_TIME AS OF c.ts AS u ON c.uid = u.uid GROUP BY u.country, window_start, window_end",
    );
    assert!(right.contains("LEFT JOIN"), "{right}");
    let not_the_key = refused(
        "SELECT u.country, window_start, window_end, COUNT(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c JOIN users FOR SYSTEM_TIME AS OF c.ts AS u ON c.uid = u.country GROUP BY u.country, window_start, window_end",
    );
    assert!(not_the_key.contains("keyed by `uid`"), "{not_the_key}");
    let not_equality = refused(
        "SELECT u.country, window_start, window_end, COUNT(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c JOIN users FOR SYSTEM_TIME AS OF c.ts AS u ON c.uid <> u.uid GROUP BY u.country, window_start, window_end",
    );
    assert!(not_equality.contains("one equality"), "{not_equality}");
    let sql = "SELECT u.country, window_start, window_end, COUNT(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c JOIN users FOR SYSTEM_TIME AS OF c.amount AS u ON c.uid = u.uid GROUP BY u.country, window_start, window_end";
    let not_event_time = refused(sql);
    let column = sql.find("c.amount").expect("in the SQL") + 1;
    assert!(
        not_event_time.contains(&format!("column {column}:"))
            && not_event_time.contains("event time `ts`"),
        "{not_event_time}"
    );
    let undeclared = refused(
        "SELECT p.name, window_start, window_end, COUNT(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c JOIN people FOR SYSTEM_TIME AS OF c.ts AS p ON c.uid = p.uid GROUP BY p.name, window_start, window_end",
    );
    assert!(
        undeclared.contains("`people` is not a declared table"),
        "{undeclared}"
    );
    let ambiguous = refused(
        "SELECT country, window_start, window_end, COUNT(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c JOIN users FOR SYSTEM_TIME AS OF c.ts AS u ON c.uid = u.uid WHERE uid <> 'x' GROUP BY country, window_start, window_end",
    );
    assert!(
        ambiguous.contains("`uid` is a column of both") && ambiguous.contains("c.uid"),
        "{ambiguous}"
    );
    let two_joins = refused(
        "SELECT u.country, window_start, window_end, COUNT(*) AS n FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c JOIN users FOR SYSTEM_TIME AS OF c.ts AS u ON c.uid = u.uid JOIN users FOR SYSTEM_TIME AS OF c.ts AS v ON c.uid = v.uid GROUP BY u.country, window_start, window_end",
    );
    assert!(two_joins.contains("one table"), "{two_joins}");
}

#[test]
fn an_unknown_column_after_a_join_is_reported_where_it_is_written() {
    let error = refused(
        "SELECT u.country, window_start, window_end,\n       SUM(c.nope) AS n\nFROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c\nJOIN users FOR SYSTEM_TIME AS OF c.ts AS u ON c.uid = u.uid\nGROUP BY u.country, window_start, window_end",
    );
    assert!(
        error.contains("line 2, column 12") && error.contains("nope"),
        "{error}"
    );
}

/// A click: event time (ms), user, amount.
type Click = (i64, String, i64);
/// A changelog row: event time (ms), user, country, deleted.
type Change = (i64, String, String, bool);

fn clicks_batch(clicks: &[Click]) -> RecordBatch {
    RecordBatch::try_new(
        stream_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(clicks.iter().map(|c| c.0))),
            Arc::new(StringArray::from_iter_values(
                clicks.iter().map(|c| c.1.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(clicks.iter().map(|c| c.2))),
        ],
    )
    .expect("clicks batch")
}

fn changes_batch(changes: &[Change]) -> RecordBatch {
    RecordBatch::try_new(
        table_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.0))),
            Arc::new(StringArray::from_iter_values(
                changes.iter().map(|c| c.1.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                changes.iter().map(|c| c.2.as_str()),
            )),
            Arc::new(BooleanArray::from(
                changes.iter().map(|c| c.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("changes batch")
}

/// Largest disorder of the generated clicks.
const DISORDER_MS: i64 = 3_000;

fn clicks() -> impl Strategy<Value = Vec<Click>> {
    prop::collection::vec((0i64..1_500, 0i64..=DISORDER_MS, 0u8..5, 1i64..100), 0..120).prop_map(
        |steps| {
            let mut base = 20_000;
            steps
                .into_iter()
                .map(|(step, behind, user, amount)| {
                    base += step;
                    (base - behind, format!("u{user}"), amount)
                })
                .collect()
        },
    )
}

/// Changelog rows in strictly increasing event time (so none is late with no
/// out-of-orderness allowed), over users u0..u3 (u4 never has a row).
fn changes() -> impl Strategy<Value = Vec<Change>> {
    prop::collection::vec(
        (1i64..4_000, 0u8..4, 0u8..3, prop::bool::weighted(0.15)),
        0..40,
    )
    .prop_map(|steps| {
        let mut time = 17_000;
        steps
            .into_iter()
            .map(|(step, user, country, deleted)| {
                time += step;
                (time, format!("u{user}"), format!("c{country}"), deleted)
            })
            .collect()
    })
}

fn cut<T: Clone>(rows: &[T], cuts: &[usize]) -> Vec<Vec<T>> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for &cut in cuts {
        let end = (start + cut % 17).min(rows.len());
        pieces.push(rows[start..end].to_vec());
        start = end;
    }
    pieces.push(rows[start..].to_vec());
    pieces
}

/// The job live: the clicks through the temporal join and the joined rows through the
/// window operator, the two inputs' batches interleaved as `order` says (true: the next
/// clicks batch). With `snapshot_at`, both operators are snapshotted and restored before
/// that step.
fn live(
    plan: &Arc<JobPlan>,
    clicks: &[Vec<Click>],
    changes: &[Vec<Change>],
    order: &[bool],
    snapshot_at: Option<usize>,
) -> OperatorOutput {
    let options = OperatorOptions {
        partitions: 1,
        max_out_of_orderness: Duration::from_millis(DISORDER_MS as u64),
        allowed_lateness: Duration::ZERO,
        idle_timeout: None,
        early_emit_interval: None,
    };
    let join_plan = plan.join().expect("a join job");
    let spec = join_plan.temporal_join_spec(0, 1, Duration::ZERO, Duration::MAX);
    let mut join = TemporalJoin::new(spec.clone()).expect("join");
    let mut windows = WindowOperator::new(Arc::clone(plan), options).expect("operator");
    let mut output = OperatorOutput::default();
    let (mut next_click, mut next_change) = (0, 0);
    let mut step = 0;
    let take = |joined: runnel_engine::JoinOutput,
                windows: &mut WindowOperator,
                output: &mut OperatorOutput,
                step: i64| {
        assert!(joined.late_stream.is_empty() && joined.late_table.is_empty());
        for rows in joined.rows {
            let rows = plan.joined_rows(&rows).expect("joined rows");
            output.append(windows.process(0, &rows, step).expect("process"));
        }
    };
    let mut order = order.iter().copied();
    while next_click < clicks.len() || next_change < changes.len() {
        if snapshot_at == Some(step) {
            let bytes = join.snapshot().expect("join snapshot");
            join = TemporalJoin::restore(spec.clone(), &bytes).expect("join restore");
            let bytes = windows.snapshot().expect("window snapshot");
            windows = WindowOperator::restore(Arc::clone(plan), options, &bytes).expect("restore");
        }
        let clicks_next = match order.next() {
            Some(clicks_next) => clicks_next,
            None => next_change >= changes.len(),
        };
        let joined =
            if (clicks_next && next_click < clicks.len()) || next_change >= changes.len() {
                next_click += 1;
                join.process_stream(&clicks_batch(&clicks[next_click - 1]))
            } else {
                next_change += 1;
                join.process_table(0, &changes_batch(&changes[next_change - 1]))
            }
            .expect("join");
        take(joined, &mut windows, &mut output, step as i64);
        step += 1;
    }
    take(
        join.finish().expect("join finish"),
        &mut windows,
        &mut output,
        step as i64,
    );
    output.append(windows.finish().expect("finish"));
    output
}

/// A result's country and window start.
type FinalKey = (Option<String>, i64);
/// Final results by (country, window start): `[n, total]`, the latest version of each.
type Finals = BTreeMap<FinalKey, (i64, i64)>;

fn finals(results: &[RecordBatch]) -> Finals {
    let mut latest: BTreeMap<FinalKey, (u32, (i64, i64))> = BTreeMap::new();
    for batch in results {
        let country = batch
            .column_by_name("country")
            .expect("country")
            .as_string::<i32>();
        let starts = batch
            .column_by_name("window_start")
            .expect("window_start")
            .as_primitive::<TimestampMillisecondType>();
        let n = batch
            .column_by_name("n")
            .expect("n")
            .as_primitive::<Int64Type>();
        let total = batch
            .column_by_name("total")
            .expect("total")
            .as_primitive::<Int64Type>();
        let versions = batch
            .column_by_name("_version")
            .expect("_version")
            .as_primitive::<UInt32Type>();
        for row in 0..batch.num_rows() {
            let key = (
                country
                    .is_valid(row)
                    .then(|| country.value(row).to_string()),
                starts.value(row),
            );
            let entry = latest.entry(key).or_insert((0, (0, 0)));
            assert!(versions.value(row) > entry.0, "versions only grow");
            *entry = (versions.value(row), (n.value(row), total.value(row)));
        }
    }
    latest
        .into_iter()
        .map(|(key, (_, values))| (key, values))
        .collect()
}

/// The job by the plain rule, independent of the engine: each click takes the latest
/// change of its user at or before its time (of changes at one time, the last); none, or a
/// delete, leaves no country (an inner join drops the click, a LEFT one counts it as null).
fn reference(clicks: &[Click], changes: &[Change], left: bool) -> Finals {
    let mut finals = Finals::new();
    for (time, user, amount) in clicks {
        let version = changes
            .iter()
            .filter(|change| &change.1 == user && change.0 <= *time)
            .max_by_key(|change| change.0);
        let country = match version {
            Some(change) if !change.3 => Some(change.2.clone()),
            _ if left => None,
            _ => continue,
        };
        let start = time.div_euclid(WINDOW_MS) * WINDOW_MS;
        let entry = finals.entry((country, start)).or_insert((0, 0));
        entry.0 += 1;
        entry.1 += amount;
    }
    finals
}

/// The job by [`runnel_engine::recompute`] over the AS OF join of the whole input.
fn recomputed(plan: &JobPlan, clicks: &[Click], changes: &[Change]) -> Finals {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let results = runtime.block_on(async {
        let context = SessionContext::new();
        context
            .register_batch("clicks_history", clicks_batch(clicks))
            .expect("register clicks");
        let log = changes_batch(changes);
        let mut fields: Vec<Field> = log
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("seq", DataType::UInt64, false));
        let mut columns = log.columns().to_vec();
        columns.push(Arc::new(UInt64Array::from_iter_values(
            0..changes.len() as u64,
        )));
        let log = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("log");
        context
            .register_batch("users_log", log)
            .expect("register log");
        runnel_engine::register_joined(
            plan,
            &context,
            "clicks_history",
            "users_log",
            "seq",
            "joined",
        )
        .await
        .expect("register the join");
        runnel_engine::recompute(plan, &context, "joined")
            .await
            .expect("recompute")
    });
    finals(&results)
}

fn job(left: bool) -> Arc<JobPlan> {
    let sql = if left {
        COUNTRY_JOB.replace("\nJOIN", "\nLEFT JOIN")
    } else {
        COUNTRY_JOB.to_string()
    };
    Arc::new(compile(&sql).expect("compiles"))
}

#[test]
fn a_click_takes_the_version_valid_at_its_time() {
    // u1 is in c0 from 20 s, c1 from 25 s, deleted at 31 s; u2 has no row.
    let changes: Vec<Change> = vec![
        (20_000, "u1".into(), "c0".into(), false),
        (25_000, "u1".into(), "c1".into(), false),
        (31_000, "u1".into(), "c1".into(), true),
    ];
    let clicks: Vec<Click> = vec![
        (19_999, "u1".into(), 1),  // before the first version: none
        (20_000, "u1".into(), 2),  // at it: c0
        (24_999, "u1".into(), 4),  // c0
        (25_000, "u1".into(), 8),  // at the update: c1
        (30_999, "u1".into(), 16), // c1
        (31_000, "u1".into(), 32), // deleted: none
        (22_000, "u2".into(), 64), // no version
    ];
    for left in [false, true] {
        let plan = job(left);
        let output = live(
            &plan,
            std::slice::from_ref(&clicks),
            std::slice::from_ref(&changes),
            &[true, false],
            None,
        );
        let mut expected = Finals::new();
        expected.insert((Some("c0".into()), 20_000), (2, 6));
        expected.insert((Some("c1".into()), 20_000), (1, 8));
        expected.insert((Some("c1".into()), 30_000), (1, 16));
        if left {
            expected.insert((None, 10_000), (1, 1));
            expected.insert((None, 20_000), (1, 64));
            expected.insert((None, 30_000), (1, 32));
        }
        assert_eq!(finals(&output.results), expected, "left: {left}");
        assert_eq!(reference(&clicks, &changes, left), expected);
        assert_eq!(
            recomputed(&plan, &clicks, &changes),
            expected,
            "left: {left}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn with_nothing_late_live_equals_recompute_and_the_plain_rule(
        clicks in clicks(),
        changes in changes(),
        click_cuts in prop::collection::vec(any::<usize>(), 0..10),
        change_cuts in prop::collection::vec(any::<usize>(), 0..6),
        order in prop::collection::vec(any::<bool>(), 0..20),
        left in any::<bool>(),
    ) {
        let plan = job(left);
        let output = live(&plan, &cut(&clicks, &click_cuts), &cut(&changes, &change_cuts), &order, None);
        prop_assert!(output.late_events.is_empty());
        let live = finals(&output.results);
        prop_assert_eq!(&live, &reference(&clicks, &changes, left));
        prop_assert_eq!(&live, &recomputed(&plan, &clicks, &changes));
    }

    #[test]
    fn a_restored_join_job_continues_like_the_original(
        clicks in clicks(),
        changes in changes(),
        click_cuts in prop::collection::vec(any::<usize>(), 0..10),
        change_cuts in prop::collection::vec(any::<usize>(), 0..6),
        order in prop::collection::vec(any::<bool>(), 0..20),
        snapshot_at in 0usize..16,
        left in any::<bool>(),
    ) {
        let plan = job(left);
        let (clicks, changes) = (cut(&clicks, &click_cuts), cut(&changes, &change_cuts));
        let unbroken = live(&plan, &clicks, &changes, &order, None);
        let restored = live(&plan, &clicks, &changes, &order, Some(snapshot_at));
        let (mut a, mut b) = (String::new(), String::new());
        crate::support::render(&unbroken.results, "result", &mut a);
        crate::support::render(&restored.results, "result", &mut b);
        prop_assert_eq!(a, b);
    }
}
