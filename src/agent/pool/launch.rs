//! How the pool starts instances: the [`Launcher`] seam, and [`VmmLauncher`], the one that
//! runs microVMs. The pool's scheduling (warm reuse, concurrency, provisioning, SnapStart,
//! retries) is written against the trait, so unit tests drive it with a launcher that starts
//! no VM, as Firecracker tests its devices through a backend trait; the KVM tests drive the
//! real one end to end.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ember_proto::runtime::Config;

use crate::agent::ids::{self, timestamp};
use crate::agent::instance::{self, Handle, LaunchSpec, Owner, Spares};
use crate::agent::limits::vcpus_for;
use crate::agent::logs::FunctionLog;
use crate::agent::snapshots::Fingerprint;
use crate::agent::store::FunctionConfig;
use crate::vmm::process::VmmSpec;
use crate::vmm::DEFAULT_CMDLINE;

/// A boxed future, as the trait's methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a new instance starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// A boot.
    Boot,
    /// A SnapStart boot, to be snapshotted when its init is over.
    SnapStartBoot,
    /// A restore of the snapshot in this directory.
    Restore(PathBuf),
}

/// A started instance, its actor running.
pub struct Launched {
    /// The way to its actor.
    pub handle: Handle,
    /// How long its boot and init (or its restore) took.
    pub init_duration: Duration,
    /// Whether it was restored from a snapshot.
    pub restored: bool,
}

/// Starts instances for the pool.
pub trait Launcher: Send + Sync + 'static {
    /// Starts an instance of `f` from `start` and hands it to an actor that reports to
    /// `owner`; runtime output during init goes to `log`.
    fn launch<'a>(
        &'a self,
        f: &'a FunctionConfig,
        start: Start,
        owner: Arc<dyn Owner>,
        log: &'a FunctionLog,
    ) -> BoxFuture<'a, Result<Launched, instance::Error>>;

    /// Boots `f` for SnapStart and, once its init is over, snapshots it into `dir` and ends
    /// it. Returns how long the snapshot itself took.
    fn snapshot<'a>(
        &'a self,
        f: &'a FunctionConfig,
        dir: &'a Path,
        log: &'a FunctionLog,
    ) -> BoxFuture<'a, Result<Duration, instance::Error>>;

    /// The files an instance of `f` runs from, as a snapshot of it records them.
    fn files(&self, f: &FunctionConfig) -> std::io::Result<Vec<Fingerprint>>;

    /// Starts the processes kept ahead of launches, if it keeps any.
    fn start_spares(&self) {}
}

/// How [`VmmLauncher`] runs instances.
#[derive(Clone, Debug)]
pub struct VmmConfig {
    /// Where the kernel (`vmlinux`) and the runtime images (`runtimes/<runtime>.ext4`) are.
    pub guest_dir: PathBuf,
    /// Where instances keep their sockets.
    pub run_dir: PathBuf,
    /// How long a boot plus the runtime's init may take.
    pub init_timeout: Duration,
    /// How long an idle instance is kept.
    pub keep_alive: Duration,
    /// Keep each instance's serial console in `<dir>/<instance id>.console`.
    pub console_dir: Option<PathBuf>,
    /// Restores load their snapshot's working set, recorded by the first invocation of the
    /// first instance restored from it (`ember serve --no-restore-prefetch` turns it off).
    pub prefetch: bool,
}

/// Launches instances as `ember vmm` processes, each one microVM.
pub struct VmmLauncher {
    config: VmmConfig,
    vmms: Arc<Spares>,
}

impl VmmLauncher {
    /// A launcher that takes its VMM processes from `vmms`.
    pub fn new(config: VmmConfig, vmms: Arc<Spares>) -> VmmLauncher {
        VmmLauncher { config, vmms }
    }

