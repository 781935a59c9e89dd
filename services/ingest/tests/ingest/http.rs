//! HTTP ingest: acknowledged events are in the log, in the record format, where the answer
//! says; keyed events follow murmur2, unkeyed ones round robin.

use std::collections::HashMap;

use runnel_log::partition_for_key;
use serde_json::json;

use crate::sandbox::{Sandbox, http_post, now_millis, post_lines};

#[tokio::test]
async fn ndjson_events_are_durable_in_record_format_at_the_reported_offsets() {
    let sandbox = Sandbox::start().await;
    let now = now_millis();
    let lines: Vec<String> = (0..40)
        .map(|idx| {
            format!(
                r#"{{"page": "/p{idx}", "user_id": "user-{}", "event_time": {}, "ignored": [1]}}"#,
                idx % 7,
                now - idx
            )
        })
        .collect();
    let before = now_millis();
    let response = post_lines(sandbox.addr, "clicks", "", &lines).await;
    let after = now_millis();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let body = response.json();
    assert_eq!(body["stream"], "clicks");
    assert_eq!(body["accepted"], 40);
    assert_eq!(body["rejected"], 0);
    assert_eq!(body["aborted"], false);
    assert_eq!(body["rejections"], json!([]));

    // Every record of the topic, by content; each must lie in a reported range.
    let ranges = body["ranges"].as_array().expect("ranges");
    let mut n_in_ranges = 0;
    for range in ranges {
        let partition = range["partition"].as_u64().expect("partition") as u32;
        let first = range["first_offset"].as_u64().expect("first");
        let last = range["last_offset"].as_u64().expect("last");
        assert_eq!(range["count"].as_u64(), Some(last - first + 1));
        let records = sandbox.partition_records("clicks", partition).await;
        for record in records
            .iter()
            .filter(|r| (first..=last).contains(&r.offset))
        {
            n_in_ranges += 1;
            let key = record.key.as_deref().expect("keyed");
            assert_eq!(partition_for_key(key, 4), partition, "murmur2 placement");
            assert!(
                (before..=after).contains(&record.timestamp),
                "record timestamp is the ingest time"
            );
            let value: serde_json::Value = serde_json::from_slice(&record.value).expect("json");
            let idx: i64 = value["page"].as_str().expect("page")[2..]
                .parse()
                .expect("idx");
            let expect = format!(
                r#"{{"event_time":{},"user_id":"user-{}","page":"/p{idx}","duration_ms":null}}"#,
                now - idx,
                idx % 7
            );
            assert_eq!(std::str::from_utf8(&record.value).expect("utf-8"), expect);
            assert_eq!(key, format!("user-{}", idx % 7).as_bytes());
        }
    }
    assert_eq!(
        n_in_ranges, 40,
        "every acknowledged event is inside a reported range"
    );
    assert_eq!(sandbox.records("clicks").await.len(), 40);
    // The events of one key keep their request order.
    let records = sandbox.records("clicks").await;
    let mut last_seen: HashMap<Vec<u8>, i64> = HashMap::new();
    for record in &records {
        let value: serde_json::Value = serde_json::from_slice(&record.value).expect("json");
        let idx: i64 = value["page"].as_str().expect("page")[2..]
            .parse()
            .expect("idx");
        let key = record.key.clone().expect("key").to_vec();
        if let Some(previous) = last_seen.insert(key, idx) {
            assert!(previous < idx, "per-key order kept");
        }
    }
    sandbox.stop().await;
}

#[tokio::test]
async fn json_array_bodies_without_key_go_round_robin() {
    let sandbox = Sandbox::start().await;
    let now = now_millis();
    let events: Vec<serde_json::Value> = (0..6)
        .map(|idx| json!({"at": now, "value": idx, "host": format!("h{idx}")}))
        .collect();
    let body = serde_json::to_vec_pretty(&events).expect("json");
    // No content type: the leading `[` says it is an array.
    let response = http_post(sandbox.addr, "/v1/streams/metrics/events", None, &body).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["accepted"], 6);
    for partition in 0..3 {
        let records = sandbox.partition_records("metrics", partition).await;
        assert_eq!(
            records.len(),
            2,
            "round robin puts 2 of 6 in partition {partition}"
        );
        for record in records {
            assert_eq!(record.key, None);
            let value = std::str::from_utf8(&record.value).expect("utf-8");
            assert!(
                value.starts_with(&format!(r#"{{"at":{now},"value":"#)),
                "{value}"
            );
        }
    }
    // A JSON content type with an array works the same.
    let response = http_post(
        sandbox.addr,
        "/v1/streams/metrics/events",
        Some("application/json"),
        &body,
    )
    .await;
    assert_eq!(response.json()["accepted"], 6);
    assert_eq!(sandbox.records("metrics").await.len(), 12);
    sandbox.stop().await;
}

#[tokio::test]
async fn empty_and_malformed_bodies_are_bad_requests() {
    let sandbox = Sandbox::start().await;
    let response = http_post(sandbox.addr, "/v1/streams/clicks/events", None, b" \n").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["code"], "no_events");
    let response = http_post(sandbox.addr, "/v1/streams/clicks/events", None, b"[{}, {}").await;
    assert_eq!(response.status, 400);
    assert_eq!(response.json()["code"], "bad_body");
    assert!(
        response.json()["error"]
            .as_str()
            .expect("error")
            .contains("not closed")
    );
    sandbox.stop().await;
}
