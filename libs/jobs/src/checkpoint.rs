//! Task checkpoints on the object store: written by the stream-processor's tasks, read back by
//! them on recovery, and read by serving (`ListJobs`) and the CLI for where each task stands.
//!
//! A task's checkpoint `n` is two objects under `<prefix>/<job>/<partition>/<n, 20 digits>/`:
//! `state.arrow` (the operator's snapshot) and then `_checkpoint.json` (this module's
//! [`CheckpointManifest`]: the source offset to resume from and the state's size). The
//! manifest goes last, so a checkpoint without one is incomplete and never used; recovery
//! takes the highest complete epoch. Older epochs beyond the configured count are deleted
//! after a new one is complete.

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::{JobsError, get_json, put_json};

const MANIFEST_FILE: &str = "_checkpoint.json";
const STATE_FILE: &str = "state.arrow";
/// Exactly-once: the manifest of a checkpoint written before its transaction commits.
const PREPARED_FILE: &str = "_prepared.json";

/// What a complete checkpoint records besides the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointManifest {
    /// The job.
    pub job: String,
    /// The source partition the task owns.
    pub partition: u32,
    /// The checkpoint's number, from 1.
    pub epoch: u64,
    /// The next source offset to read after restoring the state.
    pub source_offset: u64,
    /// The operator's watermark when the checkpoint was taken.
    pub watermark: i64,
    /// Late events counted so far.
    pub late_count: u64,
    /// Size of `state.arrow`.
    pub state_bytes: u64,
    /// For a task reading a repartition topic: per source partition, the highest source
    /// offset seen, below which copies (written again by a restarted router) are dropped.
    #[serde(default)]
    pub seen_source_offsets: Vec<Option<u64>>,
    /// For a task reading an interval join job's repartition topic: per source partition,
    /// the number of the last copy seen of the row at `seen_source_offsets` (a stream row
    /// joins into several rows, numbered in one order); absent, 0.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen_source_copies: Vec<u32>,
    /// For a join job: per partition of its table's changelog, the next offset to read after
    /// restoring the state (which holds the join's table).
    #[serde(default)]
    pub table_offsets: Vec<u64>,
}

/// The manifest of task `partition` of `job`'s newest complete checkpoint under `prefix`, if
/// it has one: where the task would resume, and its watermark then.
///
/// # Errors
///
/// Object-store failures; a manifest that does not parse or names another task.
pub async fn latest_checkpoint(
    store: &dyn ObjectStore,
    prefix: &str,
    job: &str,
    partition: u32,
) -> Result<Option<CheckpointManifest>, JobsError> {
    TaskCheckpoints::new(prefix, job, partition, 1)
        .latest_manifest(store)
        .await
}

/// A restored checkpoint: its manifest and the operator's snapshot.
#[derive(Debug)]
pub struct Restored {
    /// The manifest.
    pub manifest: CheckpointManifest,
    /// The operator's snapshot bytes.
    pub state: bytes::Bytes,
}

/// The metadata committed with an exactly-once checkpoint's source offset, naming it:
/// `epoch=<n> token=<t>`.
pub fn commit_metadata(epoch: u64, token: &str) -> String {
    format!("epoch={epoch} token={token}")
}

/// The epoch and token of [`commit_metadata`].
fn parse_commit_metadata(metadata: &str) -> Option<(u64, String)> {
    let mut epoch = None;
    let mut token = None;
    for part in metadata.split_whitespace() {
        match part.split_once('=') {
            Some(("epoch", value)) => epoch = value.parse().ok(),
            Some(("token", value)) => token = Some(value.to_string()),
            _ => {}
        }
    }
    Some((epoch?, token?))
}

/// The checkpoints of one task.
#[derive(Debug, Clone)]
pub struct TaskCheckpoints {
    prefix: String,
    job: String,
    partition: u32,
    keep: u32,
}

impl TaskCheckpoints {
    /// The checkpoints of `job`'s task for `partition`, under `prefix`, keeping `keep`.
    pub fn new(prefix: &str, job: &str, partition: u32, keep: u32) -> Self {
        Self {
            prefix: prefix.to_string(),
            job: job.to_string(),
            partition,
            keep: keep.max(1),
        }
    }

