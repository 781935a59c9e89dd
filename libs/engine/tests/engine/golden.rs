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
//! A join case's `options.json` has a `table` or a `stream`, the other input of the join,
//! and its `input.jsonl` that input's rows besides the stream's. The join is driven as
//! `runnel run` drives it (the engine's `LiveJoin`: stream rows through `JoinPlan::prefilter` first), and its rows
//! go on into the window operator as its one input (partition 0), in the order the join
//! lets them out; an interval join's left input has the case's `partitions` (an AS OF join
//! takes stream rows without a partition).
//! - A `table` (`name`, `schema`, `key`, `event_time`, optional `tombstone`, `partitions`,
//!   `out_of_orderness_ms`, `stream_out_of_orderness_ms`) is joined AS OF by a
//!   `TemporalJoin`; its changelog rows are `{"t": partition, "at": arrival_ms, "e": {row}}`
//!   lines, and the join's late rows `late_stream` and `late_table` lines.
//! - A `stream` (`name`, `schema`, `event_time`, `partitions`) is joined within an interval
//!   by an `IntervalJoin` (the stream's rows on its left) with the job's
//!   `max_out_of_orderness_ms` and `allowed_lateness_ms`; its rows are `{"r": partition,
//!   "at": arrival_ms, "e": {row}}` lines. The join's rows are held in a `TimeOrder` and let
//!   out up to `JoinPlan::release_before` the join's watermark after each call; its late rows
//!   are `late_left` and `late_right` lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use runnel_engine::{
    JobPlan, JoinSources, LiveJoin, LiveJoinOptions, LiveJoinOutput, OperatorOptions,
    OperatorOutput, StreamSource, TableSource, WindowOperator,
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
    /// Rows of a partition of the join's other input: the table's changelog (`t` lines) or
    /// the second stream (`r` lines).
    Joined {
        partition: u32,
        arrival: i64,
        events: Vec<Value>,
    },
}

/// The other input of a join case, and its join's settings.
enum JoinedInput {
    Table {
        source: TableSource,
        partitions: u32,
        out_of_orderness: Duration,
        stream_out_of_orderness: Duration,
    },
    /// Joined within an interval, with the job's out-of-orderness and lateness.
    Stream {
        source: StreamSource,
        partitions: u32,
    },
}

impl JoinedInput {
    fn schema(&self) -> &SchemaRef {
        match self {
            JoinedInput::Table { source, .. } => &source.schema,
            JoinedInput::Stream { source, .. } => &source.schema,
        }
    }

    /// The `input.jsonl` key of its rows' lines.
    fn line_key(&self) -> &'static str {
        match self {
            JoinedInput::Table { .. } => "t",
            JoinedInput::Stream { .. } => "r",
        }
    }
}

