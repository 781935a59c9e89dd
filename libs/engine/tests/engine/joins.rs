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
    EngineError, JobLimits, JobPlan, JoinForm, JoinSources, LiveJoin, LiveJoinOptions,
    LiveJoinOutput, OperatorOptions, OperatorOutput, StreamSource, TableSource, TemporalJoin,
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
    let sources = JoinSources {
        tables: vec![users()],
        streams: Vec::new(),
    };
    JobPlan::compile_joined(sql, stream_schema(), "ts", &sources, &JobLimits::default())
}

fn refused(sql: &str) -> String {
    compile(sql).expect_err("the job is refused").to_string()
}

#[test]
fn a_join_job_windows_the_joined_rows() {
    let plan = compile(COUNTRY_JOB).expect("compiles");
    let join = plan.join().expect("the plan joins");
    assert_eq!(join.right_name(), "users");
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
        JobPlan::joined_of(COUNTRY_JOB).expect("table"),
        Some("users".to_string())
    );
}

#[test]
fn joins_outside_the_supported_form_are_refused_where_they_are() {
    let without_as_of = refused(
        "SELECT u.country, window_start, window_end, COUNT(*) AS n\nFROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) AS c\nJOIN users AS u ON c.uid = u.uid\nGROUP BY u.country, window_start, window_end",
    );
    // Without AS OF it reads as a join of two streams, which needs an interval: the
    // condition is at fault, and the message says how to join a table instead.
    assert!(
        without_as_of.contains("line 3, column 20")
            && without_as_of.contains("BETWEEN")
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
pub(crate) const DISORDER_MS: i64 = 3_000;

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

pub(crate) fn cut<T: Clone>(rows: &[T], cuts: &[usize]) -> Vec<Vec<T>> {
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

/// The window operator's options of these tests: one input, the clicks' disorder allowed.
fn window_options() -> OperatorOptions {
    OperatorOptions {
        partitions: 1,
        max_out_of_orderness: Duration::from_millis(DISORDER_MS as u64),
        allowed_lateness: Duration::ZERO,
        idle_timeout: None,
        early_emit_interval: None,
    }
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
    let options = window_options();
    let join_plan = plan.join().expect("a join job");
    let spec = join_plan
        .temporal_join_spec(0, 1, Duration::ZERO, Duration::MAX)
        .expect("an AS OF join");
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
                let batch = join_plan
                    .prefilter(clicks_batch(&clicks[next_click - 1]))
                    .expect("prefilter");
                join.process_stream(&batch)
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
    reference_above(clicks, changes, left, i64::MIN)
}

/// [`reference`] of the clicks of an amount above `min_amount`.
fn reference_above(clicks: &[Click], changes: &[Change], left: bool, min_amount: i64) -> Finals {
    let mut finals = Finals::new();
    for (time, user, amount) in clicks.iter().filter(|click| click.2 > min_amount) {
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

#[test]
fn a_stream_term_failing_on_one_row_leaves_that_row_out_live_and_in_recompute() {
    // `100 / c.amount` fails on the click of amount 0 (division by zero): live reports that
    // row and counts the others; recompute, which applies the stream's terms before the
    // join, leaves it out too instead of failing the run.
    let sql = COUNTRY_JOB.replace("\nGROUP BY", "\nWHERE 100 / c.amount >= 1\nGROUP BY");
    let plan = Arc::new(compile(&sql).expect("compiles"));
    let clicks = vec![
        (20_000, "u1".to_string(), 5),
        (21_000, "u1".to_string(), 0),
        (22_000, "u1".to_string(), 7),
    ];
    let changes = vec![(19_000, "u1".to_string(), "c0".to_string(), false)];
    let output = live(
        &plan,
        std::slice::from_ref(&clicks),
        std::slice::from_ref(&changes),
        &[false, true],
        None,
    );
    let expected = Finals::from([((Some("c0".to_string()), 20_000), (2, 12))]);
    assert_eq!(finals(&output.results), expected);
    assert_eq!(
        output
            .late_events
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>(),
        1
    );
    assert_eq!(recomputed(&plan, &clicks, &changes), expected);
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
    fn the_where_on_stream_columns_alone_drops_rows_before_the_join(
        clicks in clicks(),
        changes in changes(),
        click_cuts in prop::collection::vec(any::<usize>(), 0..10),
        order in prop::collection::vec(any::<bool>(), 0..20),
        left in any::<bool>(),
    ) {
        // `c.amount > 50` reads the stream alone and is applied before the join;
        // `u.country <> 'c1'` reads the table: live applies it after the join, recompute
        // also to the versions before an inner join (one in c1 still ends the one before).
        let mut sql = COUNTRY_JOB.replace(
            "\nGROUP BY",
            "\nWHERE c.amount > 50 AND u.country <> 'c1'\nGROUP BY",
        );
        if left {
            sql = sql.replace("\nJOIN", "\nLEFT JOIN");
        }
        let plan = Arc::new(compile(&sql).expect("compiles"));
        let join = plan.join().expect("joins");
        let kept = join.prefilter(clicks_batch(&clicks)).expect("prefilter");
        prop_assert_eq!(kept.num_rows(), clicks.iter().filter(|click| click.2 > 50).count());
        let output = live(&plan, &cut(&clicks, &click_cuts), std::slice::from_ref(&changes), &order, None);
        // A LEFT row without a country has a null one, which `<> 'c1'` drops.
        let mut expected = reference_above(&clicks, &changes, left, 50);
        expected.retain(|(country, _), _| country.as_ref().is_some_and(|country| country != "c1"));
        prop_assert_eq!(&finals(&output.results), &expected);
        prop_assert_eq!(&recomputed(&plan, &clicks, &changes), &expected);
    }

    #[test]
    fn a_whole_table_first_leaves_out_the_keys_the_where_drops_every_version_of(
        clicks in clicks(),
        changes in changes(),
        click_cuts in prop::collection::vec(any::<usize>(), 0..10),
        change_cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        // As `runnel run` joins: the whole changelog first, announced, then the clicks.
        // `u.country = 'c1'` reads the table alone: in an inner join, the table leaves out
        // the users none of whose rows are in c1, and holds a version of another country
        // as a tombstone (it still ends the c1 version before it).
        let sql = COUNTRY_JOB.replace("\nGROUP BY", "\nWHERE u.country = 'c1'\nGROUP BY");
        let plan = Arc::new(compile(&sql).expect("compiles"));
        let spec = plan
            .join()
            .expect("joins")
            .temporal_join_spec(0, 1, Duration::MAX, Duration::MAX)
            .expect("an AS OF join");
        let mut join = TemporalJoin::new(spec).expect("join");
        let changes_batches: Vec<RecordBatch> =
            cut(&changes, &change_cuts).iter().map(|rows| changes_batch(rows)).collect();
        join.expect_whole_table(&changes_batches).expect("announce the table");
        for batch in &changes_batches {
            let out = join.process_table(0, batch).expect("table");
            prop_assert!(out.late_table.is_empty() && out.errors.is_empty());
        }
        prop_assert!(join.finish().expect("finish").rows.is_empty());
        let in_c1 = changes.iter().filter(|change| change.2 == "c1").count();
        let kept_users: Vec<&String> =
            changes.iter().filter(|change| change.2 == "c1").map(|change| &change.1).collect();
        let held = if 2 * in_c1 <= changes.len() {
            changes.iter().filter(|change| kept_users.contains(&&change.1)).count()
        } else {
            changes.len()
        };
        prop_assert_eq!(join.table_versions(), held);

        let options = window_options();
        let mut windows = WindowOperator::new(Arc::clone(&plan), options).expect("operator");
        let mut output = OperatorOutput::default();
        for (step, rows) in cut(&clicks, &click_cuts).iter().enumerate() {
            let joined = join.process_stream(&clicks_batch(rows)).expect("stream");
            for rows in joined.rows {
                let rows = plan.joined_rows(&rows).expect("joined rows");
                output.append(windows.process(0, &rows, step as i64).expect("process"));
            }
        }
        output.append(windows.finish().expect("finish"));
        let mut expected = reference(&clicks, &changes, false);
        expected.retain(|(country, _), _| country.as_deref() == Some("c1"));
        prop_assert_eq!(&finals(&output.results), &expected);
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

// Interval joins of two streams.

const PAYMENTS_JOB: &str = "SELECT o.region, window_start, window_end, COUNT(*) AS n, COUNT(p.paid) AS matched, SUM(p.paid) AS total
FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) AS o
JOIN payments AS p ON o.oid = p.oid AND p.ts BETWEEN o.ts - INTERVAL '1' SECOND AND o.ts + INTERVAL '5' SECOND
GROUP BY o.region, window_start, window_end";

const INTERVAL_LOWER_MS: i64 = -1_000;
const INTERVAL_UPPER_MS: i64 = 5_000;

pub(crate) fn orders_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, true),
        Field::new("oid", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
    ]))
}

pub(crate) fn payments_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Int64, true),
        Field::new("oid", DataType::Utf8, true),
        Field::new("paid", DataType::Int64, true),
    ]))
}

