//! The seccomp filters of an `ember vmm` process: one per kind of thread, written as data.
//!
//! The main thread installs the setup filter ([`Thread::Setup`]) before it reads its spec (in
//! a spare, long before): building the VM (its files opened, guest memory mapped, vCPUs,
//! devices and threads made) runs under it. Each thread of the VM then installs its own on
//! top before it does its work (filters stack, so its own is what it gets): a vCPU thread
//! before its first `KVM_RUN` (so before the guest runs an instruction), the device event
//! loop before its first wait, the control thread before its first read, the main thread once
//! the VM is built and its threads started. A system call outside the calling thread's list
//! kills the whole process (`SECCOMP_RET_KILL_PROCESS`): the agent sees the VMM die of
//! `SIGSYS` and reports the instance's invocation as a crash naming seccomp. Only `ember vmm`
//! processes install them (see [`super::process`]); VMs run inside other processes (tests,
//! `ember bench`) do not.
//!
//! The lists were derived from what the VMM calls (its threads traced under `strace -f` and
//! with the filters in log mode, `EMBER_SECCOMP_LOG=1`, over the KVM test suite), and are kept
//! to what each thread needs. Arguments are checked where they matter: `ioctl` by request
//! (only the KVM calls the thread makes, and `FIONBIO`; during setup, KVM's requests alone),
//! `mmap` and `mprotect` never with `PROT_EXEC`, `socket` only `AF_UNIX`, `fcntl` only the
//! commands std uses. Once its own filter is on, no thread can create a VM, a vCPU, a memory
//! slot or a thread.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The variable that turns a filter miss into a kernel log line instead of the process's death
/// (to derive the lists, never in production).
pub const LOG_VAR: &str = "EMBER_SECCOMP_LOG";

/// The variable that names a vsock port whose connection by the guest makes the VMM break
/// its own filter: a test of the filter and of the agent's report of it (the hostile-guest
/// suite's), never set in production.
pub const TEST_TRAP_VAR: &str = "EMBER_TEST_SECCOMP_TRAP_PORT";

/// The port of [`TEST_TRAP_VAR`], if set.
pub fn test_trap_port() -> Option<u32> {
    static PORT: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| std::env::var(TEST_TRAP_VAR).ok().and_then(|p| p.parse().ok()))
}

/// Makes a system call no thread's filter allows (an IPv4 socket): under a filter, the process
/// dies of SIGSYS here.
pub fn break_filter() {
    // SAFETY: socket takes no pointers; a descriptor it returns (without a filter) is closed.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if fd >= 0 {
        // SAFETY: fd was just opened here and is closed once.
        unsafe { libc::close(fd) };
    }
}

/// The kinds of thread in a VMM process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Thread {
    /// The main thread from before its spec until the VM is built: reads the spec, opens the
    /// VM's files, maps guest memory, creates the vCPUs, devices and threads. Every thread
    /// starts under it (filters stack: a thread's own narrows it), so it allows what any
    /// thread's does too.
    Setup,
    /// The main thread, once the VM is built: waits for the VM's events, pauses it and writes
    /// the snapshot, writes the exit line.
    Main,
    /// The control thread: reads the agent's requests, records the working set.
    Control,
    /// The device event loop: virtio queues, the block files, the vsock's Unix sockets.
    Events,
    /// A vCPU: `KVM_RUN` and its exits (serial, i8042, virtio-mmio registers), its state at a
    /// snapshot.
    Vcpu,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The rules do not make a filter (a bug in the lists).
    #[error("seccomp filter of the {0:?} thread: {1}")]
    Build(Thread, seccompiler::BackendError),
    /// The filter does not compile to BPF.
    #[error("seccomp filter of the {0:?} thread: {1}")]
    Compile(Thread, seccompiler::BackendError),
    /// The kernel refused it.
    #[error("installing the seccomp filter of the {0:?} thread: {1}")]
    Install(Thread, seccompiler::Error),
}

/// The compiled filters of every thread kind, made once (before the spec comes, in a spare)
/// and installed by each thread as it starts.
#[derive(Clone, Debug)]
pub struct Filters {
    setup: BpfProgram,
    main: BpfProgram,
    control: BpfProgram,
    events: BpfProgram,
    vcpu: BpfProgram,
}

