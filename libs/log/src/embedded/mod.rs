//! The embedded backend: partitioned, checksummed segment files on local disk.
//!
//! Layout under the log folder:
//!
//! ```text
//! <topic>/topic.meta                        "partitions = N"
//! <topic>/<partition>/<base_offset>.log     record frames (see `format`)
//! <topic>/<partition>/<base_offset>.index   index of a sealed segment
//! __consumer_offsets/<group>/<topic>        "partition offset" lines
//! ```

mod format;
mod partition;
mod reader;
mod segment;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use runnel_config::EmbeddedLogConfig;
use tokio::sync::oneshot;
use tracing::info;

use self::partition::{Command, Partition};
use self::reader::EmbeddedReader;
use self::segment::{sync_dir, write_file_atomically};
use crate::group::SoleMembership;
use crate::{
    GroupMembership, Log, LogError, PartitionReader, Partitioner, ProduceRecord, RecordPosition,
    StartOffset, check_name, check_new_topic,
};

const TOPIC_META_FILE: &str = "topic.meta";
const LOCK_FILE: &str = "runnel.lock";
const OFFSETS_DIR: &str = "__consumer_offsets";

struct Topic {
    partitions: Vec<Partition>,
}

/// The embedded log. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct EmbeddedLog {
    dir: PathBuf,
    /// An exclusive `flock` on `runnel.lock`, so one process at a time owns the folder
    /// (one writer per partition; readers' wake-ups are in-process). Released by `close`.
    lock_file: Mutex<Option<std::fs::File>>,
    config: EmbeddedLogConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes topic creation.
    create_lock: tokio::sync::Mutex<()>,
    /// Serializes commits, which read, merge and rewrite a group's offsets file.
    commit_lock: tokio::sync::Mutex<()>,
    /// Committed offsets, cached: (group, topic) -> partition -> offset.
    committed: Mutex<HashMap<(String, String), BTreeMap<u32, u64>>>,
    partitioner: Partitioner,
}

impl EmbeddedLog {
    /// Opens the log in `dir` (creating it), recovering every partition found there.
    ///
    /// # Errors
    ///
    /// I/O errors, and [`LogError::Corrupt`] for damage that is not a torn tail.
    pub async fn open(dir: &Path, config: &EmbeddedLogConfig) -> Result<EmbeddedLog, LogError> {
        let dir = dir.to_path_buf();
        let config = config.clone();
        run_blocking("open log", dir.clone(), move || {
            EmbeddedLog::open_blocking(dir, config)
        })
        .await
    }

    fn open_blocking(dir: PathBuf, config: EmbeddedLogConfig) -> Result<EmbeddedLog, LogError> {
        std::fs::create_dir_all(&dir).map_err(LogError::io("create log folder", &dir))?;
        let lock_file = lock_dir(&dir)?;
        let mut topics = HashMap::new();
        let entries = std::fs::read_dir(&dir).map_err(LogError::io("list log folder", &dir))?;
        for entry in entries {
            let entry = entry.map_err(LogError::io("list log folder", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta_path = entry.path().join(TOPIC_META_FILE);
            if name == OFFSETS_DIR || !entry.path().is_dir() {
                continue;
            }
            match std::fs::metadata(&meta_path) {
                Ok(_) => {}
                // A folder without metadata is a topic whose creation did not finish.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(LogError::io("read topic metadata", &meta_path)(error)),
            }
            let partitions = read_topic_meta(&meta_path)?;
            let topic = open_topic(&dir, &name, partitions, &config)?;
            topics.insert(name, Arc::new(topic));
        }
        info!(dir = %dir.display(), topics = topics.len(), "opened embedded log");
        let log = EmbeddedLog {
            dir,
            lock_file: Mutex::new(Some(lock_file)),
            config,
            topics: RwLock::new(HashMap::new()),
            create_lock: tokio::sync::Mutex::new(()),
            commit_lock: tokio::sync::Mutex::new(()),
            committed: Mutex::new(HashMap::new()),
            partitioner: Partitioner::default(),
        };
        for (name, topic) in &topics {
            log.refresh_retention_floors(name, topic)?;
        }
        *log.topics.write().expect("topics lock is never poisoned") = topics;
        Ok(log)
    }

    /// Stops every partition's writer thread once it has finished what is queued.
    ///
    /// Appends after `close` fail with [`LogError::Closed`].
    pub async fn close(&self) {
        let topics: Vec<Arc<Topic>> = self
            .topics
            .read()
            .expect("topics lock is never poisoned")
            .values()
            .cloned()
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for topic in topics {
                for partition in &topic.partitions {
                    partition.close();
                }
            }
        })
        .await;
        drop(
            self.lock_file
                .lock()
                .expect("lock_file lock is never poisoned")
                .take(),
        );
    }

