//! The serving service over real gRPC on loopback, beside the real stream-processor on one
//! embedded log: queries answered from the speed view, then from a recompute's batch view,
//! then from a new job version once it is made active; paging, top-k, subscriptions, export,
//! health and the errors of bad requests; a restart that rebuilds the same answers.

mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use runnel_config::Config;
use runnel_log::{Log, ProduceRecord};
use runnel_proto::common::v1::value::Kind;
use runnel_proto::serving::v1::serving_client::ServingClient;
use runnel_proto::serving::v1::{self as proto, ViewSource};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const JOB: &str = "views";
const USERS: u64 = 40;
const WINDOW_MS: i64 = 10_000;
const BASE_MS: i64 = 1_795_305_600_000;
const EVENTS_PER_WINDOW: u64 = 3;

/// The test config; `serving` is more of the `[serving]` section.
fn write_config(root: &Path, serving: &str) -> Config {
    let path = root.join("runnel.toml");
    let clicks_stream = runnel_testkit::streams::Stream::clicks(
        2,
        Some("user_id"),
        &["event_time", "user_id", "duration_ms"],
    )
    .toml();
    let toml = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
[stream-processor]
checkpoint-interval = "200ms"
metrics-listen = "127.0.0.1:0"
[serving]
listen = "127.0.0.1:0"
metrics-listen = "127.0.0.1:0"
default-page-size = 10
max-page-size = 1000
view-poll-interval = "100ms"
{serving}
{clicks_stream}[[jobs]]
name = "{JOB}"
sql = """
SELECT user_id, window_start, window_end, COUNT(*) AS n, SUM(duration_ms) AS total
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end
"""
max-out-of-orderness = "1s"
[[jobs]]
name = "{JOB}"
version = 2
sql = """
SELECT user_id, window_start, window_end, COUNT(*) AS n, 2 * SUM(duration_ms) AS total
FROM TUMBLE(clicks, event_time, INTERVAL '10' SECOND)
GROUP BY user_id, window_start, window_end
"""
max-out-of-orderness = "1s"
"#,
        data = root.join("data").display(),
    );
    std::fs::write(&path, toml).expect("write config");
    Config::load(&[path], &Default::default()).expect("valid config")
}

fn user(u: u64) -> String {
    format!("user-{u:02}")
}

fn duration(u: u64, window: u64, i: u64) -> i64 {
    (u * 100 + window + i) as i64
}

/// Every user's events of window `window`, in event-time order.
fn window_events(window: u64) -> Vec<ProduceRecord> {
    let mut events = Vec::new();
    for i in 0..EVENTS_PER_WINDOW {
        for u in 0..USERS {
            let time = BASE_MS + window as i64 * WINDOW_MS + i as i64 * 3_000 + u as i64 * 10;
            events.push(ProduceRecord {
                key: Some(Bytes::from(user(u))),
                value: Bytes::from(format!(
                    r#"{{"event_time":{time},"user_id":"{}","duration_ms":{}}}"#,
                    user(u),
                    duration(u, window, i)
                )),
                timestamp: time,
                headers: Vec::new(),
                partition: None,
            });
        }
    }
    events
}

/// A user's expected total in a window, by job version.
fn expected_total(u: u64, window: u64, version: u32) -> i64 {
    let total: i64 = (0..EVENTS_PER_WINDOW).map(|i| duration(u, window, i)).sum();
    total * i64::from(version)
}

fn int(value: &runnel_proto::common::v1::Value) -> Option<i64> {
    match value.kind {
        Some(Kind::Int64Value(value)) => Some(value),
        _ => None,
    }
}

