//! The conformance suite: behaviour every `Log` backend must have, run against each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_log::{Header, LogError, ProduceRecord, StartOffset, partition_for_key};

use crate::fixtures::{Fixture, read_n, read_n_from, record, to_partition, value_str};

/// Instantiates each named scenario once per backend.
macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let mut fixture = crate::fixtures::Fixture::embedded().await;
                    super::$scenario(&mut fixture).await;
                }
            )*
        }
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(mut fixture) = crate::fixtures::Fixture::kafka() else { return };
                    super::$scenario(&mut fixture).await;
                }
            )*
        }
    };
}

conformance!(
    offsets_are_dense_and_order_is_kept_per_partition,
    keys_are_placed_by_kafkas_murmur2,
    records_round_trip_with_headers_and_timestamps,
    earliest_and_latest_offsets,
    seek_by_timestamp,
    committed_offsets_per_group,
    restarted_consumer_resumes_where_it_committed,
    empty_and_huge_records,
    concurrent_readers_see_every_record_in_order,
    reader_waits_for_appends_and_times_out_empty,
    reader_seek,
    topics_are_checked,
    concurrent_appends_get_distinct_offsets,
);

async fn offsets_are_dense_and_order_is_kept_per_partition(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("order");
    log.ensure_topic(&topic, 3).await.expect("create topic");
    let mut expected: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for batch_idx in 0..3 {
        let records: Vec<ProduceRecord> = (0..50)
            .map(|idx| to_partition(idx % 3, &format!("b{batch_idx}-r{idx}"), 1000 + idx as i64))
            .collect();
        let positions = log.append(&topic, records.clone()).await.expect("append");
        assert_eq!(positions.len(), records.len());
        for (position, produced) in positions.iter().zip(&records) {
            assert_eq!(Some(position.partition), produced.partition);
            let values = expected.entry(position.partition).or_default();
            assert_eq!(
                position.offset,
                values.len() as u64,
                "offsets are dense from 0, in input order"
            );
            values.push(String::from_utf8(produced.value.to_vec()).expect("utf-8"));
        }
    }
    for (partition, values) in expected {
        let records = read_n(
            log.as_ref(),
            &topic,
            partition,
            StartOffset::Earliest,
            values.len(),
        )
        .await;
        let read: Vec<&str> = records.iter().map(value_str).collect();
        assert_eq!(
            read, values,
            "partition {partition} reads back in append order"
        );
        for (idx, read_record) in records.iter().enumerate() {
            assert_eq!(read_record.offset, idx as u64);
            assert_eq!(read_record.partition, partition);
            assert_eq!(&*read_record.topic, topic.as_str());
        }
    }
}

async fn keys_are_placed_by_kafkas_murmur2(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("keys");
    log.ensure_topic(&topic, 5).await.expect("create topic");
    let keys: Vec<String> = (0..40).map(|idx| format!("user-{idx}")).collect();
    let records = keys.iter().map(|key| record(Some(key), "v", 1)).collect();
    let positions = log.append(&topic, records).await.expect("append");
    for (key, position) in keys.iter().zip(&positions) {
        assert_eq!(
            position.partition,
            partition_for_key(key.as_bytes(), 5),
            "key {key}"
        );
    }
    let partitions: std::collections::HashSet<u32> = positions
        .iter()
        .map(|position| position.partition)
        .collect();
    assert!(
        partitions.len() > 1,
        "40 keys spread over several partitions"
    );
}

async fn records_round_trip_with_headers_and_timestamps(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("roundtrip");
    log.ensure_topic(&topic, 1).await.expect("create topic");
    let produced = vec![
        ProduceRecord {
            key: Some(Bytes::from_static(b"k1")),
            value: Bytes::from_static(b"{\"a\":1}"),
            timestamp: 1_700_000_000_000,
            headers: vec![
                Header {
                    key: "content-type".to_string(),
                    value: Bytes::from_static(b"application/json"),
                },
                Header {
                    key: "trace".to_string(),
                    value: Bytes::from_static(&[0, 1, 2, 255]),
                },
            ],
            partition: Some(0),
        },
        ProduceRecord {
            key: None,
            value: Bytes::from_static(b"no key"),
            timestamp: 1_600_000_000_000,
            headers: Vec::new(),
            partition: Some(0),
        },
    ];
    log.append(&topic, produced.clone()).await.expect("append");
    let records = read_n(log.as_ref(), &topic, 0, StartOffset::Earliest, 2).await;
    for (read, produced) in records.iter().zip(&produced) {
        assert_eq!(read.key, produced.key);
        assert_eq!(read.value, produced.value);
        assert_eq!(read.timestamp, produced.timestamp);
        assert_eq!(read.headers, produced.headers);
    }
}

