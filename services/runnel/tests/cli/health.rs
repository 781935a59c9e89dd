//! `runnel health <service>`: the container health check asks each service whether it is
//! ready, and says why not when it is not.

use std::time::{Duration, Instant};

use super::query::RunnelAll;
use super::runnel;

/// A loopback port free at the moment of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Runs `runnel health` with `args` until it succeeds or `within` passes; its last output.
fn health_within(dir: &std::path::Path, args: &[&str], within: Duration) -> std::process::Output {
    let deadline = Instant::now() + within;
    loop {
        let mut all = vec!["--config", "runnel.toml", "health"];
        all.extend_from_slice(args);
        let output = runnel(dir, &all);
        if output.status.success() || Instant::now() >= deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn health_says_when_each_service_is_ready_and_why_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("runnel.toml"), super::query::CONFIG).expect("write config");
    let status_port = free_port().to_string();
    let status_url = format!("http://127.0.0.1:{status_port}");

    // Nothing runs yet: each check fails and names what it could not reach.
    for (service, url, says) in [
        (
            "serving",
            "http://127.0.0.1:1",
            "connect to the serving service",
        ),
        (
            "ingest",
            "http://127.0.0.1:1",
            "connect to the ingest service",
        ),
        (
            "stream-processor",
            status_url.as_str(),
            "stream-processor's /status",
        ),
    ] {
        let output = runnel(
            dir.path(),
            &["--config", "runnel.toml", "health", service, "--url", url],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{service} healthy with nothing running"
        );
        assert!(stderr.contains(says), "{service}: {stderr}");
    }

    let all = RunnelAll::start_with(
        dir.path(),
        &[(
            "RUNNEL__STREAM_PROCESSOR__METRICS_LISTEN",
            &format!("127.0.0.1:{status_port}"),
        )],
    );
    for (service, url) in [
        ("ingest", all.ingest.as_str()),
        ("serving", all.serving.as_str()),
        ("stream-processor", status_url.as_str()),
    ] {
        let output = health_within(
            dir.path(),
            &[service, "--url", url],
            Duration::from_secs(60),
        );
        assert!(
            output.status.success(),
            "{service} not healthy within 60 s: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Starts a stream-processor with `config` (TOML) in a fresh folder, with the `env` given,
/// and checks that it keeps running, logs `says` (at least twice, naming `names`) and answers
/// its health check as not ready.
fn waits_and_is_not_ready(config: &str, env: &[(&str, &str)], says: &str, names: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("runnel.toml"), config).expect("write config");
    let status_port = free_port();
    let log_path = dir.path().join("stream-processor.log");
    let mut child = super::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["--config", "runnel.toml", "stream-processor"])
            .current_dir(dir.path())
            .env("RUNNEL__STORAGE__DATA_DIR", dir.path().join("data"))
            .env(
                "RUNNEL__STREAM_PROCESSOR__METRICS_LISTEN",
                format!("127.0.0.1:{status_port}"),
            )
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log_path).expect("log file"))
            .spawn()
            .expect("start the stream-processor"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.matches(says).count() >= 2 {
            assert!(log.contains(names), "the log names {names}: {log}");
            break;
        }
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "the service exited instead of waiting: {log}"
        );
        assert!(
            Instant::now() < deadline,
            "no retry logged within 60 s: {log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = runnel(
        dir.path(),
        &[
            "--config",
            "runnel.toml",
            "health",
            "stream-processor",
            "--url",
            &format!("http://127.0.0.1:{status_port}"),
        ],
    );
    assert!(!health.status.success(), "ready without its storage");
}

/// A service whose Kafka cannot be reached at start stays up, says why in its log and is not
/// ready, rather than exit (a crash loop under a container's restart policy).
#[test]
fn a_service_that_cannot_reach_kafka_waits_and_is_not_ready() {
    // A port nothing listens on.
    let nowhere = format!("127.0.0.1:{}", free_port());
    waits_and_is_not_ready(
        super::query::CONFIG,
        &[
            ("RUNNEL__STORAGE__LOG__BACKEND", "kafka"),
            ("RUNNEL__STORAGE__LOG__KAFKA__BOOTSTRAP_SERVERS", &nowhere),
            ("RUNNEL__STORAGE__LOG__KAFKA__REQUEST_TIMEOUT", "1s"),
        ],
        "cannot reach the log; not ready, trying again",
        &nowhere,
    );
}

/// Likewise a service whose bucket does not exist.
#[test]
fn a_service_whose_bucket_does_not_exist_waits_and_is_not_ready() {
    let Some(endpoint) = runnel_testkit::gate::s3_endpoint("an S3 test") else {
        return;
    };
    let bucket = format!("runnel-no-such-bucket-{}", std::process::id());
    let config = format!(
        "{}\n[storage.object-store-options]\naws_endpoint = \"{endpoint}\"\naws_allow_http = \"true\"\n\
         aws_access_key_id = \"test\"\naws_secret_access_key = \"test\"\naws_region = \"us-east-1\"\n",
        super::query::CONFIG
    );
    let url = format!("s3://{bucket}");
    waits_and_is_not_ready(
        &config,
        &[("RUNNEL__STORAGE__OBJECT_STORE_URL", &url)],
        "cannot use the object store; not ready, trying again",
        &bucket,
    );
}
