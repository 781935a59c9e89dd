//! Config layers (defaults, files, environment) and how they merge.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::ConfigError;

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "RUNNEL__";

/// One source of configuration: a parsed TOML table and where each key came from.
#[derive(Debug, Clone)]
pub struct ConfigLayer {
    table: toml::Table,
    origins: Origins,
}

/// Maps a dotted key path to the layer that last set it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins {
    by_path: BTreeMap<String, String>,
}

impl Origins {
    /// Returns the origin of `path`, or of its longest recorded prefix.
    pub(crate) fn origin_of(&self, path: &str) -> String {
        let mut candidate = path.to_string();
        loop {
            if let Some(origin) = self.by_path.get(&candidate) {
                return origin.clone();
            }
            match candidate.rfind(['.', '[']) {
                Some(idx) => candidate.truncate(idx),
                None => return "the merged config".to_string(),
            }
        }
    }
}

pub(crate) struct Merged {
    pub(crate) table: toml::Table,
    pub(crate) origins: Origins,
}

impl ConfigLayer {
    /// Parses `text` as one layer; `origin` names it in error messages.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Parse`] with the line and column of a syntax error.
    pub fn from_toml(origin: &str, text: &str) -> Result<ConfigLayer, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|error| ConfigError::Parse {
            origin: origin.to_string(),
            message: describe_toml_error(text, &error),
        })?;
        let mut origins = Origins::default();
        record_origins(&toml::Value::Table(table.clone()), "", origin, &mut origins);
        Ok(ConfigLayer { table, origins })
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Read`] or [`ConfigError::Parse`] naming the file.
    pub fn from_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        let mut layer = ConfigLayer::from_toml(&origin, &text)?;
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let folder = std::path::absolute(folder).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        resolve_paths(&mut layer.table, &folder)
            .map_err(|message| ConfigError::Parse { origin, message })?;
        Ok(layer)
    }

    /// Builds a layer from the `RUNNEL__*` variables of `env`, or `None` if there are none.
    ///
    /// `RUNNEL__STORAGE__LOG__BACKEND=kafka` sets `storage.log.backend`; underscores in a
    /// segment become dashes, and a numeric segment indexes an array (`RUNNEL__STREAMS__0__PARTITIONS`).
    /// Values are read as TOML scalars where they parse (`8`, `true`, `"quoted"`), else as strings.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Parse`] naming the variable when its name is malformed.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Option<ConfigLayer>, ConfigError> {
        let mut vars: Vec<(&String, &String)> = env
            .iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        if vars.is_empty() {
            return Ok(None);
        }
        // Sorted, so that the result does not depend on HashMap order.
        vars.sort();
        let mut table = toml::Table::new();
        let mut origins = Origins::default();
        for (name, raw_value) in vars {
            let segments: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(|segment| segment.to_ascii_lowercase().replace('_', "-"))
                .collect();
            if segments.iter().any(String::is_empty) {
                return Err(ConfigError::Parse {
                    origin: format!("environment variable {name}"),
                    message: "empty key segment (two `__` in a row or a trailing `__`)".to_string(),
                });
            }
            let value = parse_env_value(raw_value);
            let path =
                set_path(&mut table, &segments, value).map_err(|message| ConfigError::Parse {
                    origin: format!("environment variable {name}"),
                    message,
                })?;
            origins
                .by_path
                .insert(path, format!("environment variable {name}"));
        }
        Ok(Some(ConfigLayer { table, origins }))
    }
}

/// The keys whose values are file paths. In a config file, a relative path resolves against
/// the file's folder, so that a config names its SQL files and certificates beside it and
/// works from any working folder; from an environment variable or a flag it resolves against
/// the working folder; in the embedded defaults, `jobs[].sql-file` names a file compiled in
/// (see [`crate::EMBEDDED_JOB_FILES`]).
const PATH_KEYS: &[&[&str]] = &[
    &["storage", "data-dir"],
    &["storage", "log", "embedded", "dir"],
    &["ingest", "tls-cert"],
    &["ingest", "tls-key"],
    &["serving", "tls-cert"],
    &["serving", "tls-key"],
];

/// Rewrites the relative paths of a file's layer (see [`PATH_KEYS`], and every job's
/// `sql-file`) to absolute paths under `folder`.
fn resolve_paths(table: &mut toml::Table, folder: &Path) -> Result<(), String> {
    let resolve = |value: &mut toml::Value, key: &str| -> Result<(), String> {
        let toml::Value::String(text) = value else {
            // A wrong type is reported, with its key, when the merged config is read.
            return Ok(());
        };
        if Path::new(text.as_str()).is_relative() {
            let joined = folder.join(text.as_str());
            let Some(joined) = joined.to_str() else {
                return Err(format!(
                    "`{key}` = {text:?} resolves against the file's folder {}, which is not valid UTF-8",
                    folder.display()
                ));
            };
            *text = joined.to_string();
        }
        Ok(())
    };
    for keys in PATH_KEYS {
        let (last, sections) = keys.split_last().expect("path keys are not empty");
        let mut current = Some(&mut *table);
        for section in sections {
            current = match current.and_then(|table| table.get_mut(*section)) {
                Some(toml::Value::Table(child)) => Some(child),
                _ => None,
            };
        }
        if let Some(value) = current.and_then(|table| table.get_mut(*last)) {
            resolve(value, &keys.join("."))?;
        }
    }
    if let Some(toml::Value::Array(jobs)) = table.get_mut("jobs") {
        for (index, job) in jobs.iter_mut().enumerate() {
            if let Some(value) = job.as_table_mut().and_then(|job| job.get_mut("sql-file")) {
                resolve(value, &format!("jobs[{index}].sql-file"))?;
            }
        }
    }
    Ok(())
}

