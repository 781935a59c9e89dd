//! One embedded log folder opened twice, as two processes would (each `EmbeddedLog` takes its
//! own `flock`s, which conflict as between processes): one writer per partition, the other
//! open following it through the `published` file.

use std::time::Duration;

use runnel_log::{EmbeddedLog, Log, LogError, OwnershipChange, StartOffset};

use crate::fixtures::{embedded_config, read_n, read_n_from, to_partition, value_str};

async fn open(dir: &std::path::Path, config: &runnel_config::EmbeddedLogConfig) -> EmbeddedLog {
    EmbeddedLog::open(dir, config).await.expect("open log")
}

fn values(range: std::ops::Range<usize>, partition: u32) -> Vec<runnel_log::ProduceRecord> {
    range
        .map(|idx| to_partition(partition, &format!("v{idx:04}"), idx as i64 * 10))
        .collect()
}

#[tokio::test]
async fn each_partition_has_one_writer_and_the_other_open_follows_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = open(dir.path(), &embedded_config()).await;
    let second = open(dir.path(), &embedded_config()).await;
    first.ensure_topic("t", 2).await.expect("create");
    // The second open finds the topic the first created, with its partition count.
    second.ensure_topic("t", 2).await.expect("same topic");
    match second.ensure_topic("t", 3).await {
        Err(LogError::PartitionMismatch { existing: 2, .. }) => {}
        other => panic!("expected a partition mismatch, got {other:?}"),
    }

    // Partition 0: the first writes, the second reads every record as it is appended.
    let mut follower = second
        .reader("t", 0, StartOffset::Earliest)
        .await
        .expect("reader");
    first.append("t", values(0..100, 0)).await.expect("append");
    let seen = read_n_from(follower.as_mut(), 100).await;
    assert_eq!(
        seen.iter().map(|record| record.offset).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
    assert_eq!(value_str(&seen[42]), "v0042");
    assert_eq!(second.latest_offset("t", 0).await.expect("latest"), 100);
    assert_eq!(
        second
            .offset_for_timestamp("t", 0, 505)
            .await
            .expect("seek"),
        Some(51)
    );

    // The second may not write partition 0, and nothing of a refused append is written.
    match second.append("t", values(0..2, 0)).await {
        Err(LogError::PartitionLocked {
            topic, partition, ..
        }) => assert_eq!((topic.as_str(), partition), ("t", 0)),
        other => panic!("expected the partition to be locked, got {other:?}"),
    }
    let mut both = values(0..1, 1);
    both.extend(values(0..1, 0));
    assert!(matches!(
        second.append("t", both).await,
        Err(LogError::PartitionLocked { partition: 0, .. })
    ));
    assert_eq!(first.latest_offset("t", 1).await.expect("latest"), 0);

    // Partition 1 is the second's to write; the first follows it.
    second.append("t", values(0..5, 1)).await.expect("append");
    let read = read_n(&first, "t", 1, StartOffset::Earliest, 5).await;
    assert_eq!(value_str(&read[4]), "v0004");
    assert!(matches!(
        first.append("t", values(0..1, 1)).await,
        Err(LogError::PartitionLocked { partition: 1, .. })
    ));
    first.close().await;
    second.close().await;
}

