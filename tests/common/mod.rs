//! What the KVM integration tests share: where the guest artifacts are, and the check that this
//! machine can boot Linux guests at all (these tests fail with a clear message, never skip).
#![allow(dead_code)]

pub mod agent;
pub mod registry;
pub mod script;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// The guest artifacts: $EMBER_GUEST_DIR or target/guest.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("EMBER_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/guest"))
}

/// Fails the test with a clear message unless this machine can boot Linux guests on KVM and
/// the guest artifacts are built.
pub fn require_kvm_host() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "no /dev/kvm: KVM tests need a KVM host; run them with scripts/test.sh, which starts the \
         emulated one (scripts/kvm-host.sh) where the machine has no hardware KVM"
    );
    assert!(
        !Path::new("/sys/module/kvm_pvm").exists(),
        "/dev/kvm here is kvm_pvm, which cannot run a Linux guest: run the KVM tests with \
         scripts/test.sh, which runs them inside the emulated KVM host (scripts/kvm-host.sh)"
    );
    for artifact in ["vmlinux", "rootfs.ext4"] {
        let path = guest_dir().join(artifact);
        assert!(path.exists(), "{} is missing: run scripts/build-guest.sh first", path.display());
    }
}

/// Connects to guest vsock port `port` through the hybrid vsock socket `uds` of the VM that
/// `child` runs (`CONNECT <port>` until a guest listener answers `OK`), retrying while the guest
/// boots or restores; fails the test if `child` exits or `patience` passes first.
pub fn connect_vsock(child: &mut Child, uds: &Path, port: u32, patience: Duration) -> UnixStream {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the VM's ember process exited early: {status}");
        }
        if let Ok(mut s) = UnixStream::connect(uds) {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            // The reader buffers nothing past the line: the guest has not been sent anything
            // yet, so nothing can be in flight.
            if reader.read_line(&mut line).is_ok() && line.starts_with("OK ") {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "the guest's vsock port {port} never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
}
