//! Device emulation: the legacy port-I/O devices and virtio over MMIO, plus the MMIO bus that
//! routes a vCPU's MMIO exits to the right virtio-mmio window.

pub mod legacy;
pub mod virtio;

use std::sync::{Arc, Mutex};

use virtio::mmio::MmioTransport;

/// The virtio-mmio windows of a VM, found by guest physical address.
#[derive(Default)]
pub struct MmioBus {
    windows: Vec<(u64, u64, Arc<Mutex<MmioTransport>>)>,
}

impl MmioBus {
    /// Adds a window of `len` bytes at `base`.
    pub fn insert(&mut self, base: u64, len: u64, transport: Arc<Mutex<MmioTransport>>) {
        self.windows.push((base, len, transport));
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<MmioTransport>>)> {
        self.windows
            .iter()
            .find(|(base, len, _)| addr >= *base && addr - *base < *len)
            .map(|(base, _, t)| (addr - base, t))
    }

    /// A read at `addr`; nothing there reads as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((offset, t)) => match t.lock() {
                Ok(mut t) => t.read(offset, data),
                Err(_) => data.fill(0xff),
            },
            None => data.fill(0xff),
        }
    }

    /// A write at `addr`; nothing there ignores it.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((offset, t)) = self.find(addr) {
            if let Ok(mut t) = t.lock() {
                t.write(offset, data);
            }
        }
    }
}
