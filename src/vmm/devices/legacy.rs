//! The port-I/O devices: COM1 (the debug console), the i8042 controller (the guest's reset
//! line) and the ember status port that ember-init reports readiness on.
//!
//! They are reached from vCPU threads on `KVM_EXIT_IO`. None is on a hot path: the console is
//! for debugging, and the status port sees a handful of writes per boot.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use ember_proto::{Status, STATUS_PORT};
use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::vmm::VmEvent;

/// COM1's first port.
pub const COM1_BASE: u16 = 0x3f8;
const COM1_END: u16 = COM1_BASE + 8;
/// The i8042 data port; the command port is 4 above it.
pub const I8042_BASE: u16 = 0x60;
const I8042_COMMAND: u16 = 0x64;
/// How much of the console's latest output is kept for error messages.
const CONSOLE_TAIL_BYTES: usize = 8192;

/// Raises an interrupt by writing an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the VMM's main thread that the guest asked for a reset.
pub struct ResetTrigger(pub Sender<VmEvent>);

impl Trigger for ResetTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        // The receiver is gone only while the VMM is exiting; nothing is left to tell then.
        let _ = self.0.send(VmEvent::Reset);
        Ok(())
    }
}

/// Where console output goes, plus a bounded tail of it kept in memory.
pub struct ConsoleSink {
    out: Option<Box<dyn Write + Send>>,
    tail: Arc<Mutex<VecDeque<u8>>>,
}

impl ConsoleSink {
    /// A sink writing to `out` (or nowhere) and keeping its tail in `tail`.
    pub fn new(out: Option<Box<dyn Write + Send>>, tail: Arc<Mutex<VecDeque<u8>>>) -> Self {
        ConsoleSink { out, tail }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut tail) = self.tail.lock() {
            tail.extend(buf);
            let excess = tail.len().saturating_sub(CONSOLE_TAIL_BYTES);
            tail.drain(..excess);
        }
        if let Some(out) = self.out.as_mut() {
            // A console that cannot be written (closed pipe, full disk) must not stop the guest.
            let _ = out.write_all(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
        Ok(())
    }
}

/// COM1's registers, as saved in a snapshot (the guest's 8250 driver programmed them at boot;
/// a restored UART with its interrupts off would leave the guest's console writers waiting).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// The scratch register.
    pub scratch: u8,
    /// Bytes waiting for the guest to read.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialSnapshot {
    fn from(s: SerialState) -> Self {
        SerialSnapshot {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialSnapshot> for SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor[0],
            baud_divisor_high: s.baud_divisor[1],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// The port-I/O devices of one VM.
pub struct PioDevices {
    serial: Mutex<Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>>,
    i8042: Mutex<I8042Device<ResetTrigger>>,
}

impl PioDevices {
    /// Builds the devices; `serial_irq` is the irqfd for COM1's IRQ line. With `serial`, COM1
    /// starts in that saved state (a restore).
    pub fn new(
        serial_irq: EventFd,
        console: ConsoleSink,
        events: Sender<VmEvent>,
        serial: Option<&SerialSnapshot>,
    ) -> io::Result<Self> {
        let trigger = IrqTrigger(serial_irq);
        let serial = match serial {
            None => Serial::new(trigger, console),
            Some(state) => Serial::from_state(&state.into(), trigger, vm_superio::serial::NoEvents, console)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("serial state: {e:?}")))?,
        };
        Ok(PioDevices { serial: Mutex::new(serial), i8042: Mutex::new(I8042Device::new(ResetTrigger(events))) })
    }

    /// COM1's registers (for a snapshot).
    pub fn serial_state(&self) -> Option<SerialSnapshot> {
        self.serial.lock().ok().map(|s| s.state().into())
    }

    /// Handles an `in` from `port`, filling `data`. Unclaimed ports read as all ones, as on a PC.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        let value = match port {
            COM1_BASE..COM1_END => self.serial.lock().ok().map(|mut s| s.read((port - COM1_BASE) as u8)),
            I8042_BASE | I8042_COMMAND => self.i8042.lock().ok().map(|mut d| d.read((port - I8042_BASE) as u8)),
            _ => None,
        };
        match value {
            Some(v) => {
                data.fill(0);
                data[0] = v;
            }
            None => data.fill(0xff),
        }
    }

    /// Handles an `out` of `data` to `port`. A status word from ember-init is returned for the
    /// vCPU thread to report, since it holds the exit counters.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<Status> {
        match port {
            COM1_BASE..COM1_END => {
                if let Ok(mut serial) = self.serial.lock() {
                    // An interrupt that cannot be raised leaves the guest polling; nothing else to do.
                    let _ = serial.write((port - COM1_BASE) as u8, data[0]);
                }
            }
            I8042_BASE | I8042_COMMAND => {
                if let Ok(mut dev) = self.i8042.lock() {
                    let _ = dev.write((port - I8042_BASE) as u8, data[0]);
                }
            }
            STATUS_PORT => {
                let word = <[u8; 4]>::try_from(data).ok().map(u32::from_le_bytes)?;
                return Status::decode(word);
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn devices() -> (PioDevices, std::sync::mpsc::Receiver<VmEvent>, Arc<Mutex<VecDeque<u8>>>) {
        let (tx, rx) = channel();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (PioDevices::new(evt, ConsoleSink::new(None, tail.clone()), tx, None).unwrap(), rx, tail)
    }

    #[test]
    fn status_port_reports() {
        let (dev, rx, _) = devices();
        assert_eq!(dev.write(STATUS_PORT, &Status::Ready.encode().to_le_bytes()), Some(Status::Ready));
        assert_eq!(dev.write(STATUS_PORT, &[1]), None, "not a 32-bit write");
        assert_eq!(dev.write(STATUS_PORT, &0x7f00_0000u32.to_le_bytes()), None, "unknown code");
        assert_eq!(dev.write(COM1_BASE, b"x"), None);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn i8042_reset_and_console_tail() {
        let (dev, rx, tail) = devices();
        dev.write(I8042_COMMAND, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmEvent::Reset)));
        for b in b"hello" {
            dev.write(COM1_BASE, &[*b]);
        }
        for _ in 0..CONSOLE_TAIL_BYTES {
            dev.write(COM1_BASE, b"x");
        }
        let tail = tail.lock().unwrap();
        assert_eq!(tail.len(), CONSOLE_TAIL_BYTES);
        assert!(tail.iter().all(|b| *b == b'x'));
    }

    #[test]
    fn unclaimed_ports_read_ones() {
        let (dev, _, _) = devices();
        let mut data = [0u8; 2];
        dev.read(0x70, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        let mut lsr = [0u8; 1];
        dev.read(COM1_BASE + 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
    }
}
