//! Runs the guest's command, reaps every process that ends meanwhile, and decides the exit status.
//!
//! As PID 1, ember-init inherits every orphan, and a zombie it does not reap stays forever. It
//! blocks SIGCHLD and the shutdown signals (SIGTERM, SIGINT, SIGPWR) at boot and takes them
//! synchronously with `sigwaitinfo`: no signal handlers, and no race between reaping and waiting
//! (a SIGCHLD that arrives after a reap stays pending until the next wait). The command gets an
//! empty signal mask back in the child before it execs (std keeps the parent's mask since 1.66).
//!
//! This module does not kill anything: [`crate::power::power_off`] kills every process first.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

use libc::c_int;

/// PATH of the command ember-init runs.
const PATH: &str = "/usr/bin:/bin:/usr/sbin:/sbin";

/// Signals that ask ember-init to power off cleanly.
const SHUTDOWN_SIGNALS: [c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGPWR];

/// The signals ember-init has blocked and waits for.
pub struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks SIGCHLD and the shutdown signals for this (single-threaded) process.
    pub fn block() -> io::Result<Self> {
        let mut set = empty_sigset();
        for sig in SHUTDOWN_SIGNALS.into_iter().chain([libc::SIGCHLD]) {
            // SAFETY: `set` is an initialised sigset_t and `sig` a valid signal number.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        // SAFETY: `set` is initialised; the old mask is not asked for.
        if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Signals { set })
    }

    /// Waits for one of the blocked signals and returns its number.
    fn wait(&self) -> io::Result<c_int> {
        loop {
            // SAFETY: `self.set` is initialised; a null siginfo pointer is allowed.
            let sig = unsafe { libc::sigwaitinfo(&self.set, std::ptr::null_mut()) };
            if sig > 0 {
                return Ok(sig);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// A shutdown signal that is already pending (it arrived during boot), without consuming it.
    fn pending_shutdown(&self) -> Option<c_int> {
        let mut pending = empty_sigset();
        // SAFETY: `pending` is a valid sigset_t to write to.
        if unsafe { libc::sigpending(&mut pending) } != 0 {
            return None;
        }
        // SAFETY: `pending` is initialised; the signal numbers are valid.
        SHUTDOWN_SIGNALS.into_iter().find(|&sig| unsafe { libc::sigismember(&pending, sig) } == 1)
    }
}

/// An empty signal set.
fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, so all zeroes is a valid value; sigemptyset then makes it
    // the empty set (it cannot fail with a valid pointer).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Runs `argv` (if any) to completion and returns the status to power off with: the command's
/// exit status, 128 + the signal that killed it, 0 when there is nothing to run or when asked
/// to power off, 126/127 when it cannot be started (as a shell does).
pub fn run(signals: &Signals, argv: &[OsString]) -> u32 {
    let Some((program, args)) = argv.split_first() else {
        return 0;
    };
    let name = program.to_string_lossy();
    if let Some(sig) = signals.pending_shutdown() {
        log!("{}: not starting {name}, powering off", signal_name(sig));
        return 0;
    }
    let child = match command(program, args).spawn() {
        Ok(child) => child,
        Err(e) => {
            log_error!("cannot run {name}: {e}");
            return if e.kind() == io::ErrorKind::NotFound { 127 } else { 126 };
        }
    };
    // Dropping a Child neither waits for it nor kills it; waitpid(-1) below reaps it.
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        log_error!("{name}: pid {} out of range", child.id());
        return crate::FAILURE;
    };
    drop(child);
    loop {
        if let Some(wstatus) = reap(pid) {
            let status = exit_status(wstatus);
            if status != 0 {
                log!("{name} exited with status {status}");
            }
            return status;
        }
        if let Some(status) = wait_for_child_or_shutdown(signals) {
            return status;
        }
    }
}

/// With nothing to run but services to keep up, waits until asked to power off, reaping
/// orphans meanwhile; returns the status to power off with.
pub fn idle(signals: &Signals) -> u32 {
    loop {
        if let Some(status) = wait_for_child_or_shutdown(signals) {
            return status;
        }
        reap(0);
    }
}

/// Waits until asked to power off, reaping every child that ends meanwhile, and calls `on_exit`
/// once with the wait status of `child` when it is reaped. The one place that reaps while
/// `child` runs: nothing else may wait for it. Returns the status to power off with.
pub fn watch(signals: &Signals, child: libc::pid_t, on_exit: impl FnOnce(c_int)) -> u32 {
    let mut on_exit = Some(on_exit);
    loop {
        // After `child` is reaped its pid may be reused by an orphan: stop looking for it.
        let watched = if on_exit.is_some() { child } else { 0 };
        if let Some(wstatus) = reap(watched) {
            if let Some(f) = on_exit.take() {
                f(wstatus);
            }
        }
        if let Some(status) = wait_for_child_or_shutdown(signals) {
            return status;
        }
    }
}

/// Waits for the next signal: None for SIGCHLD (a child ended: the caller reaps), else the
/// status to power off with (0 when asked to, a failure when waiting failed).
fn wait_for_child_or_shutdown(signals: &Signals) -> Option<u32> {
    match signals.wait() {
        Ok(libc::SIGCHLD) => None,
        Ok(sig) => {
            log!("{}: powering off", signal_name(sig));
            Some(0)
        }
        Err(e) => {
            log_error!("waiting for signals: {e}");
            Some(crate::FAILURE)
        }
    }
}

/// The command as ember-init runs it: stdio inherited (the console), only PATH in the
/// environment, the working directory `/`, no signal blocked.
fn command(program: &OsString, args: &[OsString]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", PATH)
        .current_dir("/")
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    unblock_signals_on_exec(&mut cmd);
    cmd
}

/// Makes `cmd`'s process start with no signal blocked (ember-init blocks the ones it waits
/// for, and a child inherits the mask).
pub fn unblock_signals_on_exec(cmd: &mut Command) {
    let empty = empty_sigset();
    let unblock_all = move || {
        // SAFETY: `empty` is an initialised sigset_t; the old mask is not asked for.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and only calls sigprocmask, which
    // is async-signal-safe, on a set built before the fork; it allocates nothing.
    unsafe { cmd.pre_exec(unblock_all) };
}

/// Reaps every child that has ended; returns the wait status of `child` if it was one of them.
fn reap(child: libc::pid_t) -> Option<c_int> {
    let mut found = None;
    loop {
        let mut wstatus = 0;
        // SAFETY: waitpid writes only to `wstatus`, a valid c_int.
        let pid = unsafe { libc::waitpid(-1, &mut wstatus, libc::WNOHANG) };
        if pid <= 0 {
            // 0: the remaining children still run; -1: ECHILD, none left.
            return found;
        }
        if pid == child {
            found = Some(wstatus);
        }
    }
}

/// A wait status as a shell reports it: the exit code, or 128 + the signal that killed it.
fn exit_status(wstatus: c_int) -> u32 {
    let code = if libc::WIFEXITED(wstatus) {
        libc::WEXITSTATUS(wstatus)
    } else if libc::WIFSIGNALED(wstatus) {
        128 + libc::WTERMSIG(wstatus)
    } else {
        crate::FAILURE as c_int
    };
    u32::try_from(code).unwrap_or(crate::FAILURE)
}

fn signal_name(sig: c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGPWR => "SIGPWR",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(3 << 8), 3);
        assert_eq!(exit_status(255 << 8), 255);
        assert_eq!(exit_status(libc::SIGKILL), 128 + 9);
        assert_eq!(exit_status(libc::SIGSEGV | 0x80), 128 + 11); // core dumped
    }

    /// Runs `program args` as ember-init would, from a thread that blocks what init blocks.
    fn output_of(program: &str, args: &[&str]) -> String {
        let _signals = Signals::block().unwrap();
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let out = command(&OsString::from(program), &args).stdout(Stdio::piped()).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn command_gets_only_path() {
        assert_eq!(output_of("env", &[]), format!("PATH={PATH}\n"));
        assert_eq!(output_of("pwd", &[]), "/\n");
    }

    #[test]
    fn command_gets_an_empty_signal_mask() {
        let status = output_of("grep", &["^SigBlk", "/proc/self/status"]);
        assert_eq!(status, "SigBlk:\t0000000000000000\n");
    }

    #[test]
    fn missing_command_is_127() {
        let signals = Signals::block().unwrap();
        assert_eq!(run(&signals, &[OsString::from("/nonexistent/ember-test")]), 127);
        assert_eq!(run(&signals, &[]), 0);
    }
}
