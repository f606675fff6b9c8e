//! Deployment packages: `ember::agent::codezip::check`, which CreateFunction, UpdateFunctionCode
//! and PublishLayerVersion run on the uploaded zip, on arbitrary bytes; and for a package it
//! accepts, `codezip::extract` into a fresh staging directory, removed afterwards. Nothing here
//! runs mkfs or builds an image.
//!
//! Input: the whole input is the zip. The runtime checked for is `provided.al2023` (which
//! needs an executable `bootstrap` at the root) when the input's length is odd, `python3.11`
//! when it is even.
//!
//! It passes if nothing panics and: an accepted package has at most `MAX_ENTRIES` entries and
//! declares at most `MAX_UNZIPPED_BYTES`; extracting it (tried when it declares at most 4 MiB)
//! writes nothing outside the staging directory (the three directories above it hold nothing
//! else afterwards) and makes nothing there but directories, regular files and symlinks whose
//! targets stay inside it; and a successful extraction reports what it made: as many files,
//! directories and symlinks as there are, the bytes of the files (no more than declared), every
//! file readable and every directory readable and searchable by its owner.
#![no_main]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use ember::agent::codezip::{self, MAX_ENTRIES, PROVIDED_RUNTIME};
use ember::agent::limits::MAX_UNZIPPED_BYTES;
use libfuzzer_sys::fuzz_target;

/// Packages declaring more are checked, not extracted (keeps each run's writes small).
const EXTRACT_CAP: u64 = 4 << 20;

/// This process's directory: on tmpfs where there is one.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir = parent.join(format!("ember-fuzz-zip-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the fuzz directory");
        dir
    })
}

/// The names in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read a directory")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What an extraction left in the staging directory.
#[derive(Default)]
struct Found {
    files: u64,
    dirs: u64,
    symlinks: u64,
    bytes: u64,
    /// Files their owner cannot read.
    unreadable: u64,
}

/// What is under `dir` (not following symlinks), checking that each symlink's target, read
/// from the link's directory `depth` levels below the staging root, stays under that root.
fn survey(dir: &Path, depth: usize, found: &mut Found) {
    for entry in fs::read_dir(dir).expect("read a directory") {
        let entry = entry.expect("a directory entry");
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).expect("stat an extracted entry");
        let kind = meta.file_type();
        if kind.is_dir() {
            found.dirs += 1;
            survey(&path, depth + 1, found);
        } else if kind.is_file() {
            found.files += 1;
            found.bytes += meta.len();
            found.unreadable += u64::from(meta.permissions().mode() & 0o400 == 0);
        } else if kind.is_symlink() {
            found.symlinks += 1;
            let target = fs::read_link(&path).expect("read a symlink");
            let mut level = depth as i64;
            for part in target.components() {
                match part {
                    Component::Normal(_) => level += 1,
                    Component::ParentDir => level -= 1,
                    Component::CurDir => {}
                    Component::RootDir | Component::Prefix(_) => {
                        panic!("{}: absolute target {target:?}", path.display())
                    }
                }
                assert!(level >= 0, "{}: target {target:?} leaves the package", path.display());
            }
        } else {
            panic!("{}: extracted as {kind:?}", path.display());
        }
    }
}

/// Makes every directory under `dir` writable again (extraction may leave them read-only).
fn unlock(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            unlock(&entry.path());
        }
    }
}

/// Each directory's read and search bits for its owner (directories with them missing).
fn locked_dirs(dir: &Path) -> u64 {
    let mut n = 0;
    for entry in fs::read_dir(dir).expect("read a directory").flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let mode = entry.metadata().expect("stat a directory").permissions().mode();
            n += u64::from(mode & 0o500 != 0o500) + locked_dirs(&entry.path());
        }
    }
    n
}

fuzz_target!(|zip: &[u8]| {
    let runtime = if zip.len() % 2 == 1 { PROVIDED_RUNTIME } else { "python3.11" };
    let Ok(manifest) = codezip::check(zip, runtime) else { return };
    assert!(manifest.entries <= MAX_ENTRIES, "{} entries accepted", manifest.entries);
    assert!(manifest.declared_bytes <= MAX_UNZIPPED_BYTES, "{} bytes accepted", manifest.declared_bytes);
    if manifest.declared_bytes > EXTRACT_CAP {
        return;
    }

    let run = base().join("run");
    let staging = run.join("a").join("b").join("staging");
    fs::create_dir_all(&staging).expect("create the staging directory");
    let result = codezip::extract(zip, &staging);

    // Nothing beside the staging directory, three levels up.
    assert_eq!(names(base()), ["run"]);
    assert_eq!(names(&run), ["a"]);
    assert_eq!(names(&run.join("a")), ["b"]);
    assert_eq!(names(&run.join("a").join("b")), ["staging"]);
    let mut found = Found::default();
    survey(&staging, 0, &mut found);
    if let Ok(made) = result {
        assert_eq!(
            (made.files, made.dirs, made.symlinks, made.bytes),
            (found.files, found.dirs, found.symlinks, found.bytes),
            "what extract reports vs what it made"
        );
        assert!(
            made.bytes <= manifest.declared_bytes,
            "{} bytes written, {} declared",
            made.bytes,
            manifest.declared_bytes
        );
        assert_eq!(found.unreadable, 0, "a file its owner cannot read");
        assert_eq!(locked_dirs(&staging), 0, "a directory its owner cannot read or search");
    }

    unlock(&run);
    fs::remove_dir_all(&run).expect("remove the staging directory");
    assert!(!run.exists());
});
