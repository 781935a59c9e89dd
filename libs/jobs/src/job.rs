//! A job version, compiled: its identity (id, name, version), the topics and consumer groups
//! named after it, its plan, operator options and source stream.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef, TimeUnit};
use runnel_config::{Config, FieldConfig, FieldType, JobConfig, StreamConfig};
use runnel_engine::{
    JobLimits, JobPlan, JoinSources, OperatorOptions, StreamSource, TableSource, WindowJoinPlan,
};
use runnel_events::{INGEST_TIME_COLUMN, OFFSET_COLUMN, StreamSchema};

use crate::JobsError;

/// The topic a job's results go to.
pub fn results_topic(job: &str) -> String {
    format!("{job}.results")
}

/// The topic a job's late events go to.
pub fn late_topic(job: &str) -> String {
    format!("{job}.late")
}

/// The topic through which a job not grouped by its stream's key routes events by group.
pub fn repartition_topic(job: &str) -> String {
    format!("{job}.repartition")
}

/// The consumer group under which a job's tasks commit their checkpointed source offsets
/// (its lag is measured against them).
pub fn job_group(job: &str) -> String {
    format!("runnel-job.{job}")
}

/// The topic whose partitions a job's instances share through [`members_group`]: empty, it
/// has the stream's partition count, and owning its partition `p` means running the job's
/// task (and router) of partition `p`.
pub fn members_topic(job: &str) -> String {
    format!("{job}.members")
}

/// The consumer group that shares a job's partitions among stream-processor instances. Not
/// [`job_group`]: a group with members refuses the plain offset commits the tasks make.
pub fn members_group(job: &str) -> String {
    format!("runnel-job.{job}.members")
}

/// A job ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// This version's id (`JobConfig::id`: the name for version 1, else `<name>.v<version>`),
    /// which names its topics, consumer groups and checkpoints.
    pub name: String,
    /// The job's declared name, shared by its versions.
    pub job_name: String,
    /// The job's version.
    pub version: u32,
    /// The compiled plan; its stream schema is the declared fields plus `_offset` and
    /// `_ingest_time`, so late events say which record they were.
    pub plan: Arc<JobPlan>,
    /// Operator options; `partitions` is 1: each task owns one source partition.
    pub options: OperatorOptions,
    /// The source stream.
    pub stream: StreamSchema,
    /// Indexes of the decoded batch's columns that the plan reads (all but `_partition`).
    pub input_columns: Vec<usize>,
    /// The schema of the plan's input batches.
    pub input_schema: SchemaRef,
    /// Whether the job reads through `<job>.repartition` (it does not group by the stream's
    /// key): router tasks key each event by its group there, and the window tasks read it.
    pub repartition: bool,
    /// The `[[jobs]]` entry it was compiled from.
    pub config: JobConfig,
    /// A join job's other input: a table (`[[tables]]`), whose version as of each stream
    /// row's event time is joined with it, or a second stream, joined within an interval
    /// around each row's event time; before the windows.
    pub joined: Option<JoinedInput>,
    /// What `<job>.repartition` carries, for a repartitioned job: its stream's rows, or for a
    /// join job the joined rows (its routers join).
    pub routed: Routed,
    /// A join of two windowed aggregates on their windows: `plan` is then its left side, read
    /// from `stream` (grouped by its key: never repartitioned), and this holds the whole join
    /// and its right side's stream, which every task reads whole.
    pub window_join: Option<WindowJoined>,
}

/// A job that joins two windowed aggregates on their windows: the join, and the stream its
/// right side reads.
#[derive(Debug, Clone)]
pub struct WindowJoined {
    /// The whole join; its left side is [`Job::plan`].
    pub plan: Arc<WindowJoinPlan>,
    /// The right side's stream (`name` is the stream's).
    pub right: JoinedInput,
}

/// The rows a repartitioned job's routers write to its repartition topic, in the record
/// format, and how its window tasks read them back as the plan's input.
#[derive(Debug, Clone)]
pub struct Routed {
    /// The rows as a stream: its declared fields are what a record holds (the plan's input
    /// but `_offset` and `_ingest_time`, which the record's headers and timestamp carry).
    pub stream: StreamSchema,
    /// Indexes of the plan's input columns that are `stream`'s declared fields, in order:
    /// what a router encodes.
    pub declared_columns: Vec<usize>,
    /// Indexes of the decoded columns (`stream`'s, positioned) that make the plan's input.
    pub input_columns: Vec<usize>,
    /// The plan's input schema.
    pub input_schema: SchemaRef,
}

