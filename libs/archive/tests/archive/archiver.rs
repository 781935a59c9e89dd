//! The archiver: files, rolling, manifest, idempotence, recovery, dead letters.

use std::time::Duration;

use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use runnel_archive::ARCHIVER_GROUP;
use runnel_log::StartOffset;

use crate::support::*;

#[tokio::test]
async fn archives_every_record_once_in_contiguous_zstd_files() {
    let fixture = Fixture::new(3).await;
    let events = fixture.append(0, 3000, 250, steady).await;
    let summary = fixture.archive().await;
    assert_eq!(summary.rows, 3000);
    assert!(
        summary.files > 6,
        "small target_file_bytes rolls many files: {summary:?}"
    );

    let manifest = fixture.manifest().await;
    assert_eq!(manifest.files.len() as u64, summary.files);
    let mut read = Vec::new();
    for partition in 0..3 {
        let files: Vec<_> = manifest.partition_files(partition).collect();
        let latest = fixture.log.latest_offset(STREAM, partition).await.unwrap();
        assert_eq!(files.first().unwrap().first_offset, 0);
        assert_eq!(files.last().unwrap().last_offset, latest - 1);
        for pair in files.windows(2) {
            assert_eq!(pair[0].last_offset + 1, pair[1].first_offset, "contiguous");
        }
        for file in files {
            let expected_path = format!(
                "history/clicks/date=2026-11-22/{partition}-{}-{}.parquet",
                file.first_offset, file.last_offset
            );
            assert_eq!(file.path, expected_path);
            let path = fixture.objects_dir().join(&file.path);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), file.bytes);
            let batches = read_file(&path);
            let rows = events_of(&batches);
            assert_eq!(rows.len() as u64, file.rows);
            assert_eq!(file.rows, file.last_offset - file.first_offset + 1);
            assert_eq!(
                file.min_event_time,
                rows.iter().map(|event| event.event_time).min()
            );
            assert_eq!(
                file.max_event_time,
                rows.iter().map(|event| event.event_time).max()
            );
            assert_eq!(file.min_ingest_time, rows[0].ingest_time);
            let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
            let metadata = reader.metadata();
            for group in metadata.row_groups() {
                assert!(
                    group.num_rows() <= 1000,
                    "row groups of at most row-group-rows"
                );
                for column in group.columns() {
                    assert!(matches!(column.compression(), Compression::ZSTD(_)));
                }
            }
            read.extend(rows);
        }
    }
    assert_eq!(sorted(read), sorted(events));
}

#[tokio::test]
async fn a_second_run_writes_only_what_is_new() {
    let fixture = Fixture::new(2).await;
    let mut events = fixture.append(0, 500, 100, steady).await;
    let first = fixture.archive().await;
    assert_eq!(first.rows, 500);
    let tree_before = tree(&fixture.objects_dir());

    let again = fixture.archive().await;
    assert_eq!(again.files, 0, "nothing new, nothing written");
    let manifest_path = "history/clicks/_manifest.json";
    let mut tree_after = tree(&fixture.objects_dir());
    let mut tree_before_files = tree_before.clone();
    tree_after.remove(manifest_path);
    tree_before_files.remove(manifest_path);
    assert_eq!(tree_after, tree_before_files);

    events.extend(fixture.append(500, 300, 100, steady).await);
    let more = fixture.archive().await;
    assert_eq!(more.rows, 300);
    let manifest = fixture.manifest().await;
    let mut read = Vec::new();
    for file in &manifest.files {
        read.extend(events_of(&read_file(
            &fixture.objects_dir().join(&file.path),
        )));
    }
    assert_eq!(sorted(read), sorted(events));
}

#[tokio::test]
async fn files_roll_at_the_ingest_date_and_at_the_age_limit() {
    let mut fixture = Fixture::new(1).await;
    fixture.config.archive.target_file_bytes = 1 << 30;
    fixture.config.archive.max_file_age = Duration::from_secs(60);
    // 0..100 on day 0, ten seconds apart (span 990 s: rolls every 60 s of ingest time);
    // 100..110 a day later.
    let ingest = |n: u64| {
        if n < 100 {
            BASE_MS + n as i64 * 10_000
        } else {
            BASE_MS + DAY_MS + n as i64
        }
    };
    fixture.append(0, 110, 110, ingest).await;
    fixture.archive().await;
    let manifest = fixture.manifest().await;
    let ranges: Vec<(u64, u64)> = manifest
        .files
        .iter()
        .map(|file| (file.first_offset, file.last_offset))
        .collect();
    let mut expected: Vec<(u64, u64)> = (0..100)
        .step_by(6)
        .map(|first| (first, (first + 5).min(99)))
        .collect();
    expected.push((100, 109));
    assert_eq!(ranges, expected);
    assert!(
        manifest
            .files
            .last()
            .unwrap()
            .path
            .contains("date=2026-11-23/")
    );
    assert!(manifest.files[0].path.contains("date=2026-11-22/"));
}

