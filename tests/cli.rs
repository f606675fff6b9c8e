//! The `ember` command's argument checks. These need no KVM: bad arguments are refused before
//! a VM is created.

use std::process::{Command, Output};

fn ember(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember")).args(args).output().expect("run ember")
}

fn assert_refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[test]
fn memory_out_of_range() {
    for mib in ["127", "10241", "0"] {
        let out = ember(&["boot", "--memory-mib", mib, "--kernel", "/nonexistent"]);
        assert_refused(&out, "memory must be between 128 and 10240 MiB");
    }
}

#[test]
fn vcpus_out_of_range() {
    let out = ember(&["boot", "--vcpus", "0", "--kernel", "/nonexistent"]);
    assert_refused(&out, "vCPUs must be between 1 and 32");
}

#[test]
fn missing_kernel() {
    let out = ember(&["boot", "--kernel", "/nonexistent/vmlinux"]);
    assert_refused(&out, "cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn non_elf_kernel() {
    let path = std::env::temp_dir().join(format!("ember-not-elf-{}", std::process::id()));
    std::fs::write(&path, b"#!/bin/sh\necho not a kernel\n").unwrap();
    let out = ember(&["boot", "--kernel", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_refused(&out, "is not an uncompressed ELF vmlinux");
}

#[test]
fn unparsable_number() {
    let out = ember(&["boot", "--memory-mib", "lots"]);
    assert_eq!(out.status.code(), Some(1), "usage errors are VMM errors, not guest crashes");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'lots'"));
}
