//! The typed configuration structs, one section per concern, and their validation.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
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
    /// Tables: a keyed stream read as a changelog, the latest value per key, which jobs join
    /// (`JOIN <table> FOR SYSTEM_TIME AS OF ...`).
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    /// The stream-processor service: checkpoints and metrics.
    pub stream_processor: StreamProcessorConfig,
    /// The windowed SQL jobs the stream-processor runs.
    #[serde(default)]
    pub jobs: Vec<JobConfig>,
    /// What a job may ask for, checked when it compiles (live, replay, recompute and
    /// `runnel run` alike).
    pub limits: LimitsConfig,
    /// The serving service: the gRPC query API.
    pub serving: ServingConfig,
    /// The batch-reprocessor's backfills: limits of a recompute.
    pub batch_reprocessor: BatchReprocessorConfig,
}

/// Bounds on what one job may ask for: a job over them is refused when it compiles, with
/// the position of the interval at fault.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsConfig {
    /// The most windows one event may belong to (a HOP's size over its slide).
    pub max_windows_per_event: u32,
    /// The longest window size, hop slide or session gap (at most 366,000 days).
    #[serde(with = "humantime_serde")]
    pub max_window_interval: Duration,
}

/// The batch-reprocessor's backfills (`runnel backfill`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BatchReprocessorConfig {
    /// The most chunks (about an hour of windows each) a recompute may cut its range into;
    /// a range wider than that, usually widened by an outlying event time, is refused
    /// before anything is read or written. At most 10,000,000.
    pub max_recompute_chunks: u64,
    /// The memory a recompute (`runnel backfill --mode recompute`, `runnel run --mode
    /// recompute`) may hold, in bytes; past it, sorts and aggregations spill to files in the
    /// operating system's temporary directory. At least 1 MiB.
    pub recompute_memory_limit: u64,
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
    /// Address of the HTTP endpoint serving `GET /metrics` (Prometheus text format: queries
    /// by method and code, their latency, subscribers, view sizes); port 0 picks a free port.
    pub metrics_listen: String,
    /// Requests must carry `authorization: Bearer <token>`; unset, none is asked for.
    /// Set it through `RUNNEL__SERVING__AUTH_TOKEN` rather than a file kept in version control.
    /// A bearer token's characters only (RFC 6750: letters, digits, `-._~+/`, then `=`s).
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Whether the service may listen on an address other than loopback with no
    /// `auth-token`; without it, such a config is refused.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// TLS: the server's certificate chain (PEM); with `tls-key`, the port speaks TLS only.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS: the server's private key (PEM).
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
}

/// A port's security, as the `ingest` and `serving` sections set it: `listen`,
/// `auth-token`, `allow-unauthenticated`, `tls-cert` and `tls-key`. The keys stay flat in
/// their section (a `#[serde(flatten)]` struct would silently turn `deny_unknown_fields`
/// off), and everything reads them through [`IngestConfig::security`] and
/// [`ServingConfig::security`]: the validation, the services' servers, the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSecurity<'a> {
    /// The section, `ingest` or `serving`: the service's name.
    pub section: &'static str,
    /// `<section>.listen`.
    pub listen: &'a str,
    /// `<section>.auth-token`: requests must carry `authorization: Bearer <token>`.
    pub auth_token: Option<&'a str>,
    /// `<section>.allow-unauthenticated`.
    pub allow_unauthenticated: bool,
    /// `<section>.tls-cert`: the server's certificate chain (PEM).
    pub tls_cert: Option<&'a Path>,
    /// `<section>.tls-key`: the server's private key (PEM).
    pub tls_key: Option<&'a Path>,
}

