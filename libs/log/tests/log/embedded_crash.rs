//! Crash and damage tests of the embedded backend: torn tails, flipped bytes, lost indexes,
//! retention, and a writer process killed with SIGKILL.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use runnel_log::{EmbeddedLog, Log, LogError, StartOffset};

use crate::fixtures::{embedded_config, read_n, read_n_from, to_partition, value_str};

/// Bytes of one test record's frame: 8 (len, crc) + 28 (fixed body) + 5 (value "vNNNN").
pub(crate) const FRAME: u64 = 41;

pub(crate) fn value(idx: usize) -> String {
    format!("v{idx:04}")
}

pub(crate) fn segment_path(dir: &Path, topic: &str, base: u64) -> PathBuf {
    dir.join(topic).join("0").join(format!("{base:020}.log"))
}

pub(crate) fn index_path(dir: &Path, topic: &str, base: u64) -> PathBuf {
    dir.join(topic).join("0").join(format!("{base:020}.index"))
}

pub(crate) async fn write_records(dir: &Path, segment_bytes: u64, count: usize) -> EmbeddedLog {
    let config = runnel_config::EmbeddedLogConfig {
        segment_bytes,
        ..embedded_config()
    };
    let log = EmbeddedLog::open(dir, &config).await.expect("open");
    log.ensure_topic("t", 1).await.expect("create topic");
    for chunk_start in (0..count).step_by(50) {
        let records = (chunk_start..count.min(chunk_start + 50))
            .map(|idx| to_partition(0, &value(idx), idx as i64 * 10))
            .collect();
        log.append("t", records).await.expect("append");
    }
    log
}

pub(crate) async fn reopen(dir: &Path, segment_bytes: u64) -> Result<EmbeddedLog, LogError> {
    let config = runnel_config::EmbeddedLogConfig {
        segment_bytes,
        ..embedded_config()
    };
    EmbeddedLog::open(dir, &config).await
}

/// Removes the index of the active segment (partition 0 of `topic`, base 0) that a clean
/// stop wrote: the segment is then as a writer killed after its last acknowledged append
/// leaves it, and the next open scans it whole.
pub(crate) fn as_if_killed(dir: &Path, topic: &str) {
    std::fs::remove_file(index_path(dir, topic, 0)).expect("a clean stop wrote the active index");
}

/// Reads partition 0 of topic `t` from the start, 7 records at a time, until a read fails:
/// how many records came before, and the error.
async fn read_until_error(log: &EmbeddedLog) -> (usize, LogError) {
    let mut reader = log
        .reader("t", 0, StartOffset::Earliest)
        .await
        .expect("reader");
    let mut read = 0;
    loop {
        match reader.next_batch(7, Duration::from_secs(1)).await {
            Ok(batch) => {
                assert!(!batch.is_empty(), "read stalled before the corrupt record");
                read += batch.len();
            }
            Err(error) => return (read, error),
        }
    }
}

pub(crate) fn flip_byte(path: &Path, position: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).expect("read byte");
    byte[0] ^= 0x40;
    file.write_all_at(&byte, position).expect("write byte");
}

#[tokio::test]
async fn torn_tail_is_never_served_and_the_next_writer_truncates_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 1 << 20, 20).await;
    log.close().await;
    let path = segment_path(dir.path(), "t", 0);
    // Half of a 21st record, as a writer killed mid-write leaves it (never fsynced, so
    // never published nor acknowledged).
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.write_all_at(&[0x2a; 17], 20 * FRAME)
        .expect("write torn record");
    drop(file);

    let log = reopen(dir.path(), 1 << 20).await.expect("open");
    assert_eq!(log.latest_offset("t", 0).await.expect("latest"), 20);
    let records = read_n(&log, "t", 0, StartOffset::Earliest, 20).await;
    let values: Vec<&str> = records.iter().map(value_str).collect();
    let expected: Vec<String> = (0..20).map(value).collect();
    assert_eq!(values, expected);
    // Opening only reads; the first append makes this process the writer, which recovers.
    let positions = log
        .append("t", vec![to_partition(0, &value(99), 1)])
        .await
        .expect("append after recovery");
    assert_eq!(
        positions[0].offset, 20,
        "the next append takes the offset the torn record had"
    );
    assert_eq!(
        std::fs::metadata(&path).expect("stat").len(),
        21 * FRAME,
        "the torn bytes are gone from the file"
    );
    let after = read_n(&log, "t", 0, StartOffset::At(20), 1).await;
    assert_eq!(value_str(&after[0]), value(99));
}

