#!/usr/bin/env python3
"""Keeps the emulated host's (L1's) kernel from patching its code as VMs and cgroups come and go.

Usage: python3 scripts/l1/hold-static-keys.py   (run by scripts/kvm-host.sh inside L1 when it
has more than one CPU; returns once the holder is in place, which stays until L1 ends)

Linux turns a static branch on or off by rewriting the instruction in place, through a
breakpoint, while the other CPUs run (text_poke_bp). With two emulated CPUs, QEMU 7.2's TCG
sometimes lets the other CPU run the breakpoint after the rewrite is over, and L1 oopses
("Oops: int3") and panics. The branches that flipped there under load are KVM's local-APIC
ones (their count goes 0 -> 1 when a VM's vCPU is created, back to 0 once its guest enables
the APIC) and the scheduler's CFS bandwidth one (0 -> 1 when a cgroup gets a CPU quota, as
every instance's does). This holds each count above zero for L1's life, so that they never
flip again: a VM with an in-kernel irqchip and one vCPU that never runs (its APIC stays
software-disabled), and a cgroup with a CPU quota that has no process in it. Neither changes
what the tests see.
"""
import fcntl
import os
import signal
import sys

KVM_CREATE_VM = 0xAE01
KVM_CREATE_IRQCHIP = 0xAE60
KVM_CREATE_VCPU = 0xAE41
CGROUP = "/sys/fs/cgroup/ember-l1-static-keys"


def main():
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    with open("/sys/fs/cgroup/cgroup.subtree_control", "w") as f:
        f.write("+cpu")
    os.makedirs(CGROUP, exist_ok=True)
    with open(os.path.join(CGROUP, "cpu.max"), "w") as f:
        f.write("1000000 100000")
    if os.fork() != 0:
        return 0
    # The holder: the child inherits the VM's descriptors (kvm, vm, vcpu) and keeps them open
    # until L1 ends.
    os.setsid()
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        signal.pause()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as e:
        print(f"hold-static-keys: {e}", file=sys.stderr)
        sys.exit(1)
