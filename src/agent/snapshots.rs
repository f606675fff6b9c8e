//! Init snapshots (SnapStart), one per published function version:
//! `<dir>/<function>/<version>/` holds the VMM's `state` and `memory` files and `meta.json`,
//! which says what the snapshot was taken of.
//!
//! A snapshot is used only while it matches its version exactly: the same revision and the
//! same kernel, runtime image, code image and layers image files (size and modification
//! time), since a restored guest goes on with the page cache and open files of the ones it
//! booted with. Anything else is stale and is removed when found.
//!
//! Writes never touch a snapshot in use: a new one is written into a staging directory
//! (`<dir>/.staging-*`), which is renamed into place (the old directory first renamed away to
//! `<dir>/.removed-*` and removed); VMs restored from the old files keep their mappings of
//! them. `meta.json` is written last, so a directory without it is incomplete. Leftover
//! staging and removed directories, and anything else that is not a version's snapshot (the
//! `$LATEST` snapshots of agents before versions), are cleared on open.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ids::{random_hex, Version};
use super::store::FunctionConfig;

const META: &str = "meta.json";
const STAGING: &str = ".staging-";
const REMOVED: &str = ".removed-";

/// Errors handling snapshot directories.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    what: String,
    source: io::Error,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error { what, source }
}

/// What a snapshot was taken of, and what it cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The function's revision.
    pub revision_id: String,
    /// The files the VM ran from: kernel, runtime image, code image.
    pub files: Vec<Fingerprint>,
    /// When it was taken (Lambda's time format).
    pub created: String,
    /// How long the VMM took to write it.
    pub snapshot_ms: u64,
}

/// A file as it was: its path, size and modification time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The path.
    pub path: PathBuf,
    /// Its size.
    pub len: u64,
    /// Its modification time, in ns since the epoch.
    pub mtime_ns: i128,
}

impl Fingerprint {
    /// The file at `path` now.
    pub fn of(path: &Path) -> io::Result<Fingerprint> {
        let meta = fs::metadata(path)?;
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        Ok(Fingerprint { path: path.to_owned(), len: meta.len(), mtime_ns })
    }
}

/// The snapshots of every function.
#[derive(Debug)]
pub struct Snapshots {
    dir: PathBuf,
}

impl Snapshots {
    /// The snapshots under `dir` (created if missing); clears what an interrupted write or
    /// removal left, and what is not a published version's snapshot.
    pub fn open(dir: &Path) -> Result<Snapshots, Error> {
        fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let read = |d: &Path| fs::read_dir(d).map_err(io_err(format!("read {}", d.display())));
        for entry in read(dir)? {
            let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(STAGING) || name.starts_with(REMOVED) || !path.is_dir() {
                remove_any(&path);
                continue;
            }
            for version in read(&path)? {
                let version = version.map_err(io_err(format!("read {}", path.display())))?;
                let published =
                    version.file_name().to_str().and_then(|v| v.parse::<u32>().ok()).is_some_and(|v| v >= 1);
                if !published || !version.path().is_dir() {
                    remove_any(&version.path());
                }
            }
        }
        Ok(Snapshots { dir: dir.to_owned() })
    }

    fn path(&self, function: &str, version: Version) -> PathBuf {
        self.dir.join(function).join(version.stored().to_string())
    }

    /// The directory of the snapshot of `function` (a published version), if there is one
    /// that matches `files` (the kernel and images it would run from) and its revision. A
    /// snapshot that does not match is removed.
    pub fn lookup(&self, function: &FunctionConfig, files: &[Fingerprint]) -> Option<PathBuf> {
        let dir = self.path(&function.name, function.version);
        let meta: Meta = serde_json::from_slice(&fs::read(dir.join(META)).ok()?).ok()?;
        if meta.revision_id == function.revision_id && meta.files == files {
            return Some(dir);
        }
        self.remove(&function.name, function.version);
        None
    }

    /// A new, empty staging directory for a snapshot.
    pub fn staging(&self) -> Result<PathBuf, Error> {
        let dir = self.dir.join(format!("{STAGING}{}", random_hex()));
        fs::create_dir(&dir).map_err(io_err(format!("create {}", dir.display())))?;
        Ok(dir)
    }

