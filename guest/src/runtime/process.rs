//! The runtime process: starting it as the agent's [`Config`] says, and forwarding its output.
//!
//! Its stdout and stderr are pipes, each read by a thread of its own (`runtime-stdout`,
//! `runtime-stderr`) that sends what one read returns (at most [`LOG_CHUNK`] bytes) as one
//! [`Kind::Log`] frame. This module never waits for the process: PID 1's reaper does
//! ([`crate::supervise::watch`]) and hands the wait status to [`Runtime::finish`].

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ember_proto::runtime::{Config, Exited, Kind, RUNTIME_API_ADDR};

use super::channel::{Channel, Output};
use crate::supervise;

/// The variable that tells the runtime where the Runtime API is.
const API_ENV: &str = "AWS_LAMBDA_RUNTIME_API";
/// PATH of the runtime when its configuration has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
/// The most output one [`Kind::Log`] frame carries.
const LOG_CHUNK: usize = 64 << 10;
/// How long, after the runtime ends, its output may take to drain before [`Kind::Exited`] goes
/// out anyway (a process it left behind may hold the pipes open).
const LOG_DRAIN: Duration = Duration::from_millis(200);

/// An output pipe of the runtime, and its descriptor.
type Pipe = (Box<dyn Read + Send>, RawFd);

/// A started runtime process.
pub struct Runtime {
    pid: libc::pid_t,
    /// One message from each output thread when its pipe is at end of file.
    drained: mpsc::Receiver<()>,
    outputs: usize,
}

/// Starts the runtime: `argv` in `cwd` (`/` if empty) with only `env` and
/// `AWS_LAMBDA_RUNTIME_API` in its environment (and a default PATH if `env` has none), stdin
/// from /dev/null, no signal blocked, stdout and stderr forwarded to `channel`.
pub fn spawn(config: &Config, channel: &Arc<Channel>) -> io::Result<Runtime> {
    let Some((program, args)) = config.argv.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty argv"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    if !config.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(config.env.iter().map(|(k, v)| (k, v)))
        .env(API_ENV, RUNTIME_API_ADDR)
        .current_dir(if config.cwd.is_empty() { "/" } else { &config.cwd })
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    supervise::unblock_signals_on_exec(&mut cmd);
    let mut child = cmd.spawn()?;
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    let (done, drained) = mpsc::channel();
    let mut outputs = 0;
    let pipes: [(&str, Option<Pipe>); 2] = [
        ("runtime-stdout", child.stdout.take().map(|p| (p.as_raw_fd(), p)).map(|(fd, p)| (Box::new(p) as _, fd))),
        ("runtime-stderr", child.stderr.take().map(|p| (p.as_raw_fd(), p)).map(|(fd, p)| (Box::new(p) as _, fd))),
    ];
    for (name, pipe) in pipes {
        let Some((pipe, fd)) = pipe else { continue };
        let (channel, done) = (Arc::clone(channel), done.clone());
        let output = Output::new(fd);
        channel.watch(&output);
        match thread::Builder::new().name(name.into()).spawn(move || forward(pipe, &output, &channel, &done)) {
            Ok(_) => outputs += 1,
            Err(e) => log_error!("{name}: cannot start a thread: {e}"),
        }
    }
    // Dropping the Child neither waits for nor kills the process: the reaper owns it now.
    drop(child);
    Ok(Runtime { pid, drained, outputs })
}

/// Sends what `pipe` yields as Log frames until its end; then says so on `done`. Each read
/// is marked on `output` from before it starts (once the pipe polls readable) until what it
/// read is sent.
fn forward(mut pipe: Box<dyn Read + Send>, output: &Arc<Output>, channel: &Channel, done: &mpsc::Sender<()>) {
    let mut buf = vec![0; LOG_CHUNK];
    loop {
        wait_readable(output.fd());
        output.set_busy(true);
        let read = pipe.read(&mut buf);
        match read {
            Ok(0) => break,
            Ok(n) => channel.send_bare(Kind::Log, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log_error!("runtime output: {e}");
                break;
            }
        }
        output.set_busy(false);
    }
    channel.unwatch(output);
    output.set_busy(false);
    let _ = done.send(());
}

