//! `runnel log check` and `runnel log repair` on the embedded log: finding flipped bytes in
//! sealed and active segments, and recovering by truncation or by skipping offsets, with the
//! log opening and readers continuing afterwards.

use std::path::Path;
use std::time::Duration;

use runnel_log::{
    EmbeddedLog, Log, LogError, PartitionCheck, ProblemKind, REPAIRS_FILE, RepairAction,
    StartOffset, check_embedded_log, repair_embedded_partition,
};

use crate::embedded_crash::{
    FRAME, as_if_killed, flip_byte, index_path, reopen, segment_path, value, write_records,
};
use crate::fixtures::{read_n, read_n_from, to_partition, value_str};

/// The index interval of the test config (`fixtures::embedded_config`).
const INDEX_INTERVAL: u32 = 4096;

fn check_one(dir: &Path) -> PartitionCheck {
    let mut checks = check_embedded_log(dir, Some("t"), Some(0)).expect("check");
    assert_eq!(checks.len(), 1);
    checks.remove(0)
}

fn repair(dir: &Path, action: RepairAction) -> Result<runnel_log::RepairReport, LogError> {
    repair_embedded_partition(dir, INDEX_INTERVAL, "t", 0, action, Some("alice"))
}

fn audit_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("t").join("0").join(REPAIRS_FILE))
        .map(|text| text.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Every record of partition 0, read from the earliest one until none comes within 500 ms.
async fn read_all(log: &EmbeddedLog) -> Vec<(u64, String)> {
    let mut reader = log
        .reader("t", 0, StartOffset::Earliest)
        .await
        .expect("reader");
    let mut read = Vec::new();
    loop {
        let batch = reader
            .next_batch(1000, Duration::from_millis(500))
            .await
            .expect("read batch");
        if batch.is_empty() {
            return read;
        }
        read.extend(
            batch
                .iter()
                .map(|record| (record.offset, value_str(record).to_string())),
        );
    }
}

#[tokio::test]
async fn check_reports_a_flipped_byte_in_a_sealed_segment_while_a_writer_appends() {
    let dir = tempfile::tempdir().expect("temp dir");
    // 4096-byte segments hold 99 records of 41 bytes; this log stays the partition's writer.
    let log = write_records(dir.path(), 4096, 300).await;
    let path = segment_path(dir.path(), "t", 0);
    flip_byte(&path, 50 * FRAME + 38);
    let appending = async {
        for idx in 300..400 {
            log.append("t", vec![to_partition(0, &value(idx), idx as i64 * 10)])
                .await
                .expect("the writer appends while the check runs");
        }
    };
    let checking = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || check_embedded_log(&dir, None, None).expect("check")
    });
    let ((), checks) = tokio::join!(appending, checking);
    let checks = checks.expect("check task");
    assert_eq!(checks.len(), 1, "one topic of one partition");
    let check = &checks[0];
    assert!(!check.is_ok());
    assert_eq!(check.problems.len(), 1, "{:?}", check.problems);
    let problem = &check.problems[0];
    assert_eq!(problem.kind, ProblemKind::BadFrame);
    assert_eq!(problem.path, path);
    assert_eq!(problem.position, 50 * FRAME);
    assert_eq!(
        (problem.first_offset, problem.last_offset),
        (Some(50), Some(50))
    );
    assert!(problem.reason.contains("checksum"), "{}", problem.reason);
    assert_eq!(
        check.repair_commands(),
        ["runnel log repair --topic t --partition 0 --skip-range 50-50 --yes"]
    );
    assert!(check.next_offset >= 300, "the check read every segment");
    // Read-only: it took no lock and wrote nothing, so the writer appends on.
    let positions = log
        .append("t", vec![to_partition(0, "after", 1)])
        .await
        .expect("append after the check");
    assert_eq!(positions[0].offset, 400);
    assert!(audit_lines(dir.path()).is_empty());
    log.close().await;
}

