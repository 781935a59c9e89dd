//! Golden tests: `tests/golden/<case>/` holds `job.sql`, `options.json`, `input.jsonl` and
//! `expected.jsonl`. `UPDATE_EXPECT=1 cargo test -p runnel-engine` rewrites the expected
//! files; review the diff before committing it.
//!
//! `input.jsonl` lines are `{"p": partition, "at": arrival_ms, "e": {event}}`,
//! `{"tick": arrival_ms}` or `{"advance": partition, "to": event_time_ms, "at": arrival_ms}`
//! (`WindowOperator::advance_partition`); consecutive events with the same partition and arrival form one
//! batch. Each case also runs with every event in its own batch, and must give the same
//! results and late events: the operator's output may not depend on batching.
//!
//! A join case's `options.json` has a `table` (`name`, `schema`, `key`, `event_time`,
//! optional `tombstone`, `partitions`, `out_of_orderness_ms`, `stream_out_of_orderness_ms`),
//! and its `input.jsonl` the table's changelog rows as `{"t": partition, "at": arrival_ms,
//! "e": {row}}`: stream rows go through a `TemporalJoin` on partition 0 and its rows on into
//! the window operator; the join's late rows are `late_stream` and `late_table` lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use runnel_engine::{
    JobPlan, JoinOutput, JoinSources, OperatorOptions, OperatorOutput, TableSource, TemporalJoin,
    WindowOperator,
};
use serde_json::Value;

use crate::support::render;

enum Step {
    Batch {
        partition: u32,
        arrival: i64,
        events: Vec<Value>,
    },
    Tick(i64),
    /// `{"at_end": P, "as_of": T}`: input P says it holds nothing that arrived up to T
    /// (without `as_of`: nothing more at all).
    AtEnd {
        partition: u32,
        as_of: i64,
    },
    Advance {
        partition: u32,
        event_time: i64,
        arrival: i64,
    },
    /// Changelog rows of the joined table's partition.
    Table {
        partition: u32,
        arrival: i64,
        events: Vec<Value>,
    },
}

/// The joined table of a join case, and its join's settings.
struct JoinedTable {
    source: TableSource,
    partitions: u32,
    out_of_orderness: Duration,
    stream_out_of_orderness: Duration,
}

struct Case {
    sql: String,
    schema: SchemaRef,
    event_time: String,
    options: OperatorOptions,
    steps: Vec<Step>,
    table: Option<JoinedTable>,
}

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn field_type(name: &str) -> DataType {
    match name {
        "string" => DataType::Utf8,
        "int64" => DataType::Int64,
        "float64" => DataType::Float64,
        "bool" => DataType::Boolean,
        "timestamp" => DataType::Timestamp(TimeUnit::Millisecond, None),
        other => panic!("unknown field type {other} in options.json"),
    }
}

fn duration(options: &Value, key: &str) -> Option<Duration> {
    options[key].as_u64().map(Duration::from_millis)
}