async fn earliest_and_latest_offsets(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("watermarks");
    log.ensure_topic(&topic, 2).await.expect("create topic");
    assert_eq!(log.earliest_offset(&topic, 0).await.expect("earliest"), 0);
    assert_eq!(log.latest_offset(&topic, 0).await.expect("latest"), 0);
    let records = (0..7)
        .map(|idx| to_partition(0, &idx.to_string(), idx))
        .collect();
    log.append(&topic, records).await.expect("append");
    assert_eq!(log.earliest_offset(&topic, 0).await.expect("earliest"), 0);
    assert_eq!(log.latest_offset(&topic, 0).await.expect("latest"), 7);
    assert_eq!(log.latest_offset(&topic, 1).await.expect("latest"), 0);
    // A reader at Latest sees only what is appended after it opened.
    let mut reader = log
        .reader(&topic, 0, StartOffset::Latest)
        .await
        .expect("reader");
    assert_eq!(reader.position(), 7);
    log.append(&topic, vec![to_partition(0, "after", 100)])
        .await
        .expect("append");
    let records = read_n_from(reader.as_mut(), 1).await;
    assert_eq!(value_str(&records[0]), "after");
    assert_eq!(records[0].offset, 7);
}

async fn seek_by_timestamp(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("time");
    log.ensure_topic(&topic, 1).await.expect("create topic");
    // Not monotonic: seeking must find the first record at or after the time.
    let timestamps = [1000, 2000, 1500, 3000, 2500, 4000, 4000, 5000];
    let records = timestamps
        .iter()
        .enumerate()
        .map(|(idx, ts)| to_partition(0, &format!("r{idx}"), *ts))
        .collect();
    log.append(&topic, records).await.expect("append");
    let cases: [(i64, Option<u64>); 8] = [
        (0, Some(0)),
        (1000, Some(0)),
        (1001, Some(1)),
        (2000, Some(1)),
        (2001, Some(3)),
        (4000, Some(5)),
        (5000, Some(7)),
        (5001, None),
    ];
    for (timestamp, expected) in cases {
        let found = log
            .offset_for_timestamp(&topic, 0, timestamp)
            .await
            .expect("offset_for_timestamp");
        assert_eq!(
            found, expected,
            "first offset with timestamp >= {timestamp}"
        );
    }
    let offset = log
        .offset_for_timestamp(&topic, 0, 2001)
        .await
        .expect("seek")
        .expect("found");
    let records = read_n(log.as_ref(), &topic, 0, StartOffset::At(offset), 1).await;
    assert_eq!(records[0].timestamp, 3000);
}

async fn committed_offsets_per_group(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("commits");
    let group_a = fixture.topic("group-a");
    let group_b = fixture.topic("group-b");
    log.ensure_topic(&topic, 2).await.expect("create topic");
    let records = (0..10).map(|idx| to_partition(idx % 2, "x", 1)).collect();
    log.append(&topic, records).await.expect("append");
    assert_eq!(
        log.committed_offset(&group_a, &topic, 0)
            .await
            .expect("committed"),
        None
    );
    log.commit_offsets(&group_a, &topic, &[(0, 3), (1, 5)])
        .await
        .expect("commit");
    log.commit_offsets(&group_b, &topic, &[(0, 1)])
        .await
        .expect("commit");
    log.commit_offsets(&group_a, &topic, &[(0, 4)])
        .await
        .expect("commit again");
    assert_eq!(
        log.committed_offset(&group_a, &topic, 0).await.expect("a0"),
        Some(4)
    );
    assert_eq!(
        log.committed_offset(&group_a, &topic, 1).await.expect("a1"),
        Some(5)
    );
    assert_eq!(
        log.committed_offset(&group_b, &topic, 0).await.expect("b0"),
        Some(1)
    );
    assert_eq!(
        log.committed_offset(&group_b, &topic, 1).await.expect("b1"),
        None
    );
    fixture.restart().await;
    let log = fixture.log();
    assert_eq!(
        log.committed_offset(&group_a, &topic, 0)
            .await
            .expect("after restart"),
        Some(4),
        "commits survive a restart"
    );
    assert_eq!(
        log.committed_offset(&group_a, &topic, 1).await.expect("a1"),
        Some(5)
    );
}

