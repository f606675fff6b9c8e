//! One function instance: an `ember vmm` child process and the runtime channel to its guest.
//!
//! [`launch`] spawns the VMM, waits for ember-init to connect the runtime channel, sends the
//! runtime's [`Config`] and waits for the runtime's first `/next` (its init is over). A launch
//! from a SnapStart snapshot (the spec's `vm.restore`) sends a `Restore` instead (fresh entropy
//! and the host's clock) and waits for the restored runtime to be ready again; an init
//! snapshot is taken from a SnapStart boot with [`Instance::snapshot`]. The running
//! instance then belongs to an actor task ([`Handle`] is the way in): it runs one [`Job`] at a
//! time and, between jobs, watches its VMM, so that a VMM or guest that dies while idle is
//! noticed at once and leaves the pool.
//!
//! Destroying an instance is killing its VMM (the kernel frees the VM with the process; the
//! /tmp drive's file is already unlinked) and removing its directory of sockets.

use std::ffi::CStr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ember_proto::runtime::{self, Config, Decoder, Frame, Kind};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use super::cgroup::{CpuShares, VmmCgroup};
use super::jail::{JailLease, Jails, VmmStart};
use super::logs::{FunctionLog, InvocationLog};
use crate::vmm::jail::JailSpec;
use crate::vmm::process::{Control, VmmExit, VmmSpec, WorkingSetReply, CONTROL_FD};

/// Why an instance could not start or stopped working.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host could not set it up (our fault).
    #[error("{0}")]
    Host(String),
    /// The VM ended: a kernel panic, a VMM error, the guest powering off.
    #[error("{0}")]
    VmEnded(String),
    /// The VM ended before ember-init connected the runtime channel: the boot failed.
    #[error("{0}")]
    Boot(String),
    /// The VMM could not restore the snapshot (a damaged or mismatched snapshot file).
    #[error("restore failed: {0}")]
    Restore(String),
    /// The runtime reported an init error; `body` is its error JSON.
    #[error("init error {error_type:?}")]
    InitError {
        /// `Lambda-Runtime-Function-Error-Type`.
        error_type: Option<String>,
        /// The runtime's body.
        body: Vec<u8>,
    },
    /// The runtime process exited (`exit status 1`, `signal: killed`).
    #[error("Runtime exited with error: {0}")]
    RuntimeExited(String),
    /// Init took longer than allowed.
    #[error("init timed out after {0:?}")]
    InitTimeout(Duration),
    /// The guest broke the runtime channel's protocol.
    #[error("runtime channel: {0}")]
    Protocol(String),
}

/// How long a VMM may take to pause its VM and write a snapshot (a 1 GiB one takes ~1 s in
/// the emulated host; the memory file is written sparse).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How much one read from the runtime channel takes at most.
const READ_CHUNK: usize = 64 * 1024;

fn host(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Host(format!("{what}: {e}"))
}

/// What [`launch`] needs.
pub struct LaunchSpec {
    /// The instance id (hex); also names its directory and log stream.
    pub id: String,
    /// Its directory of sockets (created here, removed on destroy).
    pub dir: PathBuf,
    /// Where the `ember vmm` process comes from.
    pub vmms: Arc<Spares>,
    /// The VM (its `vsock_uds` is set here, inside `dir`).
    pub vm: VmmSpec,
    /// How to start the runtime.
    pub runtime: Config,
    /// How long the boot and the runtime's init may take together.
    pub init_timeout: Duration,
}

/// A running instance, before its actor takes it.
pub struct Instance {
    id: String,
    /// Where its CPU share is enforced, if the host allows it.
    cgroup: Option<VmmCgroup>,
    dir: PathBuf,
    child: Child,
    control: BufReader<UnixStream>,
    channel: UnixStream,
    decoder: Decoder,
    /// Where reads from the channel land, allocated once (not zeroed per read on the hot path).
    read_buf: Box<[u8]>,
    /// How long the boot and init took (or the restore, for a restored instance).
    pub init_duration: Duration,
    /// Whether it was restored from a snapshot.
    pub restored: bool,
    /// Restored, and its first invocation not over yet: when it is, the VMM is told to record
    /// the working set (it does if its restore found none to load).
    record_pending: bool,
    /// Jailed and restored with prefetch: where its VMM writes a working set it records, and
    /// where the agent moves it (beside the snapshot, where the VMM cannot write).
    recorded: Option<(PathBuf, PathBuf)>,
    /// Restored and not capped yet: its memory size, and when the cap applies at the latest
    /// (see [`Instance::cap`]).
    uncapped: Option<(u32, tokio::time::Instant)>,
    /// Its first invocation not over yet: what starts the replacement of the spare its launch
    /// took, and when at the latest (see [`Instance::settle`]).
    refill: Option<(Refill, tokio::time::Instant)>,
    /// Its VMM's jail (its uid is in use until the instance is gone).
    _jail: Option<JailLease>,
}

/// How long a restored instance may run uncapped waiting for its first invocation.
const RESUME_UNCAPPED: Duration = Duration::from_secs(10);