impl Routed {
    /// Decoded repartition records (`stream`'s positioned columns) as the plan's input.
    ///
    /// # Errors
    ///
    /// [`JobsError::Encode`]: a batch that lacks the columns.
    pub fn project(&self, positioned: &RecordBatch) -> Result<RecordBatch, JobsError> {
        project(positioned, &self.input_columns, &self.input_schema)
    }

    /// The plan's input rows as the columns a router encodes.
    ///
    /// # Errors
    ///
    /// [`JobsError::Encode`]: rows that lack the columns.
    pub fn declared(&self, rows: &RecordBatch) -> Result<RecordBatch, JobsError> {
        rows.project(&self.declared_columns)
            .map_err(JobsError::Encode)
    }

    /// The routed rows of a job that is not a join: its stream's.
    fn of_stream(
        stream: &StreamSchema,
        input_columns: &[usize],
        input_schema: &SchemaRef,
    ) -> Routed {
        Routed {
            stream: stream.clone(),
            declared_columns: (0..stream.declared().fields().len()).collect(),
            input_columns: input_columns.to_vec(),
            input_schema: Arc::clone(input_schema),
        }
    }

    /// The routed rows of a join job: the joined rows (`joined`, the plan's input) of
    /// `stream`, as a stream named after the repartition topic.
    fn of_join(job: &str, stream: &StreamConfig, joined: &SchemaRef) -> Result<Routed, String> {
        let mut schema = Vec::new();
        let mut declared_columns = Vec::new();
        for (index, field) in joined.fields().iter().enumerate() {
            if field.name() == OFFSET_COLUMN || field.name() == INGEST_TIME_COLUMN {
                continue;
            }
            let field_type = match field.data_type() {
                DataType::Utf8 => FieldType::String,
                DataType::Int64 => FieldType::Int64,
                DataType::Float64 => FieldType::Float64,
                DataType::Boolean => FieldType::Bool,
                DataType::Timestamp(TimeUnit::Millisecond, None) => FieldType::Timestamp,
                other => {
                    return Err(format!(
                        "the joined column `{}` is {other}, which its repartition topic cannot carry",
                        field.name()
                    ));
                }
            };
            schema.push(FieldConfig {
                name: field.name().clone(),
                field_type,
                nullable: true,
            });
            declared_columns.push(index);
        }
        let config = StreamConfig {
            name: repartition_topic(job),
            partitions: stream.partitions,
            key: None,
            event_time: stream.event_time.clone(),
            schema,
            max_event_time_ahead: stream.max_event_time_ahead,
            max_event_time_behind: stream.max_event_time_behind,
        };
        let routed = StreamSchema::new(&config);
        let positioned = routed.with_position();
        let input_columns = joined
            .fields()
            .iter()
            .map(|field| {
                positioned
                    .index_of(field.name())
                    .map_err(|_| format!("the joined column `{}` is not routed", field.name()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Routed {
            stream: routed,
            declared_columns,
            input_columns,
            input_schema: Arc::clone(joined),
        })
    }
}

/// The other input of a join job: a table, read from its changelog stream, or a second
/// stream.
#[derive(Debug, Clone)]
pub struct JoinedInput {
    /// Its name in the job's SQL: the table's, or the stream's.
    pub name: String,
    /// The stream it is read from: the table's changelog, or the second stream.
    pub stream: StreamSchema,
    /// That stream's partition count.
    pub partitions: u32,
    /// Indexes of that stream's decoded columns that the join reads (as
    /// [`Job::input_columns`]).
    pub input_columns: Vec<usize>,
    /// The schema of the join's batches of this input.
    pub input_schema: SchemaRef,
}

impl JoinedInput {
    /// A batch of the stream's positioned columns as the join's input.
    ///
    /// # Errors
    ///
    /// [`JobsError::Encode`]: a batch that lacks the columns.
    pub fn project(&self, positioned: &RecordBatch) -> Result<RecordBatch, JobsError> {
        project(positioned, &self.input_columns, &self.input_schema)
    }
}

/// The columns of a stream's decoded batches (declared fields, `_partition`, `_offset`,
/// `_ingest_time`) that a plan reads: all but `_partition`. Their indexes and schema.
fn plan_input(stream: &StreamSchema) -> (Vec<usize>, SchemaRef) {
    let positioned = stream.with_position();
    let input_columns: Vec<usize> = positioned
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, field)| {
            field.name() != runnel_events::PARTITION_COLUMN
                && (stream.declared().index_of(field.name()).is_ok()
                    || field.name() == OFFSET_COLUMN
                    || field.name() == INGEST_TIME_COLUMN)
        })
        .map(|(index, _)| index)
        .collect();
    let input_schema = Arc::new(Schema::new(
        input_columns
            .iter()
            .map(|&index| positioned.field(index).clone())
            .collect::<Vec<_>>(),
    ));
    (input_columns, input_schema)
}

/// `positioned`'s columns `columns`, as a batch of `schema`.
fn project(
    positioned: &RecordBatch,
    columns: &[usize],
    schema: &SchemaRef,
) -> Result<RecordBatch, JobsError> {
    let input = positioned.project(columns).map_err(JobsError::Encode)?;
    RecordBatch::try_new(Arc::clone(schema), input.columns().to_vec()).map_err(JobsError::Encode)
}

impl Job {
    /// The schema of the job's results: its window join's, or its plan's.
    pub fn result_schema(&self) -> SchemaRef {
        match &self.window_join {
            Some(window_join) => window_join.plan.result_schema(),
            None => self.plan.result_schema(),
        }
    }