/// An order or a payment: event time (ms), order id, and a region (orders) or amount
/// (payments).
pub(crate) type Row = (i64, String, i64);

pub(crate) fn orders_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        orders_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| format!("r{}", r.2)),
            )),
        ],
    )
    .expect("orders batch")
}

pub(crate) fn payments_batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        payments_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.1.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .expect("payments batch")
}

/// Rows with at most `DISORDER_MS` of disorder over 6 order ids.
pub(crate) fn stream_rows(values: u8) -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(
        (0i64..1_500, 0i64..=DISORDER_MS, 0u8..6, 0u8..values),
        0..80,
    )
    .prop_map(|steps| {
        let mut base = 20_000;
        steps
            .into_iter()
            .map(|(step, behind, oid, value)| {
                base += step;
                (base - behind, format!("o{oid}"), i64::from(value))
            })
            .collect()
    })
}

fn interval_job(left: bool) -> Arc<JobPlan> {
    let sql = if left {
        PAYMENTS_JOB.replace("\nJOIN", "\nLEFT JOIN")
    } else {
        PAYMENTS_JOB.to_string()
    };
    let sources = JoinSources {
        tables: Vec::new(),
        streams: vec![StreamSource {
            name: "payments".to_string(),
            schema: payments_schema(),
            event_time: "ts".to_string(),
        }],
    };
    Arc::new(
        JobPlan::compile_joined(&sql, orders_schema(), "ts", &sources, &JobLimits::default())
            .expect("compiles"),
    )
}

