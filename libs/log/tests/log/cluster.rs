//! Replication on a three-broker Apache Kafka cluster, with brokers killed with SIGKILL; and
//! an open transaction whose group coordinator is the broker killed.
//! `scripts/test.sh` starts the cluster after the rest of the suite and runs this module alone
//! with `KAFKA_CLUSTER_BOOTSTRAP` (every broker's address), `KAFKA_CLUSTER_PIDS` (the
//! brokers' process ids, in node order) and `RUNNEL_REQUIRE_KAFKA_CLUSTER=1`; without them the
//! test is skipped with a notice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use runnel_config::KafkaLogConfig;
use runnel_log::{KafkaLog, Log, OffsetCommit, ProduceRecord, StartOffset, TransactionalWriter};

/// The cluster's bootstrap list and its brokers' process ids, or `None` (after a notice)
/// when no cluster is configured and none is required.
fn cluster() -> Option<(String, Vec<u32>)> {
    let bootstrap = std::env::var("KAFKA_CLUSTER_BOOTSTRAP").unwrap_or_default();
    let pids: Vec<u32> = std::env::var("KAFKA_CLUSTER_PIDS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect();
    if bootstrap.is_empty() || pids.len() < 3 {
        assert!(
            std::env::var("RUNNEL_REQUIRE_KAFKA_CLUSTER").as_deref() != Ok("1"),
            "RUNNEL_REQUIRE_KAFKA_CLUSTER=1 but KAFKA_CLUSTER_BOOTSTRAP and three \
             KAFKA_CLUSTER_PIDS are not set: scripts/test.sh starts the cluster"
        );
        eprintln!("notice: no three-broker Kafka cluster configured; skipping a replication test");
        return None;
    }
    Some((bootstrap, pids))
}

fn config(bootstrap: &str, request_timeout: Duration) -> KafkaLogConfig {
    KafkaLogConfig {
        bootstrap_servers: bootstrap.to_string(),
        client_id: "runnel-cluster-test".to_string(),
        replication_factor: 3,
        min_insync_replicas: Some(2),
        request_timeout,
        session_timeout: Duration::from_secs(6),
        rebalance_timeout: Duration::from_secs(20),
        group_instance_id: None,
        properties: Default::default(),
        aws_msk_iam: false,
    }
}

fn sigkill(pid: u32) {
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -KILL {pid}");
}

fn batch(from: u32, count: u32) -> Vec<ProduceRecord> {
    (from..from + count)
        .map(|n| ProduceRecord {
            key: Some(Bytes::from(format!("key-{}", n % 10))),
            value: Bytes::from(format!("value-{n}")),
            timestamp: 1_767_225_600_000 + i64::from(n),
            headers: Vec::new(),
            partition: None,
        })
        .collect()
}

/// The node that coordinates `group`: the leader of its `__consumer_offsets` partition, which
/// Kafka picks from the group id's Java `hashCode`.
fn group_coordinator(bootstrap: &str, group: &str) -> i32 {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata client");
    let metadata = client
        .fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(10))
        .expect("metadata of __consumer_offsets");
    let partitions = metadata.topics()[0].partitions();
    assert!(!partitions.is_empty(), "no __consumer_offsets partitions");
    let hash = group.encode_utf16().fold(0i32, |hash, unit| {
        hash.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let partition = (hash & 0x7fff_ffff) as usize % partitions.len();
    partitions
        .iter()
        .find(|candidate| candidate.id() as usize == partition)
        .map(|found| found.leader())
        .expect("the group's partition")
}

fn offsets(group: &str, topic: &str, offset: u64) -> [OffsetCommit; 1] {
    [OffsetCommit {
        group: group.to_string(),
        topic: topic.to_string(),
        partition: 0,
        offset,
        metadata: format!("offset {offset}"),
    }]
}

/// Begins a transaction on `writer` and appends `value-<n>` to `topic` in it.
async fn begin_with(writer: &mut dyn TransactionalWriter, topic: &str, n: u32) {
    writer.begin().await.expect("begin");
    writer
        .append(topic, batch(n, 1))
        .await
        .expect("append in a transaction");
}

/// The values of `topic`'s partition `partition` that a `read_committed` reader sees.
async fn read_partition(log: &KafkaLog, topic: &str, partition: u32) -> Vec<String> {
    let end = log
        .latest_offset(topic, partition)
        .await
        .expect("end offset");
    let mut reader = log
        .reader(topic, partition, StartOffset::Earliest)
        .await
        .expect("reader");
    let mut read = Vec::new();
    while reader.position() < end {
        for record in reader
            .next_batch(1000, Duration::from_secs(5))
            .await
            .expect("read")
        {
            read.push(String::from_utf8(record.value.to_vec()).expect("utf-8"));
        }
    }
    read
}

/// One scenario, as the brokers can be killed only once: broker 1 dies while records are
/// appended and while a transaction whose group coordinator it is stays open; then broker 2.
/// Bounded: a client that hangs fails the test in 5 minutes instead of holding CI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_topic_keeps_every_acknowledged_record_when_a_broker_dies() {
    tokio::time::timeout(Duration::from_secs(300), replicated_topic_scenario())
        .await
        .expect("the scenario ended within 5 minutes");
}

async fn replicated_topic_scenario() {
    let Some((bootstrap, pids)) = cluster() else {
        return;
    };
    // Long enough for a partition whose leader died to get a new one (the controller drops a
    // silent broker after broker.session.timeout.ms, 9 s by default).
    let log = KafkaLog::new(&config(&bootstrap, Duration::from_secs(60))).expect("kafka clients");
    let run = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis()
    );
    let topic = format!("replicated-{run}");
    log.ensure_topic(&topic, 2).await.expect("create the topic");

    // A transaction that commits offsets for a group coordinated by broker 1 (so the writer's
    // client has it cached as that group's coordinator), then a second one left open.
    let (source, outputs) = (format!("source-{run}"), format!("outputs-{run}"));
    log.ensure_topic(&source, 1)
        .await
        .expect("create the source");
    log.ensure_topic(&outputs, 1)
        .await
        .expect("create the outputs");
    let transactions =
        KafkaLog::new(&config(&bootstrap, Duration::from_secs(30))).expect("kafka clients");
    let id = format!("cluster-tx-{run}");
    let mut writer = transactions
        .transactional_writer(&id)
        .await
        .expect("writer");
    begin_with(writer.as_mut(), &outputs, 0).await;
    // The first commit creates __consumer_offsets; then a group that broker 1 coordinates.
    writer
        .commit(&offsets(&format!("cluster-group-{run}"), &source, 1))
        .await
        .expect("commit with three brokers");
    let group = (0..)
        .map(|n| format!("cluster-group-{run}-{n}"))
        .find(|group| group_coordinator(&bootstrap, group) == 1)
        .expect("a group broker 1 coordinates");
    begin_with(writer.as_mut(), &outputs, 1).await;
    writer
        .commit(&offsets(&group, &source, 2))
        .await
        .expect("commit with three brokers");
    begin_with(writer.as_mut(), &outputs, 2).await;
    let mut acknowledged = Vec::new();
    for round in 0..5 {
        log.append(&topic, batch(round * 100, 100))
            .await
            .expect("append with three brokers");
        acknowledged.extend((round * 100..(round + 1) * 100).map(|n| format!("value-{n}")));
    }
    sigkill(pids[0]);
    // The open transaction, committed at once, while its client still takes the dead broker
    // for the group's coordinator: the commit ends in bounded time (librdkafka 2.12 alone may
    // wait forever: confluentinc/librdkafka#5456, #5511), whether it succeeds or not.
    let started = std::time::Instant::now();
    let first = tokio::time::timeout(
        Duration::from_secs(90),
        writer.commit(&offsets(&group, &source, 4)),
    )
    .await
    .expect("the commit returned (with a dead group coordinator) within 90 s");
    eprintln!(
        "the commit with a dead group coordinator returned after {:.1} s: {first:?}",
        started.elapsed().as_secs_f64()
    );
    for round in 5..10 {
        log.append(&topic, batch(round * 100, 100))
            .await
            .expect("append with two of three brokers (min.insync.replicas 2)");
        acknowledged.extend((round * 100..(round + 1) * 100).map(|n| format!("value-{n}")));
    }
    let mut read = Vec::new();
    for partition in 0..2 {
        read.extend(read_partition(&log, &topic, partition).await);
    }
    read.sort();
    acknowledged.sort();
    assert_eq!(
        read.len(),
        acknowledged.len(),
        "every acknowledged record once, no duplicate from a retried write"
    );
    assert_eq!(read, acknowledged);

    // A successor with the same transactional id fences the first writer and commits.
    let mut successor = transactions
        .transactional_writer(&id)
        .await
        .expect("a successor writer");
    begin_with(successor.as_mut(), &outputs, 4).await;
    successor
        .commit(&offsets(&group, &source, 5))
        .await
        .expect("the successor commits with two of three brokers");
    let mut want = vec!["value-0", "value-1"];
    if first.is_ok() {
        want.push("value-2");
    }
    want.push("value-4");
    assert_eq!(
        read_partition(&log, &outputs, 0).await,
        want,
        "committed transactions only, the first writer's last one if its commit succeeded"
    );
    assert_eq!(
        log.committed_offset_and_metadata(&group, &source, 0)
            .await
            .expect("committed offset"),
        Some((5, "offset 5".to_string())),
        "the successor's offsets"
    );

    // One broker of three left: fewer in-sync replicas than min.insync.replicas, so a write
    // is refused, not acknowledged (and the controller quorum is gone too).
    sigkill(pids[1]);
    let short = KafkaLog::new(&config(&bootstrap, Duration::from_secs(8))).expect("kafka clients");
    let refused = short.append(&topic, batch(2_000, 10)).await;
    assert!(
        refused.is_err(),
        "a write was acknowledged with one in-sync replica of three: {refused:?}"
    );
}
