//! Every kind of bad input: the answer names the reason, the raw event is in the dead-letter
//! topic with headers, and valid events of the same request are still accepted (unless
//! all-or-nothing).

use bytes::Bytes;
use prost::Message;
use runnel_ingest::headers;
use runnel_proto::common::v1::Value;
use runnel_proto::common::v1::value::Kind;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, Row, TypedRows, ingest_request::Events};

use crate::sandbox::{
    MAX_EVENT_BYTES, MAX_REQUEST_BYTES, Sandbox, header, http_post, now_millis, post_lines,
};

const HOUR_MS: i64 = 3_600_000;

/// An event and, if it is to be rejected, (code, field or "", a fragment of the reason).
type Case = (String, Option<(&'static str, &'static str, &'static str)>);

/// A dead-letter record's value and its stream, index, code and API headers.
type DeadLetterSummary<'a> = (
    &'a [u8],
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
);

#[tokio::test]
async fn each_bad_event_is_answered_with_its_reason_and_dead_lettered() {
    let sandbox = Sandbox::start().await;
    let now = now_millis();
    let big_user = "x".repeat(MAX_EVENT_BYTES);
    // (event, expected code, expected field, a fragment of the reason)
    let cases: Vec<Case> = vec![
        (
            format!(r#"{{"event_time": {now}, "user_id": "ok-1"}}"#),
            None,
        ),
        (
            format!(r#"{{"event_time": {now}, "user_id": "u",}}"#),
            Some(("invalid_json", "", "line 1, column")),
        ),
        (
            format!(r#"{{"event_time": {now}, "user_id": 42}}"#),
            Some(("wrong_type", "user_id", "expected string, found an integer")),
        ),
        (
            r#"{"user_id": "u"}"#.to_string(),
            Some((
                "missing_event_time",
                "event_time",
                "missing event-time field `event_time`",
            )),
        ),
        (
            r#"{"event_time": "last tuesday", "user_id": "u"}"#.to_string(),
            Some((
                "unparsable_timestamp",
                "event_time",
                "`last tuesday` is not a timestamp",
            )),
        ),
        (
            format!(r#"{{"event_time": {}, "user_id": "u"}}"#, now + 2 * HOUR_MS),
            Some((
                "event_time_too_far_ahead",
                "event_time",
                "ahead of the service clock",
            )),
        ),
        (
            format!(
                r#"{{"event_time": {}, "user_id": "u"}}"#,
                now - 48 * HOUR_MS
            ),
            Some((
                "event_time_too_far_behind",
                "event_time",
                "behind the service clock",
            )),
        ),
        (
            format!(r#"{{"event_time": {now}, "user_id": "{big_user}"}}"#),
            Some(("too_large", "", "over the limit of 512 bytes")),
        ),
        (
            format!(r#"{{"event_time": {now}, "user_id": null}}"#),
            Some(("null_field", "user_id", "is null")),
        ),
        (
            "[1]".to_string(),
            Some(("not_an_object", "", "not a JSON object")),
        ),
        (
            format!(r#"{{"event_time": {now}, "user_id": "a", "user_id": "b"}}"#),
            Some(("duplicate_field", "user_id", "more than once")),
        ),
        (
            format!(r#"{{"event_time": {now}, "user_id": "ok-2"}}"#),
            None,
        ),
    ];
    let lines: Vec<String> = cases.iter().map(|(line, _)| line.clone()).collect();
    let response = post_lines(sandbox.addr, "clicks", "", &lines).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let body = response.json();
    let expected_rejects: Vec<(usize, &(&str, &str, &str))> = cases
        .iter()
        .enumerate()
        .filter_map(|(idx, (_, expect))| expect.as_ref().map(|expect| (idx, expect)))
        .collect();
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"], expected_rejects.len());
    let rejections = body["rejections"].as_array().expect("rejections");
    assert_eq!(rejections.len(), expected_rejects.len());
    for (rejection, (idx, (code, field, fragment))) in rejections.iter().zip(&expected_rejects) {
        assert_eq!(rejection["index"], *idx, "{rejection}");
        assert_eq!(rejection["code"], *code, "{rejection}");
        assert_eq!(
            rejection["field"].as_str().unwrap_or(""),
            *field,
            "{rejection}"
        );
        let reason = rejection["reason"].as_str().expect("reason");
        assert!(reason.contains(fragment), "{code}: {reason}");
    }

    // The valid events are in the stream.
    let accepted = sandbox.records("clicks").await;
    let mut users: Vec<&[u8]> = accepted
        .iter()
        .map(|record| record.key.as_deref().expect("key"))
        .collect();
    users.sort();
    assert_eq!(users, [&b"ok-1"[..], b"ok-2"]);

    // The rejected ones are in the dead-letter topic, in request order, raw.
    let dead = sandbox.records("clicks.dead-letter").await;
    assert_eq!(dead.len(), expected_rejects.len());
    for (record, (idx, (code, _, fragment))) in dead.iter().zip(&expected_rejects) {
        let raw = cases[*idx].0.as_bytes();
        assert_eq!(header(record, headers::REJECT_CODE), Some(*code));
        assert!(
            header(record, headers::REJECT_REASON)
                .expect("reason")
                .contains(fragment),
            "{code}"
        );
        assert_eq!(header(record, headers::STREAM), Some("clicks"));
        assert_eq!(
            header(record, headers::REQUEST_INDEX),
            Some(idx.to_string().as_str())
        );
        assert_eq!(header(record, headers::RAW_FORMAT), Some("json"));
        assert_eq!(header(record, headers::API), Some("http"));
        assert_eq!(record.key, None);
        if raw.len() > MAX_EVENT_BYTES {
            assert_eq!(*code, "too_large");
            assert_eq!(
                &record.value[..],
                &raw[..MAX_EVENT_BYTES],
                "cut to the event limit"
            );
            assert_eq!(
                header(record, headers::TRUNCATED_FROM),
                Some(raw.len().to_string().as_str())
            );
        } else {
            assert_eq!(&record.value[..], raw, "{code}: raw bytes kept");
            assert_eq!(header(record, headers::TRUNCATED_FROM), None);
        }
    }
    sandbox.stop().await;
}

#[tokio::test]
async fn all_or_nothing_appends_nothing_when_one_event_is_bad() {
    let sandbox = Sandbox::start().await;
    let now = now_millis();
    let lines = vec![
        format!(r#"{{"event_time": {now}, "user_id": "u1"}}"#),
        format!(r#"{{"event_time": {now}, "user_id": 7}}"#),
        format!(r#"{{"event_time": {now}, "user_id": "u3"}}"#),
    ];
    let response = post_lines(sandbox.addr, "clicks", "?all_or_nothing=true", &lines).await;
    assert_eq!(response.status, 422);
    let body = response.json();
    assert_eq!(body["aborted"], true);
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["rejected"], 1);
    assert_eq!(body["rejections"][0]["index"], 1);
    assert_eq!(body["ranges"], serde_json::json!([]));
    assert!(
        sandbox.records("clicks").await.is_empty(),
        "nothing appended"
    );
    let dead = sandbox.records("clicks.dead-letter").await;
    assert_eq!(dead.len(), 1, "the rejected event is still dead-lettered");
    assert_eq!(&dead[0].value[..], lines[1].as_bytes());

    // Over gRPC, the same; and a clean batch goes through whole.
    let mut client = sandbox.grpc().await;
    let request = |lines: &[String]| IngestRequest {
        stream: "clicks".to_string(),
        all_or_nothing: true,
        events: Some(Events::Json(JsonEvents {
            events: lines.iter().map(|line| Bytes::from(line.clone())).collect(),
        })),
    };
    let response = client
        .ingest(request(&lines))
        .await
        .expect("ingest")
        .into_inner();
    assert!(response.aborted);
    assert_eq!((response.accepted, response.rejected), (0, 1));
    assert!(sandbox.records("clicks").await.is_empty());
    let clean = [lines[0].clone(), lines[2].clone()];
    let response = client
        .ingest(request(&clean))
        .await
        .expect("ingest")
        .into_inner();
    assert!(!response.aborted);
    assert_eq!((response.accepted, response.rejected), (2, 0));
    assert_eq!(sandbox.records("clicks").await.len(), 2);
    sandbox.stop().await;
}

#[tokio::test]
async fn unknown_streams_are_not_found_and_their_events_dead_lettered() {
    let sandbox = Sandbox::start().await;
    let response = post_lines(
        sandbox.addr,
        "nope",
        "",
        &[r#"{"a": 1}"#.to_string(), "not json".to_string()],
    )
    .await;
    assert_eq!(response.status, 404);
    let body = response.json();
    assert_eq!(body["code"], "unknown_stream");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("stream `nope` is not declared")
    );

    let mut client = sandbox.grpc().await;
    let status = client
        .ingest(IngestRequest {
            stream: "other".to_string(),
            all_or_nothing: false,
            events: Some(Events::Json(JsonEvents {
                events: vec![Bytes::from_static(b"{\"b\": 2}")],
            })),
        })
        .await
        .expect_err("unknown stream");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().contains("`other`"), "{}", status.message());

    let dead = sandbox
        .records(runnel_events::UNKNOWN_STREAM_DEAD_LETTER_TOPIC)
        .await;
    let summary: Vec<DeadLetterSummary<'_>> = dead
        .iter()
        .map(|record| {
            (
                &record.value[..],
                header(record, headers::STREAM),
                header(record, headers::REQUEST_INDEX),
                header(record, headers::REJECT_CODE),
                header(record, headers::API),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                &br#"{"a": 1}"#[..],
                Some("nope"),
                Some("0"),
                Some("unknown_stream"),
                Some("http")
            ),
            (
                &b"not json"[..],
                Some("nope"),
                Some("1"),
                Some("unknown_stream"),
                Some("http")
            ),
            (
                &br#"{"b": 2}"#[..],
                Some("other"),
                Some("0"),
                Some("unknown_stream"),
                Some("grpc")
            ),
        ]
    );
    sandbox.stop().await;
}

#[tokio::test]
async fn rejected_typed_rows_are_dead_lettered_as_protobuf() {
    let sandbox = Sandbox::start().await;
    let mut client = sandbox.grpc().await;
    let bad_row = Row {
        values: vec![
            Value {
                kind: Some(Kind::TimestampMs(now_millis())),
            },
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        ],
    };
    let response = client
        .ingest(IngestRequest {
            stream: "clicks".to_string(),
            all_or_nothing: false,
            events: Some(Events::Rows(TypedRows {
                rows: vec![bad_row.clone()],
            })),
        })
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!((response.accepted, response.rejected), (0, 1));
    assert_eq!(response.rejections[0].code, "wrong_type");
    assert_eq!(
        response.rejections[0].reason,
        "field `user_id`: expected string, found a boolean"
    );
    let dead = sandbox.records("clicks.dead-letter").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], headers::RAW_FORMAT), Some("protobuf-row"));
    assert_eq!(header(&dead[0], headers::API), Some("grpc"));
    assert_eq!(Row::decode(dead[0].value.clone()).expect("a Row"), bad_row);
    sandbox.stop().await;
}

#[tokio::test]
async fn requests_over_the_size_limit_are_refused_whole() {
    let sandbox = Sandbox::start().await;
    let now = now_millis();
    let line = format!(r#"{{"event_time": {now}, "user_id": "u"}}"#);
    let lines: Vec<String> = std::iter::repeat_n(line, MAX_REQUEST_BYTES / 40 + 10).collect();
    let response = post_lines(sandbox.addr, "clicks", "", &lines).await;
    assert_eq!(response.status, 413);
    let body = response.json();
    assert_eq!(body["code"], "request_too_large");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains(&format!("over the limit of {MAX_REQUEST_BYTES} bytes")),
        "{body}"
    );

    let mut client = sandbox.grpc().await;
    let status = client
        .ingest(IngestRequest {
            stream: "clicks".to_string(),
            all_or_nothing: false,
            events: Some(Events::Json(JsonEvents {
                events: lines.iter().map(|line| Bytes::from(line.clone())).collect(),
            })),
        })
        .await
        .expect_err("too large");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("limit"), "{}", status.message());
    assert!(sandbox.records("clicks").await.is_empty());
    // Posting a huge body without a length is cut off at the limit too.
    let response = http_post(
        sandbox.addr,
        "/v1/streams/clicks/events",
        None,
        &vec![b' '; MAX_REQUEST_BYTES + 1],
    )
    .await;
    assert_eq!(response.status, 413);
    sandbox.stop().await;
}