impl PortSecurity<'_> {
    /// Whether the port speaks TLS (validation makes `tls-cert` and `tls-key` go together).
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The environment variable that sets the token, e.g. `RUNNEL__INGEST__AUTH_TOKEN`.
    pub fn token_variable(&self) -> String {
        format!("RUNNEL__{}__AUTH_TOKEN", self.section.to_uppercase())
    }

    /// The section's security is consistent: a token of a bearer token's characters, a
    /// token (or `allow-unauthenticated`) on a port other than loopback, and `tls-cert`
    /// with `tls-key`.
    fn validate(&self) -> Result<(), ConfigError> {
        let semantic = |path: String, message: String| ConfigError::Semantic { path, message };
        let section = self.section;
        let variable = self.token_variable();
        match self.auth_token {
            Some(token) => {
                if let Some(problem) = bearer_token_problem(token) {
                    return Err(semantic(
                        format!("{section}.auth-token"),
                        format!("{problem} (set by {variable} or the config file)"),
                    ));
                }
            }
            None if !self.allow_unauthenticated && !is_loopback(self.listen) => {
                let listen = self.listen;
                return Err(semantic(
                    format!("{section}.auth-token"),
                    format!(
                        "is not set, and {section}.listen ({listen}) is not a loopback \
                         address: anyone who reaches it could use the service. Set a \
                         token ({variable}), listen on 127.0.0.1, or set \
                         {section}.allow-unauthenticated = true"
                    ),
                ));
            }
            None => {}
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(semantic(
                format!("{section}.tls-key"),
                "tls-cert and tls-key go together: set both or neither".to_string(),
            ));
        }
        Ok(())
    }
}

impl ServingConfig {
    /// The port's security settings (see [`PortSecurity`]).
    pub fn security(&self) -> PortSecurity<'_> {
        PortSecurity {
            section: "serving",
            listen: &self.listen,
            auth_token: self.auth_token.as_deref(),
            allow_unauthenticated: self.allow_unauthenticated,
            tls_cert: self.tls_cert.as_deref(),
            tls_key: self.tls_key.as_deref(),
        }
    }
}

impl IngestConfig {
    /// The port's security settings (see [`PortSecurity`]).
    pub fn security(&self) -> PortSecurity<'_> {
        PortSecurity {
            section: "ingest",
            listen: &self.listen,
            auth_token: self.auth_token.as_deref(),
            allow_unauthenticated: self.allow_unauthenticated,
            tls_cert: self.tls_cert.as_deref(),
            tls_key: self.tls_key.as_deref(),
        }
    }
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
    /// A job whose task fails on something that is not one event (the log, the object
    /// store, its state) is restarted from its checkpoints at most this many times in a
    /// row; then it is reported failed and stays stopped, while the other jobs go on.
    pub max_job_restarts: u32,
    /// The wait before a job's first restart; it doubles with each restart in a row (up
    /// to 64 times this). A job that ran this long times 64 without failing starts its
    /// count afresh. With a Kafka `group-instance-id` the wait is at least the session
    /// timeout, so that the restarted job joins its groups afresh.
    #[serde(with = "humantime_serde")]
    pub job_restart_backoff: Duration,
    /// Whether the service also runs each job's active version when only the job catalog
    /// (`jobs/<job>/versions/`, registered by a backfill) has it, switching to the next one
    /// a replay makes active. Declared `[[jobs]]` run either way.
    pub run_registered_versions: bool,
    /// How often the job catalog is read for registered versions and active-version
    /// switches.
    #[serde(with = "humantime_serde")]
    pub job_poll_interval: Duration,
    /// Exactly-once results (Kafka only): each task writes its results and late events in a
    /// Kafka transaction that commits, with its source offset and checkpoint, at each
    /// checkpoint, so that `read_committed` readers (serving among them) see every result
    /// version once, after a crash too; results become visible at checkpoints, so keep
    /// `checkpoint-interval` short. A task's transactional id fences a zombie of it.
    pub exactly_once: bool,
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
    /// A file holding the job's SQL, instead of `sql`. Relative, it resolves against the
    /// folder of the config file that names it (against the working folder when it comes from
    /// an environment variable); in the embedded defaults it names a file compiled in. Read it
    /// with [`JobConfig::sql_text`].
    #[serde(default)]
    pub sql_file: Option<std::path::PathBuf>,
    /// The text of `sql-file` when the embedded defaults name it: one of
    /// [`crate::EMBEDDED_JOB_FILES`]. Set by the loader, never by a config.
    #[serde(skip)]
    pub embedded_sql: Option<&'static str>,
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
    /// For a job read through its repartition topic, and for the right side of a join of two
    /// windowed aggregates: a source partition that sent nothing for this long (log time)
    /// stops holding the watermark back. Unset, a silent source partition holds it back until
    /// it sends again.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

