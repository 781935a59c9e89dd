//! Replication on a three-broker Apache Kafka cluster, with brokers killed with SIGKILL.
//! `scripts/test.sh` starts the cluster after the rest of the suite and runs this module alone
//! with `KAFKA_CLUSTER_BOOTSTRAP` (every broker's address), `KAFKA_CLUSTER_PIDS` (the
//! brokers' process ids, in node order) and `RUNNEL_REQUIRE_KAFKA_CLUSTER=1`; without them the
//! test is skipped with a notice.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_config::KafkaLogConfig;
use runnel_log::{KafkaLog, Log, ProduceRecord, StartOffset};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_topic_keeps_every_acknowledged_record_when_a_broker_dies() {
    let Some((bootstrap, pids)) = cluster() else {
        return;
    };
    // Long enough for a partition whose leader died to get a new one (the controller drops a
    // silent broker after broker.session.timeout.ms, 9 s by default).
    let log = KafkaLog::new(&config(&bootstrap, Duration::from_secs(60))).expect("kafka clients");
    let topic = format!(
        "replicated-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis()
    );
    log.ensure_topic(&topic, 2).await.expect("create the topic");
    let mut acknowledged = Vec::new();
    for round in 0..5 {
        log.append(&topic, batch(round * 100, 100))
            .await
            .expect("append with three brokers");
        acknowledged.extend((round * 100..(round + 1) * 100).map(|n| format!("value-{n}")));
    }
    sigkill(pids[0]);
    for round in 5..10 {
        log.append(&topic, batch(round * 100, 100))
            .await
            .expect("append with two of three brokers (min.insync.replicas 2)");
        acknowledged.extend((round * 100..(round + 1) * 100).map(|n| format!("value-{n}")));
    }
    let mut read = Vec::new();
    for partition in 0..2 {
        let end = log
            .latest_offset(&topic, partition)
            .await
            .expect("end offset");
        let mut reader = log
            .reader(&topic, partition, StartOffset::Earliest)
            .await
            .expect("reader");
        while reader.position() < end {
            for record in reader
                .next_batch(1000, Duration::from_secs(5))
                .await
                .expect("read")
            {
                read.push(String::from_utf8(record.value.to_vec()).expect("utf-8"));
            }
        }
    }
    read.sort();
    acknowledged.sort();
    assert_eq!(
        read.len(),
        acknowledged.len(),
        "every acknowledged record once, no duplicate from a retried write"
    );
    assert_eq!(read, acknowledged);

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