/// (window index, n, total, source, job version) of each window of `key`'s answer.
fn summary(response: &proto::QueryWindowsResponse) -> Vec<(i64, i64, i64, ViewSource, u32)> {
    let n = response
        .column_names
        .iter()
        .position(|name| name == "n")
        .expect("a column `n`");
    let total = response
        .column_names
        .iter()
        .position(|name| name == "total")
        .expect("a column `total`");
    response
        .windows
        .iter()
        .map(|window| {
            (
                (window.window_start_ms - BASE_MS) / WINDOW_MS,
                int(&window.values[n]).expect("n is an integer"),
                int(&window.values[total]).expect("total is an integer"),
                window.source(),
                window.job_version,
            )
        })
        .collect()
}

fn expected_summary(
    u: u64,
    windows: std::ops::Range<u64>,
    source: impl Fn(u64) -> ViewSource,
    version: u32,
) -> Vec<(i64, i64, i64, ViewSource, u32)> {
    windows
        .map(|window| {
            (
                window as i64,
                EVENTS_PER_WINDOW as i64,
                expected_total(u, window, version),
                source(window),
                version,
            )
        })
        .collect()
}

/// An embedded log holding windows `0..windows` of events, with the stream-processor running
/// the test jobs on it.
struct Universe {
    _root: tempfile::TempDir,
    config: Config,
    log: Arc<dyn Log>,
    processor: tokio::task::JoinHandle<Result<(), runnel_stream_processor::StreamProcessorError>>,
    processor_shutdown: CancellationToken,
}

impl Universe {
    async fn start(windows: u64) -> Universe {
        let root = tempfile::tempdir().expect("temp dir");
        let config = write_config(root.path(), "");
        let log = runnel_server_common::open_storage(&config)
            .await
            .expect("open the log");
        for window in 0..windows {
            log.append("clicks", window_events(window))
                .await
                .expect("append");
        }
        let processor_shutdown = CancellationToken::new();
        let processor = tokio::spawn(runnel_stream_processor::run_with_log(
            config.clone(),
            Arc::clone(&log),
            processor_shutdown.clone(),
        ));
        Universe {
            _root: root,
            config,
            log,
            processor,
            processor_shutdown,
        }
    }
}

struct Serving {
    address: String,
    client: ServingClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), runnel_serving::ServingError>>,
}

async fn start_serving(config: &Config, log: Arc<dyn Log>) -> Serving {
    let shutdown = CancellationToken::new();
    let bound = runnel_serving::bind(config, log, shutdown.clone())
        .await
        .expect("bind serving");
    let address = format!("http://{}", bound.local_addr());
    let task = tokio::spawn(bound.serve());
    let channel = Channel::from_shared(address.clone())
        .expect("address")
        .connect()
        .await
        .expect("connect to serving");
    Serving {
        address,
        client: ServingClient::new(channel.clone()),
        health: tonic_health::pb::health_client::HealthClient::new(channel),
        shutdown,
        task,
    }
}

async fn query(client: &mut ServingClient<Channel>, u: u64) -> proto::QueryWindowsResponse {
    client
        .query_windows(proto::QueryWindowsRequest {
            job: JOB.to_string(),
            key: user(u),
            from_ms: 0,
            to_ms: 0,
        })
        .await
        .expect("query windows")
        .into_inner()
}