impl Filters {
    /// Compiles the five filters; a miss kills the process, or (with [`LOG_VAR`] set) is
    /// logged by the kernel.
    pub fn new() -> Result<Filters, Error> {
        let log = std::env::var_os(LOG_VAR).is_some();
        let build = |thread| compile(thread, log);
        Ok(Filters {
            setup: build(Thread::Setup)?,
            main: build(Thread::Main)?,
            control: build(Thread::Control)?,
            events: build(Thread::Events)?,
            vcpu: build(Thread::Vcpu)?,
        })
    }

    /// Installs `thread`'s filter on the calling thread (setting `no_new_privs`, which a filter
    /// needs). It cannot be removed.
    pub fn install(&self, thread: Thread) -> Result<(), Error> {
        let program = match thread {
            Thread::Setup => &self.setup,
            Thread::Main => &self.main,
            Thread::Control => &self.control,
            Thread::Events => &self.events,
            Thread::Vcpu => &self.vcpu,
        };
        seccompiler::apply_filter(program).map_err(|e| Error::Install(thread, e))
    }
}

/// The filters of this process, once [`enable`] has been called: only in an `ember vmm`.
static ENABLED: std::sync::OnceLock<Filters> = std::sync::OnceLock::new();

/// Makes every thread of the VMs this process runs from now on install its filter, and
/// installs none yet. Called once, by `ember vmm`.
pub fn enable(filters: Filters) {
    let _ = ENABLED.set(filters);
}

/// Installs `thread`'s filter on the calling thread if this process [enabled](enable) them.
pub fn install(thread: Thread) -> Result<(), Error> {
    match ENABLED.get() {
        Some(filters) => filters.install(thread),
        None => Ok(()),
    }
}

fn compile(thread: Thread, log: bool) -> Result<BpfProgram, Error> {
    let miss = if log { SeccompAction::Log } else { SeccompAction::KillProcess };
    let filter = SeccompFilter::new(rules(thread), miss, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| Error::Build(thread, e))?;
    filter.try_into().map_err(|e| Error::Compile(thread, e))
}

/// A system call allowed with any arguments.
fn any(nr: libc::c_long) -> (i64, Vec<SeccompRule>) {
    (nr, Vec::new())
}

/// A system call allowed when argument `arg` (a 64-bit value) is one of `values`.
fn one_of(nr: libc::c_long, arg: u8, values: &[u64]) -> (i64, Vec<SeccompRule>) {
    let rules = values
        .iter()
        .map(|&v| SeccompRule::new(vec![Cond::new(arg, Len::Qword, Op::Eq, v).expect("a valid condition")]))
        .collect::<Result<_, _>>()
        .expect("a valid rule");
    (nr, rules)
}

/// A rule: argument `arg` masked with `mask` is `value`.
fn masked(arg: u8, mask: u64, value: u64) -> SeccompRule {
    SeccompRule::new(vec![Cond::new(arg, Len::Qword, Op::MaskedEq(mask), value).expect("a valid condition")])
        .expect("a valid rule")
}

/// A system call allowed when argument `arg` has none of the bits of `mask`.
fn without_bits(nr: libc::c_long, arg: u8, mask: u64) -> (i64, Vec<SeccompRule>) {
    let rule = SeccompRule::new(vec![Cond::new(arg, Len::Qword, Op::MaskedEq(mask), 0).expect("a valid condition")])
        .expect("a valid rule");
    (nr, vec![rule])
}

