//! Which version of a job serving answers from.
//!
//! `jobs/<job>/active.json` in the object store names the active version. A replay backfill
//! writes it, in one put, once the version it runs has caught up with the live log; until
//! a job has one, its lowest declared version is active.

use object_store::ObjectStore;
use object_store::path::Path;
use runnel_config::Config;
use serde::{Deserialize, Serialize};

use crate::{BatchError, get_json, put_json};

/// The folder under the object store's root of the jobs' active-version files.
pub const JOBS_PREFIX: &str = "jobs";

/// The content of `jobs/<job>/active.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveVersion {
    /// The job's name.
    pub job: String,
    /// The active version.
    pub version: u32,
    /// When it became active (epoch ms).
    pub activated_at_ms: i64,
}

/// The object that names `job`'s active version.
pub fn active_path(job: &str) -> Path {
    Path::from(format!("{JOBS_PREFIX}/{job}/active.json"))
}

/// Reads `job`'s active-version file, if it has one.
///
/// # Errors
///
/// Store failures; a file that does not parse.
pub async fn load_active(
    store: &dyn ObjectStore,
    job: &str,
) -> Result<Option<ActiveVersion>, BatchError> {
    get_json(store, &active_path(job)).await
}

/// Makes `version` the active version of `job` (one put).
///
/// # Errors
///
/// Store failures.
pub async fn save_active(
    store: &dyn ObjectStore,
    active: &ActiveVersion,
) -> Result<(), BatchError> {
    put_json(store, &active_path(&active.job), active).await
}

/// The version of `job` serving answers from: the one its active-version file names, if
/// that version is declared, else the lowest declared one; `None` if `job` is not declared.
///
/// # Errors
///
/// The errors of [`load_active`].
pub async fn active_version(
    store: &dyn ObjectStore,
    config: &Config,
    job: &str,
) -> Result<Option<u32>, BatchError> {
    let declared: Vec<u32> = config
        .jobs
        .iter()
        .filter(|declared| declared.name == job)
        .map(|declared| declared.version)
        .collect();
    if let Some(active) = load_active(store, job).await?
        && declared.contains(&active.version)
    {
        return Ok(Some(active.version));
    }
    Ok(declared.into_iter().min())
}
