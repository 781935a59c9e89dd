//! The hybrid source: history then log, with no gap and no duplicate at the seam.

use std::time::Duration;

use runnel_archive::{ArchiveError, HybridSource, HybridStart};

use crate::support::*;

async fn open(
    fixture: &Fixture,
    partition: u32,
    start: HybridStart,
    batch_rows: usize,
) -> HybridSource {
    HybridSource::open(
        fixture.store.clone(),
        &fixture.config.archive.prefix,
        fixture.log(),
        &fixture.schema(),
        partition,
        start,
        batch_rows,
    )
    .await
    .unwrap()
}

/// Reads until the source has yielded everything before `end`.
async fn read_until(source: &mut HybridSource, end: u64) -> Vec<Event> {
    let mut events = Vec::new();
    while source.position() < end {
        match source.next_batch(Duration::from_secs(5)).await.unwrap() {
            Some(batch) => events.extend(events_of(&[batch])),
            None => panic!("no record within 5 s at offset {}", source.position()),
        }
    }
    events
}

#[tokio::test]
async fn reads_history_then_the_log_with_the_seam_inside_a_batch() {
    let fixture = Fixture::new(1).await;
    let events = fixture.append(0, 1500, 300, steady).await;
    fixture.archive().await;
    // The archiver is behind: its manifest lists only the files before offset ~1000. The
    // seam is where the last listed file ends, which is inside a log append of 300 records
    // (files end wherever 16 KiB of values fall) and inside a 128-row read batch.
    let mut manifest = fixture.manifest().await;
    manifest.files.retain(|file| file.last_offset < 1000);
    let seam = manifest.next_offset(0).unwrap();
    assert!(
        seam % 300 != 0 && seam % 128 != 0,
        "seam {seam} on a boundary"
    );
    runnel_archive::manifest::save_manifest(fixture.store.as_ref(), "history", &mut manifest)
        .await
        .unwrap();

    let mut source = open(&fixture, 0, HybridStart::Earliest, 128).await;
    assert!(!source.is_live());
    let history = read_until(&mut source, seam).await;
    assert_eq!(history.len() as u64, seam);
    let read_live = read_until(&mut source, 1500).await;
    assert!(source.is_live());
    let mut read = history;
    read.extend(read_live);
    assert_eq!(
        read,
        of_partition(&events, 0),
        "every offset once, in order"
    );

    // Records appended while the source is live arrive too.
    let later = fixture.append(1500, 10, 10, steady).await;
    let read = read_until(&mut source, 1510).await;
    assert_eq!(read, later);
    assert!(
        source
            .next_batch(Duration::from_millis(50))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn starts_at_an_offset_inside_a_file() {
    let fixture = Fixture::new(1).await;
    let events = fixture.append(0, 600, 600, steady).await;
    fixture.archive().await;
    let manifest = fixture.manifest().await;
    let file = &manifest.files[1];
    let start = file.first_offset + 7;
    let mut source = open(&fixture, 0, HybridStart::Offset(start), 50).await;
    let read = read_until(&mut source, 600).await;
    assert_eq!(read, events[start as usize..].to_vec());
}

#[tokio::test]
async fn an_event_time_start_skips_files_by_the_manifest() {
    let fixture = Fixture::new(1).await;
    let events = fixture.append(0, 600, 600, steady).await;
    fixture.archive().await;
    let manifest = fixture.manifest().await;
    let target = &manifest.files[2];
    let instant = target.min_event_time.unwrap() + 1;
    let mut source = open(&fixture, 0, HybridStart::EventTime(instant), 1000).await;
    assert_eq!(source.position(), target.first_offset);
    let read = read_until(&mut source, 600).await;
    assert_eq!(read, events[target.first_offset as usize..].to_vec());
    assert!(
        events
            .iter()
            .filter(|event| event.event_time >= instant)
            .all(|event| read.contains(event)),
        "every event at or after the instant is read"
    );
    // After every file: the source starts on the log.
    let source = open(&fixture, 0, HybridStart::EventTime(i64::MAX), 10).await;
    assert_eq!(source.position(), 600);
}

#[tokio::test]
async fn files_archived_while_reading_are_picked_up_before_the_log() {
    let fixture = Fixture::new(1).await;
    let mut events = fixture.append(0, 300, 300, steady).await;
    fixture.archive().await;
    let mut source = open(&fixture, 0, HybridStart::Earliest, 100).await;
    let first = source
        .next_batch(Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    events.extend(fixture.append(300, 300, 300, steady).await);
    fixture.archive().await;
    let mut read = events_of(&[first]);
    read.extend(read_until(&mut source, 600).await);
    assert_eq!(read, events);
}

#[tokio::test]
async fn a_gap_between_history_and_log_is_an_error_not_a_skip() {
    let mut fixture = Fixture::new(1).await;
    fixture.config.storage.log.embedded.segment_bytes = 4096;
    fixture.config.storage.log.embedded.retention_bytes = 8192;
    fixture.embedded().close().await;
    let reopened = std::sync::Arc::new(
        runnel_log::EmbeddedLog::open(
            &fixture.config.embedded_log_dir(),
            &fixture.config.storage.log.embedded,
        )
        .await
        .unwrap(),
    );
    fixture.log = reopened.clone();
    fixture.embedded = Some(reopened);
    fixture.append(0, 1000, 100, steady).await;
    let deleted = fixture.embedded().enforce_retention(STREAM).await.unwrap();
    assert!(deleted > 0);
    let earliest = fixture.log.earliest_offset(STREAM, 0).await.unwrap();
    assert!(earliest > 0);
    let mut source = open(&fixture, 0, HybridStart::Offset(0), 100).await;
    let error = source
        .next_batch(Duration::from_millis(100))
        .await
        .unwrap_err();
    match &error {
        ArchiveError::HistoryGap {
            archived_until,
            log_earliest,
            ..
        } => assert_eq!((*archived_until, *log_earliest), (0, earliest)),
        other => panic!("expected a gap, got {other}"),
    }
    assert!(error.to_string().contains("lost"), "{error}");
}