struct Case {
    sql: String,
    schema: SchemaRef,
    event_time: String,
    options: OperatorOptions,
    steps: Vec<Step>,
    joined: Option<JoinedInput>,
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
    let text = |input: &Value, key: &str| input[key].as_str().map(str::to_string);
    let partitions = |input: &Value| input["partitions"].as_u64().unwrap_or(1) as u32;
    let joined = match (options.get("table"), options.get("stream")) {
        (Some(_), Some(_)) => panic!("{name}/options.json: a job joins a table or a stream"),
        (Some(table), None) => Some(JoinedInput::Table {
            source: TableSource {
                name: text(table, "name").expect("table.name"),
                schema: Arc::new(Schema::new(fields(&table["schema"]))),
                key: text(table, "key").expect("table.key"),
                event_time: text(table, "event_time").expect("table.event_time"),
                tombstone: text(table, "tombstone"),
            },
            partitions: partitions(table),
            out_of_orderness: duration(table, "out_of_orderness_ms").unwrap_or_default(),
            stream_out_of_orderness: duration(table, "stream_out_of_orderness_ms")
                .unwrap_or(Duration::MAX),
        }),
        (None, Some(stream)) => Some(JoinedInput::Stream {
            source: StreamSource {
                name: text(stream, "name").expect("stream.name"),
                schema: Arc::new(Schema::new(fields(&stream["schema"]))),
                event_time: text(stream, "event_time").expect("stream.event_time"),
            },
            partitions: partitions(stream),
        }),
        (None, None) => None,
    };
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
        let joined_key = joined.as_ref().map(JoinedInput::line_key);
        for key in ["t", "r"] {
            assert!(
                value.get(key).is_none() || joined_key == Some(key),
                "{name}/input.jsonl line {}: `{key}` rows, but options.json has no {}",
                line_idx + 1,
                if key == "t" { "table" } else { "stream" },
            );
        }
        if let Some(partition) = joined_key.and_then(|key| value[key].as_u64()) {
            let partition = partition as u32;
            match steps.last_mut() {
                Some(Step::Joined {
                    partition: last_partition,
                    arrival: last_arrival,
                    events,
                }) if *last_partition == partition && *last_arrival == arrival => {
                    events.push(event)
                }
                _ => steps.push(Step::Joined {
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
        joined,
    }
}

fn to_batch(schema: &SchemaRef, events: &[Value]) -> RecordBatch {
    let mut decoder = arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .build_decoder()
        .expect("json decoder");
    decoder.serialize(events).expect("events match the schema");
    decoder.flush().expect("flush").expect("a batch")
}

/// A join case's live join (the engine's `LiveJoin`, as `runnel run` drives it), and the
/// names of its late lines: the stream's late rows, then the other input's.
fn live_join(case: &Case, plan: &Arc<JobPlan>) -> Option<(LiveJoin, [&'static str; 2])> {
    let (options, names) = match case.joined.as_ref()? {
        JoinedInput::Table {
            partitions,
            out_of_orderness,
            stream_out_of_orderness,
            ..
        } => (
            LiveJoinOptions {
                stream_partitions: 1,
                other_partitions: *partitions,
                table_out_of_orderness: *out_of_orderness,
                stream_out_of_orderness: *stream_out_of_orderness,
                max_out_of_orderness: case.options.max_out_of_orderness,
                allowed_lateness: case.options.allowed_lateness,
            },
            ["late_stream", "late_table"],
        ),
        JoinedInput::Stream { partitions, .. } => (
            LiveJoinOptions {
                stream_partitions: case.options.partitions,
                other_partitions: *partitions,
                table_out_of_orderness: Duration::ZERO,
                stream_out_of_orderness: Duration::MAX,
                max_out_of_orderness: case.options.max_out_of_orderness,
                allowed_lateness: case.options.allowed_lateness,
            },
            ["late_left", "late_right"],
        ),
    };
    Some((
        LiveJoin::new(Arc::clone(plan), &options).expect("the live join"),
        names,
    ))
}

/// Runs the case; with `split`, every event is its own batch. Returns (results and late
/// events, errors), rendered.
fn run(case: &Case, split: bool) -> (String, String) {
    let mut sources = JoinSources::default();
    match &case.joined {
        Some(JoinedInput::Table { source, .. }) => sources.tables.push(source.clone()),
        Some(JoinedInput::Stream { source, .. }) => sources.streams.push(source.clone()),
        None => {}
    }
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
    let (mut join, late_names) = match live_join(case, &plan) {
        Some((join, names)) => (Some(join), names),
        None => (None, ["late_stream", "late_table"]),
    };
    let last_arrival = case
        .steps
        .iter()
        .map(|step| match step {
            Step::Batch { arrival, .. } | Step::Joined { arrival, .. } | Step::Tick(arrival) => {
                *arrival
            }
            Step::Advance { arrival, .. } => *arrival,
            Step::AtEnd { .. } => 0,
        })
        .max()
        .unwrap_or(0);
    // In a join case the window operator's one input is the join.
    let options = match join {
        Some(_) => OperatorOptions {
            partitions: 1,
            ..case.options
        },
        None => case.options,
    };
    let mut operator = WindowOperator::new(Arc::clone(&plan), options).expect("operator");
    let mut output = OperatorOutput::default();
    let mut late: [Vec<RecordBatch>; 2] = Default::default();
    let mut joined = |step: LiveJoinOutput,
                      operator: &mut WindowOperator,
                      output: &mut OperatorOutput,
                      arrival: i64| {
        late[0].extend(step.late_stream);
        late[1].extend(step.late_other);
        output.errors.extend(step.errors);
        for rows in &step.rows {
            output.append(operator.process(0, rows, arrival).expect("process"));
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
            Step::Joined {
                partition,
                arrival,
                events,
            } => {
                let (join, other) = (
                    join.as_mut().expect("a join case"),
                    case.joined.as_ref().expect("a join case"),
                );
                for chunk in chunks(events) {
                    let batch = to_batch(other.schema(), &chunk);
                    let step = join
                        .other(*partition, &batch)
                        .expect("the other input's rows");
                    joined(step, &mut operator, &mut output, *arrival);
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
                            let step = join.stream(*partition, &batch).expect("stream rows");
                            joined(step, &mut operator, &mut output, *arrival);
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
    if let Some(live) = join.as_mut() {
        let step = live.finish().expect("the join's end");
        joined(step, &mut operator, &mut output, last_arrival);
        assert_eq!(live.waiting(), 0, "rows held by the join after the end");
    }
    output.append(operator.finish().expect("finish"));
    let mut text = String::new();
    render(&output.results, "result", &mut text);
    render(&output.late_events, "late", &mut text);
    for (name, rows) in late_names.iter().zip(&late) {
        render(rows, name, &mut text);
    }
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
    idle_partitions_all_at_end,
    partition_progress,
    early_emission,
    expressions_and_aggregates,
    poison_events,
    session_merge,
    session_late,
    session_gap_boundaries,
    join_table_versions,
    join_left_late_rows,
    join_interval_edges,
    join_interval_left_expiry,
    join_interval_late_rows,
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