/// Spawns the VMM and waits until the runtime asks for its first event. Runtime output during
/// init goes to `log`.
pub async fn launch(mut spec: LaunchSpec, log: &FunctionLog) -> Result<Instance, Error> {
    let started = Instant::now();
    tokio::fs::create_dir_all(&spec.dir).await.map_err(host("create instance dir"))?;
    let guard = DirGuard(Some(spec.dir.clone()));
    let vsock = spec.dir.join("vsock");
    let listener = UnixListener::bind(with_port(&vsock, runtime::RUNTIME_PORT)).map_err(host("bind runtime socket"))?;
    spec.vm.vsock_uds = vsock;

    let VmmProcess { mut child, mut control, cgroup, jail } = spec.vmms.take().await?;
    if let Some(c) = &cgroup {
        // Guest memory, the /tmp drive's file and a snapshot's memory file (the last two in
        // memory where the run and data dirs are on tmpfs).
        let memory = u64::from(spec.vm.memory_mib);
        let tmp = u64::from(spec.vm.tmp_mib.unwrap_or(crate::vmm::devices::virtio::block::DEFAULT_SCRATCH_MIB));
        let snapshot = if spec.vm.snapshot_to.is_some() { memory } else { 0 };
        c.memory(memory + tmp + snapshot);
    }
    if let Some(j) = &jail {
        // Only the VMM (which takes the directory) and the agent reach its sockets.
        let private = std::fs::Permissions::from_mode(0o700);
        tokio::fs::set_permissions(&spec.dir, private).await.map_err(host("make the instance dir private"))?;
        let open = std::fs::Permissions::from_mode(0o666);
        let runtime_socket = with_port(&spec.vm.vsock_uds, runtime::RUNTIME_PORT);
        tokio::fs::set_permissions(&runtime_socket, open).await.map_err(host("open the runtime socket to the VMM"))?;
        if let Err(e) = j.bind(&spec.vm) {
            return Err(kill(&mut child, Error::Host(format!("jail: {e}"))).await);
        }
    }
    let recorded = match (&jail, &spec.vm.restore) {
        (Some(_), Some(snapshot)) if spec.vm.prefetch => Some((
            spec.dir.join(crate::vmm::process::RECORDED_WORKING_SET),
            snapshot.join(crate::vmm::working_set::FILE),
        )),
        _ => None,
    };
    // The replacement spare is started once this launch has failed, or once the instance's
    // first invocation is over (see `Instance::settle`): on a host short of CPU, starting it
    // meanwhile would slow the very start it is meant to speed up (a spawn costs ~70 ms of CPU
    // in the emulated host).
    let refill = Refill(Arc::clone(&spec.vmms));
    let mut line = serde_json::to_vec(&spec.vm).expect("spec serializes");
    line.push(b'\n');
    control.get_mut().write_all(&line).await.map_err(host("send spec"))?;

    let deadline = tokio::time::Instant::from_std(started + spec.init_timeout);
    let restoring = spec.vm.restore.is_some();
    let mut channel = tokio::select! {
        accepted = listener.accept() => accepted.map_err(host("accept runtime channel"))?.0,
        ended = read_exit(&mut control) => {
            // A VMM that could not restore (a damaged or mismatched snapshot: its own error)
            // is told apart from a guest that crashed or a VMM that died, which may be the
            // platform's passing failure.
            let e = match ended {
                Exit { vmm_error: true, message } if restoring => Error::Restore(message),
                Exit { message, .. } => Error::Boot(with_signal(&mut child, message).await),
            };
            return Err(kill(&mut child, e).await);
        }
        () = tokio::time::sleep_until(deadline) => {
            // Which of the two waits ran out is not in the function's error; it is the
            // operator's clue (a guest that never came back after a restore, say).
            let what = if restoring { "restored" } else { "booted" };
            eprintln!("ember: instance {}: {what}, but its guest never connected the runtime channel", spec.id);
            return Err(kill(&mut child, Error::InitTimeout(spec.init_timeout)).await)
        }
    };
    drop(listener);
    let wall_clock_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let first = if restoring {
        match entropy() {
            Ok(entropy) => runtime::encode(Kind::Restore, Some(&runtime::Restore { wall_clock_ms }), &entropy),
            Err(e) => return Err(kill(&mut child, Error::Host(format!("entropy for the restored guest: {e}"))).await),
        }
    } else {
        spec.runtime.wall_clock_ms = wall_clock_ms;
        runtime::encode(Kind::Config, Some(&spec.runtime), b"")
    };
    if let Err(e) = channel.write_all(&first).await {
        return Err(kill(&mut child, Error::Host(format!("send the runtime channel's first frame: {e}"))).await);
    }
    let mut instance = Instance {
        id: spec.id,
        cgroup,
        dir: spec.dir,
        child,
        control,
        channel,
        decoder: Decoder::new(),
        read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
        init_duration: Duration::ZERO,
        restored: restoring,
        record_pending: restoring,
        recorded,
        uncapped: None,
        refill: None,
        _jail: jail,
    };
    loop {
        let frame = tokio::select! {
            frame = instance.next_frame() => frame,
            () = tokio::time::sleep_until(deadline) => {
                eprintln!("ember: instance {}: its guest connected, but the runtime never became ready", instance.id);
                Err(Error::InitTimeout(spec.init_timeout))
            }
        };
        let result = match frame {
            Ok(f) if f.kind == Kind::Log => {
                log.append_output(&f.payload);
                continue;
            }
            Ok(f) if f.kind == Kind::Ready => Ok(()),
            Ok(f) if f.kind == Kind::InitError || f.kind == Kind::RestoreError => {
                match f.meta::<runtime::InitError>() {
                    Ok(meta) => {
                        let error_type = match f.kind {
                            Kind::RestoreError => meta.error_type.or_else(|| Some(AFTER_RESTORE_ERROR.into())),
                            _ => meta.error_type,
                        };
                        Err(Error::InitError { error_type, body: f.payload })
                    }
                    Err(e) => Err(Error::Protocol(e.to_string())),
                }
            }
            Ok(f) => Err(unexpected(&f)),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => break,
            Err(e) => {
                instance.destroy().await;
                return Err(e);
            }
        }
    }
    std::mem::forget(guard);
    instance.init_duration = started.elapsed();
    // A booted instance's init is over: from now on, its share. A restored one's resume is not
    // over until its first invocation is (see `Instance::cap`).
    let settle_at = tokio::time::Instant::now() + RESUME_UNCAPPED;
    instance.uncapped = Some((spec.vm.memory_mib, settle_at));
    instance.refill = Some((refill, settle_at));
    if !restoring {
        instance.cap();
    }
    Ok(instance)
}

