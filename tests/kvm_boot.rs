//! Boots the real guest kernel and ember-init on KVM through the `ember` command.
//!
//! These tests need a KVM host that runs Linux guests (hardware KVM, or the emulated host of
//! scripts/kvm-host.sh) and the guest artifacts from scripts/build-guest.sh. scripts/test.sh runs
//! them in the right place; anywhere else they fail and say why, they never skip.

mod common;
use common::{guest_dir, require_kvm_host};

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn ember(args: &[&str]) -> (Output, Duration) {
    require_kvm_host();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_GUEST_DIR", guest_dir())
        .args(args)
        .output()
        .expect("run ember");
    (out, started.elapsed())
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn field(s: &str, key: &str) -> Option<u64> {
    s.split_whitespace().filter_map(|w| w.split_once('=')).find(|(k, _)| *k == key).and_then(|(_, v)| v.parse().ok())
}

/// Boots to ready and checks the guest saw exactly the memory and vCPUs it was given.
fn boot_and_check(memory_mib: u32, vcpus: u32) {
    let (m, v) = (memory_mib.to_string(), vcpus.to_string());
    let (out, _) = ember(&["boot", "--memory-mib", &m, "--vcpus", &v, "--until-ready", "--console", "off"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "ember boot failed: {}\n{stdout}\n{stderr}", out.status);
    assert_eq!(field(&stdout, "memory_mib"), Some(u64::from(memory_mib)), "{stdout}");
    assert_eq!(field(&stdout, "vcpus"), Some(u64::from(vcpus)), "{stdout}");
    assert!(field(&stdout, "exits").is_some_and(|e| e > 0), "KVM counted no exits: {stdout}");
    let last = stdout.lines().last().unwrap_or("");
    assert!(last.starts_with("ready_ms=") && field(last, "ready_ms").is_some(), "last line: {last:?}");
}

#[test]
fn boots_128_mib_1_vcpu() {
    boot_and_check(128, 1);
}

#[test]
fn boots_1024_mib_2_vcpus() {
    boot_and_check(1024, 2);
}

#[test]
fn guest_powers_off_cleanly_with_console() {
    let console = std::env::temp_dir().join(format!("ember-console-{}", std::process::id()));
    let (out, _) = ember(&["boot", "--console", console.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}\n{log}");
    assert!(stderr.contains("guest powered off"), "{stderr}");
    assert!(log.contains("ember-init: ready memory_mib=128 vcpus=1"), "console: {log}");
}

#[test]
fn kernel_panic_is_a_crash() {
    // No such root device: the kernel panics, and panic=-1 resets the VM at once.
    let cmdline = "console=ttyS0 quiet reboot=k panic=-1 pci=off root=/dev/vdz ro";
    let (out, took) = ember(&["boot", "--cmdline", cmdline, "--console", "off", "--boot-timeout", "300"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("guest kernel panic: Kernel panic - not syncing"), "{stderr}");
    assert!(stderr.contains("VFS: Unable to mount root fs"), "{stderr}");
    assert!(took < Duration::from_secs(300), "a panic must end the VM long before the boot timeout");
}

#[test]
fn guest_that_never_reaches_init_times_out() {
    // rootwait on a root device that never appears: the kernel waits forever before init.
    let cmdline = "console=ttyS0 quiet reboot=k panic=-1 pci=off root=/dev/vdz rootwait ro";
    let (out, took) = ember(&["boot", "--cmdline", cmdline, "--console", "off", "--boot-timeout", "20"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stderr.contains("did not reach ember-init within 20 s"), "{stderr}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn init_failure_is_reported() {
    // ember-init runs the command after `--` and powers off with its status.
    let cmdline = format!("{} -- /nonexistent-command", ember::vmm::DEFAULT_CMDLINE);
    let (out, _) = ember(&["boot", "--cmdline", &cmdline, "--console", "off"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(stderr.contains("guest powered off with status"), "{stderr}");
}
