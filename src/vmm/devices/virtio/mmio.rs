//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2): the register window a driver
//! programs, one per device.
//!
//! The transport keeps the queue configuration until the driver sets DRIVER_OK, then hands the
//! queues to the device. QueueNotify writes never reach it: they are caught by ioeventfds (see
//! `vmm::Vmm`), so the only exits that land here are setup, config space and interrupt ack.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{Activation, Error, Interrupt, VirtioDevice, VIRTIO_RING_F_EVENT_IDX};

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x454d_4252; // "EMBR"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// The QueueNotify register; writes to it are caught by ioeventfds.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// A queue's configuration and ring positions, as saved in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// The largest size the device offers.
    pub max_size: u16,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver enabled it.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// The next available entry the device will read.
    pub next_avail: u16,
    /// The next used entry the device will write.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX is in use.
    pub event_idx: bool,
}

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx: s.event_idx_enabled,
        }
    }
}

impl QueueSnapshot {
    fn to_queue(&self) -> Result<Queue, Error> {
        let state = QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(Error::Queue)
    }
}

/// The transport's registers, its queues and its interrupt status, as saved in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// The device status.
    pub status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// DRIVER_OK was set and the device runs.
    pub activated: bool,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// The queues (the device's own once activated).
    pub queues: Vec<QueueSnapshot>,
}

