//! The archiver killed with SIGKILL at random moments, as a real process (`runnel archive
//! --once`), several rounds, then run to the end: the history is the same, file for file and
//! byte for byte, as one uninterrupted run's over the same log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_config::Config;
use runnel_log::{EmbeddedLog, Log, ProduceRecord};

const EVENTS: u64 = 120_000;
const ROUNDS: usize = 8;

fn runnel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_runnel"))
}

fn write_config(dir: &Path, objects: &str) -> PathBuf {
    let path = dir.join(format!("{objects}.toml"));
    let toml = format!(
        r#"version = "1"
[storage]
data-dir = "{data}"
object-store-url = "file://{objects}"
[archive]
target-file-bytes = 65536
row-group-rows = 2000
"#,
        data = dir.join("data").display(),
        objects = dir.join(objects).display(),
    );
    std::fs::write(&path, toml).expect("write config");
    path
}

/// Fills the `clicks` stream with canonical events and closes the log.
async fn fill_log(dir: &Path) {
    let config_path = write_config(dir, "unused");
    let config = Config::load(&[config_path], &Default::default()).expect("config");
    let log = EmbeddedLog::open(&config.embedded_log_dir(), &config.storage.log.embedded)
        .await
        .expect("open log");
    let stream = config.stream("clicks").expect("default stream");
    log.ensure_topic("clicks", stream.partitions)
        .await
        .expect("topic");
    let base = 1_795_305_600_000_i64;
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(5000) {
        let records = chunk
            .iter()
            .map(|&n| {
                let user = format!("user-{}", n % 101);
                ProduceRecord {
                    key: Some(Bytes::from(user.clone())),
                    value: Bytes::from(format!(
                        r#"{{"event_time":{},"user_id":"{user}","page":"/p/{}","country":"c{}","duration_ms":{n}}}"#,
                        base + n as i64 * 7,
                        n % 13,
                        n % 5
                    )),
                    timestamp: base + n as i64,
                    headers: Vec::new(),
                    partition: None,
                }
            })
            .collect();
        log.append("clicks", records).await.expect("append");
    }
    log.close().await;
}

/// Every file under `root`: relative path to bytes; the manifest without its generation
/// (which counts writes, so differs after recoveries).
fn history(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(root).expect("under root").display().to_string();
            let mut bytes = std::fs::read(&path).expect("read file");
            if relative.ends_with("_manifest.json") {
                let mut manifest: serde_json::Value =
                    serde_json::from_slice(&bytes).expect("manifest JSON");
                manifest["generation"] = serde_json::Value::Null;
                bytes = serde_json::to_vec(&manifest).expect("serialize");
            }
            files.insert(relative, bytes);
        }
    }
    files
}

fn archive_to_the_end(config: &Path) {
    let output = runnel()
        .arg("--config")
        .arg(config)
        .args(["archive", "--once"])
        .output()
        .expect("run runnel archive");
    assert!(
        output.status.success(),
        "runnel archive --once failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A small xorshift generator, seeded from the clock (the seed is printed to replay a run).
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archiver_killed_at_random_points_leaves_the_same_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    fill_log(dir.path()).await;

    let reference_config = write_config(dir.path(), "reference");
    let started = Instant::now();
    archive_to_the_end(&reference_config);
    let uninterrupted = started.elapsed();
    let reference = history(&dir.path().join("reference"));
    let files = reference.keys().filter(|path| path.ends_with(".parquet")).count();
    assert!(files > 20, "the reference run wrote {files} files");

    let seed = std::env::var("RUNNEL_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash seed {seed} (RUNNEL_CRASH_SEED replays it); uninterrupted run {uninterrupted:?}");
    let mut random = Random(seed);
    let crash_config = write_config(dir.path(), "objects");
    let window = uninterrupted.as_millis().max(50) as u64;
    let mut killed = 0;
    for round in 0..ROUNDS {
        let mut child = runnel()
            .arg("--config")
            .arg(&crash_config)
            .args(["archive", "--once"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn runnel archive");
        // Anywhere in the run: start-up, recovery, mid-file, between file and manifest.
        let delay = Duration::from_millis(random.below(window));
        std::thread::sleep(delay);
        let finished = child.try_wait().expect("poll child").is_some();
        child.kill().expect("SIGKILL"); // SIGKILL on Unix
        child.wait().expect("reap");
        if !finished {
            killed += 1;
        }
        eprintln!("round {round}: killed after {delay:?} (finished first: {finished})");
    }
    assert!(killed >= ROUNDS / 2, "only {killed} of {ROUNDS} runs were killed mid-way");
    archive_to_the_end(&crash_config);
    let recovered = history(&dir.path().join("objects"));
    let differing: Vec<&String> = reference
        .keys()
        .chain(recovered.keys())
        .filter(|path| reference.get(*path) != recovered.get(*path))
        .collect();
    assert!(
        differing.is_empty(),
        "seed {seed}: files that differ from the uninterrupted run: {differing:?}"
    );
}
