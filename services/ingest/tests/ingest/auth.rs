//! Bearer-token authentication on the ingest port: without the token (or with a wrong one)
//! HTTP answers 401 and gRPC UNAUTHENTICATED, the answer names nothing of the service, and
//! nothing reaches the log; with it, events are ingested as usual.

use bytes::Bytes;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::sandbox::{Sandbox, now_millis, read_response};

const TOKEN: &str = "s3cret-token";

fn event() -> String {
    format!(
        r#"{{"event_time": {}, "user_id": "u1", "page": "/a", "duration_ms": 5}}"#,
        now_millis()
    )
}

async fn post(sandbox: &Sandbox, authorization: Option<&str>) -> crate::sandbox::HttpResponse {
    let body = event();
    let mut head = format!(
        "POST /v1/streams/clicks/events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(authorization) = authorization {
        head.push_str(&format!("Authorization: {authorization}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(sandbox.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body.as_bytes()).await.expect("write body");
    read_response(&mut stream).await
}

#[tokio::test]
async fn ingest_asks_for_the_bearer_token_over_http_and_grpc() {
    let sandbox = Sandbox::start_with(&[("RUNNEL__INGEST__AUTH_TOKEN", TOKEN)]).await;

    for authorization in [
        None,
        Some("Bearer wrong"),
        Some(TOKEN),
        Some("Basic czNjcmV0"),
    ] {
        let refused = post(&sandbox, authorization).await;
        assert_eq!(refused.status, 401, "{authorization:?}");
        assert_eq!(
            refused.header("www-authenticate"),
            Some("Bearer realm=\"runnel\"")
        );
        let body = String::from_utf8_lossy(&refused.body);
        assert!(body.contains("unauthenticated"), "{body}");
        assert!(!body.contains(TOKEN) && !body.contains("clicks"), "{body}");
    }
    let mut client = sandbox.grpc().await;
    let request = || IngestRequest {
        stream: "clicks".to_string(),
        all_or_nothing: false,
        events: Some(Events::Json(JsonEvents {
            events: vec![Bytes::from(event())],
        })),
    };
    let status = client.ingest(request()).await.expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(!status.message().contains(TOKEN));
    let mut wrong = tonic::Request::new(request());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer wrong".parse().expect("header"));
    let status = client.ingest(wrong).await.expect_err("a wrong token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        sandbox.records("clicks").await.is_empty(),
        "nothing refused reached the log"
    );
    assert!(
        sandbox.records("clicks.dead-letter").await.is_empty(),
        "nor its dead letters"
    );

    let accepted = post(&sandbox, Some(&format!("Bearer {TOKEN}"))).await;
    assert_eq!(
        accepted.status,
        200,
        "{}",
        String::from_utf8_lossy(&accepted.body)
    );
    let mut right = tonic::Request::new(request());
    right.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    let response = client
        .ingest(right)
        .await
        .expect("with the token")
        .into_inner();
    assert_eq!(response.accepted, 1);
    assert_eq!(sandbox.records("clicks").await.len(), 2);
    sandbox.stop().await;
}