async fn restarted_consumer_resumes_where_it_committed(fixture: &mut Fixture) {
    let topic = fixture.topic("resume");
    let group = fixture.topic("resumer");
    {
        let log = fixture.log();
        log.ensure_topic(&topic, 1).await.expect("create topic");
        let records = (0..100)
            .map(|idx| to_partition(0, &format!("r{idx}"), idx))
            .collect();
        log.append(&topic, records).await.expect("append");
        let mut reader = log
            .reader(&topic, 0, StartOffset::Earliest)
            .await
            .expect("reader");
        let first = read_n_from(reader.as_mut(), 40).await;
        assert_eq!(first.last().expect("40 records").offset, 39);
        log.commit_offsets(&group, &topic, &[(0, reader.position())])
            .await
            .expect("commit");
    }
    fixture.restart().await;
    let log = fixture.log();
    let committed = log
        .committed_offset(&group, &topic, 0)
        .await
        .expect("committed")
        .expect("a committed offset");
    assert_eq!(committed, 40);
    let rest = read_n(log.as_ref(), &topic, 0, StartOffset::At(committed), 60).await;
    let values: Vec<String> = rest.iter().map(|r| value_str(r).to_string()).collect();
    let expected: Vec<String> = (40..100).map(|idx| format!("r{idx}")).collect();
    assert_eq!(values, expected, "no gap, no duplicate after the restart");
    // And it can go on appending after the restart.
    let positions = log
        .append(&topic, vec![to_partition(0, "r100", 100)])
        .await
        .expect("append after restart");
    assert_eq!(positions[0].offset, 100);
}

async fn empty_and_huge_records(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("sizes");
    log.ensure_topic(&topic, 1).await.expect("create topic");
    let huge: Vec<u8> = (0..(1 << 20)).map(|idx: u32| (idx % 251) as u8).collect();
    let produced = vec![
        ProduceRecord {
            partition: Some(0),
            ..ProduceRecord::default()
        },
        ProduceRecord {
            key: Some(Bytes::new()),
            value: Bytes::new(),
            partition: Some(0),
            ..ProduceRecord::default()
        },
        ProduceRecord {
            key: Some(Bytes::from_static(b"big")),
            value: Bytes::from(huge.clone()),
            timestamp: 7,
            partition: Some(0),
            ..ProduceRecord::default()
        },
        to_partition(0, "after the big one", 8),
    ];
    log.append(&topic, produced.clone()).await.expect("append");
    let records = read_n(log.as_ref(), &topic, 0, StartOffset::Earliest, 4).await;
    assert!(records[0].value.is_empty());
    assert_eq!(records[0].key, None);
    assert!(records[1].value.is_empty());
    // Kafka does not tell an empty key from no key on every path; both backends must at
    // least keep the value empty and not invent bytes.
    assert!(records[1].key.as_ref().is_none_or(|key| key.is_empty()));
    assert_eq!(records[2].value.len(), 1 << 20);
    assert!(
        records[2].value == huge,
        "1 MiB value round-trips byte for byte"
    );
    assert_eq!(value_str(&records[3]), "after the big one");
}

async fn concurrent_readers_see_every_record_in_order(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("concurrent");
    log.ensure_topic(&topic, 1).await.expect("create topic");
    const TOTAL: usize = 2000;
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let log = Arc::clone(&log);
            let topic = topic.clone();
            tokio::spawn(async move {
                let records = read_n(log.as_ref(), &topic, 0, StartOffset::Earliest, TOTAL).await;
                records
                    .iter()
                    .map(|r| (r.offset, value_str(r).to_string()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for batch in 0..20 {
        let records = (0..TOTAL / 20)
            .map(|idx| to_partition(0, &format!("{}", batch * (TOTAL / 20) + idx), 1))
            .collect();
        log.append(&topic, records).await.expect("append");
    }
    let expected: Vec<(u64, String)> = (0..TOTAL)
        .map(|idx| (idx as u64, idx.to_string()))
        .collect();
    for reader in readers {
        assert_eq!(reader.await.expect("reader task"), expected);
    }
}

async fn reader_waits_for_appends_and_times_out_empty(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("wait");
    log.ensure_topic(&topic, 1).await.expect("create topic");
    let mut reader = log
        .reader(&topic, 0, StartOffset::Earliest)
        .await
        .expect("reader");
    let started = Instant::now();
    let empty = reader
        .next_batch(10, Duration::from_millis(300))
        .await
        .expect("empty read");
    assert!(empty.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "waited for max_wait"
    );
    let appender = {
        let log = Arc::clone(&log);
        let topic = topic.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            log.append(&topic, vec![to_partition(0, "wake", 1)])
                .await
                .expect("append");
        })
    };
    let started = Instant::now();
    let mut woken = Vec::new();
    while woken.is_empty() {
        woken = reader
            .next_batch(10, Duration::from_secs(20))
            .await
            .expect("read");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "append not seen"
        );
    }
    assert_eq!(value_str(&woken[0]), "wake");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a waiting reader is woken by the append, long before max_wait"
    );
    appender.await.expect("appender");
}

