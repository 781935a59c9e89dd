//! Backpressure: with the in-flight budget taken, requests are refused at once with a
//! retry hint, and accepted again once it is released.

use std::time::Duration;

use bytes::Bytes;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::sandbox::{
    MAX_REQUEST_BYTES, Sandbox, now_millis, post_lines, read_response, write_post_head,
};

#[tokio::test]
async fn a_full_budget_answers_429_and_resource_exhausted_with_a_retry_hint() {
    // The budget is one maximal request.
    let budget = MAX_REQUEST_BYTES.to_string();
    let sandbox = Sandbox::start_with(&[("RUNNEL__INGEST__MAX_IN_FLIGHT_BYTES", &budget)]).await;
    let now = now_millis();
    let line = format!(r#"{{"event_time": {now}, "user_id": "held"}}"#);

    // A request sends all but the last byte of a body of the whole budget and holds that
    // back: the bytes that arrived hold the budget (what `Content-Length` announces does not).
    let mut held = TcpStream::connect(sandbox.addr).await.expect("connect");
    write_post_head(
        &mut held,
        "/v1/streams/clicks/events",
        Some("application/x-ndjson"),
        MAX_REQUEST_BYTES,
    )
    .await;
    let mut sent = line.clone().into_bytes();
    sent.resize(MAX_REQUEST_BYTES - 1, b'\n');
    held.write_all(&sent).await.expect("write");
    held.flush().await.expect("flush");

    // Until the server has taken the budget, a request may still pass; wait for a refusal.
    let small = vec![format!(r#"{{"event_time": {now}, "user_id": "u"}}"#)];
    let mut refused = None;
    for _ in 0..100 {
        let response = post_lines(sandbox.addr, "clicks", "", &small).await;
        if response.status == 429 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a request is refused while the budget is held");
    assert_eq!(refused.header("retry-after"), Some("2"), "1.5 s rounded up");
    assert_eq!(refused.header("retry-after-ms"), Some("1500"));
    let body = refused.json();
    assert_eq!(body["code"], "busy");
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("retry after 1500 ms")
    );

    let mut client = sandbox.grpc().await;
    let request = IngestRequest {
        stream: "clicks".to_string(),
        all_or_nothing: false,
        events: Some(Events::Json(JsonEvents {
            events: vec![Bytes::from(small[0].clone())],
        })),
    };
    let status = client.ingest(request.clone()).await.expect_err("busy");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status
            .metadata()
            .get(runnel_ingest::RETRY_AFTER_MS_METADATA)
            .and_then(|value| value.to_str().ok()),
        Some("1500")
    );

    // The held request completes; the budget is free again.
    held.write_all(b"\n").await.expect("write the last byte");
    let response = read_response(&mut held).await;
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["accepted"], 1);
    let response = client
        .ingest(request)
        .await
        .expect("accepted after release");
    assert_eq!(response.into_inner().accepted, 1);
    let response = post_lines(sandbox.addr, "clicks", "", &small).await;
    assert_eq!(response.status, 200);
    assert_eq!(sandbox.records("clicks").await.len(), 3);
    sandbox.stop().await;
}
