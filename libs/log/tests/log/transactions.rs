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

/// KIP-447 for this process's group members: a transaction's offsets for a group joined
/// here go with the member's identity. While the member is the group's, a commit goes
/// through; once a newer member has taken its place (here, a restarted process with the same
/// static `group.instance.id`, while the old one is still running: a zombie), the old
/// member's commit is refused as fenced, and neither its records nor its offsets are seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_group_member_commits_nothing_on_kafka() {
    let Some(fixture) = Fixture::kafka() else {
        return;
    };
    let instance = fixture.topic("kip447-instance");
    let same_instance = |config: &mut runnel_config::KafkaLogConfig| {
        config.group_instance_id = Some(instance.clone());
    };
    let (Some(old), Some(new)) = (
        fixture.another_kafka_log(same_instance),
        fixture.another_kafka_log(same_instance),
    ) else {
        return;
    };
    let (members, group) = (fixture.topic("kip447-members"), fixture.topic("kip447"));
    let (source, topic) = (fixture.topic("kip447-in"), fixture.topic("kip447-out"));
    for name in [&members, &source, &topic] {
        old.ensure_topic(name, 2).await.expect("topic");
    }
    let mut first = old.join_group(&group, &members).await.expect("join");
    wait_for_both(first.as_mut(), "the first member").await;
    let commit = |offset: u64, metadata: &str| OffsetCommit {
        group: group.clone(),
        topic: source.clone(),
        partition: 0,
        offset,
        metadata: metadata.to_string(),
    };
    let mut writer = old
        .transactional_writer(&fixture.topic("kip447-old"))
        .await
        .expect("writer");
    writer.begin().await.expect("begin");
    writer
        .append(&topic, vec![to_partition(0, "owner", 1)])
        .await
        .expect("append");
    writer
        .commit(&[commit(10, "owner")])
        .await
        .expect("the member commits");

    // The same static member starts again elsewhere and takes the old one's place.
    let mut second = new.join_group(&group, &members).await.expect("join again");
    wait_for_both(second.as_mut(), "the new member").await;
    writer.begin().await.expect("begin");
    writer
        .append(&topic, vec![to_partition(0, "zombie", 2)])
        .await
        .expect("append");
    let refused = writer.commit(&[commit(20, "zombie")]).await;
    assert!(
        matches!(refused, Err(LogError::Fenced { .. })),
        "the replaced member commits nothing: {refused:?}"
    );
    drop(writer);
    assert_eq!(read_all(new.as_ref(), &topic, 1).await, vec!["owner"]);
    assert_eq!(
        new.committed_offset_and_metadata(&group, &source, 0)
            .await
            .expect("committed"),
        Some((10, "owner".to_string()))
    );
    drop(first);
    second.leave().await.expect("leave");
}

/// Waits until `member` owns both partitions of its group's topic.
async fn wait_for_both(member: &mut dyn runnel_log::GroupMembership, who: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(member.owns(0) && member.owns(1)) {
        let change = tokio::time::timeout_at(deadline, member.next_change()).await;
        match change {
            Ok(Ok(runnel_log::OwnershipChange::Assigned(_))) => {}
            Ok(Ok(runnel_log::OwnershipChange::Revoked(revocation))) => revocation.done(),
            Ok(Err(error)) => panic!("{who}: {error}"),
            Err(_) => panic!("{who} never owned both partitions"),
        }
    }
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