#[tokio::test]
async fn zero_filled_tail_is_ignored_then_truncated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 1 << 20, 10).await;
    log.close().await;
    let path = segment_path(dir.path(), "t", 0);
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(10 * FRAME + 4096).expect("extend with zeros");
    drop(file);
    let log = reopen(dir.path(), 1 << 20).await.expect("recover");
    assert_eq!(log.latest_offset("t", 0).await.expect("latest"), 10);
    let positions = log
        .append("t", vec![to_partition(0, &value(10), 1)])
        .await
        .expect("append");
    assert_eq!(positions[0].offset, 10);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 11 * FRAME);
}

#[tokio::test]
async fn flipped_byte_in_the_active_segment_fails_open_naming_file_and_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 1 << 20, 20).await;
    log.close().await;
    as_if_killed(dir.path(), "t");
    let path = segment_path(dir.path(), "t", 0);
    // A byte inside the value of record 10, with ten good records after it.
    flip_byte(&path, 10 * FRAME + 38);
    match reopen(dir.path(), 1 << 20).await {
        Err(LogError::Corrupt {
            path: error_path,
            position,
            reason,
        }) => {
            assert_eq!(error_path, path);
            assert_eq!(position, 10 * FRAME);
            assert!(reason.contains("checksum"), "{reason}");
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupt record in the middle must not open silently"),
    }
    let message = reopen(dir.path(), 1 << 20)
        .await
        .err()
        .expect("still corrupt")
        .to_string();
    assert!(message.contains("00000000000000000000.log"), "{message}");
    assert!(message.contains("byte 410"), "{message}");
}

/// A clean stop leaves the active segment's index, so the next open reads the index, not
/// the segment (as for sealed segments): damage inside it is found by the read that reaches
/// it. The first append removes the index, and records go on at the right offset.
#[tokio::test]
async fn after_a_clean_stop_the_active_segment_opens_through_its_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 1 << 20, 300).await;
    log.close().await;
    let index = index_path(dir.path(), "t", 0);
    assert!(
        index.try_exists().expect("stat the index"),
        "a clean stop writes the active segment's index"
    );
    let path = segment_path(dir.path(), "t", 0);
    flip_byte(&path, 150 * FRAME + 38);
    let log = reopen(dir.path(), 1 << 20)
        .await
        .expect("opened through the index, without reading the segment");
    assert_eq!(log.latest_offset("t", 0).await.expect("latest"), 300);
    // A time seek finds its place through the loaded index.
    assert_eq!(
        log.offset_for_timestamp("t", 0, 2_000)
            .await
            .expect("time seek"),
        Some(200)
    );
    let (read, error) = read_until_error(&log).await;
    assert_eq!(read, 150, "every record before the damage is served");
    assert!(
        matches!(&error, LogError::Corrupt { path: error_path, position, .. }
            if *error_path == path && *position == 150 * FRAME),
        "expected corruption at byte {}, got {error}",
        150 * FRAME
    );
    // Repaired by hand (the byte back), then written: the writer takes over through the
    // index, removes it, and appends at the next offset.
    flip_byte(&path, 150 * FRAME + 38);
    let repaired = read_n(&log, "t", 0, StartOffset::At(150), 1).await;
    assert_eq!(value_str(&repaired[0]), value(150));
    let positions = log
        .append("t", vec![to_partition(0, &value(300), 1)])
        .await
        .expect("append");
    assert_eq!(positions[0].offset, 300);
    assert!(
        !index.try_exists().expect("stat the index"),
        "the writer removed the active index before appending"
    );
    let last = read_n(&log, "t", 0, StartOffset::At(299), 2).await;
    let values: Vec<&str> = last.iter().map(value_str).collect();
    assert_eq!(values, [value(299), value(300)]);
}