    /// Applies retention to every partition of `topic` now; returns the segments deleted.
    ///
    /// # Errors
    ///
    /// Unknown topic; I/O errors.
    pub async fn enforce_retention(&self, topic: &str) -> Result<usize, LogError> {
        let topic = self.topic(topic)?;
        let mut deleted = 0;
        for partition in &topic.partitions {
            let (reply, response) = oneshot::channel();
            partition.send(Command::EnforceRetention { reply })?;
            deleted += response.await.map_err(|_| LogError::Closed)??;
        }
        Ok(deleted)
    }

    /// Sets each partition's retention floor to the smallest offset committed on it by the
    /// groups in `retention-holds` (no floor if none has committed there).
    fn refresh_retention_floors(&self, topic_name: &str, topic: &Topic) -> Result<(), LogError> {
        let mut floors = vec![u64::MAX; topic.partitions.len()];
        for group in &self.config.retention_holds {
            for (partition, offset) in self.load_committed(group, topic_name)? {
                if let Some(floor) = floors.get_mut(partition as usize) {
                    *floor = (*floor).min(offset);
                }
            }
        }
        for (partition, floor) in topic.partitions.iter().zip(floors) {
            partition
                .shared
                .retention_floor
                .store(floor, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        self.topics
            .read()
            .expect("topics lock is never poisoned")
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    fn partition<'a>(
        &self,
        topic_name: &str,
        topic: &'a Topic,
        partition: u32,
    ) -> Result<&'a Partition, LogError> {
        topic
            .partitions
            .get(partition as usize)
            .ok_or_else(|| LogError::UnknownPartition {
                topic: topic_name.to_string(),
                partition,
                partitions: topic.partitions.len() as u32,
            })
    }

    fn offsets_path(&self, group: &str, topic: &str) -> PathBuf {
        self.dir.join(OFFSETS_DIR).join(group).join(topic)
    }

    fn load_committed(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>, LogError> {
        let key = (group.to_string(), topic.to_string());
        if let Some(offsets) = self
            .committed
            .lock()
            .expect("committed lock is never poisoned")
            .get(&key)
        {
            return Ok(offsets.clone());
        }
        let path = self.offsets_path(group, topic);
        let offsets = match std::fs::read_to_string(&path) {
            Ok(text) => parse_offsets(&path, &text)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(LogError::io("read committed offsets", &path)(error)),
        };
        self.committed
            .lock()
            .expect("committed lock is never poisoned")
            .insert(key, offsets.clone());
        Ok(offsets)
    }
}

/// Runs blocking file work on tokio's blocking pool; a panic in it becomes an I/O error
/// naming `action` and `path`.
async fn run_blocking<T: Send + 'static>(
    action: &'static str,
    path: PathBuf,
    work: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join_error| LogError::Io {
            action,
            path,
            source: std::io::Error::other(join_error.to_string()),
        })?
}

/// Takes the folder's exclusive lock, or fails naming the folder if another owner has it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, LogError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LogError::io("open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(LogError::Io {
            action: "lock",
            path,
            source,
        }),
    }
}

fn read_topic_meta(path: &Path) -> Result<u32, LogError> {
    let text = std::fs::read_to_string(path).map_err(LogError::io("read topic metadata", path))?;
    text.trim()
        .strip_prefix("partitions = ")
        .and_then(|count| count.parse::<u32>().ok())
        .filter(|count| *count > 0)
        .ok_or_else(|| LogError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason: format!("expected `partitions = N`, found {:?}", text.trim()),
        })
}

