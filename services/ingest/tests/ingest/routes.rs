//! HTTP answers only its routes: a mistyped path is 404 and a wrong method 405, with the
//! JSON error body, never a gRPC status; a gRPC call to an unknown method is UNIMPLEMENTED;
//! `GET /healthz` and the gRPC health service answer, without the token.

use bytes::Bytes;
use runnel_proto::ingest::v1::{IngestRequest, JsonEvents, ingest_request::Events};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::sandbox::{HttpResponse, Sandbox, http_post, now_millis, read_response};

const TOKEN: &str = "routes-token";

/// Sends `method path` with an optional bearer token and no body.
async fn request(sandbox: &Sandbox, method: &str, path: &str, token: Option<&str>) -> HttpResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = TcpStream::connect(sandbox.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("write head");
    read_response(&mut stream).await
}

#[track_caller]
fn check_json_error(response: &HttpResponse, status: u16, code: &str, mentions: &[&str]) {
    let body = String::from_utf8_lossy(&response.body);
    assert_eq!(response.status, status, "{body}");
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{body}"
    );
    assert_eq!(
        response.header("grpc-status"),
        None,
        "no gRPC status: {body}"
    );
    let json = response.json();
    assert_eq!(json["code"], code, "{body}");
    let error = json["error"].as_str().expect("error");
    for mention in mentions {
        assert!(error.contains(mention), "`{error}` names `{mention}`");
    }
    assert_eq!(
        json.as_object().expect("object").len(),
        2,
        "{{code, error}}: {body}"
    );
}

#[tokio::test]
async fn mistyped_paths_are_404_and_wrong_methods_405_in_json() {
    let sandbox = Sandbox::start().await;
    let event = format!(r#"{{"event_time": {}, "user_id": "u1"}}"#, now_millis());
    for path in [
        "/v1/streams/clicks/events/",
        "/v1/stream/clicks/events",
        "/",
        "/runnel.ingest.v1.Ingest/Ingest",
    ] {
        let response = http_post(
            sandbox.addr,
            path,
            Some("application/x-ndjson"),
            event.as_bytes(),
        )
        .await;
        check_json_error(
            &response,
            404,
            "not_found",
            &[
                &format!("POST {path};"),
                "POST /v1/streams/{stream}/events",
                "GET /healthz",
            ],
        );
    }
    assert!(
        sandbox.records("clicks").await.is_empty(),
        "no event was taken by a mistyped path"
    );

    let response = request(&sandbox, "GET", "/v1/streams/clicks/events", None).await;
    check_json_error(
        &response,
        405,
        "method_not_allowed",
        &[
            "GET",
            "/v1/streams/clicks/events",
            "POST /v1/streams/{stream}/events",
        ],
    );
    assert_eq!(response.header("allow"), Some("POST"));
    let response = request(&sandbox, "DELETE", "/healthz", None).await;
    check_json_error(
        &response,
        405,
        "method_not_allowed",
        &["DELETE", "/healthz"],
    );
    assert_eq!(response.header("allow"), Some("GET,HEAD"));

    // The real route still works.
    let response = http_post(
        sandbox.addr,
        "/v1/streams/clicks/events",
        Some("application/x-ndjson"),
        event.as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(sandbox.records("clicks").await.len(), 1);
    sandbox.stop().await;
}

#[tokio::test]
async fn grpc_calls_to_unknown_methods_are_unimplemented() {
    let sandbox = Sandbox::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", sandbox.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    for path in [
        "/runnel.ingest.v1.Ingest/Nope",
        "/runnel.ingest.v1.Ingestx/Ingest",
        "/v1/streams/clicks/events",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let status = grpc
            .unary::<HealthCheckRequest, HealthCheckResponse, _>(
                tonic::Request::new(HealthCheckRequest::default()),
                PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status}"
        );
    }
    // The real method still works on the same channel.
    let mut client = runnel_proto::ingest::v1::ingest_client::IngestClient::new(channel);
    let response = client
        .ingest(IngestRequest {
            stream: "clicks".to_string(),
            all_or_nothing: false,
            events: Some(Events::Json(JsonEvents {
                events: vec![Bytes::from(format!(
                    r#"{{"event_time": {}, "user_id": "u1"}}"#,
                    now_millis()
                ))],
            })),
        })
        .await
        .expect("ingest");
    assert_eq!(response.into_inner().accepted, 1);
    sandbox.stop().await;
}

#[tokio::test]
async fn healthz_and_the_grpc_health_service_answer_without_the_token() {
    let sandbox = Sandbox::start_with(&[("RUNNEL__INGEST__AUTH_TOKEN", TOKEN)]).await;

    let response = request(&sandbox, "GET", "/healthz", None).await;
    assert_eq!(response.status, 200, "{:?}", response);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.json(),
        serde_json::json!({"service": "ingest", "status": "serving"})
    );
    // Other paths still ask for the token before anything else.
    let response = request(&sandbox, "GET", "/v1/stream/clicks/events", None).await;
    assert_eq!(response.status, 401);
    let response = request(&sandbox, "GET", "/v1/stream/clicks/events", Some(TOKEN)).await;
    assert_eq!(response.status, 404);

    let channel = tonic::transport::Channel::from_shared(format!("http://{}", sandbox.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["", "runnel.ingest.v1.Ingest"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .unwrap_or_else(|status| panic!("check `{service}`: {status}"))
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "`{service}`");
    }
    let status = health
        .check(HealthCheckRequest {
            service: "runnel.other.v1.Nope".to_string(),
        })
        .await
        .expect_err("an unknown service");
    assert_eq!(status.code(), tonic::Code::NotFound);
    sandbox.stop().await;
}