    fn spec(&self, f: &FunctionConfig, id: &str, start: Start) -> Result<LaunchSpec, instance::Error> {
        let config = &self.config;
        let root_runtime = boot_runtime(f);
        let rootfs = runtime_image(&config.guest_dir, root_runtime);
        if !rootfs.is_file() {
            return Err(instance::Error::Host(format!(
                "the image of runtime {root_runtime} is missing: {}",
                rootfs.display()
            )));
        }
        let mut cmdline = format!("{DEFAULT_CMDLINE} {}=1", ember_proto::cmdline::RUNTIME);
        let mut runtime = match &f.image {
            // A container image runs its own command, in its own root (ember-init switches
            // into it), with its environment under Lambda's variables.
            Some(image) => {
                cmdline.push_str(&format!(" {}=1", ember_proto::cmdline::IMAGE_ROOT));
                let (argv, env, cwd) = image.command();
                // What Lambda shows as the handler of an image: its command's first word.
                let handler = image.overrides.command.as_ref().unwrap_or(&image.run.cmd).first().cloned();
                let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
                runtime_config(
                    f,
                    id,
                    Process {
                        argv: &argv,
                        env: &env,
                        cwd,
                        handler: handler.unwrap_or_default(),
                        path: path.unwrap_or_else(|| DEFAULT_PATH.into()),
                        // The image's own PYTHONUNBUFFERED, if it has one.
                        unbuffered_python: false,
                    },
                )
            }
            None => {
                let (argv, env) = runtime_files(&config.guest_dir, &f.runtime).map_err(|e| {
                    instance::Error::Host(format!(
                        "cannot read the command of runtime {} in {}: {e}",
                        f.runtime,
                        config.guest_dir.display()
                    ))
                })?;
                runtime_config(f, id, Process::of_runtime(f, &argv, &env))
            }
        };
        let mut restore = None;
        match start {
            Start::Boot => {}
            Start::SnapStartBoot => {
                cmdline.push_str(&format!(" {}=1", ember_proto::cmdline::SNAP_START));
                runtime.env.retain(|(k, _)| k != INIT_TYPE);
                runtime.env.push((INIT_TYPE.into(), "snap-start".into()));
            }
            Start::Restore(dir) => restore = Some(dir),
        }
        let dir = config.run_dir.join(id);
        Ok(LaunchSpec {
            id: id.to_owned(),
            vmms: Arc::clone(&self.vmms),
            vm: VmmSpec {
                memory_mib: f.memory_mib,
                vcpus: vcpus_for(f.memory_mib),
                kernel: config.guest_dir.join("vmlinux"),
                rootfs,
                cmdline,
                code: Some(f.code_image.clone()),
                opt: f.opt_image.clone(),
                tmp_mib: Some(f.ephemeral_mib),
                tmp_dir: dir.clone(),
                vsock_uds: PathBuf::new(),
                console: config.console_dir.as_ref().map(|d| d.join(format!("{id}.console"))),
                boot_timeout_s: config.init_timeout.as_secs().max(1),
                restore,
                prefetch: config.prefetch,
                snapshot_to: None,
            },
            dir,
            runtime,
            init_timeout: config.init_timeout,
        })
    }
}