    /// The job's SQL, whole (a window join's plan holds only its left side's).
    pub fn sql(&self) -> &str {
        match &self.window_join {
            Some(window_join) => window_join.plan.sql(),
            None => self.plan.sql(),
        }
    }

    /// The input a join job reads besides its stream: its table's changelog, its second
    /// stream, or its window join's right side's stream.
    pub fn other_input(&self) -> Option<&JoinedInput> {
        self.joined.as_ref().or(self
            .window_join
            .as_ref()
            .map(|window_join| &window_join.right))
    }

    /// The topic the window tasks read: the stream's, or the job's repartition topic.
    pub fn input_topic(&self) -> String {
        if self.repartition {
            repartition_topic(&self.name)
        } else {
            self.stream.name().to_string()
        }
    }

    /// A batch of the stream's positioned columns (as decoded from the log or read from the
    /// history) as the plan's input.
    ///
    /// # Errors
    ///
    /// [`JobsError::Encode`]: a batch that lacks the columns.
    pub fn project(&self, positioned: &RecordBatch) -> Result<RecordBatch, JobsError> {
        project(positioned, &self.input_columns, &self.input_schema)
    }

    /// Reads the job's SQL and compiles it against its stream.
    ///
    /// # Errors
    ///
    /// [`JobsError::Job`] naming the job: an unreadable SQL file, an undeclared
    /// stream, or SQL the engine refuses (with its position).
    pub fn compile(config: &Config, job: &JobConfig) -> Result<Job, JobsError> {
        let fail = |message: String| JobsError::Job {
            job: job.id(),
            message,
        };
        let sql = job.sql_text().map_err(|error| fail(error.to_string()))?;
        if let Some(streams) =
            WindowJoinPlan::streams_of(&sql).map_err(|error| fail(error.to_string()))?
        {
            return Job::compile_window_join(config, job, &sql, streams).map_err(fail);
        }
        let (stream_name, _) = JobPlan::source_of(&sql).map_err(|error| fail(error.to_string()))?;
        let stream_config = config.stream(&stream_name).ok_or_else(|| {
            fail(format!(
                "reads stream `{stream_name}`, which is not declared"
            ))
        })?;
        let stream = StreamSchema::new(stream_config);
        let (input_columns, input_schema) = plan_input(&stream);
        let joined = JobPlan::joined_of(&sql).map_err(|error| fail(error.to_string()))?;
        let mut sources = JoinSources::default();
        let joined = match joined {
            None => None,
            Some(joined) => {
                let (other, table) = match config.table(&joined) {
                    Some((table, changelog, key)) => (changelog, Some((table, key))),
                    None => (
                        config.stream(&joined).ok_or_else(|| {
                            fail(format!(
                                "joins `{joined}`, which the config declares neither as a table ([[tables]]) nor as a stream"
                            ))
                        })?,
                        None,
                    ),
                };
                let other_schema = StreamSchema::new(other);
                let (columns, schema) = plan_input(&other_schema);
                match table {
                    Some((table, key)) => sources.tables.push(TableSource {
                        name: table.name.clone(),
                        schema: Arc::clone(&schema),
                        key: key.to_string(),
                        event_time: other.event_time.clone(),
                        tombstone: table.tombstone.clone(),
                    }),
                    None => sources.streams.push(StreamSource {
                        name: other.name.clone(),
                        schema: Arc::clone(&schema),
                        event_time: other.event_time.clone(),
                    }),
                }
                Some(JoinedInput {
                    name: table.map_or_else(|| other.name.clone(), |(table, _)| table.name.clone()),
                    stream: other_schema,
                    partitions: other.partitions,
                    input_columns: columns,
                    input_schema: schema,
                })
            }
        };
        let plan = JobPlan::compile_joined(
            &sql,
            Arc::clone(&input_schema),
            &stream_config.event_time,
            &sources,
            &job_limits(config),
        )
        .map_err(|error| fail(error.to_string()))?;
        // A task aggregates what its input partition holds; that is every event of a group
        // only when the stream is partitioned by a column the job groups by. Otherwise the
        // events go through the repartition topic first, keyed by their group.
        let repartition = match &stream_config.key {
            Some(key) => !plan.groups_by_column(key),
            None => true,
        };
        let routed = match &joined {
            None => Routed::of_stream(&stream, &input_columns, &input_schema),
            Some(_) => {
                Routed::of_join(&job.id(), stream_config, &plan.stream_schema()).map_err(fail)?
            }
        };
        let options = OperatorOptions {
            partitions: 1,
            max_out_of_orderness: job.max_out_of_orderness,
            allowed_lateness: job.allowed_lateness,
            idle_timeout: job.idle_timeout,
            early_emit_interval: job.early_emit_interval,
        };
        Ok(Job {
            repartition,
            name: job.id(),
            job_name: job.name.clone(),
            version: job.version,
            plan: Arc::new(plan),
            options,
            stream,
            input_columns,
            input_schema,
            config: job.clone(),
            joined,
            routed,
            window_join: None,
        })
    }