/// Moves `from` to `to`, which may be on another filesystem (a copy then, renamed into place),
/// and removes `from`. Nothing to move (no working set was recorded) is not an error.
async fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    match tokio::fs::rename(from, to).await {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() != Some(libc::EXDEV) => return Err(e),
        Err(_) => {}
    }
    let partial = to.with_extension("partial");
    tokio::fs::copy(from, &partial).await?;
    tokio::fs::File::open(&partial).await?.sync_all().await?;
    tokio::fs::rename(&partial, to).await?;
    tokio::fs::remove_file(from).await
}

/// `message` about a VMM's end, with the signal that killed it if one did and it is gone
/// within [`EXIT_GRACE`]. `SIGSYS` is its seccomp filter's: a system call outside it, which
/// the agent's log also records.
async fn with_signal(child: &mut Child, message: String) -> String {
    let pid = child.id();
    let status = tokio::time::timeout(EXIT_GRACE, child.wait()).await.ok().and_then(Result::ok);
    match status.and_then(|status| status.signal()) {
        Some(libc::SIGSYS) => {
            eprintln!(
                "ember: VMM {} was killed by its seccomp filter (SIGSYS): a system call outside its list",
                pid.map_or_else(|| "?".to_owned(), |p| p.to_string())
            );
            format!("{message} (the VMM made a system call its seccomp filter forbids and was killed by SIGSYS)")
        }
        Some(signal) => format!("{message} (killed by signal {signal})"),
        None => message,
    }
}

/// The error type of a failed after-restore hook when the runtime names none.
const AFTER_RESTORE_ERROR: &str = "Runtime.AfterRestoreError";
/// Bytes of fresh entropy a restored guest gets.
const RESTORE_ENTROPY: usize = 64;