    fn dir(&self) -> Path {
        Path::from(format!("{}/{}/{}", self.prefix, self.job, self.partition))
    }

    /// The folder of checkpoint `epoch`; with exactly-once, each writer's checkpoints carry
    /// its `token`, so that a fenced zombie never writes where its successor does.
    fn epoch_dir_of(&self, epoch: u64, token: Option<&str>) -> String {
        match token {
            None => format!(
                "{}/{}/{}/{epoch:020}",
                self.prefix, self.job, self.partition
            ),
            Some(token) => format!(
                "{}/{}/{}/{epoch:020}-{token}",
                self.prefix, self.job, self.partition
            ),
        }
    }

    /// Checkpoints that have a manifest, as (epoch, writer token), ascending by epoch.
    async fn complete_checkpoints(
        &self,
        store: &dyn ObjectStore,
    ) -> Result<Vec<(u64, Option<String>)>, JobsError> {
        let dir = self.dir();
        let listed: Vec<object_store::ObjectMeta> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|source| JobsError::store("list", &dir, source))?;
        let mut epochs: Vec<(u64, Option<String>)> = listed
            .iter()
            .filter(|meta| meta.location.filename() == Some(MANIFEST_FILE))
            .filter_map(|meta| {
                let parts: Vec<_> = meta.location.parts().collect();
                let name = parts.get(parts.len().checked_sub(2)?)?.as_ref().to_string();
                match name.split_once('-') {
                    None => Some((name.parse().ok()?, None)),
                    Some((epoch, token)) => Some((epoch.parse().ok()?, Some(token.to_string()))),
                }
            })
            .collect();
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// The manifest of the newest complete checkpoint, if any.
    ///
    /// # Errors
    ///
    /// Object-store failures; a manifest that does not parse or names another task.
    pub async fn latest_manifest(
        &self,
        store: &dyn ObjectStore,
    ) -> Result<Option<CheckpointManifest>, JobsError> {
        let Some((epoch, token)) = self.complete_checkpoints(store).await?.pop() else {
            return Ok(None);
        };
        self.manifest_at(store, epoch, token.as_deref(), MANIFEST_FILE)
            .await
            .map(Some)
    }

    /// The manifest `file` of checkpoint `epoch` written by `token`, checked against it.
    async fn manifest_at(
        &self,
        store: &dyn ObjectStore,
        epoch: u64,
        token: Option<&str>,
        file: &str,
    ) -> Result<CheckpointManifest, JobsError> {
        let manifest_path = Path::from(format!("{}/{file}", self.epoch_dir_of(epoch, token)));
        let bytes = read(store, &manifest_path).await?;
        let manifest: CheckpointManifest =
            serde_json::from_slice(&bytes).map_err(|error| JobsError::Checkpoint {
                path: manifest_path.to_string(),
                message: error.to_string(),
            })?;
        if manifest.job != self.job
            || manifest.partition != self.partition
            || manifest.epoch != epoch
        {
            return Err(JobsError::Checkpoint {
                path: manifest_path.to_string(),
                message: format!(
                    "names job `{}` partition {} epoch {}",
                    manifest.job, manifest.partition, manifest.epoch
                ),
            });
        }
        Ok(manifest)
    }

    /// The newest complete checkpoint, if any.
    ///
    /// # Errors
    ///
    /// Those of [`Self::latest_manifest`]; a state of another size than its manifest says.
    pub async fn latest(&self, store: &dyn ObjectStore) -> Result<Option<Restored>, JobsError> {
        let Some((epoch, token)) = self.complete_checkpoints(store).await?.pop() else {
            return Ok(None);
        };
        let manifest = self
            .manifest_at(store, epoch, token.as_deref(), MANIFEST_FILE)
            .await?;
        self.with_state(store, manifest, token.as_deref())
            .await
            .map(Some)
    }

