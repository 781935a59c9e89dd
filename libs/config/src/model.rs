//! The typed configuration structs, one section per concern, and their validation.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;

/// The whole runnel configuration (version "1").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Where the log, history and checkpoints are stored.
    pub storage: StorageConfig,
    /// The ingest service: validation limits and backpressure.
    pub ingest: IngestConfig,
    /// The archiver: the log copied into Parquet history on the object store.
    pub archive: ArchiveConfig,
    /// The declared event streams. Each stream is a topic of the log.
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    /// The stream-processor service: checkpoints and metrics.
    pub stream_processor: StreamProcessorConfig,
    /// The windowed SQL jobs the stream-processor runs.
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
    /// The serving service: the gRPC query API.
    pub serving: ServingConfig,
}

/// The serving service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServingConfig {
    /// Address the gRPC query API (`runnel.serving.v1.Serving`, health, reflection) listens on.
    pub listen: String,
    /// Keys per page of `GetWindow` when the request leaves it at 0.
    pub default_page_size: u32,
    /// The largest page (and `TopK` k) a request may ask for.
    pub max_page_size: u32,
    /// How often batch views and the active version of each job are looked up.
    #[serde(with = "humantime_serde")]
    pub view_poll_interval: Duration,
    /// Requests must carry `authorization: Bearer <token>`; unset, none is asked for.
    /// Set it through `RUNNEL__SERVING__AUTH_TOKEN` rather than a file kept in version control.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// TLS: the server's certificate chain (PEM); with `tls-key`, the port speaks TLS only.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS: the server's private key (PEM).
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
}

/// The stream-processor service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StreamProcessorConfig {
    /// How often each task checkpoints its operator state and source offset.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Complete checkpoints kept per task; older ones are deleted.
    pub checkpoints_to_keep: u32,
    /// Object-store folder of the checkpoints: `<prefix>/<job>/<partition>/<epoch>/`.
    pub checkpoint_prefix: String,
    /// Log records read at once per task.
    pub read_batch_records: usize,
    /// Address of the HTTP endpoint serving `GET /metrics` (Prometheus text format) and
    /// `GET /status` (the jobs' status as JSON); port 0 picks a free port.
    pub metrics_listen: String,
}

/// A windowed SQL job.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JobConfig {
    /// Job name: letters, digits, `.`, `_`, `-`. Its versions share it.
    pub name: String,
    /// The job's version, from 1. Versions of one job run side by side, each with its own
    /// topics and checkpoints (see [`JobConfig::id`]); serving answers from the active one.
    #[serde(default = "first_version")]
    pub version: u32,
    /// The job's SQL, inline.
    #[serde(default)]
    pub sql: Option<String>,
    /// A file holding the job's SQL (relative to the working directory), instead of `sql`.
    #[serde(default)]
    pub sql_file: Option<std::path::PathBuf>,
    /// How far behind its partition's largest event time an event may be and still count
    /// as on time.
    #[serde(default, with = "humantime_serde")]
    pub max_out_of_orderness: Duration,
    /// How long after a window fired late events still update it.
    #[serde(default, with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Early (non-final) results each time the watermark crosses a multiple of this.
    #[serde(default, with = "humantime_serde")]
    pub early_emit_interval: Option<Duration>,
    /// For a job read through its repartition topic: a source partition that sent nothing
    /// for this long (log time) stops holding the watermark back. Unset, a silent source
    /// partition holds it back until it sends again.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

fn first_version() -> u32 {
    1
}

impl JobConfig {
    /// The name of this version of the job, which names its topics (`<id>.results`,
    /// `<id>.late`), checkpoints and batch views: the name itself for version 1, so that a job
    /// declared without a version keeps its topics when a second version is added, and
    /// `<name>.v<version>` after.
    pub fn id(&self) -> String {
        if self.version == 1 {
            self.name.clone()
        } else {
            format!("{}.v{}", self.name, self.version)
        }
    }
}