#[tokio::test]
async fn flipped_byte_in_a_sealed_segment_fails_the_read_naming_file_and_position() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 4096-byte segments hold 99 records of 41 bytes.
    let log = write_records(dir.path(), 4096, 300).await;
    log.close().await;
    let path = segment_path(dir.path(), "t", 0);
    flip_byte(&path, 50 * FRAME + 38);
    let log = reopen(dir.path(), 4096)
        .await
        .expect("sealed segments open through their index");
    let (read, error) = read_until_error(&log).await;
    assert_eq!(read, 50, "every record before the damage is served");
    match error {
        LogError::Corrupt {
            path: error_path,
            position,
            ..
        } => {
            assert_eq!(error_path, path);
            assert_eq!(position, 50 * FRAME);
        }
        other => panic!("expected corruption, got {other}"),
    }
    // Records after the damaged segment stay readable.
    let later = read_n(&log, "t", 0, StartOffset::At(200), 1).await;
    assert_eq!(value_str(&later[0]), value(200));
}

#[tokio::test]
async fn missing_or_damaged_index_is_rebuilt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 4096, 300).await;
    log.close().await;
    let first_index = index_path(dir.path(), "t", 0);
    let second_index = index_path(dir.path(), "t", 99);
    let original = std::fs::read(&first_index).expect("sealed segment has an index");
    std::fs::remove_file(&first_index).expect("delete index");
    std::fs::write(&second_index, b"garbage").expect("damage index");

    // Opening rebuilds them in memory (it only reads the folder); lookups by offset and by
    // time go through the rebuilt indexes.
    let log = reopen(dir.path(), 4096)
        .await
        .expect("open rebuilds indexes");
    assert!(
        !first_index.try_exists().expect("stat index"),
        "a reader wrote to the folder"
    );
    for offset in [0u64, 57, 98, 99, 150, 299] {
        let records = read_n(&log, "t", 0, StartOffset::At(offset), 1).await;
        assert_eq!(value_str(&records[0]), value(offset as usize));
    }
    assert_eq!(
        log.offset_for_timestamp("t", 0, 1505).await.expect("seek"),
        Some(151)
    );
    // The writer's recovery writes them back.
    log.append("t", vec![to_partition(0, &value(300), 3000)])
        .await
        .expect("append");
    assert_eq!(
        std::fs::read(&first_index).expect("index written again"),
        original,
        "the rebuilt index equals the one the writer made"
    );
    assert_eq!(
        std::fs::metadata(&second_index).expect("rebuilt").len() % 16,
        0
    );
}

