//! Processes a test starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Child;
use std::sync::mpsc;

/// A child process that is killed (SIGKILL) and reaped when dropped, so that a failing test
/// leaves no process behind.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a runnel process's JSON log (`--log-json`) from `stderr` on a thread of its own
/// (every line, so the process never blocks on a full pipe), and sends each address logged
/// by a message that starts with one of `messages` (`"ingest listening"`): the index of the
/// message it matched, and the address. With `tee`, every line is also written there (a
/// log file the test leaves for a failure's reader).
pub fn logged_addresses(
    stderr: impl Read + Send + 'static,
    messages: &[&str],
    mut tee: Option<Box<dyn Write + Send>>,
) -> mpsc::Receiver<(usize, String)> {
    let (sender, receiver) = mpsc::channel();
    let wanted: Vec<String> = messages.iter().map(ToString::to_string).collect();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(tee) = &mut tee {
                let _ = writeln!(tee, "{line}");
            }
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let message = event["fields"]["message"].as_str().unwrap_or_default();
            if let Some(address) = event["fields"]["address"].as_str() {
                for (index, wanted) in wanted.iter().enumerate() {
                    if message.starts_with(wanted.as_str()) {
                        let _ = sender.send((index, address.to_string()));
                    }
                }
            }
        }
    });
    receiver
}
