//! A job version, compiled: its identity (id, name, version), the topics and consumer groups
//! named after it, its plan, operator options and source stream.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use runnel_config::{Config, JobConfig};
use runnel_engine::{JobLimits, JobPlan, OperatorOptions};
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
}

impl Job {
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
        let input = positioned
            .project(&self.input_columns)
            .map_err(JobsError::Encode)?;
        RecordBatch::try_new(Arc::clone(&self.input_schema), input.columns().to_vec())
            .map_err(JobsError::Encode)
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
        let (stream_name, _) = JobPlan::source_of(&sql).map_err(|error| fail(error.to_string()))?;
        if let Some(joined) = JobPlan::joined_of(&sql).map_err(|error| fail(error.to_string()))? {
            return Err(fail(format!(
                "joins `{joined}`: join jobs run in `runnel run` only so far; the stream-processor, backfills and serving do not run them yet"
            )));
        }
        let stream_config = config.stream(&stream_name).ok_or_else(|| {
            fail(format!(
                "reads stream `{stream_name}`, which is not declared"
            ))
        })?;
        let stream = StreamSchema::new(stream_config);
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
        let plan = JobPlan::compile(
            &sql,
            Arc::clone(&input_schema),
            &stream_config.event_time,
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
    fn a_join_job_is_refused_by_name_until_the_services_run_joins() {
        let (config, job) = config_with_job(
            "SELECT u.country, window_start, COUNT(*) AS n \
             FROM TUMBLE(clicks, event_time, INTERVAL '1' MINUTE) AS c \
             JOIN users FOR SYSTEM_TIME AS OF c.event_time AS u ON c.user_id = u.user_id \
             GROUP BY u.country, window_start, window_end",
        );
        let error = Job::compile(&config, &job).unwrap_err().to_string();
        assert!(
            error.contains("joins `users`") && error.contains("runnel run"),
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