fn first_version() -> u32 {
    1
}

impl JobConfig {
    /// The job's SQL: `sql`, or the contents of `sql-file`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::JobSql`] naming the job, the file and how its path was resolved, when
    /// the file cannot be read; [`ConfigError::Semantic`] when neither key is set.
    pub fn sql_text(&self) -> Result<String, ConfigError> {
        if let Some(sql) = &self.sql {
            return Ok(sql.clone());
        }
        if let Some(text) = self.embedded_sql {
            return Ok(text.to_string());
        }
        let Some(path) = &self.sql_file else {
            return Err(ConfigError::Semantic {
                path: format!("jobs.{}", self.id()),
                message: "give exactly one of `sql` and `sql-file`".to_string(),
            });
        };
        std::fs::read_to_string(path).map_err(|source| ConfigError::JobSql {
            job: self.id(),
            path: path.clone(),
            resolved: if path.is_absolute() {
                "paths in a config file resolve against its folder".to_string()
            } else {
                match std::env::current_dir() {
                    Ok(dir) => format!("relative to the working folder {}", dir.display()),
                    Err(_) => "relative to the working folder".to_string(),
                }
            },
            source,
        })
    }

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
    /// Whether the ingest service runs the archiver as a background task.
    pub run_archiver: bool,
    /// Requests must carry `authorization: Bearer <token>`; unset, none is asked for.
    /// Set it through `RUNNEL__INGEST__AUTH_TOKEN` rather than a file kept in version control.
    /// A bearer token's characters only (RFC 6750: letters, digits, `-._~+/`, then `=`s).
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Whether the service may listen on an address other than loopback with no
    /// `auth-token`; without it, such a config is refused.
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// TLS: the server's certificate chain (PEM); with `tls-key`, the port speaks TLS only.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// TLS: the server's private key (PEM).
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    /// A connection with no request in progress (from its opening, and again from each
    /// answer) must deliver a complete request head within this time, or it is closed.
    /// HTTP/2 connections are exempt once their preface arrives; keepalive pings watch them.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The longest wait for the next piece of an HTTP request body (the first included);
    /// past it the request is answered 408 and its connection closed.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Past its first `body-read-timeout`, an HTTP request body must average at least this
    /// many bytes per second, or it is answered 408 and its connection closed; 0 turns the
    /// check off.
    pub min_body_bytes_per_second: u64,
    /// Connections open at once; a connection over it is answered 503 and closed.
    pub max_connections: usize,
    /// Connections open at once from one client IP address; a connection over it is
    /// answered 503 and closed.
    pub max_connections_per_client: usize,
    /// HTTP/2 (gRPC): calls in progress at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: the interval of the keepalive pings the service sends.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// HTTP/2: a connection whose client leaves a keepalive ping unanswered this long is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
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
    /// How long the archiver waits for new records before checking file age again; a
    /// partition stopped at a corrupt range of the log looks again this often (at least
    /// every second).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Address of `runnel archive`'s HTTP endpoint: `GET /metrics` (Prometheus text) and
    /// `GET /status` (JSON), the archiver's state per partition; port 0 picks a free port.
    /// The ingest service serves the same on its own port when it runs the archiver.
    pub metrics_listen: String,
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
    /// `min.insync.replicas` of topics runnel creates: with producers' `acks=all`, a write is
    /// acknowledged only once this many replicas have it, and refused
    /// (`NOT_ENOUGH_REPLICAS`) while fewer are in sync. Unset: the broker's default.
    #[serde(default)]
    pub min_insync_replicas: Option<u32>,
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
    /// Static group membership (Kafka's `group.instance.id`): a name unique to this
    /// instance and kept across its restarts. An instance that restarts within
    /// `session-timeout` gets its partitions back with no rebalance; one that stops, even
    /// cleanly, keeps them until `session-timeout` passes. Unset: dynamic membership. A
    /// replay (`runnel backfill --mode replay`) joins as a dynamic member whatever this says.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// Extra librdkafka properties passed to every client, e.g. `security.protocol = "SSL"`
    /// and `ssl.ca.location` for brokers that speak TLS (Amazon MSK). Each `-` in a key is
    /// passed as `.` (librdkafka's names have dots, never dashes), so the environment can set
    /// them: `RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__SECURITY_PROTOCOL=SSL` arrives as
    /// `security-protocol` and sets `security.protocol`. Where both spellings of one property
    /// are set, the dashed one wins (the environment's over a file's). Settings runnel's
    /// clients rely on (idempotence, `acks`, isolation level, offset handling) are set after these.
    /// Values are librdkafka's text; a number or a boolean (as the environment layer reads
    /// `..._PROPERTIES__LINGER_MS=5`) is taken as its text.
    #[serde(default, deserialize_with = "scalars_as_text")]
    pub properties: BTreeMap<String, String>,
    /// Authenticates to Amazon MSK with IAM access control (the brokers' SASL/IAM port,
    /// 9098): every client signs AWS's MSK IAM token (a SigV4-presigned
    /// `kafka-cluster:Connect` request, valid 15 minutes) and librdkafka renews it before it
    /// expires. The region is `AWS_REGION` (or `AWS_DEFAULT_REGION`), and the credentials come
    /// from the standard AWS chain, as the S3 object store's do: the `AWS_ACCESS_KEY_ID` /
    /// `AWS_SECRET_ACCESS_KEY` (/ `AWS_SESSION_TOKEN`) environment keys, web identity
    /// (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, e.g. EKS), the ECS task role
    /// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`), then the EC2 instance profile. Opening the
    /// log fails when no region is set. It sets `security.protocol = "SASL_SSL"` and
    /// `sasl.mechanism = "OAUTHBEARER"` itself, after `properties`. Off by default;
    /// `RUNNEL__STORAGE__LOG__KAFKA__AWS_MSK_IAM=true` turns it on.
    #[serde(default)]
    pub aws_msk_iam: bool,
}

