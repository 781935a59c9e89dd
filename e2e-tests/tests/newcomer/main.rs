//! The newcomer's path: README.md's code blocks, run as written, in the README's order, in a
//! fresh folder, with the embedded defaults and the default ports (127.0.0.1:7301-7305).
//!
//! Every fenced block of the README carries a marker on the line before it, an HTML comment
//! the rendered README does not show, that says what this test does with it:
//!
//! - `<!-- newcomer: run -->`: runs it with bash (`set -euo pipefail`) and fails unless it
//!   exits 0 within 5 minutes;
//! - `<!-- newcomer: background -->`: starts it and leaves it running (the platform in "one
//!   terminal"); the blocks after it run once its ports answer; at the end it is stopped with
//!   Ctrl-C (SIGINT) and must exit 0;
//! - `<!-- newcomer: interrupt after 20s -->`: runs it, sends Ctrl-C after that long, and
//!   fails unless it was still running then and exits 0 after;
//! - `<!-- newcomer: file NAME -->`: writes it to NAME;
//! - `<!-- newcomer: skip: REASON -->`: leaves it out, for the reason given.
//!
//! `run`, `background` and `interrupt` markers may add `; expect "TEXT"` clauses: the block's
//! output (stdout and stderr) must contain each TEXT.
//!
//! A block without a marker fails the test, so a new README command is either run here or
//! explicitly left out. The one liberty taken: `cargo run [--release] -p runnel -- ARGS` runs
//! the `runnel` binary that `cargo test --workspace` built (a release build takes half an
//! hour on CI's machines), through a shell function that refuses any other `cargo` command.

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use runnel_e2e_tests::runnel_binary;

/// The ports of the embedded defaults: ingest, stream-processor metrics, serving, archive
/// metrics, serving metrics.
const DEFAULT_PORTS: [u16; 5] = [7301, 7302, 7303, 7304, 7305];
/// How long one `run` block may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);
/// How long the background platform may take to answer on its ports.
const START_LIMIT: Duration = Duration::from_secs(120);

/// What the test does with a block.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Run,
    Background,
    Interrupt(Duration),
    File(String),
    Skip(String),
}

#[derive(Debug)]
struct Block {
    /// The line of its opening fence in README.md, from 1.
    line: usize,
    action: Action,
    expect: Vec<String>,
    text: String,
}

/// The marker's action and expectations, from the text after `newcomer:`.
fn parse_marker(marker: &str, line: usize) -> (Action, Vec<String>) {
    if let Some(reason) = marker.strip_prefix("skip:") {
        assert!(
            !reason.trim().is_empty(),
            "README.md:{line}: a skipped block says why"
        );
        return (Action::Skip(reason.trim().to_string()), Vec::new());
    }
    let mut clauses = marker.split(';').map(str::trim);
    let head = clauses.next().unwrap_or_default();
    let action = if head == "run" {
        Action::Run
    } else if head == "background" {
        Action::Background
    } else if let Some(after) = head.strip_prefix("interrupt after ") {
        let seconds = after
            .strip_suffix('s')
            .and_then(|seconds| seconds.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("README.md:{line}: `interrupt after Ns`, got `{head}`"));
        Action::Interrupt(Duration::from_secs(seconds))
    } else if let Some(name) = head.strip_prefix("file ") {
        Action::File(name.trim().to_string())
    } else {
        panic!("README.md:{line}: unknown newcomer marker `{head}`");
    };
    let expect = clauses
        .filter(|clause| !clause.is_empty())
        .map(|clause| {
            clause
                .strip_prefix("expect \"")
                .and_then(|rest| rest.strip_suffix('"'))
                .unwrap_or_else(|| {
                    panic!("README.md:{line}: a clause is `expect \"TEXT\"`, got `{clause}`")
                })
                .to_string()
        })
        .collect();
    (action, expect)
}

/// A block being read: its opening line, its fence, its marker (line and text) and the
/// indent of its fence.
type OpenBlock = (usize, String, Option<(usize, String)>, usize);

/// README.md's fenced blocks with their markers; panics on a block without one.
fn readme_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut marker: Option<(usize, String)> = None;
    let mut open: Option<OpenBlock> = None;
    let mut text = String::new();
    for (index, line) in readme.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        if let Some((start, fence, block_marker, indent)) = &open {
            if trimmed.starts_with(fence.as_str()) && trimmed.trim() == fence.as_str() {
                let (marker_line, marker_text) = block_marker.clone().unwrap_or_else(|| {
                    panic!(
                        "README.md:{start}: this code block has no `<!-- newcomer: ... -->` \
                         marker on the line before it; say whether the newcomer test runs it \
                         (see e2e-tests/tests/newcomer/main.rs)"
                    )
                });
                let (action, expect) = parse_marker(&marker_text, marker_line);
                blocks.push(Block {
                    line: *start,
                    action,
                    expect,
                    text: std::mem::take(&mut text),
                });
                open = None;
            } else {
                // Blocks inside list items are indented; the indent is not the command's.
                text.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                text.push('\n');
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("<!-- newcomer:") {
            let body = rest
                .strip_suffix("-->")
                .unwrap_or_else(|| panic!("README.md:{number}: a marker ends with `-->`"));
            marker = Some((number, body.trim().to_string()));
            continue;
        }
        if trimmed.starts_with("```") {
            let fence: String = trimmed.chars().take_while(|c| *c == '`').collect();
            let indent = line.len() - trimmed.len();
            open = Some((number, fence, marker.take(), indent));
            continue;
        }
        if !trimmed.is_empty() {
            // A marker belongs to the block right after it.
            marker = None;
        }
    }
    assert!(open.is_none(), "README.md: a code block is not closed");
    blocks
}