/// Merges layers, lowest first: tables merge key by key, anything else is replaced.
pub(crate) fn merge(layers: Vec<ConfigLayer>) -> Result<Merged, ConfigError> {
    let mut merged = Merged {
        table: toml::Table::new(),
        origins: Origins::default(),
    };
    for layer in layers {
        merge_table(&mut merged.table, layer.table, "")?;
        merged.origins.by_path.extend(layer.origins.by_path);
    }
    Ok(merged)
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn merge_table(
    base: &mut toml::Table,
    overlay: toml::Table,
    path: &str,
) -> Result<(), ConfigError> {
    for (key, value) in overlay {
        let child_path = join_path(path, &key);
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_child)), toml::Value::Table(overlay_child)) => {
                merge_table(base_child, overlay_child, &child_path)?;
            }
            (Some(toml::Value::Array(base_array)), toml::Value::Table(indexed))
                if is_index_table(&indexed) =>
            {
                apply_indexed(base_array, indexed, &child_path)?;
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
    Ok(())
}

/// An environment override like `STREAMS__0__PARTITIONS` is held as a table keyed `"0"`
/// until it is merged onto the array it indexes.
fn is_index_table(table: &toml::Table) -> bool {
    !table.is_empty() && table.keys().all(|key| key.parse::<usize>().is_ok())
}

fn apply_indexed(
    array: &mut [toml::Value],
    indexed: toml::Table,
    path: &str,
) -> Result<(), ConfigError> {
    let len = array.len();
    for (key, value) in indexed {
        let idx: usize = key.parse().expect("is_index_table checked every key");
        let element_path = format!("{path}[{idx}]");
        match (array.get_mut(idx), value) {
            (Some(toml::Value::Table(element)), toml::Value::Table(overlay)) => {
                merge_table(element, overlay, &element_path)?;
            }
            (Some(element), value) => *element = value,
            (None, _) => {
                return Err(ConfigError::Semantic {
                    path: element_path,
                    message: format!(
                        "an environment override indexes past the end of the array (it has {len} elements)"
                    ),
                });
            }
        }
    }
    Ok(())
}

fn set_path(
    table: &mut toml::Table,
    segments: &[String],
    value: toml::Value,
) -> Result<String, String> {
    let mut current = table;
    let mut path = String::new();
    for (idx, segment) in segments.iter().enumerate() {
        if segment.parse::<usize>().is_ok() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(segment);
        }
        if idx + 1 == segments.len() {
            current.insert(segment.clone(), value);
            return Ok(path);
        }
        let child = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match child {
            toml::Value::Table(child_table) => child_table,
            _ => return Err(format!("`{path}` is set both as a value and as a section")),
        };
    }
    Err("no key after the RUNNEL__ prefix".to_string())
}

fn parse_env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn record_origins(value: &toml::Value, path: &str, origin: &str, origins: &mut Origins) {
    origins.by_path.insert(path.to_string(), origin.to_string());
    match value {
        toml::Value::Table(table) => {
            for (key, child) in table {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                record_origins(child, &child_path, origin, origins);
            }
        }
        toml::Value::Array(array) => {
            for (idx, child) in array.iter().enumerate() {
                record_origins(child, &format!("{path}[{idx}]"), origin, origins);
            }
        }
        _ => {}
    }
}

fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().to_string();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |idx| idx + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    /// The environment layer spells a property key with dashes: `runnel-log` passes it to
    /// librdkafka with dots.
    #[test]
    fn an_env_variable_reaches_kafka_properties_with_a_dashed_key() {
        let env = HashMap::from([
            (
                "RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__SECURITY_PROTOCOL".to_string(),
                "SSL".to_string(),
            ),
            // A number or a boolean is taken as its text.
            (
                "RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__LINGER_MS".to_string(),
                "5".to_string(),
            ),
            (
                "RUNNEL__STORAGE__LOG__KAFKA__PROPERTIES__ENABLE_SSL_CERTIFICATE_VERIFICATION"
                    .to_string(),
                "true".to_string(),
            ),
        ]);
        let config = Config::load(&[], &env).expect("valid override");
        assert_eq!(
            config.storage.log.kafka.properties,
            BTreeMap::from([
                ("security-protocol".to_string(), "SSL".to_string()),
                ("linger-ms".to_string(), "5".to_string()),
                (
                    "enable-ssl-certificate-verification".to_string(),
                    "true".to_string()
                ),
            ])
        );
    }

    /// MSK IAM authentication is off by default and turned on by one variable.
    #[test]
    fn an_env_variable_turns_on_aws_msk_iam() {
        let config = Config::load(&[], &HashMap::new()).expect("the defaults");
        assert!(!config.storage.log.kafka.aws_msk_iam);
        let env = HashMap::from([(
            "RUNNEL__STORAGE__LOG__KAFKA__AWS_MSK_IAM".to_string(),
            "true".to_string(),
        )]);
        let config = Config::load(&[], &env).expect("valid override");
        assert!(config.storage.log.kafka.aws_msk_iam);
    }
}
