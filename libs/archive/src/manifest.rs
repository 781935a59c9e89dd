//! The manifest of a stream's history: which Parquet files hold which offsets.
//!
//! One JSON object per stream at `<prefix>/<stream>/_manifest.json`. It lists every archived
//! file with its partition, offset range, row count and event-time bounds, sorted by
//! partition and first offset; per partition, the ranges are contiguous (each file starts
//! one past the previous file's last offset). It is replaced whole by a single put, which
//! every supported object store makes atomic (the local store writes a temporary file and
//! renames it; S3 replaces an object in one request): readers see the old manifest or the
//! new one, never a mix. A file is written before the manifest that names it, so a manifest
//! never names a missing file.

use std::collections::BTreeMap;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::ArchiveError;

/// The manifest format this build writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// File name of a stream's manifest, inside the stream's folder.
pub const MANIFEST_FILE: &str = "_manifest.json";

/// Key of the Parquet footer metadata entry that holds a file's [`FileEntry`] as JSON, so a
/// file written just before a crash can be adopted without scanning it.
pub const FILE_ENTRY_METADATA_KEY: &str = "runnel.history.file";

/// One archived Parquet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path in the object store.
    pub path: String,
    /// Log partition.
    pub partition: u32,
    /// First log offset the file covers.
    pub first_offset: u64,
    /// Last log offset the file covers.
    pub last_offset: u64,
    /// Rows in the file: `last_offset - first_offset + 1` minus the records that could not
    /// be decoded (sent to the dead-letter topic instead).
    pub rows: u64,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Smallest event time in the file, epoch milliseconds (`None` if every row's is null).
    pub min_event_time: Option<i64>,
    /// Largest event time in the file, epoch milliseconds.
    pub max_event_time: Option<i64>,
    /// Ingest time (log timestamp) of the file's first record, epoch milliseconds.
    pub min_ingest_time: i64,
    /// Ingest time of the file's last record.
    pub max_ingest_time: i64,
}

impl FileEntry {
    /// The offset that follows this file.
    pub fn next_offset(&self) -> u64 {
        self.last_offset + 1
    }
}

/// A declared field, as the manifest records the schema the files were written with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestField {
    /// Field name.
    pub name: String,
    /// Arrow type, as Arrow prints it.
    pub data_type: String,
}

/// A stream's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    /// The stream.
    pub stream: String,
    /// The declared fields the files hold (before `_partition`, `_offset`, `_ingest_time`).
    pub fields: Vec<ManifestField>,
    /// How many times the manifest was written; the first write is 1.
    pub generation: u64,
    /// Every file, sorted by partition then first offset.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// An empty manifest for a stream with `fields`.
    pub fn empty(stream: &str, fields: Vec<ManifestField>) -> Self {
        Self {
            format: MANIFEST_FORMAT,
            stream: stream.to_string(),
            fields,
            generation: 0,
            files: Vec::new(),
        }
    }

    /// The files of `partition`, in offset order.
    pub fn partition_files(&self, partition: u32) -> impl Iterator<Item = &FileEntry> {
        self.files
            .iter()
            .filter(move |file| file.partition == partition)
    }

    /// The offset after the last archived one of `partition`, if it has files.
    pub fn next_offset(&self, partition: u32) -> Option<u64> {
        self.partition_files(partition)
            .last()
            .map(FileEntry::next_offset)
    }

    /// Adds a file, which must continue its partition's files.
    ///
    /// # Errors
    ///
    /// [`ArchiveError::ManifestInvalid`] if the file does not start one past the partition's
    /// last archived offset (when it has files), or has an empty range.
    pub fn push(&mut self, file: FileEntry) -> Result<(), ArchiveError> {
        if file.last_offset < file.first_offset {
            return Err(ArchiveError::ManifestInvalid {
                stream: self.stream.clone(),
                message: format!(
                    "file {} has last offset {} before first offset {}",
                    file.path, file.last_offset, file.first_offset
                ),
            });
        }
        if let Some(next) = self.next_offset(file.partition)
            && next != file.first_offset
        {
            return Err(ArchiveError::ManifestInvalid {
                stream: self.stream.clone(),
                message: format!(
                    "file {} starts at offset {} but partition {} is archived up to {}",
                    file.path,
                    file.first_offset,
                    file.partition,
                    next - 1
                ),
            });
        }
        let at = self
            .files
            .partition_point(|other| other.partition <= file.partition);
        self.files.insert(at, file);
        Ok(())
    }

    /// Checks the invariants: known format, sorted files, contiguous ranges per partition.
    fn check(&self) -> Result<(), ArchiveError> {
        let invalid = |message: String| ArchiveError::ManifestInvalid {
            stream: self.stream.clone(),
            message,
        };
        if self.format != MANIFEST_FORMAT {
            return Err(invalid(format!(
                "format {} is not the one this build reads ({MANIFEST_FORMAT})",
                self.format
            )));
        }
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        let mut last_partition = 0;
        for file in &self.files {
            if file.partition < last_partition {
                return Err(invalid(format!("file {} is out of order", file.path)));
            }
            last_partition = file.partition;
            if file.last_offset < file.first_offset {
                return Err(invalid(format!("file {} has an empty range", file.path)));
            }
            if let Some(&expected) = next.get(&file.partition)
                && expected != file.first_offset
            {
                return Err(invalid(format!(
                    "file {} starts at offset {}, expected {expected}",
                    file.path, file.first_offset
                )));
            }
            next.insert(file.partition, file.next_offset());
        }
        Ok(())
    }
}

