//! Real second parties: DuckDB reads the archived files; a real S3-compatible server stores
//! them; a real Kafka-protocol broker holds the log.

use std::process::Command;

use crate::support::*;

#[tokio::test]
async fn duckdb_reads_exactly_the_events_that_were_archived() {
    let Some(python) = runnel_testkit::gate::duckdb_python("the DuckDB reader") else {
        return;
    };
    let fixture = Fixture::new(3).await;
    let mut events = fixture.append(0, 2000, 500, steady).await;
    // A second day, so DuckDB reads two `date=` folders.
    events.extend(fixture.append(2000, 500, 500, |n| steady(n) + DAY_MS).await);
    fixture.archive().await;

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/lib/read_history_duckdb.py"
    );
    let output = Command::new(&python)
        .arg(script)
        .arg(fixture.objects_dir().join("history"))
        .arg(STREAM)
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "duckdb reader failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut read = Vec::new();
    let mut dates = std::collections::BTreeSet::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        dates.insert(row["date"].as_str().unwrap().to_string());
        read.push(Event {
            partition: row["_partition"].as_u64().unwrap() as u32,
            offset: row["_offset"].as_u64().unwrap(),
            ingest_time: row["_ingest_time"].as_i64().unwrap(),
            event_time: row["event_time"].as_i64().unwrap(),
            user_id: row["user_id"].as_str().unwrap().to_string(),
            page: row["page"].as_str().unwrap().to_string(),
            duration_ms: row["duration_ms"].as_i64(),
        });
    }
    assert_eq!(read.len(), events.len());
    assert_eq!(read, sorted(events));
    assert_eq!(
        dates.into_iter().collect::<Vec<_>>(),
        vec!["2026-11-22".to_string(), "2026-11-23".to_string()]
    );
}

#[tokio::test]
async fn history_on_s3_is_archived_recovered_and_read_back() {
    let Some((endpoint, bucket)) = runnel_testkit::gate::s3_bucket("the S3 test") else {
        return;
    };
    let mut fixture = Fixture::new(2).await;
    let unique = format!(
        "run-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let url = format!("s3://{bucket}/{unique}");
    fixture.config.storage.object_store_url = Some(url.clone());
    fixture.config.storage.object_store_options = [
        ("aws_endpoint", endpoint.as_str()),
        ("aws_allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect();
    fixture.store =
        runnel_archive::open_object_store(&url, &fixture.config.storage.object_store_options)
            .unwrap();

    let mut events = fixture.append(0, 1500, 500, steady).await;
    let summary = fixture.archive().await;
    assert_eq!(summary.rows, 1500);
    let manifest = fixture.manifest().await;
    assert!(manifest.files.len() > 2);
    // Recovery on S3: lose the manifest, adopt every file back.
    use object_store::ObjectStoreExt;
    fixture
        .store
        .delete(&object_store::path::Path::from(
            "history/clicks/_manifest.json",
        ))
        .await
        .unwrap();
    let recovered = fixture.archive().await;
    assert_eq!(recovered.adopted as usize, manifest.files.len());
    assert_eq!(fixture.manifest().await.files, manifest.files);

    events.extend(fixture.append(1500, 100, 100, steady).await);
    for partition in 0..2 {
        let read = read_partition_to_end(&fixture, partition).await;
        assert_eq!(read, of_partition(&events, partition));
    }
}

#[tokio::test]
async fn history_of_a_kafka_topic_is_archived_and_read_back_across_the_seam() {
    let Some(fixture) = Fixture::kafka(2).await else {
        return;
    };
    let mut events = fixture.append(0, 1200, 400, steady).await;
    let summary = fixture.archive().await;
    assert_eq!(summary.rows, 1200);
    let manifest = fixture.manifest().await;
    assert!(manifest.files.len() > 2);
    events.extend(fixture.append(1200, 300, 300, steady).await);
    for partition in 0..2 {
        let read = read_partition_to_end(&fixture, partition).await;
        assert_eq!(read, of_partition(&events, partition));
        let committed = fixture
            .log
            .committed_offset(runnel_archive::ARCHIVER_GROUP, &fixture.stream, partition)
            .await
            .unwrap();
        assert_eq!(committed, manifest.next_offset(partition));
    }
}
