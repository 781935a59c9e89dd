//! Batch views: a recompute's results as Parquet, with a manifest; written by the
//! batch-reprocessor, read by serving.
//!
//! A view of version `V` of job `J` lives under `views/<J>/<V>/`: each recompute writes its
//! files into a fresh generation folder (`<generation>/part-<n>.parquet`), then replaces
//! `_manifest.json` in one put. Readers go through the manifest, so they see the old view
//! or the new one, never a mix; the previous generation's files are deleted after. A new
//! generation that would hold fewer windows or events than the one it replaces is not
//! written unless asked for (`RecomputeRequest::allow_shrink`): its files are deleted and
//! the previous generation stays.

use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::{JobsError, get_json, put_json};

/// The folder under the object store's root of the batch views.
pub const VIEWS_PREFIX: &str = "views";

/// The view manifest's format version.
pub const VIEW_FORMAT: u32 = 1;

/// The manifest's file name in a view's folder.
pub const VIEW_MANIFEST_FILE: &str = "_manifest.json";

/// One Parquet file of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewFile {
    /// Object path.
    pub path: String,
    /// Result rows.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// What a batch view holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewManifest {
    /// [`VIEW_FORMAT`].
    pub format: u32,
    /// The job's name.
    pub job: String,
    /// The job's version.
    pub version: u32,
    /// Counts the recomputes of this view; names the folder of its files.
    pub generation: u64,
    /// The view holds the windows starting at or after this (epoch ms): exactly the window
    /// starts the recompute kept (for sessions, the asked-for start plus the gap); `None`:
    /// from the first event.
    pub from_ms: Option<i64>,
    /// Asked-for end (epoch ms): events before it were read.
    pub to_ms: Option<i64>,
    /// The view is complete up to this event time (epoch ms): it holds every window ending
    /// at or before it, counting every archived event. `min(to, the history's watermark less
    /// the allowed lateness)`, the history's watermark being the least, over the stream's
    /// partitions that have history, of the largest archived event time less the job's
    /// `max-out-of-orderness`. `None` when nothing was archived yet.
    pub horizon_ms: Option<i64>,
    /// History files read.
    pub history_files: u64,
    /// Events read (within `[from, horizon)`).
    pub events: u64,
    /// The result files.
    pub files: Vec<ViewFile>,
    /// When the view was written (epoch ms).
    pub created_at_ms: i64,
}

impl ViewManifest {
    /// Returns the windows (result rows) the view holds.
    pub fn windows(&self) -> u64 {
        self.files.iter().map(|file| file.rows).sum()
    }
}

/// The folder of version `version` of job `job`'s view.
pub fn view_dir(prefix: &str, job: &str, version: u32) -> Path {
    Path::from(format!("{prefix}/{job}/{version}"))
}

/// The path of a view's manifest.
pub fn view_manifest_path(prefix: &str, job: &str, version: u32) -> Path {
    view_dir(prefix, job, version).join(VIEW_MANIFEST_FILE)
}

/// The folder of one generation's files.
pub fn generation_dir(prefix: &str, job: &str, version: u32, generation: u64) -> Path {
    view_dir(prefix, job, version).join(format!("{generation:020}"))
}

/// Loads a view's manifest, if the view exists.
///
/// # Errors
///
/// Store failures; a manifest that does not parse or has another format.
pub async fn load_view(
    store: &dyn ObjectStore,
    prefix: &str,
    job: &str,
    version: u32,
) -> Result<Option<ViewManifest>, JobsError> {
    let path = view_manifest_path(prefix, job, version);
    let Some(manifest) = get_json::<ViewManifest>(store, &path).await? else {
        return Ok(None);
    };
    if manifest.format != VIEW_FORMAT {
        return Err(JobsError::Invalid {
            path: path.to_string(),
            message: format!(
                "format {} (this build reads {VIEW_FORMAT})",
                manifest.format
            ),
        });
    }
    Ok(Some(manifest))
}

/// Replaces a view's manifest (one put: readers see the old or the new one).
pub async fn save_view(
    store: &dyn ObjectStore,
    prefix: &str,
    manifest: &ViewManifest,
) -> Result<(), JobsError> {
    let path = view_manifest_path(prefix, &manifest.job, manifest.version);
    put_json(store, &path, manifest).await
}
