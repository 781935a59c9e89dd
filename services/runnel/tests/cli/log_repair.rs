//! `runnel log check` and `runnel log repair` as an operator runs them, on an embedded log
//! with a flipped byte; and `runnel archive` reporting a corrupt partition on `/metrics`
//! while it archives the others.

use std::io::{BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_config::Config;
use runnel_log::{EmbeddedLog, Log, ProduceRecord};

use super::KillOnDrop;

/// Bytes of one record's frame: 8 (len, crc) + 28 (fixed body) + 5 (value `vNNNN`).
const FRAME: u64 = 41;

fn runnel(data_dir: &Path, args: &[&str]) -> Output {
    runnel_with(data_dir, args, &[])
}

fn runnel_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .env("RUNNEL__STORAGE__DATA_DIR", data_dir)
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run runnel")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config(data_dir: &Path, env: &[(&str, &str)]) -> Config {
    let mut vars: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    vars.insert(
        "RUNNEL__STORAGE__DATA_DIR".to_string(),
        data_dir.display().to_string(),
    );
    Config::load(&[], &vars).expect("config")
}

/// Appends `count` records `v0000`... to partition 0 of `clicks` (the default stream), and
/// leaves the partition as a killed writer would.
async fn fill_partition_0(data_dir: &Path, count: usize) -> PathBuf {
    let config = config(data_dir, &[]);
    let log = EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
        .await
        .expect("open log");
    log.ensure_topic("clicks", 4).await.expect("topic");
    let records = (0..count)
        .map(|idx| ProduceRecord {
            key: None,
            value: Bytes::from(format!("v{idx:04}")),
            timestamp: idx as i64,
            headers: Vec::new(),
            partition: Some(0),
        })
        .collect();
    log.append("clicks", records).await.expect("append");
    log.close().await;
    let partition = config.embedded_log_dir().join("clicks").join("0");
    // As a writer killed after its last acknowledged append leaves it: without the index a
    // clean stop writes, the next open reads the segment, and finds damage there.
    std::fs::remove_file(partition.join("00000000000000000000.index"))
        .expect("a clean stop wrote the active segment's index");
    partition.join("00000000000000000000.log")
}

fn flip_byte(path: &Path, position: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open segment");
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, position).expect("read");
    file.write_all_at(&[byte[0] ^ 0x40], position)
        .expect("write");
}