/// One device's register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<Interrupt>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    /// A transport for `device`, raising `interrupt`.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, interrupt: Arc<Interrupt>, mem: GuestMemoryMmap) -> Self {
        let sizes: Vec<u16> = device.lock().map(|d| d.queue_max_sizes().to_vec()).unwrap_or_default();
        // Queue::new fails only for sizes that are not a power of two, which devices never offer.
        let queues = sizes.iter().filter_map(|&s| Queue::new(s).ok()).collect();
        MmioTransport {
            device,
            interrupt,
            mem,
            queues,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    fn with_device<T>(&self, f: impl FnOnce(&mut dyn VirtioDevice) -> T) -> Option<T> {
        self.device.lock().ok().map(|mut d| f(&mut *d))
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // The driver may select and program queues only before DRIVER_OK.
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A driver read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            let off = offset - REG_CONFIG;
            if self.with_device(|d| d.read_config(off, data)).is_none() {
                data.fill(0);
            }
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let value = match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.with_device(|d| d.device_type()).unwrap_or(0),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = self.with_device(|d| d.features()).unwrap_or(0);
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self.queues.get(self.queue_sel as usize).map_or(0, |q| q.max_size() as u32),
            REG_QUEUE_READY => self.queues.get(self.queue_sel as usize).map_or(0, |q| q.ready() as u32),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A driver write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            let off = offset - REG_CONFIG;
            self.with_device(|d| d.write_config(off, data));
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else { return };
        let v = u32::from_le_bytes(bytes);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                let offered = self.with_device(|d| d.features()).unwrap_or(0);
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                // A driver can only accept what was offered.
                self.driver_features = (self.driver_features & !mask) | ((u64::from(v) << shift) & offered);
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_DESC_LOW => self.selected_queue().map_or((), |q| q.set_desc_table_address(Some(v), None)),
            REG_QUEUE_DESC_HIGH => self.selected_queue().map_or((), |q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_AVAIL_LOW => self.selected_queue().map_or((), |q| q.set_avail_ring_address(Some(v), None)),
            REG_QUEUE_AVAIL_HIGH => self.selected_queue().map_or((), |q| q.set_avail_ring_address(None, Some(v))),
            REG_QUEUE_USED_LOW => self.selected_queue().map_or((), |q| q.set_used_ring_address(Some(v), None)),
            REG_QUEUE_USED_HIGH => self.selected_queue().map_or((), |q| q.set_used_ring_address(None, Some(v))),
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            return;
        }
        // Status bits only ever get added, in the order the spec gives.
        let added = v & !self.status;
        let allowed = match added {
            STATUS_ACKNOWLEDGE => self.status == 0,
            STATUS_DRIVER => self.status == STATUS_ACKNOWLEDGE,
            STATUS_FEATURES_OK => self.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER,
            STATUS_DRIVER_OK => self.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            0 => true,
            _ => false,
        };
        if !allowed || v & self.status != self.status {
            return;
        }
        self.status = v;
        if added == STATUS_DRIVER_OK {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let valid = self.queues.iter().all(|q| !q.ready() || q.is_valid(&self.mem));
        if !valid {
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        let mut queues: Vec<Queue> = self.queues.iter_mut().map(std::mem::take).collect();
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let activation = Activation { mem: self.mem.clone(), queues, features: self.driver_features };
        self.with_device(|d| d.activate(activation));
        self.activated = true;
    }

    fn reset(&mut self) {
        self.with_device(|d| d.reset());
        let sizes: Vec<u16> = self.with_device(|d| d.queue_max_sizes().to_vec()).unwrap_or_default();
        self.queues = sizes.iter().filter_map(|&s| Queue::new(s).ok()).collect();
        self.interrupt.ack(u32::MAX);
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.activated = false;
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// Whether the driver has set DRIVER_OK and the device runs.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The transport's state, with the device's queues if it runs. The device must be idle
    /// (the VM paused, the event loop out of it).
    pub fn save_state(&self) -> TransportState {
        let queues = if self.activated {
            self.with_device(|d| d.queues().map(|qs| qs.iter().map(QueueSnapshot::from).collect()))
                .flatten()
                .unwrap_or_default()
        } else {
            self.queues.iter().map(QueueSnapshot::from).collect()
        };
        TransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            queues,
        }
    }

    /// Puts a fresh transport into a saved state; an activated device gets its queues back and
    /// hears that it was restored.
    pub fn restore_state(&mut self, state: &TransportState) -> Result<(), Error> {
        let max_sizes: Vec<u16> = self.with_device(|d| d.queue_max_sizes().to_vec()).unwrap_or_default();
        let saved_sizes: Vec<u16> = state.queues.iter().map(|q| q.max_size).collect();
        if saved_sizes != max_sizes {
            return Err(Error::State(format!("queues {saved_sizes:?}, the device has {max_sizes:?}")));
        }
        let offered = self.with_device(|d| d.features()).unwrap_or(0);
        if state.driver_features & !offered != 0 {
            return Err(Error::State(format!("features {:#x} were not offered", state.driver_features)));
        }
        let mut queues = state.queues.iter().map(QueueSnapshot::to_queue).collect::<Result<Vec<_>, _>>()?;
        if state.activated && !queues.iter().all(|q| !q.ready() || q.is_valid(&self.mem)) {
            return Err(Error::State("a ready queue lies outside guest memory".into()));
        }
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.activated = state.activated;
        // The status first: what `restored` raises must not be cleared by it.
        self.interrupt.restore(state.interrupt_status)?;
        if state.activated {
            for q in &mut queues {
                q.set_event_idx(state.driver_features & VIRTIO_RING_F_EVENT_IDX != 0);
            }
            let activation = Activation { mem: self.mem.clone(), queues, features: state.driver_features };
            let interrupt = self.interrupt.clone();
            self.with_device(|d| {
                d.activate(activation);
                d.restored(&interrupt)
            })
            .unwrap_or(Ok(()))?;
        } else {
            self.queues = queues;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::{Error, VIRTIO_F_VERSION_1};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Dummy {
        activated: Option<(usize, u64)>,
        resets: u32,
        queues: Vec<Queue>,
        restored: u32,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0x5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data)
        }
        fn activate(&mut self, a: Activation) {
            self.activated = Some((a.queues.len(), a.features));
            self.queues = a.queues;
        }
        fn process_queue(&mut self, _: usize, _: &Interrupt) -> Result<(), Error> {
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated = None;
        }
        fn queues(&self) -> Option<&[Queue]> {
            self.activated.map(|_| self.queues.as_slice())
        }
        fn restored(&mut self, _: &Interrupt) -> Result<(), Error> {
            self.restored += 1;
            Ok(())
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::default()));
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        (MmioTransport::new(dev.clone(), irq, mem), dev)
    }

    #[test]
    fn identity_and_features() {
        let (mut t, _) = setup();
        assert_eq!(rd(&mut t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!(rd(&mut t, REG_VERSION), 2);
        assert_eq!(rd(&mut t, REG_DEVICE_ID), 42);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 5);
        wr(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, REG_DEVICE_FEATURES), 1);
        let mut b = [0u8; 2];
        t.read(REG_CONFIG + 2, &mut b);
        assert_eq!(b, [3, 4]);
        t.read(REG_CONFIG + 1000, &mut b);
        assert_eq!(b, [0, 0]);
        // Short register reads get zeros, not a panic.
        let mut one = [9u8; 1];
        t.read(REG_MAGIC, &mut one);
        assert_eq!(one, [0]);
    }

    fn drive_to_ok(t: &mut MmioTransport) {
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, REG_DRIVER_FEATURES_SEL, 0);
        wr(t, REG_DRIVER_FEATURES, 0xffff_ffff);
        wr(t, REG_DRIVER_FEATURES_SEL, 1);
        wr(t, REG_DRIVER_FEATURES, 1);
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        for (q, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            wr(t, REG_QUEUE_SEL, q);
            wr(t, REG_QUEUE_NUM, 8);
            wr(t, REG_QUEUE_DESC_LOW, base);
            wr(t, REG_QUEUE_AVAIL_LOW, base + 0x800);
            wr(t, REG_QUEUE_USED_LOW, base + 0x1000);
            wr(t, REG_QUEUE_READY, 1);
        }
        wr(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    #[test]
    fn activation_and_reset() {
        let (mut t, dev) = setup();
        drive_to_ok(&mut t);
        assert!(t.is_activated());
        // Only offered features are accepted.
        assert_eq!(dev.lock().unwrap().activated, Some((2, VIRTIO_F_VERSION_1 | 0x5)));
        // Queues cannot be reprogrammed while running.
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_NUM, 2);
        wr(&mut t, REG_STATUS, 0);
        assert!(!t.is_activated());
        assert_eq!(dev.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn out_of_order_status_is_ignored() {
        let (mut t, dev) = setup();
        wr(&mut t, REG_STATUS, STATUS_DRIVER_OK);
        assert_eq!(rd(&mut t, REG_STATUS), 0);
        assert!(dev.lock().unwrap().activated.is_none());
        // A queue that points outside guest memory makes the device need a reset.
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        wr(&mut t, REG_QUEUE_SEL, 0);
        wr(&mut t, REG_QUEUE_NUM, 8);
        wr(&mut t, REG_QUEUE_DESC_LOW, 0xffff_0000);
        wr(&mut t, REG_QUEUE_READY, 1);
        wr(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(!t.is_activated());
        assert_ne!(rd(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn state_survives_a_restore() {
        let (mut t, dev) = setup();
        drive_to_ok(&mut t);
        dev.lock().unwrap().queues[0].set_next_avail(3);
        dev.lock().unwrap().queues[1].set_next_used(5);
        t.interrupt.trigger(crate::vmm::devices::virtio::INT_USED_RING).unwrap();
        let saved = t.save_state();
        assert!(saved.activated);
        assert_eq!(saved.queues.len(), 2);
        assert_eq!((saved.queues[0].next_avail, saved.queues[1].next_used), (3, 5));

        let (mut t2, dev2) = setup();
        t2.restore_state(&saved).unwrap();
        assert!(t2.is_activated());
        {
            let d = dev2.lock().unwrap();
            assert_eq!(d.activated, Some((2, VIRTIO_F_VERSION_1 | 0x5)));
            assert_eq!(d.restored, 1);
            assert_eq!(d.queues[0].next_avail(), 3);
        }
        assert_eq!(rd(&mut t2, REG_STATUS), rd(&mut t, REG_STATUS));
        assert_eq!(rd(&mut t2, REG_INTERRUPT_STATUS), 1);
        assert_eq!(t2.save_state(), saved);

        // A transport the driver has not finished with comes back as it was, device idle.
        let (mut t3, _) = setup();
        wr(&mut t3, REG_STATUS, STATUS_ACKNOWLEDGE);
        wr(&mut t3, REG_QUEUE_SEL, 1);
        wr(&mut t3, REG_QUEUE_NUM, 4);
        let half = t3.save_state();
        let (mut t4, dev4) = setup();
        t4.restore_state(&half).unwrap();
        assert!(dev4.lock().unwrap().activated.is_none());
        assert_eq!(t4.save_state(), half);
    }

    #[test]
    fn a_state_that_does_not_fit_is_refused() {
        let (mut t, _) = setup();
        drive_to_ok(&mut t);
        let saved = t.save_state();
        let check = |state: TransportState, want: &str| {
            let (mut fresh, dev) = setup();
            let err = fresh.restore_state(&state).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert!(dev.lock().unwrap().activated.is_none());
        };
        let mut fewer = saved.clone();
        fewer.queues.pop();
        check(fewer, "queues [16], the device has [16, 8]");
        let mut features = saved.clone();
        features.driver_features |= 1 << 40;
        check(features, "were not offered");
        let mut outside = saved.clone();
        outside.queues[0].desc_table = 0xffff_0000;
        check(outside, "outside guest memory");
        let mut size = saved;
        size.queues[1].size = 3;
        check(size, "virtqueue");
    }
}
