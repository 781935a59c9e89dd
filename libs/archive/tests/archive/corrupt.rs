//! The archiver over a corrupt partition: it stops that partition, reports it, does not
//! spin, keeps archiving the others, and resumes once the partition is repaired.

use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runnel_archive::ArchiverStatus;
use runnel_archive::status::PartitionState;
use runnel_log::{EmbeddedLog, Log, ProblemKind, RepairAction};

use crate::support::*;

/// Waits up to 30 s for `condition`, checking every 50 ms.
async fn wait_for(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "{what} within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the manifest's files of `partition` run from `first` to `end` without a gap.
async fn archived_to(fixture: &Fixture, partition: u32, end: u64) -> bool {
    let Some(manifest) = runnel_archive::load_manifest(fixture.store.as_ref(), "history", STREAM)
        .await
        .unwrap()
    else {
        return false;
    };
    manifest.next_offset(partition) == Some(end)
}

#[tokio::test]
async fn a_corrupt_partition_waits_for_a_repair_while_the_others_are_archived() {
    let mut fixture = Fixture::new(2).await;
    fixture.config.archive.max_file_age = Duration::from_millis(300);
    let start = now_ms();
    let events = fixture.append(0, 400, 50, |n| start + n as i64).await;
    let ends = partition_ends(&events, 2);
    assert!(ends.iter().all(|end| *end > 50), "{ends:?}");
    // The archiver reads through a second log on the folder, as `runnel archive` would
    // beside the ingest service; the fixture's log stays the writer.
    let log_dir = fixture.config.embedded_log_dir();
    let follower = Arc::new(
        EmbeddedLog::open(&log_dir, &fixture.config.storage.log.embedded)
            .await
            .unwrap(),
    );
    let segment = log_dir
        .join(STREAM)
        .join("1")
        .join("00000000000000000000.log");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let middle = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, middle).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], middle).unwrap();
    let check = runnel_log::check_embedded_log(&log_dir, Some(STREAM), Some(1)).unwrap();
    let problem = &check[0].problems[0];
    assert_eq!(problem.kind, ProblemKind::BadFrame);
    let (first_bad, last_bad) = (
        problem.first_offset.unwrap(),
        problem.last_offset.expect("good records follow the damage"),
    );

    let status = ArchiverStatus::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let archiver = tokio::spawn({
        let (config, log, store, status, shutdown) = (
            fixture.config.clone(),
            Arc::clone(&follower) as Arc<dyn Log>,
            fixture.store.clone(),
            Arc::clone(&status),
            shutdown.clone(),
        );
        async move {
            runnel_archive::run_archiver_with_status(&config, log, store, status, shutdown).await
        }
    });

    wait_for(
        "partition 1 reported corrupt and partition 0 archived",
        async || {
            status
                .partition(STREAM, 1)
                .is_some_and(|partition| partition.state == PartitionState::Corrupt)
                && archived_to(&fixture, 0, ends[0]).await
        },
    )
    .await;
    let corrupt = status.partition(STREAM, 1).unwrap();
    let range = corrupt.corrupt.clone().expect("the corrupt range");
    assert_eq!(range.offset, first_bad);
    assert_eq!(range.path.as_deref(), Some(segment.to_str().unwrap()));
    assert_eq!(range.position, Some(problem.position));
    assert!(
        range
            .error
            .contains("runnel log repair --topic clicks --partition 1"),
        "{}",
        range.error
    );
    assert!(
        status
            .render_metrics()
            .contains("runnel_archiver_partition_corrupt{stream=\"clicks\",partition=\"1\"} 1")
    );

    // It waits without spinning: one look a second at most.
    let rechecks_before = range.rechecks;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let waiting = status.partition(STREAM, 1).unwrap();
    let rechecks = waiting.corrupt.as_ref().unwrap().rechecks - rechecks_before;
    assert!((1..=3).contains(&rechecks), "{rechecks} looks in 2.5 s");
    assert_eq!(waiting.corruptions_total, 1, "reported once");
    assert!(
        waiting.archived_until <= first_bad,
        "nothing past the damage was archived"
    );

    // The other partition goes on archiving.
    let later_start = now_ms();
    let later = fixture
        .append(400, 200, 50, |n| later_start + n as i64)
        .await;
    let end0 = ends[0] + later.iter().filter(|event| event.partition == 0).count() as u64;
    let end1 = ends[1] + later.iter().filter(|event| event.partition == 1).count() as u64;
    wait_for("partition 0 archives new records", async || {
        archived_to(&fixture, 0, end0).await
    })
    .await;

    // The operator stops the writer and repairs; the archiver resumes on its own.
    fixture.embedded().close().await;
    let report = runnel_log::repair_embedded_partition(
        &log_dir,
        fixture.config.storage.log.embedded.index_interval_bytes,
        STREAM,
        1,
        RepairAction::SkipRange {
            first: first_bad,
            last: last_bad,
        },
        Some("test"),
    )
    .unwrap();
    assert_eq!(report.first_dropped, first_bad);
    wait_for(
        "partition 1 archived to its end after the repair",
        async || archived_to(&fixture, 1, end1).await,
    )
    .await;
    let resumed = status.partition(STREAM, 1).unwrap();
    assert_eq!(resumed.state, PartitionState::Archiving);
    assert!(resumed.corrupt.is_none());

    let manifest = fixture.manifest().await;
    let mut next = 0;
    let mut rows = 0;
    for file in manifest.partition_files(1) {
        assert_eq!(file.first_offset, next, "contiguous ranges");
        next = file.next_offset();
        rows += file.rows;
    }
    assert_eq!(next, end1);
    assert_eq!(
        rows,
        end1 - (last_bad - first_bad + 1),
        "every record but the skipped ones"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), archiver)
        .await
        .expect("stops within 10 s")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn archiving_once_archives_the_other_partitions_then_names_the_corruption() {
    let fixture = Fixture::new(2).await;
    let events = fixture.append(0, 300, 50, steady).await;
    let end0 = events.iter().filter(|event| event.partition == 0).count() as u64;
    let log_dir = fixture.config.embedded_log_dir();
    let segment = log_dir
        .join(STREAM)
        .join("1")
        .join("00000000000000000000.log");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let middle = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, middle).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], middle).unwrap();

    let started = Instant::now();
    let error = runnel_archive::archive_until_caught_up(
        &fixture.config,
        fixture.log(),
        fixture.store.clone(),
    )
    .await
    .expect_err("partition 1 is corrupt");
    assert!(started.elapsed() < Duration::from_secs(20), "no retry loop");
    let message = error.to_string();
    assert!(
        matches!(
            error,
            runnel_archive::ArchiveError::CorruptLog { partition: 1, .. }
        ),
        "{message}"
    );
    assert!(
        message.contains("runnel log repair --topic clicks --partition 1"),
        "{message}"
    );
    assert!(
        archived_to(&fixture, 0, end0).await,
        "partition 0 is archived"
    );
}
