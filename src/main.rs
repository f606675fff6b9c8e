//! The `ember` command: boot a microVM, or measure how fast it boots.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ember::vmm::{default_guest_dir, Console, Outcome, VmConfig, Vmm, DEFAULT_CMDLINE};

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
    /// With --until-ready: stay idle this long after ready, then print the VMM's own resident
    /// memory as `vmm_overhead_kib=<KiB>`.
    #[arg(long, hide = true)]
    idle_ms: Option<u64>,
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
    let config = VmConfig {
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        kernel: args.kernel.unwrap_or_else(|| default_guest_dir().join("vmlinux")),
        rootfs: Some(args.rootfs.unwrap_or_else(|| default_guest_dir().join("rootfs.ext4"))),
        cmdline: args.cmdline,
        console,
        hugepages: !args.no_hugepages,
        code: args.code_image,
        tmp_mib: args.tmp_mib,
        tmp_dir: std::env::temp_dir(),
        vsock_uds: args.vsock_uds,
    };
    let mut vmm = match Vmm::start(&config) {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("ember: error: {e}");
            return ExitCode::from(EXIT_VMM_ERROR);
        }
    };
    let outcome = vmm.wait(args.until_ready, Duration::from_secs(args.boot_timeout), started);
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
    }
}

fn main() -> ExitCode {
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
        Command::Bench { bench } => {
            let report = match bench {
                Bench::Boot { runs, memory_mib } => ember::bench::boot(runs, memory_mib),
                Bench::Vsock { runs } => ember::bench::vsock(runs),
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
