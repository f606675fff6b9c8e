#!/usr/bin/env python3
"""Checks that /dev/kvm can run a guest: a real-mode vCPU writes 0x42 to port 0x10 and halts.

Usage: python3 scripts/l1/kvm-check.py   (for example: scripts/kvm-host.sh -- python3 scripts/l1/kvm-check.py)
Prints the KVM API version and what the guest did; exits non-zero when anything is off.
"""
import ctypes
import fcntl
import mmap
import os
import struct
import sys

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_REGS = 0x8090AE81
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5

# mov al, 0x42; out 0x10, al; hlt
CODE = bytes([0xB0, 0x42, 0xE6, 0x10, 0xF4])


def main():
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    api = fcntl.ioctl(kvm, KVM_GET_API_VERSION)
    print(f"KVM API version {api}")
    if api != 12:
        return 1
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    mem_size = 0x10000
    mem = mmap.mmap(-1, mem_size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mem[0x1000:0x1000 + len(CODE)] = CODE
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = struct.pack("IIQQQ", 0, 0, 0, mem_size, addr)
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    sregs = bytearray(fcntl.ioctl(vcpu, KVM_GET_SREGS, bytes(312)))
    struct.pack_into("Q", sregs, 0, 0)  # cs.base
    struct.pack_into("H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(fcntl.ioctl(vcpu, KVM_GET_REGS, bytes(144)))
    struct.pack_into("QQ", regs, 16 * 8, 0x1000, 0x2)  # rip, rflags
    fcntl.ioctl(vcpu, KVM_SET_REGS, bytes(regs))

    seen = None
    for _ in range(10):
        fcntl.ioctl(vcpu, KVM_RUN, 0)
        reason = struct.unpack_from("I", run, 8)[0]
        if reason == KVM_EXIT_IO:
            direction, size, port, count, off = struct.unpack_from("BBHIQ", run, 32)
            seen = (port, run[off])
            print(f"guest wrote 0x{run[off]:02x} to port 0x{port:x}")
        elif reason == KVM_EXIT_HLT:
            print("guest halted")
            break
        else:
            print(f"unexpected exit reason {reason}")
            return 1
    else:
        print("guest did not halt")
        return 1
    if seen != (0x10, 0x42):
        print("guest did not write 0x42 to port 0x10")
        return 1
    print("KVM works")
    return 0


if __name__ == "__main__":
    sys.exit(main())