/// Final results by (region, window start): `(n, matched, total)`.
type IntervalFinals = BTreeMap<(String, i64), IntervalValues>;
/// A result's `(n, matched, total)`.
type IntervalValues = (i64, i64, Option<i64>);

fn interval_finals(results: &[RecordBatch]) -> IntervalFinals {
    let mut latest: BTreeMap<(String, i64), (u32, IntervalValues)> = BTreeMap::new();
    for batch in results {
        let column = |name: &str| Arc::clone(batch.column_by_name(name).expect(name));
        let (region, starts, n, matched, total, versions) = (
            column("region"),
            column("window_start"),
            column("n"),
            column("matched"),
            column("total"),
            column("_version"),
        );
        let total = total.as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let key = (
                region.as_string::<i32>().value(row).to_string(),
                starts.as_primitive::<TimestampMillisecondType>().value(row),
            );
            let version = versions.as_primitive::<UInt32Type>().value(row);
            let entry = latest.entry(key).or_insert((0, (0, 0, None)));
            assert!(version > entry.0, "versions only grow");
            *entry = (
                version,
                (
                    n.as_primitive::<Int64Type>().value(row),
                    matched.as_primitive::<Int64Type>().value(row),
                    total.is_valid(row).then(|| total.value(row)),
                ),
            );
        }
    }
    latest
        .into_iter()
        .map(|(key, (_, values))| (key, values))
        .collect()
}

/// The plain rule: each order with every payment of its id whose time is within
/// [order - 1 s, order + 5 s]; a LEFT join keeps an order with none, once, with no payment.
fn interval_reference(orders: &[Row], payments: &[Row], left: bool) -> IntervalFinals {
    let mut finals = IntervalFinals::new();
    for (time, oid, region) in orders {
        let paid: Vec<i64> = payments
            .iter()
            .filter(|p| {
                &p.1 == oid && p.0 >= time + INTERVAL_LOWER_MS && p.0 <= time + INTERVAL_UPPER_MS
            })
            .map(|p| p.2)
            .collect();
        let key = (format!("r{region}"), time.div_euclid(WINDOW_MS) * WINDOW_MS);
        if paid.is_empty() {
            if left {
                finals.entry(key).or_insert((0, 0, None)).0 += 1;
            }
            continue;
        }
        let entry = finals.entry(key).or_insert((0, 0, None));
        entry.0 += paid.len() as i64;
        entry.1 += paid.len() as i64;
        entry.2 = Some(entry.2.unwrap_or(0) + paid.iter().sum::<i64>());
    }
    finals
}