/// The folder of a stream's history: `<prefix>/<stream>`.
pub fn stream_dir(prefix: &str, stream: &str) -> Path {
    Path::from(format!("{prefix}/{stream}"))
}

/// Where a stream's manifest lives.
pub fn manifest_path(prefix: &str, stream: &str) -> Path {
    Path::from(format!("{prefix}/{stream}/{MANIFEST_FILE}"))
}

/// Reads a stream's manifest; `None` if it has none yet.
///
/// # Errors
///
/// Object-store failures; [`ArchiveError::ManifestInvalid`] if it does not parse or breaks
/// its invariants.
pub async fn load_manifest(
    store: &dyn ObjectStore,
    prefix: &str,
    stream: &str,
) -> Result<Option<Manifest>, ArchiveError> {
    let path = manifest_path(prefix, stream);
    let bytes = match store.get(&path).await {
        Ok(result) => result
            .bytes()
            .await
            .map_err(|source| ArchiveError::store("read", &path, source))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(source) => return Err(ArchiveError::store("read", &path, source)),
    };
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|error| ArchiveError::ManifestInvalid {
            stream: stream.to_string(),
            message: format!("{path}: {error}"),
        })?;
    if manifest.stream != stream {
        return Err(ArchiveError::ManifestInvalid {
            stream: stream.to_string(),
            message: format!("{path} is the manifest of stream `{}`", manifest.stream),
        });
    }
    manifest.check()?;
    Ok(Some(manifest))
}

/// Replaces a stream's manifest with `manifest`, in one atomic put, and bumps its
/// generation.
///
/// # Errors
///
/// Object-store failures.
pub async fn save_manifest(
    store: &dyn ObjectStore,
    prefix: &str,
    manifest: &mut Manifest,
) -> Result<(), ArchiveError> {
    manifest.generation += 1;
    let path = manifest_path(prefix, &manifest.stream);
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|error| ArchiveError::ManifestInvalid {
            stream: manifest.stream.clone(),
            message: format!("serialize: {error}"),
        })?;
    store
        .put(&path, PutPayload::from(json))
        .await
        .map_err(|source| ArchiveError::store("write", &path, source))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(partition: u32, first: u64, last: u64) -> FileEntry {
        FileEntry {
            path: format!("h/s/date=2026-01-01/{partition}-{first}-{last}.parquet"),
            partition,
            first_offset: first,
            last_offset: last,
            rows: (last + 1).saturating_sub(first),
            bytes: 10,
            min_event_time: Some(1),
            max_event_time: Some(2),
            min_ingest_time: 1,
            max_ingest_time: 2,
        }
    }

    #[test]
    fn push_keeps_files_sorted_and_contiguous() {
        let mut manifest = Manifest::empty("s", Vec::new());
        manifest.push(file(1, 0, 9)).unwrap();
        manifest.push(file(0, 5, 9)).unwrap();
        manifest.push(file(1, 10, 19)).unwrap();
        manifest.push(file(0, 10, 10)).unwrap();
        let order: Vec<(u32, u64)> = manifest
            .files
            .iter()
            .map(|f| (f.partition, f.first_offset))
            .collect();
        assert_eq!(order, vec![(0, 5), (0, 10), (1, 0), (1, 10)]);
        assert_eq!(manifest.next_offset(0), Some(11));
        assert_eq!(manifest.next_offset(2), None);
        manifest.check().unwrap();
    }

    #[test]
    fn push_refuses_a_gap_or_an_overlap() {
        let mut manifest = Manifest::empty("s", Vec::new());
        manifest.push(file(0, 0, 9)).unwrap();
        let gap = manifest.push(file(0, 11, 20)).unwrap_err().to_string();
        assert!(gap.contains("archived up to 9"), "{gap}");
        assert!(manifest.push(file(0, 5, 20)).is_err());
        assert!(manifest.push(file(0, 10, 9)).is_err());
    }

    #[tokio::test]
    async fn save_then_load_round_trips_and_bumps_the_generation() {
        let store = object_store::memory::InMemory::new();
        assert_eq!(load_manifest(&store, "h", "s").await.unwrap(), None);
        let mut manifest = Manifest::empty("s", Vec::new());
        manifest.push(file(0, 0, 9)).unwrap();
        save_manifest(&store, "h", &mut manifest).await.unwrap();
        save_manifest(&store, "h", &mut manifest).await.unwrap();
        let loaded = load_manifest(&store, "h", "s").await.unwrap().unwrap();
        assert_eq!(loaded.generation, 2);
        assert_eq!(loaded, manifest);
        let error = load_manifest(&store, "h", "other").await.unwrap();
        assert_eq!(error, None);
    }

    #[tokio::test]
    async fn a_garbled_manifest_is_an_error_naming_it() {
        let store = object_store::memory::InMemory::new();
        store
            .put(
                &manifest_path("h", "s"),
                PutPayload::from_static(b"{not json"),
            )
            .await
            .unwrap();
        let error = load_manifest(&store, "h", "s")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("h/s/_manifest.json"), "{error}");
    }
}