/// What every thread does as a Rust thread: allocate and free memory (never executable),
/// wait on locks and channels, read the clock, print to stderr, take a signal (the vCPU kick),
/// end.
fn common() -> Vec<(i64, Vec<SeccompRule>)> {
    let exec = libc::PROT_EXEC as u64;
    vec![
        // Locks, condition variables, channels.
        any(libc::SYS_futex),
        // The allocator: new arenas and large blocks, never executable...
        without_bits(libc::SYS_mmap, 2, exec),
        without_bits(libc::SYS_mprotect, 2, exec),
        any(libc::SYS_munmap),
        any(libc::SYS_brk),
        // ...and giving memory back (MADV_DONTNEED, also on a thread's exit).
        one_of(libc::SYS_madvise, 2, &[libc::MADV_DONTNEED as u64, libc::MADV_FREE as u64]),
        any(libc::SYS_mremap),
        // Clocks the vDSO may fall back to, and timed waits.
        any(libc::SYS_clock_gettime),
        any(libc::SYS_clock_nanosleep),
        any(libc::SYS_nanosleep),
        any(libc::SYS_sched_yield),
        // eprintln! (fd 2) and every other write the thread's own list allows.
        any(libc::SYS_write),
        // Closing what the thread drops (debug builds check the fd first with F_GETFD), and
        // the descriptor flags std reads and sets.
        any(libc::SYS_close),
        one_of(
            libc::SYS_fcntl,
            1,
            &[
                libc::F_GETFD as u64,
                libc::F_SETFD as u64,
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
                libc::F_DUPFD_CLOEXEC as u64,
            ],
        ),
        // The vCPU kick's handler returning; signal masks around it; a thread's alternate
        // signal stack, set up and torn down by std.
        any(libc::SYS_rt_sigreturn),
        any(libc::SYS_rt_sigprocmask),
        any(libc::SYS_sigaltstack),
        // HashMap's random keys (once per thread).
        any(libc::SYS_getrandom),
        // A thread ending; the process ending (std::process::exit, an abort's exit).
        any(libc::SYS_exit),
        any(libc::SYS_exit_group),
        // panic=abort: the abort raises SIGABRT on itself.
        any(libc::SYS_gettid),
        any(libc::SYS_getpid),
        any(libc::SYS_tgkill),
        any(libc::SYS_rt_sigaction),
    ]
}

/// The threads that start under [`Thread::Setup`] and narrow it with their own filter.
const NARROWING: [Thread; 4] = [Thread::Main, Thread::Control, Thread::Events, Thread::Vcpu];

/// What building the VM takes beyond what the threads do once it runs.
fn setup() -> Vec<(i64, Vec<SeccompRule>)> {
    vec![
        // The spec, read from the control socket (std reads a socket with recv).
        any(libc::SYS_recvfrom),
        // Naming this process once it has its spec, and each thread as std starts it; each
        // thread's own filter installed on top (no_new_privs, then the filter).
        one_of(libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64]),
        one_of(libc::SYS_seccomp, 0, &[libc::SECCOMP_SET_MODE_FILTER as u64]),
        // Lowering the file size limit to the function's (only lowering: no capabilities).
        any(libc::SYS_prlimit64),
        // The VM's construction: any KVM request (type KVMIO) on the KVM, VM and vCPU
        // descriptors (memory slots, vCPUs and their state, irqfds, ioeventfds, statistics
        // fds); each thread's own filter keeps only the few it makes afterwards.
        (libc::SYS_ioctl, vec![masked(1, 0xff00, 0xae00)]),
        // Guest memory, the snapshot's memory file mapped: never executable.
        one_of(
            libc::SYS_madvise,
            2,
            &[libc::MADV_HUGEPAGE as u64, libc::MADV_POPULATE_READ as u64, libc::MADV_POPULATE_WRITE as u64],
        ),
        // The kernel, the images, the snapshot's files: opened, sized, read.
        any(libc::SYS_openat),
        any(libc::SYS_statx),
        any(libc::SYS_newfstatat),
        any(libc::SYS_fstat),
        any(libc::SYS_lseek),
        any(libc::SYS_read),
        any(libc::SYS_pread64),
        // A /tmp drive of a size no spare made: its file created, sized, copied from its
        // template (by the kernel), unlinked; the template's directory looked for.
        any(libc::SYS_mkdir),
        any(libc::SYS_ftruncate),
        any(libc::SYS_copy_file_range),
        any(libc::SYS_unlink),
        // The devices' eventfds, the event loop's epoll set, the vsock muxer's timer.
        any(libc::SYS_eventfd2),
        any(libc::SYS_timerfd_create),
        // The vsock device's listening socket in the instance directory (Unix only).
        any(libc::SYS_bind),
        any(libc::SYS_listen),
        // The threads: their stacks (guard pages, never executable) and std's start of each.
        any(libc::SYS_clone3),
        any(libc::SYS_clone),
        any(libc::SYS_set_robust_list),
        any(libc::SYS_rseq),
        any(libc::SYS_sched_getaffinity),
    ]
}