    /// Compiles a join of two windowed aggregates on their windows, whose sides read
    /// `streams` (left, then right: stream and event time column). Each task runs the left
    /// side over its own partition, so the left must group by its stream's key; it reads the
    /// right side's stream whole.
    fn compile_window_join(
        config: &Config,
        job: &JobConfig,
        sql: &str,
        streams: [(String, String); 2],
    ) -> Result<Job, String> {
        let [(left_name, _), (right_name, _)] = &streams;
        let declared = |name: &str| {
            config
                .stream(name)
                .ok_or_else(|| format!("reads stream `{name}`, which is not declared"))
        };
        let (left_config, right_config) = (declared(left_name)?, declared(right_name)?);
        let stream = StreamSchema::new(left_config);
        let (input_columns, input_schema) = plan_input(&stream);
        let right = StreamSchema::new(right_config);
        let (right_columns, right_schema) = plan_input(&right);
        let plan = WindowJoinPlan::compile(
            sql,
            [
                (Arc::clone(&input_schema), &left_config.event_time),
                (Arc::clone(&right_schema), &right_config.event_time),
            ],
            &job_limits(config),
        )
        .map_err(|error| error.to_string())?;
        let grouped_by_key = left_config
            .key
            .as_ref()
            .is_some_and(|key| plan.left().groups_by_column(key));
        if !grouped_by_key {
            return Err(format!(
                "joins two windowed aggregates, and its left side groups by {}: each task runs the left side over its own partition, so it must group by its stream's key so far",
                match &left_config.key {
                    Some(key) => format!("no column that is the key `{key}` of `{left_name}`"),
                    None => format!("columns of `{left_name}`, which has no key"),
                }
            ));
        }
        if job.early_emit_interval.is_some() {
            return Err(
                "joins two windowed aggregates, which joins final results only: early-emit-interval does not apply"
                    .to_string(),
            );
        }
        Ok(Job {
            repartition: false,
            name: job.id(),
            job_name: job.name.clone(),
            version: job.version,
            plan: Arc::clone(plan.left()),
            options: OperatorOptions {
                partitions: 1,
                max_out_of_orderness: job.max_out_of_orderness,
                allowed_lateness: job.allowed_lateness,
                idle_timeout: job.idle_timeout,
                early_emit_interval: None,
            },
            routed: Routed::of_stream(&stream, &input_columns, &input_schema),
            stream,
            input_columns,
            input_schema,
            config: job.clone(),
            joined: None,
            window_join: Some(WindowJoined {
                plan: Arc::new(plan),
                right: JoinedInput {
                    name: right_config.name.clone(),
                    stream: right,
                    partitions: right_config.partitions,
                    input_columns: right_columns,
                    input_schema: right_schema,
                },
            }),
        })
    }
}

/// The engine's limits on what a job may ask for, from `config.limits`.
pub fn job_limits(config: &Config) -> JobLimits {
    JobLimits {
        max_windows_per_event: config.limits.max_windows_per_event,
        max_window_interval_ms: config.limits.max_window_interval_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_job(sql: &str) -> (Config, JobConfig) {
        let mut config = Config::embedded_defaults();
        let job = JobConfig {
            name: "j".to_string(),
            version: 1,
            sql: Some(sql.to_string()),
            sql_file: None,
            embedded_sql: None,
            max_out_of_orderness: std::time::Duration::ZERO,
            allowed_lateness: std::time::Duration::ZERO,
            early_emit_interval: None,
            idle_timeout: Some(std::time::Duration::from_secs(30)),
        };
        config.jobs = vec![job.clone()];
        (config, job)
    }

    #[test]
    fn a_job_grouped_by_the_streams_key_compiles_with_offsets_in_its_input() {
        let (config, job) = config_with_job(
            "SELECT user_id, page, window_start, COUNT(*) AS n \
             FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) \
             GROUP BY user_id, page, window_start, window_end",
        );
        let job = Job::compile(&config, &job).expect("compiles");
        assert!(!job.repartition);
        assert_eq!(job.input_topic(), "clicks");
        let names: Vec<&str> = job
            .input_schema
            .fields()
            .iter()
            .map(|field| field.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "event_time",
                "user_id",
                "page",
                "country",
                "duration_ms",
                "_offset",
                "_ingest_time"
            ]
        );
    }

    #[test]
    fn a_job_not_grouped_by_the_streams_key_reads_through_its_repartition_topic() {
        let (config, job) = config_with_job(
            "SELECT page, window_start, COUNT(*) AS n \
             FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) \
             GROUP BY page, window_start, window_end",
        );
        let job = Job::compile(&config, &job).expect("compiles");
        assert!(job.repartition);
        assert_eq!(job.input_topic(), "j.repartition");
        assert_eq!(
            job.options.idle_timeout,
            Some(std::time::Duration::from_secs(30))
        );
    }

    #[test]
    fn a_join_job_grouped_by_the_streams_key_reads_the_stream_and_the_tables_changelog() {
        let (config, job) = config_with_job(
            "SELECT c.user_id, u.plan, window_start, COUNT(*) AS n \
             FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c \
             JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id \
             GROUP BY c.user_id, u.plan, window_start, window_end",
        );
        let job = Job::compile(&config, &job).expect("compiles");
        assert!(!job.repartition);
        let table = job.joined.as_ref().expect("a table");
        assert_eq!(
            (table.name.as_str(), table.stream.name(), table.partitions),
            ("users", "user_updates", 4)
        );
        assert!(table.input_schema.index_of("_offset").is_ok());
        assert!(job.plan.join().is_some());
    }

    #[test]
    fn a_join_job_grouped_by_a_table_column_routes_the_joined_rows() {
        let (config, job) = config_with_job(
            "SELECT u.plan, window_start, COUNT(*) AS n \
             FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c \
             JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id \
             GROUP BY u.plan, window_start, window_end",
        );
        let job = Job::compile(&config, &job).expect("compiles");
        assert!(job.repartition);
        assert_eq!(job.routed.stream.name(), "j.repartition");
        let routed: Vec<&str> = job
            .routed
            .stream
            .declared()
            .fields()
            .iter()
            .map(|field| field.name().as_str())
            .collect();
        // The stream's fields, then the table's the job reads; `_offset` and `_ingest_time`
        // travel as the record's position.
        assert!(
            routed.starts_with(&["event_time", "user_id", "page", "country", "duration_ms"]),
            "{routed:?}"
        );
        assert!(routed.contains(&"plan"), "{routed:?}");
        assert!(!routed.contains(&"_offset"), "{routed:?}");
        assert_eq!(
            job.routed.input_schema.fields().len(),
            job.plan.stream_schema().fields().len()
        );
    }

    #[test]
    fn an_interval_join_grouped_by_another_column_routes_the_joined_rows() {
        let sql = |group: &str| {
            format!(
                "SELECT {group}, window_start, COUNT(*) AS n \
                 FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c \
                 JOIN user_updates AS u ON c.user_id = u.user_id \
                 AND u.event_time BETWEEN c.event_time AND c.event_time + INTERVAL '1' MINUTE \
                 GROUP BY {group}, window_start, window_end"
            )
        };
        let (config, job) = config_with_job(&sql("c.user_id"));
        let job = Job::compile(&config, &job).expect("compiles");
        assert!(!job.repartition);
        let joined = job.joined.as_ref().expect("the second stream");
        assert_eq!(
            (joined.name.as_str(), joined.partitions),
            ("user_updates", 4)
        );
        let (config, job) = config_with_job(&sql("c.page"));
        let job = Job::compile(&config, &job).expect("compiles");
        assert!(job.repartition);
        assert_eq!(job.routed.stream.name(), "j.repartition");
    }

    #[test]
    fn a_join_of_two_windowed_aggregates_runs_when_its_left_groups_by_the_streams_key() {
        let sql = |group: &str| {
            format!(
                "SELECT c.{group}, c.window_start, c.n, u.updates \
                 FROM (SELECT {group}, window_start, window_end, COUNT(*) AS n \
                       FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) \
                       GROUP BY {group}, window_start, window_end) AS c \
                 JOIN (SELECT user_id, window_start, window_end, COUNT(*) AS updates \
                       FROM TUMBLE(user_updates, event_time, INTERVAL '1' MINUTE) \
                       GROUP BY user_id, window_start, window_end) AS u \
                 ON c.{group} = u.user_id AND c.window_start = u.window_start"
            )
        };
        let (config, job) = config_with_job(&sql("user_id"));
        let job = Job::compile(&config, &job).expect("compiles");
        assert!(!job.repartition && job.joined.is_none());
        let window_join = job.window_join.as_ref().expect("a window join");
        assert_eq!(
            (
                window_join.right.name.as_str(),
                window_join.right.partitions
            ),
            ("user_updates", 4)
        );
        assert_eq!(
            job.other_input().map(|input| input.name.as_str()),
            Some("user_updates")
        );
        assert_eq!(job.result_schema(), window_join.plan.result_schema());
        assert!(job.sql().contains("JOIN (SELECT"), "{}", job.sql());
        let (config, job) = config_with_job(&sql("page"));
        let error = Job::compile(&config, &job).unwrap_err().to_string();
        assert!(
            error.contains("joins two windowed aggregates") && error.contains("stream's key"),
            "{error}"
        );
    }

    #[test]
    fn an_undeclared_stream_is_named() {
        let (config, job) = config_with_job(
            "SELECT user_id, window_start, COUNT(*) AS n \
             FROM TUMBLE(nope, event_time, INTERVAL '1' MINUTE) \
             GROUP BY user_id, window_start, window_end",
        );
        let error = Job::compile(&config, &job).unwrap_err().to_string();
        assert!(
            error.contains("`nope`") && error.contains("not declared"),
            "{error}"
        );
    }
}