#[tokio::test]
async fn retention_deletes_old_segments_by_size_and_age() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = runnel_config::EmbeddedLogConfig {
        segment_bytes: 4096,
        retention_bytes: 3 * 4096,
        ..embedded_config()
    };
    let log = EmbeddedLog::open(dir.path(), &config).await.expect("open");
    log.ensure_topic("t", 1).await.expect("create");
    let records = (0..600)
        .map(|idx| to_partition(0, &value(idx), idx as i64))
        .collect();
    log.append("t", records).await.expect("append");
    let deleted = log.enforce_retention("t").await.expect("retention");
    assert!(deleted >= 3, "deleted {deleted} segments");
    let earliest = log.earliest_offset("t", 0).await.expect("earliest");
    assert!(earliest > 0 && earliest % 99 == 0, "earliest {earliest}");
    let oldest = read_n(&log, "t", 0, StartOffset::Earliest, 1).await;
    assert_eq!(oldest[0].offset, earliest);
    match log.reader("t", 0, StartOffset::At(0)).await {
        Err(LogError::OffsetOutOfRange { earliest: e, .. }) => assert_eq!(e, earliest),
        Err(other) => panic!("expected out of range, got {other}"),
        Ok(_) => panic!("offset 0 was deleted by retention"),
    }
    assert!(!segment_path(dir.path(), "t", 0).try_exists().expect("stat"));
    log.close().await;

    // By age: make the oldest remaining segment look a year old.
    let aged = runnel_config::EmbeddedLogConfig {
        retention_bytes: u64::MAX,
        retention_age: Duration::from_secs(86400),
        ..config
    };
    let log = EmbeddedLog::open(dir.path(), &aged).await.expect("reopen");
    let old_path = segment_path(dir.path(), "t", earliest);
    let file = OpenOptions::new()
        .write(true)
        .open(&old_path)
        .expect("open");
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(365 * 86400))
        .expect("set mtime");
    drop(file);
    assert_eq!(log.enforce_retention("t").await.expect("retention"), 1);
    assert_eq!(
        log.earliest_offset("t", 0).await.expect("earliest"),
        earliest + 99
    );
    assert_eq!(log.latest_offset("t", 0).await.expect("latest"), 600);
}

#[tokio::test]
async fn retention_waits_for_holding_groups() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = runnel_config::EmbeddedLogConfig {
        segment_bytes: 4096,
        retention_bytes: 4096,
        retention_holds: vec!["archiver".to_string()],
        ..embedded_config()
    };
    let log = EmbeddedLog::open(dir.path(), &config).await.expect("open");
    log.ensure_topic("t", 1).await.expect("create");
    let records = (0..600)
        .map(|idx| to_partition(0, &value(idx), idx as i64))
        .collect();
    log.append("t", records).await.expect("append");
    // The holding group committed offset 150 (segments hold 99 records): only the segment
    // 0..99 is wholly before it. Another group's commits hold nothing.
    log.commit_offsets("archiver", "t", &[(0, 150)])
        .await
        .expect("commit");
    log.commit_offsets("other", "t", &[(0, 0)])
        .await
        .expect("commit");
    assert_eq!(log.enforce_retention("t").await.expect("retention"), 1);
    assert_eq!(log.earliest_offset("t", 0).await.expect("earliest"), 99);
    // The hold survives a restart (it is read back from the committed offsets).
    log.close().await;
    drop(log);
    let log = EmbeddedLog::open(dir.path(), &config)
        .await
        .expect("reopen");
    assert_eq!(log.enforce_retention("t").await.expect("retention"), 0);
    log.commit_offsets("archiver", "t", &[(0, 600)])
        .await
        .expect("commit");
    assert!(log.enforce_retention("t").await.expect("retention") >= 4);
    assert!(log.earliest_offset("t", 0).await.expect("earliest") >= 495);
}

const CHILD_DIR_VAR: &str = "RUNNEL_TEST_SIGKILL_CHILD_DIR";

/// The child half of `acknowledged_appends_survive_sigkill`: appends until killed, printing
/// each acknowledged offset.
#[allow(clippy::print_stdout)]
async fn append_until_killed(dir: &str) -> ! {
    let log = EmbeddedLog::open(Path::new(&dir), &embedded_config())
        .await
        .expect("child opens log");
    log.ensure_topic("t", 1).await.expect("create");
    for batch in 0u64.. {
        let records = (0..100)
            .map(|idx| to_partition(0, &format!("b{batch}-{idx}"), idx))
            .collect();
        let positions = log.append("t", records).await.expect("append");
        let last = positions.last().expect("100 positions").offset;
        println!("acked {last}");
    }
    unreachable!("appends until SIGKILL")
}