/// Blocks until `fd` has data or its writers are gone.
fn wait_readable(fd: RawFd) {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll reads and writes the one pollfd we own; a signal ends it early, which only
    // means an early read.
    unsafe { libc::poll(&mut p, 1, -1) };
}

impl Runtime {
    /// The process id.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Reports the end of the process (its wait status `wstatus`) to the agent, after its
    /// output, waiting at most [`LOG_DRAIN`] for that.
    pub fn finish(self, wstatus: libc::c_int, channel: &Channel) {
        let deadline = Instant::now() + LOG_DRAIN;
        for _ in 0..self.outputs {
            if self.drained.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
                break;
            }
        }
        let reason = exit_reason(wstatus);
        log!("runtime exited: {reason}");
        channel.send(Kind::Exited, &Exited { reason }, &[]);
    }
}

/// Tells the agent that the runtime could not even start: the error as output, then
/// [`Kind::Exited`].
pub fn report_spawn_failure(config: &Config, e: &io::Error, channel: &Channel) {
    let program = config.argv.first().map_or("", String::as_str);
    let reason = format!("fork/exec {program}: {}", os_message(e));
    log_error!("cannot start the runtime: {reason}");
    channel.send_bare(Kind::Log, format!("{reason}\n").as_bytes());
    channel.send(Kind::Exited, &Exited { reason }, &[]);
}

/// An I/O error as Go words it (Lambda's messages come from Go): `no such file or directory`.
fn os_message(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| first.to_lowercase().chain(chars).collect())
}

/// A wait status as Lambda reports it (Go's `ProcessState.String`): `exit status 2`,
/// `signal: killed`.
pub fn exit_reason(wstatus: libc::c_int) -> String {
    if libc::WIFEXITED(wstatus) {
        format!("exit status {}", libc::WEXITSTATUS(wstatus))
    } else if libc::WIFSIGNALED(wstatus) {
        let sig = libc::WTERMSIG(wstatus);
        match signal_description(sig) {
            Some(name) => format!("signal: {name}"),
            None => format!("signal: {sig}"),
        }
    } else {
        format!("wait status {wstatus:#x}")
    }
}