/// The rules of `thread`: [`common`] and its own; for [`Thread::Setup`], those of every thread
/// and [`setup`]'s.
fn rules(thread: Thread) -> BTreeMap<i64, Vec<SeccompRule>> {
    if thread == Thread::Setup {
        let mut all: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (nr, rules) in NARROWING.into_iter().flat_map(rules).chain(setup()) {
            let have = all.entry(nr).or_insert_with(|| rules.clone());
            // No rules: any arguments; either side's, then, and the union is that.
            if have.is_empty() || rules.is_empty() {
                have.clear();
            } else if have != &rules {
                have.extend(rules);
            }
        }
        return all;
    }
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let own = match thread {
        Thread::Setup => unreachable!("made above"),
        Thread::Main => vec![
            // The snapshot's VM state: irqchip, PIT and clock.
            one_of(libc::SYS_ioctl, 1, &[kvm::GET_IRQCHIP, kvm::GET_PIT2, kvm::GET_CLOCK]),
            // The snapshot's files: a directory, its files written, synced, renamed into place.
            any(libc::SYS_mkdir),
            any(libc::SYS_openat),
            any(libc::SYS_read),
            any(libc::SYS_pwrite64),
            any(libc::SYS_lseek),
            any(libc::SYS_ftruncate),
            any(libc::SYS_fallocate),
            any(libc::SYS_fsync),
            any(libc::SYS_fdatasync),
            any(libc::SYS_rename),
            any(libc::SYS_statx),
            any(libc::SYS_newfstatat),
            any(libc::SYS_fstat),
            // Exits counted from the vCPUs' statistics fds.
            any(libc::SYS_pread64),
            // The exit line on the control socket.
            any(libc::SYS_sendto),
        ],
        Thread::Control => vec![
            // The agent's requests (std reads a socket with recv) and the answers.
            any(libc::SYS_read),
            any(libc::SYS_recvfrom),
            any(libc::SYS_sendto),
            // Recording the working set: /proc/self/pagemap read, the file written, synced
            // and renamed into place.
            any(libc::SYS_openat),
            any(libc::SYS_pread64),
            any(libc::SYS_lseek),
            any(libc::SYS_fsync),
            any(libc::SYS_rename),
            any(libc::SYS_statx),
            any(libc::SYS_newfstatat),
            any(libc::SYS_fstat),
        ],
        Thread::Events => vec![
            // The loop's epoll set, made as it starts.
            any(libc::SYS_epoll_create1),
            any(libc::SYS_epoll_wait),
            any(libc::SYS_epoll_pwait),
            any(libc::SYS_epoll_ctl),
            // Eventfds, the block files, the vsock's streams.
            any(libc::SYS_read),
            any(libc::SYS_readv),
            any(libc::SYS_writev),
            any(libc::SYS_pread64),
            any(libc::SYS_pwrite64),
            any(libc::SYS_preadv),
            any(libc::SYS_pwritev),
            any(libc::SYS_lseek),
            any(libc::SYS_fsync),
            any(libc::SYS_fdatasync),
            any(libc::SYS_fallocate),
            // The vsock's host side: Unix sockets only, accepted or connected to the agent's
            // listeners, made non-blocking.
            one_of(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]),
            any(libc::SYS_connect),
            any(libc::SYS_accept4),
            any(libc::SYS_recvfrom),
            any(libc::SYS_sendto),
            any(libc::SYS_recvmsg),
            any(libc::SYS_sendmsg),
            any(libc::SYS_shutdown),
            any(libc::SYS_getsockopt),
            one_of(libc::SYS_ioctl, 1, &[libc::FIONBIO]),
            // The muxer's timer.
            any(libc::SYS_timerfd_settime),
        ],
        Thread::Vcpu => vec![
            one_of(
                libc::SYS_ioctl,
                1,
                &[
                    kvm::RUN,
                    // Its state at a snapshot.
                    kvm::GET_MP_STATE,
                    kvm::GET_REGS,
                    kvm::GET_SREGS,
                    kvm::GET_XSAVE,
                    kvm::GET_XCRS,
                    kvm::GET_DEBUGREGS,
                    kvm::GET_LAPIC,
                    kvm::GET_MSRS,
                    kvm::GET_VCPU_EVENTS,
                ],
            ),
            // Exits counted from its statistics fd when the guest reports a status.
            any(libc::SYS_pread64),
            // The vsock device, activated by the guest's register write, arms its muxer's
            // timer.
            any(libc::SYS_timerfd_settime),
        ],
    };
    for (nr, r) in common().into_iter().chain(own) {
        // Each call once per thread (a test checks it): a second entry would replace the first.
        let listed_before = rules.insert(nr, r);
        debug_assert!(listed_before.is_none(), "system call {nr} listed twice for the {thread:?} thread");
    }
    rules
}