#[tokio::test]
async fn check_reports_a_flipped_byte_in_the_active_segment_and_index_problems() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 4096, 120).await;
    log.close().await;
    assert!(
        check_one(dir.path()).is_ok(),
        "a clean partition checks clean"
    );
    // The active segment starts at 99; damage record 110 of it, and drop the sealed index.
    let active = segment_path(dir.path(), "t", 99);
    flip_byte(&active, 11 * FRAME + 38);
    std::fs::remove_file(index_path(dir.path(), "t", 0)).expect("delete index");
    let check = check_one(dir.path());
    let kinds: Vec<ProblemKind> = check.problems.iter().map(|problem| problem.kind).collect();
    assert_eq!(
        kinds,
        [ProblemKind::Index, ProblemKind::BadFrame],
        "{check:?}"
    );
    let bad = &check.problems[1];
    assert_eq!(bad.path, active);
    assert_eq!(bad.position, 11 * FRAME);
    assert_eq!((bad.first_offset, bad.last_offset), (Some(110), Some(110)));
    assert_eq!(
        check.next_offset, 120,
        "the good records after the damage are found"
    );
}

#[tokio::test]
async fn a_torn_tail_is_not_a_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 1 << 20, 20).await;
    log.close().await;
    let path = segment_path(dir.path(), "t", 0);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0x2a; 17], 20 * FRAME)
        .expect("write torn record");
    let check = check_one(dir.path());
    assert!(check.is_ok(), "{:?}", check.problems);
    assert_eq!(check.unfinished_tail_bytes, 17);
}

#[tokio::test]
async fn the_active_segments_corruption_error_names_the_repair_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 1 << 20, 20).await;
    log.close().await;
    as_if_killed(dir.path(), "t");
    flip_byte(&segment_path(dir.path(), "t", 0), 10 * FRAME + 38);
    let message = reopen(dir.path(), 1 << 20)
        .await
        .err()
        .expect("a corrupt active segment fails open")
        .to_string();
    assert!(message.contains("byte 410"), "{message}");
    assert!(message.contains("offset 10 is unreadable"), "{message}");
    assert!(
        message.contains("`runnel log repair --topic t --partition 0 --skip-range 10-10 --yes`"),
        "{message}"
    );
    assert!(
        message.contains("`runnel log check --topic t --partition 0`"),
        "{message}"
    );
}

#[tokio::test]
async fn skip_range_in_the_active_segment_lets_the_log_open_and_appends_continue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 1 << 20, 20).await;
    log.close().await;
    flip_byte(&segment_path(dir.path(), "t", 0), 10 * FRAME + 38);
    let report = repair(
        dir.path(),
        RepairAction::SkipRange {
            first: 10,
            last: 10,
        },
    )
    .expect("repair");
    assert_eq!(report.bytes_dropped, FRAME);
    assert_eq!(report.next_offset, Some(20));
    assert!(report.backup_dir.is_dir(), "the overwritten bytes are kept");

    let log = reopen(dir.path(), 1 << 20)
        .await
        .expect("the log opens again");
    let read = read_all(&log).await;
    let expected: Vec<(u64, String)> = (0..20)
        .filter(|idx| *idx != 10)
        .map(|idx| (idx as u64, value(idx)))
        .collect();
    assert_eq!(read, expected, "every other offset keeps its record");
    // The writer takes over (recovery scans the skip frame) and appends after.
    let positions = log
        .append("t", vec![to_partition(0, "after", 1)])
        .await
        .expect("append");
    assert_eq!(positions[0].offset, 20);
    let from_skipped = read_n(&log, "t", 0, StartOffset::At(10), 1).await;
    assert_eq!(
        from_skipped[0].offset, 11,
        "a reader starting in the range skips it"
    );
    log.close().await;

    let check = check_one(dir.path());
    assert!(check.is_ok(), "{:?}", check.problems);
    assert_eq!(
        check
            .skipped
            .iter()
            .map(|skipped| (skipped.first, skipped.last))
            .collect::<Vec<_>>(),
        [(10, 10)]
    );
    let audit = audit_lines(dir.path());
    assert_eq!(audit.len(), 1);
    for part in [
        r#""action":"skip-range""#,
        r#""first_offset":10"#,
        r#""last_offset":10"#,
        r#""bytes_dropped":41"#,
        r#""user":"alice""#,
    ] {
        assert!(audit[0].contains(part), "{part} in {}", audit[0]);
    }
}