#[tokio::test]
async fn check_finds_a_flipped_byte_and_repair_skips_it_with_an_audit_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let segment = fill_partition_0(&data, 20).await;
    flip_byte(&segment, 10 * FRAME + 38);

    // The log does not open; the error says what to run.
    let tail = runnel(
        &data,
        &[
            "log",
            "tail",
            "--topic",
            "clicks",
            "--partition",
            "0",
            "--max",
            "1",
        ],
    );
    assert!(!tail.status.success());
    let stderr = text(&tail.stderr);
    assert!(
        stderr
            .contains("`runnel log repair --topic clicks --partition 0 --skip-range 10-10 --yes`"),
        "{stderr}"
    );

    let check = runnel(&data, &["log", "check", "--topic", "clicks"]);
    assert!(!check.status.success(), "the check fails on damage");
    let stdout = text(&check.stdout);
    assert!(stdout.contains("clicks/0: 1 problem(s)"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "bad frame: {} byte 410: offset 10 unreadable",
            segment.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "repair: runnel log repair --topic clicks --partition 0 --skip-range 10-10 --yes"
        ),
        "{stdout}"
    );
    for partition in 1..4 {
        assert!(
            stdout.contains(&format!("clicks/{partition}: ok")),
            "{stdout}"
        );
    }
    assert!(text(&check.stderr).contains("found 1 problem(s) in 1 of 4 partition(s)"));

    // Without --yes and without a terminal to ask on, nothing happens.
    let unconfirmed = runnel(
        &data,
        &[
            "log",
            "repair",
            "--topic",
            "clicks",
            "--partition",
            "0",
            "--skip-range",
            "10-10",
        ],
    );
    assert!(!unconfirmed.status.success());
    assert!(
        text(&unconfirmed.stderr).contains("pass --yes"),
        "{}",
        text(&unconfirmed.stderr)
    );
    let audit_path = segment.with_file_name("repairs.jsonl");
    assert!(
        !audit_path.try_exists().expect("stat audit file"),
        "an unconfirmed repair records nothing"
    );

    let repair = runnel_with(
        &data,
        &[
            "log",
            "repair",
            "--topic",
            "clicks",
            "--partition",
            "0",
            "--skip-range",
            "10",
            "--yes",
        ],
        &[("USER", "tester"), ("SUDO_USER", "")],
    );
    assert!(repair.status.success(), "{}", text(&repair.stderr));
    let stdout = text(&repair.stdout);
    assert!(
        stdout.contains("repaired clicks/0 (skip-range 10-10): offsets 10-10 dropped, 41 byte(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the next record appended gets offset 20"),
        "{stdout}"
    );
    let audit = std::fs::read_to_string(&audit_path).expect("audit record");
    assert_eq!(audit.lines().count(), 1);
    for part in [
        r#""action":"skip-range""#,
        r#""first_offset":10"#,
        r#""user":"tester""#,
    ] {
        assert!(audit.contains(part), "{part} in {audit}");
    }

    let check = runnel(&data, &["log", "check"]);
    assert!(check.status.success(), "{}", text(&check.stdout));
    assert!(text(&check.stdout).contains("skipped by a repair: offsets 10-10"));
    let tail = runnel(
        &data,
        &[
            "log",
            "tail",
            "--topic",
            "clicks",
            "--partition",
            "0",
            "--max",
            "19",
        ],
    );
    assert!(tail.status.success(), "{}", text(&tail.stderr));
    let offsets: Vec<u64> = text(&tail.stdout)
        .lines()
        .map(|line| {
            line.split(' ')
                .next()
                .expect("offset")
                .parse()
                .expect("number")
        })
        .collect();
    let expected: Vec<u64> = (0..20).filter(|offset| *offset != 10).collect();
    assert_eq!(offsets, expected, "reads go on past the skipped offset");
}