async fn reader_seek(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("seek");
    log.ensure_topic(&topic, 1).await.expect("create topic");
    let records = (0..30)
        .map(|idx| to_partition(0, &format!("r{idx}"), idx))
        .collect();
    log.append(&topic, records).await.expect("append");
    let mut reader = log
        .reader(&topic, 0, StartOffset::At(10))
        .await
        .expect("reader");
    let first = read_n_from(reader.as_mut(), 5).await;
    assert_eq!(first[0].offset, 10);
    reader.seek(3).await.expect("seek back");
    assert_eq!(reader.position(), 3);
    let again = read_n_from(reader.as_mut(), 2).await;
    assert_eq!((again[0].offset, value_str(&again[0])), (3, "r3"));
    reader.seek(29).await.expect("seek forward");
    let last = read_n_from(reader.as_mut(), 1).await;
    assert_eq!(last[0].offset, 29);
}

async fn topics_are_checked(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("checked");
    let missing = fixture.topic("missing");
    log.ensure_topic(&topic, 2).await.expect("create topic");
    log.ensure_topic(&topic, 2)
        .await
        .expect("ensure is idempotent");
    assert_eq!(log.partition_count(&topic).await.expect("count"), 2);
    match log.ensure_topic(&topic, 3).await {
        Err(LogError::PartitionMismatch {
            existing: 2,
            requested: 3,
            ..
        }) => {}
        other => panic!("expected a partition mismatch, got {other:?}"),
    }
    match log.ensure_topic(&missing, 0).await {
        Err(LogError::NoPartitions(name)) => assert_eq!(name, missing),
        other => panic!("expected a refusal of zero partitions, got {other:?}"),
    }
    match log.append(&missing, vec![record(None, "x", 1)]).await {
        Err(LogError::UnknownTopic(name)) => assert_eq!(name, missing),
        other => panic!("expected unknown topic, got {other:?}"),
    }
    match log.append(&topic, vec![to_partition(7, "x", 1)]).await {
        Err(LogError::UnknownPartition {
            partition: 7,
            partitions: 2,
            ..
        }) => {}
        other => panic!("expected unknown partition, got {other:?}"),
    }
    match log.reader(&topic, 0, StartOffset::At(5)).await {
        Err(LogError::OffsetOutOfRange {
            offset: 5,
            latest: 0,
            ..
        }) => {}
        Err(other) => panic!("expected out of range, got {other:?}"),
        Ok(_) => panic!("expected out of range, got a reader"),
    }
}

async fn concurrent_appends_get_distinct_offsets(fixture: &mut Fixture) {
    let log = fixture.log();
    let topic = fixture.topic("group-commit");
    log.ensure_topic(&topic, 2).await.expect("create topic");
    let tasks: Vec<_> = (0..16)
        .map(|task_idx| {
            let log = Arc::clone(&log);
            let topic = topic.clone();
            tokio::spawn(async move {
                let records = (0..24)
                    .map(|idx| to_partition(idx % 2, &format!("t{task_idx}-{idx}"), 1))
                    .collect();
                log.append(&topic, records).await.expect("append")
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for task in tasks {
        for position in task.await.expect("task") {
            assert!(seen.insert(position), "offset {position:?} given twice");
        }
    }
    for partition in 0..2 {
        assert_eq!(
            log.latest_offset(&topic, partition).await.expect("latest"),
            16 * 12,
            "16 tasks x 24 records, half to each of 2 partitions"
        );
    }
}
