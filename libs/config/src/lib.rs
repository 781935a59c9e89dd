//! Typed configuration for every runnel service and the CLI.
//!
//! Layers, lowest to highest: the embedded defaults (`config/runnel.toml`, compiled in),
//! then files given on the command line, then `RUNNEL__SECTION__KEY` environment variables.
//! Tables merge key by key; arrays (such as `streams`) are replaced whole by a higher layer.
//! Unknown keys are rejected with the key's dotted path and the layer that set it.
#![warn(missing_docs)]

mod layers;
mod model;

pub use layers::{ConfigLayer, ENV_PREFIX};
pub use model::{
    ArchiveConfig, BatchReprocessorConfig, Config, EmbeddedLogConfig, FieldConfig, FieldType,
    IngestConfig, JobConfig, KafkaLogConfig, LogBackend, LogConfig, PortSecurity, ServingConfig,
    StorageConfig, StreamConfig, StreamProcessorConfig, TableConfig,
};

use std::collections::HashMap;
use std::path::PathBuf;

/// The embedded defaults: the contents of `config/runnel.toml`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../config/runnel.toml");

/// The origin name of the embedded defaults' layer in error messages.
pub const EMBEDDED_ORIGIN: &str = "embedded defaults";

/// The example jobs' SQL files, compiled in beside the embedded defaults that name them:
/// `sql-file = "jobs/<job>.sql"` in `config/runnel.toml`, relative to its folder as a path in
/// any config file is.
pub const EMBEDDED_JOB_FILES: &[(&str, &str)] = &[
    (
        "jobs/page_views.sql",
        include_str!("../../../config/jobs/page_views.sql"),
    ),
    (
        "jobs/country_traffic.sql",
        include_str!("../../../config/jobs/country_traffic.sql"),
    ),
    (
        "jobs/user_sessions.sql",
        include_str!("../../../config/jobs/user_sessions.sql"),
    ),
];

/// The one configuration version this build reads.
pub const CONFIG_VERSION: &str = "1";