    /// Makes the snapshot written into `staging` the one of `function`'s `version`,
    /// replacing any other.
    pub fn commit(&self, function: &str, version: Version, staging: &Path, meta: &Meta) -> Result<PathBuf, Error> {
        let meta_path = staging.join(META);
        let json = serde_json::to_vec(meta).expect("metadata serializes");
        fs::write(&meta_path, json).map_err(io_err(format!("write {}", meta_path.display())))?;
        self.remove(function, version);
        let dir = self.path(function, version);
        let parent = self.dir.join(function);
        fs::create_dir_all(&parent).map_err(io_err(format!("create {}", parent.display())))?;
        fs::rename(staging, &dir).map_err(io_err(format!("rename {} to {}", staging.display(), dir.display())))?;
        Ok(dir)
    }

    /// Removes the snapshot of one version, if any (renamed away first, so that a lookup
    /// never sees half of it).
    pub fn remove(&self, function: &str, version: Version) {
        self.remove_dir(&self.path(function, version));
    }

    /// Removes the snapshots of every version of `function`.
    pub fn remove_function(&self, function: &str) {
        self.remove_dir(&self.dir.join(function));
    }

    fn remove_dir(&self, dir: &Path) {
        let gone = self.dir.join(format!("{REMOVED}{}", random_hex()));
        if fs::rename(dir, &gone).is_ok() {
            let _ = fs::remove_dir_all(&gone);
        }
    }

    /// Removes a staging directory that will not be committed.
    pub fn discard(&self, staging: &Path) {
        let _ = fs::remove_dir_all(staging);
    }
}

fn remove_any(path: &Path) {
    let _ = if path.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(name: &str, n: u32, revision: &str) -> FunctionConfig {
        let mut f = crate::agent::store::tests::config_for(name);
        f.version = Version::published(n);
        f.revision_id = revision.into();
        f
    }

    #[test]
    fn a_snapshot_is_found_only_while_it_matches() {
        let tmp = std::env::temp_dir().join(format!("ember-snapshots-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        // What an agent before versions left: a $LATEST snapshot right in the function's dir.
        fs::create_dir_all(tmp.join("old")).unwrap();
        fs::write(tmp.join("old").join(META), b"{}").unwrap();
        let snaps = Snapshots::open(&tmp).unwrap();
        assert!(!tmp.join("old").join(META).exists());
        let kernel = tmp.join("vmlinux");
        fs::write(&kernel, b"kernel").unwrap();
        let files = vec![Fingerprint::of(&kernel).unwrap()];
        let f = version("f", 1, "rev-1");
        assert_eq!(snaps.lookup(&f, &files), None);

        let staging = snaps.staging().unwrap();
        fs::write(staging.join("state"), b"s").unwrap();
        // Not committed: not there.
        assert_eq!(snaps.lookup(&f, &files), None);
        let meta = Meta { revision_id: "rev-1".into(), files: files.clone(), created: "now".into(), snapshot_ms: 5 };
        let dir = snaps.commit("f", f.version, &staging, &meta).unwrap();
        assert_eq!(snaps.lookup(&f, &files), Some(dir.clone()));
        assert_eq!(fs::read(dir.join("state")).unwrap(), b"s");
        // Another version of the same function has none.
        assert_eq!(snaps.lookup(&version("f", 2, "rev-1"), &files), None);

        // Another kernel file: stale, and removed.
        fs::write(&kernel, b"kernel 2").unwrap();
        let changed = vec![Fingerprint::of(&kernel).unwrap()];
        assert_eq!(snaps.lookup(&f, &changed), None);
        assert!(!dir.exists());

        // Removing the function removes its versions' snapshots.
        let staging = snaps.staging().unwrap();
        snaps.commit("f", f.version, &staging, &Meta { files: changed.clone(), ..meta }).unwrap();
        snaps.remove_function("f");
        assert_eq!(snaps.lookup(&f, &changed), None);

        // Leftovers of interrupted work go when the directory is opened again.
        let left = snaps.staging().unwrap();
        drop(snaps);
        Snapshots::open(&tmp).unwrap();
        assert!(!left.exists());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
