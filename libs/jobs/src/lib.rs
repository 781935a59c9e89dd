//! The contract between runnel's stages: what the stream-processor, the batch-reprocessor,
//! serving and the CLI write and read of one another's, defined once.
//!
//! - [`job`]: a job version compiled from the config: its identity (id, name, version), the
//!   topics and consumer groups named after it (`<job>.results`, `<job>.late`,
//!   `<job>.repartition`, ...), its plan and its source stream.
//! - [`records`]: the result and late-event records on those topics, encoded by the
//!   stream-processor and decoded by serving.
//! - [`checkpoint`]: the tasks' checkpoints on the object store (`checkpoints/<job>/<p>/`)
//!   and a job's recorded failure, written by the stream-processor, read by it on recovery
//!   and by serving.
//! - [`view`]: the batch views (`views/<job>/<version>/`), written by a recompute, read by
//!   serving.
//! - [`catalog`]: the job catalog (`jobs/<job>/`): registered versions and each job's active
//!   version, written by backfills, read by every service.
#![warn(missing_docs)]

pub mod catalog;
pub mod checkpoint;
pub mod job;
pub mod records;
pub mod view;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use runnel_config::ConfigError;
use serde::Serialize;

pub use catalog::{
    ActiveVersion, Catalog, CatalogVersion, JOBS_PREFIX, RegisteredVersion, Registration,
    active_path, load_active, register, registered_versions, save_active, version_path,
};
pub use job::{
    Job, JoinedInput, WindowJoined, job_group, job_limits, late_topic, members_group,
    members_topic, repartition_topic, results_topic,
};

/// Everything reading or writing what the stages share can fail with.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// An object-store operation failed.
    #[error("{operation} {path}: {source}")]
    Store {
        /// What was being done.
        operation: &'static str,
        /// The object.
        path: String,
        /// The store's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// An object that does not parse.
    #[error("{path}: {message}")]
    Invalid {
        /// The object.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The version is registered with another definition.
    #[error(
        "job `{job}` version {version} is already registered ({path}) with {difference}; a \
         version's definition never changes once registered: declare the change as a new version"
    )]
    Conflict {
        /// The job.
        job: String,
        /// The version.
        version: u32,
        /// The registration.
        path: String,
        /// What differs.
        difference: String,
    },
    /// A job's configuration or SQL is not valid.
    #[error("job `{job}`: {message}")]
    Job {
        /// The job version's id.
        job: String,
        /// What is wrong.
        message: String,
    },
    /// A checkpoint is unreadable or inconsistent.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The object.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A result or late-event record could not be encoded or decoded.
    #[error("encode or decode a record: {0}")]
    Encode(#[source] arrow::error::ArrowError),
    /// The job's SQL could not be read.
    #[error("job `{job}`: {source}")]
    Sql {
        /// The job version's id.
        job: String,
        /// The config's error.
        #[source]
        source: ConfigError,
    },
}

impl JobsError {
    pub(crate) fn store(operation: &'static str, path: &Path, source: object_store::Error) -> Self {
        Self::Store {
            operation,
            path: path.to_string(),
            source: Box::new(source),
        }
    }
}

/// Reads the JSON object at `path`; `None` if there is none.
///
/// # Errors
///
/// [`JobsError::Store`], [`JobsError::Invalid`].
pub async fn get_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Option<T>, JobsError> {
    let bytes = match store.get(path).await {
        Ok(found) => found
            .bytes()
            .await
            .map_err(|source| JobsError::store("read", path, source))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(JobsError::store("read", path, source)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| JobsError::Invalid {
            path: path.to_string(),
            message: error.to_string(),
        })
}

/// Writes `value` as JSON at `path`, replacing what was there in one put.
///
/// # Errors
///
/// [`JobsError::Store`], [`JobsError::Invalid`] if it does not serialize.
pub async fn put_json<T: Serialize>(
    store: &dyn ObjectStore,
    path: &Path,
    value: &T,
) -> Result<(), JobsError> {
    store
        .put(path, PutPayload::from(to_json(path, value)?))
        .await
        .map_err(|source| JobsError::store("write", path, source))?;
    Ok(())
}

pub(crate) fn to_json<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, JobsError> {
    serde_json::to_vec_pretty(value).map_err(|error| JobsError::Invalid {
        path: path.to_string(),
        message: format!("serialize: {error}"),
    })
}
