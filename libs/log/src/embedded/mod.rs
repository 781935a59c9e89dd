//! The embedded backend: partitioned, checksummed segment files on local disk.
//!
//! Layout under the log folder:
//!
//! ```text
//! <topic>/topic.meta                        "partitions = N"
//! <topic>/<partition>/<base_offset>.log     record frames (see `format`)
//! <topic>/<partition>/<base_offset>.index   index of a sealed segment (or of the active one,
//!                                            after a clean stop, until the next open)
//! <topic>/<partition>/published             the durable end, for other processes
//! <topic>/<partition>/writer.lock           flock of the process writing the partition
//! <topic>/<partition>/repairs.jsonl         audit trail of `runnel log repair` (see `repair`)
//! <topic>/<partition>/repairs/              what repairs removed, kept for inspection
//! __consumer_offsets/<group>/<topic>        "partition offset" lines
//! __locks/topics                            flock while a topic is created
//! __locks/commits/<group>                   flock while a group's offsets are rewritten
//! __locks/members/<group>                   flock of the group's member
//! ```
//!
//! Several processes may open one log folder: each partition is written by one of them at a
//! time (the first to append to it) and followed by the others (see `partition`).

mod check;
pub(crate) mod format;
mod lock;
mod partition;
mod reader;
mod repair;
mod segment;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use runnel_config::EmbeddedLogConfig;
use tokio::sync::oneshot;
use tracing::info;

pub use self::check::{LogProblem, PartitionCheck, ProblemKind, SkippedRange, check_embedded_log};
pub use self::repair::{REPAIRS_FILE, RepairAction, RepairReport, repair_embedded_partition};

use self::lock::{FileLockMembership, lock_file_blocking};
use self::partition::{Command, Partition};
use self::reader::EmbeddedReader;
use self::segment::{sync_dir, write_file_atomically};
use crate::{
    GroupMembership, Log, LogError, PartitionReader, Partitioner, ProduceRecord, RecordPosition,
    StartOffset, check_name, check_new_topic,
};

pub(crate) const TOPIC_META_FILE: &str = "topic.meta";
pub(crate) const OFFSETS_DIR: &str = "__consumer_offsets";
pub(crate) const LOCKS_DIR: &str = "__locks";

struct Topic {
    partitions: Vec<Partition>,
}

/// The embedded log. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct EmbeddedLog {
    dir: PathBuf,
    config: EmbeddedLogConfig,
    holds: Arc<RetentionHolds>,
    /// The topics this log has opened (others' are opened when first named).
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes topic creation and opening in this process.
    create_lock: tokio::sync::Mutex<()>,
    partitioner: Partitioner,
}

/// The consumer groups whose commits hold a topic's retention back, read from their files
/// (they may be committed by another process).
#[derive(Debug)]
pub(crate) struct RetentionHolds {
    offsets_dir: PathBuf,
    groups: Vec<String>,
}

impl RetentionHolds {
    /// The smallest offset a holding group committed on the partition; `u64::MAX` if none has.
    pub(crate) fn floor(&self, topic: &str, partition: u32) -> Result<u64, LogError> {
        let mut floor = u64::MAX;
        for group in &self.groups {
            let path = self.offsets_dir.join(group).join(topic);
            if let Some(offset) = read_offsets(&path)?.get(&partition) {
                floor = floor.min(*offset);
            }
        }
        Ok(floor)
    }
}

impl EmbeddedLog {
    /// Opens the log in `dir` (creating it), following every partition found there; a
    /// partition is recovered when this process first appends to it.
    ///
    /// # Errors
    ///
    /// I/O errors, and [`LogError::Corrupt`] for damage to what the partitions' writers
    /// published.
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
        let holds = Arc::new(RetentionHolds {
            offsets_dir: dir.join(OFFSETS_DIR),
            groups: config.retention_holds.clone(),
        });
        let mut topics = HashMap::new();
        let entries = std::fs::read_dir(&dir).map_err(LogError::io("list log folder", &dir))?;
        for entry in entries {
            let entry = entry.map_err(LogError::io("list log folder", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == OFFSETS_DIR || name == LOCKS_DIR || !entry.path().is_dir() {
                continue;
            }
            if let Some(topic) = open_topic(&dir, &name, &config, &holds)? {
                topics.insert(name, Arc::new(topic));
            }
        }
        info!(dir = %dir.display(), topics = topics.len(), "opened embedded log");
        Ok(EmbeddedLog {
            dir,
            config,
            holds,
            topics: RwLock::new(topics),
            create_lock: tokio::sync::Mutex::new(()),
            partitioner: Partitioner::default(),
        })
    }

    /// Stops every partition's writer thread once it has finished what is queued, and lets
    /// go of the partitions this process writes.
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
    }

