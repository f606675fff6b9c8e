//! The device event loop: one thread that waits on every virtio queue's ioeventfd and every
//! device's host-side fd, and runs the device when one is ready.
//!
//! It is the only thread that processes queues, so devices need no locking among queues; the
//! device mutex is shared only with the transport (taken at activation and reset).

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::devices::virtio::{Interrupt, VirtioDevice};
use super::VmEvent;

/// What wakes a handler.
pub enum Source {
    /// The guest notified queue `index` (an ioeventfd on its QueueNotify register).
    Queue {
        /// The ioeventfd.
        notify: EventFd,
        /// The queue.
        index: usize,
    },
    /// The device's host side has something (its own fd, owned by the device).
    Backend(RawFd),
}

/// The epoll token of the stop eventfd.
const STOP: u64 = u64::MAX;

/// One source and the device it drives.
pub struct Handler {
    /// What to wait on.
    pub source: Source,
    /// The device.
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
}

/// Runs the loop until a fatal error, which is reported on `events`, or until `stop` is
/// written (a snapshot wants the devices still); the loop then returns, between two handlers.
pub fn run(handlers: Vec<Handler>, stop: EventFd, events: Sender<VmEvent>) {
    let fail = |what: String| {
        let _ = events.send(VmEvent::Error(what));
    };
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => return fail(format!("epoll: {e}")),
    };
    for (i, h) in handlers.iter().enumerate() {
        let fd = match &h.source {
            Source::Queue { notify, .. } => notify.as_raw_fd(),
            Source::Backend(fd) => *fd,
        };
        if let Err(e) = epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, i as u64)) {
            return fail(format!("epoll_ctl: {e}"));
        }
    }
    if let Err(e) = epoll.ctl(ControlOperation::Add, stop.as_raw_fd(), EpollEvent::new(EventSet::IN, STOP)) {
        return fail(format!("epoll_ctl: {e}"));
    }
    let mut ready = vec![EpollEvent::default(); handlers.len() + 1];
    let mut reported = vec![false; handlers.len()];
    loop {
        let n = match epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(format!("epoll_wait: {e}")),
        };
        if ready[..n].iter().any(|ev| ev.data() == STOP) {
            return;
        }
        for ev in &ready[..n] {
            let i = ev.data() as usize;
            let Some(h) = handlers.get(i) else { continue };
            let Ok(mut dev) = h.device.lock() else { continue };
            let result = match &h.source {
                Source::Queue { notify, index } => {
                    let _ = notify.read();
                    dev.process_queue(*index, &h.interrupt)
                }
                Source::Backend(_) => dev.process_backend(&h.interrupt),
            };
            // A guest that corrupts its own rings breaks only its own device; say so once.
            if let Err(e) = result {
                if !std::mem::replace(&mut reported[i], true) {
                    eprintln!("ember: virtio device {}: {e}", dev.device_type());
                }
            }
        }
    }
}