/// The ingest service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct IngestConfig {
    /// Address the gRPC and HTTP APIs listen on (one port serves both).
    pub listen: String,
    /// An event larger than this many bytes (as received) is rejected.
    pub max_event_bytes: usize,
    /// A request (HTTP body or gRPC message) larger than this is refused whole.
    pub max_request_bytes: usize,
    /// Bytes of requests being validated and appended at once; over it, requests are
    /// answered 429 / RESOURCE_EXHAUSTED with a retry hint.
    pub max_in_flight_bytes: usize,
    /// The retry hint sent with 429 / RESOURCE_EXHAUSTED.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Events whose event time is further than this ahead of the service's clock are rejected.
    #[serde(with = "humantime_serde")]
    pub max_event_time_ahead: Duration,
    /// Events whose event time is further than this behind the service's clock are
    /// rejected; unset, any past event time is accepted.
    #[serde(default, with = "humantime_serde")]
    pub max_event_time_behind: Option<Duration>,
    /// Whether the ingest service runs the archiver as a background task.
    pub run_archiver: bool,
    /// Requests must carry `authorization: Bearer <token>`; unset, none is asked for.
    /// Set it through `RUNNEL__INGEST__AUTH_TOKEN` rather than a file kept in version control.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// TLS: the server's certificate chain (PEM); with `tls-key`, the port speaks TLS only.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS: the server's private key (PEM).
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
}

/// The archiver: copies every stream's log partitions into Parquet files on the object store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Folder (object-store prefix) of the history: `<prefix>/<stream>/date=.../*.parquet`.
    pub prefix: String,
    /// A file rolls once the log records it holds reach this many bytes.
    pub target_file_bytes: u64,
    /// A file rolls once its records span this much ingest time, or once its first record
    /// is this old and the archiver has caught up with the log.
    #[serde(with = "humantime_serde")]
    pub max_file_age: Duration,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd compression level of the Parquet pages.
    pub zstd_level: i32,
    /// How long the archiver waits for new records before checking file age again.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

/// The storage layer: the log and the object store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageConfig {
    /// Root folder for local state (the embedded log lives in `<data-dir>/log`).
    pub data_dir: PathBuf,
    /// Object store for history, checkpoints and batch views: `file://...` or `s3://...`;
    /// defaults to `file://<data-dir>/objects` (see [`Config::object_store_url`]).
    #[serde(default)]
    pub object_store_url: Option<String>,
    /// Client options of the object store, over the standard `AWS_*` environment variables:
    /// for S3, keys such as `aws_endpoint`, `aws_region`, `aws_access_key_id`,
    /// `aws_secret_access_key`, `aws_allow_http`.
    #[serde(default)]
    pub object_store_options: BTreeMap<String, String>,
    /// The partitioned log.
    pub log: LogConfig,
}

/// Which log backend to use, and the settings of each.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LogConfig {
    /// `embedded` (local segment files) or `kafka`.
    pub backend: LogBackend,
    /// Settings of the embedded backend.
    pub embedded: EmbeddedLogConfig,
    /// Settings of the Kafka backend.
    pub kafka: KafkaLogConfig,
}

/// The log backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogBackend {
    /// Partitioned segment files on local disk.
    Embedded,
    /// A Kafka-protocol cluster, through rdkafka.
    Kafka,
}

/// Settings of the embedded log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    /// Folder of the segment files; defaults to `<data-dir>/log`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A segment rolls once it holds this many bytes.
    pub segment_bytes: u64,
    /// One index entry is written per this many bytes of records.
    pub index_interval_bytes: u32,
    /// Oldest segments of a partition are deleted while the partition holds more than this.
    pub retention_bytes: u64,
    /// Segments whose newest record was appended longer ago than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub retention_check_interval: Duration,
    /// Consumer groups that hold retention back: no segment is deleted before every one of
    /// these groups that committed on its partition has committed past it. The archiver's
    /// group (`runnel-archiver`) is here by default, so the log keeps what is not yet in the
    /// Parquet history.
    #[serde(default)]
    pub retention_holds: Vec<String>,
}

/// Settings of the Kafka backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KafkaLogConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Client id sent to the brokers.
    pub client_id: String,
    /// Replication factor of topics runnel creates.
    pub replication_factor: i32,
    /// Timeout of metadata, admin and commit requests.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a consumer-group member may go silent before the group hands its partitions
    /// to the others (librdkafka's `session.timeout.ms`; heartbeats go at a fifth of it).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long a group waits for its members to rejoin when it rebalances, and so the
    /// longest a member may take to let go of revoked partitions (librdkafka's
    /// `max.poll.interval.ms`, the group's rebalance timeout). At least `session-timeout`.
    #[serde(with = "humantime_serde")]
    pub rebalance_timeout: Duration,
    /// Extra librdkafka properties passed to every client, e.g. `security.protocol`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// A declared stream: a topic of the log with a schema.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StreamConfig {
    /// Stream and topic name: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Number of log partitions.
    pub partitions: u32,
    /// Field whose value is the record key (partitioning); none means round robin.
    #[serde(default)]
    pub key: Option<String>,
    /// Field that holds the event time; must be a `timestamp` or `int64` (epoch milliseconds).
    pub event_time: String,
    /// Fields, in order.
    pub schema: Vec<FieldConfig>,
}