    /// Applies retention to every partition of `topic` now (writing them from now on);
    /// returns the segments deleted.
    ///
    /// # Errors
    ///
    /// Unknown topic; [`LogError::PartitionLocked`] if another process writes a partition;
    /// I/O errors.
    pub async fn enforce_retention(&self, topic_name: &str) -> Result<usize, LogError> {
        let topic = self.topic(topic_name).await?;
        let mut deleted = 0;
        for partition in 0..topic.partitions.len() {
            take_over(&topic, partition).await?;
            let (reply, response) = oneshot::channel();
            topic.partitions[partition].send(Command::EnforceRetention { reply })?;
            deleted += response.await.map_err(|_| LogError::Closed)??;
        }
        Ok(deleted)
    }

    /// The topic, opened from the folder if another process created it.
    async fn topic(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        if let Some(topic) = self.known_topic(name) {
            return Ok(topic);
        }
        let _guard = self.create_lock.lock().await;
        if let Some(topic) = self.known_topic(name) {
            return Ok(topic);
        }
        check_name("topic", name)?;
        let dir = self.dir.clone();
        let config = self.config.clone();
        let holds = Arc::clone(&self.holds);
        let owned_name = name.to_string();
        let opened = run_blocking("open topic", self.dir.join(name), move || {
            open_topic(&dir, &owned_name, &config, &holds)
        })
        .await?
        .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        Ok(self.remember(name, opened))
    }

    /// Creates the topic, unless another process has meanwhile: the folder, each partition's
    /// first segment and `published` state, then `topic.meta` (a folder without it is ignored).
    async fn create_topic(&self, name: &str, partitions: u32) -> Result<Arc<Topic>, LogError> {
        let _guard = self.create_lock.lock().await;
        if let Some(topic) = self.known_topic(name) {
            return Ok(topic);
        }
        let dir = self.dir.clone();
        let config = self.config.clone();
        let holds = Arc::clone(&self.holds);
        let owned_name = name.to_string();
        let lock_path = self.dir.join(LOCKS_DIR).join("topics");
        let (topic, created) = run_blocking("create topic", self.dir.join(name), move || {
            let _lock = lock_file_blocking(&lock_path)?;
            if let Some(topic) = open_topic(&dir, &owned_name, &config, &holds)? {
                return Ok((topic, false));
            }
            let topic_dir = dir.join(&owned_name);
            std::fs::create_dir_all(&topic_dir)
                .map_err(LogError::io("create topic folder", &topic_dir))?;
            for id in 0..partitions {
                Partition::create(&topic_dir.join(id.to_string()))?;
            }
            let meta_path = topic_dir.join(TOPIC_META_FILE);
            write_file_atomically(
                &meta_path,
                format!("partitions = {partitions}\n").as_bytes(),
            )?;
            sync_dir(&topic_dir)?;
            sync_dir(&dir)?;
            let topic = open_topic(&dir, &owned_name, &config, &holds)?
                .ok_or_else(|| LogError::UnknownTopic(owned_name.clone()))?;
            Ok((topic, true))
        })
        .await?;
        if created {
            info!(topic = name, partitions, "created topic");
        }
        Ok(self.remember(name, topic))
    }

    /// Keeps an opened topic for later calls.
    fn remember(&self, name: &str, topic: Topic) -> Arc<Topic> {
        let topic = Arc::new(topic);
        self.topics
            .write()
            .expect("topics lock is never poisoned")
            .insert(name.to_string(), Arc::clone(&topic));
        topic
    }

    fn known_topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock is never poisoned")
            .get(name)
            .cloned()
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

    fn lock_path(&self, kind: &str, name: &str) -> PathBuf {
        self.dir.join(LOCKS_DIR).join(kind).join(name)
    }
}

/// Makes this process the writer of `topic`'s partition `partition` if it is not yet.
async fn take_over(topic: &Arc<Topic>, partition: usize) -> Result<(), LogError> {
    if topic.partitions[partition].is_writing() {
        return Ok(());
    }
    let topic = Arc::clone(topic);
    let path = topic.partitions[partition].shared.dir.clone();
    run_blocking("take over writing", path, move || {
        topic.partitions[partition].take_over()
    })
    .await
}

