//! Contracts shared by the host VMM (`ember`) and the guest's PID 1 (`ember-init`).
//!
//! This crate holds only constants and plain encodings, no I/O, so that both sides agree on
//! them by construction.
//!
//! # The status port
//! ember-init reports its progress with 32-bit `out` instructions to [`STATUS_PORT`], a reserved
//! I/O port that no Linux driver probes. Each write is one VM exit that the VMM handles in its
//! vCPU thread, so the host learns of readiness without the serial console, as Firecracker's boot
//! timer does. A value is `code << 24 | argument`, with the argument in the low 24 bits.
#![deny(missing_docs)]

pub mod runtime;

/// The I/O port that ember-init writes its status words to (4 bytes wide).
pub const STATUS_PORT: u16 = 0x0440;

/// What a status word reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The memory the guest saw in its firmware memory map, in MiB.
    MemoryMib(u32),
    /// The number of online vCPUs the guest saw.
    Vcpus(u32),
    /// ember-init has mounted its filesystems and is ready for work.
    Ready,
    /// ember-init is powering the VM off; the argument is its exit status (0 = clean).
    PowerOff(u32),
}

const CODE_MEMORY_MIB: u32 = 0x01;
const CODE_VCPUS: u32 = 0x02;
const CODE_READY: u32 = 0x03;
const CODE_POWER_OFF: u32 = 0x04;
const ARG_MASK: u32 = 0x00ff_ffff;

impl Status {
    /// Encodes the status as the 32-bit word written to [`STATUS_PORT`].
    /// Arguments wider than 24 bits are saturated.
    pub fn encode(self) -> u32 {
        let (code, arg) = match self {
            Status::MemoryMib(v) => (CODE_MEMORY_MIB, v),
            Status::Vcpus(v) => (CODE_VCPUS, v),
            Status::Ready => (CODE_READY, 0),
            Status::PowerOff(v) => (CODE_POWER_OFF, v),
        };
        (code << 24) | arg.min(ARG_MASK)
    }

    /// Decodes a word written to [`STATUS_PORT`]; `None` for an unknown code.
    pub fn decode(word: u32) -> Option<Status> {
        let arg = word & ARG_MASK;
        match word >> 24 {
            CODE_MEMORY_MIB => Some(Status::MemoryMib(arg)),
            CODE_VCPUS => Some(Status::Vcpus(arg)),
            CODE_READY => Some(Status::Ready),
            CODE_POWER_OFF => Some(Status::PowerOff(arg)),
            _ => None,
        }
    }
}

/// Kernel command-line parameters the VMM passes to ember-init.
pub mod cmdline {
    /// `ember.vsock=1`: the VM has a vsock device; ember-init serves [`super::ECHO_PORT`] and
    /// stays up with nothing to run until it is asked to power off.
    pub const VSOCK: &str = "ember.vsock";
    /// `ember.code=/dev/vdX`: the function's code drive, mounted read-only at /var/task.
    pub const CODE_DRIVE: &str = "ember.code";
    /// `ember.opt=/dev/vdX`: the function's layers, merged into one drive, mounted read-only
    /// at /opt.
    pub const OPT_DRIVE: &str = "ember.opt";
    /// `ember.tmp=/dev/vdX`: the instance's scratch drive, mounted read-write at /tmp.
    pub const TMP_DRIVE: &str = "ember.tmp";
    /// `ember.runtime=1`: ember-init connects the runtime channel ([`super::runtime`]) to the
    /// host, starts the runtime it is sent and serves the Lambda Runtime API.
    pub const RUNTIME: &str = "ember.runtime";
    /// `ember.image=1`: the code drive is a container image's root: once it is mounted at
    /// /var/task, ember-init moves /proc, /sys, /dev, /run and /tmp into it and makes it the
    /// root, where the runtime then starts.
    pub const IMAGE_ROOT: &str = "ember.image";
    /// `ember.snapstart=1`: this boot is an init snapshot's (SnapStart): /tmp is mounted only
    /// after a restore, and a runtime channel that breaks is connected again (a restore resets
    /// every vsock connection) and must then start with a `Restore` frame.
    pub const SNAP_START: &str = "ember.snapstart";
}

/// The vsock port of ember-init's echo service: every byte a host connection sends comes back.
pub const ECHO_PORT: u32 = 52;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for s in [
            Status::MemoryMib(128),
            Status::MemoryMib(10240),
            Status::Vcpus(6),
            Status::Ready,
            Status::PowerOff(0),
            Status::PowerOff(3),
        ] {
            assert_eq!(Status::decode(s.encode()), Some(s));
        }
    }

    #[test]
    fn unknown_code_and_saturation() {
        assert_eq!(Status::decode(0x7f00_0000), None);
        assert_eq!(Status::decode(0), None);
        assert_eq!(Status::MemoryMib(u32::MAX).encode() & ARG_MASK, ARG_MASK);
    }
}
