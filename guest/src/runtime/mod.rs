//! Runtime mode (`ember.runtime=1`): ember-init runs a Lambda runtime for the agent.
//!
//! After boot it brings up `lo`, binds the Runtime API on [`RUNTIME_API_ADDR`], connects the
//! runtime channel to the host ([`RUNTIME_PORT`]), reads the [`Config`](ember_proto::runtime::Config)
//! and starts the runtime process with `AWS_LAMBDA_RUNTIME_API` pointing at the API.
//!
//! Threads, and what each owns:
//! - main (PID 1): the signals and the reaping. It reaps every process with `waitpid(-1)`
//!   ([`supervise::watch`]); when the pid is the runtime's it sends `Exited` (after the
//!   runtime's output, or [`process`]'s drain timeout) and keeps reaping orphans until it is
//!   asked to power off. Nothing else waits for children.
//! - `runtime-api`: a current-thread tokio runtime with two kinds of task: the HTTP server
//!   ([`api`]), and the channel reader ([`channel::read_invokes`]), which hands each `Invoke`
//!   to the waiting `/next` through an unbounded tokio channel. Both on one thread, so an event
//!   costs one wake-up from the vsock to the runtime's socket and no thread switch.
//! - `runtime-stdout`, `runtime-stderr`: forward the runtime's output as `Log` frames.
//!
//! Every guest-to-agent frame goes through the one [`channel::Channel`] (a mutex around the
//! stream). A broken channel, a bad frame or the agent closing it is fatal: logged on the
//! console, then [`power::power_off`] with [`FAILURE`], whichever thread sees it.
//!
//! SnapStart (`ember.snapstart=1`): the agent snapshots the VM when the runtime's init is over
//! (see [`api`]). A restore resets the vsock connection: the reader then connects again, takes
//! the agent's `Restore` frame, applies it ([`restore`]), puts the new stream in the channel
//! and tells the API, which lets the runtime go on. Only a reconnection that fails is fatal.

mod api;
mod channel;
mod net;
mod process;
mod restore;

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use ember_proto::runtime::{Decoder, RUNTIME_API_ADDR, RUNTIME_PORT};

use crate::supervise::{self, Signals};
use crate::{power, Error, FAILURE};

/// How long to keep trying to reach the agent's listener.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs runtime mode until ember-init is asked to power off; returns the status to power off
/// with. Does not return when the channel to the agent breaks (it powers off itself).
pub fn run(signals: &Signals, cmdline: &str, snap_start: bool) -> u32 {
    match start(cmdline, snap_start) {
        Ok((channel, Some(runtime))) => {
            let pid = runtime.pid();
            supervise::watch(signals, pid, |wstatus| runtime.finish(wstatus, &channel))
        }
        Ok((_, None)) => supervise::idle(signals),
        Err(e) => {
            log_error!("runtime mode: {e}");
            FAILURE
        }
    }
}

/// Everything up to the runtime process started (`None` if it could not be, which the agent
/// has been told).
fn start(cmdline: &str, snap_start: bool) -> Result<(Arc<channel::Channel>, Option<process::Runtime>), Error> {
    net::loopback_up().map_err(|e| Error::new("bring up lo", e))?;
    // Bound before the runtime starts, so that its first connection cannot be refused.
    let listener =
        TcpListener::bind(RUNTIME_API_ADDR).map_err(|e| Error::new(format!("bind {RUNTIME_API_ADDR}"), e))?;
    let mut stream = channel::connect(libc::VMADDR_CID_HOST, RUNTIME_PORT, CONNECT_TIMEOUT)
        .map_err(|e| Error::new(format!("connect to the host on vsock port {RUNTIME_PORT}"), e))?;
    let mut decoder = Decoder::new();
    let config = channel::read_config(&mut stream, &mut decoder)
        .map_err(|e| Error::new("runtime channel: read the config", io::Error::other(e)))?;
    log!("runtime {:?} in {:?}", config.argv, config.cwd);
    if config.wall_clock_ms > 0 {
        set_clock(config.wall_clock_ms).map_err(|e| Error::new("set the clock", e))?;
    }

    let writer = stream.try_clone().map_err(|e| Error::new("runtime channel: clone the stream", e))?;
    let channel = Arc::new(if snap_start {
        channel::Channel::reconnecting(writer, channel_broken)
    } else {
        channel::Channel::new(writer, channel_broken)
    });
    let (api, invokes) = api::Api::new(Arc::clone(&channel), snap_start);
    let (reader_channel, reader_api, cmdline) = (Arc::clone(&channel), Arc::clone(&api), cmdline.to_owned());
    let reader = async move {
        let (mut stream, mut decoder) = (stream, decoder);
        loop {
            let e = channel::read_invokes(stream, decoder, invokes.clone()).await;
            if !snap_start || power::powering_off() {
                log_error!("runtime channel: {e}");
                break;
            }
            // Most likely a restore (every vsock connection is reset): connect again.
            let cmdline = cmdline.clone();
            let reconnected = tokio::task::spawn_blocking(move || reconnect(&cmdline)).await;
            match reconnected.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                Ok((new_stream, new_decoder, writer)) => {
                    reader_channel.replace(writer);
                    reader_api.restored();
                    (stream, decoder) = (new_stream, new_decoder);
                }
                Err(again) => {
                    log_error!("runtime channel: {e}; then {again}");
                    break;
                }
            }
        }
        power::power_off(FAILURE);
    };
    api::start(listener, api, reader).map_err(|e| Error::new("start the Runtime API", e))?;

    match process::spawn(&config, &channel) {
        Ok(runtime) => Ok((channel, Some(runtime))),
        Err(e) => {
            process::report_spawn_failure(&config, &e, &channel);
            Ok((channel, None))
        }
    }
}

/// Connects the runtime channel again after a restore and applies the agent's `Restore`;
/// returns the reading stream, its decoder and a writing clone.
fn reconnect(
    cmdline: &str,
) -> Result<(std::os::unix::net::UnixStream, Decoder, std::os::unix::net::UnixStream), Error> {
    let mut stream = channel::connect(libc::VMADDR_CID_HOST, RUNTIME_PORT, channel::RECONNECT_TIMEOUT)
        .map_err(|e| Error::new(format!("connect again to the host on vsock port {RUNTIME_PORT}"), e))?;
    let mut decoder = Decoder::new();
    let (restore, entropy) = channel::read_restore(&mut stream, &mut decoder)
        .map_err(|e| Error::new("runtime channel: read the restore", io::Error::other(e)))?;
    restore::apply(&restore, &entropy, cmdline)?;
    let writer = stream.try_clone().map_err(|e| Error::new("runtime channel: clone the stream", e))?;
    Ok((stream, decoder, writer))
}

/// Sets the wall clock (the guest has no battery-backed clock the VMM keeps in step).
fn set_clock(ms: u64) -> io::Result<()> {
    let ts = libc::timespec { tv_sec: (ms / 1000) as libc::time_t, tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long };
    // SAFETY: clock_settime reads the timespec we pass and changes only the clock.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a failed write to the agent does: nothing more can be reported, so power off.
fn channel_broken(e: &io::Error) {
    // During a power-off the agent's end goes away with everything else: not news.
    if !power::powering_off() {
        log_error!("runtime channel: write: {e}");
    }
    power::power_off(FAILURE)
}
