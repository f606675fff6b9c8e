//! Virtio devices and their MMIO transport.
//!
//! A device ([`VirtioDevice`]) knows its features, its config space and how to process its
//! queues; the transport ([`mmio::MmioTransport`]) owns the registers the driver programs and
//! hands the device its queues when the driver sets DRIVER_OK. Queue processing takes guest
//! memory and an [`Interrupt`], never KVM, so it is unit-tested with plain memory.
//!
//! Threads: vCPU threads touch only the transport (register reads and writes, under its lock).
//! Queue notifications arrive on ioeventfds and are processed on the VMM's event-loop thread,
//! which locks the device; interrupts go out through an irqfd. So the guest's fast path (notify,
//! complete, interrupt) never takes a lock in a vCPU thread.

pub mod block;
pub mod mmio;
pub mod vsock;

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// VIRTIO_F_VERSION_1: the modern (virtio 1.x) interface.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX: notification suppression by event index.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Interrupt status bit: a used ring was updated.
pub const INT_USED_RING: u32 = 0x1;
/// Interrupt status bit: the config space changed.
pub const INT_CONFIG: u32 = 0x2;

/// Errors of queue processing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest's rings could not be read or written.
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// The interrupt could not be raised.
    #[error("cannot raise the device interrupt: {0}")]
    Interrupt(std::io::Error),
    /// A saved device state does not fit the device.
    #[error("device state: {0}")]
    State(String),
}

/// A device's interrupt line: the status register the driver reads, and the irqfd.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// An interrupt that fires `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt { status: AtomicU32::new(0), irqfd }
    }

    /// Sets `bits` in the status register and raises the line.
    pub fn trigger(&self, bits: u32) -> Result<(), Error> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1).map_err(Error::Interrupt)
    }

    /// The status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears `bits` (the driver's InterruptACK).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts back a saved status register; bits still pending are raised again (a driver that
    /// finds nothing new in its rings takes no harm from it).
    pub fn restore(&self, status: u32) -> Result<(), Error> {
        self.status.store(0, Ordering::SeqCst);
        if status != 0 {
            self.trigger(status)?;
        }
        Ok(())
    }
}

/// What an activated device works with.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, as the driver set them up.
    pub queues: Vec<Queue>,
    /// Negotiated features.
    pub features: u64,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (2 = block, 19 = vsock).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn features(&self) -> u64;
    /// Reads the config space at `offset` into `data`; out of range reads as zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the config space; read-only fields ignore writes.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with its queues.
    fn activate(&mut self, activation: Activation);
    /// Processes queue `index` after the driver notified it.
    fn process_queue(&mut self, index: usize, interrupt: &Interrupt) -> Result<(), Error>;
    /// Stops the device and forgets its queues (the driver reset it).
    fn reset(&mut self);
    /// The queues of an activated device (for a snapshot); None before activation.
    fn queues(&self) -> Option<&[Queue]>;
    /// Called once after a restore has activated the device with its saved queues, before the
    /// guest runs again: what the device must tell the driver about its new host side.
    fn restored(&mut self, _interrupt: &Interrupt) -> Result<(), Error> {
        Ok(())
    }
    /// An fd for the event loop to watch on the device's host side (vsock's sockets, say);
    /// when it is readable the loop calls [`VirtioDevice::process_backend`].
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }
    /// Handles whatever made [`VirtioDevice::backend_fd`] readable.
    fn process_backend(&mut self, _interrupt: &Interrupt) -> Result<(), Error> {
        Ok(())
    }
}

/// Processes every chain the driver has made available on `queue` with `handle`, which
/// returns how many bytes it wrote into the chain; says whether any chain was used (the caller
/// then owes the driver [`signal_used`]). With EVENT_IDX the ring is checked again after
/// notifications are re-enabled, so that no chain added meanwhile waits; an avail index the
/// guest corrupted (which looks non-empty but pops nothing, ever) ends the loop instead of
/// spinning on it.
pub fn drain_queue<F>(queue: &mut Queue, mem: &GuestMemoryMmap, mut handle: F) -> Result<bool, Error>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    if !queue.ready() {
        return Ok(false);
    }
    let mut used = false;
    loop {
        queue.disable_notification(mem)?;
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len)?;
            used = true;
            popped = true;
        }
        if !queue.enable_notification(mem)? || !popped {
            break;
        }
    }
    Ok(used)
}

/// Raises the used-ring interrupt for `queue` if the driver wants to know (always without
/// EVENT_IDX; with it, once the used index has passed the driver's `used_event`); says whether
/// it did.
pub fn signal_used(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt) -> Result<bool, Error> {
    if queue.needs_notification(mem)? {
        interrupt.trigger(INT_USED_RING)?;
        return Ok(true);
    }
    Ok(false)
}

/// Copies the bytes of `config` at `offset` into `data`, zeros past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