#[tokio::test]
async fn a_file_written_before_a_crash_is_adopted_and_strays_are_deleted() {
    let fixture = Fixture::new(2).await;
    fixture.append(0, 800, 100, steady).await;
    fixture.archive().await;
    let manifest = fixture.manifest().await;
    let files_before = tree(&fixture.objects_dir());
    // A crash after the files' puts and before the manifest's: no manifest at all.
    std::fs::remove_file(fixture.objects_dir().join("history/clicks/_manifest.json")).unwrap();
    // And a stray that continues nothing (as if from an overlapping older attempt).
    let stray = fixture
        .objects_dir()
        .join("history/clicks/date=2026-11-22/0-3-5.parquet");
    std::fs::write(&stray, b"not even parquet").unwrap();

    let summary = fixture.archive().await;
    assert_eq!(summary.adopted as usize, manifest.files.len());
    assert_eq!(summary.files, 0);
    assert!(!stray.try_exists().unwrap(), "the stray file is deleted");
    let recovered = fixture.manifest().await;
    assert_eq!(recovered.files, manifest.files);
    let mut files_after = tree(&fixture.objects_dir());
    let mut files_before = files_before;
    files_after.remove("history/clicks/_manifest.json");
    files_before.remove("history/clicks/_manifest.json");
    assert_eq!(
        files_after, files_before,
        "the adopted files are the ones written"
    );
}

#[tokio::test]
async fn undecodable_records_go_to_the_dead_letter_topic_and_ranges_stay_contiguous() {
    let fixture = Fixture::new(1).await;
    fixture.append(0, 10, 10, steady).await;
    let bad = fixture
        .append_raw("{\"event_time\": not json", BASE_MS + 10)
        .await;
    fixture.append(11, 10, 10, steady).await;
    let summary = fixture.archive().await;
    assert_eq!(summary.undecodable, 1);
    assert_eq!(summary.rows, 20);
    let manifest = fixture.manifest().await;
    let file = &manifest.files[0];
    assert_eq!(
        (file.first_offset, file.last_offset, file.rows),
        (0, 20, 20)
    );

    let dead_letters = runnel_events::dead_letter_topic(STREAM);
    let mut reader = fixture
        .log
        .reader(&dead_letters, 0, StartOffset::Earliest)
        .await
        .unwrap();
    let records = reader.next_batch(10, Duration::from_secs(1)).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(&records[0].value[..], b"{\"event_time\": not json");
    let header = |name: &str| {
        records[0]
            .headers
            .iter()
            .find(|header| header.key == name)
            .map(|header| String::from_utf8_lossy(&header.value).to_string())
    };
    assert_eq!(header("runnel-source-offset"), Some(bad.to_string()));
    assert!(header("runnel-reason").is_some_and(|reason| !reason.is_empty()));
}

#[tokio::test]
async fn the_archiver_commits_what_it_archived_as_a_retention_hold() {
    let fixture = Fixture::new(2).await;
    fixture.append(0, 300, 100, steady).await;
    fixture.archive().await;
    for partition in 0..2 {
        let latest = fixture.log.latest_offset(STREAM, partition).await.unwrap();
        let committed = fixture
            .log
            .committed_offset(ARCHIVER_GROUP, STREAM, partition)
            .await
            .unwrap();
        assert_eq!(committed, Some(latest));
    }
}

#[tokio::test]
async fn the_service_archiver_finishes_a_quiet_file_once_it_is_old_and_stops_on_shutdown() {
    let mut fixture = Fixture::new(1).await;
    fixture.config.archive.target_file_bytes = 1 << 30;
    fixture.config.archive.max_file_age = Duration::from_millis(300);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let events = fixture.append(0, 50, 50, |n| now + n as i64).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (config, log, store, shutdown) = (
            fixture.config.clone(),
            fixture.log(),
            fixture.store.clone(),
            shutdown.clone(),
        );
        async move { runnel_archive::run_archiver(&config, log, store, shutdown).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let manifest = loop {
        let manifest = runnel_archive::load_manifest(fixture.store.as_ref(), "history", STREAM)
            .await
            .unwrap();
        if let Some(manifest) = manifest
            && !manifest.files.is_empty()
        {
            break manifest;
        }
        assert!(std::time::Instant::now() < deadline, "no file within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(manifest.files[0].rows, events.len() as u64);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops within 10 s")
        .unwrap()
        .unwrap();
}