/// Fresh random bytes from the host's kernel for a restored guest's RNG.
fn entropy() -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; RESTORE_ENTROPY];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`, which is valid for them.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(buf)
}

/// `<path>_<port>`: where the VMM's vsock looks for a host listener on `port`.
fn with_port(path: &Path, port: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!("_{port}"));
    s.into()
}

/// An `ember vmm` process that has not had its spec yet, and the agent's end of its control
/// socket.
pub struct VmmProcess {
    child: Child,
    control: BufReader<UnixStream>,
    /// The process's own cgroup, if CPU shares are enforced.
    cgroup: Option<VmmCgroup>,
    /// Its jail's uid, if VMMs are jailed.
    jail: Option<JailLease>,
}

impl VmmProcess {
    fn spawn(
        binary: &Path,
        scratch_dir: Option<&Path>,
        cgroup: Option<VmmCgroup>,
        jails: Option<&Jails>,
    ) -> Result<VmmProcess, Error> {
        let mut jail = jails.map(Jails::lease).transpose().map_err(|e| Error::Host(format!("jail: {e}")))?;
        let (agent_end, vmm_end) = std::os::unix::net::UnixStream::pair().map_err(host("socketpair"))?;
        let procs = cgroup.as_ref().map(VmmCgroup::procs);
        let start = jail.as_mut().and_then(JailLease::take_start);
        let jailed = jails.zip(jail.as_ref().map(JailLease::spec)).zip(start).map(|((j, s), start)| (j, s, start));
        let child = spawn_vmm(binary, scratch_dir, OwnedFd::from(vmm_end), procs, jailed)?;
        agent_end.set_nonblocking(true).map_err(host("control socket"))?;
        let control = BufReader::new(UnixStream::from_std(agent_end).map_err(host("control socket"))?);
        Ok(VmmProcess { child, control, cgroup, jail })
    }
}

/// `ember vmm` processes started ahead of need. Each creates its VM (with irqchip and PIT) as
/// it starts and then waits for its spec, so that a launch skips the process start and the
/// VM's creation. A launch takes one and, once it is over, starts a replacement; spares are
/// not instances (no memory, no guest) and die with the agent. Each starts in a cgroup of its
/// own from `shares`, at the lowest CPU weight (see [`super::cgroup`]).
pub struct Spares {
    binary: PathBuf,
    /// Where spares make the /tmp drive of a default-sized function ahead of their spec.
    scratch_dir: Option<PathBuf>,
    /// How many to keep.
    want: usize,
    shares: Arc<CpuShares>,
    /// How VMMs are jailed; `None`: they are not (the agent cannot).
    jails: Option<Jails>,
    ready: std::sync::Mutex<Vec<VmmProcess>>,
    /// Asks the thread that starts spares, once there is one (see [`Spares::ask`]).
    spawner: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Ask>>>,
    /// Asks the thread that starts VMMs for launches when no spare is ready, once there is one:
    /// not the spares', whose spawns at a spare's low weight it would wait behind.
    starter: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Ask>>>,
}

/// What the thread that starts VMMs is asked.
enum Ask {
    /// Start spares until there are enough.
    TopUp,
    /// A VMM for a launch now: a spare if one is ready by then, else a new one.
    Launch(tokio::sync::oneshot::Sender<Result<VmmProcess, Error>>),
}

/// How long a launch waits for a new VMM process (its fork, cgroup move and exec; ~70 ms in the
/// emulated host) before it fails as the host's error.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(30);

impl Spares {
    /// Keeps `want` spares of `binary` once [`Spares::fill`] or a first launch starts them;
    /// with `scratch_dir`, each makes a default-sized /tmp drive there while it waits. Each
    /// is jailed with `jails`, if given.
    pub fn new(
        binary: PathBuf,
        scratch_dir: Option<PathBuf>,
        want: usize,
        shares: Arc<CpuShares>,
        jails: Option<Jails>,
    ) -> Arc<Spares> {
        Arc::new(Spares {
            binary,
            scratch_dir,
            want,
            shares,
            jails,
            ready: std::sync::Mutex::default(),
            spawner: std::sync::OnceLock::new(),
            starter: std::sync::OnceLock::new(),
        })
    }

    /// A new VMM process in a cgroup of its own: at a spare's weight, or (`for_launch`) at an
    /// instance's from the start, as its exec, which the caller waits for, must not wait
    /// behind the instances at a spare's weight.
    fn spawn(&self, for_launch: bool) -> Result<VmmProcess, Error> {
        let cgroup = self.shares.vmm_cgroup();
        if let (true, Some(cgroup)) = (for_launch, &cgroup) {
            cgroup.launching();
        }
        VmmProcess::spawn(&self.binary, self.scratch_dir.as_deref(), cgroup, self.jails.as_ref())
    }

    /// A VMM for a launch, at an instance's CPU weight: a spare that is still alive, else a
    /// new process, started by the spares' thread and waited for at most [`SPAWN_TIMEOUT`]
    /// (the start runs in the kernel, where the move into its cgroup waits for an RCU grace
    /// period, and it must hold up neither a worker of the agent's runtime nor, for ever, the
    /// launch).
    async fn take(self: &Arc<Self>) -> Result<VmmProcess, Error> {
        if let Some(p) = self.pop_live() {
            return Ok(p);
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.ask(Ask::Launch(reply)) {
            return self.spawn(true);
        }
        match tokio::time::timeout(SPAWN_TIMEOUT, answer).await {
            Ok(Ok(started)) => started,
            Ok(Err(_)) => Err(Error::Host("the thread that starts VMMs ended".into())),
            Err(_) => Err(Error::Host(format!("a new VMM process did not start within {} s", SPAWN_TIMEOUT.as_secs()))),
        }
    }

    /// A spare that is still alive, now at an instance's CPU weight.
    fn pop_live(&self) -> Option<VmmProcess> {
        loop {
            let mut p = self.lock().pop()?;
            // One that died waiting (its VM could not be created, say) is dropped.
            if matches!(p.child.try_wait(), Ok(None)) {
                if let Some(cgroup) = &p.cgroup {
                    cgroup.launching();
                }
                return Some(p);
            }
        }
    }

    /// Starts spares, off the caller's path, until there are `want`.
    pub fn fill(self: &Arc<Self>) {
        self.ask(Ask::TopUp);
    }

    /// Hands `ask` to its thread (`ember-spares` for top-ups, `ember-vmm-start` for launches),
    /// starting it first if need be; false if there is none (it could not start, or no runtime
    /// is running: one shutting down).
    ///
    /// Each thread lives as long as this. A spawn waits for the child's exec, which comes after
    /// the child joins its cgroup (an RCU grace period), so it must not hold up a worker of the
    /// agent's runtime. And not on tokio's blocking pool, whose idle threads exit: a VMM gets
    /// `PR_SET_PDEATHSIG`, which fires when the *thread* that forked it ends, and would kill
    /// every VMM it had started.
    fn ask(self: &Arc<Self>, ask: Ask) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
        let (cell, name) = match ask {
            Ask::TopUp => (&self.spawner, "ember-spares"),
            Ask::Launch(_) => (&self.starter, "ember-vmm-start"),
        };
        let sender = cell.get_or_init(|| {
            let (sender, asks) = std::sync::mpsc::channel::<Ask>();
            // Weak: the thread ends when the spares do (their sender drops with them).
            let spares = Arc::downgrade(self);
            let started = std::thread::Builder::new().name(name.into()).spawn(move || {
                let _runtime = runtime.enter();
                while let Ok(ask) = asks.recv() {
                    let Some(spares) = spares.upgrade() else { return };
                    match ask {
                        Ask::TopUp => spares.top_up(),
                        Ask::Launch(reply) => {
                            let p = spares.pop_live().map_or_else(|| spares.spawn(true), Ok);
                            // A launch that stopped waiting drops what it asked for (a VMM is
                            // killed when dropped).
                            let _ = reply.send(p);
                        }
                    }
                }
            });
            match started {
                Ok(_) => Some(sender),
                Err(e) => {
                    eprintln!("ember: cannot start the thread {name}: {e}");
                    None
                }
            }
        });
        sender.as_ref().is_some_and(|s| s.send(ask).is_ok())
    }

    fn top_up(&self) {
        while self.lock().len() < self.want {
            match self.spawn(false) {
                Ok(p) => self.lock().push(p),
                Err(e) => {
                    eprintln!("ember: spare VMM: {e}");
                    return;
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<VmmProcess>> {
        self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Tops the spares up when dropped.
struct Refill(Arc<Spares>);

impl Drop for Refill {
    fn drop(&mut self) {
        self.0.fill();
    }
}

/// Starts `ember vmm` with `control` as its control socket (and `--scratch-dir`), in the cgroup
/// whose `cgroup.procs` is given (joined before exec, so that none of its start runs outside;
/// if it cannot be joined, the process stays in the agent's).
fn spawn_vmm(
    binary: &Path,
    scratch_dir: Option<&Path>,
    control: OwnedFd,
    cgroup_procs: Option<&CStr>,
    jail: Option<(&Jails, &JailSpec, VmmStart)>,
) -> Result<Child, Error> {
    let (jail, start) = match jail {
        Some((jails, spec, start)) => (Some((jails, spec)), Some(start)),
        None => (None, None),
    };
    let fd = control.as_raw_fd();
    let cgroup_procs = cgroup_procs.map(CStr::to_owned);
    let mut cmd = Command::new(binary);
    cmd.arg("vmm").stdin(Stdio::null()).stdout(Stdio::null()).kill_on_drop(true);
    if let Some(dir) = scratch_dir {
        cmd.arg("--scratch-dir").arg(dir);
    }
    if let Some((_, j)) = jail {
        cmd.arg("--jail-root").arg(&j.root).arg("--jail-uid").arg(j.uid.to_string());
    }
    // SAFETY: the closure runs in the child between fork and exec and only calls setns,
    // unshare, move_mount, open, write, close, dup2 and fcntl, which are async-signal-safe; it
    // allocates nothing (the paths are CStrings made before the fork, which the closure owns)
    // and touches no other memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(start) = &start {
                start.enter()?;
            }
            if let Some(procs) = &cgroup_procs {
                let f = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if f >= 0 {
                    // "0" moves the writer itself.
                    libc::write(f, b"0".as_ptr().cast(), 1);
                    libc::close(f);
                }
            }
            if fd == CONTROL_FD {
                // dup2 onto itself would keep close-on-exec set: clear it instead.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match jail {
        Some((j, _)) => j.in_new_pid_namespace(|| cmd.spawn()).map_err(|e| Error::Host(format!("jail: {e}")))?,
        None => cmd.spawn(),
    }
    .map_err(host("spawn ember vmm"))?;
    drop(control);
    Ok(child)
}

/// How a VMM ended, as its control socket tells it.
struct Exit {
    /// The VMM itself failed (`vmm_error`), rather than the guest.
    vmm_error: bool,
    /// Why, for a human.
    message: String,
}

/// Reads the VMM's exit line; whatever happens, the VM is over.
async fn read_exit(control: &mut BufReader<UnixStream>) -> Exit {
    let mut line = String::new();
    loop {
        line.clear();
        let message = match control.read_line(&mut line).await {
            Ok(n) if n > 0 => match serde_json::from_str::<VmmExit>(&line) {
                Ok(exit) => return Exit { vmm_error: exit.outcome == "vmm_error", message: exit.message },
                // The answer to a working-set request that came after its wait was over
                // (RECORD_TIMEOUT): not the VM's end.
                Err(_) if serde_json::from_str::<WorkingSetReply>(&line).is_ok() => continue,
                Err(e) => format!("the VMM sent a bad exit line: {e}"),
            },
            Ok(_) => "the VMM process died".into(),
            Err(e) => format!("the VMM's control socket failed: {e}"),
        };
        return Exit { vmm_error: false, message };
    }
}

async fn kill(child: &mut Child, why: Error) -> Error {
    kill_vmm(child).await;
    why
}

/// How long a SIGKILLed VMM may take to die before the agent stops waiting for it.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// SIGKILLs a VMM and waits for it to die, at most [`KILL_WAIT`]: one stuck in the kernel (an
/// uninterruptible wait) must not hold up the launch or the actor that ends it. Such a one is
/// reported with where it waits, and reaped by tokio whenever it does die.
async fn kill_vmm(child: &mut Child) {
    let _ = child.start_kill();
    if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
        let pid = child.id().unwrap_or_default();
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        eprintln!("ember: VMM {pid} has not died {} s after SIGKILL (waiting in {wchan:?})", KILL_WAIT.as_secs());
    }
}

fn unexpected(f: &Frame) -> Error {
    Error::Protocol(format!("unexpected {:?} frame", f.kind))
}

/// How long a closed runtime channel waits for the VMM's account of why.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// How long an instance's actor waits for its VMM to record a working set.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// Removes an instance directory unless defused with `mem::forget`.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Instance {
    /// The next frame from the guest, or why there is none: the VM ended, the channel closed or
    /// the guest sent garbage.
    async fn next_frame(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(frame) = self.decoder.next_frame().map_err(|e| Error::Protocol(e.to_string()))? {
                if frame.kind == Kind::Exited {
                    let reason = frame.meta::<runtime::Exited>().map(|m| m.reason).unwrap_or_default();
                    return Err(Error::RuntimeExited(reason));
                }
                return Ok(frame);
            }
            tokio::select! {
                n = self.channel.read(&mut self.read_buf) => match n {
                    Ok(0) => return Err(Error::VmEnded(self.why_closed().await)),
                    Ok(n) => self.decoder.push(&self.read_buf[..n]),
                    Err(e) => return Err(Error::VmEnded(format!("runtime channel: {e}"))),
                },
                ended = read_exit(&mut self.control) => {
                    return Err(Error::VmEnded(with_signal(&mut self.child, ended.message).await))
                }
            }
        }
    }

    /// Why the guest's end of the runtime channel closed: it closes with the VM, so the VMM's
    /// own account (a guest that crashed or powered off, a VMM that failed, or one that was
    /// killed, with its signal) if it gives one within [`EXIT_GRACE`].
    async fn why_closed(&mut self) -> String {
        let closed = "the guest closed the runtime channel";
        match tokio::time::timeout(EXIT_GRACE, read_exit(&mut self.control)).await {
            Ok(exit) => format!("{closed}: {}", with_signal(&mut self.child, exit.message).await),
            Err(_) => closed.into(),
        }
    }

    /// Snapshots the instance into `dir` (its init is over: it has just been launched from a
    /// SnapStart boot) and ends it; the VMM exits once the snapshot is written. Returns the
    /// VMM's account of it.
    pub async fn snapshot(mut self, dir: &Path) -> Result<String, Error> {
        let mut line = serde_json::to_vec(&Control::Snapshot(dir.to_owned())).expect("a request serializes");
        line.push(b'\n');
        let result = match self.control.get_mut().write_all(&line).await {
            Ok(()) => {
                let mut answer = String::new();
                // A VMM that never answers (its vCPUs never stop, say) must not hold up the
                // publish, nor the version's cold starts, for ever.
                match tokio::time::timeout(SNAPSHOT_TIMEOUT, self.control.read_line(&mut answer)).await {
                    Ok(Ok(n)) if n > 0 => match serde_json::from_str::<VmmExit>(&answer) {
                        Ok(exit) if exit.outcome == "snapshotted" => Ok(exit.message),
                        Ok(exit) => Err(Error::VmEnded(exit.message)),
                        Err(e) => Err(Error::Protocol(format!("the VMM sent a bad answer: {e}"))),
                    },
                    Ok(Ok(_)) => Err(Error::VmEnded("the VMM process died while snapshotting".into())),
                    Ok(Err(e)) => Err(Error::Host(format!("the VMM's control socket failed: {e}"))),
                    Err(_) => Err(Error::Host(format!(
                        "the VMM did not write its snapshot within {} s",
                        SNAPSHOT_TIMEOUT.as_secs()
                    ))),
                }
            }
            Err(e) => Err(Error::Host(format!("send the snapshot request: {e}"))),
        };
        self.destroy().await;
        result
    }

    /// Caps the instance at its memory's CPU share, if it is not yet: a booted instance once its
    /// init is over, a restored one once its resume is, that is when its first invocation ends
    /// (the guest has paged in what it needed, from its working set or by faults that then
    /// count against nobody's share), or [`RESUME_UNCAPPED`] after its restore if none comes.
    /// Like init, the resume runs unthrottled: Lambda bills and caps a restore apart from the
    /// invocations (`Restore Duration`).
    fn cap(&mut self) {
        if let (Some((memory_mib, _)), Some(cgroup)) = (self.uncapped.take(), &self.cgroup) {
            cgroup.limit(memory_mib);
        }
    }

    /// The instance's start is over: its first invocation ended, or none came within
    /// [`RESUME_UNCAPPED`]. It is capped (if it was not yet) and the replacement of the spare
    /// it took is started now, not during its first invocation.
    fn settle(&mut self) {
        self.cap();
        self.refill = None;
    }

    /// When [`Instance::settle`] is due at the latest, if it has not happened.
    fn settle_at(&self) -> Option<tokio::time::Instant> {
        let cap = self.uncapped.map(|(_, at)| at);
        let refill = self.refill.as_ref().map(|(_, at)| *at);
        cap.into_iter().chain(refill).min()
    }

    /// Asks the VMM to record the working set of its restore (after the first invocation; it
    /// does if it loaded none) and waits for it to be written (at most [`RECORD_TIMEOUT`]), so
    /// that an instance ended right after its first invocation still leaves one. A failed
    /// request is the VM's end, which the actor sees next.
    async fn record_working_set(&mut self) {
        let mut line = serde_json::to_vec(&Control::RecordWorkingSet).expect("a request serializes");
        line.push(b'\n');
        if self.control.get_mut().write_all(&line).await.is_err() {
            return;
        }
        let mut answer = String::new();
        let _ = tokio::time::timeout(RECORD_TIMEOUT, self.control.read_line(&mut answer)).await;
        if let Some((from, to)) = self.recorded.take() {
            if let Err(e) = move_file(&from, &to).await {
                eprintln!("ember: instance {}: cannot keep the recorded working set: {e}", self.id);
            }
        }
    }

    /// Kills the VMM and removes the instance's directory and cgroup.
    pub async fn destroy(mut self) {
        kill_vmm(&mut self.child).await;
        drop(self.cgroup.take());
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
    }

    /// Runs one invocation. `Ok` means the instance can take another; `Err` means it is broken
    /// (timed out, runtime gone, VM gone) and must be destroyed; the outcome is then in the
    /// error and the log.
    async fn run(&mut self, job: &mut Job) -> Result<JobResult, Error> {
        let frame = runtime::encode(Kind::Invoke, Some(&job.invoke), &job.payload);
        if let Err(e) = self.channel.write_all(&frame).await {
            return Err(Error::VmEnded(format!("runtime channel: {e}")));
        }
        loop {
            let frame = tokio::select! {
                frame = self.next_frame() => frame?,
                () = tokio::time::sleep_until(job.deadline) => return Ok(JobResult::TimedOut),
            };
            match frame.kind {
                Kind::Log => job.log.output(&frame.payload),
                Kind::Response => {
                    let meta: runtime::Response = frame.meta().map_err(|e| Error::Protocol(e.to_string()))?;
                    if meta.request_id == job.invoke.request_id {
                        return Ok(JobResult::Response { body: frame.payload, memory_used_mib: meta.memory_used_mib });
                    }
                }
                Kind::Error => {
                    let meta: runtime::InvokeError = frame.meta().map_err(|e| Error::Protocol(e.to_string()))?;
                    if meta.request_id == job.invoke.request_id {
                        return Ok(JobResult::Error {
                            error_type: meta.error_type,
                            body: frame.payload,
                            memory_used_mib: meta.memory_used_mib,
                        });
                    }
                }
                Kind::Ready => {}
                _ => return Err(unexpected(&frame)),
            }
        }
    }
}

/// One invocation for an instance's actor.
pub struct Job {
    /// The Runtime API headers.
    pub invoke: runtime::Invoke,
    /// The event.
    pub payload: Bytes,
    /// When the function times out.
    pub deadline: tokio::time::Instant,
    /// The invocation's log (START already written).
    pub log: InvocationLog,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<JobDone>,
}

/// How one invocation ended.
#[derive(Debug)]
pub enum JobResult {
    /// `/response`.
    Response {
        /// The result.
        body: Vec<u8>,
        /// Guest memory in use, MiB.
        memory_used_mib: u32,
    },
    /// `/error`.
    Error {
        /// `Lambda-Runtime-Function-Error-Type`.
        error_type: Option<String>,
        /// The runtime's error JSON.
        body: Vec<u8>,
        /// Guest memory in use, MiB.
        memory_used_mib: u32,
    },
    /// The deadline passed; the instance is destroyed.
    TimedOut,
    /// The instance broke during the invocation and is destroyed.
    Broken(Error),
}

/// A finished job: its result and the log, handed back for END and REPORT.
pub struct JobDone {
    /// The outcome.
    pub result: JobResult,
    /// The invocation's log.
    pub log: InvocationLog,
    /// Whether the instance lives on (its handle can go back to the pool).
    pub reusable: bool,
}

/// The way to a running instance's actor.
pub struct Handle {
    /// The instance id.
    pub id: String,
    /// Its VMM process.
    pub pid: Option<u32>,
    /// The owner's last reading of its private memory ([`private_dirty_kib`]): when, and KiB.
    pub private_memory: Option<(Instant, u64)>,
    jobs: mpsc::Sender<Job>,
}

impl Handle {
    /// Hands a job to the actor; false if the actor is gone (its instance died).
    pub fn submit(&self, job: Job) -> bool {
        self.jobs.try_send(job).is_ok()
    }

    /// A handle whose jobs go to the returned receiver, for an actor of a test's own.
    #[cfg(test)]
    pub(crate) fn detached(id: &str) -> (Handle, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(1);
        (Handle { id: id.to_owned(), pid: None, private_memory: None, jobs: tx }, rx)
    }
}

/// The private memory of process `pid` that it wrote (`Private_Dirty`), in KiB: for a VMM, its
/// own memory plus the guest pages the guest wrote (a restored guest's unwritten pages are the
/// snapshot file's, shared). None if the process is gone.
pub fn private_dirty_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Private_Dirty:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Why an actor tells its owner that its instance is gone (or would go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// Idle past its keep-alive: the owner may keep it (then nothing happens).
    KeptTooLong,
    /// Its VM or runtime died while it was idle.
    DiedIdle,
    /// A job broke it (timeout, crash); it is destroyed.
    Broken,
}

/// What an actor tells its owner, which holds its [`Handle`] while it is idle. Dropping the
/// handle ends the actor and destroys the instance.
pub trait Owner: Send + Sync + 'static {
    /// The instance is gone, or has idled past its keep-alive. Returns whether the owner let
    /// it go (for an idle instance: it held it and no longer does); false: it was just taken
    /// for a job, which the actor must still accept, or (`KeptTooLong`) the owner keeps it.
    fn gone(&self, id: &str, why: Gone) -> bool;
}

/// Starts the actor of a launched instance and returns its handle.
pub fn spawn_actor(instance: Instance, owner: Arc<dyn Owner>, keep_alive: Duration) -> Handle {
    let (tx, rx) = mpsc::channel(1);
    let handle = Handle { id: instance.id.clone(), pid: instance.child.id(), private_memory: None, jobs: tx };
    tokio::spawn(actor(instance, rx, owner, keep_alive));
    handle
}

async fn actor(mut instance: Instance, mut jobs: mpsc::Receiver<Job>, owner: Arc<dyn Owner>, keep_alive: Duration) {
    loop {
        let settle_at = instance.settle_at();
        let job = tokio::select! {
            job = jobs.recv() => job,
            // An instance that no invocation came to within its time: settled now.
            () = async { tokio::time::sleep_until(settle_at.expect("guarded")).await }, if settle_at.is_some() => {
                instance.settle();
                continue;
            }
            // Idle: watch the VM, and retire after the keep-alive.
            ended = instance.next_frame() => {
                match ended {
                    Ok(frame) if frame.kind == Kind::Ready || frame.kind == Kind::Log => continue,
                    _ => {}
                }
                if owner.gone(&instance.id, Gone::DiedIdle) {
                    instance.destroy().await;
                    return;
                }
                // Taken for a job in the meantime: fail that job below.
                jobs.recv().await
            }
            () = tokio::time::sleep(keep_alive) => {
                if owner.gone(&instance.id, Gone::KeptTooLong) {
                    instance.destroy().await;
                    return;
                }
                // Kept (provisioned), or taken for a job: go on waiting.
                continue;
            }
        };
        let Some(mut job) = job else {
            instance.destroy().await;
            return;
        };
        let result = match instance.run(&mut job).await {
            Ok(r) => r,
            Err(e) => JobResult::Broken(e),
        };
        let reusable = matches!(result, JobResult::Response { .. } | JobResult::Error { .. });
        let Job { log, reply, .. } = job;
        if !reusable {
            owner.gone(&instance.id, Gone::Broken);
        }
        let _ = reply.send(JobDone { result, log, reusable });
        if !reusable {
            instance.destroy().await;
            return;
        }
        if std::mem::take(&mut instance.record_pending) {
            instance.record_working_set().await;
        }
        instance.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `ember vmm`: a script that waits until it is killed. Written once for all
    /// the tests: a test that forks while another writes its own copy would hold that one open
    /// for writing in the child until its exec, and the other's exec would fail (ETXTBSY).
    fn fake_vmm() -> PathBuf {
        static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        PATH.get_or_init(|| {
            let path = std::env::temp_dir().join(format!("ember-fake-vmm-{}", std::process::id()));
            std::fs::write(&path, "#!/bin/sh\nexec sleep 600\n").unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            path
        })
        .clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_launch_takes_a_live_spare_or_gets_a_new_vmm_and_spares_are_refilled() {
        let binary = fake_vmm();
        let spares = Spares::new(binary.clone(), None, 2, Arc::new(CpuShares::off()), None);
        // None ready: the launch gets a new one, from the starting thread.
        let first = spares.take().await.unwrap();
        assert!(first.child.id().is_some());
        spares.fill();
        let deadline = Instant::now() + Duration::from_secs(20);
        while spares.lock().len() < 2 {
            assert!(Instant::now() < deadline, "the spares were not started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // One that died waiting is passed over.
        let mut dead = spares.lock().pop().unwrap();
        let dead_pid = dead.child.id();
        dead.child.start_kill().unwrap();
        dead.child.wait().await.unwrap();
        spares.lock().insert(0, dead);
        let taken = spares.take().await.unwrap();
        assert_ne!(taken.child.id(), dead_pid);
        assert!(spares.take().await.unwrap().child.id().is_some(), "the dead one skipped, a new one started");
        assert!(spares.lock().is_empty());
        drop((first, taken));
    }

    #[tokio::test]
    async fn a_channel_closed_by_a_killed_vmm_says_so() {
        let binary = fake_vmm();
        let VmmProcess { child, control, cgroup, jail } = VmmProcess::spawn(&binary, None, None, None).unwrap();
        let (ours, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut instance = Instance {
            id: "i".into(),
            cgroup,
            dir: std::env::temp_dir().join(format!("ember-closed-{}", std::process::id())),
            child,
            control,
            channel: UnixStream::from_std(ours).unwrap(),
            decoder: Decoder::new(),
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            init_duration: Duration::ZERO,
            restored: false,
            record_pending: false,
            recorded: None,
            uncapped: None,
            refill: None,
            _jail: jail,
        };
        // The VMM is killed (as by the OOM killer) and its end of the channel goes with it.
        instance.child.start_kill().unwrap();
        drop(guest);
        match instance.next_frame().await {
            // Whichever of its two ends the actor saw close first.
            Err(Error::VmEnded(why)) => assert!(why.ends_with("the VMM process died (killed by signal 9)"), "{why}"),
            other => panic!("{:?}", other.map(|f| f.kind)),
        }
    }

    #[tokio::test]
    async fn killing_a_vmm_that_dies_returns_at_once() {
        let binary = fake_vmm();
        let mut p = VmmProcess::spawn(&binary, None, None, None).unwrap();
        let started = Instant::now();
        kill_vmm(&mut p.child).await;
        assert!(started.elapsed() < KILL_WAIT);
        assert!(p.child.try_wait().unwrap().is_some(), "reaped");
    }
}
