//! What the KVM integration tests share: where the guest artifacts are, and the check that this
//! machine can boot Linux guests at all (these tests fail with a clear message, never skip).
#![allow(dead_code)]

pub mod agent;

use std::path::{Path, PathBuf};

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