impl Launcher for VmmLauncher {
    fn launch<'a>(
        &'a self,
        f: &'a FunctionConfig,
        start: Start,
        owner: Arc<dyn Owner>,
        log: &'a FunctionLog,
    ) -> BoxFuture<'a, Result<Launched, instance::Error>> {
        Box::pin(async move {
            let spec = self.spec(f, &ids::random_hex(), start)?;
            let instance = instance::launch(spec, log).await?;
            let (init_duration, restored) = (instance.init_duration, instance.restored);
            let handle = instance::spawn_actor(instance, owner, self.config.keep_alive);
            Ok(Launched { handle, init_duration, restored })
        })
    }

    fn snapshot<'a>(
        &'a self,
        f: &'a FunctionConfig,
        dir: &'a Path,
        log: &'a FunctionLog,
    ) -> BoxFuture<'a, Result<Duration, instance::Error>> {
        Box::pin(async move {
            let mut spec = self.spec(f, &ids::random_hex(), Start::SnapStartBoot)?;
            spec.vm.snapshot_to = Some(dir.to_owned());
            let instance = instance::launch(spec, log).await?;
            let started = std::time::Instant::now();
            instance.snapshot(dir).await?;
            Ok(started.elapsed())
        })
    }

    fn files(&self, f: &FunctionConfig) -> std::io::Result<Vec<Fingerprint>> {
        let guest = &self.config.guest_dir;
        let mut files = vec![guest.join("vmlinux"), runtime_image(guest, boot_runtime(f)), f.code_image.clone()];
        files.extend(f.opt_image.clone());
        files.iter().map(|p| Fingerprint::of(p)).collect()
    }

    fn start_spares(&self) {
        self.vmms.fill();
    }
}

/// The runtime whose image `f` boots: its own, or for a container image the one with nothing
/// but ember-init (which then switches into the image).
fn boot_runtime(f: &FunctionConfig) -> &str {
    if f.image.is_some() {
        crate::agent::codezip::PROVIDED_RUNTIME
    } else {
        &f.runtime
    }
}

/// The root image of `runtime`.
fn runtime_image(guest_dir: &Path, runtime: &str) -> PathBuf {
    guest_dir.join("runtimes").join(format!("{runtime}.ext4"))
}

/// The variable that says how an instance was initialized.
const INIT_TYPE: &str = "AWS_LAMBDA_INITIALIZATION_TYPE";

/// Environment variables, in order.
type Env = Vec<(String, String)>;

/// What a runtime's image directory says about running it: `<runtime>.command` (the argv,
/// words split on spaces, `$HANDLER` standing for the handler) and `<runtime>.env` (KEY=VALUE
/// lines), written by scripts/build-runtimes.sh beside the image.
fn runtime_files(guest_dir: &Path, runtime: &str) -> std::io::Result<(Vec<String>, Env)> {
    let dir = guest_dir.join("runtimes");
    let command = std::fs::read_to_string(dir.join(format!("{runtime}.command")))?;
    let env = std::fs::read_to_string(dir.join(format!("{runtime}.env")))?;
    let argv = command.split_whitespace().map(str::to_owned).collect();
    let env = env
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    Ok((argv, env))
}

/// The `PATH` of a runtime's process, unless its container image has its own.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/opt/bin";

/// What a function's runtime process is, before Lambda's variables are added.
struct Process<'a> {
    /// Its command; a `$HANDLER` word becomes the handler.
    argv: &'a [String],
    /// Its own environment (the runtime's, or the container image's).
    env: &'a [(String, String)],
    cwd: String,
    /// `_HANDLER`.
    handler: String,
    /// `PATH`.
    path: String,
    /// Whether `PYTHONUNBUFFERED=1` is set, as Lambda's runtimes set it.
    unbuffered_python: bool,
}

impl<'a> Process<'a> {
    /// The process of a zip function's runtime (its image's `.command` and `.env`).
    fn of_runtime(f: &FunctionConfig, argv: &'a [String], env: &'a [(String, String)]) -> Process<'a> {
        Process {
            argv,
            env,
            cwd: "/var/task".into(),
            handler: f.handler.clone(),
            path: DEFAULT_PATH.into(),
            unbuffered_python: true,
        }
    }
}