#[tokio::test]
async fn a_follower_crosses_segment_rolls_and_sees_retention() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = runnel_config::EmbeddedLogConfig {
        segment_bytes: 4096,
        retention_bytes: 3 * 4096,
        ..embedded_config()
    };
    let writer = open(dir.path(), &config).await;
    writer.ensure_topic("t", 1).await.expect("create");
    writer.append("t", values(0..30, 0)).await.expect("append");
    let follower = open(dir.path(), &config).await;
    let mut reader = follower
        .reader("t", 0, StartOffset::At(10))
        .await
        .expect("reader");
    // Appends of 50 records roll a segment (99 records) every other append or so.
    let appender = async {
        for start in (30..600).step_by(50) {
            writer
                .append("t", values(start..(start + 50).min(600), 0))
                .await
                .expect("append");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    };
    let (_, read) = tokio::join!(appender, read_n_from(reader.as_mut(), 590));
    for (idx, record) in read.iter().enumerate() {
        assert_eq!(record.offset, idx as u64 + 10, "dense offsets across rolls");
        assert_eq!(value_str(record), format!("v{:04}", idx + 10));
    }
    // Seeks work in sealed segments the follower learned of after it opened.
    assert_eq!(
        follower
            .offset_for_timestamp("t", 0, 3_000)
            .await
            .expect("seek"),
        Some(300)
    );

    let deleted = writer.enforce_retention("t").await.expect("retention");
    assert!(deleted >= 3, "deleted {deleted} segments");
    let earliest = writer.earliest_offset("t", 0).await.expect("earliest");
    assert_eq!(
        follower.earliest_offset("t", 0).await.expect("earliest"),
        earliest
    );
    let oldest = read_n(&follower, "t", 0, StartOffset::Earliest, 1).await;
    assert_eq!(oldest[0].offset, earliest);
    assert!(matches!(
        follower.reader("t", 0, StartOffset::At(0)).await,
        Err(LogError::OffsetOutOfRange { .. })
    ));
    writer.close().await;
}

#[tokio::test]
async fn the_follower_becomes_the_writer_once_the_writer_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = runnel_config::EmbeddedLogConfig {
        segment_bytes: 4096,
        ..embedded_config()
    };
    let writer = open(dir.path(), &config).await;
    writer.ensure_topic("t", 1).await.expect("create");
    writer.append("t", values(0..150, 0)).await.expect("append");
    let next = open(dir.path(), &config).await;
    let mut reader = next
        .reader("t", 0, StartOffset::At(140))
        .await
        .expect("reader");
    assert_eq!(read_n_from(reader.as_mut(), 10).await[0].offset, 140);
    writer.close().await;
    drop(writer);

    // The reader opened while following keeps reading what this open now writes.
    let positions = next.append("t", values(150..160, 0)).await.expect("append");
    assert_eq!(positions[0].offset, 150);
    let read = read_n_from(reader.as_mut(), 10).await;
    assert_eq!(read[0].offset, 150);
    assert_eq!(value_str(&read[9]), "v0159");
    next.close().await;
}

#[tokio::test]
async fn commits_of_both_opens_merge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = open(dir.path(), &embedded_config()).await;
    let second = open(dir.path(), &embedded_config()).await;
    first.ensure_topic("t", 2).await.expect("create");
    first
        .commit_offsets("g", "t", &[(0, 7)])
        .await
        .expect("commit");
    assert_eq!(
        second
            .committed_offset("g", "t", 0)
            .await
            .expect("committed"),
        Some(7)
    );
    second
        .commit_offsets("g", "t", &[(1, 9)])
        .await
        .expect("commit");
    assert_eq!(
        first
            .committed_offset("g", "t", 0)
            .await
            .expect("committed"),
        Some(7)
    );
    assert_eq!(
        first
            .committed_offset("g", "t", 1)
            .await
            .expect("committed"),
        Some(9)
    );
}

#[tokio::test]
async fn a_second_group_member_waits_until_the_first_leaves() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = open(dir.path(), &embedded_config()).await;
    let second = open(dir.path(), &embedded_config()).await;
    first.ensure_topic("members", 3).await.expect("create");
    let mut member = first.join_group("g", "members").await.expect("join");
    match member.next_change().await.expect("change") {
        OwnershipChange::Assigned(partitions) => assert_eq!(partitions, vec![0, 1, 2]),
        other => panic!("expected an assignment, got {other:?}"),
    }
    let mut standby = second.join_group("g", "members").await.expect("join");
    assert!(
        tokio::time::timeout(Duration::from_millis(400), standby.next_change())
            .await
            .is_err(),
        "two members own the group's partitions at once"
    );
    member.leave().await.expect("leave");
    let change = tokio::time::timeout(Duration::from_secs(5), standby.next_change())
        .await
        .expect("the standby takes over once the first member left")
        .expect("change");
    assert!(matches!(change, OwnershipChange::Assigned(partitions) if partitions == vec![0, 1, 2]));
}