/// A map of TOML scalars, each as its text (`5` as "5", `true` as "true").
fn scalars_as_text<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string, a number or a boolean")]
    enum Scalar {
        Text(String),
        Integer(i64),
        Float(f64),
        Boolean(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Scalar::Text(text) => text,
                Scalar::Integer(number) => number.to_string(),
                Scalar::Float(number) => number.to_string(),
                Scalar::Boolean(flag) => flag.to_string(),
            };
            (key, text)
        })
        .collect())
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
    /// An event whose event time is further than this ahead of its arrival is rejected: at
    /// ingest against the service's clock (to the dead-letter topic), and wherever the log
    /// is decoded against the record's timestamp (records other producers wrote; the
    /// archiver sends them to the dead-letter topic). Default 1 hour.
    #[serde(default = "default_max_event_time_ahead", with = "humantime_serde")]
    pub max_event_time_ahead: Duration,
    /// An event whose event time is further than this behind its arrival is rejected, as
    /// for `max-event-time-ahead`. Default 3650 days; raise it to ingest older history.
    #[serde(default = "default_max_event_time_behind", with = "humantime_serde")]
    pub max_event_time_behind: Duration,
}

/// A table: a declared stream read as the changelog of a table. Each event sets its key's
/// value from its event time on; every version is kept by event time, so a job's join asks
/// "as of" each of its rows' times.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TableConfig {
    /// The table's name in job SQL: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// The declared stream that is its changelog.
    pub stream: String,
    /// The key field; default: the stream's key.
    #[serde(default)]
    pub key: Option<String>,
    /// A `bool` field that marks an event as a delete of its key (a tombstone), if any.
    #[serde(default)]
    pub tombstone: Option<String>,
}

fn default_max_event_time_ahead() -> Duration {
    Duration::from_secs(3_600)
}

fn default_max_event_time_behind() -> Duration {
    Duration::from_secs(3_650 * 86_400)
}