fn load(name: &str) -> Case {
    let dir = case_dir(name);
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|error| panic!("read {name}/{file}: {error}"))
    };
    let options: Value = serde_json::from_str(&read("options.json")).expect("options.json is JSON");
    let fields = |schema: &Value| -> Vec<Field> {
        schema
            .as_array()
            .expect("a schema is a list")
            .iter()
            .map(|field| {
                Field::new(
                    field["name"].as_str().expect("field name"),
                    field_type(field["type"].as_str().expect("field type")),
                    true,
                )
            })
            .collect()
    };
    let table = options.get("table").map(|table| {
        let text = |key: &str| table[key].as_str().map(str::to_string);
        JoinedTable {
            source: TableSource {
                name: text("name").expect("table.name"),
                schema: Arc::new(Schema::new(fields(&table["schema"]))),
                key: text("key").expect("table.key"),
                event_time: text("event_time").expect("table.event_time"),
                tombstone: text("tombstone"),
            },
            partitions: table["partitions"].as_u64().unwrap_or(1) as u32,
            out_of_orderness: duration(table, "out_of_orderness_ms").unwrap_or_default(),
            stream_out_of_orderness: duration(table, "stream_out_of_orderness_ms")
                .unwrap_or(Duration::MAX),
        }
    });
    let fields = fields(&options["schema"]);
    let mut steps: Vec<Step> = Vec::new();
    for (line_idx, line) in read("input.jsonl").lines().enumerate() {
        if line.trim().is_empty() || line.starts_with("//") {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("{name}/input.jsonl line {}: {error}", line_idx + 1));
        if let Some(arrival) = value["tick"].as_i64() {
            steps.push(Step::Tick(arrival));
            continue;
        }
        if let Some(partition) = value["at_end"].as_u64() {
            steps.push(Step::AtEnd {
                partition: partition as u32,
                as_of: value["as_of"].as_i64().unwrap_or(i64::MAX),
            });
            continue;
        }
        if let Some(partition) = value["advance"].as_u64() {
            steps.push(Step::Advance {
                partition: partition as u32,
                event_time: value["to"].as_i64().expect("advance has `to`"),
                arrival: value["at"].as_i64().unwrap_or(0),
            });
            continue;
        }
        let arrival = value["at"].as_i64().unwrap_or(0);
        let event = value["e"].clone();
        if let Some(partition) = value["t"].as_u64() {
            let partition = partition as u32;
            match steps.last_mut() {
                Some(Step::Table {
                    partition: last_partition,
                    arrival: last_arrival,
                    events,
                }) if *last_partition == partition && *last_arrival == arrival => {
                    events.push(event)
                }
                _ => steps.push(Step::Table {
                    partition,
                    arrival,
                    events: vec![event],
                }),
            }
            continue;
        }
        let partition = value["p"].as_u64().unwrap_or(0) as u32;
        match steps.last_mut() {
            Some(Step::Batch {
                partition: last_partition,
                arrival: last_arrival,
                events,
            }) if *last_partition == partition && *last_arrival == arrival => events.push(event),
            _ => steps.push(Step::Batch {
                partition,
                arrival,
                events: vec![event],
            }),
        }
    }
    Case {
        sql: read("job.sql"),
        schema: Arc::new(Schema::new(fields)),
        event_time: options["event_time"]
            .as_str()
            .unwrap_or("event_time")
            .to_string(),
        options: OperatorOptions {
            partitions: options["partitions"].as_u64().unwrap_or(1) as u32,
            max_out_of_orderness: duration(&options, "max_out_of_orderness_ms").unwrap_or_default(),
            allowed_lateness: duration(&options, "allowed_lateness_ms").unwrap_or_default(),
            idle_timeout: duration(&options, "idle_timeout_ms"),
            early_emit_interval: duration(&options, "early_emit_ms"),
        },
        steps,
        table,
    }
}

fn to_batch(schema: &SchemaRef, events: &[Value]) -> RecordBatch {
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .build_decoder()
        .expect("json decoder");
    decoder.serialize(events).expect("events match the schema");
    decoder.flush().expect("flush").expect("a batch")
}

/// Runs the case; with `split`, every event is its own batch. Returns (results and late
/// events, errors), rendered.
fn run(case: &Case, split: bool) -> (String, String) {
    let sources = JoinSources {
        tables: case
            .table
            .iter()
            .map(|table| table.source.clone())
            .collect(),
        streams: Vec::new(),
    };
    let plan = Arc::new(
        JobPlan::compile_joined(
            &case.sql,
            Arc::clone(&case.schema),
            &case.event_time,
            &sources,
            &runnel_engine::JobLimits::default(),
        )
        .expect("job compiles"),
    );
    let mut join = match (&case.table, plan.join()) {
        (Some(table), Some(join_plan)) => Some(
            TemporalJoin::new(
                join_plan
                    .temporal_join_spec(
                        case.schema.index_of(&case.event_time).expect("event time"),
                        table.partitions,
                        table.out_of_orderness,
                        table.stream_out_of_orderness,
                    )
                    .expect("an AS OF join"),
            )
            .expect("join"),
        ),
        _ => None,
    };
    let last_arrival = case
        .steps
        .iter()
        .map(|step| match step {
            Step::Batch { arrival, .. } | Step::Table { arrival, .. } | Step::Tick(arrival) => {
                *arrival
            }
            Step::Advance { arrival, .. } => *arrival,
            Step::AtEnd { .. } => 0,
        })
        .max()
        .unwrap_or(0);
    let mut operator = WindowOperator::new(Arc::clone(&plan), case.options).expect("operator");
    let mut output = OperatorOutput::default();
    let (mut late_stream, mut late_table) = (Vec::new(), Vec::new());
    let mut joined = |joined: JoinOutput,
                      operator: &mut WindowOperator,
                      output: &mut OperatorOutput,
                      arrival: i64| {
        late_stream.extend(joined.late_stream);
        late_table.extend(joined.late_table);
        for error in joined.errors {
            output.errors.push(error);
        }
        for rows in &joined.rows {
            let rows = plan.joined_rows(rows).expect("joined rows");
            output.append(operator.process(0, &rows, arrival).expect("process"));
        }
    };
    let chunks = |events: &[Value]| -> Vec<Vec<Value>> {
        if split {
            events.chunks(1).map(<[Value]>::to_vec).collect()
        } else {
            vec![events.to_vec()]
        }
    };
    for step in &case.steps {
        match step {
            Step::Tick(arrival) => output.append(operator.tick(*arrival).expect("tick")),
            Step::AtEnd { partition, as_of } => output.append(
                operator
                    .input_at_end(*partition, *as_of)
                    .expect("input at end"),
            ),
            Step::Advance {
                partition,
                event_time,
                arrival,
            } => output.append(
                operator
                    .advance_partition(*partition, *event_time, *arrival)
                    .expect("advance"),
            ),
            Step::Table {
                partition,
                arrival,
                events,
            } => {
                let (join, table) = (
                    join.as_mut().expect("a join case has a table"),
                    case.table.as_ref().expect("a join case has a table"),
                );
                for chunk in chunks(events) {
                    let batch = to_batch(&table.source.schema, &chunk);
                    let out = join.process_table(*partition, &batch).expect("table rows");
                    joined(out, &mut operator, &mut output, *arrival);
                }
            }
            Step::Batch {
                partition,
                arrival,
                events,
            } => {
                for chunk in chunks(events) {
                    let batch = to_batch(&case.schema, &chunk);
                    match join.as_mut() {
                        Some(join) => {
                            let out = join.process_stream(&batch).expect("stream rows");
                            joined(out, &mut operator, &mut output, *arrival);
                        }
                        None => output.append(
                            operator
                                .process(*partition, &batch, *arrival)
                                .expect("process"),
                        ),
                    }
                }
            }
        }
    }
    if let Some(join) = join.as_mut() {
        let out = join.finish().expect("join finish");
        joined(out, &mut operator, &mut output, last_arrival);
    }
    output.append(operator.finish().expect("finish"));
    let mut text = String::new();
    render(&output.results, "result", &mut text);
    render(&output.late_events, "late", &mut text);
    render(&late_stream, "late_stream", &mut text);
    render(&late_table, "late_table", &mut text);
    let mut errors = String::new();
    for error in &output.errors {
        errors.push_str(&format!(
            "error partition={} row={} {}\n",
            error.partition, error.row, error.reason
        ));
    }
    (text, errors)
}

