//! The function's drives in a booted guest: the code image read-only at /var/task and the
//! capped scratch drive at /tmp. A script on the code image (run by busybox from the same image)
//! does the work in the guest and prints `CHECK ...` lines on the console.
//!
//! Like the other KVM tests these need a KVM host that runs Linux guests; scripts/test.sh runs
//! them in the right place, and anywhere else they fail and say why.

mod common;
use common::{guest_dir, require_kvm_host};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"set -e
B=/var/task/busybox
$B dd if=/dev/urandom of=/tmp/r bs=1048576 count=16 2>/dev/null
S1=$($B md5sum /tmp/r | $B cut -d' ' -f1)
$B sync
echo 3 > /proc/sys/vm/drop_caches
S2=$($B md5sum /tmp/r | $B cut -d' ' -f1)
[ "$S1" = "$S2" ] && echo "CHECK tmp-checksum-ok"
if $B dd if=/dev/zero of=/tmp/fill bs=4194304 oflag=direct 2>/run/dd.err; then
    echo "CHECK fill-succeeded"
else
    $B grep -q "No space left on device" /run/dd.err && echo "CHECK enospc-ok"
fi
if $B touch /var/task/x 2>/run/touch.err; then
    echo "CHECK task-writable"
else
    $B grep -q "Read-only file system" /run/touch.err && echo "CHECK task-ro-ok"
fi
echo "CHECK done"
$B sleep 5
"#;

/// Builds the code image: busybox and the script, by mkfs.ext4 -d (nothing mounted).
fn code_image(dir: &Path) -> PathBuf {
    let staging = dir.join("code");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::copy("/bin/busybox", staging.join("busybox")).expect("busybox-static is installed by scripts/test.sh");
    std::fs::write(staging.join("check.sh"), SCRIPT).unwrap();
    let image = dir.join("code.ext4");
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&staging)
        .arg(&image)
        .arg("8M")
        .status()
        .expect("run mkfs.ext4");
    assert!(status.success());
    image
}

/// The size of the (unlinked) scratch file that process `pid` has open.
fn scratch_file_size(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten().find_map(|fd| {
        let target = std::fs::read_link(fd.path()).ok()?;
        let name = target.to_string_lossy();
        (name.contains("ember-scratch") && name.ends_with("(deleted)"))
            .then(|| std::fs::metadata(fd.path()).ok().map(|m| m.len()))?
    })
}

#[test]
fn tmp_is_capped_and_task_is_read_only() {
    require_kvm_host();
    let dir = std::env::temp_dir().join(format!("ember-drives-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = code_image(&dir);
    let console = dir.join("console.log");
    let cmdline = format!("{} -- /var/task/busybox sh /var/task/check.sh", ember::vmm::DEFAULT_CMDLINE);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ember"))
        .env("EMBER_GUEST_DIR", guest_dir())
        .args(["boot", "--memory-mib", "256", "--tmp-mib", "512", "--cmdline", &cmdline, "--code-image"])
        .arg(&image)
        .arg("--console")
        .arg(&console)
        .stdout(Stdio::null())
        .spawn()
        .expect("run ember");

    // While the guest sleeps after its checks, the scratch file is still open: look at it.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut scratch_size = None;
    while Instant::now() < deadline {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("CHECK done") {
            scratch_size = scratch_file_size(child.id());
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "ember boot: {status}\n{log}");
    for check in ["tmp-checksum-ok", "enospc-ok", "task-ro-ok", "done"] {
        assert!(log.contains(&format!("CHECK {check}")), "missing CHECK {check} in:\n{log}");
    }
    assert_eq!(scratch_size, Some(512 << 20), "the scratch file must stay at exactly its cap");
    // Nothing is left behind: the scratch file was unlinked when it was opened.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("ember-scratch-{pid}-")))
        .collect();
    assert!(leftovers.is_empty());
}
