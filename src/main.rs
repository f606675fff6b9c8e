//! The `ember` command: boot a microVM, or measure how fast it boots.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod client;

use clap::{Parser, Subcommand};
use ember::vmm::{default_guest_dir, Console, EmptyVm, Outcome, RestoreConfig, VmConfig, Vmm, DEFAULT_CMDLINE};

/// Exit status of `ember boot`: the guest powered off cleanly (or reached ready with `--until-ready`).
const EXIT_OK: u8 = 0;
/// The VMM failed: bad arguments, KVM errors, I/O errors.
const EXIT_VMM_ERROR: u8 = 1;
/// The guest crashed: a kernel panic, a triple fault, a reset without power-off.
const EXIT_GUEST_CRASH: u8 = 2;
/// ember-init did not report ready within the boot timeout.
const EXIT_BOOT_TIMEOUT: u8 = 3;
/// ember-init powered off with a non-zero status (its command failed).
const EXIT_GUEST_FAILED: u8 = 4;

#[derive(Parser)]
#[command(name = "ember", version, about = "Run serverless functions in KVM microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM and run it until the guest powers off.
    Boot(BootArgs),
    /// Run the agent: Lambda's API on a Unix socket (and loopback TCP), one microVM per instance.
    Serve(ServeArgs),
    /// Run one microVM for the agent, controlled over the socket on fd 3 (internal).
    #[command(hide = true)]
    Vmm {
        /// Make the /tmp drive of a function of the default size here while waiting for the
        /// spec.
        #[arg(long)]
        scratch_dir: Option<PathBuf>,
        /// Enter the jail whose root (a mounted tmpfs) is this directory before the spec.
        #[arg(long, requires = "jail_uid")]
        jail_root: Option<PathBuf>,
        /// The uid (and gid) of --jail-root's jail.
        #[arg(long, requires = "jail_root")]
        jail_uid: Option<u32>,
    },
    /// Lambda's operations, as a client of the agent (create-function, invoke, ...).
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Run a benchmark.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(clap::Args)]
struct BootArgs {
    /// Guest memory in MiB (128 to 10240).
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Uncompressed kernel (vmlinux) [default: target/guest/vmlinux].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Root filesystem image, attached read-only [default: target/guest/rootfs.ext4].
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Kernel command line (virtio-mmio devices are appended).
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Serial console: a file path, `-` for stdout, or `off`.
    #[arg(long, default_value = "-")]
    console: String,
    /// Stop as soon as ember-init reports ready and print `ready_ms=<ms>` last.
    #[arg(long)]
    until_ready: bool,
    /// Seconds ember-init has to report ready before the boot counts as failed.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// Back guest memory with 4 KiB pages only, not transparent huge pages (which cut the
    /// guest's nested page faults, and so its VM exits, about threefold).
    #[arg(long)]
    no_hugepages: bool,
    /// A read-only code image (ext4), mounted at /var/task in the guest.
    #[arg(long)]
    code_image: Option<PathBuf>,
    /// Give the guest a fresh /tmp drive of this many MiB (512 to 10240), removed with the VM.
    #[arg(long)]
    tmp_mib: Option<u32>,
    /// Give the guest a vsock device whose host side is this Unix socket: connect and write
    /// `CONNECT <port>\n` to reach a guest listener; guest connections to port P reach a
    /// listener at `<PATH>_P`.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Once ember-init reports ready, pause the VM, write its snapshot into this directory
    /// (`state` and a sparse `memory` file), print `snapshot_ms=<ms> memory_kib=<KiB written>`
    /// and exit.
    #[arg(long, value_name = "DIR", conflicts_with = "restore")]
    snapshot_to: Option<PathBuf>,
    /// Restore the snapshot in this directory instead of booting (--memory-mib, --vcpus, the
    /// kernel, rootfs, code image and command line come from the snapshot; /tmp is a fresh
    /// drive of the snapshot's size), print `restore_ms=<ms>` and run until the guest powers
    /// off (or, with --until-ready, exit).
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// With --until-ready: stay idle this long after ready, then print the VMM's own resident
    /// memory as `vmm_overhead_kib=<KiB>`.
    #[arg(long, hide = true)]
    idle_ms: Option<u64>,
    /// Boot jailed as the agent's VMMs are (new mount, IPC, UTS and network namespaces, a root
    /// of the VM's files mounted on this empty directory, --jail-uid) and print
    /// `jail_us=<us>` first: what the jail costs, for `ember bench boot`. Needs root.
    #[arg(long, value_name = "DIR", hide = true, requires = "jail_uid", conflicts_with_all = ["restore", "snapshot_to", "vsock_uds"])]
    jail_root: Option<PathBuf>,
    /// The uid (and gid) of --jail-root's jail.
    #[arg(long, value_name = "UID", hide = true, requires = "jail_root")]
    jail_uid: Option<u32>,
    /// Where the /tmp drive's (unlinked) file is made [default: $TMPDIR].
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The Unix socket to serve on (created with mode 0600).
    #[arg(long)]
    socket: PathBuf,
    /// Where functions, code and logs are kept.
    #[arg(long)]
    data_dir: PathBuf,
    /// Also serve on this loopback TCP address (for AWS SDKs and the aws CLI).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Serve function URLs on this address (routed by `Host: <url-id>.lambda-url.<region>.on.aws`
    /// or by a `/<url-id>/` path prefix); who may call them is up to each function's policy.
    #[arg(long, value_name = "ADDR:PORT")]
    url_listen: Option<std::net::SocketAddr>,
    /// Where instances keep their sockets [default: a directory under $TMPDIR named by the data dir].
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The most microVM instances on this host (the account's concurrency); invocations past
    /// it get 429.
    #[arg(long, default_value_t = 64)]
    max_instances: usize,
    /// The concurrency that functions' reservations must leave to the others [default: a
    /// tenth of --max-instances] (Lambda keeps 100).
    #[arg(long)]
    min_unreserved: Option<u32>,
    /// The most instances booting at once [default: twice the host's CPUs]; more cold starts
    /// wait for a slot, or for an instance of their function to go idle.
    #[arg(long)]
    max_boots: Option<usize>,
    /// Seconds an idle instance is kept.
    #[arg(long, default_value_t = 300)]
    keep_alive_s: u64,
    /// Seconds a boot plus the runtime's init may take.
    #[arg(long, default_value_t = 10)]
    init_timeout_s: u64,
    /// Restore SnapStart snapshots without loading their working set first (the pages the
    /// first instance restored from a snapshot touched in its first invocation).
    #[arg(long)]
    no_restore_prefetch: bool,
    /// The most private memory idle instances may hold together, in MiB (each VMM's own memory
    /// and the guest pages it wrote; a restored guest's unwritten pages are shared); past it
    /// the least recently used idle instances stop (provisioned ones never do).
    #[arg(long, default_value_t = 16384)]
    idle_memory_mib: u64,
    /// Keep each instance's serial console (kernel and ember-init messages) in
    /// `<DIR>/<instance id>.console`, for debugging; the files are not removed.
    #[arg(long, value_name = "DIR")]
    console_dir: Option<PathBuf>,
    /// Seconds before the first and the second retry of an asynchronous invocation that failed
    /// (Lambda waits about 60 and 120); shorter waits are for tests, nothing else changes.
    #[arg(long, value_name = "A,B", default_value = "60,120", value_parser = parse_retry_delays)]
    async_retry_delays_s: [Duration; 2],
    /// The RabbitMQ broker for queues (`amqp://user:password@host:port/vhost`): queue
    /// destinations, dead-letter queues and event source mappings. Without it they are refused.
    #[arg(long, value_name = "URL")]
    amqp_url: Option<String>,
    /// The first uid (and gid) of the range jailed VMMs run as, one each.
    #[arg(long, value_name = "UID", default_value_t = ember::agent::jail::DEFAULT_UID_BASE)]
    jail_uid_base: u32,
    /// How many uids the range has (at most that many VMMs at once, spares included).
    #[arg(long, value_name = "N", default_value_t = ember::agent::jail::DEFAULT_UID_COUNT)]
    jail_uid_count: u32,
    /// Run VMMs unjailed: the agent's uid, capabilities, filesystem and namespaces (their
    /// seccomp filters still apply). Without root this is what happens anyway, said at start.
    #[arg(long)]
    no_jail: bool,
    /// A registry container images may be pulled from over plain HTTP (`HOST:PORT`, as image
    /// URIs name it); repeat for several. Only these are pulled from.
    #[arg(long, value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// A PEM file of CA certificates to trust for HTTPS registries, besides the system's;
    /// repeat for several.
    #[arg(long, value_name = "PATH")]
    registry_ca: Vec<PathBuf>,
    /// Registry credentials: a Docker `config.json` (`{"auths": {"HOST:PORT": {"auth":
    /// base64("user:password")}}}`), answered to registries that ask.
    #[arg(long, value_name = "PATH")]
    registry_credentials: Option<PathBuf>,
}

/// `A,B` in seconds.
fn parse_retry_delays(s: &str) -> Result<[Duration; 2], String> {
    let parts: Vec<&str> = s.split(',').collect();
    let [a, b] = parts.as_slice() else { return Err(format!("expected two numbers of seconds, A,B: {s}")) };
    let secs = |x: &str| x.trim().parse::<u64>().map(Duration::from_secs).map_err(|e| format!("{x}: {e}"));
    Ok([secs(a)?, secs(b)?])
}

#[derive(Subcommand)]
enum Bench {
    /// Cold boots to ember-init ready, with the console off.
    Boot {
        /// Number of boots.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 128)]
        memory_mib: u32,
    },
    /// vsock round trips and throughput against ember-init's echo service, and the same
    /// transfer between two host processes over a Unix socket.
    Vsock {
        /// Number of 1 KiB round trips.
        #[arg(long, default_value_t = 2000)]
        runs: usize,
    },
    /// Invocations of a 1 KiB echo (provided runtime) through a real agent: cold, warm, and
    /// warm throughput at concurrency 1 and 8, with the bare vsock round trip for scale.
    Invoke {
        /// Number of warm invocations (and of bare vsock round trips).
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Number of cold invocations.
        #[arg(long, default_value_t = 5)]
        cold_runs: usize,
    },
    /// SnapStart: invokes on freshly restored instances (provided and python3.11, 128 MiB),
    /// the restore alone, cold invokes for comparison, snapshot time at 1024 MiB, restore at
    /// 2048 MiB, and the private memory and density of idle restored instances.
    Restore {
        /// Invokes on restored instances per runtime.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// Cold invokes per runtime.
        #[arg(long, default_value_t = 3)]
        cold_runs: usize,
        /// The most idle restored instances to provision for the density count.
        #[arg(long, default_value_t = 1000)]
        density_max: u32,
    },
    /// Runtimes: cold and warm invokes of a 1 KiB echo in Node.js and Python, the same Python
    /// function as a container image and as a zip, and pulling a large image beside skopeo
    /// and umoci (needs docker-registry, skopeo and umoci).
    Runtimes {
        /// Warm Node.js invokes.
        #[arg(long, default_value_t = 200)]
        runs: usize,
        /// Cold invokes per function.
        #[arg(long, default_value_t = 5)]
        cold_runs: usize,
        /// The size of the image pulled, in MiB.
        #[arg(long, default_value_t = 500)]
        image_mib: u64,
    },
    /// Asynchronous invokes through a real agent: accept latency (durable), accepts per second
    /// with 1 and 8 clients, acceptance to the function's start on a warm instance; event
    /// source mapping throughput from a RabbitMQ queue; and a warm function URL request beside
    /// a warm direct invoke.
    Events {
        /// Accepts timed one at a time.
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Where the agent's data dir goes [default: under $TMPDIR]: a directory on a real
        /// disk, so that the fsync each accept waits for is the disk's (a tmpfs has none).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// The RabbitMQ broker the event source mapping's queue lives on (it may still be
        /// starting: it is waited for).
        #[arg(long, value_name = "URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        amqp_url: String,
    },
    /// The host peer of `bench vsock`: echoes every connection on a Unix socket.
    #[command(hide = true)]
    EchoPeer {
        /// The socket to listen on.
        socket: PathBuf,
    },
}

fn boot(args: BootArgs, started: Instant) -> ExitCode {
    let console = match args.console.as_str() {
        "off" => Console::Off,
        "-" => Console::Stdout,
        path => Console::File(path.into()),
    };
    if let Some(dir) = &args.restore {
        let config = RestoreConfig {
            snapshot_dir: dir.clone(),
            console,
            tmp_dir: std::env::temp_dir(),
            vsock_uds: args.vsock_uds.clone(),
            // `ember boot --restore` is a test of the snapshot alone: nothing recorded, nothing loaded.
            prefetch: false,
            record_to: None,
        };
        return match EmptyVm::create().map_err(Into::into).and_then(|vm| Vmm::restore(&config, vm, None)) {
            Ok(vmm) => {
                println!("restore_ms={:.1}", started.elapsed().as_secs_f64() * 1000.0);
                run_to_end(vmm, &args, started)
            }
            Err(e) => {
                eprintln!("ember: error: {e}");
                ExitCode::from(EXIT_VMM_ERROR)
            }
        };
    }
    let config = VmConfig {
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        kernel: args.kernel.clone().unwrap_or_else(|| default_guest_dir().join("vmlinux")),
        rootfs: Some(args.rootfs.clone().unwrap_or_else(|| default_guest_dir().join("rootfs.ext4"))),
        cmdline: args.cmdline.clone(),
        console,
        hugepages: !args.no_hugepages,
        code: args.code_image.clone(),
        opt: None,
        tmp_mib: args.tmp_mib,
        tmp_dir: args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
        vsock_uds: args.vsock_uds.clone(),
    };
    // The VM first, as an agent's VMM makes it before its spec and so before its jail, which
    // holds no /dev/kvm.
    let vm = match EmptyVm::create() {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("ember: error: {e}");
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    if let (Some(root), Some(uid)) = (&args.jail_root, args.jail_uid) {
        let jailing = Instant::now();
        if let Err(e) = jail_boot(&config, root, uid) {
            eprintln!("ember: error: {e}");
            return ExitCode::from(EXIT_VMM_ERROR);
        }
        println!("jail_us={}", jailing.elapsed().as_micros());
    }
    let mut vmm = match Vmm::start(&config, vm, None) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("ember: error: {e}");
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    if let Some(dir) = &args.snapshot_to {
        let outcome = vmm.wait(true, Duration::from_secs(args.boot_timeout), started);
        if outcome != Outcome::Ready {
            return report(outcome);
        }
        let paused = Instant::now();
        return match vmm.snapshot(dir) {
            Ok(written) => {
                println!("snapshot_ms={} memory_kib={}", paused.elapsed().as_millis(), written >> 10);
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("ember: error: {e}");
                ExitCode::from(EXIT_VMM_ERROR)
            }
        };
    }
    run_to_end(vmm, &args, started)
}

/// Jails this process as the agent jails a VMM (its PID namespace is its parent's to make),
/// both sides in one: new namespaces, its root mounted and the VM's files bound into it (the
/// agent's side, [`ember::vmm::jail::bind_into`]), then [`ember::vmm::jail::enter`].
fn jail_boot(config: &VmConfig, root: &std::path::Path, uid: u32) -> Result<(), String> {
    use nix::sched::{unshare, CloneFlags};
    let flags = CloneFlags::from_bits_retain(ember::agent::jail::CHILD_NAMESPACES);
    unshare(flags).map_err(|e| format!("jail: unshare: {e}"))?;
    let template = match config.tmp_mib {
        Some(mib) => Some(
            ember::vmm::devices::virtio::block::scratch_template_path(mib)
                .map_err(|e| format!("the {mib} MiB /tmp template: {e}"))?,
        ),
        None => None,
    };
    let read_only = [Some(&config.kernel), config.rootfs.as_ref(), config.code.as_ref(), template.as_ref()];
    let binds = ember::vmm::jail::Binds {
        read_only: read_only.into_iter().flatten().cloned().collect(),
        read_write: vec![config.tmp_dir.clone()],
    };
    let file_size = ember::vmm::jail::file_size_limit(config.tmp_mib.unwrap_or(0), config.memory_mib);
    let spec = ember::vmm::jail::JailSpec { uid, root: root.to_owned() };
    ember::vmm::jail::make_root(root, false).map_err(|e| e.to_string())?;
    ember::vmm::jail::bind_into(root, &binds, uid).map_err(|e| e.to_string())?;
    ember::vmm::jail::enter(&spec, file_size).map_err(|e| e.to_string())
}

/// Runs a started or restored VM to its end (or to ready, with --until-ready) and reports.
fn run_to_end(mut vmm: Vmm, args: &BootArgs, started: Instant) -> ExitCode {
    let outcome = if args.restore.is_some() && args.until_ready {
        Outcome::Ready
    } else {
        vmm.wait(args.until_ready, Duration::from_secs(args.boot_timeout), started)
    };
    if let Some((at, info)) = vmm.ready {
        let ms = at.duration_since(started).as_millis();
        eprintln!(
            "ember: guest ready after {ms} ms: memory_mib={} vcpus={} exits={}",
            info.memory_mib, info.vcpus, info.exits
        );
        if args.until_ready {
            println!("memory_mib={} vcpus={} exits={}", info.memory_mib, info.vcpus, info.exits);
            if let Some(idle) = args.idle_ms {
                std::thread::sleep(Duration::from_millis(idle));
                match vmm.vmm_overhead_kib() {
                    Ok(kib) => println!("vmm_overhead_kib={kib}"),
                    Err(e) => eprintln!("ember: cannot read /proc/self/smaps: {e}"),
                }
            }
            println!("ready_ms={ms}");
        }
    }
    report(outcome)
}

/// Says how a run ended and turns it into the exit status.
fn report(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Ready => ExitCode::from(EXIT_OK),
        Outcome::PoweredOff(0) => {
            eprintln!("ember: guest powered off");
            ExitCode::from(EXIT_OK)
        }
        Outcome::PoweredOff(status) => {
            eprintln!("ember: guest powered off with status {status}");
            ExitCode::from(EXIT_GUEST_FAILED)
        }
        Outcome::Crashed(why) => {
            eprintln!("ember: error: {why}");
            ExitCode::from(EXIT_GUEST_CRASH)
        }
        Outcome::BootTimeout(t) => {
            eprintln!("ember: error: the guest did not reach ember-init within {} s", t.as_secs());
            ExitCode::from(EXIT_BOOT_TIMEOUT)
        }
        Outcome::VmmError(why) => {
            eprintln!("ember: error: {why}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
        Outcome::SnapshotRequested(_) => {
            eprintln!("ember: error: a snapshot request was not carried out");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

fn serve(mut args: ServeArgs) -> ExitCode {
    // Absolute, as the VMMs (which start elsewhere, and in their jails) see every path.
    for dir in [Some(&mut args.data_dir), args.run_dir.as_mut()].into_iter().flatten() {
        if let Ok(absolute) = std::path::absolute(&*dir) {
            *dir = absolute;
        }
    }
    if let Some(addr) = args.listen.filter(|a| !a.ip().is_loopback()) {
        eprintln!("ember: error: --listen must be a loopback address, not {addr}");
        return ExitCode::from(EXIT_VMM_ERROR);
    }
    let vmm_binary = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("ember: error: cannot find the ember binary: {e}");
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    let max_boots = args
        .max_boots
        .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    let options = ember::agent::ServeOptions {
        pool: ember::agent::pool::PoolConfig {
            max_instances: args.max_instances,
            max_boots,
            idle_memory_kib: args.idle_memory_mib << 10,
        },
        vmm: ember::agent::pool::launch::VmmConfig {
            guest_dir: default_guest_dir(),
            run_dir: args.run_dir.unwrap_or_else(|| ember::agent::default_run_dir(&args.data_dir)),
            init_timeout: Duration::from_secs(args.init_timeout_s),
            keep_alive: Duration::from_secs(args.keep_alive_s),
            console_dir: args.console_dir,
            prefetch: !args.no_restore_prefetch,
        },
        vmm_binary,
        cpu_shares: true,
        min_unreserved: args.min_unreserved,
        async_retry_delays: args.async_retry_delays_s,
        socket: args.socket,
        data_dir: args.data_dir,
        listen: args.listen,
        url_listen: args.url_listen,
        amqp_url: args.amqp_url,
        jail: (!args.no_jail)
            .then_some(ember::agent::JailOptions { uid_base: args.jail_uid_base, uid_count: args.jail_uid_count }),
        insecure_registries: args.insecure_registry,
        registry_cas: args.registry_ca,
        registry_credentials: args.registry_credentials,
    };
    // While this process has one thread: the jails' mounts go in a mount namespace of the
    // agent's own (without it, the agent says VMMs are not jailed, and why).
    if options.jail.is_some() && nix::unistd::geteuid().is_root() {
        if let Err(e) = ember::agent::jail::isolate_mounts() {
            eprintln!("ember: no mount namespace of the agent's own: {e}");
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ember: error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    match runtime.block_on(ember::agent::serve(options)) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("ember: error: {e}");
            ExitCode::from(EXIT_VMM_ERROR)
        }
    }
}

/// `ember vmm` as the agent starts it (`vmm [--scratch-dir DIR] [--jail-root DIR --jail-uid
/// UID]`), run without building the whole command line's parser: every spare VMM is a new
/// process, and clap's setup of this CLI's every subcommand was most of its start's CPU (tens
/// of ms in the emulated host). Anything else, `--help` included, goes through clap.
fn vmm_as_spawned() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != "vmm" {
        return None;
    }
    let (mut scratch_dir, mut jail_root, mut jail_uid) = (None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().filter(|v| !v.is_empty())?;
        match flag.to_str()? {
            "--scratch-dir" if scratch_dir.is_none() => scratch_dir = Some(PathBuf::from(value)),
            "--jail-root" if jail_root.is_none() => jail_root = Some(PathBuf::from(value)),
            "--jail-uid" if jail_uid.is_none() => jail_uid = Some(value.to_str()?.parse().ok()?),
            _ => return None,
        }
    }
    let jail = match (jail_root, jail_uid) {
        (Some(root), Some(uid)) => Some(ember::vmm::jail::JailSpec { uid, root }),
        (None, None) => None,
        _ => return None,
    };
    Some(ExitCode::from(ember::vmm::process::run(scratch_dir.as_deref(), jail.as_ref())))
}

fn main() -> ExitCode {
    if let Some(code) = vmm_as_spawned() {
        return code;
    }
    let started = Instant::now();
    // Usage errors exit 1 like other VMM errors, so that 2 always means a guest crash.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_VMM_ERROR } else { EXIT_OK });
        }
    };
    let code = match cli.command {
        Command::Boot(args) => boot(args, started),
        Command::Client(command) => client::run(command),
        Command::Serve(args) => serve(args),
        Command::Vmm { scratch_dir, jail_root, jail_uid } => {
            let jail = jail_root.zip(jail_uid).map(|(root, uid)| ember::vmm::jail::JailSpec { uid, root });
            ExitCode::from(ember::vmm::process::run(scratch_dir.as_deref(), jail.as_ref()))
        }
        Command::Bench { bench } => {
            let report = match bench {
                Bench::Boot { runs, memory_mib } => ember::bench::boot(runs, memory_mib),
                Bench::Vsock { runs } => ember::bench::vsock(runs),
                Bench::Invoke { runs, cold_runs } => ember::bench::invoke(runs, cold_runs),
                Bench::Restore { runs, cold_runs, density_max } => ember::bench::restore(runs, cold_runs, density_max),
                Bench::Runtimes { runs, cold_runs, image_mib } => ember::bench::runtimes(runs, cold_runs, image_mib),
                Bench::Events { runs, data_dir, amqp_url } => {
                    ember::bench::events(runs, data_dir.as_deref(), &amqp_url)
                }
                Bench::EchoPeer { socket } => ember::bench::echo_peer(&socket).map(|()| String::new()),
            };
            match report {
                Ok(report) => {
                    print!("{report}");
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => {
                    eprintln!("ember: bench: {e}");
                    ExitCode::from(EXIT_VMM_ERROR)
                }
            }
        }
    };
    // Ending the process ends the VM: vCPU threads are not joined.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    code
}