#[tokio::test]
async fn repair_truncates_only_when_no_writer_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let segment = fill_partition_0(&data, 20).await;
    flip_byte(&segment, 15 * FRAME + 38);
    let truncate = [
        "log",
        "repair",
        "--topic",
        "clicks",
        "--partition",
        "0",
        "--truncate-after",
        "14",
        "--yes",
    ];

    // This process holds partition 0's writer lock, as a running writer would.
    let config = config(&data, &[]);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(
            config
                .embedded_log_dir()
                .join("clicks")
                .join("0")
                .join("writer.lock"),
        )
        .expect("open writer.lock");
    lock.lock()
        .expect("hold the writer's lock as a writer would");
    let refused = runnel(&data, &truncate);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("is written by another process"),
        "{}",
        text(&refused.stderr)
    );
    lock.unlock().expect("unlock");

    let repaired = runnel(&data, &truncate);
    assert!(repaired.status.success(), "{}", text(&repaired.stderr));
    assert!(text(&repaired.stdout).contains("the next record appended gets offset 15"));
    let produce = runnel(
        &data,
        &[
            "log",
            "produce",
            "--topic",
            "clicks",
            "--partition",
            "0",
            "--value",
            "after",
        ],
    );
    assert!(produce.status.success(), "{}", text(&produce.stderr));
    assert_eq!(text(&produce.stdout).trim(), "partition 0 offset 15");
    let audit = std::fs::read_to_string(segment.with_file_name("repairs.jsonl")).expect("audit");
    assert!(audit.contains(r#""action":"truncate-after""#), "{audit}");
}

#[test]
fn check_says_it_does_not_apply_to_kafka() {
    let dir = tempfile::tempdir().expect("temp dir");
    let check = runnel_with(
        dir.path(),
        &["log", "check"],
        &[("RUNNEL__STORAGE__LOG__BACKEND", "kafka")],
    );
    assert!(!check.status.success());
    assert!(
        text(&check.stderr)
            .contains("`runnel log check` is not applicable: storage.log.backend is kafka"),
        "{}",
        text(&check.stderr)
    );
}

/// `GET path` over HTTP/1.1; the body.
fn http_get(address: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn runnel_archive_reports_a_corrupt_partition_on_metrics_and_archives_the_others() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Small segments, so the damage is in a sealed one: the log opens, the read fails.
    let env = [
        ("RUNNEL__STORAGE__LOG__EMBEDDED__SEGMENT_BYTES", "8192"),
        ("RUNNEL__ARCHIVE__METRICS_LISTEN", "127.0.0.1:0"),
        ("RUNNEL__ARCHIVE__MAX_FILE_AGE", "200ms"),
        ("RUNNEL__ARCHIVE__POLL_INTERVAL", "50ms"),
    ];
    let config = config(&data, &env);
    let log = EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
        .await
        .expect("open log");
    log.ensure_topic("clicks", 4).await.expect("topic");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for partition in 0..4 {
        let records = (0..400)
            .map(|n| ProduceRecord {
                key: None,
                value: Bytes::from(format!(
                    r#"{{"event_time":{},"user_id":"u{n}","page":"/p","country":"de","duration_ms":{n}}}"#,
                    now + n
                )),
                timestamp: now + n,
                headers: Vec::new(),
                partition: Some(partition),
            })
            .collect();
        log.append("clicks", records).await.expect("append");
    }
    log.close().await;
    let sealed = config
        .embedded_log_dir()
        .join("clicks")
        .join("1")
        .join("00000000000000000000.log");
    flip_byte(&sealed, 4000);

    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_runnel"))
            .args(["--log-json", "archive"])
            .env("RUNNEL__STORAGE__DATA_DIR", &data)
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn runnel archive"),
    );
    let stderr = child.0.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut logged = Vec::new();
    let address = loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no status address logged: {logged:#?}"));
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(address) = parsed["fields"]["address"].as_str()
            && parsed["fields"]["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("archiver status listening"))
        {
            break address.to_string();
        }
        logged.push(line);
    };
    let corrupt_line = "runnel_archiver_partition_corrupt{stream=\"clicks\",partition=\"1\"} 1";
    let metrics = loop {
        let metrics = http_get(&address, "/metrics");
        let others_archived = [0, 2, 3].iter().all(|partition| {
            metrics.contains(&format!(
                "runnel_archiver_archived_until_offset{{stream=\"clicks\",partition=\"{partition}\"}} 400"
            ))
        });
        if metrics.contains(corrupt_line) && others_archived {
            break metrics;
        }
        assert!(Instant::now() < deadline, "metrics within 60 s:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        metrics.contains("runnel_archiver_corruptions_total{stream=\"clicks\",partition=\"1\"} 1"),
        "{metrics}"
    );
    let status: serde_json::Value =
        serde_json::from_str(&http_get(&address, "/status")).expect("status JSON");
    let partition_1 = status["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|partition| partition["stream"] == "clicks" && partition["partition"] == 1)
        .expect("partition 1")
        .clone();
    assert_eq!(partition_1["state"], "corrupt", "{status:#}");
    assert_eq!(partition_1["corrupt"]["path"], sealed.display().to_string());
    assert!(
        partition_1["corrupt"]["repair"]
            .as_str()
            .is_some_and(|repair| repair.contains("runnel log repair --topic clicks --partition 1")),
        "{status:#}"
    );
    // One ERROR naming the repair, not one per retry.
    std::thread::sleep(Duration::from_millis(1500));
    while let Ok(line) = lines_rx.try_recv() {
        logged.push(line);
    }
    let errors: Vec<&String> = logged
        .iter()
        .filter(|line| line.contains(r#""level":"ERROR""#))
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("runnel log repair --topic clicks --partition 1"),
        "{}",
        errors[0]
    );
}