impl LimitsConfig {
    /// The limits in the engine's terms.
    pub fn max_window_interval_ms(&self) -> i64 {
        i64::try_from(self.max_window_interval.as_millis()).unwrap_or(i64::MAX)
    }
}

impl StreamConfig {
    /// A stream of `schema` with the default event-time bounds.
    pub fn new(
        name: impl Into<String>,
        partitions: u32,
        key: Option<String>,
        event_time: impl Into<String>,
        schema: Vec<FieldConfig>,
    ) -> StreamConfig {
        StreamConfig {
            name: name.into(),
            partitions,
            key,
            event_time: event_time.into(),
            schema,
            max_event_time_ahead: default_max_event_time_ahead(),
            max_event_time_behind: default_max_event_time_behind(),
        }
    }
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

    /// Returns the declared table called `name` (as SQL names it: case aside), with its
    /// changelog stream and key field.
    pub fn table(&self, name: &str) -> Option<(&TableConfig, &StreamConfig, &str)> {
        let table = self
            .tables
            .iter()
            .find(|table| table.name.eq_ignore_ascii_case(name))?;
        let stream = self.stream(&table.stream)?;
        let key = table.key.as_deref().or(stream.key.as_deref())?;
        Some((table, stream, key))
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
        for (key, duration) in [
            ("ingest.header-read-timeout", ingest.header_read_timeout),
            ("ingest.body-read-timeout", ingest.body_read_timeout),
            (
                "ingest.http2-keepalive-interval",
                ingest.http2_keepalive_interval,
            ),
            (
                "ingest.http2-keepalive-timeout",
                ingest.http2_keepalive_timeout,
            ),
        ] {
            if duration.is_zero() {
                return Err(semantic(key.to_string(), "must be positive".to_string()));
            }
        }
        if ingest.max_connections_per_client == 0
            || ingest.max_connections < ingest.max_connections_per_client
        {
            return Err(semantic(
                "ingest.max-connections-per-client".to_string(),
                format!(
                    "must be positive and at most max-connections ({}), got {}",
                    ingest.max_connections, ingest.max_connections_per_client
                ),
            ));
        }
        if ingest.http2_max_concurrent_streams == 0 {
            return Err(semantic(
                "ingest.http2-max-concurrent-streams".to_string(),
                "must be positive".to_string(),
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
            // Times a job waits for are bounded as its windows are: a typo of `5000d` for
            // `5s` would hold every window's state for years.
            let max_interval = self.limits.max_window_interval;
            for (key, duration) in [
                ("max-out-of-orderness", Some(job.max_out_of_orderness)),
                ("allowed-lateness", Some(job.allowed_lateness)),
                ("early-emit-interval", job.early_emit_interval),
                ("idle-timeout", job.idle_timeout),
            ] {
                let Some(duration) = duration else { continue };
                if duration > max_interval {
                    return Err(semantic(
                        at(key),
                        format!(
                            "{} is over limits.max-window-interval ({})",
                            humantime::format_duration(duration),
                            humantime::format_duration(max_interval)
                        ),
                    ));
                }
                if duration.is_zero() && matches!(key, "early-emit-interval" | "idle-timeout") {
                    return Err(semantic(
                        at(key),
                        "must be positive; leave it unset to turn it off".to_string(),
                    ));
                }
            }
        }
        let limits = &self.limits;
        if limits.max_windows_per_event == 0 {
            return Err(semantic(
                "limits.max-windows-per-event".to_string(),
                "must be at least 1".to_string(),
            ));
        }
        if limits.max_window_interval.is_zero()
            || limits.max_window_interval > Duration::from_secs(366_000 * 86_400)
        {
            return Err(semantic(
                "limits.max-window-interval".to_string(),
                format!(
                    "must be positive and at most 366000d, got {}",
                    humantime::format_duration(limits.max_window_interval)
                ),
            ));
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
        for port in [self.ingest.security(), self.serving.security()] {
            port.validate()?;
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
        if !(1..=10_000_000).contains(&self.batch_reprocessor.max_recompute_chunks) {
            return Err(semantic(
                "batch-reprocessor.max-recompute-chunks".to_string(),
                format!(
                    "must be from 1 to 10000000, got {}",
                    self.batch_reprocessor.max_recompute_chunks
                ),
            ));
        }
        if self.batch_reprocessor.recompute_memory_limit < 1 << 20 {
            return Err(semantic(
                "batch-reprocessor.recompute-memory-limit".to_string(),
                format!(
                    "must be at least 1048576 (1 MiB), got {}",
                    self.batch_reprocessor.recompute_memory_limit
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
        let mut table_names = HashSet::new();
        for (table_idx, table) in self.tables.iter().enumerate() {
            let at = |key: &str| format!("tables[{table_idx}].{key}");
            if !is_valid_name(&table.name) {
                return Err(semantic(
                    at("name"),
                    format!(
                        "`{}` must be 1-200 letters, digits, `.`, `_` or `-`",
                        table.name
                    ),
                ));
            }
            if !table_names.insert(table.name.to_lowercase()) {
                return Err(semantic(
                    at("name"),
                    format!("duplicate table `{}`", table.name),
                ));
            }
            let Some(stream) = self.stream(&table.stream) else {
                return Err(semantic(
                    at("stream"),
                    format!("`{}` is not a declared stream", table.stream),
                ));
            };
            let field = |name: &str| stream.schema.iter().find(|field| field.name == name);
            match table.key.as_deref().or(stream.key.as_deref()) {
                None => {
                    return Err(semantic(
                        at("key"),
                        format!(
                            "the stream `{}` has no key; name the table's key field",
                            stream.name
                        ),
                    ));
                }
                Some(key) if field(key).is_none() => {
                    return Err(semantic(
                        at("key"),
                        format!("`{key}` is not a field of the stream `{}`", stream.name),
                    ));
                }
                Some(_) => {}
            }
            if let Some(tombstone) = &table.tombstone {
                match field(tombstone) {
                    Some(field) if field.field_type == FieldType::Bool => {}
                    Some(field) => {
                        return Err(semantic(
                            at("tombstone"),
                            format!(
                                "field `{tombstone}` has type {:?}; a tombstone is a bool",
                                field.field_type
                            ),
                        ));
                    }
                    None => {
                        return Err(semantic(
                            at("tombstone"),
                            format!(
                                "`{tombstone}` is not a field of the stream `{}`",
                                stream.name
                            ),
                        ));
                    }
                }
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

/// What makes `token` unusable as a bearer token (RFC 6750's `b64token`: letters, digits,
/// `-._~+/`, then `=`s; the header carries nothing else), if anything, once surrounding
/// whitespace is trimmed (as the services trim it: a line end left by an env file does no
/// harm). Says where, never what the token is.
fn bearer_token_problem(token: &str) -> Option<String> {
    let token = token.trim();
    if token.is_empty() {
        return Some("is empty; leave it unset for no authentication".to_string());
    }
    let body_end = token.trim_end_matches('=').len();
    if body_end == 0 {
        return Some("has no characters before its `=` padding".to_string());
    }
    token.char_indices().find_map(|(index, character)| {
        let allowed = if index < body_end {
            character.is_ascii_alphanumeric() || "-._~+/".contains(character)
        } else {
            character == '='
        };
        (!allowed).then(|| {
            let what = match character {
                ' ' => "a space".to_string(),
                '\t' => "a tab".to_string(),
                '\r' | '\n' => "a line break".to_string(),
                character if character.is_ascii_graphic() => format!("`{character}`"),
                character => format!("U+{:04X}", u32::from(character)),
            };
            format!(
                "has {what} at character {} of {}: a bearer token is letters, digits and \
                 `-._~+/`, then `=`s",
                token[..index].chars().count() + 1,
                token.chars().count()
            )
        })
    })
}

/// Whether `listen` (`host:port`) is a loopback address: `127.x.x.x`, `[::1]` or `localhost`.
fn is_loopback(listen: &str) -> bool {
    if let Ok(address) = listen.parse::<std::net::SocketAddr>() {
        return address.ip().is_loopback();
    }
    listen
        .rsplit_once(':')
        .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost"))
}