/// The KVM ioctl requests the threads make after setup, encoded as `<linux/kvm.h>` does.
mod kvm {
    use kvm_bindings::*;
    use std::mem::size_of;

    const KVMIO: u64 = 0xae;

    const fn io(nr: u64) -> u64 {
        (KVMIO << 8) | nr
    }
    const fn ior(nr: u64, size: usize) -> u64 {
        (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const fn iowr(nr: u64, size: usize) -> u64 {
        (3 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }

    pub const RUN: u64 = io(0x80);
    pub const GET_REGS: u64 = ior(0x81, size_of::<kvm_regs>());
    pub const GET_SREGS: u64 = ior(0x83, size_of::<kvm_sregs>());
    pub const GET_MSRS: u64 = iowr(0x88, size_of::<kvm_msrs>());
    pub const GET_LAPIC: u64 = ior(0x8e, size_of::<kvm_lapic_state>());
    pub const GET_MP_STATE: u64 = ior(0x98, size_of::<kvm_mp_state>());
    pub const GET_VCPU_EVENTS: u64 = ior(0x9f, size_of::<kvm_vcpu_events>());
    pub const GET_DEBUGREGS: u64 = ior(0xa1, size_of::<kvm_debugregs>());
    pub const GET_XSAVE: u64 = ior(0xa4, size_of::<kvm_xsave>());
    pub const GET_XCRS: u64 = ior(0xa6, size_of::<kvm_xcrs>());
    pub const GET_IRQCHIP: u64 = iowr(0x62, size_of::<kvm_irqchip>());
    pub const GET_PIT2: u64 = ior(0x9f, size_of::<kvm_pit_state2>());
    pub const GET_CLOCK: u64 = ior(0x7c, size_of::<kvm_clock_data>());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_thread_lists_a_call_twice() {
        for thread in NARROWING {
            // rules() asserts it (debug builds, as tests are).
            assert!(!rules(thread).is_empty());
        }
    }

    #[test]
    fn every_filter_compiles() {
        for thread in [Thread::Setup].into_iter().chain(NARROWING) {
            assert!(!compile(thread, false).unwrap().is_empty(), "{thread:?}");
        }
    }

    /// Filters stack: a thread started under the setup's filter gets only what both allow, so
    /// the setup's must allow every call (with the same arguments) of every thread's own.
    #[test]
    fn the_setup_filter_allows_what_every_thread_does() {
        let setup = rules(Thread::Setup);
        for thread in NARROWING {
            for (nr, own) in rules(thread) {
                let allowed = setup.get(&nr).unwrap_or_else(|| panic!("{thread:?}'s call {nr} is not in the setup's"));
                let covered = allowed.is_empty() || (!own.is_empty() && own.iter().all(|r| allowed.contains(r)));
                assert!(covered, "{thread:?}'s rules for call {nr} are not all in the setup's");
            }
        }
    }

    /// The numbers as `<linux/kvm.h>` defines them on x86_64 (checked against the header).
    #[test]
    fn kvm_requests_match_the_header() {
        assert_eq!(kvm::RUN, 0xae80);
        assert_eq!(kvm::GET_REGS, 0x8090_ae81);
        assert_eq!(kvm::GET_SREGS, 0x8138_ae83);
        assert_eq!(kvm::GET_MSRS, 0xc008_ae88);
        assert_eq!(kvm::GET_LAPIC, 0x8400_ae8e);
        assert_eq!(kvm::GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(kvm::GET_XSAVE, 0x9000_aea4);
        assert_eq!(kvm::GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(kvm::GET_CLOCK, 0x8030_ae7c);
        assert_eq!(kvm::GET_MP_STATE, 0x8004_ae98);
        assert_eq!(kvm::GET_DEBUGREGS, 0x8080_aea1);
        assert_eq!(kvm::GET_XCRS, 0x8188_aea6);
        assert_eq!(kvm::GET_PIT2, 0x8070_ae9f);
    }

    /// A thread that installs a filter and then makes a call outside it dies with the whole
    /// process; run in a child process, which reports how it ended.
    #[test]
    fn a_call_outside_the_filter_kills_the_process() {
        let filters = Filters::new().unwrap();
        // SAFETY: the child only installs a prebuilt filter and makes raw system calls before
        // it exits; it allocates nothing after the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if filters.install(Thread::Vcpu).is_err() {
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(2) };
            }
            // SAFETY: a plain system call the vCPU filter does not allow.
            unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; status is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
