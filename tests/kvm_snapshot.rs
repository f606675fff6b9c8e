//! Snapshot and restore of a booted guest, through `ember boot --snapshot-to` and
//! `ember boot --restore`: the clones run where the original stopped, answer on vsock, and a
//! damaged snapshot is refused with a reason.
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;
use common::{guest_dir, require_kvm_host};

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const MEMORY_MIB: u64 = 256;

fn ember() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ember"));
    cmd.env("EMBER_GUEST_DIR", guest_dir());
    cmd
}

/// A scratch directory on the KVM host's own disk (Unix sockets cannot live on 9p shares).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ember-snaptest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A restored guest, killed on drop.
struct Clone {
    child: Child,
    uds: PathBuf,
}

impl Clone {
    fn restore(snapshot: &Path, uds: PathBuf) -> Clone {
        let mut child = ember()
            .args(["boot", "--console", "off", "--restore"])
            .arg(snapshot)
            .arg("--vsock-uds")
            .arg(&uds)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run ember");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("restore_ms="), "restore printed {line:?}");
        Clone { child, uds }
    }

    /// Connects to the guest's echo service.
    fn connect(&mut self) -> UnixStream {
        common::connect_vsock(&mut self.child, &self.uds, ember_proto::ECHO_PORT, Duration::from_secs(60))
    }
}

impl Drop for Clone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.uds);
    }
}

fn echo(s: &mut UnixStream, rounds: u32) {
    let mut reply = [0u8; 100];
    for i in 0..rounds {
        let mut msg = [0u8; 100];
        msg[..4].copy_from_slice(&i.to_le_bytes());
        msg[4..].fill(i as u8);
        s.write_all(&msg).unwrap();
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply, msg, "round trip {i}");
    }
}

/// Fails restoring `snapshot` and returns what ember said.
fn refused(snapshot: &Path, uds: &Path) -> String {
    let out = ember()
        .args(["boot", "--console", "off", "--restore"])
        .arg(snapshot)
        .arg("--vsock-uds")
        .arg(uds)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a damaged snapshot was restored: {}", stdout_of(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn snapshot_restores_into_clones_and_damage_is_refused() {
    require_kvm_host();
    let dir = scratch("main");
    let snapshot = dir.join("snap");

    // Boot, and snapshot the guest as soon as ember-init is ready.
    let out = ember()
        .args(["boot", "--console", "off", "--memory-mib", &MEMORY_MIB.to_string(), "--vsock-uds"])
        .arg(dir.join("boot.sock"))
        .arg("--snapshot-to")
        .arg(&snapshot)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "ember boot --snapshot-to failed: {}", stdout_of(&out));
    assert!(stdout_of(&out).contains("snapshot_ms="), "{}", stdout_of(&out));

    // The memory file is as long as guest memory and sparse where the guest wrote nothing.
    let memory = std::fs::metadata(snapshot.join("memory")).unwrap();
    assert_eq!(memory.len(), MEMORY_MIB << 20);
    assert!(memory.blocks() * 512 < memory.len() / 2, "memory file not sparse: {} blocks", memory.blocks());

    // Two clones of one snapshot run side by side, each on its own socket.
    let mut a = Clone::restore(&snapshot, dir.join("a.sock"));
    let mut b = Clone::restore(&snapshot, dir.join("b.sock"));
    let mut sa = a.connect();
    let mut sb = b.connect();
    echo(&mut sa, 200);
    echo(&mut sb, 200);
    // A second connection to the same clone works too (the vsock device is whole, not just
    // its first connection).
    echo(&mut a.connect(), 10);
    drop((sa, sb, a, b));

    // Damage: a flipped byte in the state, a state cut short, a memory file of the wrong size.
    let damaged = dir.join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    let state = std::fs::read(snapshot.join("state")).unwrap();
    std::fs::copy(snapshot.join("memory"), damaged.join("memory")).unwrap();
    let mut flipped = state.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    std::fs::write(damaged.join("state"), &flipped).unwrap();
    let err = refused(&damaged, &dir.join("d.sock"));
    assert!(err.contains("checksum mismatch"), "{err}");
    std::fs::write(damaged.join("state"), &state[..state.len() / 2]).unwrap();
    let err = refused(&damaged, &dir.join("d.sock"));
    assert!(err.contains("truncated"), "{err}");
    std::fs::write(damaged.join("state"), &state).unwrap();
    std::fs::OpenOptions::new().write(true).open(damaged.join("memory")).unwrap().set_len(1 << 20).unwrap();
    let err = refused(&damaged, &dir.join("d.sock"));
    assert!(err.contains("memory file is 1048576 bytes"), "{err}");

    std::fs::remove_dir_all(&dir).unwrap();
}
