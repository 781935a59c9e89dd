//! Transactions on Kafka (`Log::transactional_writer`): committed records and the group
//! offsets committed with them appear together; aborted ones never; a reader reaches the
//! partition's end past the transaction markers; a second writer with the same transactional
//! id fences the first. The embedded log has no transactions (one writer process per
//! partition, so no zombie to fence) and says so.

use std::time::Duration;

use runnel_log::{LogError, OffsetCommit, StartOffset};

use crate::fixtures::{Fixture, to_partition};

/// Reads `topic`'s partition 0 from the start until it has `expected` records and the
/// reader's position has reached the partition's end (the last stable offset, which a
/// transaction's marker moves past its last record; a commit's markers land shortly after
/// the commit returns).
async fn read_all(log: &dyn runnel_log::Log, topic: &str, expected: usize) -> Vec<String> {
    let mut reader = log
        .reader(topic, 0, StartOffset::Earliest)
        .await
        .expect("reader");
    let mut values = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let end = log.latest_offset(topic, 0).await.expect("end");
        if values.len() >= expected && reader.position() >= end {
            return values;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reader is at {} and the end at {end}, after reading {values:?}",
            reader.position()
        );
        for record in reader
            .next_batch(100, Duration::from_millis(200))
            .await
            .expect("read")
        {
            values.push(String::from_utf8(record.value.to_vec()).expect("utf-8"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_transactions_commit_with_offsets_abort_and_fence() {
    let Some(fixture) = Fixture::kafka() else {
        return;
    };
    let log = fixture.log();
    let topic = fixture.topic("tx-out");
    let source = fixture.topic("tx-in");
    log.ensure_topic(&topic, 1).await.expect("topic");
    log.ensure_topic(&source, 1).await.expect("topic");
    let group = fixture.topic("tx-group");
    let id = fixture.topic("tx-id");

    let mut writer = log.transactional_writer(&id).await.expect("writer");
    writer.begin().await.expect("begin");
    writer
        .append(
            &topic,
            vec![to_partition(0, "a", 1), to_partition(0, "b", 2)],
        )
        .await
        .expect("append");
    let commit = OffsetCommit {
        group: group.clone(),
        topic: source.clone(),
        partition: 0,
        offset: 42,
        metadata: "epoch=7".to_string(),
    };
    writer.commit(&[commit]).await.expect("commit");
    assert_eq!(read_all(log.as_ref(), &topic, 2).await, vec!["a", "b"]);
    assert_eq!(
        log.committed_offset_and_metadata(&group, &source, 0)
            .await
            .expect("committed"),
        Some((42, "epoch=7".to_string())),
        "the offsets committed with the transaction, and their metadata"
    );

    writer.begin().await.expect("begin");
    writer
        .append(&topic, vec![to_partition(0, "aborted", 3)])
        .await
        .expect("append");
    writer.abort().await.expect("abort");
    assert_eq!(
        read_all(log.as_ref(), &topic, 2).await,
        vec!["a", "b"],
        "an aborted transaction's records are never read"
    );

    // A zombie: its transaction is open when a new writer with its id takes over.
    writer.begin().await.expect("begin");
    writer
        .append(&topic, vec![to_partition(0, "zombie", 4)])
        .await
        .expect("append");
    let mut successor = log.transactional_writer(&id).await.expect("successor");
    successor.begin().await.expect("begin");
    successor
        .append(&topic, vec![to_partition(0, "c", 5)])
        .await
        .expect("append");
    let commit = OffsetCommit {
        group: group.clone(),
        topic: source.clone(),
        partition: 0,
        offset: 50,
        metadata: "epoch=8".to_string(),
    };
    successor.commit(&[commit]).await.expect("commit");
    let zombie = OffsetCommit {
        group: group.clone(),
        topic: source.clone(),
        partition: 0,
        offset: 99,
        metadata: "epoch=zombie".to_string(),
    };
    let fenced = writer.commit(&[zombie]).await;
    assert!(
        matches!(fenced, Err(LogError::Fenced { .. })),
        "the zombie's commit is fenced: {fenced:?}"
    );
    assert_eq!(read_all(log.as_ref(), &topic, 3).await, vec!["a", "b", "c"]);
    assert_eq!(
        log.committed_offset_and_metadata(&group, &source, 0)
            .await
            .expect("committed"),
        Some((50, "epoch=8".to_string()))
    );
}

#[tokio::test]
async fn the_embedded_log_has_no_transactions() {
    let fixture = Fixture::embedded().await;
    let refused = fixture.log().transactional_writer("any").await;
    assert!(
        matches!(refused, Err(LogError::Unsupported(_))),
        "{:?}",
        refused.err()
    );
}