#[track_caller]
fn check(name: &str) {
    let case = load(name);
    let (text, errors) = run(&case, false);
    let (split_text, _) = run(&case, true);
    assert_eq!(
        text, split_text,
        "{name}: one event per batch must give the same results and late events"
    );
    let actual = format!("{text}{errors}");
    let expected_path = case_dir(name).join("expected.jsonl");
    if std::env::var("UPDATE_EXPECT").as_deref() == Ok("1") {
        std::fs::write(&expected_path, &actual).expect("write expected.jsonl");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|error| {
        panic!("read {name}/expected.jsonl ({error}); run with UPDATE_EXPECT=1 to create it")
    });
    assert_eq!(
        actual, expected,
        "{name}: output differs from expected.jsonl (UPDATE_EXPECT=1 rewrites it)"
    );
}

macro_rules! golden {
    ($($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                check(stringify!($case));
            }
        )*
    };
}

golden!(
    tumble_basic,
    tumble_late_and_very_late,
    hop_basic,
    idle_partitions,
    idle_partitions_catching_up,
    idle_partitions_stale_end,
    partition_progress,
    early_emission,
    expressions_and_aggregates,
    poison_events,
    session_merge,
    session_late,
    session_gap_boundaries,
    join_table_versions,
    join_left_late_rows,
);

/// Recompute leaves out the events live reports as errors (failing expressions, unusable
/// event times) and so gives live's results over the poison case, where no event was late.
#[test]
fn recompute_of_poison_events_gives_the_live_results() {
    let case = load("poison_events");
    let plan = JobPlan::compile(
        &case.sql,
        Arc::clone(&case.schema),
        &case.event_time,
        &runnel_engine::JobLimits::default(),
    )
    .expect("job compiles");
    let events: Vec<Value> = case
        .steps
        .iter()
        .flat_map(|step| match step {
            Step::Batch { events, .. } => events.clone(),
            _ => Vec::new(),
        })
        .collect();
    let recomputed = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(async {
            let context = datafusion::prelude::SessionContext::new();
            context
                .register_batch("history", to_batch(&case.schema, &events))
                .expect("register");
            runnel_engine::recompute(&plan, &context, "history")
                .await
                .expect("recompute goes past the poison events")
        });
    let mut recomputed_text = String::new();
    render(&recomputed, "result", &mut recomputed_text);
    let (live, _) = run(&case, false);
    let live_results: String = live
        .lines()
        .filter(|line| line.starts_with("result "))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(!live_results.is_empty());
    assert_eq!(recomputed_text, live_results);
}