/// The job live: orders (`order` true) and payments through the interval join (the
/// engine's `LiveJoin`, which puts its rows back in time order), then through the window
/// operator; before step `restore_at`, if any, both are snapshotted and replaced by ones
/// restored from the snapshots.
fn interval_live(
    plan: &Arc<JobPlan>,
    orders: &[Vec<Row>],
    payments: &[Vec<Row>],
    order: &[bool],
    restore_at: Option<usize>,
) -> OperatorOutput {
    let disorder = Duration::from_millis(DISORDER_MS as u64);
    let options = OperatorOptions {
        partitions: 1,
        max_out_of_orderness: disorder,
        allowed_lateness: Duration::ZERO,
        idle_timeout: None,
        early_emit_interval: None,
    };
    let join_options = LiveJoinOptions {
        stream_partitions: 1,
        other_partitions: 1,
        table_out_of_orderness: Duration::ZERO,
        stream_out_of_orderness: Duration::MAX,
        max_out_of_orderness: disorder,
        allowed_lateness: Duration::ZERO,
    };
    let mut join = LiveJoin::new(Arc::clone(plan), &join_options).expect("join");
    let mut windows = WindowOperator::new(Arc::clone(plan), options).expect("operator");
    let mut output = OperatorOutput::default();
    let take = |joined: LiveJoinOutput,
                windows: &mut WindowOperator,
                output: &mut OperatorOutput,
                step: i64| {
        assert!(joined.late_stream.is_empty() && joined.late_other.is_empty());
        for rows in &joined.rows {
            output.append(windows.process(0, rows, step).expect("process"));
        }
    };
    let (mut next_order, mut next_payment, mut step) = (0, 0, 0i64);
    let mut order = order.iter().copied();
    while next_order < orders.len() || next_payment < payments.len() {
        if restore_at == Some(step as usize) {
            join = LiveJoin::restore(
                Arc::clone(plan),
                &join_options,
                &join.snapshot().expect("snapshot the join"),
            )
            .expect("restore the join");
            windows = WindowOperator::restore(
                Arc::clone(plan),
                options,
                &windows.snapshot().expect("snapshot the windows"),
            )
            .expect("restore the windows");
        }
        let orders_next = order.next().unwrap_or(next_payment >= payments.len());
        let joined =
            if (orders_next && next_order < orders.len()) || next_payment >= payments.len() {
                next_order += 1;
                join.stream(0, &orders_batch(&orders[next_order - 1]))
            } else {
                next_payment += 1;
                join.other(0, &payments_batch(&payments[next_payment - 1]))
            }
            .expect("join");
        take(joined, &mut windows, &mut output, step);
        step += 1;
    }
    let joined = join.finish().expect("finish");
    take(joined, &mut windows, &mut output, step);
    output.append(windows.finish().expect("finish"));
    output
}

fn interval_recomputed(plan: &JobPlan, orders: &[Row], payments: &[Row]) -> IntervalFinals {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let results = runtime.block_on(async {
        let context = SessionContext::new();
        context
            .register_batch("orders_history", orders_batch(orders))
            .expect("register orders");
        context
            .register_batch("payments_history", payments_batch(payments))
            .expect("register payments");
        runnel_engine::register_joined(
            plan,
            &context,
            "orders_history",
            "payments_history",
            "ts",
            "joined",
        )
        .await
        .expect("register the join");
        runnel_engine::recompute(plan, &context, "joined")
            .await
            .expect("recompute")
    });
    interval_finals(&results)
}

#[test]
fn an_interval_join_job_compiles_and_refuses_what_is_not_an_interval() {
    let plan = interval_job(false);
    let join = plan.join().expect("joins");
    assert_eq!(
        join.form(),
        JoinForm::Interval {
            lower_ms: INTERVAL_LOWER_MS,
            upper_ms: INTERVAL_UPPER_MS
        }
    );
    assert_eq!(join.release_before(20_000, Duration::from_secs(1)), 14_000);
    let sources = JoinSources {
        tables: vec![users()],
        streams: vec![StreamSource {
            name: "payments".to_string(),
            schema: payments_schema(),
            event_time: "ts".to_string(),
        }],
    };
    let refused = |sql: &str| {
        JobPlan::compile_joined(sql, orders_schema(), "ts", &sources, &JobLimits::default())
            .expect_err("refused")
            .to_string()
    };
    let backwards = refused(
        "SELECT window_start, window_end, COUNT(*) AS n FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) AS o JOIN payments AS p ON o.oid = p.oid AND p.ts BETWEEN o.ts + INTERVAL '5' SECOND AND o.ts GROUP BY window_start, window_end",
    );
    assert!(backwards.contains("lower bound"), "{backwards}");
    let not_the_time = refused(
        "SELECT window_start, window_end, COUNT(*) AS n FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) AS o JOIN payments AS p ON o.oid = p.oid AND p.paid BETWEEN o.ts AND o.ts + INTERVAL '5' SECOND GROUP BY window_start, window_end",
    );
    assert!(not_the_time.contains("event time `ts`"), "{not_the_time}");
    let a_table = refused(
        "SELECT window_start, window_end, COUNT(*) AS n FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) AS o JOIN users AS u ON o.oid = u.uid AND u.ts BETWEEN o.ts AND o.ts + INTERVAL '5' SECOND GROUP BY window_start, window_end",
    );
    assert!(a_table.contains("is a table"), "{a_table}");
    let a_stream_as_of = refused(
        "SELECT window_start, window_end, COUNT(*) AS n FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) AS o JOIN payments FOR SYSTEM_TIME AS OF o.ts AS p ON o.oid = p.oid GROUP BY window_start, window_end",
    );
    assert!(
        a_stream_as_of.contains("is a stream, not a table"),
        "{a_stream_as_of}"
    );
}

