//! The embedded log's `flock`s: on a partition's `writer.lock`, on the files under `__locks`,
//! and the group membership that holds one per group.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tracing::info;

use crate::{GroupMembership, LogError, OwnershipChange};

/// Opens the lock file `path`, creating it and its folder.
fn open_lock_file(path: &Path) -> Result<File, LogError> {
    let parent = path.parent().expect("lock paths have a parent");
    std::fs::create_dir_all(parent).map_err(LogError::io("create lock folder", parent))?;
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(LogError::io("open lock file", path))
}

/// Takes the exclusive lock on `path`; `None` while another holder has it.
pub(crate) fn try_lock_file(path: &Path) -> Result<Option<File>, LogError> {
    let file = open_lock_file(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(source)) => Err(LogError::io("lock", path)(source)),
    }
}

/// Takes the exclusive lock on `path`, waiting while another holder has it. Blocking.
pub(crate) fn lock_file_blocking(path: &Path) -> Result<File, LogError> {
    let file = open_lock_file(path)?;
    file.lock().map_err(LogError::io("lock", path))?;
    Ok(file)
}

/// The embedded log's membership: one member at a time owns every partition. The member
/// holds an exclusive `flock` on the group's lock file; a member in another process (or a
/// second one in this process) waits for it, as a standby, and takes every partition once
/// the first leaves or dies.
pub(crate) struct FileLockMembership {
    path: PathBuf,
    partitions: u32,
    /// Held while this member owns the partitions.
    lock: Option<File>,
}

/// How often a waiting member tries the group's lock.
const MEMBER_POLL: Duration = Duration::from_millis(100);

impl FileLockMembership {
    pub(crate) fn new(path: PathBuf, partitions: u32) -> FileLockMembership {
        FileLockMembership {
            path,
            partitions,
            lock: None,
        }
    }
}

#[async_trait]
impl GroupMembership for FileLockMembership {
    async fn next_change(&mut self) -> Result<OwnershipChange, LogError> {
        if self.lock.is_some() {
            return std::future::pending().await;
        }
        let mut waiting_logged = false;
        loop {
            if let Some(lock) = try_lock_file(&self.path)? {
                self.lock = Some(lock);
                return Ok(OwnershipChange::Assigned((0..self.partitions).collect()));
            }
            if !waiting_logged {
                info!(
                    lock = %self.path.display(),
                    "another member of the group owns its partitions; waiting for it to leave"
                );
                waiting_logged = true;
            }
            tokio::time::sleep(MEMBER_POLL).await;
        }
    }

    fn owns(&self, partition: u32) -> bool {
        self.lock.is_some() && partition < self.partitions
    }

    async fn leave(self: Box<Self>) -> Result<(), LogError> {
        Ok(())
    }
}