#[tokio::test]
async fn skip_range_in_a_sealed_segment_unblocks_a_reader_of_an_open_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 4096, 300).await;
    log.close().await;
    flip_byte(&segment_path(dir.path(), "t", 0), 50 * FRAME + 38);
    // This process follows the partition; nothing writes it, so the repair can lock it.
    let log = reopen(dir.path(), 4096).await.expect("open");
    let mut reader = log
        .reader("t", 0, StartOffset::At(40))
        .await
        .expect("reader");
    let before = read_n_from(reader.as_mut(), 10).await;
    assert_eq!(before.last().expect("records").offset, 49);
    let error = reader
        .next_batch(10, Duration::from_millis(100))
        .await
        .expect_err("the damaged record stops the reader");
    assert!(
        error.to_string().contains("--skip-range 50-50 --yes"),
        "{error}"
    );

    repair(
        dir.path(),
        RepairAction::SkipRange {
            first: 50,
            last: 50,
        },
    )
    .expect("repair");
    // The segment was rewritten in place: this process's log sees it without reopening.
    let mut reader = log
        .reader("t", 0, StartOffset::At(50))
        .await
        .expect("reader");
    let after = read_n_from(reader.as_mut(), 100).await;
    let offsets: Vec<u64> = after.iter().map(|record| record.offset).collect();
    assert_eq!(offsets, (51..151).collect::<Vec<_>>());
    assert_eq!(value_str(&after[0]), value(51));
    let check = check_one(dir.path());
    assert!(
        check.is_ok(),
        "the index was rewritten too: {:?}",
        check.problems
    );
    log.close().await;
    assert_eq!(audit_lines(dir.path()).len(), 1);
}

#[tokio::test]
async fn truncate_after_drops_the_rest_and_the_log_opens_and_appends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 4096, 300).await;
    log.commit_offsets("archiver", "t", &[(0, 280)])
        .await
        .expect("commit");
    log.close().await;
    // Damage record 150, in the segment 99..198 (sealed), and truncate before it.
    flip_byte(&segment_path(dir.path(), "t", 99), 51 * FRAME + 38);
    let refused = repair(dir.path(), RepairAction::TruncateAfter(160))
        .expect_err("offset 150, before the cut, is damaged");
    assert!(refused.to_string().contains("offset 150"), "{refused}");
    let report = repair(dir.path(), RepairAction::TruncateAfter(149)).expect("repair");
    assert_eq!(report.first_dropped, 150);
    assert_eq!(report.last_dropped, Some(299));
    assert_eq!(report.groups_past, [("archiver".to_string(), 280)]);
    assert!(
        !segment_path(dir.path(), "t", 198)
            .try_exists()
            .expect("stat segment"),
        "later segments are moved aside"
    );
    assert!(report.backup_dir.join("00000000000000000198.log").is_file());

    let log = reopen(dir.path(), 4096).await.expect("the log opens again");
    assert_eq!(log.latest_offset("t", 0).await.expect("latest"), 150);
    let read = read_all(&log).await;
    assert_eq!(read.len(), 150);
    assert_eq!(read.last(), Some(&(149, value(149))));
    let positions = log
        .append("t", vec![to_partition(0, "after", 1)])
        .await
        .expect("append");
    assert_eq!(positions[0].offset, 150);
    log.close().await;
    assert!(check_one(dir.path()).is_ok());
    let audit = audit_lines(dir.path());
    assert_eq!(audit.len(), 2 - 1, "the refused repair left no record");
    assert!(
        audit[0].contains(r#""action":"truncate-after""#),
        "{}",
        audit[0]
    );
    assert!(audit[0].contains(r#""first_offset":150"#), "{}", audit[0]);
}

#[tokio::test]
async fn repair_refuses_while_a_writer_holds_the_partition_and_ranges_that_do_not_fit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = write_records(dir.path(), 1 << 20, 20).await;
    match repair(dir.path(), RepairAction::TruncateAfter(5)) {
        Err(LogError::PartitionLocked { .. }) => {}
        other => panic!("expected the writer's lock to refuse the repair, got {other:?}"),
    }
    log.close().await;
    as_if_killed(dir.path(), "t");
    flip_byte(&segment_path(dir.path(), "t", 0), 10 * FRAME + 38);
    for (action, expected) in [
        (
            RepairAction::SkipRange {
                first: 11,
                last: 12,
            },
            "offset 10",
        ),
        (RepairAction::SkipRange { first: 5, last: 4 }, "empty"),
        (RepairAction::TruncateAfter(25), "offset 10"),
    ] {
        match repair(dir.path(), action) {
            Err(LogError::RepairRefused { reason, .. }) => {
                assert!(reason.contains(expected), "{action}: {reason}");
            }
            other => panic!("{action}: expected a refusal, got {other:?}"),
        }
    }
    assert!(audit_lines(dir.path()).is_empty(), "nothing was repaired");
    assert!(
        reopen(dir.path(), 1 << 20).await.is_err(),
        "nothing was changed"
    );
}