/// Polls `user`'s windows until they summarise as `expected` (30 s at most).
async fn wait_for(
    client: &mut ServingClient<Channel>,
    u: u64,
    expected: &[(i64, i64, i64, ViewSource, u32)],
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client
            .query_windows(proto::QueryWindowsRequest {
                job: JOB.to_string(),
                key: user(u),
                from_ms: 0,
                to_ms: 0,
            })
            .await;
        let seen = answer.as_ref().map(|answer| summary(answer.get_ref()));
        if seen.as_deref().is_ok_and(|seen| seen == expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {user}'s windows never became {expected:?}; last answer: {seen:?}",
            user = user(u)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn export(client: &mut ServingClient<Channel>, version: u32) -> BTreeSet<String> {
    let mut stream = client
        .export_results(proto::ExportResultsRequest {
            job: JOB.to_string(),
            version,
        })
        .await
        .expect("export")
        .into_inner();
    let mut rows = BTreeSet::new();
    while let Some(row) = stream.next().await {
        let row = row.expect("an exported row");
        rows.insert(format!(
            "{} {} {:?} {} {}",
            row.key, row.window_start_ms, row.values, row.version, row.r#final
        ));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serving_answers_from_the_speed_view_the_batch_view_and_the_active_version() {
    let Universe {
        _root,
        config,
        log,
        processor,
        processor_shutdown,
    } = Universe::start(12).await;
    let store = runnel_archive::open_object_store(
        &config.object_store_url(),
        &config.storage.object_store_options,
    )
    .expect("object store");
    let mut serving = start_serving(&config, Arc::clone(&log)).await;
    let client = &mut serving.client;

    // Windows 0-10 are final (window 11 ends after the watermark): from the speed view.
    for u in [0, 17, USERS - 1] {
        wait_for(
            client,
            u,
            &expected_summary(u, 0..11, |_| ViewSource::Speed, 1),
            "speed view",
        )
        .await;
    }
    let health = serving
        .health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let answer = query(client, 3).await;
    assert_eq!(
        answer.column_names,
        ["user_id", "window_start", "window_end", "n", "total"]
    );
    let first = &answer.windows[0];
    assert_eq!(first.key, r#"["user-03"]"#);
    assert_eq!(first.window_end_ms, Some(BASE_MS + WINDOW_MS));
    assert!(first.r#final);
    assert_eq!(first.version, 1);
    let ranged = client
        .query_windows(proto::QueryWindowsRequest {
            job: JOB.to_string(),
            key: r#"["user-03"]"#.to_string(),
            from_ms: BASE_MS + 2 * WINDOW_MS,
            to_ms: BASE_MS + 5 * WINDOW_MS,
        })
        .await
        .expect("a ranged query")
        .into_inner();
    assert_eq!(
        summary(&ranged),
        expected_summary(3, 2..5, |_| ViewSource::Speed, 1),
        "windows starting in [from, to)"
    );

    // GetWindow pages through every key in key order.
    let mut keys = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .get_window(proto::GetWindowRequest {
                job: JOB.to_string(),
                window_start_ms: BASE_MS + 4 * WINDOW_MS,
                page_size: 7,
                page_token: token.clone(),
            })
            .await
            .expect("get window")
            .into_inner();
        assert!(page.windows.len() <= 7);
        keys.extend(page.windows.iter().map(|window| window.key.clone()));
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let all_keys: Vec<String> = (0..USERS).map(|u| format!(r#"["{}"]"#, user(u))).collect();
    assert_eq!(keys, all_keys, "every key once, in order");
    assert_eq!(pages, USERS.div_ceil(7));

    // TopK by total: the users with the largest durations.
    let top = client
        .top_k(proto::TopKRequest {
            job: JOB.to_string(),
            window_start_ms: BASE_MS + 4 * WINDOW_MS,
            k: 3,
            order_by: "total".to_string(),
            ascending: false,
        })
        .await
        .expect("top k")
        .into_inner();
    let top_keys: Vec<&str> = top
        .windows
        .iter()
        .map(|window| window.key.as_str())
        .collect();
    assert_eq!(
        top_keys,
        [r#"["user-39"]"#, r#"["user-38"]"#, r#"["user-37"]"#]
    );

    // Bad requests name the field.
    let refused = [
        (
            client
                .query_windows(proto::QueryWindowsRequest {
                    job: "nope".to_string(),
                    key: "user-01".to_string(),
                    from_ms: 0,
                    to_ms: 0,
                })
                .await
                .map(|_| ()),
            tonic::Code::NotFound,
            "job:",
        ),
        (
            client
                .query_windows(proto::QueryWindowsRequest {
                    job: JOB.to_string(),
                    key: "user-01".to_string(),
                    from_ms: 10,
                    to_ms: 5,
                })
                .await
                .map(|_| ()),
            tonic::Code::InvalidArgument,
            "to_ms:",
        ),
        (
            client
                .query_windows(proto::QueryWindowsRequest {
                    job: JOB.to_string(),
                    key: String::new(),
                    from_ms: 0,
                    to_ms: 0,
                })
                .await
                .map(|_| ()),
            tonic::Code::InvalidArgument,
            "key:",
        ),
        (
            client
                .get_window(proto::GetWindowRequest {
                    job: JOB.to_string(),
                    window_start_ms: BASE_MS,
                    page_size: 1_000_000,
                    page_token: String::new(),
                })
                .await
                .map(|_| ()),
            tonic::Code::InvalidArgument,
            "page_size:",
        ),
        (
            client
                .top_k(proto::TopKRequest {
                    job: JOB.to_string(),
                    window_start_ms: BASE_MS,
                    k: 3,
                    order_by: "nope".to_string(),
                    ascending: false,
                })
                .await
                .map(|_| ()),
            tonic::Code::InvalidArgument,
            "order_by:",
        ),
        (
            client
                .export_results(proto::ExportResultsRequest {
                    job: JOB.to_string(),
                    version: 9,
                })
                .await
                .map(|_| ()),
            tonic::Code::NotFound,
            "version:",
        ),
    ];
    for (index, (answer, code, field)) in refused.into_iter().enumerate() {
        let status = answer.expect_err("a bad request is refused");
        assert_eq!(status.code(), code, "request {index}: {status:?}");
        assert!(
            status.message().starts_with(field),
            "request {index}: {status:?}"
        );
    }

    // A subscriber sees window 11 fire once window 12's events pass its end.
    let mut updates = client
        .subscribe(proto::SubscribeRequest {
            job: JOB.to_string(),
            key: user(5),
        })
        .await
        .expect("subscribe")
        .into_inner();
    log.append("clicks", window_events(12))
        .await
        .expect("append");
    let update = tokio::time::timeout(Duration::from_secs(30), updates.next())
        .await
        .expect("an update within 30 s")
        .expect("the stream goes on")
        .expect("an update");
    assert_eq!(update.key, r#"["user-05"]"#, "only the subscribed key");
    assert_eq!(update.window_start_ms, BASE_MS + 11 * WINDOW_MS);
    assert_eq!(update.source(), ViewSource::Speed);

    // A recompute's batch view answers for the windows ending by its horizon; the speed
    // view for later ones.
    runnel_archive::archive_until_caught_up(&config, Arc::clone(&log), Arc::clone(&store))
        .await
        .expect("archive");
    let job = runnel_jobs::Job::compile(&config, &config.jobs[0]).expect("compile");
    let outcome = runnel_batch_reprocessor::recompute::recompute_view(
        &config,
        &job,
        runnel_batch_reprocessor::recompute::RecomputeRequest {
            from_ms: None,
            to_ms: None,
            workers: 2,
            allow_shrink: false,
        },
        Arc::clone(&store),
        Arc::default(),
    )
    .await
    .expect("recompute");
    let horizon = outcome.view.horizon_ms.expect("a horizon");
    assert!((BASE_MS + 12 * WINDOW_MS..BASE_MS + 13 * WINDOW_MS).contains(&horizon));
    log.append("clicks", window_events(13))
        .await
        .expect("append");
    let batch_until_12 = |window: u64| {
        if window < 12 {
            ViewSource::Batch
        } else {
            ViewSource::Speed
        }
    };
    for u in [0, 5, USERS - 1] {
        wait_for(
            client,
            u,
            &expected_summary(u, 0..13, batch_until_12, 1),
            "batch view",
        )
        .await;
    }
    let before_restart = export(client, 1).await;
    assert_eq!(before_restart.len(), (USERS * 13) as usize);

    // Version 2 becomes active: every answer comes from it at once.
    runnel_jobs::save_active(
        store.as_ref(),
        &runnel_jobs::ActiveVersion {
            job: JOB.to_string(),
            version: 2,
            activated_at_ms: 0,
        },
    )
    .await
    .expect("activate version 2");
    for u in [0, 5, USERS - 1] {
        wait_for(
            client,
            u,
            &expected_summary(u, 0..13, |_| ViewSource::Speed, 2),
            "version 2",
        )
        .await;
    }
    let jobs = client
        .list_jobs(proto::ListJobsRequest {})
        .await
        .expect("list jobs")
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].active_version, 2);
    let versions: BTreeMap<u32, &proto::JobVersionInfo> = jobs[0]
        .versions
        .iter()
        .map(|info| (info.version, info))
        .collect();
    assert_eq!(versions.keys().copied().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(versions[&1].batch_horizon_ms, Some(horizon));
    assert_eq!(versions[&1].batch_windows, USERS * 12);
    assert!(versions[&2].batch_horizon_ms.is_none());
    assert!(versions.values().all(|info| info.ready));

    // A restarted service rebuilds the same answers from the results topics.
    serving.shutdown.cancel();
    serving
        .task
        .await
        .expect("join")
        .expect("serving stops cleanly");
    let mut restarted = start_serving(&config, Arc::clone(&log)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let after_restart = loop {
        match restarted
            .client
            .export_results(proto::ExportResultsRequest {
                job: JOB.to_string(),
                version: 1,
            })
            .await
        {
            Ok(_) => break export(&mut restarted.client, 1).await,
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(Instant::now() < deadline, "never ready: {status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("export after restart: {status:?}"),
        }
    };
    assert_eq!(after_restart, before_restart);

    restarted.shutdown.cancel();
    restarted
        .task
        .await
        .expect("join")
        .expect("serving stops cleanly");
    processor_shutdown.cancel();
    processor
        .await
        .expect("join")
        .expect("stream-processor stops cleanly");
}

const TOKEN: &str = "s3cret-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_api_asks_for_the_bearer_token_and_health_does_not() {
    let root = tempfile::tempdir().expect("temp dir");
    let serving = format!(
        "auth-token = \"{TOKEN}\"\ntls-cert = \"{}\"\ntls-key = \"{}\"",
        runnel_testkit::tls::fixture("server.pem").display(),
        runnel_testkit::tls::fixture("server.key").display()
    );
    let config = write_config(root.path(), &serving);
    let log = runnel_server_common::open_storage(&config)
        .await
        .expect("open the log");
    let shutdown = CancellationToken::new();
    let bound = runnel_serving::bind(&config, log, shutdown.clone())
        .await
        .expect("bind serving");
    let port = bound.local_addr().port();
    let task = tokio::spawn(bound.serve());
    let ca = std::fs::read(runnel_testkit::tls::fixture("ca.pem")).expect("read the test CA");
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .expect("address")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .expect("TLS config")
        .connect()
        .await
        .expect("connect over TLS");
    let mut client = ServingClient::new(channel.clone());

    // Health answers anyone (probes carry no token).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health without a token")
            .into_inner()
            .status();
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
            break;
        }
        assert!(Instant::now() < deadline, "never serving: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let with = |token: Option<&str>| {
        let mut request = tonic::Request::new(proto::ListJobsRequest {});
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", token.parse().expect("header"));
        }
        request
    };
    for token in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let status = client.list_jobs(with(token)).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
        assert!(!status.message().contains(TOKEN) && !status.message().contains(JOB));
    }
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let listed = reflection
        .server_reflection_info(futures::stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await;
    assert_eq!(
        listed
            .map(|_| ())
            .expect_err("reflection asks for the token too")
            .code(),
        tonic::Code::Unauthenticated
    );
    let jobs = client
        .list_jobs(with(Some(&format!("Bearer {TOKEN}"))))
        .await
        .expect("with the token")
        .into_inner()
        .jobs;
    assert_eq!(
        jobs.iter().map(|job| job.name.as_str()).collect::<Vec<_>>(),
        [JOB]
    );

    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("address")
        .connect()
        .await;
    if let Ok(plain) = plain {
        let answer = ServingClient::new(plain)
            .list_jobs(with(Some(&format!("Bearer {TOKEN}"))))
            .await;
        assert!(answer.is_err(), "plain HTTP/2 is not served on a TLS port");
    }
    shutdown.cancel();
    task.await.expect("join").expect("serving stops cleanly");
}

/// `RUNNEL_PYTHON` (a Python with grpcio and grpcio-reflection: scripts/test.sh's venv), or
/// `None` to skip; with `RUNNEL_REQUIRE_GRPCIO=1`, a missing one fails the test.
fn grpcio_python() -> Option<String> {
    runnel_testkit::gate::grpcio_python("the reflection client")
}

fn reflection_call(python: &str, address: &str, method: &str, request: &str) -> serde_json::Value {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/serving_reflection_client.py");
    let output = std::process::Command::new(python)
        .arg(&script)
        .args([address, method, request])
        .output()
        .expect("run the reflection client");
    assert!(
        output.status.success(),
        "{method}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generic_client_drives_serving_through_reflection_only() {
    let Some(python) = grpcio_python() else {
        return;
    };
    let Universe {
        _root,
        config,
        log,
        processor,
        processor_shutdown,
    } = Universe::start(4).await;
    let mut serving = start_serving(&config, Arc::clone(&log)).await;
    wait_for(
        &mut serving.client,
        3,
        &expected_summary(3, 0..3, |_| ViewSource::Speed, 1),
        "speed view",
    )
    .await;
    let address = serving.address.trim_start_matches("http://").to_string();
    let python_for = python.clone();
    let (jobs, windows, top) = tokio::task::spawn_blocking(move || {
        (
            reflection_call(&python_for, &address, "ListJobs", "{}"),
            reflection_call(
                &python_for,
                &address,
                "QueryWindows",
                &format!(r#"{{"job": "{JOB}", "key": "user-03"}}"#),
            ),
            reflection_call(
                &python_for,
                &address,
                "TopK",
                &format!(
                    r#"{{"job": "{JOB}", "windowStartMs": "{}", "k": 2, "orderBy": "total"}}"#,
                    BASE_MS + WINDOW_MS
                ),
            ),
        )
    })
    .await
    .expect("join");
    assert_eq!(jobs["jobs"][0]["name"], JOB, "{jobs}");
    let native = query(&mut serving.client, 3).await;
    let reflected = windows["windows"].as_array().expect("windows");
    assert_eq!(reflected.len(), native.windows.len(), "{windows}");
    for (reflected, native) in reflected.iter().zip(&native.windows) {
        // Proto3 JSON writes 64-bit integers as strings.
        assert_eq!(reflected["key"], native.key.as_str());
        assert_eq!(
            reflected["windowStartMs"],
            native.window_start_ms.to_string().as_str()
        );
        assert_eq!(
            reflected["values"][3]["int64Value"], "3",
            "n = 3 events: {windows}"
        );
        assert_eq!(reflected["source"], "VIEW_SOURCE_SPEED");
    }
    let top_keys: Vec<&str> = top["windows"]
        .as_array()
        .expect("top windows")
        .iter()
        .filter_map(|window| window["key"].as_str())
        .collect();
    assert_eq!(top_keys, [r#"["user-39"]"#, r#"["user-38"]"#]);

    serving.shutdown.cancel();
    serving
        .task
        .await
        .expect("join")
        .expect("serving stops cleanly");
    processor_shutdown.cancel();
    processor
        .await
        .expect("join")
        .expect("stream-processor stops cleanly");
}
