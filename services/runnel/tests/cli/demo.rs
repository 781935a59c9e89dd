//! `runnel demo` as the README runs it: the four services in one process on a fresh embedded
//! log, live results over gRPC (the join job's too: users' clicks with their plan), a replay
//! that switches the active version and a recompute; Ctrl-C (SIGINT) stops it cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::KillOnDrop;

#[test]
fn the_demo_switches_versions_recomputes_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("demo-data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args([
            "demo",
            "--plain",
            "--rate",
            "200",
            "--phase-seconds",
            "6",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runnel demo");
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id().to_string();
    let mut child = KillOnDrop(child);
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut switched, mut recomputed, mut from_batch, mut top_pages, mut plans) =
        (false, false, false, false, false);
    let mut last = Vec::new();
    while !(switched && recomputed && from_batch && top_pages && plans) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines_rx.recv_timeout(remaining) else {
            panic!(
                "within 180 s: switched {switched}, recomputed {recomputed}, batch answers \
                 {from_batch}, top pages {top_pages}, users with their plans {plans}; last \
                 lines:\n{}",
                last.join("\n")
            );
        };
        switched |= line.contains("is now the active version: serving switched to it");
        recomputed |= line.contains("batch view of page_views:");
        from_batch |= line.contains("from the batch view");
        top_pages |= line.trim_start().starts_with("/home ");
        // The join job: a user's clicks with the plan the table gave them.
        plans |= line.trim_start().starts_with('u')
            && ["free", "pro", "team"]
                .iter()
                .any(|plan| line.contains(&format!(" plan {plan} ")));
        last.push(line);
        if last.len() > 60 {
            last.remove(0);
        }
    }
    assert!(
        last.iter().any(|line| line.contains("from job version 2")),
        "sessions answered by version 2 after the switch:\n{}",
        last.join("\n")
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("send SIGINT");
    assert!(interrupted.success());
    let mut stopped = false;
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(30)) {
        stopped |= line == "demo stopped";
    }
    let status = child.0.wait().expect("wait for the demo");
    assert!(stopped, "the demo says it stopped");
    assert!(status.success(), "the demo exits 0 on Ctrl-C: {status:?}");
}
