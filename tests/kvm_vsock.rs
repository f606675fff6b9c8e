//! The vsock channel between a host process and ember-init, through a booted guest: the hybrid
//! Unix-socket host side, the guest's virtio-vsock driver and ember-init's echo service.
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;
use common::{guest_dir, require_kvm_host};

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A booted guest with a vsock device, killed on drop.
struct Guest {
    child: Child,
    uds: PathBuf,
}

impl Guest {
    fn boot(name: &str) -> Guest {
        require_kvm_host();
        // Unix sockets cannot live on the emulated host's 9p shares: use its own /tmp.
        let uds = std::env::temp_dir().join(format!("ember-{name}-{}.sock", std::process::id()));
        let child = Command::new(env!("CARGO_BIN_EXE_ember"))
            .env("EMBER_GUEST_DIR", guest_dir())
            .args(["boot", "--console", "off", "--vsock-uds"])
            .arg(&uds)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run ember");
        Guest { child, uds }
    }

    /// Connects to guest port `port`, retrying while the guest boots.
    fn connect(&mut self, port: u32) -> UnixStream {
        common::connect_vsock(&mut self.child, &self.uds, port, Duration::from_secs(120))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.uds);
    }
}

/// FNV-1a, enough to compare two streams.
fn checksum(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash = (*hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
}

#[test]
fn round_trips_and_bulk_transfer() {
    let mut guest = Guest::boot("echo");
    let mut s = guest.connect(ember_proto::ECHO_PORT);

    // 2,000 small round trips, each checked.
    let mut reply = [0u8; 64];
    for i in 0..2_000u32 {
        let mut msg = [0u8; 64];
        msg[..4].copy_from_slice(&i.to_le_bytes());
        msg[4..].fill((i % 251) as u8);
        s.write_all(&msg).unwrap();
        s.read_exact(&mut reply).unwrap();
        assert_eq!(reply, msg, "round trip {i}");
    }

    // 16 MiB through the guest and back, written and read concurrently: 64 times the guest's
    // credit window, so that the flow control runs out and comes back many times over.
    const TOTAL: usize = 16 << 20;
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut chunk = vec![0u8; 256 << 10];
        for _ in 0..TOTAL / chunk.len() {
            for b in chunk.iter_mut() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            checksum(&mut hash, &chunk);
            writer.write_all(&chunk).unwrap();
        }
        hash
    });
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 << 10];
    while got < TOTAL {
        let n = s.read(&mut buf[..(TOTAL - got).min(256 << 10)]).unwrap();
        assert!(n > 0, "echo stream ended after {got} bytes");
        checksum(&mut hash, &buf[..n]);
        got += n;
    }
    assert_eq!(sender.join().unwrap(), hash, "16 MiB came back changed");
}

#[test]
fn host_is_not_made_to_buffer_for_a_guest_that_stops_reading() {
    let mut guest = Guest::boot("stall");
    let s = guest.connect(ember_proto::ECHO_PORT);
    // Write without ever reading the echo: the guest's echo stalls on its own full send
    // credit, stops reading, and so the host's writes must stop being accepted.
    s.set_nonblocking(true).unwrap();
    let mut s = s;
    let chunk = vec![0x5au8; 64 << 10];
    let mut accepted = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut idle_since = Instant::now();
    while Instant::now() < deadline && idle_since.elapsed() < Duration::from_secs(5) {
        match s.write(&chunk) {
            Ok(n) => {
                accepted += n;
                idle_since = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("write: {e}"),
        }
    }
    // What was accepted sits in socket buffers and the guest's bounded credit windows, not in an
    // ever-growing queue: well under 64 MiB.
    assert!(idle_since.elapsed() >= Duration::from_secs(5), "writes never stopped ({accepted} bytes)");
    assert!(accepted < 32 << 20, "the host side took {accepted} bytes from a guest that does not read");
}
