//! gRPC ingest: unary and client-streaming calls, JSON documents and typed rows.

use bytes::Bytes;
use runnel_log::partition_for_key;
use runnel_proto::common::v1::Value;
use runnel_proto::common::v1::value::Kind;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, Row, TypedRows, ingest_request::Events};

use crate::sandbox::{Sandbox, now_millis};

fn json_request(stream: &str, events: Vec<String>) -> IngestRequest {
    IngestRequest {
        stream: stream.to_string(),
        all_or_nothing: false,
        events: Some(Events::Json(JsonEvents {
            events: events.into_iter().map(Bytes::from).collect(),
        })),
    }
}

fn value(kind: Kind) -> Value {
    Value { kind: Some(kind) }
}

#[tokio::test]
async fn unary_json_events_land_at_the_reported_offsets() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.grpc().await;
    let now = now_millis();
    let events: Vec<String> = (0..25)
        .map(|idx| format!(r#"{{"event_time": {now}, "user_id": "u{idx}", "duration_ms": {idx}}}"#))
        .collect();
    let response = client
        .ingest(json_request("clicks", events))
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (25, 0));
    assert!(!response.aborted);
    let mut n_checked = 0;
    for range in &response.ranges {
        assert_eq!(range.count, range.last_offset - range.first_offset + 1);
        for record in sandbox.partition_records("clicks", range.partition).await {
            if !(range.first_offset..=range.last_offset).contains(&record.offset) {
                continue;
            }
            n_checked += 1;
            let key = record.key.clone().expect("keyed");
            assert_eq!(partition_for_key(&key, 4), range.partition);
            let user = std::str::from_utf8(&key).expect("utf-8");
            let idx = &user[1..];
            assert_eq!(
                record.value,
                Bytes::from(format!(
                    r#"{{"event_time":{now},"user_id":"{user}","page":null,"duration_ms":{idx}}}"#
                ))
            );
        }
    }
    assert_eq!(n_checked, 25);
    sandbox.stop().await;
}

#[tokio::test]
async fn typed_rows_are_written_like_json() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.grpc().await;
    let now = now_millis();
    let row = Row {
        values: vec![
            value(Kind::TimestampMs(now)),
            value(Kind::StringValue("u1".to_string())),
            Value { kind: None },
            value(Kind::Int64Value(5)),
        ],
    };
    let short_row = Row {
        values: vec![
            value(Kind::Int64Value(now)),
            value(Kind::StringValue("u2".to_string())),
        ],
    };
    let response = client
        .ingest(IngestRequest {
            stream: "clicks".to_string(),
            all_or_nothing: false,
            events: Some(Events::Rows(TypedRows {
                rows: vec![row, short_row],
            })),
        })
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (2, 0));
    let mut values: Vec<String> = sandbox
        .records("clicks")
        .await
        .iter()
        .map(|record| String::from_utf8(record.value.to_vec()).expect("utf-8"))
        .collect();
    values.sort();
    assert_eq!(
        values,
        [
            format!(r#"{{"event_time":{now},"user_id":"u1","page":null,"duration_ms":5}}"#),
            format!(r#"{{"event_time":{now},"user_id":"u2","page":null,"duration_ms":null}}"#),
        ]
    );
    sandbox.stop().await;
}

#[tokio::test]
async fn a_stream_of_batches_is_answered_once_with_every_batch() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.grpc().await;
    let now = now_millis();
    let batches = vec![
        json_request(
            "clicks",
            (0..10)
                .map(|idx| format!(r#"{{"event_time": {now}, "user_id": "u{idx}"}}"#))
                .collect(),
        ),
        json_request(
            "metrics",
            vec![
                format!(r#"{{"at": {now}, "value": 1.5}}"#),
                r#"{"at": "soon", "value": 1}"#.to_string(),
            ],
        ),
        json_request(
            "clicks",
            (10..15)
                .map(|idx| format!(r#"{{"event_time": {now}, "user_id": "u{idx}"}}"#))
                .collect(),
        ),
    ];
    let response = client
        .ingest_stream(futures::stream::iter(batches))
        .await
        .expect("ingest stream")
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (16, 1));
    let per_batch: Vec<(u64, u64)> = response
        .batches
        .iter()
        .map(|batch| (batch.accepted, batch.rejected))
        .collect();
    assert_eq!(per_batch, [(10, 0), (1, 1), (5, 0)]);
    let rejection = &response.batches[1].rejections[0];
    assert_eq!(
        (rejection.index, rejection.code.as_str()),
        (1, "wrong_type")
    );
    assert_eq!(rejection.field, "at");
    assert_eq!(sandbox.records("clicks").await.len(), 15);
    assert_eq!(sandbox.records("metrics").await.len(), 1);
    assert_eq!(sandbox.records("metrics.dead-letter").await.len(), 1);
    sandbox.stop().await;
}

#[tokio::test]
async fn a_stream_stops_at_an_unknown_stream_and_says_how_far_it_got() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.grpc().await;
    let now = now_millis();
    let batches = vec![
        json_request(
            "clicks",
            vec![format!(r#"{{"event_time": {now}, "user_id": "u"}}"#)],
        ),
        json_request("nope", vec!["{}".to_string()]),
    ];
    let status = client
        .ingest_stream(futures::stream::iter(batches))
        .await
        .expect_err("unknown stream");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("`nope`"), "{}", status.message());
    assert_eq!(
        status
            .metadata()
            .get(runnel_ingest::BATCHES_DONE_METADATA)
            .and_then(|value| value.to_str().ok()),
        Some("1")
    );
    assert_eq!(sandbox.records("clicks").await.len(), 1);
    sandbox.stop().await;
}

#[tokio::test]
async fn requests_without_events_are_invalid() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.grpc().await;
    let status = client
        .ingest(IngestRequest {
            stream: "clicks".to_string(),
            all_or_nothing: false,
            events: None,
        })
        .await
        .expect_err("no events");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .ingest(json_request("clicks", Vec::new()))
        .await
        .expect_err("no events");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    sandbox.stop().await;
}