/// The descriptions Go gives the Linux signals.
fn signal_description(sig: libc::c_int) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "hangup",
        libc::SIGINT => "interrupt",
        libc::SIGQUIT => "quit",
        libc::SIGILL => "illegal instruction",
        libc::SIGTRAP => "trace/breakpoint trap",
        libc::SIGABRT => "aborted",
        libc::SIGBUS => "bus error",
        libc::SIGFPE => "floating point exception",
        libc::SIGKILL => "killed",
        libc::SIGUSR1 => "user defined signal 1",
        libc::SIGSEGV => "segmentation fault",
        libc::SIGUSR2 => "user defined signal 2",
        libc::SIGPIPE => "broken pipe",
        libc::SIGALRM => "alarm clock",
        libc::SIGTERM => "terminated",
        libc::SIGSTKFLT => "stack fault",
        libc::SIGXCPU => "CPU time limit exceeded",
        libc::SIGXFSZ => "file size limit exceeded",
        libc::SIGVTALRM => "virtual timer expired",
        libc::SIGPROF => "profiling timer expired",
        libc::SIGSYS => "bad system call",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use ember_proto::runtime::{Decoder, Frame};

    use super::*;

    #[test]
    fn exit_reasons() {
        assert_eq!(exit_reason(0), "exit status 0");
        assert_eq!(exit_reason(3 << 8), "exit status 3");
        assert_eq!(exit_reason(libc::SIGKILL), "signal: killed");
        assert_eq!(exit_reason(libc::SIGSEGV | 0x80), "signal: segmentation fault");
        assert_eq!(exit_reason(libc::SIGTERM), "signal: terminated");
        assert_eq!(exit_reason(40), "signal: 40");
    }

    #[test]
    fn os_messages() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(os_message(&e), "no such file or directory");
        assert_eq!(os_message(&io::Error::other("Odd")), "odd");
    }

    /// Every frame the guest sends until (and with) Exited.
    fn frames_until_exited(host: &mut std::os::unix::net::UnixStream) -> Vec<Frame> {
        let mut decoder = Decoder::new();
        let mut frames = Vec::new();
        let mut buf = [0; 4096];
        loop {
            while let Some(f) = decoder.next_frame().unwrap() {
                let exited = f.kind == Kind::Exited;
                frames.push(f);
                if exited {
                    return frames;
                }
            }
            let n = host.read(&mut buf).unwrap();
            assert!(n > 0, "channel closed");
            decoder.push(&buf[..n]);
        }
    }

    fn test_channel() -> (std::os::unix::net::UnixStream, Arc<Channel>) {
        let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        host.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (host, Arc::new(Channel::new(guest, |e| panic!("channel broke: {e}"))))
    }

    #[test]
    fn runtime_output_then_exit() {
        let (mut host, channel) = test_channel();
        let config = Config {
            argv: vec!["sh".into(), "-c".into(), "echo out; echo err >&2; env | sort; pwd; exit 3".into()],
            env: vec![("FOO".into(), "bar".into())],
            cwd: "/tmp".into(),
            ..Default::default()
        };
        let runtime = spawn(&config, &channel).unwrap();
        let mut wstatus = 0;
        // SAFETY: waitpid writes only to `wstatus`; this test's own child.
        assert_eq!(unsafe { libc::waitpid(runtime.pid(), &mut wstatus, 0) }, runtime.pid());
        runtime.finish(wstatus, &channel);

        let frames = frames_until_exited(&mut host);
        let (last, logs) = frames.split_last().unwrap();
        assert_eq!(last.meta::<Exited>().unwrap().reason, "exit status 3");
        assert!(logs.iter().all(|f| f.kind == Kind::Log && f.meta.is_empty()));
        let output: Vec<u8> = logs.iter().flat_map(|f| f.payload.clone()).collect();
        let output = String::from_utf8(output).unwrap();
        let mut lines: Vec<&str> = output.lines().collect();
        lines.sort_unstable();
        let mut want = vec![
            "out",
            "err",
            "/tmp",
            "FOO=bar",
            "AWS_LAMBDA_RUNTIME_API=127.0.0.1:9001",
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        ];
        want.sort_unstable();
        // sh may export a few variables of its own (PWD, SHLVL, _).
        let lines: Vec<&str> = lines
            .into_iter()
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
            .collect();
        assert_eq!(lines, want);
    }

    #[test]
    fn a_runtime_killed_by_a_signal() {
        let (mut host, channel) = test_channel();
        let config = Config { argv: vec!["sh".into(), "-c".into(), "kill -9 $$".into()], ..Default::default() };
        let runtime = spawn(&config, &channel).unwrap();
        let mut wstatus = 0;
        // SAFETY: waitpid writes only to `wstatus`; this test's own child.
        assert_eq!(unsafe { libc::waitpid(runtime.pid(), &mut wstatus, 0) }, runtime.pid());
        runtime.finish(wstatus, &channel);
        let frames = frames_until_exited(&mut host);
        assert_eq!(frames.last().unwrap().meta::<Exited>().unwrap().reason, "signal: killed");
    }

    #[test]
    fn a_runtime_that_cannot_start() {
        let (mut host, channel) = test_channel();
        let config = Config { argv: vec!["/nonexistent/bootstrap".into()], ..Default::default() };
        let e = spawn(&config, &channel).err().unwrap();
        report_spawn_failure(&config, &e, &channel);
        let frames = frames_until_exited(&mut host);
        let reason = "fork/exec /nonexistent/bootstrap: no such file or directory";
        assert_eq!(frames[0].payload, format!("{reason}\n").as_bytes());
        assert_eq!(frames[1].meta::<Exited>().unwrap().reason, reason);
    }
}