/// Reads a group's committed offsets of one topic; empty if it has committed none.
pub(crate) fn read_offsets(path: &Path) -> Result<BTreeMap<u32, u64>, LogError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_offsets(path, &text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => Err(LogError::io("read committed offsets", path)(error)),
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

pub(crate) fn parse_topic_meta(path: &Path, text: &str) -> Result<u32, LogError> {
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

/// Opens the topic `name` if its creation finished (it has `topic.meta`).
fn open_topic(
    dir: &Path,
    name: &str,
    config: &EmbeddedLogConfig,
    holds: &Arc<RetentionHolds>,
) -> Result<Option<Topic>, LogError> {
    let meta_path = dir.join(name).join(TOPIC_META_FILE);
    let partitions = match std::fs::read_to_string(&meta_path) {
        Ok(text) => parse_topic_meta(&meta_path, &text)?,
        // A folder without metadata is a topic whose creation did not finish.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(LogError::io("read topic metadata", &meta_path)(error)),
    };
    let topic_name: Arc<str> = Arc::from(name);
    let open = |id: u32| {
        Partition::open(
            Arc::clone(&topic_name),
            id,
            dir.join(name).join(id.to_string()),
            config,
            Arc::clone(holds),
        )
    };
    // Opening scans each active segment, so the partitions open on up to one thread per
    // core, each taking a contiguous run of them.
    let ids: Vec<u32> = (0..partitions).collect();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = ids.len().div_ceil(threads).max(1);
    let opened: Vec<Result<Partition, LogError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(per_thread)
            .map(|chunk| {
                let open = &open;
                scope.spawn(move || chunk.iter().map(|&id| open(id)).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let partitions = opened.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Topic { partitions }))
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
    async fn close(&self) {
        EmbeddedLog::close(self).await;
    }

    async fn ensure_topic(&self, topic: &str, partitions: u32) -> Result<(), LogError> {
        check_new_topic(topic, partitions)?;
        let existing = match self.topic(topic).await {
            Ok(existing) => existing,
            Err(LogError::UnknownTopic(_)) => self.create_topic(topic, partitions).await?,
            Err(error) => return Err(error),
        };
        let existing = existing.partitions.len() as u32;
        if existing != partitions {
            return Err(LogError::PartitionMismatch {
                topic: topic.to_string(),
                existing,
                requested: partitions,
            });
        }
        Ok(())
    }

    async fn partition_count(&self, topic: &str) -> Result<u32, LogError> {
        Ok(self.topic(topic).await?.partitions.len() as u32)
    }

    async fn append(
        &self,
        topic_name: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>, LogError> {
        let topic = self.topic(topic_name).await?;
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
        // Every partition's writer first, so that a partition another process writes fails
        // the append before any of it is written.
        for (partition_id, (partition_records, _)) in by_partition.iter().enumerate() {
            if !partition_records.is_empty() {
                take_over(&topic, partition_id).await?;
            }
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
        let topic = self.topic(topic_name).await?;
        let shared = Arc::clone(&self.partition(topic_name, &topic, partition)?.shared);
        shared.refresh()?;
        let offset = match start {
            StartOffset::Earliest => shared.earliest_offset(),
            StartOffset::Latest => shared.latest_offset(),
            StartOffset::At(offset) => offset,
        };
        Ok(Box::new(EmbeddedReader::new(shared, offset)?))
    }

    async fn earliest_offset(&self, topic_name: &str, partition: u32) -> Result<u64, LogError> {
        let topic = self.topic(topic_name).await?;
        let shared = &self.partition(topic_name, &topic, partition)?.shared;
        shared.refresh()?;
        Ok(shared.earliest_offset())
    }

    async fn latest_offset(&self, topic_name: &str, partition: u32) -> Result<u64, LogError> {
        let topic = self.topic(topic_name).await?;
        let shared = &self.partition(topic_name, &topic, partition)?.shared;
        shared.refresh()?;
        Ok(shared.latest_offset())
    }

    async fn offset_for_timestamp(
        &self,
        topic_name: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<u64>, LogError> {
        let topic = self.topic(topic_name).await?;
        let shared = Arc::clone(&self.partition(topic_name, &topic, partition)?.shared);
        let path = shared.dir.clone();
        run_blocking("seek by timestamp in", path, move || {
            shared.refresh()?;
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
        let topic = self.topic(topic_name).await?;
        for (partition, _) in offsets {
            self.partition(topic_name, &topic, *partition)?;
        }
        let path = self.offsets_path(group, topic_name);
        let lock_path = self.lock_path("commits", group);
        let offsets_root = self.dir.join(OFFSETS_DIR);
        let offsets = offsets.to_vec();
        run_blocking("commit offsets to", path.clone(), move || {
            // Other processes commit too: read, merge and rewrite under the group's lock.
            let _lock = lock_file_blocking(&lock_path)?;
            let mut merged = read_offsets(&path)?;
            merged.extend(offsets);
            let text: String = merged
                .iter()
                .map(|(partition, offset)| format!("{partition} {offset}\n"))
                .collect();
            let group_dir = path.parent().expect("offsets path has a parent");
            std::fs::create_dir_all(group_dir)
                .map_err(LogError::io("create offsets folder", group_dir))?;
            write_file_atomically(&path, text.as_bytes())?;
            sync_dir(group_dir)?;
            sync_dir(&offsets_root)
        })
        .await
    }

    async fn committed_offset(
        &self,
        group: &str,
        topic_name: &str,
        partition: u32,
    ) -> Result<Option<u64>, LogError> {
        check_name("consumer group", group)?;
        let topic = self.topic(topic_name).await?;
        self.partition(topic_name, &topic, partition)?;
        let path = self.offsets_path(group, topic_name);
        Ok(
            run_blocking("read committed offsets", path.clone(), move || {
                read_offsets(&path)
            })
            .await?
            .get(&partition)
            .copied(),
        )
    }

    async fn join_group(
        &self,
        group: &str,
        topic_name: &str,
    ) -> Result<Box<dyn GroupMembership>, LogError> {
        check_name("consumer group", group)?;
        let partitions = self.partition_count(topic_name).await?;
        Ok(Box::new(FileLockMembership::new(
            self.lock_path("members", group),
            partitions,
        )))
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