    /// Exactly-once: the checkpoint that `offset`, committed for `group` with `metadata`
    /// ([`commit_metadata`]), names, checked to resume at that offset.
    ///
    /// # Errors
    ///
    /// Metadata that names no checkpoint; the checkpoint is missing, inconsistent or resumes
    /// elsewhere; object-store failures.
    pub async fn committed(
        &self,
        store: &dyn ObjectStore,
        group: &str,
        offset: u64,
        metadata: &str,
    ) -> Result<Restored, JobsError> {
        let inconsistent = |message: String| JobsError::Checkpoint {
            path: self.dir().to_string(),
            message,
        };
        let (epoch, token) = parse_commit_metadata(metadata).ok_or_else(|| {
            inconsistent(format!(
                "the offset {offset} committed for group {group} carries `{metadata}`, not an exactly-once checkpoint's epoch and token"
            ))
        })?;
        let restored = self.prepared(store, epoch, &token).await?;
        if restored.manifest.source_offset != offset {
            return Err(inconsistent(format!(
                "checkpoint {epoch} of writer {token} resumes at {}, the offset committed with it is {offset}",
                restored.manifest.source_offset
            )));
        }
        Ok(restored)
    }

    /// Checkpoint `epoch` of writer `token` as prepared before its transaction committed
    /// (exactly-once: the epoch and token come from the offsets committed with it).
    ///
    /// # Errors
    ///
    /// The checkpoint is missing or inconsistent; object-store failures.
    async fn prepared(
        &self,
        store: &dyn ObjectStore,
        epoch: u64,
        token: &str,
    ) -> Result<Restored, JobsError> {
        let manifest = self
            .manifest_at(store, epoch, Some(token), PREPARED_FILE)
            .await?;
        self.with_state(store, manifest, Some(token)).await
    }

    async fn with_state(
        &self,
        store: &dyn ObjectStore,
        manifest: CheckpointManifest,
        token: Option<&str>,
    ) -> Result<Restored, JobsError> {
        let dir = self.epoch_dir_of(manifest.epoch, token);
        let state_path = Path::from(format!("{dir}/{STATE_FILE}"));
        let state = read(store, &state_path).await?;
        if state.len() as u64 != manifest.state_bytes {
            return Err(JobsError::Checkpoint {
                path: state_path.to_string(),
                message: format!(
                    "holds {} bytes, its manifest says {}",
                    state.len(),
                    manifest.state_bytes
                ),
            });
        }
        Ok(Restored { manifest, state })
    }

    /// Writes checkpoint `manifest.epoch`: the state, then the manifest; then deletes epochs
    /// older than the ones to keep.
    ///
    /// # Errors
    ///
    /// Object-store failures.
    pub async fn save(
        &self,
        store: &dyn ObjectStore,
        manifest: &CheckpointManifest,
        state: Vec<u8>,
    ) -> Result<(), JobsError> {
        self.write_state(store, manifest, state, None).await?;
        self.complete(store, manifest, None).await
    }

    /// Exactly-once, before the transaction commits: the state and `_prepared.json` of
    /// checkpoint `manifest.epoch` of writer `token`, which recovery reads when the offsets
    /// committed with the transaction name them.
    ///
    /// # Errors
    ///
    /// Object-store failures.
    pub async fn prepare(
        &self,
        store: &dyn ObjectStore,
        manifest: &CheckpointManifest,
        state: Vec<u8>,
        token: &str,
    ) -> Result<(), JobsError> {
        self.write_state(store, manifest, state, Some(token))
            .await?;
        self.write_manifest(store, manifest, Some(token), PREPARED_FILE)
            .await
    }

    async fn write_state(
        &self,
        store: &dyn ObjectStore,
        manifest: &CheckpointManifest,
        state: Vec<u8>,
        token: Option<&str>,
    ) -> Result<(), JobsError> {
        let dir = self.epoch_dir_of(manifest.epoch, token);
        let state_path = Path::from(format!("{dir}/{STATE_FILE}"));
        store
            .put(&state_path, PutPayload::from(state))
            .await
            .map_err(|source| JobsError::store("write", &state_path, source))?;
        Ok(())
    }

    async fn write_manifest(
        &self,
        store: &dyn ObjectStore,
        manifest: &CheckpointManifest,
        token: Option<&str>,
        file: &str,
    ) -> Result<(), JobsError> {
        let dir = self.epoch_dir_of(manifest.epoch, token);
        put_json(store, &Path::from(format!("{dir}/{file}")), manifest).await
    }