#[test]
fn an_interval_joins_edges_are_inclusive() {
    // Order o1 at 20 s; payments 1 s before and 5 s after (the edges) match, 1 ms outside
    // each does not.
    let orders: Vec<Row> = vec![(20_000, "o1".into(), 1)];
    let payments: Vec<Row> = vec![
        (18_999, "o1".into(), 1),
        (19_000, "o1".into(), 2),
        (25_000, "o1".into(), 4),
        (25_001, "o1".into(), 8),
    ];
    for left in [false, true] {
        let plan = interval_job(left);
        let output = interval_live(
            &plan,
            std::slice::from_ref(&orders),
            std::slice::from_ref(&payments),
            &[false, true],
            None,
        );
        let mut expected = IntervalFinals::new();
        expected.insert(("r1".into(), 20_000), (2, 2, Some(6)));
        assert_eq!(interval_finals(&output.results), expected, "left: {left}");
        assert_eq!(interval_recomputed(&plan, &orders, &payments), expected);
    }
    // An order with no payment in its interval: only LEFT keeps it, once it expires.
    let late_payment: Vec<Row> = vec![(25_001, "o1".into(), 8)];
    let plan = interval_job(true);
    let output = interval_live(
        &plan,
        std::slice::from_ref(&orders),
        std::slice::from_ref(&late_payment),
        &[true, false],
        None,
    );
    let mut expected = IntervalFinals::new();
    expected.insert(("r1".into(), 20_000), (1, 0, None));
    assert_eq!(interval_finals(&output.results), expected);
    assert_eq!(interval_recomputed(&plan, &orders, &late_payment), expected);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn an_interval_join_job_with_nothing_late_equals_recompute_and_the_plain_rule(
        orders in stream_rows(3),
        payments in stream_rows(50),
        order_cuts in prop::collection::vec(any::<usize>(), 0..8),
        payment_cuts in prop::collection::vec(any::<usize>(), 0..8),
        order in prop::collection::vec(any::<bool>(), 0..20),
        left in any::<bool>(),
    ) {
        let plan = interval_job(left);
        let output = interval_live(&plan, &cut(&orders, &order_cuts), &cut(&payments, &payment_cuts), &order, None);
        prop_assert!(output.late_events.is_empty(), "late: {:?}", output.late_events);
        let live = interval_finals(&output.results);
        prop_assert_eq!(&live, &interval_reference(&orders, &payments, left));
        prop_assert_eq!(&live, &interval_recomputed(&plan, &orders, &payments));
    }

    #[test]
    fn an_interval_join_job_restored_at_a_random_step_continues_like_the_original(
        orders in stream_rows(3),
        payments in stream_rows(50),
        order_cuts in prop::collection::vec(any::<usize>(), 0..8),
        payment_cuts in prop::collection::vec(any::<usize>(), 0..8),
        order in prop::collection::vec(any::<bool>(), 0..20),
        left in any::<bool>(),
        restore_at in 0usize..16,
    ) {
        let plan = interval_job(left);
        let (orders, payments) = (cut(&orders, &order_cuts), cut(&payments, &payment_cuts));
        let unbroken = interval_live(&plan, &orders, &payments, &order, None);
        let restored = interval_live(&plan, &orders, &payments, &order, Some(restore_at));
        let rendered = |output: &OperatorOutput| {
            let mut text = String::new();
            crate::support::render(&output.results, "result", &mut text);
            text
        };
        prop_assert_eq!(rendered(&unbroken), rendered(&restored));
    }
}