/// Starts this test binary as a child that appends to `t` in `dir` until killed, printing
/// `acked <offset>` after each acknowledged batch (see `append_until_killed`).
fn spawn_appending_child(
    dir: &Path,
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "embedded_crash::acknowledged_appends_survive_sigkill",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_VAR, dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, std::io::BufReader::new(stdout).lines())
}

/// A child process (this same test, re-run with `RUNNEL_TEST_SIGKILL_CHILD_DIR` set) appends
/// and prints what was acknowledged; it is killed with SIGKILL at a different point in each
/// of three rounds, and every acknowledged record must be there after recovery.
#[tokio::test]
async fn acknowledged_appends_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_DIR_VAR) {
        append_until_killed(&dir).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    for round in 0..3 {
        let (mut child, mut lines) = spawn_appending_child(dir.path());
        let mut last_acked = None;
        // Kill it after a number of acknowledged batches that varies per round.
        let kill_after = 20 + round * 37;
        let mut acks = 0;
        while let Some(Ok(line)) = lines.next() {
            if let Some(offset) = line.strip_prefix("acked ") {
                last_acked = Some(offset.trim().parse::<u64>().expect("offset"));
                acks += 1;
                if acks == kill_after {
                    break;
                }
            }
        }
        // `Child::kill` sends SIGKILL on Unix.
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");
        let last_acked = last_acked.expect("child acknowledged appends");

        let log = reopen(dir.path(), embedded_config().segment_bytes)
            .await
            .expect("recover after SIGKILL");
        let latest = log.latest_offset("t", 0).await.expect("latest");
        assert!(
            latest > last_acked,
            "round {round}: acknowledged offset {last_acked} lost (log ends at {latest})"
        );
        let records = read_n(&log, "t", 0, StartOffset::Earliest, latest as usize).await;
        for (idx, record) in records.iter().enumerate() {
            assert_eq!(record.offset, idx as u64, "dense offsets after recovery");
        }
        log.close().await;
    }
}

/// While a child process appends, this process follows the partition; after the child is
/// SIGKILLed, every record it acknowledged is readable here, and this process takes the
/// partition over (recovering its files) and appends after them.
#[tokio::test]
async fn a_follower_process_reads_a_killed_writers_acknowledged_records_and_takes_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, mut lines) = spawn_appending_child(dir.path());
    let mut acked = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        if let Some(offset) = line.strip_prefix("acked ") {
            acked.push(offset.trim().parse::<u64>().expect("offset"));
            if acked.len() == 1 {
                break;
            }
        }
    }
    let follower = EmbeddedLog::open(dir.path(), &embedded_config())
        .await
        .expect("open beside the writer");
    let mut reader = follower
        .reader("t", 0, StartOffset::Earliest)
        .await
        .expect("reader");
    // Read while the child writes.
    let mut read = read_n_from(reader.as_mut(), 2_000).await;
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    for line in lines.map_while(Result::ok) {
        if let Some(offset) = line.strip_prefix("acked ") {
            acked.push(offset.trim().parse::<u64>().expect("offset"));
        }
    }
    let last_acked = *acked.last().expect("acknowledged appends");
    if (read.len() as u64) <= last_acked {
        let missing = last_acked as usize + 1 - read.len();
        read.extend(read_n_from(reader.as_mut(), missing).await);
    }
    for (idx, record) in read.iter().enumerate() {
        assert_eq!(record.offset, idx as u64, "dense offsets");
        assert_eq!(
            value_str(record),
            format!("b{}-{}", idx / 100, idx % 100),
            "record {idx}"
        );
    }
    let positions = follower
        .append("t", vec![to_partition(0, "after", 0)])
        .await
        .expect("take over and append");
    assert!(positions[0].offset > last_acked);
    let next = read_n_from(
        reader.as_mut(),
        positions[0].offset as usize + 1 - read.len(),
    )
    .await;
    assert_eq!(value_str(next.last().expect("record")), "after");
    follower.close().await;
}
