//! A tests/api script run once for all the phases of a test (`--phase -`): Python with boto3
//! starts in ~12 s in the emulated KVM host, so a test that runs five phases of one script pays
//! for one start, not five. The script answers each phase named on its stdin with a line
//! `phase NAME: ok` (or `failed`) on its stdout; its other lines (its progress) are passed to
//! this process's stdout as they come, as if the script wrote there itself.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::Duration;

/// The longest one phase may take (the slowest takes ~5 min in the emulated host).
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);

/// A running phase script.
pub struct Script {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
}

impl Script {
    /// Starts `python3 tests/api/<name> ARGS... --phase -`; `what` says what it needs, for the
    /// message when it cannot start.
    pub fn start<I, S>(name: &str, args: I, what: &str) -> Script
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new("python3")
            .arg(format!("{}/tests/api/{name}", env!("CARGO_MANIFEST_DIR")))
            .args(args)
            .args(["--phase", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run python3 tests/api/{name} ({what}): {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.strip_prefix("phase ") {
                    Some(answer) => {
                        if tx.send(answer.to_owned()).is_err() {
                            break;
                        }
                    }
                    // Straight to stdout, not through print!, which the test harness captures.
                    None => {
                        let _ = writeln!(std::io::stdout().lock(), "{line}");
                    }
                }
            }
        });
        Script { name: name.to_owned(), stdin: child.stdin.take(), child, answers }
    }

    /// Runs one phase; fails the test if it fails.
    pub fn phase(&mut self, phase: &str) {
        let stdin = self.stdin.as_mut().expect("the script's stdin is open");
        writeln!(stdin, "{phase}").and_then(|()| stdin.flush()).unwrap_or_else(|e| {
            panic!("tests/api/{}: send phase {phase}: {e} (the script ended)", self.name);
        });
        match self.answers.recv_timeout(PHASE_TIMEOUT) {
            Ok(answer) if answer == format!("{phase}: ok") => {}
            Ok(answer) => panic!("tests/api/{} failed: phase {answer}", self.name),
            Err(RecvTimeoutError::Timeout) => {
                panic!("tests/api/{}: phase {phase} did not end within {} s", self.name, PHASE_TIMEOUT.as_secs())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                panic!("tests/api/{}: the script ended during phase {phase}: {status}", self.name)
            }
        }
    }
}

impl Drop for Script {
    /// Closes the script's stdin, which ends it, and waits for it; a script still running a
    /// phase (the test failed meanwhile) is killed.
    fn drop(&mut self) {
        drop(self.stdin.take());
        if std::thread::panicking() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