/// A block started with bash in the session's folder, in its own process group (so that
/// Ctrl-C reaches every process it started, as in a terminal); its output goes to a file.
struct Running {
    child: Child,
    output: PathBuf,
    line: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
            let _ = self.child.wait();
        }
    }
}

impl Running {
    fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.output) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Waits up to `limit` for the block to end.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the block") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ctrl-C, as a terminal sends it: SIGINT to the block's process group.
    fn interrupt(&self) {
        let sent = Command::new("kill")
            .args(["-INT", "--", &format!("-{}", self.child.id())])
            .status()
            .expect("run kill");
        assert!(sent.success(), "could not send SIGINT");
    }
}

/// The shell functions every block runs with: `cargo run [--release] -p runnel -- ARGS`
/// runs the built binary; any other `cargo` command is refused.
const PRELUDE: &str = r#"set -euo pipefail
cargo() {
  if [[ $# -ge 5 && $1 == run && $2 == --release && $3 == -p && $4 == runnel && $5 == -- ]]; then
    shift 5
  elif [[ $# -ge 4 && $1 == run && $2 == -p && $3 == runnel && $4 == -- ]]; then
    shift 4
  else
    echo "the newcomer test runs only 'cargo run [--release] -p runnel -- ...', not: cargo $*" >&2
    return 2
  fi
  "$NEWCOMER_RUNNEL" "$@"
}
"#;

fn start(block: &Block, dir: &Path, binary: &Path) -> Running {
    let output = dir.join(format!(".newcomer-block-{}.out", block.line));
    let file = std::fs::File::create(&output).expect("create the block's output file");
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{}", block.text))
        .current_dir(dir)
        .env("NEWCOMER_RUNNEL", binary)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .env_remove("RUNNEL_TOKEN")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone the output file"))
        .stderr(file)
        .process_group(0)
        .spawn()
        .expect("start bash");
    Running {
        child,
        output,
        line: block.line,
    }
}

fn port_answers(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn check_expectations(block: &Block, output: &str) {
    for expected in &block.expect {
        assert!(
            output.contains(expected.as_str()),
            "README.md:{}: the output does not say `{expected}`:\n{output}",
            block.line
        );
    }
}

#[test]
fn every_readme_block_has_a_marker_that_says_what_this_test_does_with_it() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(readme).expect("read README.md");
    let blocks = readme_blocks(&readme);
    assert!(
        blocks
            .iter()
            .any(|block| block.action == Action::Background),
        "the README starts the platform"
    );
    let unmarked = "text\n\n```sh\nrunnel all\n```\n";
    let refused = std::panic::catch_unwind(|| readme_blocks(unmarked).len());
    assert!(refused.is_err(), "a block without a marker is refused");
}

#[test]
fn the_readme_runs_as_written_for_a_newcomer() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(readme).expect("read README.md");
    let blocks = readme_blocks(&readme);
    let busy: Vec<u16> = DEFAULT_PORTS
        .into_iter()
        .filter(|port| port_answers(*port))
        .collect();
    assert!(
        busy.is_empty(),
        "the README's commands use the default ports, and something answers on {busy:?}: \
         stop it first"
    );
    let binary = runnel_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut background: Vec<(Running, &Block)> = Vec::new();
    for block in &blocks {
        eprintln!("README.md:{}: {:?}", block.line, block.action);
        match &block.action {
            Action::Skip(_) => {}
            Action::File(name) => {
                std::fs::write(dir.path().join(name), &block.text).expect("write the file")
            }
            Action::Run => {
                let mut running = start(block, dir.path(), &binary);
                let status = running.wait(RUN_LIMIT);
                let output = running.output();
                eprintln!("{output}");
                assert!(
                    status.is_some_and(|status| status.success()),
                    "README.md:{}: the block ended with {status:?} (None: still running after \
                     {RUN_LIMIT:?}):\n{}\n--- output:\n{output}",
                    block.line,
                    block.text
                );
                check_expectations(block, &output);
            }
            Action::Interrupt(after) => {
                let mut running = start(block, dir.path(), &binary);
                let early = running.wait(*after);
                assert!(
                    early.is_none(),
                    "README.md:{}: the block ended before Ctrl-C, with {early:?}:\n{}",
                    block.line,
                    running.output()
                );
                running.interrupt();
                let status = running.wait(Duration::from_secs(60));
                let output = running.output();
                assert!(
                    status.is_some_and(|status| status.success()),
                    "README.md:{}: after Ctrl-C the block ended with {status:?} (None: still \
                     running after 60 s):\n{output}",
                    block.line
                );
                check_expectations(block, &output);
            }
            Action::Background => {
                let mut running = start(block, dir.path(), &binary);
                let deadline = Instant::now() + START_LIMIT;
                // Ingest and serving answer once the platform is up, as its log says.
                while !(port_answers(7301) && port_answers(7303)) {
                    if let Some(status) = running.wait(Duration::ZERO) {
                        panic!(
                            "README.md:{}: the platform exited with {status}:\n{}",
                            block.line,
                            running.output()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "README.md:{}: the platform did not answer on 7301 and 7303 within \
                         {START_LIMIT:?}:\n{}",
                        block.line,
                        running.output()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                background.push((running, block));
            }
        }
    }
    for (mut running, block) in background {
        running.interrupt();
        let status = running.wait(Duration::from_secs(60));
        let output = running.output();
        assert!(
            status.is_some_and(|status| status.success()),
            "README.md:{}: after Ctrl-C the platform ended with {status:?} (None: still running \
             after 60 s):\n{output}",
            running.line
        );
        check_expectations(block, &output);
    }
}