fn open_topic(
    dir: &Path,
    name: &str,
    partitions: u32,
    config: &EmbeddedLogConfig,
) -> Result<Topic, LogError> {
    let topic_name: Arc<str> = Arc::from(name);
    let partitions = (0..partitions)
        .map(|id| {
            Partition::open(
                Arc::clone(&topic_name),
                id,
                dir.join(name).join(id.to_string()),
                config,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Topic { partitions })
}

fn parse_offsets(path: &Path, text: &str) -> Result<BTreeMap<u32, u64>, LogError> {
    let mut offsets = BTreeMap::new();
    for (line_idx, line) in text.lines().enumerate() {
        let parsed = line
            .split_once(' ')
            .and_then(|(partition, offset)| Some((partition.parse().ok()?, offset.parse().ok()?)));
        let Some((partition, offset)) = parsed else {
            return Err(LogError::Corrupt {
                path: path.to_path_buf(),
                position: line_idx as u64 + 1,
                reason: format!("line {} is not `partition offset`: {line:?}", line_idx + 1),
            });
        };
        offsets.insert(partition, offset);
    }
    Ok(offsets)
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        check_new_topic(topic, partitions)?;
        let _guard = self.create_lock.lock().await;
        if let Ok(existing) = self.topic(topic) {
            let existing = existing.partitions.len() as u32;
            if existing != partitions {
                return Err(LogError::PartitionMismatch {
                    topic: topic.to_string(),
                    existing,
                    requested: partitions,
                });
            }
            return Ok(());
        }
        let dir = self.dir.clone();
        let config = self.config.clone();
        let name = topic.to_string();
        let opened = run_blocking("create topic", self.dir.join(topic), move || {
            let topic_dir = dir.join(&name);
            std::fs::create_dir_all(&topic_dir)
                .map_err(LogError::io("create topic folder", &topic_dir))?;
            let topic = open_topic(&dir, &name, partitions, &config)?;
            // The metadata goes last: a topic folder without it is ignored on open.
            write_file_atomically(
                &topic_dir.join(TOPIC_META_FILE),
                format!("partitions = {partitions}\n").as_bytes(),
            )?;
            sync_dir(&topic_dir)?;
            sync_dir(&dir)?;
            Ok::<_, LogError>(topic)
        })
        .await?;
        info!(topic, partitions, "created topic");
        self.topics
            .write()
            .expect("topics lock is never poisoned")
            .insert(topic.to_string(), Arc::new(opened));
        Ok(())
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.topic(topic)?.partitions.len() as u32)
    }

    async fn append(
        &self,
        topic_name: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>, LogError> {
        let topic = self.topic(topic_name)?;
        let n_partitions = topic.partitions.len() as u32;
        // Per partition: the records and their positions in the input.
        let mut by_partition: Vec<(Vec<ProduceRecord>, Vec<usize>)> = (0..n_partitions)
            .map(|_| (Vec::new(), Vec::new()))
            .collect();
        let n_records = records.len();
        for (record_idx, record) in records.into_iter().enumerate() {
            check_record(&record)?;
            let partition = match record.partition {
                Some(partition) => {
                    self.partition(topic_name, &topic, partition)?;
                    partition
                }
                None => self
                    .partitioner
                    .partition(record.key.as_deref(), n_partitions),
            };
            let (partition_records, indexes) = &mut by_partition[partition as usize];
            partition_records.push(record);
            indexes.push(record_idx);
        }
        let mut pending = Vec::new();
        for (partition_id, (partition_records, indexes)) in by_partition.into_iter().enumerate() {
            if partition_records.is_empty() {
                continue;
            }
            let (reply, response) = oneshot::channel();
            topic.partitions[partition_id].send(Command::Append {
                records: partition_records,
                reply,
            })?;
            pending.push((partition_id as u32, indexes, response));
        }
        let mut positions = vec![
            RecordPosition {
                partition: 0,
                offset: 0
            };
            n_records
        ];
        for (partition, indexes, response) in pending {
            let first_offset = response.await.map_err(|_| LogError::Closed)??;
            for (idx_in_partition, record_idx) in indexes.into_iter().enumerate() {
                positions[record_idx] = RecordPosition {
                    partition,
                    offset: first_offset + idx_in_partition as u64,
                };
            }
        }
        Ok(positions)
    }

    async fn reader(
        &self,
        topic_name: &str,
        partition: u32,
        start: StartOffset,
    ) -> Result<Box<dyn PartitionReader>, LogError> {
        let topic = self.topic(topic_name)?;
        let shared = Arc::clone(&self.partition(topic_name, &topic, partition)?.shared);
        let offset = match start {
            StartOffset::Earliest => shared.earliest_offset(),
            StartOffset::Latest => shared.latest_offset(),
            StartOffset::At(offset) => offset,
        };
        Ok(Box::new(EmbeddedReader::new(shared, offset)?))
    }

    async fn earliest_offset(&self, topic_name: &str, partition: u32) -> Result<u64, LogError> {
        let topic = self.topic(topic_name)?;
        Ok(self
            .partition(topic_name, &topic, partition)?
            .shared
            .earliest_offset())
    }

    async fn latest_offset(&self, topic_name: &str, partition: u32) -> Result<u64, LogError> {
        let topic = self.topic(topic_name)?;
        Ok(self
            .partition(topic_name, &topic, partition)?
            .shared
            .latest_offset())
    }

    async fn offset_for_timestamp(
        &self,
        topic_name: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<u64>, LogError> {
        let topic = self.topic(topic_name)?;
        let shared = Arc::clone(&self.partition(topic_name, &topic, partition)?.shared);
        let path = shared.dir.clone();
        run_blocking("seek by timestamp in", path, move || {
            shared.offset_for_timestamp(timestamp)
        })
        .await
    }

    async fn commit_offsets(
        &self,
        group: &str,
        topic_name: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), LogError> {
        check_name("consumer group", group)?;
        let topic = self.topic(topic_name)?;
        for (partition, _) in offsets {
            self.partition(topic_name, &topic, *partition)?;
        }
        let _guard = self.commit_lock.lock().await;
        let mut merged = self.load_committed(group, topic_name)?;
        merged.extend(offsets.iter().copied());
        let text: String = merged
            .iter()
            .map(|(partition, offset)| format!("{partition} {offset}\n"))
            .collect();
        let path = self.offsets_path(group, topic_name);
        let group_dir = path
            .parent()
            .expect("offsets path has a parent")
            .to_path_buf();
        let offsets_root = self.dir.join(OFFSETS_DIR);
        run_blocking("commit offsets to", path.clone(), move || {
            std::fs::create_dir_all(&group_dir)
                .map_err(LogError::io("create offsets folder", &group_dir))?;
            write_file_atomically(&path, text.as_bytes())?;
            sync_dir(&group_dir)?;
            sync_dir(&offsets_root)
        })
        .await?;
        self.committed
            .lock()
            .expect("committed lock is never poisoned")
            .insert((group.to_string(), topic_name.to_string()), merged);
        if self.config.retention_holds.iter().any(|hold| hold == group) {
            self.refresh_retention_floors(topic_name, &topic)?;
        }
        Ok(())
    }

    async fn committed_offset(
        &self,
        group: &str,
        topic_name: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        check_name("consumer group", group)?;
        let topic = self.topic(topic_name)?;
        self.partition(topic_name, &topic, partition)?;
        Ok(self
            .load_committed(group, topic_name)?
            .get(&partition)
            .copied())
    }

    async fn join_group(
        &self,
        group: &str,
        topic_name: &str,
    ) -> Result<Box<dyn GroupMembership>, LogError> {
        check_name("consumer group", group)?;
        let partitions = self.partition_count(topic_name).await?;
        Ok(Box::new(SoleMembership::new(partitions)))
    }
}

/// Refuses records the frame format cannot hold.
fn check_record(record: &ProduceRecord) -> Result<(), LogError> {
    let size = format::frame_size(record);
    if size - format::FRAME_HEADER_BYTES > format::MAX_BODY_BYTES {
        return Err(LogError::RecordTooLarge {
            size,
            limit: format::MAX_BODY_BYTES,
        });
    }
    if let Some(header) = record
        .headers
        .iter()
        .find(|header| header.key.len() > usize::from(u16::MAX))
    {
        return Err(LogError::RecordTooLarge {
            size: header.key.len(),
            limit: usize::from(u16::MAX),
        });
    }
    Ok(())
}