    /// Marks checkpoint `manifest.epoch` (of writer `token`) complete with its manifest, then
    /// deletes older ones beyond the ones to keep: with a token, only this writer's, and
    /// other writers' older than the oldest it keeps (a zombie's newer ones are left).
    ///
    /// # Errors
    ///
    /// Object-store failures.
    pub async fn complete(
        &self,
        store: &dyn ObjectStore,
        manifest: &CheckpointManifest,
        token: Option<&str>,
    ) -> Result<(), JobsError> {
        self.write_manifest(store, manifest, token, MANIFEST_FILE)
            .await?;
        let checkpoints = self.complete_checkpoints(store).await?;
        let own: Vec<u64> = checkpoints
            .iter()
            .filter(|(_, writer)| writer.as_deref() == token)
            .map(|(epoch, _)| *epoch)
            .collect();
        let stale_own = own.len().saturating_sub(self.keep as usize);
        let oldest_kept = own.get(stale_own).copied().unwrap_or(manifest.epoch);
        for (epoch, writer) in &checkpoints {
            let stale = if writer.as_deref() == token {
                own[..stale_own].contains(epoch)
            } else {
                token.is_some() && *epoch < oldest_kept
            };
            if !stale {
                continue;
            }
            let dir = self.epoch_dir_of(*epoch, writer.as_deref());
            // The manifest first: a half-deleted epoch is then incomplete, never half-used.
            for file in [MANIFEST_FILE, PREPARED_FILE, STATE_FILE] {
                let path = Path::from(format!("{dir}/{file}"));
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(source) => {
                        return Err(JobsError::store("delete", &path, source));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The object that says a job failed for good: `<prefix>/<job>/_failed.json`.
fn failure_path(prefix: &str, job: &str) -> Path {
    Path::from(format!("{prefix}/{job}/{FAILURE_FILE}"))
}

const FAILURE_FILE: &str = "_failed.json";

/// A job the stream-processor stopped after its restarts ran out, as recorded next to its
/// checkpoints for every process to read (serving's `ListJobs`). It is removed when the job
/// starts again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// What failed, where (partition and offset) and why.
    pub error: String,
    /// Restarts tried before giving up.
    pub restarts: u32,
    /// When the job was given up (epoch ms).
    pub failed_at_ms: i64,
}

/// Records that `job` failed for good.
///
/// # Errors
///
/// Object-store failures.
pub async fn record_job_failure(
    store: &dyn ObjectStore,
    prefix: &str,
    job: &str,
    failure: &JobFailure,
) -> Result<(), JobsError> {
    put_json(store, &failure_path(prefix, job), failure).await
}

/// Removes the record of `job`'s failure, if there is one (the job starts again).
///
/// # Errors
///
/// Object-store failures.
pub async fn clear_job_failure(
    store: &dyn ObjectStore,
    prefix: &str,
    job: &str,
) -> Result<(), JobsError> {
    let path = failure_path(prefix, job);
    match store.delete(&path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(JobsError::store("delete", &path, source)),
    }
}

/// The failure recorded for `job` under `prefix`, if the stream-processor gave it up.
///
/// # Errors
///
/// Object-store failures; a record that does not parse.
pub async fn job_failure(
    store: &dyn ObjectStore,
    prefix: &str,
    job: &str,
) -> Result<Option<JobFailure>, JobsError> {
    // A record that does not parse is a checkpoint's error, as the manifests' are.
    get_json(store, &failure_path(prefix, job))
        .await
        .map_err(|error| match error {
            JobsError::Invalid { path, message } => JobsError::Checkpoint { path, message },
            other => other,
        })
}

async fn read(store: &dyn ObjectStore, path: &Path) -> Result<bytes::Bytes, JobsError> {
    store
        .get(path)
        .await
        .map_err(|source| JobsError::store("read", path, source))?
        .bytes()
        .await
        .map_err(|source| JobsError::store("read", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(epoch: u64, bytes: u64) -> CheckpointManifest {
        CheckpointManifest {
            job: "j".to_string(),
            partition: 3,
            epoch,
            source_offset: epoch * 10,
            watermark: 0,
            late_count: 0,
            state_bytes: bytes,
            seen_source_offsets: Vec::new(),
            seen_source_copies: Vec::new(),
            table_offsets: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_latest_complete_checkpoint_is_restored_and_old_ones_pruned() {
        let store = object_store::memory::InMemory::new();
        let checkpoints = TaskCheckpoints::new("checkpoints", "j", 3, 2);
        assert!(checkpoints.latest(&store).await.unwrap().is_none());
        for epoch in 1..=3 {
            checkpoints
                .save(&store, &manifest(epoch, 3), vec![epoch as u8; 3])
                .await
                .unwrap();
        }
        // An epoch whose state was written but not its manifest is not used.
        store
            .put(
                &Path::from("checkpoints/j/3/00000000000000000004/state.arrow"),
                PutPayload::from_static(b"half"),
            )
            .await
            .unwrap();
        let restored = checkpoints.latest(&store).await.unwrap().unwrap();
        assert_eq!(restored.manifest, manifest(3, 3));
        assert_eq!(&restored.state[..], &[3, 3, 3]);
        assert_eq!(
            checkpoints.complete_checkpoints(&store).await.unwrap(),
            vec![(2, None), (3, None)]
        );
    }

    #[tokio::test]
    async fn exactly_once_checkpoints_are_per_writer_and_a_zombie_never_touches_its_successor() {
        let store = object_store::memory::InMemory::new();
        let checkpoints = TaskCheckpoints::new("checkpoints", "j", 3, 2);
        // The first owner: epochs 1 and 2 prepared and completed.
        for epoch in 1..=2 {
            checkpoints
                .prepare(&store, &manifest(epoch, 3), vec![1; 3], "first")
                .await
                .unwrap();
            checkpoints
                .complete(&store, &manifest(epoch, 3), Some("first"))
                .await
                .unwrap();
        }
        // It is paused with epoch 3 prepared; its successor restores epoch 2 and goes on.
        checkpoints
            .prepare(&store, &manifest(3, 3), vec![9; 3], "first")
            .await
            .unwrap();
        let restored = checkpoints.prepared(&store, 2, "first").await.unwrap();
        assert_eq!(restored.manifest, manifest(2, 3));
        for epoch in 3..=5 {
            checkpoints
                .prepare(&store, &manifest(epoch, 3), vec![2; 3], "second")
                .await
                .unwrap();
            checkpoints
                .complete(&store, &manifest(epoch, 3), Some("second"))
                .await
                .unwrap();
        }
        // The zombie wakes and completes its epoch 3 (its commit would be fenced): its
        // files are its own, and its pruning leaves the successor's alone.
        checkpoints
            .complete(&store, &manifest(3, 3), Some("first"))
            .await
            .unwrap();
        let successor = checkpoints.prepared(&store, 5, "second").await.unwrap();
        assert_eq!(&successor.state[..], &[2, 2, 2]);
        let complete = checkpoints.complete_checkpoints(&store).await.unwrap();
        assert!(
            complete.contains(&(4, Some("second".to_string()))),
            "{complete:?}"
        );
        assert!(
            complete.contains(&(5, Some("second".to_string()))),
            "{complete:?}"
        );
        assert!(
            !complete.contains(&(3, Some("second".to_string()))),
            "the successor keeps two of its own: {complete:?}"
        );
        assert!(
            !complete
                .iter()
                .any(|(epoch, writer)| writer.as_deref() == Some("first") && *epoch < 3),
            "the successor pruned its predecessor's older checkpoints: {complete:?}"
        );
    }

    #[tokio::test]
    async fn a_state_of_the_wrong_size_is_refused() {
        let store = object_store::memory::InMemory::new();
        let checkpoints = TaskCheckpoints::new("c", "j", 3, 2);
        checkpoints
            .save(&store, &manifest(1, 99), vec![1; 3])
            .await
            .unwrap();
        let error = checkpoints.latest(&store).await.unwrap_err().to_string();
        assert!(
            error.contains("state.arrow") && error.contains("99"),
            "{error}"
        );
    }
}