/// The runtime's command and environment: its own environment, the function's variables, and
/// the Lambda variables (which the function's cannot override).
fn runtime_config(f: &FunctionConfig, instance_id: &str, p: Process<'_>) -> Config {
    let argv = p.argv.iter().map(|w| if w == "$HANDLER" { p.handler.clone() } else { w.clone() }).collect();
    let date = timestamp();
    let stream = format!("{}/{}/{}/[{}]{instance_id}", &date[0..4], &date[5..7], &date[8..10], f.version);
    let region = ids::region().to_owned();
    let mut env: Env = p.env.to_vec();
    env.extend(f.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    let ours = [
        ("_HANDLER", p.handler),
        ("LAMBDA_TASK_ROOT", "/var/task".into()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".into()),
        ("AWS_LAMBDA_FUNCTION_NAME", f.name.clone()),
        ("AWS_LAMBDA_FUNCTION_VERSION", f.version.to_string()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", f.memory_mib.to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", f.name)),
        ("AWS_LAMBDA_LOG_STREAM_NAME", stream),
        (INIT_TYPE, "on-demand".into()),
        ("AWS_REGION", region.clone()),
        ("AWS_DEFAULT_REGION", region),
        ("TZ", ":UTC".into()),
        ("PATH", p.path),
    ];
    // Later entries win: keep only the last of each name.
    env.extend(ours.into_iter().map(|(k, v)| (k.to_owned(), v)));
    if p.unbuffered_python {
        env.push(("PYTHONUNBUFFERED".into(), "1".into()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut env: Vec<_> = env.into_iter().rev().filter(|(k, _)| seen.insert(k.clone())).collect();
    env.reverse();
    Config { argv, env, cwd: p.cwd, wall_clock_ms: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::ids::Version;

    #[test]
    fn lambda_variables_win_over_the_function_s() {
        let mut f = crate::agent::store::tests::config_for("f");
        f.version = Version::published(4);
        f.environment.insert("AWS_LAMBDA_FUNCTION_NAME".into(), "spoofed".into());
        f.environment.insert("MY_VAR".into(), "1".into());
        let argv = vec!["/usr/bin/python3.11".to_owned(), "-m".into(), "awslambdaric".into(), "$HANDLER".into()];
        let env = [("LANG".to_owned(), "C.UTF-8".to_owned())];
        let c = runtime_config(&f, "abc", Process::of_runtime(&f, &argv, &env));
        assert_eq!(c.argv[3], "handler.main");
        let get = |k: &str| c.env.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), ["f"]);
        assert_eq!(get("AWS_LAMBDA_FUNCTION_VERSION"), ["4"]);
        assert_eq!(get("MY_VAR"), ["1"]);
        assert_eq!(get("LANG"), ["C.UTF-8"]);
        assert_eq!(get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), ["256"]);
        assert!(get("PATH")[0].ends_with(":/opt/bin"));
        assert!(get("AWS_LAMBDA_LOG_STREAM_NAME")[0].ends_with("/[4]abc"));
        assert_eq!(get("PYTHONUNBUFFERED"), ["1"]);
        assert_eq!(c.cwd, "/var/task");
    }

    #[test]
    fn an_image_keeps_its_path_cwd_and_python_buffering() {
        let f = crate::agent::store::tests::config_for("f");
        let env = [("PATH".to_owned(), "/app/bin:/usr/bin".to_owned()), ("GREETING".to_owned(), "hi".to_owned())];
        let argv = ["/app/bin/run".to_owned(), "app.handler".to_owned()];
        let process = Process {
            argv: &argv,
            env: &env,
            cwd: "/app".into(),
            handler: "app.handler".into(),
            path: "/app/bin:/usr/bin".into(),
            unbuffered_python: false,
        };
        let c = runtime_config(&f, "abc", process);
        let get = |k: &str| c.env.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
        assert_eq!(c.argv, argv);
        assert_eq!(c.cwd, "/app");
        assert_eq!(get("PATH"), ["/app/bin:/usr/bin"]);
        assert_eq!(get("_HANDLER"), ["app.handler"]);
        assert_eq!(get("GREETING"), ["hi"]);
        assert!(get("PYTHONUNBUFFERED").is_empty());
        assert_eq!(get("AWS_LAMBDA_FUNCTION_NAME"), ["f"]);
    }
}