/// Everything that can go wrong while loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file could not be read.
    #[error("read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A layer is not valid TOML.
    #[error("parse {origin}: {message}")]
    Parse {
        /// Which layer: a file path, "embedded defaults" or an environment variable.
        origin: String,
        /// The parser's message, with line and column where it has them.
        message: String,
    },
    /// A value has the wrong type, a key is unknown, or a required key is missing.
    #[error("invalid config at `{path}` (from {origin}): {message}")]
    Invalid {
        /// Dotted path of the offending key, e.g. `storage.log.backend`.
        path: String,
        /// Which layer set it.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The `version` key names a version this build does not read.
    #[error("unsupported config version {found} (this build reads version \"{CONFIG_VERSION}\")")]
    Version {
        /// What the config said.
        found: String,
    },
    /// A job's `sql-file` could not be read.
    #[error("job `{job}`: read sql-file {path} ({resolved}): {source}")]
    JobSql {
        /// The job's id.
        job: String,
        /// The file, as resolved.
        path: PathBuf,
        /// How the path was resolved: against a config file's folder, or the working folder.
        resolved: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The values are well-typed but contradict each other.
    #[error("invalid config at `{path}`: {message}")]
    Semantic {
        /// Dotted path of the offending key.
        path: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads the embedded defaults, then `files` in order, then `RUNNEL__*` variables of `env`.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] that names the file or variable and the key at fault.
    pub fn load(files: &[PathBuf], env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut layers = vec![ConfigLayer::from_toml(
            EMBEDDED_ORIGIN,
            DEFAULT_CONFIG_TOML,
        )?];
        for path in files {
            layers.push(ConfigLayer::from_file(path)?);
        }
        if let Some(env_layer) = ConfigLayer::from_env(env)? {
            layers.push(env_layer);
        }
        Config::from_layers(layers)
    }

    /// Loads only the embedded defaults.
    ///
    /// # Panics
    ///
    /// Panics if the embedded defaults are invalid, which a unit test rules out.
    pub fn embedded_defaults() -> Config {
        Config::load(&[], &HashMap::new()).expect("embedded defaults are valid (tested)")
    }

    /// Merges `layers` (lowest first), then deserializes and validates the result.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] naming the key and the layer that set it.
    pub fn from_layers(layers: Vec<ConfigLayer>) -> Result<Config, ConfigError> {
        let merged = layers::merge(layers)?;
        let mut table = merged.table;
        let version = table.remove("version");
        match &version {
            Some(toml::Value::String(s)) if s == CONFIG_VERSION => {}
            Some(toml::Value::Integer(1)) => {}
            Some(other) => {
                return Err(ConfigError::Version {
                    found: other.to_string(),
                });
            }
            None => {
                return Err(ConfigError::Version {
                    found: "(missing `version` key)".to_string(),
                });
            }
        }
        // The example jobs read the example stream: a config that declares its own streams
        // declares its jobs too (`jobs = []` for none), rather than inheriting jobs over a
        // stream it removed. Checked once the streams themselves are found valid.
        let streams_origin = merged.origins.origin_of("streams");
        let inherits_example_jobs = table.contains_key("streams")
            && streams_origin != EMBEDDED_ORIGIN
            && merged.origins.origin_of("jobs") == EMBEDDED_ORIGIN
            && matches!(table.get("jobs"), Some(toml::Value::Array(jobs)) if !jobs.is_empty());
        // Likewise the example table reads the example changelog: a config with its own
        // streams keeps only the tables it declares.
        if table.contains_key("streams")
            && streams_origin != EMBEDDED_ORIGIN
            && merged.origins.origin_of("tables") == EMBEDDED_ORIGIN
        {
            table.remove("tables");
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|error| {
                let path = error.path().to_string();
                let origin = merged.origins.origin_of(&path);
                ConfigError::Invalid {
                    path,
                    origin,
                    message: error.into_inner().to_string(),
                }
            })?;
        config.validate()?;
        if inherits_example_jobs {
            return Err(ConfigError::Semantic {
                path: "jobs".to_string(),
                message: format!(
                    "{streams_origin} declares its own [[streams]] but no [[jobs]], so the \
                     embedded defaults' example jobs (over the example stream `clicks`) would \
                     run on them; declare the jobs to run with [[jobs]] (see config/runnel.toml), \
                     or `jobs = []` to run none"
                ),
            });
        }
        for (index, job) in config.jobs.iter_mut().enumerate() {
            let key = format!("jobs[{index}].sql-file");
            let Some(path) = &job.sql_file else { continue };
            if merged.origins.origin_of(&key) == EMBEDDED_ORIGIN {
                let name = path.to_str().unwrap_or_default();
                let (_, text) = EMBEDDED_JOB_FILES
                    .iter()
                    .find(|(file, _)| *file == name)
                    .ok_or_else(|| ConfigError::Semantic {
                        path: key.clone(),
                        message: format!("{name} is not one of the embedded job files"),
                    })?;
                job.embedded_sql = Some(text);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_with(file_toml: &str, env_pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut layers = vec![ConfigLayer::from_toml(
            "embedded defaults",
            DEFAULT_CONFIG_TOML,
        )?];
        layers.push(ConfigLayer::from_toml("test.toml", file_toml)?);
        if let Some(layer) = ConfigLayer::from_env(&env(env_pairs))? {
            layers.push(layer);
        }
        Config::from_layers(layers)
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let config = Config::embedded_defaults();
        assert_eq!(config.storage.log.backend, LogBackend::Embedded);
        let clicks = config.stream("clicks").expect("clicks stream declared");
        assert_eq!(clicks.partitions, 4);
        assert_eq!(clicks.event_time, "event_time");
        assert_eq!(clicks.key.as_deref(), Some("user_id"));
        assert_eq!(
            config.storage.log.embedded.retention_age,
            std::time::Duration::from_secs(7 * 86400)
        );
    }

    #[test]
    fn a_recompute_gets_2_gib_unless_told_and_never_less_than_1_mib() {
        assert_eq!(
            Config::embedded_defaults()
                .batch_reprocessor
                .recompute_memory_limit,
            2 << 30
        );
        let small = Config::load(
            &[],
            &env(&[("RUNNEL__BATCH_REPROCESSOR__RECOMPUTE_MEMORY_LIMIT", "1000")]),
        )
        .expect_err("a limit below 1 MiB");
        assert!(
            small
                .to_string()
                .contains("batch-reprocessor.recompute-memory-limit"),
            "{small}"
        );
    }

    #[test]
    fn env_overrides_nested_keys_and_parses_values() {
        let config = Config::load(
            &[],
            &env(&[
                ("RUNNEL__STORAGE__LOG__BACKEND", "kafka"),
                (
                    "RUNNEL__STORAGE__LOG__KAFKA__BOOTSTRAP_SERVERS",
                    "10.0.0.1:9093",
                ),
                ("RUNNEL__STORAGE__LOG__EMBEDDED__SEGMENT_BYTES", "1048576"),
                ("RUNNEL__STREAMS__0__PARTITIONS", "8"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("valid overrides");
        assert_eq!(config.storage.log.backend, LogBackend::Kafka);
        assert_eq!(config.storage.log.kafka.bootstrap_servers, "10.0.0.1:9093");
        assert_eq!(config.storage.log.embedded.segment_bytes, 1 << 20);
        assert_eq!(config.streams[0].partitions, 8);
    }

    #[test]
    fn unknown_key_in_file_is_named_with_its_file() {
        let err = load_with("[storage.log]\nbackedn = \"kafka\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("backedn"), "{msg}");
        assert!(msg.contains("storage.log"), "{msg}");
        assert!(msg.contains("test.toml"), "{msg}");
    }

    #[test]
    fn unknown_key_in_env_is_named_with_its_variable() {
        let err = load_with("", &[("RUNNEL__STORAGE__COLOUR", "blue")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("colour"), "{msg}");
        assert!(msg.contains("RUNNEL__STORAGE__COLOUR"), "{msg}");
    }

    #[test]
    fn each_port_is_read_through_its_security_and_its_keys_refuse_a_misspelling() {
        let config = load_with(
            "[serving]\nlisten = \"0.0.0.0:7303\"\nauth-token = \"t0k\"\n\
             tls-cert = \"/c.pem\"\ntls-key = \"/k.pem\"\n",
            &[],
        )
        .expect("valid");
        let serving = config.serving.security();
        assert_eq!(serving.section, "serving");
        assert_eq!(serving.listen, "0.0.0.0:7303");
        assert_eq!(serving.auth_token, Some("t0k"));
        assert!(serving.tls());
        assert_eq!(serving.token_variable(), "RUNNEL__SERVING__AUTH_TOKEN");
        let ingest = config.ingest.security();
        assert_eq!(
            (ingest.section, ingest.auth_token, ingest.tls()),
            ("ingest", None, false)
        );
        // The keys are the section's own (no flattened struct), so a misspelling is refused.
        let err = load_with("[ingest]\ntls-certificate = \"/c.pem\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("tls-certificate"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load_with("[[streams]]\nname = \"a\"\npartitions = \"many\"\nevent-time = \"t\"\nschema = [{ name = \"t\", type = \"timestamp\" }]\n", &[])
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("streams[0].partitions"), "{msg}");
        assert!(msg.contains("test.toml"), "{msg}");
    }

    #[test]
    fn toml_syntax_error_names_the_file_and_line() {
        let err = ConfigLayer::from_toml("bad.toml", "[storage\nx = 1").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("bad.toml"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn a_token_that_cannot_be_a_bearer_token_is_refused_without_being_shown() {
        for (token, says) in [
            ("two words", "a space at character 4 of 9"),
            ("tab\tinside ", "a tab at character 4 of 10"),
            ("quote\"d", "`\"` at character 6 of 7"),
            ("=abc", "`=` at character 1 of 4"),
            ("===", "has no characters before its `=` padding"),
            ("", "is empty"),
        ] {
            let err = load_with("", &[("RUNNEL__SERVING__AUTH_TOKEN", token)]).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("serving.auth-token"), "{msg}");
            assert!(msg.contains(says), "{token:?}: {msg}");
            assert!(
                token.len() < 4 || !msg.contains(token),
                "the token is shown: {msg}"
            );
        }
        // Surrounding whitespace (a line end from an env file) is trimmed, as the services do.
        for token in ["abc-DEF_012.~+/", "dG9rZW4=", "x==", " s3cret-token\r"] {
            load_with("", &[("RUNNEL__INGEST__AUTH_TOKEN", token)])
                .unwrap_or_else(|error| panic!("{token}: {error}"));
        }
    }

    #[test]
    fn a_service_open_beyond_loopback_needs_a_token_or_a_stated_exception() {
        let err = load_with("[ingest]\nlisten = \"0.0.0.0:7301\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ingest.auth-token"), "{msg}");
        assert!(msg.contains("0.0.0.0:7301"), "{msg}");
        assert!(msg.contains("RUNNEL__INGEST__AUTH_TOKEN"), "{msg}");
        let err = load_with("[serving]\nlisten = \"runnel.example:7303\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("serving.auth-token"), "{err}");
        for (file, env) in [
            ("[ingest]\nlisten = \"127.0.0.1:7301\"\n", vec![]),
            ("[ingest]\nlisten = \"[::1]:7301\"\n", vec![]),
            ("[ingest]\nlisten = \"localhost:7301\"\n", vec![]),
            (
                "[ingest]\nlisten = \"0.0.0.0:7301\"\n",
                vec![("RUNNEL__INGEST__AUTH_TOKEN", "s3cret")],
            ),
            (
                "[serving]\nlisten = \"0.0.0.0:7303\"\nallow-unauthenticated = true\n",
                vec![],
            ),
        ] {
            load_with(file, &env).unwrap_or_else(|error| panic!("{file}: {error}"));
        }
    }

    #[test]
    fn unknown_version_is_refused() {
        let err = load_with("version = \"2\"", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Version { .. }), "{err}");
    }

    #[test]
    fn streams_are_validated() {
        let cases = [
            (
                "[[streams]]\nname = \"s\"\npartitions = 0\nevent-time = \"t\"\nschema = [{ name = \"t\", type = \"timestamp\" }]\n",
                "streams[0].partitions",
            ),
            (
                "[[streams]]\nname = \"s\"\npartitions = 1\nevent-time = \"missing\"\nschema = [{ name = \"t\", type = \"timestamp\" }]\n",
                "streams[0].event-time",
            ),
            (
                "[[streams]]\nname = \"s\"\npartitions = 1\nevent-time = \"t\"\nschema = [{ name = \"t\", type = \"string\" }]\n",
                "streams[0].event-time",
            ),
            (
                "[[streams]]\nname = \"s\"\npartitions = 1\nevent-time = \"t\"\nkey = \"k\"\nschema = [{ name = \"t\", type = \"timestamp\" }]\n",
                "streams[0].key",
            ),
            (
                "[[streams]]\nname = \"s/x\"\npartitions = 1\nevent-time = \"t\"\nschema = [{ name = \"t\", type = \"timestamp\" }]\n",
                "streams[0].name",
            ),
            (
                "[[streams]]\nname = \"s\"\npartitions = 1\nevent-time = \"t\"\nschema = [{ name = \"t\", type = \"timestamp\" }, { name = \"t\", type = \"int64\" }]\n",
                "streams[0].schema[1].name",
            ),
        ];
        for (toml_text, path) in cases {
            let err = load_with(toml_text, &[]).unwrap_err();
            match err {
                ConfigError::Semantic { path: got, .. } => assert_eq!(got, path, "{toml_text}"),
                other => panic!("expected a semantic error at {path}, got {other}"),
            }
        }
        let err = load_with(
            "[[streams]]\nname = \"s\"\npartitions = 1\nevent-time = \"t\"\nschema = [{ name = \"t\", type = \"timestamp\" }]\n[[streams]]\nname = \"s\"\npartitions = 1\nevent-time = \"t\"\nschema = [{ name = \"t\", type = \"timestamp\" }]\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate stream"), "{err}");
    }

    #[test]
    fn tables_are_validated() {
        let updates = "jobs = []\n[[streams]]\nname = \"u\"\npartitions = 1\nevent-time = \"t\"\nschema = [{ name = \"t\", type = \"timestamp\" }, { name = \"id\", type = \"string\" }, { name = \"gone\", type = \"bool\" }]\n";
        let config = load_with(
            &format!("{updates}[[tables]]\nname = \"users\"\nstream = \"u\"\nkey = \"id\"\ntombstone = \"gone\"\n"),
            &[],
        )
        .expect("a valid table");
        let (table, stream, key) = config.table("USERS").expect("found, as SQL names it");
        assert_eq!(
            (table.name.as_str(), stream.name.as_str(), key),
            ("users", "u", "id")
        );
        let cases = [
            (
                "[[tables]]\nname = \"users\"\nstream = \"nope\"\nkey = \"id\"\n",
                "tables[0].stream",
            ),
            (
                "[[tables]]\nname = \"users\"\nstream = \"u\"\n",
                "tables[0].key",
            ),
            (
                "[[tables]]\nname = \"users\"\nstream = \"u\"\nkey = \"who\"\n",
                "tables[0].key",
            ),
            (
                "[[tables]]\nname = \"users\"\nstream = \"u\"\nkey = \"id\"\ntombstone = \"t\"\n",
                "tables[0].tombstone",
            ),
            (
                "[[tables]]\nname = \"a b\"\nstream = \"u\"\nkey = \"id\"\n",
                "tables[0].name",
            ),
        ];
        for (tables, path) in cases {
            let toml_text = format!("{updates}{tables}");
            match load_with(&toml_text, &[]).unwrap_err() {
                ConfigError::Semantic { path: got, .. } => assert_eq!(got, path, "{toml_text}"),
                other => panic!("expected a semantic error at {path}, got {other}"),
            }
        }
    }

    #[test]
    fn file_streams_replace_default_streams() {
        let config = load_with(
            "jobs = []\n[[streams]]\nname = \"orders\"\npartitions = 2\nevent-time = \"ts\"\nschema = [{ name = \"ts\", type = \"int64\" }]\n",
            &[],
        )
        .expect("valid");
        assert_eq!(config.streams.len(), 1);
        assert_eq!(config.streams[0].name, "orders");
        assert!(config.jobs.is_empty());
        // The example table over the example changelog goes with the example streams.
        assert!(config.tables.is_empty());
    }

    #[test]
    fn the_embedded_defaults_run_the_example_jobs_from_compiled_in_sql() {
        let config = Config::embedded_defaults();
        let names: Vec<&str> = config.jobs.iter().map(|job| job.name.as_str()).collect();
        assert_eq!(names, ["page_views", "country_traffic", "user_sessions"]);
        for job in &config.jobs {
            let sql = job.sql_text().expect("embedded SQL");
            assert!(sql.contains("FROM "), "{sql}");
            let file = job
                .sql_file
                .as_ref()
                .expect("sql-file")
                .to_str()
                .expect("utf-8");
            let on_disk = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../config")
                    .join(file),
            )
            .expect("the file beside config/runnel.toml");
            assert_eq!(sql, on_disk, "{file}");
        }
    }

    #[test]
    fn own_streams_without_jobs_is_refused_naming_the_file_and_the_way_out() {
        let err = load_with(
            "[[streams]]\nname = \"orders\"\npartitions = 2\nevent-time = \"ts\"\nschema = [{ name = \"ts\", type = \"int64\" }]\n",
            &[],
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("test.toml"), "{message}");
        assert!(message.contains("jobs = []"), "{message}");
    }

    #[test]
    fn paths_in_a_config_file_resolve_against_its_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("conf");
        std::fs::create_dir_all(folder.join("jobs")).expect("mkdir");
        std::fs::write(folder.join("jobs/views.sql"), "SELECT 1").expect("write sql");
        let file = folder.join("runnel.toml");
        std::fs::write(
            &file,
            "[storage]\ndata-dir = \"state\"\n[ingest]\ntls-cert = \"/etc/cert.pem\"\ntls-key = \"key.pem\"\n\
             [[jobs]]\nname = \"views\"\nsql-file = \"jobs/views.sql\"\n",
        )
        .expect("write config");
        // Loaded by a relative path from another folder: what counts is the file's folder.
        let config = Config::load(&[file], &HashMap::new()).expect("valid");
        let folder = std::path::absolute(&folder).expect("absolute");
        assert_eq!(config.storage.data_dir, folder.join("state"));
        assert_eq!(
            config.ingest.tls_key.as_deref(),
            Some(folder.join("key.pem").as_path())
        );
        assert_eq!(
            config.ingest.tls_cert.as_deref(),
            Some(std::path::Path::new("/etc/cert.pem"))
        );
        assert_eq!(config.jobs[0].sql_text().expect("read"), "SELECT 1");

        // From the environment, a relative path stays relative to the working folder, and
        // an unreadable file is named with how its path was resolved.
        let config = Config::load(
            &[],
            &env(&[("RUNNEL__JOBS__0__SQL_FILE", "no/such/file.sql")]),
        )
        .expect("valid");
        let err = config.jobs[0].sql_text().unwrap_err().to_string();
        assert!(err.contains("no/such/file.sql"), "{err}");
        assert!(err.contains("working folder"), "{err}");
        assert!(err.contains("page_views"), "{err}");
    }

    #[test]
    fn versions_of_a_job_have_their_own_ids() {
        let job =
            |version: &str| format!("[[jobs]]\nname = \"views\"\n{version}sql = \"SELECT 1\"\n");
        let config = load_with(&(job("") + &job("version = 2\n")), &[]).expect("valid");
        let ids: Vec<String> = config.jobs.iter().map(JobConfig::id).collect();
        assert_eq!(ids, ["views", "views.v2"]);
        let err = load_with(&(job("version = 2\n") + &job("version = 2\n")), &[]).unwrap_err();
        assert!(
            err.to_string().contains("duplicate job `views` version 2"),
            "{err}"
        );
        assert!(err.to_string().contains("jobs[1].name"), "{err}");
        let err = load_with(&job("version = 0\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("jobs[0].version"), "{err}");
    }
}