/// One field of a stream's schema.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FieldConfig {
    /// Field name.
    pub name: String,
    /// Field type.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Whether the field may be absent or null.
    #[serde(default)]
    pub nullable: bool,
}

/// The field types a stream schema may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// 64-bit signed integer.
    #[serde(alias = "int", alias = "bigint", alias = "long")]
    Int64,
    /// 64-bit float.
    #[serde(alias = "double", alias = "float")]
    Float64,
    /// Boolean.
    #[serde(alias = "boolean")]
    Bool,
    /// Instant, millisecond precision: RFC 3339 text or epoch milliseconds.
    Timestamp,
}

impl Config {
    /// Returns the declared stream called `name`.
    pub fn stream(&self, name: &str) -> Option<&StreamConfig> {
        self.streams.iter().find(|stream| stream.name == name)
    }

    /// Returns the object store's URL: `storage.object-store-url`, or a folder `objects` in
    /// the data folder.
    pub fn object_store_url(&self) -> String {
        match &self.storage.object_store_url {
            Some(url) => url.clone(),
            None => format!("file://{}", self.storage.data_dir.join("objects").display()),
        }
    }

    /// Returns the folder of the embedded log.
    pub fn embedded_log_dir(&self) -> PathBuf {
        self.storage
            .log
            .embedded
            .dir
            .clone()
            .unwrap_or_else(|| self.storage.data_dir.join("log"))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let semantic = |path: String, message: String| ConfigError::Semantic { path, message };
        let embedded = &self.storage.log.embedded;
        if embedded.segment_bytes < 4096 {
            return Err(semantic(
                "storage.log.embedded.segment-bytes".to_string(),
                format!("must be at least 4096, got {}", embedded.segment_bytes),
            ));
        }
        if embedded.index_interval_bytes == 0 {
            return Err(semantic(
                "storage.log.embedded.index-interval-bytes".to_string(),
                "must be positive".to_string(),
            ));
        }
        if self.archive.target_file_bytes == 0 {
            return Err(semantic(
                "archive.target-file-bytes".to_string(),
                "must be positive".to_string(),
            ));
        }
        if self.archive.row_group_rows == 0 {
            return Err(semantic(
                "archive.row-group-rows".to_string(),
                "must be positive".to_string(),
            ));
        }
        if !(1..=22).contains(&self.archive.zstd_level) {
            return Err(semantic(
                "archive.zstd-level".to_string(),
                format!("must be 1 to 22, got {}", self.archive.zstd_level),
            ));
        }
        if self.archive.prefix.is_empty() || self.archive.prefix.starts_with('/') {
            return Err(semantic(
                "archive.prefix".to_string(),
                format!(
                    "`{}` must be a relative, non-empty path",
                    self.archive.prefix
                ),
            ));
        }
        let ingest = &self.ingest;
        if ingest.max_event_bytes == 0 || ingest.max_request_bytes < ingest.max_event_bytes {
            return Err(semantic(
                "ingest.max-request-bytes".to_string(),
                format!(
                    "must be at least max-event-bytes ({}), and both positive; got {}",
                    ingest.max_event_bytes, ingest.max_request_bytes
                ),
            ));
        }
        if ingest.max_in_flight_bytes < ingest.max_request_bytes {
            return Err(semantic(
                "ingest.max-in-flight-bytes".to_string(),
                format!(
                    "must be at least max-request-bytes ({}), got {}",
                    ingest.max_request_bytes, ingest.max_in_flight_bytes
                ),
            ));
        }
        let mut job_names = HashSet::new();
        for (job_idx, job) in self.jobs.iter().enumerate() {
            let at = |key: &str| format!("jobs[{job_idx}].{key}");
            if !is_valid_name(&job.name) {
                return Err(semantic(
                    at("name"),
                    format!(
                        "`{}` must be 1-200 letters, digits, `.`, `_` or `-`",
                        job.name
                    ),
                ));
            }
            if job.version == 0 {
                return Err(semantic(at("version"), "versions start at 1".to_string()));
            }
            if !job_names.insert(job.id()) {
                return Err(semantic(
                    at("name"),
                    format!(
                        "duplicate job `{}` version {} (its id `{}` is taken)",
                        job.name,
                        job.version,
                        job.id()
                    ),
                ));
            }
            if job.sql.is_some() == job.sql_file.is_some() {
                return Err(semantic(
                    at("sql"),
                    "give exactly one of `sql` and `sql-file`".to_string(),
                ));
            }
        }
        let kafka = &self.storage.log.kafka;
        if kafka.rebalance_timeout < kafka.session_timeout {
            return Err(semantic(
                "storage.log.kafka.rebalance-timeout".to_string(),
                format!(
                    "must be at least session-timeout ({:?}), got {:?}",
                    kafka.session_timeout, kafka.rebalance_timeout
                ),
            ));
        }
        if self.stream_processor.checkpoints_to_keep == 0 {
            return Err(semantic(
                "stream-processor.checkpoints-to-keep".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        for (section, token, cert, key) in [
            (
                "ingest",
                &self.ingest.auth_token,
                &self.ingest.tls_cert,
                &self.ingest.tls_key,
            ),
            (
                "serving",
                &self.serving.auth_token,
                &self.serving.tls_cert,
                &self.serving.tls_key,
            ),
        ] {
            if token
                .as_deref()
                .is_some_and(|token| token.trim().is_empty())
            {
                return Err(semantic(
                    format!("{section}.auth-token"),
                    "is empty; leave it unset for no authentication".to_string(),
                ));
            }
            if cert.is_some() != key.is_some() {
                return Err(semantic(
                    format!("{section}.tls-key"),
                    "tls-cert and tls-key go together: set both or neither".to_string(),
                ));
            }
        }
        if self.serving.default_page_size == 0
            || self.serving.default_page_size > self.serving.max_page_size
        {
            return Err(semantic(
                "serving.default-page-size".to_string(),
                format!(
                    "must be from 1 to max-page-size ({}), got {}",
                    self.serving.max_page_size, self.serving.default_page_size
                ),
            ));
        }
        if self.stream_processor.read_batch_records == 0 {
            return Err(semantic(
                "stream-processor.read-batch-records".to_string(),
                "must be positive".to_string(),
            ));
        }
        let url = &self.object_store_url();
        if !(url.starts_with("file://") || url.starts_with("s3://") || url.starts_with("memory://"))
        {
            return Err(semantic(
                "storage.object-store-url".to_string(),
                format!("`{url}` must start with file://, s3:// or memory://"),
            ));
        }
        let mut stream_names = HashSet::new();
        for (stream_idx, stream) in self.streams.iter().enumerate() {
            let at = |key: &str| format!("streams[{stream_idx}].{key}");
            if !is_valid_name(&stream.name) {
                return Err(semantic(
                    at("name"),
                    format!(
                        "`{}` must be 1-200 letters, digits, `.`, `_` or `-`",
                        stream.name
                    ),
                ));
            }
            if !stream_names.insert(stream.name.as_str()) {
                return Err(semantic(
                    at("name"),
                    format!("duplicate stream `{}`", stream.name),
                ));
            }
            if stream.partitions == 0 {
                return Err(semantic(at("partitions"), "must be at least 1".to_string()));
            }
            let mut field_names = HashSet::new();
            for (field_idx, field) in stream.schema.iter().enumerate() {
                if field.name.is_empty() || !field_names.insert(field.name.as_str()) {
                    return Err(semantic(
                        at(&format!("schema[{field_idx}].name")),
                        format!("empty or duplicate field name `{}`", field.name),
                    ));
                }
            }
            let field = |name: &str| stream.schema.iter().find(|field| field.name == name);
            match field(&stream.event_time) {
                None => {
                    return Err(semantic(
                        at("event-time"),
                        format!("`{}` is not a field of the schema", stream.event_time),
                    ));
                }
                Some(f) if !matches!(f.field_type, FieldType::Timestamp | FieldType::Int64) => {
                    return Err(semantic(
                        at("event-time"),
                        format!(
                            "field `{}` has type {:?}; the event time must be timestamp or int64",
                            f.name, f.field_type
                        ),
                    ));
                }
                Some(_) => {}
            }
            if let Some(key) = &stream.key
                && field(key).is_none()
            {
                return Err(semantic(
                    at("key"),
                    format!("`{key}` is not a field of the schema"),
                ));
            }
        }
        Ok(())
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}
